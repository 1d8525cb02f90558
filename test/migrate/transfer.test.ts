/**
 * Volume transfer between hosts: two real `dormant serve` daemons with the
 * host API on loopback (each its own store), driven by the real CLI
 * (`push`, `pull`), with a proxy in the test process standing for a bad
 * network (a byte flipped in flight, a connection cut halfway). A third
 * store without a daemon pulls offline. Every daemon, proxy and temp dir
 * goes at the end; every wait is bounded.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../src/blockstore/index.js';
import { freePort } from '../../src/vm/index.js';
import { dormant, dormantAsync, expectFailure, expectOk, exportSha256, type CliResult } from '../helpers/cli.js';
import { pseudoRandom } from '../helpers/data.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const tmp = new TempDirs();
let dir: string;
let tokenFile: string;
let a: { store: string; url: string; d: MountDaemon };
let b: { store: string; url: string; d: MountDaemon };
const proxies: http.Server[] = [];

async function host(name: string): Promise<{ store: string; url: string; d: MountDaemon }> {
  const store = path.join(dir, name);
  const port = await freePort();
  const d = await startDaemon(store, '', ['serve', '--no-tcp', '--api', `127.0.0.1:${port}`, '--api-token-file', tokenFile],
    /host API on http:\/\/\S+/);
  return { store, url: `http://127.0.0.1:${port}`, d };
}

/** Parses the JSON of a successful run. */
function json<T = any>(r: CliResult): T {
  return JSON.parse(expectOk(r)) as T;
}

/** A proxy in front of `target` whose answers to chunk fetches pass through `mangle` (which may cut the connection). */
async function proxy(target: string, mangle: (body: Buffer, res: http.ServerResponse) => boolean): Promise<string> {
  const server = http.createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (d: Buffer) => parts.push(d));
    req.on('end', () => {
      const up = http.request(new URL(req.url!, target), { method: req.method, headers: req.headers }, (ur) => {
        const got: Buffer[] = [];
        ur.on('data', (d: Buffer) => got.push(d));
        ur.on('end', () => {
          const body = Buffer.concat(got);
          if (req.url === '/v1/chunks/fetch' && ur.statusCode === 200 && !mangle(body, res)) return;
          res.writeHead(ur.statusCode!, ur.headers).end(body);
        });
      });
      up.on('error', () => res.destroy());
      up.end(Buffer.concat(parts));
    });
  });
  proxies.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
}

/** Makes volume `name` of `bytes` pseudo-random bytes on host `h` (through its daemon). */
function randomVolume(h: { store: string }, name: string, bytes: number, seed: number): void {
  const file = path.join(dir, `${name}.img`);
  fs.writeFileSync(file, pseudoRandom(seed, bytes));
  expectOk(dormant(['import', name, file], { store: h.store }));
  fs.rmSync(file);
}

/** Waits (at most 5 s) for a daemon's stderr to match `re` (its output reaches the test a little after its answers). */
async function logged(d: MountDaemon, re: RegExp): Promise<void> {
  for (let i = 0; i < 100 && !re.test(d.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
  expect(d.stderr()).toMatch(re);
}

const names = (store: string): string[] => json<{ volumes: { name: string }[] }>(dormant(['list', '--json'], { store })).volumes.map((v) => v.name);

beforeAll(async () => {
  dir = tmp.make('transfer');
  tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, 'a-test-token-0123456789abcdef\n', { mode: 0o600 });
  for (const s of ['a', 'b']) expectOk(dormant(['init'], { store: path.join(dir, s) }));
  // On host a: a 32 MiB golden image (24 MiB of data, 8 MiB hole), its snapshot, and a branch with 1 MiB of its own.
  const img = path.join(dir, 'golden.img');
  fs.writeFileSync(img, Buffer.concat([pseudoRandom(1, 24 * MiB), Buffer.alloc(8 * MiB)]));
  const sa = path.join(dir, 'a');
  expectOk(dormant(['import', 'golden', img], { store: sa }));
  expectOk(dormant(['snapshot', 'golden', 'base'], { store: sa }));
  expectOk(dormant(['branch', 'vm1', '--from', 'golden@base'], { store: sa }));
  const store = await Store.open(sa);
  const vol = await store.openVolume('vm1');
  await vol.write(4 * MiB, pseudoRandom(2, MiB));
  await vol.write(30 * MiB, pseudoRandom(3, 64 * 1024)); // into the hole
  await vol.close();
  await store.close();
  a = await host('a');
  b = await host('b');
}, 120_000);

afterAll(async () => {
  await a?.d.stop();
  await b?.d.stop();
  for (const p of proxies) { p.closeAllConnections(); p.close(); }
  await cleanupMounts();
  tmp.cleanup();
});

const token = { [Symbol.iterator]: function* () { yield '--token-file'; yield tokenFile; } };

describe('push and pull between two hosts', () => {
  it('push sends only the chunks the receiver lacks, keeps the ancestry, and the bytes arrive intact', async () => {
    const base = json(await dormantAsync(['push', 'golden@base', '--to', b.url, ...token, '--json'], { store: a.store }));
    expect(base).toMatchObject({ volume: 'golden@base', logicalBytes: 32 * MiB, chunksSent: 6144, chunksPresent: 0 });
    const r = json(await dormantAsync(['push', 'vm1', '--to', b.url, ...token, '--json'], { store: a.store }));
    // 1 MiB + 64 KiB of the branch's own blocks cross; the golden image's 6144 chunks are there already.
    expect(r).toMatchObject({ volume: 'vm1', logicalBytes: 32 * MiB, chunksSent: 256 + 16, origin: 'golden@base' });
    expect(r.bytesSent).toBeLessThan(0.05 * r.logicalBytes);
    const vm1 = json<{ volumes: { name: string; origin: string | null }[] }>(dormant(['list', '--json'], { store: b.store }))
      .volumes.find((v) => v.name === 'vm1');
    expect(vm1?.origin).toBe('golden@base');
    for (const n of ['golden@base', 'vm1']) expect(exportSha256(n, b.store, dir), n).toBe(exportSha256(n, a.store, dir));
    await logged(b.d, /received vm1 as vm1: 272 chunks sent/);
  });

  it('pull under another name fetches nothing the receiver has; the same pull again sends no chunk', async () => {
    const r = json(await dormantAsync(['pull', 'vm1', '--from', a.url, ...token, '--as', 'vm1b', '--json'], { store: b.store }));
    expect(r).toMatchObject({ volume: 'vm1b', chunksSent: 0, origin: 'golden@base' });
    expect(exportSha256('vm1b', b.store, dir)).toBe(exportSha256('vm1', a.store, dir));
    const again = json(await dormantAsync(['pull', 'vm1', '--from', a.url, ...token, '--as', 'vm1b', '--json'], { store: b.store }));
    expect(again).toMatchObject({ volume: 'vm1b', chunksSent: 0, alreadyPresent: true });
    // A name taken by other content is refused, and nothing changes.
    expectFailure(await dormantAsync(['pull', 'golden@base', '--from', a.url, ...token, '--as', 'vm1b'], { store: b.store }),
      /already exists here with other content/);
    expect(exportSha256('vm1b', b.store, dir)).toBe(exportSha256('vm1', a.store, dir));
  });

  it('a chunk corrupted in flight is refused: no volume under the name, and a retry succeeds', async () => {
    randomVolume(a, 'data', 8 * MiB, 11);
    const bad = await proxy(a.url, (body) => { body[body.length >> 1] ^= 0x40; return true; });
    expectFailure(await dormantAsync(['pull', 'data', '--from', bad, ...token], { store: b.store }),
      /does not match its hash \(corrupted in flight\)/);
    expect(names(b.store)).not.toContain('data');
    const r = json(await dormantAsync(['pull', 'data', '--from', a.url, ...token, '--json'], { store: b.store }));
    expect(r.volume).toBe('data');
    expect(exportSha256('data', b.store, dir)).toBe(exportSha256('data', a.store, dir));
    expect(names(b.store)).not.toContain('data.partial');
  });

  it('a transfer cut halfway leaves only a staging volume, and the next one fetches only what is missing', async () => {
    randomVolume(a, 'big', 48 * MiB, 12);
    let forwarded = 0;
    const cut = await proxy(a.url, (body, res) => {
      forwarded += body.length;
      if (forwarded <= 16 * MiB) return true;
      res.socket?.destroy();
      return false;
    });
    expectFailure(await dormantAsync(['pull', 'big', '--from', cut, ...token], { store: b.store }), /host http:\/\/127\.0\.0\.1:\d+/);
    expect(names(b.store)).toContain('big.partial');
    expect(names(b.store)).not.toContain('big');
    const r = json(await dormantAsync(['pull', 'big', '--from', a.url, ...token, '--json'], { store: b.store }));
    // 12288 chunks in all; at least the 3072 that came before the cut are not sent again.
    expect(r.chunksSent).toBeLessThanOrEqual(12288 - 3072);
    expect(r.chunksPresent).toBeGreaterThanOrEqual(3072);
    expect(exportSha256('big', b.store, dir)).toBe(exportSha256('big', a.store, dir));
    expect(names(b.store)).not.toContain('big.partial');
  });

  it('a store no daemon owns pulls by itself', async () => {
    const c = path.join(dir, 'c');
    expectOk(dormant(['init'], { store: c }));
    json(await dormantAsync(['pull', 'golden@base', '--from', a.url, ...token, '--json'], { store: c }));
    const r = json(await dormantAsync(['pull', 'vm1', '--from', a.url, ...token, '--json'], { store: c }));
    expect(r).toMatchObject({ chunksSent: 272, origin: 'golden@base' });
    expect(exportSha256('vm1', c, dir)).toBe(exportSha256('vm1', a.store, dir));
  });
});

describe('the host API', () => {
  it('refuses requests without the token or with a wrong one (401, logged), and survives garbage', async () => {
    const none = await fetch(`${a.url}/v1/status`);
    expect(none.status).toBe(401);
    expect(await none.text()).not.toMatch(/token-0123/);
    const wrong = await fetch(`${a.url}/v1/volumes`, { headers: { authorization: 'Bearer not-the-token-at-all' } });
    expect(wrong.status).toBe(401);
    await logged(a.d, /api: refused GET \/v1\/status from \S+: no token/);
    await logged(a.d, /api: refused GET \/v1\/volumes from \S+: wrong token/);
    // Bytes that are not HTTP, then a good request.
    await new Promise<void>((resolve) => {
      const s = net.connect(Number(new URL(a.url).port), '127.0.0.1', () => s.end(pseudoRandom(5, 4096)));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
      s.resume();
    });
    const ok = await fetch(`${a.url}/v1/status`, { headers: { authorization: 'Bearer a-test-token-0123456789abcdef' } });
    expect(ok.status).toBe(200);
    expect(await ok.json()).toMatchObject({ volumes: expect.any(Number), vms: 0 });
    const wrongFile = path.join(dir, 'wrong-token');
    fs.writeFileSync(wrongFile, 'b-wrong-token-0123456789abcdef\n');
    expectFailure(await dormantAsync(['push', 'vm1', '--to', b.url, '--token-file', wrongFile], { store: a.store }),
      /refused the token \(401\)/);
  });

  it('serves HTTPS with a certificate; a client trusts it with --tls-ca, and refuses it without', async () => {
    const certDir = path.join(dir, 'tls');
    fs.mkdirSync(certDir);
    const cert = path.join(certDir, 'cert.pem');
    const key = path.join(certDir, 'key.pem');
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
      '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1'], { stdio: 'ignore', timeout: 60_000 });
    const store = path.join(dir, 'tls-host');
    expectOk(dormant(['init'], { store }));
    randomVolume({ store }, 'secret', MiB, 21);
    const port = await freePort();
    const d = await startDaemon(store, '', ['serve', '--no-tcp', '--api', `127.0.0.1:${port}`, '--api-token-file', tokenFile,
      '--tls-cert', cert, '--tls-key', key], /host API on https:\/\/\S+/);
    try {
      const url = `https://127.0.0.1:${port}`;
      expectFailure(await dormantAsync(['pull', 'secret', '--from', url, ...token], { store: b.store }),
        /host https:\/\/127\.0\.0\.1:\d+: .*(self[- ]signed|certificate)/i);
      const r = json(await dormantAsync(['pull', 'secret', '--from', url, ...token, '--tls-ca', cert, '--json'], { store: b.store }));
      expect(r).toMatchObject({ volume: 'secret', chunksSent: 256 });
      expect(exportSha256('secret', b.store, dir)).toBe(exportSha256('secret', store, dir));
    } finally {
      await d.stop();
    }
  });

  it('answers bad requests with one clear error', async () => {
    const auth = { authorization: 'Bearer a-test-token-0123456789abcdef' };
    const missing = await fetch(`${a.url}/v1/volumes/nope/manifest`, { headers: auth });
    expect(missing.status).toBe(404);
    expect((await missing.json()).error.message).toMatch(/unknown volume 'nope'/);
    const junk = await fetch(`${a.url}/v1/receive`, { method: 'POST', headers: auth, body: pseudoRandom(6, 1000) });
    expect(junk.status).toBe(400);
    expect((await junk.json()).error.message).toMatch(/bad volume manifest/);
    const odd = await fetch(`${a.url}/v1/chunks/fetch`, { method: 'POST', headers: auth, body: Buffer.alloc(17) });
    expect(odd.status).toBe(400);
    expect((await fetch(`${a.url}/v2/x`, { headers: auth })).status).toBe(404);
  });

  it('CLI errors are one line with exit 1', async () => {
    expectFailure(await dormantAsync(['pull', 'nope', '--from', a.url, ...token], { store: b.store }), /unknown volume 'nope'/);
    const closed = await freePort();
    expectFailure(await dormantAsync(['push', 'vm1', '--to', `http://127.0.0.1:${closed}`, ...token], { store: a.store }),
      /host http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
    expectFailure(dormant(['push', 'vm1', '--to', b.url], { store: a.store, env: { DORMANT_TOKEN_FILE: undefined } }),
      /needs its API token: --token-file/);
    expectFailure(dormant(['pull', 'vm1', '--from', 'ftp://x', ...token], { store: b.store }), /bad host URL 'ftp:\/\/x'/);
    expectFailure(dormant(['serve', '--api', '127.0.0.1:0'], { store: path.join(dir, 'c') }), /--api needs --api-token-file/);
  });
});
