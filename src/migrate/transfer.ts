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
import { IncomingVolume, targetNames, type ReceiveSession, type TransferResult } from './incoming.js';
import { buildPatch, PatchVolume } from './patch.js';
import { buildManifest, decodeManifest, encodeManifest, type Manifest } from './manifest.js';
import { request, requestJson, type RemoteHost } from './remote.js';

/** Chunks per request. */
const BATCH = 256;
/** Requests in flight per transfer. */
const IN_FLIGHT = 4;

/** Runs `batch(first, n)` over chunks 0..total in batches of BATCH, IN_FLIGHT at once, reporting progress in bytes. */
async function inBatches(total: number, progress: ProgressFn | undefined, batch: (first: number, n: number) => Promise<void>): Promise<void> {
  let next = 0;
  let done = 0;
  progress?.(0, total * BLOCK_SIZE);
  const worker = async () => {
    while (next < total) {
      const first = next;
      const n = Math.min(BATCH, total - first);
      next += n;
      await batch(first, n);
      done += n;
      progress?.(done * BLOCK_SIZE, total * BLOCK_SIZE);
    }
  };
  await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
}

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
    await inBatches(inc.needed.length / HASH_SIZE, progress, async (first, n) => {
      const hashes = inc.needed.subarray(first * HASH_SIZE, (first + n) * HASH_SIZE);
      const got = await request(host, 'POST', '/v1/chunks/fetch', hashes);
      bytesSent += hashes.length + got.body.length;
      if (got.body.length !== n * BLOCK_SIZE) {
        throw new DormantError('EREMOTE', `host ${host.url} sent ${got.body.length} bytes for ${n} chunks`);
      }
      for (let i = 0; i < n; i++) await inc.accept(hashes, i * HASH_SIZE, got.body, i * BLOCK_SIZE);
    });
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
  /** The manifest to send, built beforehand (a VM migration keeps its chunk ids to patch the volume later). */
  manifest?: Manifest;
  /**
   * A pre-copy round (VM migration, while the guest still runs): chunks
   * gone since the manifest was built are skipped, and the receiver
   * commits all the same; the blocks that use them are sent in the patch
   * that follows (`missing` lists their hashes).
   */
  partial?: boolean;
}

/** What a push reports: the transfer, and with `partial` the hashes (hex) it could not send. */
export type PushResult = TransferResult & { missing?: Set<string> };

/** Sends `name` (`vol` or `vol@snap`) of `store` to `host` (as `as`). */
export async function push(store: Store, host: RemoteHost, name: string, as?: string, progress?: ProgressFn,
  opts: PushOptions = {}): Promise<PushResult> {
  const t0 = performance.now();
  const m = opts.manifest ?? await buildManifest(store, name);
  const wire = encodeManifest(m);
  const q = as === undefined ? '' : `?as=${encodeURIComponent(as)}`;
  const begin = await requestJson<ReceiveBegin>(host, 'POST', `/v1/receive${q}`, wire);
  if (begin.alreadyPresent) {
    return { volume: begin.volume ?? targetNames(m, as).full, logicalBytes: m.header.size, bytesSent: wire.length, chunksSent: 0,
      chunksPresent: 0, origin: null, seconds: seconds(t0), alreadyPresent: true };
  }
  const sent = await sendChunks(store, host, begin.id, name, progress, Boolean(opts.partial));
  const r = await requestJson<{ volume: string; origin: string | null }>(host, 'POST',
    `/v1/receive/${begin.id}/commit${opts.partial ? '?partial=1' : ''}`);
  return { volume: r.volume, logicalBytes: m.header.size, bytesSent: wire.length + sent.bytes, chunksSent: sent.chunks,
    chunksPresent: begin.chunksPresent, origin: r.origin, seconds: seconds(t0), ...(opts.partial ? { missing: sent.missing } : {}) };
}

/**
 * Sends blocks `blocks` (sorted) of `name` as they read now as a patch
 * (patch.ts) applied in place on `host`: the chunks go with it (lazy:
 * hashes only; the receiver fetches what it lacks when read), with
 * `partial` only those the receiver does not hold (one round trip more
 * to ask: a guest often rewrites a page with the bytes it had), else all
 * (one round trip: the guest waits). The patched volume must be there, as
 * an earlier push or patch left it. `partial`: blocks whose chunk was
 * rewritten in place meanwhile (so it could not be sent) keep their old
 * content there; the caller patches them again (they are written since).
 */
export async function pushPatch(store: Store, host: RemoteHost, name: string, blocks: readonly number[],
  lazy = false, partial = false): Promise<{ bytesSent: number; blocks: number; absent: number }> {
  const out = { bytesSent: 0, blocks: 0, absent: 0 };
  const held = partial ? async (hashes: Buffer) => {
    out.bytesSent += hashes.length;
    return (await request(host, 'POST', '/v1/chunks/have', hashes)).body;
  } : undefined;
  const q = new URLSearchParams({ ...(lazy ? { lazy: '1' } : {}), ...(partial ? { partial: '1' } : {}) }).toString();
  const query = q ? `?${q}` : '';
  // (in slices: a request body stays well under the API's limit)
  for (let first = 0; first < blocks.length; first += PATCH_SLICE_BLOCKS) {
    const { wire, count } = await buildPatch(store, name, blocks.slice(first, first + PATCH_SLICE_BLOCKS), !lazy, held);
    const r = await requestJson<{ absent?: number }>(host, 'POST', `/v1/patch${query}`, wire);
    out.bytesSent += wire.length;
    out.blocks += count;
    out.absent += r.absent ?? 0;
  }
  return out;
}

/** Blocks per patch request (64 MiB of chunks). */
const PATCH_SLICE_BLOCKS = 16_384;

/**
 * Sends the manifest `m` of `name` to `host` and commits it there at once
 * without sending a chunk (lazy mode): the receiver writes the blocks whose
 * chunks it holds and marks the others absent, to be fetched from this
 * host when read. Returns the bytes sent and the blocks left absent.
 */
export async function pushManifest(host: RemoteHost, m: Manifest): Promise<{ bytesSent: number; absent: number; chunksPresent: number }> {
  const wire = encodeManifest(m);
  const begin = await requestJson<ReceiveBegin>(host, 'POST', '/v1/receive', wire);
  if (begin.alreadyPresent) throw new DormantError('EEXIST', `'${m.header.name}' is already on ${host.url}`);
  const r = await requestJson<{ absent?: number }>(host, 'POST', `/v1/receive/${begin.id}/commit?partial=1&lazy=1`);
  return { bytesSent: wire.length, absent: r.absent ?? 0, chunksPresent: begin.chunksPresent };
}

/**
 * Sends the chunks receive session `id` on `host` asks for, batches of
 * BATCH, IN_FLIGHT at once; with `skipMissing`, chunks this store no
 * longer has are left out (and listed) instead of failing.
 */
async function sendChunks(store: Store, host: RemoteHost, id: string, name: string, progress: ProgressFn | undefined,
  skipMissing: boolean): Promise<{ bytes: number; chunks: number; missing: Set<string> }> {
  const needed = (await request(host, 'GET', `/v1/receive/${id}/needed`)).body;
  const missing = new Set<string>();
  let bytes = needed.length;
  let chunks = 0;
  await inBatches(needed.length / HASH_SIZE, progress, async (first, n) => {
    const full = Buffer.allocUnsafe(n * (HASH_SIZE + BLOCK_SIZE));
    let records = 0;
    for (let i = 0; i < n; i++) {
      const at = (first + i) * HASH_SIZE;
      const rec = records * (HASH_SIZE + BLOCK_SIZE);
      needed.copy(full, rec, at, at + HASH_SIZE);
      if (store.readChunkByHash(needed, at, full, rec + HASH_SIZE)) { records++; continue; }
      if (skipMissing) { missing.add(needed.toString('hex', at, at + HASH_SIZE)); continue; }
      throw new DormantError('EIO', `chunk ${needed.toString('hex', at, at + HASH_SIZE)} of '${name}' is no longer here `
        + '(the volume changed during the transfer: snapshot it and send the snapshot)');
    }
    const body = full.subarray(0, records * (HASH_SIZE + BLOCK_SIZE));
    if (records > 0) await request(host, 'PUT', `/v1/receive/${id}/chunks`, body);
    bytes += body.length;
    chunks += records;
  });
  return { bytes, chunks, missing };
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

interface Session { inc: ReceiveSession; timer: NodeJS.Timeout }

/** The receiving side of pushes and patches: one session per volume being received. */
export class Receiver {
  private readonly sessions = new Map<string, Session>();

  constructor(private readonly store: Store, private readonly log: (line: string) => void = () => undefined,
    /** Marks the blocks of a lazy commit absent (lazy.ts); without it lazy commits are refused. */
    private readonly lazy?: { add(volume: string, deferred: Map<string, number[]>): void }) {}

  /**
   * Called when a patch rewrote blocks of a volume in place, before its
   * commit is answered (a VM's memory here drops those pages from the page
   * cache); a failure fails the commit.
   */
  onPatched?: (volume: string, blocks: number[]) => Promise<void>;

  /** Starts receiving the volume of manifest `wire` (as `as`); a session for the same name is dropped first. */
  async begin(wire: Buffer, as?: string): Promise<ReceiveBegin> {
    const m: Manifest = decodeManifest(wire);
    const names = targetNames(m, as);
    await this.forget(names.volume);
    if (await IncomingVolume.alreadyHere(this.store, m, as)) return { id: '', needed: 0, chunksPresent: 0, alreadyPresent: true, volume: names.full };
    return this.add(await IncomingVolume.open(this.store, m, as), `as ${names.full}`);
  }

  /**
   * Applies patch `wire` (patch.ts, carrying its chunks) to a volume here
   * and commits it (as `commit` does, with `partial` and `lazy`).
   */
  async applyPatch(wire: Buffer, partial = false, lazy = false): Promise<{ volume: string; blocks: number; chunksMissing: number; absent?: number }> {
    const p = await PatchVolume.open(this.store, wire);
    const missing = p.remaining;
    const { id } = this.add(p, 'at once');
    const r = await this.commit(id, partial, lazy);
    return { volume: r.volume, blocks: p.blocks.length, chunksMissing: missing, ...(r.absent !== undefined ? { absent: r.absent } : {}) };
  }

  private add(inc: ReceiveSession, how: string): ReceiveBegin {
    const id = crypto.randomBytes(12).toString('hex');
    this.sessions.set(id, { inc, timer: this.idleTimer(id) });
    this.log(`receive ${inc.label}${how ? ` ${how}` : ''}: ${inc.remaining} chunks to come, ${inc.chunksPresent} here already`);
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

  /**
   * Commits session `id` (`partial`: although chunks are missing; `lazy`:
   * the chunks missing will be fetched from the sender when read, their
   * blocks are marked absent; see ReceiveSession.finish).
   */
  async commit(id: string, partial = false, lazy = false): Promise<{ volume: string; origin: string | null; missing?: number; absent?: number }> {
    const s = this.session(id);
    if (lazy && !this.lazy) throw new DormantError('EINVAL', 'this host cannot receive volumes lazily (its daemon has no VM runner)');
    const { deferred, patched, ...r } = await s.inc.finish(partial, lazy);
    clearTimeout(s.timer);
    this.sessions.delete(id);
    let absent: number | undefined;
    if (deferred) {
      this.lazy!.add(s.inc.target, deferred);
      absent = [...deferred.values()].reduce((n, b) => n + b.length, 0);
    }
    // (after the lazy blocks are marked absent: a page read in between would be a hole's zeroes)
    if (patched?.length) await this.onPatched?.(s.inc.target, patched);
    this.log(`received ${s.inc.label} as ${r.volume}: ${s.inc.chunksReceived} chunks sent, ${s.inc.chunksPresent} here already`
      + `${r.missing ? `, ${r.missing} left for a patch` : ''}${deferred ? `, ${deferred.size} to be fetched when read (${absent} blocks)` : ''}`);
    return { ...r, ...(absent !== undefined ? { absent } : {}) };
  }

  /** Drops the session receiving volume `volume`, if any (a staging volume stays). */
  async forget(volume: string): Promise<void> {
    for (const [id, s] of [...this.sessions]) if (s.inc.target === volume) await this.drop(id);
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
