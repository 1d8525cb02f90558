/**
 * Data verification (`check --data`, `scrub`): every committed chunk is read
 * back from its segment file and checked against its hash; each damaged
 * chunk is reported with the volumes and snapshots (and byte offsets) that
 * read it; with `repair`, a damaged chunk is rewritten from another stored
 * chunk of the same hash whose bytes verify (a later write of the same
 * content that was stored apart because the byte compare against the
 * damaged copy failed).
 *
 * Order of work (the caller flushed, so every committed chunk is in its
 * file; nothing here holds the JS thread for long):
 *  1. count the chunks per segment (the chunk table read in slices);
 *  2. per window of segments (WINDOW_CHUNKS chunks at most in memory): read
 *     their chunk records, then each segment's live slots in batches of
 *     BATCH_SLOTS with reads and hashing on libuv's pool (the native hash;
 *     an injected hash function runs here); a batch the disk cannot read is
 *     read again chunk by chunk to tell which chunks fail; a bound on the
 *     rate sleeps between batches;
 *  3. a chunk that fails is checked again where the index puts it now (GC
 *     may have moved it meanwhile, or freed it): only then is it damaged;
 *  4. users of damaged chunks: one pass over the block map for entries
 *     naming them, each confirmed by a look-up at the volume or snapshot;
 *  5. repair: the good copy is appended to the active segment, synced, and
 *     the damaged chunk's record re-pointed to it in one commit (as GC moves
 *     chunks; the id, hash and references stay). Its old slot becomes
 *     garbage; the chunk is left as it was if it moved meanwhile.
 * Segments are read through descriptors of their own, so a segment GC
 * deletes during the run stays readable until its window is done.
 */
import fs from 'node:fs';
import { BLOCK_SIZE, HASH_SIZE, SEGMENT_HEADER_SIZE } from './constants.js';
import type { BlockMap } from './blockmap.js';
import type { Catalog, Point } from './catalog.js';
import type { BlockEngine } from './engine.js';
import type { HashFunction } from './hash.js';
import type { IndexDbs } from './index-db.js';
import { chunkKey, decodeChunk, decodeIds, encodeChunk, parseChunkKey, parseMapKey, parseMapValue } from './keys.js';
import { checkHeader, segmentPath, slotOffset } from './segment-file.js';
import type { SegmentFiles } from './segments.js';
import type { ChunkUser, DamagedChunk, DataReport, VerifyOptions } from './types.js';

/** Chunks whose records are held in memory at once (a window of segments). */
const WINDOW_CHUNKS = 131072;
/** Slots read and hashed per batch (4 MiB). */
const BATCH_SLOTS = 1024;
/** Index records read per slice before yielding to the event loop. */
const SCAN_SLICE = 16384;
/** Users listed per damaged chunk. */
const MAX_USERS = 20;

/** What verification needs from the store. */
export interface VerifyContext {
  dbs: IndexDbs;
  catalog: Catalog;
  blockMap: BlockMap;
  segments: SegmentFiles;
  engine: BlockEngine;
  hash: HashFunction;
  commit<T>(body: () => T, before?: () => Promise<void>): Promise<T>;
  /** True once the store is closing: the run stops. */
  closed(): boolean;
}

interface ChunkAt { id: number; slot: number; hash: Buffer }

const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

/** Reads every committed chunk and checks it; see the file's note. */
export async function verifyChunks(ctx: VerifyContext, opts: VerifyOptions = {}): Promise<DataReport> {
  const started = Date.now();
  const report: DataReport = { chunks: 0, bytes: 0, seconds: 0, damaged: [], repaired: 0, badSegments: [], complete: false };
  const stop = () => ctx.closed() || Boolean(opts.signal?.aborted);
  const perSegment = new Map<number, number>();
  const counted = await scanChunks(ctx, stop, (_id, segment) => { perSegment.set(segment, (perSegment.get(segment) ?? 0) + 1); });
  if (!counted) return finish(report, started);
  let total = 0;
  for (const n of perSegment.values()) total += n;
  const run = new Run(ctx, opts, report, total * BLOCK_SIZE, started, stop);

  let window = new Set<number>();
  let inWindow = 0;
  const segments = [...perSegment.keys()].sort((a, b) => a - b);
  for (let i = 0; i < segments.length; i++) {
    window.add(segments[i]);
    inWindow += perSegment.get(segments[i])!;
    if (inWindow < WINDOW_CHUNKS && i < segments.length - 1) continue;
    if (!await run.window(window)) return finish(report, started);
    window = new Set();
    inWindow = 0;
  }
  if (report.damaged.length > 0) {
    if (!await findUsers(ctx, report.damaged, stop)) return finish(report, started);
    if (opts.repair) {
      for (const d of report.damaged) {
        if (stop()) return finish(report, started);
        await repairChunk(ctx, d);
        if (d.repaired) report.repaired++;
      }
    }
  }
  report.complete = true;
  return finish(report, started);
}

function finish(report: DataReport, started: number): DataReport {
  report.seconds = (Date.now() - started) / 1000;
  return report;
}

/** Calls `each` for every chunk record, in slices; false when stopped. */
async function scanChunks(ctx: VerifyContext, stop: () => boolean,
  each: (id: number, segment: number, slot: number, hash: Buffer) => void): Promise<boolean> {
  let start: Buffer | undefined;
  for (;;) {
    if (stop()) return false;
    let n = 0;
    let last: Buffer | undefined;
    for (const { key, value } of ctx.dbs.chunks.getRange({ start, limit: SCAN_SLICE, snapshot: false })) {
      const c = decodeChunk(value);
      each(parseChunkKey(key), c.segment, c.slot, c.hash);
      last = key;
      n++;
    }
    if (n < SCAN_SLICE || !last) return true;
    start = Buffer.concat([last, Buffer.alloc(1)]); // the smallest key after `last`
    await tick();
  }
}

/** One verification run: reads windows of segments, keeps the report. */
class Run {
  private done = 0;
  private readonly buf = Buffer.allocUnsafe(BATCH_SLOTS * BLOCK_SIZE);
  private readonly one = Buffer.allocUnsafe(BLOCK_SIZE);

  constructor(private readonly ctx: VerifyContext, private readonly opts: VerifyOptions, private readonly report: DataReport,
    private readonly total: number, private readonly started: number, private readonly stop: () => boolean) {}

  /** Verifies every chunk of the segments in `window`; false when stopped. */
  async window(window: Set<number>): Promise<boolean> {
    const bySegment = new Map<number, ChunkAt[]>();
    const scanned = await scanChunks(this.ctx, this.stop, (id, segment, slot, hash) => {
      if (!window.has(segment)) return;
      let list = bySegment.get(segment);
      if (!list) { list = []; bySegment.set(segment, list); }
      list.push({ id, slot, hash });
    });
    if (!scanned) return false;
    for (const [segment, chunks] of [...bySegment].sort((a, b) => a[0] - b[0])) {
      chunks.sort((a, b) => a.slot - b.slot);
      if (!await this.segment(segment, chunks)) return false;
    }
    return true;
  }

  /** Verifies the chunks of one segment (sorted by slot); false when stopped. */
  private async segment(segment: number, chunks: ChunkAt[]): Promise<boolean> {
    let fh: fs.promises.FileHandle;
    try {
      fh = await fs.promises.open(segmentPath(this.ctx.segments.dir, segment), 'r');
    } catch (err) {
      for (const c of chunks) await this.suspect(c, segment, `its segment file cannot be opened: ${(err as Error).message}`);
      return this.advance(chunks.length);
    }
    try {
      await this.header(fh, segment);
      const size = (await fh.stat()).size;
      for (let i = 0; i < chunks.length;) {
        const first = chunks[i].slot;
        let j = i;
        while (j + 1 < chunks.length && chunks[j + 1].slot < first + BATCH_SLOTS) j++;
        await this.batch(fh, size, segment, chunks.slice(i, j + 1));
        if (!await this.advance(j + 1 - i)) return false;
        i = j + 1;
      }
    } finally {
      await fh.close();
    }
    return true;
  }

  /** Reports a segment whose header fails its checks (its chunks are still read one by one). */
  private async header(fh: fs.promises.FileHandle, segment: number): Promise<void> {
    try {
      await fh.read(this.one, 0, SEGMENT_HEADER_SIZE, 0); // into the page cache: the check below reads it again
      checkHeader(fh.fd, segment, this.ctx.hash);
    } catch (err) {
      this.report.badSegments.push((err as Error).message);
    }
  }

  /** Reads the slots of `chunks` (all within BATCH_SLOTS of the first) with one read and checks each. */
  private async batch(fh: fs.promises.FileHandle, size: number, segment: number, chunks: ChunkAt[]): Promise<void> {
    const first = chunks[0].slot;
    const slots = chunks[chunks.length - 1].slot - first + 1;
    const inFile = Math.max(0, Math.min(slots, Math.floor((size - slotOffset(first)) / BLOCK_SIZE)));
    let got = 0;
    let readError: Error | null = null;
    try {
      while (got < inFile * BLOCK_SIZE) {
        const { bytesRead } = await fh.read(this.buf, got, inFile * BLOCK_SIZE - got, slotOffset(first) + got);
        if (bytesRead === 0) break;
        got += bytesRead;
      }
    } catch (err) {
      readError = err as Error;
    }
    const data = this.buf.subarray(0, Math.floor(got / BLOCK_SIZE) * BLOCK_SIZE);
    const hashed = data.length > 0 ? await this.ctx.engine.hashAsync(data) : null;
    for (const c of chunks) {
      const at = (c.slot - first) * BLOCK_SIZE;
      if (at + BLOCK_SIZE > data.length) {
        // Past the file's end, or the batch could not be read: each chunk alone tells which ones fail.
        const problem = readError
          ? await readChunkAt(this.ctx, segment, c.slot, c.hash, this.one)
          : `lies beyond the end of segment ${segment}`;
        if (problem !== null) await this.suspect(c, segment, problem);
        continue;
      }
      const k = at / BLOCK_SIZE;
      const good = hashed
        ? hashed.hashes.compare(c.hash, 0, HASH_SIZE, k * HASH_SIZE, (k + 1) * HASH_SIZE) === 0
        : this.ctx.hash(data.subarray(at, at + BLOCK_SIZE)).equals(c.hash);
      if (!good) await this.suspect(c, segment, 'does not match its checksum');
    }
  }

  /**
   * A chunk that failed where the scan found it: damaged if the index still
   * puts it there; checked again where it lies now if GC moved it; nothing
   * if it was freed meanwhile.
   */
  private async suspect(c: ChunkAt, segment: number, problem: string): Promise<void> {
    const raw = this.ctx.dbs.chunks.getBinary(chunkKey(c.id));
    if (!raw) return;
    const now = decodeChunk(raw);
    if (now.segment !== segment || now.slot !== c.slot) {
      const again = await readChunkAt(this.ctx, now.segment, now.slot, now.hash, this.one);
      if (again === null) return;
      segment = now.segment;
      c = { id: c.id, slot: now.slot, hash: now.hash };
      problem = again;
    }
    this.report.damaged.push({
      chunk: c.id, hash: c.hash.toString('hex'), segment, slot: c.slot, problem, users: [], moreUsers: 0, repaired: false,
    });
  }

  /** Counts `n` chunks as done: progress, the rate bound; false when the run must stop. */
  private async advance(n: number): Promise<boolean> {
    this.done += n * BLOCK_SIZE;
    this.report.chunks += n;
    this.report.bytes += n * BLOCK_SIZE;
    this.opts.progress?.(this.done, this.total);
    const rate = this.opts.rate ?? 0;
    if (rate > 0) {
      const due = this.started + (this.done / rate) * 1000;
      while (Date.now() < due && !this.stop()) {
        await new Promise((resolve) => setTimeout(resolve, Math.min(250, due - Date.now())));
      }
    } else {
      await tick();
    }
    return !this.stop();
  }
}

/** Reads the chunk in `segment`/`slot` and checks it against `hash`: null when good, else what is wrong. */
async function readChunkAt(ctx: VerifyContext, segment: number, slot: number, hash: Buffer, out: Buffer): Promise<string | null> {
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(segmentPath(ctx.segments.dir, segment), 'r');
  } catch (err) {
    return `its segment file cannot be opened: ${(err as Error).message}`;
  }
  try {
    const { bytesRead } = await fh.read(out, 0, BLOCK_SIZE, slotOffset(slot));
    if (bytesRead !== BLOCK_SIZE) return `lies beyond the end of segment ${segment}`;
  } catch (err) {
    return `cannot be read: ${(err as Error).message}`;
  } finally {
    await fh.close();
  }
  return ctx.hash(out).equals(hash) ? null : 'does not match its checksum';
}

/** Fills in the users of each damaged chunk: block map entries naming it, confirmed by a look-up; false when stopped. */
async function findUsers(ctx: VerifyContext, damaged: DamagedChunk[], stop: () => boolean): Promise<boolean> {
  const byId = new Map(damaged.map((d) => [d.chunk, { d, seen: new Set<string>() }]));
  const named = [...ctx.catalog.volumes.keys(), ...ctx.catalog.snapshots.keys()];
  const points = named.map((name) => {
    const point = ctx.catalog.pointOf(name);
    return { name, size: ctx.catalog.resolve(name).size, chain: ctx.catalog.chain(point) };
  });
  const sees = (chain: Point[], lineage: number, version: number) => chain.some((p) => p.lineage === lineage && p.version >= version);
  let start: Buffer | undefined;
  for (;;) {
    if (stop()) return false;
    let n = 0;
    let last: Buffer | undefined;
    for (const { key, value } of ctx.dbs.map.getRange({ start, limit: SCAN_SLICE, snapshot: false })) {
      last = key;
      n++;
      const hit = byId.get(parseMapValue(value));
      if (!hit) continue;
      const k = parseMapKey(key);
      for (const p of points) {
        if (k.block * BLOCK_SIZE >= p.size || !sees(p.chain, k.lineage, k.version)) continue;
        if (ctx.blockMap.lookup(p.chain, k.block) !== hit.d.chunk) continue;
        const user: ChunkUser = { name: p.name, offset: k.block * BLOCK_SIZE };
        const id = `${user.name}:${user.offset}`;
        if (hit.seen.has(id)) continue;
        hit.seen.add(id);
        if (hit.d.users.length < MAX_USERS) hit.d.users.push(user); else hit.d.moreUsers++;
      }
    }
    if (n < SCAN_SLICE || !last) break;
    start = Buffer.concat([last, Buffer.alloc(1)]);
    await tick();
  }
  for (const { d } of byId.values()) {
    d.users.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.offset - b.offset));
  }
  return true;
}

/** Rewrites damaged chunk `d` from another chunk of the same hash whose bytes verify (see the file's note). */
async function repairChunk(ctx: VerifyContext, d: DamagedChunk): Promise<void> {
  const hash = Buffer.from(d.hash, 'hex');
  const good = Buffer.allocUnsafe(BLOCK_SIZE);
  let from = 0;
  for (const id of decodeIds(ctx.dbs.hashes.getBinary(hash))) {
    if (id === d.chunk) continue;
    const raw = ctx.dbs.chunks.getBinary(chunkKey(id));
    if (!raw) continue;
    const c = decodeChunk(raw);
    if (!c.hash.equals(hash)) continue;
    if (await readChunkAt(ctx, c.segment, c.slot, hash, good) === null) { from = id; break; }
  }
  if (from === 0) {
    d.repair = 'not repairable: no other stored copy of its content verifies';
    return;
  }
  const to = ctx.segments.append(good);
  const moved = await ctx.commit(() => {
    const raw = ctx.dbs.chunks.getBinary(chunkKey(d.chunk));
    if (!raw) return false;
    const c = decodeChunk(raw);
    if (c.segment !== d.segment || c.slot !== d.slot) return false;
    ctx.dbs.chunks.put(chunkKey(d.chunk), encodeChunk({ ...c, segment: to.segment, slot: to.slot }));
    const left = (ctx.dbs.segments.get(d.segment) ?? 0) - 1;
    if (left > 0) ctx.dbs.segments.put(d.segment, left); else ctx.dbs.segments.remove(d.segment);
    ctx.dbs.segments.put(to.segment, (ctx.dbs.segments.get(to.segment) ?? 0) + 1);
    return true;
  }, () => ctx.segments.sync());
  if (moved) {
    d.repaired = true;
    d.repair = `rewritten from chunk ${from} (segment ${to.segment}, slot ${to.slot})`;
  } else {
    d.repair = 'not repaired: the chunk changed while it was being repaired (run again)';
  }
}
