/**
 * The host API: HTTP/JSON (HTTPS with a certificate) for other hosts and
 * tools, served by `dormant serve --api HOST:PORT --api-token-file F`.
 * Every request carries `Authorization: Bearer <token>`; a missing or
 * wrong one gets 401 and one log line (no detail in the answer). The local
 * CLI keeps using the control socket (server.ts).
 *
 *   GET  /v1/status                     {host, version, volumes, vms}
 *   GET  /v1/volumes                    {volumes: [...]} as `dormant list --json`
 *   GET  /v1/vms                        {vms: [...]} as `dormant vm list --json`
 *   GET  /v1/volumes/<name>/manifest    the volume's manifest (src/migrate/manifest.ts)
 *   POST /v1/chunks/have                16-byte hashes -> one byte each, 1 = held here
 *   POST /v1/chunks/fetch               16-byte hashes (at most 4096) -> 4 KiB per chunk, in order
 *   POST /v1/receive[?as=NAME]          a manifest -> {id, needed, chunksPresent} (a push begins)
 *   GET  /v1/receive/<id>/needed        16-byte hashes of the chunks still needed
 *   PUT  /v1/receive/<id>/chunks        (hash, 4 KiB) records -> {accepted}
 *   POST /v1/receive/<id>/commit[?partial=1][&lazy=1]  -> {volume, origin[, absent]} (partial: although chunks are
 *                                       missing; lazy: they are fetched from the sender when read, src/migrate/lazy.ts)
 *   POST /v1/patch[?partial=1][&lazy=1] a patch (src/migrate/patch.ts) carrying its chunks, applied and committed
 *                                       at once -> {volume, blocks, chunksMissing[, absent]}
 *   POST /v1/vms/<vm>/migrate           {to[, mode]} -> what `vm migrate --json` prints: this host moves its VM there
 *                                       (mode copy, lazy, or auto: lazy when the VM is idle)
 *   POST /v1/vms/<vm>/incoming/check    a VM's record and kernel hashes -> {ok} (it can come here)
 *   POST /v1/vms/<vm>/incoming          the same [+ lazy: {url, token}: absent chunks come from there] -> {uri}:
 *                                       QEMU waits there for the device state
 *   POST /v1/vms/<vm>/incoming/prefetch {runs: [[first, count], ...]} -> {pages}: guest pages read into the page
 *                                       cache here before the guest pauses there (its pages in use)
 *   POST /v1/vms/<vm>/incoming/finish   -> {state, hostPort[, lazyBlocks]}: the guest resumed here (the commit point)
 *   POST /v1/vms/<vm>/incoming/abort    {volumes} -> {aborted}: QEMU, the VM and those volumes go
 *   POST /v1/vms/<vm>/lazy/done         -> {released}: the destination of a lazy migration has every chunk; the
 *                                       volumes kept here for it go
 *
 * A lazy migration's token (src/migrate/lazy-source.ts) is accepted for
 * `POST /v1/chunks/fetch` and its VM's `lazy/done` only.
 *
 * Errors: `{"error":{"code","message"}}` with 400 (EINVAL), 404 (ENOENT),
 * 409 (EEXIST, EBUSY), 401, 413 (body too large) or 500.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import { DormantError, HASH_SIZE, isDormantError, type Store } from '../blockstore/index.js';
import { buildManifest, encodeManifest, readChunks, type IncomingVms, type LazyLeases, type Receiver } from '../migrate/index.js';
import { freePort } from '../vm/index.js';
import type { StoreControl } from './operations.js';

/** What the API serves and how. */
export interface ApiOptions {
  host: string;
  port: number;
  token: string;
  /** PEM files: serve HTTPS. */
  tls?: { certFile: string; keyFile: string };
  log: (line: string) => void;
}

/** A running API server. */
export interface ApiServer {
  /** `http://HOST:PORT` or `https://...`, with the port actually bound. */
  url: string;
  close(): Promise<void>;
}

/** Largest body per route kind: a manifest (64 GiB volume), a chunk batch, anything else. */
const MAX_MANIFEST = 300 * 1024 * 1024;
const MAX_CHUNKS = 4096 * (HASH_SIZE + 4096);
const MAX_SMALL = 1024 * 1024;

const STATUS: Partial<Record<string, number>> = { EINVAL: 400, ENOENT: 404, EEXIST: 409, EBUSY: 409, ERANGE: 400, EROFS: 409 };

class HttpError extends Error {
  constructor(readonly status: number, message: string) { super(message); }
}

/** Serves the host API for `store`. */
export async function serveApi(store: Store, control: StoreControl, receiver: Receiver, incoming: IncomingVms,
  o: ApiOptions, leases?: LazyLeases): Promise<ApiServer> {
  const want = crypto.createHash('sha256').update(o.token).digest();
  const version = readVersion();
  const handler = (req: http.IncomingMessage, res: http.ServerResponse) => {
    const auth = req.headers.authorization ?? '';
    const given = /^Bearer (\S+)$/.exec(auth)?.[1];
    const leased = () => given !== undefined && leases !== undefined
      && leases.allows(given, req.method ?? '', new URL(req.url ?? '/', 'http://api').pathname.split('/').filter(Boolean).slice(1).map(decodeURIComponent));
    if (!given || (!crypto.timingSafeEqual(crypto.createHash('sha256').update(given).digest(), want) && !leased())) {
      o.log(`api: refused ${req.method} ${(req.url ?? '').split('?')[0]} from ${req.socket.remoteAddress}: ${given ? 'wrong' : 'no'} token`);
      req.resume();
      res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' })
        .end(`${JSON.stringify({ error: { code: 'EACCES', message: 'unauthorized' } })}\n`);
      return;
    }
    route(req, res).catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : isDormantError(err) ? STATUS[err.code] ?? 500 : 500;
      const code = isDormantError(err) ? err.code : status === 413 || status === 400 ? 'EINVAL' : status === 404 ? 'ENOENT' : 'EINTERNAL';
      const message = (err as Error)?.message ?? String(err);
      if (status === 500) o.log(`api: ${req.method} ${req.url} failed: ${message}`);
      if (res.headersSent) { res.destroy(); return; }
      res.writeHead(status, { 'content-type': 'application/json' }).end(`${JSON.stringify({ error: { code, message } })}\n`);
    });
  };

  const route = async (req: http.IncomingMessage, res: http.ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', 'http://api');
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const m = req.method ?? 'GET';
    const json = (v: unknown) => res.writeHead(200, { 'content-type': 'application/json' }).end(`${JSON.stringify(v)}\n`);
    const bytes = (b: Buffer) => res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': b.length }).end(b);
    if (parts[0] !== 'v1') throw new HttpError(404, `unknown API path ${url.pathname}: paths start with /v1/`);
    const [, a, b, c] = parts;
    if (m === 'GET' && a === 'status' && !b) {
      json({ host: os.hostname(), version, volumes: store.entries().length, vms: (await control.vmList()).length });
    } else if (m === 'GET' && a === 'volumes' && !b) {
      json({ volumes: await control.list() });
    } else if (m === 'GET' && a === 'vms' && !b) {
      json({ vms: await control.vmList() });
    } else if (m === 'GET' && a === 'volumes' && b && c === 'manifest' && parts.length === 4) {
      if (store.absentOf(b)) throw new DormantError('EBUSY', `'${b}' is still arriving here lazily: send it once its copy is complete`);
      bytes(encodeManifest(await buildManifest(store, b)));
    } else if (m === 'POST' && a === 'chunks' && (b === 'have' || b === 'fetch') && !c) {
      const body = await readBody(req, MAX_CHUNKS);
      if (body.length % HASH_SIZE !== 0) throw new DormantError('EINVAL', 'the body is 16-byte chunk hashes');
      bytes(b === 'have' ? Buffer.from(store.haveChunks(body)) : readChunks(store, body));
    } else if (m === 'POST' && a === 'receive' && !b) {
      const as = url.searchParams.get('as') ?? undefined;
      json(await receiver.begin(await readBody(req, MAX_MANIFEST), as));
    } else if (m === 'GET' && a === 'receive' && b && c === 'needed') {
      bytes(receiver.needed(b));
    } else if (m === 'PUT' && a === 'receive' && b && c === 'chunks') {
      json({ accepted: await receiver.chunks(b, await readBody(req, MAX_CHUNKS)) });
    } else if (m === 'POST' && a === 'receive' && b && c === 'commit') {
      req.resume();
      json(await receiver.commit(b, url.searchParams.get('partial') === '1', url.searchParams.get('lazy') === '1'));
    } else if (m === 'POST' && a === 'patch' && !b) {
      json(await receiver.applyPatch(await readBody(req, MAX_MANIFEST), url.searchParams.get('partial') === '1',
        url.searchParams.get('lazy') === '1'));
    } else if (m === 'POST' && a === 'vms' && b && c === 'migrate' && parts.length === 4) {
      // Another host (`dormant plan --apply`) asks this one to move its VM: the destination takes this host's own
      // token (the hosts of a cluster share one).
      let ask: { to?: unknown; mode?: unknown } = {};
      try { ask = JSON.parse((await readBody(req, MAX_SMALL)).toString('utf8')) as typeof ask; } catch { /* checked below */ }
      const { to, mode = 'copy' } = ask ?? {};
      if (typeof to !== 'string' || (mode !== 'copy' && mode !== 'lazy' && mode !== 'auto')) {
        throw new DormantError('EINVAL', 'a migrate request is {"to": "<the destination\'s API URL>", "mode": "copy", "lazy" or "auto"}');
      }
      o.log(`api: ${req.socket.remoteAddress} asks to migrate VM ${b} to ${to} (${mode})`);
      json(await control.vmMigrate(b, to, o.token, mode, ''));
    } else if (m === 'POST' && a === 'vms' && b && c === 'lazy' && parts[4] === 'done' && parts.length === 5) {
      req.resume();
      if (!leases) throw new DormantError('ENOENT', `no lazy migration of VM '${b}' here`);
      json(await leases.done(b));
    } else if (m === 'POST' && a === 'vms' && b && c === 'incoming') {
      const step = parts[4];
      const body = await readBody(req, MAX_SMALL);
      if (parts.length === 4) {
        // QEMU waits for the device state on the address the source reached this API on.
        const address = req.socket.localAddress?.replace(/^::ffff:/, '') ?? '127.0.0.1';
        json(await incoming.begin(b, body, address, await freePort(address), req.socket.remoteAddress?.replace(/^::ffff:/, '')));
      } else if (parts.length === 5 && step === 'check') {
        incoming.check(b, body);
        json({ ok: true });
      } else if (parts.length === 5 && step === 'prefetch') {
        json(await incoming.prefetch(b, body));
      } else if (parts.length === 5 && step === 'finish') {
        json(await incoming.finish(b));
      } else if (parts.length === 5 && step === 'abort') {
        let volumes: string[] = [];
        try {
          const v = (JSON.parse(body.toString('utf8') || '{}') as { volumes?: unknown }).volumes;
          if (Array.isArray(v) && v.every((x) => typeof x === 'string')) volumes = v as string[];
        } catch { throw new DormantError('EINVAL', 'abort takes {"volumes":[...]}'); }
        json(await incoming.abort(b, volumes));
      } else {
        throw new HttpError(404, `unknown API request ${m} ${url.pathname}`);
      }
    } else {
      req.resume();
      throw new HttpError(404, `unknown API request ${m} ${url.pathname}`);
    }
  };

  const server = o.tls
    ? https.createServer({ cert: fs.readFileSync(o.tls.certFile), key: fs.readFileSync(o.tls.keyFile) }, handler)
    : http.createServer(handler);
  server.requestTimeout = 10 * 60_000;
  server.headersTimeout = 30_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => reject(new DormantError('EINVAL', `cannot listen for the API on ${o.host}:${o.port}: ${err.code ?? err.message}`)));
    server.listen(o.port, o.host, () => resolve());
  });
  const addr = server.address() as AddressInfo;
  const host = addr.family === 'IPv6' ? `[${addr.address}]` : addr.address;
  return {
    url: `${o.tls ? 'https' : 'http'}://${host}:${addr.port}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections(); server.close(() => resolve()); }),
  };
}

/** Reads a request body of at most `max` bytes (413 beyond). */
async function readBody(req: http.IncomingMessage, max: number): Promise<Buffer> {
  const declared = Number(req.headers['content-length'] ?? 0);
  if (declared > max) { req.resume(); throw new HttpError(413, `request body over ${max} bytes`); }
  const parts: Buffer[] = [];
  let size = 0;
  for await (const d of req as AsyncIterable<Buffer>) {
    size += d.length;
    if (size > max) throw new HttpError(413, `request body over ${max} bytes`);
    parts.push(d);
  }
  return Buffer.concat(parts);
}

/** dormant's version from its package.json (for /v1/status). */
function readVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}
