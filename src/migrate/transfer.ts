/**
 * Volume transfer between hosts by missing chunks.
 *
 *   pull: this host fetches the manifest from the source's API, builds the
 *         volume from the chunks it holds, and fetches the rest
 *         (`POST /v1/chunks/fetch`, batches of 256, a few in flight).
 *   push: this host sends the manifest to the receiver's API
 *         (`POST /v1/receive`), which answers with the chunks it lacks;
 *         this host sends them (`PUT /v1/receive/<id>/chunks`) and asks
 *         for the commit. The receiver's side is `Receiver` below.
 *
 * Either way the receiver checks every chunk against its hash and commits
 * atomically (incoming.ts); an interrupted transfer resumes from its
 * staging volume.
 */
import crypto from 'node:crypto';
import { BLOCK_SIZE, DormantError, HASH_SIZE, type ProgressFn, type Store } from '../blockstore/index.js';
import { IncomingVolume, targetNames, type TransferResult } from './incoming.js';
import { buildManifest, decodeManifest, encodeManifest, type Manifest } from './manifest.js';
import { request, requestJson, type RemoteHost } from './remote.js';

/** Chunks per request. */
const BATCH = 256;
/** Requests in flight per transfer. */
const IN_FLIGHT = 4;

const seconds = (t0: number) => Math.round((performance.now() - t0) / 10) / 100;

/** Fetches `name` (`vol` or `vol@snap`) from `host` into `store` (as `as`). */
export async function pull(store: Store, host: RemoteHost, name: string, as?: string, progress?: ProgressFn): Promise<TransferResult> {
  const t0 = performance.now();
  const answer = await request(host, 'GET', `/v1/volumes/${encodeURIComponent(name)}/manifest`);
  let bytesSent = answer.body.length;
  const m = decodeManifest(answer.body);
  const names = targetNames(m, as);
  if (await IncomingVolume.alreadyHere(store, m, as)) {
    return { volume: names.full, logicalBytes: m.header.size, bytesSent, chunksSent: 0, chunksPresent: 0, origin: null,
      seconds: seconds(t0), alreadyPresent: true };
  }
  const inc = await IncomingVolume.open(store, m, as);
  try {
    const total = inc.needed.length / HASH_SIZE;
    let next = 0;
    let done = 0;
    progress?.(0, total * BLOCK_SIZE);
    const worker = async () => {
      while (next < total) {
        const first = next;
        const n = Math.min(BATCH, total - first);
        next += n;
        const hashes = inc.needed.subarray(first * HASH_SIZE, (first + n) * HASH_SIZE);
        const got = await request(host, 'POST', '/v1/chunks/fetch', hashes);
        bytesSent += hashes.length + got.body.length;
        if (got.body.length !== n * BLOCK_SIZE) {
          throw new DormantError('EREMOTE', `host ${host.url} sent ${got.body.length} bytes for ${n} chunks`);
        }
        for (let i = 0; i < n; i++) await inc.accept(hashes, i * HASH_SIZE, got.body, i * BLOCK_SIZE);
        done += n;
        progress?.(done * BLOCK_SIZE, total * BLOCK_SIZE);
      }
    };
    await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    const r = await inc.finish();
    return { volume: r.volume, logicalBytes: m.header.size, bytesSent, chunksSent: inc.chunksReceived, chunksPresent: inc.chunksPresent,
      origin: r.origin, seconds: seconds(t0) };
  } finally {
    await inc.close();
  }
}

/** What the receiver answers to `POST /v1/receive`. */
interface ReceiveBegin {
  id: string;
  needed: number;
  chunksPresent: number;
  alreadyPresent?: boolean;
  volume?: string;
}

/** Options of a push. */
export interface PushOptions {
  /**
   * A pre-copy round (VM migration, while the guest still runs): send what
   * the receiver lacks but do not commit; chunks gone meanwhile are skipped.
   * The receiver keeps the staging volume, so the final push sends only
   * what changed since.
   */
  precopy?: boolean;
}

/** Sends `name` (`vol` or `vol@snap`) of `store` to `host` (as `as`). */
export async function push(store: Store, host: RemoteHost, name: string, as?: string, progress?: ProgressFn,
  opts: PushOptions = {}): Promise<TransferResult> {
  const t0 = performance.now();
  const m = await buildManifest(store, name);
  const wire = encodeManifest(m);
  let bytesSent = wire.length;
  const q = as === undefined ? '' : `?as=${encodeURIComponent(as)}`;
  const begin = await requestJson<ReceiveBegin>(host, 'POST', `/v1/receive${q}`, wire);
  if (begin.alreadyPresent) {
    return { volume: begin.volume ?? targetNames(m, as).full, logicalBytes: m.header.size, bytesSent, chunksSent: 0, chunksPresent: 0,
      origin: null, seconds: seconds(t0), alreadyPresent: true };
  }
  const needed = (await request(host, 'GET', `/v1/receive/${begin.id}/needed`)).body;
  const total = needed.length / HASH_SIZE;
  let next = 0;
  let done = 0;
  progress?.(0, total * BLOCK_SIZE);
  const worker = async () => {
    while (next < total) {
      const first = next;
      const n = Math.min(BATCH, total - first);
      next += n;
      const full = Buffer.allocUnsafe(n * (HASH_SIZE + BLOCK_SIZE));
      let records = 0;
      for (let i = 0; i < n; i++) {
        const at = (first + i) * HASH_SIZE;
        const rec = records * (HASH_SIZE + BLOCK_SIZE);
        needed.copy(full, rec, at, at + HASH_SIZE);
        if (store.readChunkByHash(needed, at, full, rec + HASH_SIZE)) { records++; continue; }
        if (opts.precopy) continue; // rewritten since the manifest: the final round sends its successor
        throw new DormantError('EIO', `chunk ${needed.toString('hex', at, at + HASH_SIZE)} of '${name}' is no longer here `
          + '(the volume changed during the transfer: snapshot it and send the snapshot)');
      }
      const body = full.subarray(0, records * (HASH_SIZE + BLOCK_SIZE));
      if (records > 0) await request(host, 'PUT', `/v1/receive/${begin.id}/chunks`, body);
      bytesSent += body.length;
      done += n;
      progress?.(done * BLOCK_SIZE, total * BLOCK_SIZE);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
  if (opts.precopy) {
    return { volume: targetNames(m, as).full, logicalBytes: m.header.size, bytesSent, chunksSent: total, chunksPresent: begin.chunksPresent,
      origin: null, seconds: seconds(t0) };
  }
  const r = await requestJson<{ volume: string; origin: string | null }>(host, 'POST', `/v1/receive/${begin.id}/commit`);
  return { volume: r.volume, logicalBytes: m.header.size, bytesSent, chunksSent: total, chunksPresent: begin.chunksPresent,
    origin: r.origin, seconds: seconds(t0) };
}

/** Answers a chunk fetch: the bytes of each chunk named in `hashes`, in order (ENOENT naming the first one missing). */
export function readChunks(store: Store, hashes: Buffer): Buffer {
  if (hashes.length % HASH_SIZE !== 0 || hashes.length === 0 || hashes.length > 4096 * HASH_SIZE) {
    throw new DormantError('EINVAL', 'a chunk fetch names 1 to 4096 hashes of 16 bytes');
  }
  const n = hashes.length / HASH_SIZE;
  const out = Buffer.allocUnsafe(n * BLOCK_SIZE);
  for (let i = 0; i < n; i++) {
    if (!store.readChunkByHash(hashes, i * HASH_SIZE, out, i * BLOCK_SIZE)) {
      throw new DormantError('ENOENT', `chunk ${hashes.toString('hex', i * HASH_SIZE, (i + 1) * HASH_SIZE)} is not here `
        + '(the volume changed since its manifest was taken: send a snapshot)');
    }
  }
  return out;
}

/** Sessions idle this long are dropped (their staging volume stays for a later attempt). */
const SESSION_IDLE_MS = 10 * 60_000;

interface Session { inc: IncomingVolume; timer: NodeJS.Timeout }

/** The receiving side of pushes: one session per volume being received. */
export class Receiver {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly store: Store, private readonly log: (line: string) => void = () => undefined) {}

  /** Starts receiving the volume of manifest `wire` (as `as`); a session for the same name is dropped first. */
  async begin(wire: Buffer, as?: string): Promise<ReceiveBegin> {
    const m: Manifest = decodeManifest(wire);
    const names = targetNames(m, as);
    for (const [id, s] of this.sessions) if (s.inc.names.volume === names.volume) await this.drop(id);
    if (await IncomingVolume.alreadyHere(this.store, m, as)) return { id: '', needed: 0, chunksPresent: 0, alreadyPresent: true, volume: names.full };
    const inc = await IncomingVolume.open(this.store, m, as);
    const id = crypto.randomBytes(12).toString('hex');
    this.sessions.set(id, { inc, timer: this.idleTimer(id) });
    this.log(`receive ${m.header.name} as ${names.full}: ${inc.remaining} chunks to come, ${inc.chunksPresent} here already`);
    return { id, needed: inc.remaining, chunksPresent: inc.chunksPresent };
  }

  /** Hashes of the chunks session `id` still needs. */
  needed(id: string): Buffer {
    return this.session(id).inc.needed;
  }

  /** Takes a batch of (16-byte hash, 4 KiB chunk) records; returns how many. */
  async chunks(id: string, body: Buffer): Promise<number> {
    const s = this.session(id);
    const rec = HASH_SIZE + BLOCK_SIZE;
    if (body.length % rec !== 0) throw new DormantError('EINVAL', `chunk records are ${rec} bytes each (hash, then data)`);
    for (let at = 0; at < body.length; at += rec) await s.inc.accept(body, at, body, at + HASH_SIZE);
    return body.length / rec;
  }

  /** Commits session `id`. */
  async commit(id: string): Promise<{ volume: string; origin: string | null }> {
    const s = this.session(id);
    const r = await s.inc.finish();
    clearTimeout(s.timer);
    this.sessions.delete(id);
    this.log(`received ${s.inc.manifest.header.name} as ${r.volume}: ${s.inc.chunksReceived} chunks sent, ${s.inc.chunksPresent} here already`);
    return r;
  }

  /** Drops the session receiving volume `volume`, if any (its staging volume stays). */
  async forget(volume: string): Promise<void> {
    for (const [id, s] of this.sessions) if (s.inc.names.volume === volume) await this.drop(id);
  }

  /** Drops every session (daemon stop). */
  async close(): Promise<void> {
    for (const id of [...this.sessions.keys()]) await this.drop(id);
  }

  private session(id: string): Session {
    const s = this.sessions.get(id);
    if (!s) throw new DormantError('ENOENT', `no transfer ${id} here (it expired or was committed): send the volume again`);
    clearTimeout(s.timer);
    s.timer = this.idleTimer(id);
    return s;
  }

  private idleTimer(id: string): NodeJS.Timeout {
    const t = setTimeout(() => { void this.drop(id); }, SESSION_IDLE_MS);
    t.unref();
    return t;
  }

  private async drop(id: string): Promise<void> {
    const s = this.sessions.get(id);
    if (!s) return;
    this.sessions.delete(id);
    clearTimeout(s.timer);
    await s.inc.close();
  }
}
