/**
 * Locality: how scattered a volume's blocks lie in the segments, and
 * putting scattered ones back in order.
 *
 * The store is log-structured: a volume written at random has its new
 * chunks in write order, so a later sequential read gathers a block here
 * and a block there (reader.ts) instead of sending one run of a segment.
 * Relocation copies the chunks of a range to fresh consecutive slots of the
 * active segment, in block order, and re-points them in one commit; their
 * old slots become garbage that GC reclaims.
 *
 * What moves: committed chunks with one reference, written in the name's
 * own lineage. A chunk that several block-map entries share (a golden
 * image's block a branch copied elsewhere, deduplicated content) and one a
 * branch inherits from its origin (the origin's other branches read it in
 * the origin's order) stay where they are, so relocating one volume never
 * scatters another and two volumes never pull a chunk back and forth.
 * Pending chunks stay too (their place is the write-back's until the
 * flush).
 *
 * Safety: chunk ids never change, so a reader resolves either the old or
 * the new place (descriptors of deleted files stay open). The copies are
 * checked against their hashes when read, and synced before the commit
 * that points at them (a crash before it leaves unreferenced slots:
 * garbage). The commit re-points a chunk only if it still lies where it
 * was read (GC, a repair or another relocation may have moved it, or it
 * was freed). GC and relocation never run at once (the store's
 * `exclusive`): GC may seal and compact the active segment, which holds
 * the copies until their commit.
 *
 * In the background (Relocator): a read of at least SCATTER_MIN_BLOCKS
 * whose blocks lie in more than one run per SCATTER_RUN_BLOCKS notes its
 * extents (EXTENT_BLOCKS each); a loop relocates them, up to BATCH_EXTENTS
 * per commit, at most `bytesPerSecond`, one batch at a time, between
 * client requests. Only disk volumes (and their snapshots) are noted: a
 * memory volume's pages are rewritten at every page-out of its VM, so
 * their order would not last.
 */
import { BLOCK_SIZE, HASH_SIZE } from './constants.js';
import { xxh3, type HashFunction } from './hash.js';
import { DormantError } from './errors.js';
import { UNRESOLVED } from './blockmap.js';
import type { GcContext } from './gc.js';
import type { Point } from './catalog.js';
import type { IndexDbs } from './index-db.js';
import type { BlockPlaces, Location } from './segments.js';
import type { Locality, RelocatorStats } from './types.js';
import { chunkKey, decodeChunk, encodeChunk, mapKey, parseMapKey } from './keys.js';

/** A read of at least this many blocks may note its range as scattered. */
export const SCATTER_MIN_BLOCKS = 32;
/** ...when its blocks lie in more than one run of consecutive slots per this many blocks (128 KiB). */
export const SCATTER_RUN_BLOCKS = 32;
/** Blocks per extent the background loop relocates (1 MiB). */
export const EXTENT_BLOCKS = 256;
/** Extents relocated per commit (at most 4 MiB copied before one sync). */
const BATCH_EXTENTS = 4;
/** Extents waiting at most; more are dropped (they are noted again when read again). */
const MAX_QUEUED = 4096;
/** Blocks per page of the locality sample (pages whole, sampled evenly). */
const SAMPLE_PAGE = 1024;
/** The background loop waits this many times as long as a batch took before the next. */
const IDLE_PER_BUSY = 2;
/** Default pace of the background loop. */
export const RELOCATE_BYTES_PER_S = 128 * 1024 * 1024;

/** What relocation needs from the store: GC's context (its commit need not forget cached look-ups), and the chunk hash. */
export interface LocalityContext extends GcContext {
  hash: HashFunction;
}

/** A range of one name's blocks. */
export interface BlockRange { name: string; first: number; count: number }

/** What a relocation did. */
export interface RelocateResult {
  /** Mapped blocks of the ranges looked at. */
  blocks: number;
  /** Runs of consecutive slots among them before and after. */
  runsBefore: number;
  runsAfter: number;
  /** Chunks copied to new slots and re-pointed. */
  chunksMoved: number;
}

/** Room relocation leaves on the file system beside what it copies. */
const ROOM_MARGIN = 64 * 1024 * 1024;

/**
 * Relocates the scattered chunks of `ranges` (see the header); with
 * `force`, even a range that lies in few runs. One commit for them all.
 */
export async function relocate(ctx: LocalityContext, ranges: BlockRange[], force = false): Promise<RelocateResult> {
  const result: RelocateResult = { blocks: 0, runsBefore: 0, runsAfter: 0, chunksMoved: 0 };
  const moved: Array<{ id: number; from: Location; to: Location }> = [];
  const seen = new Set<number>();
  for (const r of ranges) {
    if (!ctx.catalog.volumes.has(r.name) && !ctx.catalog.snapshots.has(r.name)) continue; // removed meanwhile
    const size = Math.ceil(ctx.catalog.resolve(r.name).size / BLOCK_SIZE);
    const first = Math.max(0, r.first);
    const count = Math.min(r.count, size - first);
    if (count <= 0) continue;
    const t = ctx.engine.target(r.name);
    const ids = ctx.engine.resolve(t, first, count);
    const own = t.chain[0];
    const places = ids.map((id) => placeOf(ctx, id));
    const before = runsOf(places);
    result.blocks += before.mapped;
    result.runsBefore += before.runs;
    if (!force && before.runs <= 1 + before.mapped / SCATTER_RUN_BLOCKS) { result.runsAfter += before.runs; continue; }
    if (ctx.freeBytes !== undefined && ctx.freeBytes() < count * BLOCK_SIZE + ROOM_MARGIN) { result.runsAfter += before.runs; continue; }
    const picked: number[] = [];
    for (let i = 0; i < count; i++) {
      const p = places[i];
      if (p === null || p.refs !== 1 || seen.has(ids[i])) continue;
      // Inherited from an origin: that chunk lies in the origin's order, which its other branches read too.
      if (t.chain.length > 1 && ctx.blockMap.seek(own.lineage, first + i, own.version) !== ids[i]) continue;
      seen.add(ids[i]);
      picked.push(i);
    }
    if (picked.length === 0) { result.runsAfter += before.runs; continue; }
    // Read from the places the commit will check, each checked against its hash: EIO, never a bad copy.
    const data = readChecked(ctx, picked.map((i) => places[i]!), r.name, picked.map((i) => first + i));
    picked.forEach((i, k) => {
      const p = places[i]!;
      const to = ctx.segments.append(data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE));
      moved.push({ id: ids[i], from: { segment: p.segment, slot: p.slot }, to });
      places[i] = { ...p, segment: to.segment, slot: to.slot };
    });
    result.runsAfter += runsOf(places).runs;
  }
  if (moved.length === 0) return result;
  const repointed = await ctx.commit(() => {
    const delta = new Map<number, number>();
    const done: typeof moved = [];
    for (const m of moved) {
      const raw = ctx.dbs.chunks.getBinary(chunkKey(m.id));
      if (!raw) continue;
      const c = decodeChunk(raw);
      if (c.segment !== m.from.segment || c.slot !== m.from.slot) continue;
      ctx.dbs.chunks.put(chunkKey(m.id), encodeChunk({ ...c, segment: m.to.segment, slot: m.to.slot }));
      delta.set(m.from.segment, (delta.get(m.from.segment) ?? 0) - 1);
      delta.set(m.to.segment, (delta.get(m.to.segment) ?? 0) + 1);
      done.push(m);
    }
    for (const [s, d] of delta) {
      const live = (ctx.dbs.segments.get(s) ?? 0) + d;
      if (live > 0) ctx.dbs.segments.put(s, live); else ctx.dbs.segments.remove(s);
    }
    return done;
  }, () => ctx.segments.sync());
  // Cached places follow; the old places stay readable (same bytes) until GC, which forgets every cached place.
  ctx.engine.moved(repointed);
  result.chunksMoved = repointed.length;
  return result;
}

/**
 * The blocks at `places`, each checked against its hash: one native call
 * for the lot with the native hash (SegmentFiles.gather), else one by one.
 */
function readChecked(ctx: LocalityContext, places: Place[], name: string, blocks: number[]): Buffer {
  const n = places.length;
  const out = Buffer.allocUnsafe(n * BLOCK_SIZE);
  const bad = (k: number, how = 'does not match its checksum') => new DormantError('EIO',
    `data in segment ${places[k].segment} slot ${places[k].slot} ${how} (block ${blocks[k]} of ${name})`,
    { volume: name, offset: blocks[k] * BLOCK_SIZE, length: BLOCK_SIZE });
  if (ctx.hash === xxh3) {
    const hashes = Buffer.allocUnsafe(n * HASH_SIZE);
    const at: BlockPlaces = { segment: new Int32Array(n), slot: new Float64Array(n), pending: new Uint8Array(n) };
    places.forEach((p, k) => { at.segment[k] = p.segment; at.slot[k] = p.slot; p.hash.copy(hashes, k * HASH_SIZE); });
    const r = ctx.segments.gather(at, n, out, 0, hashes);
    if (r === -1) return out;
    if (r !== null) throw r >= 0 ? bad(r) : bad(-2 - r, 'lies past the end of its file');
  }
  places.forEach((p, k) => {
    ctx.segments.readInto({ segment: p.segment, slot: p.slot }, out, k * BLOCK_SIZE);
    if (!ctx.hash(out.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE)).equals(p.hash)) throw bad(k);
  });
  return out;
}

interface Place { segment: number; slot: number; refs: number; hash: Buffer }

/**
 * Store.relocate's walk: `count` blocks of `name` from `first` (all of its
 * `size` blocks by default), BATCH_EXTENTS extents per call of `run` (one
 * commit each), until done or `stop()`; the results summed.
 */
export async function relocateBatches(name: string, size: number, opts: { first?: number; count?: number },
  run: (ranges: BlockRange[]) => Promise<RelocateResult>, stop: () => boolean): Promise<RelocateResult> {
  const first = opts.first ?? 0;
  const end = Math.min(size, opts.count === undefined ? size : first + opts.count);
  const total: RelocateResult = { blocks: 0, runsBefore: 0, runsAfter: 0, chunksMoved: 0 };
  for (let at = first; at < end && !stop();) {
    const ranges: BlockRange[] = [];
    for (let k = 0; k < BATCH_EXTENTS && at < end; k++, at += EXTENT_BLOCKS) {
      ranges.push({ name, first: at, count: Math.min(EXTENT_BLOCKS, end - at) });
    }
    const r = await run(ranges);
    total.blocks += r.blocks; total.runsBefore += r.runsBefore; total.runsAfter += r.runsAfter; total.chunksMoved += r.chunksMoved;
  }
  return total;
}

/** A committed chunk's place and references; null for a hole or a pending chunk. */
function placeOf(ctx: Pick<LocalityContext, 'dbs' | 'writeback'>, id: number): Place | null {
  if (id === 0 || ctx.writeback.newPlace(id, scratch)) return null;
  const raw = ctx.dbs.chunks.getBinary(chunkKey(id));
  if (!raw) throw new DormantError('EIO', `chunk ${id} is missing from the index`);
  return { segment: raw.readUInt32BE(16), slot: raw.readUInt32BE(20), refs: raw.readUInt32BE(24), hash: Buffer.from(raw.subarray(0, HASH_SIZE)) };
}
const scratch = new Uint32Array(2);

/** Mapped blocks, runs of consecutive slots among them, and neighbouring pairs out of order. */
function runsOf(places: Array<{ segment: number; slot: number } | null>): { mapped: number; runs: number; pairs: number; breaks: number } {
  let mapped = 0, runs = 0, pairs = 0, breaks = 0;
  for (let i = 0; i < places.length; i++) {
    const p = places[i];
    if (p === null) continue;
    mapped++;
    const q = i > 0 ? places[i - 1] : null;
    if (q === null) { runs++; continue; }
    pairs++;
    if (p.segment !== q.segment || p.slot !== q.slot + 1) { runs++; breaks++; }
  }
  return { mapped, runs, pairs, breaks };
}

/**
 * Pages (SAMPLE_PAGE blocks) of `chain` that hold any block-map entry,
 * with `memo` caching each lineage's pages across calls (one seek per page
 * with entries, not a walk of every entry).
 */
function pagesOf(dbs: IndexDbs, chain: Point[], memo: Map<number, number[]>): number[] {
  const all = new Set<number>();
  for (const p of chain) {
    let pages = memo.get(p.lineage);
    if (!pages) {
      pages = [];
      for (let from = 0; ;) {
        let block = -1;
        for (const { key } of dbs.map.getRange({ start: mapKey(p.lineage, from, 0), end: mapKey(p.lineage + 1, 0, 0), limit: 1 })) {
          block = parseMapKey(key).block;
        }
        if (block < 0) break;
        const page = Math.floor(block / SAMPLE_PAGE);
        pages.push(page);
        from = (page + 1) * SAMPLE_PAGE;
      }
      memo.set(p.lineage, pages);
    }
    for (const page of pages) all.add(page);
  }
  return [...all].sort((a, b) => a - b);
}

/**
 * Locality of committed blocks of `names` together: up to `maxPages`
 * pages with entries, sampled evenly, shared among the names.
 */
export function measureLocality(ctx: Pick<LocalityContext, 'dbs' | 'catalog' | 'blockMap' | 'writeback'>, names: string[],
  maxPages: number): Locality {
  const memo = new Map<number, number[]>();
  let sampled = 0, runs = 0, pairs = 0, breaks = 0;
  const perName = Math.max(1, Math.floor(maxPages / Math.max(1, names.length)));
  for (const name of names) {
    const chain = ctx.catalog.chain(ctx.catalog.pointOf(name));
    const size = Math.ceil(ctx.catalog.resolve(name).size / BLOCK_SIZE);
    const pages = pagesOf(ctx.dbs, chain, memo).filter((p) => p * SAMPLE_PAGE < size);
    const step = Math.max(1, pages.length / perName);
    for (let k = 0; k < pages.length && k / step < perName; k += step) {
      const page = pages[Math.floor(k)];
      const out = new Array<number>(Math.min(SAMPLE_PAGE, size - page * SAMPLE_PAGE)).fill(UNRESOLVED);
      ctx.blockMap.lookupRange(chain, page * SAMPLE_PAGE, out);
      const r = runsOf(out.map((id) => placeOf(ctx, id)));
      sampled += r.mapped; runs += r.runs; pairs += r.pairs; breaks += r.breaks;
    }
  }
  return { sampledBlocks: sampled, runs, fragmentation: pairs === 0 ? 0 : breaks / pairs };
}

/**
 * The background loop: extents noted by scattered reads, relocated in
 * batches at a bounded pace. `run` relocates a batch (under the store's
 * exclusion with GC); `log` hears of failures.
 */
export class Relocator {
  private readonly queue = new Map<string, BlockRange>();
  private running: Promise<void> | null = null;
  private stopped = false;
  private timer: NodeJS.Timeout | null = null;
  private wake: (() => void) | null = null;
  readonly stats: RelocatorStats = { queued: 0, extents: 0, chunksMoved: 0 };

  constructor(
    private readonly run: (ranges: BlockRange[]) => Promise<RelocateResult>,
    private readonly bytesPerSecond: number,
    private readonly log: (message: string) => void,
  ) {}

  /** A read of `count` blocks of `name` from `first` found them scattered. */
  note(name: string, first: number, count: number): void {
    if (this.stopped) return;
    for (let e = Math.floor(first / EXTENT_BLOCKS); e * EXTENT_BLOCKS < first + count; e++) {
      if (this.queue.size >= MAX_QUEUED) break;
      this.queue.set(`${name}\0${e}`, { name, first: e * EXTENT_BLOCKS, count: EXTENT_BLOCKS });
    }
    this.stats.queued = this.queue.size;
    if (this.running === null && this.timer === null && this.queue.size > 0) this.running = this.loop();
  }

  /** Stops the loop and waits for a batch in flight. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.queue.clear();
    if (this.timer) { clearTimeout(this.timer); this.timer = null; }
    this.wake?.();
    await this.running;
  }

  private async loop(): Promise<void> {
    try {
      while (!this.stopped && this.queue.size > 0) {
        const batch: BlockRange[] = [];
        for (const [key, r] of this.queue) {
          this.queue.delete(key);
          batch.push(r);
          if (batch.length === BATCH_EXTENTS) break;
        }
        this.stats.queued = this.queue.size + batch.length; // the batch in flight counts until it is done
        const started = performance.now();
        let moved = 0;
        try {
          const r = await this.run(batch);
          moved = r.chunksMoved;
          this.stats.extents += batch.length;
          this.stats.chunksMoved += moved;
        } catch (err) {
          if (this.stopped) return;
          this.log(`relocation of ${batch.map((b) => `${b.name} blocks ${b.first}+${b.count}`).join(', ')} failed: ${(err as Error).message}`);
        }
        this.stats.queued = this.queue.size;
        // Pace: at most bytesPerSecond, and idle twice as long as the batch took (clients first).
        const took = performance.now() - started;
        const wait = Math.max((moved * BLOCK_SIZE * 1000) / this.bytesPerSecond - took, took * IDLE_PER_BUSY);
        await new Promise<void>((resolve) => {
          this.wake = resolve;
          this.timer = setTimeout(() => { this.timer = null; resolve(); }, Math.max(0, wait));
          this.timer.unref();
        });
        this.wake = null;
      }
    } finally {
      this.running = null;
    }
  }
}

/** Pages of 1,024 blocks `info` and `stats` sample for their locality figure. */
const LOCALITY_SAMPLE_PAGES = 64;

/**
 * The store's side of locality: relocation batches (run one at a time with
 * GC: `exclusive`), the background loop when it is on, and the figures of
 * `info` and `stats`. Store delegates to it.
 */
export class StoreLocality {
  private readonly relocator: Relocator | null = null;
  private tail: Promise<void> = Promise.resolve();

  constructor(
    private readonly ctx: LocalityContext,
    /** StoreOptions.relocate: false, true, or the pace in bytes per second. */
    relocateOption: boolean | number | undefined,
    log: (message: string) => void,
    /** The store is closing: no batch starts. */
    private readonly closing: () => boolean,
  ) {
    if (relocateOption) {
      this.relocator = new Relocator((ranges) => this.run(ranges, false),
        typeof relocateOption === 'number' ? relocateOption : RELOCATE_BYTES_PER_S, log);
    }
  }

  /** The background loop is on: the engine's reads should tell noteScattered. */
  get background(): boolean { return this.relocator !== null; }

  /** A request's read of `n` blocks of `name` found them scattered: noted, for a disk volume or its snapshot. */
  noteScattered(name: string, first: number, n: number): void {
    const kind = (this.ctx.catalog.volumes.get(name) ?? this.ctx.catalog.snapshots.get(name))?.kind;
    if (kind === 'disk') this.relocator?.note(name, first, n);
  }

  /** Store.relocate: `name`'s blocks (of `size`) in batches, each a commit. */
  relocate(name: string, size: number, opts: { first?: number; count?: number; force?: boolean }): Promise<RelocateResult> {
    return relocateBatches(name, size, opts, (ranges) => this.run(ranges, Boolean(opts.force)), this.closing);
  }

  /** How scattered `names` lie (a sample). */
  measure(names: string[]): Locality {
    return measureLocality(this.ctx, names, LOCALITY_SAMPLE_PAGES);
  }

  /** The background loop's counters, or null when it is off. */
  stats(): RelocatorStats | null {
    return this.relocator ? { ...this.relocator.stats } : null;
  }

  /** Runs `fn` after every GC and relocation batch before it (one at a time). */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const before = this.tail;
    let done!: () => void;
    this.tail = new Promise<void>((resolve) => { done = resolve; });
    try {
      await before;
      return await fn();
    } finally {
      done();
    }
  }

  /** Stops the background loop (close). */
  stop(): Promise<void> {
    return this.relocator?.stop() ?? Promise.resolve();
  }

  private run(ranges: BlockRange[], force: boolean): Promise<RelocateResult> {
    return this.exclusive(async () => (this.closing()
      ? { blocks: 0, runsBefore: 0, runsAfter: 0, chunksMoved: 0 }
      : relocate(this.ctx, ranges, force)));
  }
}
