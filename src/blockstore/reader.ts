/**
 * The read path of the block engine: which chunk each block of a point
 * resolves to, where that chunk lives, and its bytes, checked.
 *
 * Resolve: pending write-back entries first (only for a volume's head),
 * then the block id cache, then the committed block map down the branch
 * chain, whole cache pages at a time. Locate: a pending chunk's place is
 * the write-back's; a committed one's comes from the chunk location cache,
 * filled a page of chunk records at a time. Every chunk read is checked
 * against its hash: a mismatch is EIO, never wrong data.
 *
 * Cold/warm estimate: while reads are served from the page cache they are
 * copies from the segments' mappings on the JS thread. A copy slower than
 * a cache hit means the disk is being read (a page fault waits for it);
 * reads then go to libuv's pool for COLD_HOLD_MS (`coldUntil`), so that
 * one cold read does not stall every other request. State: `coldUntil`,
 * and a moving average of synchronous read time beyond the copy
 * (`excessMs`).
 *
 * Caches (cache.ts) hold only what the committed index says: `invalidate`
 * empties them whenever a commit may have changed it. Everything here but
 * `readBlocksAsync`'s pool reads is synchronous, on the JS thread, and
 * decides what to read from one consistent view of the index.
 */
import { BLOCK_SIZE, HASH_SIZE } from './constants.js';
import { DormantError } from './errors.js';
import { xxh3, type HashFunction } from './hash.js';
import { verifyBlocks } from '../native/index.js';
import type { IndexDbs } from './index-db.js';
import { UNRESOLVED, type BlockMap } from './blockmap.js';
import { BLOCK_CACHE_PAGE, BlockIdCache, CHUNK_CACHE_PAGE, ChunkLocationCache } from './cache.js';
import { chunkKey, parseChunkKey } from './keys.js';
import { HOLE_SEGMENT, type BlockPlaces, type Location, type SegmentFiles } from './segments.js';
import type { ReadOptions, StoredRange } from './types.js';
import type { Writeback } from './writeback.js';
import type { Fingerprints } from './fingerprints.js';
import type { Target } from './engine.js';
import { SCATTER_MIN_BLOCKS, SCATTER_RUN_BLOCKS } from './locality.js';

/** Average time of synchronous reads beyond the copy, above which the page cache is missing. */
const COLD_EXCESS_MS = 0.25;
/** Bytes per ms a page-cache hit copies at the least (1 GB/s). */
const CACHED_BYTES_PER_MS = 1e6;
/**
 * Time a page-cache hit may take per run of consecutive slots beyond the
 * copy (ms): the first touch of a page of a mapping is a minor fault, which
 * maps the cached pages around it; a read from the disk costs far more.
 * Without it, a read of scattered blocks through pages not mapped yet
 * looked cold, went to RWF_NOWAIT reads, and so never mapped them.
 */
const CACHED_MS_PER_RUN = 0.025;
/** How long reads go to libuv's pool after a cold synchronous read. */
const COLD_HOLD_MS = 250;
/** One view in this many is timed for the cold/warm estimate. */
const VIEW_SAMPLE = 4;

/** Runs of consecutive slots to read, and the expected hash of every block. */
interface ReadPlan {
  runs: Array<{ index: number; count: number; loc: Location }>;
  hashes: Buffer;
  segs: number[];
  slots: number[];
}

/** Reads of whole blocks, checked against their chunks' hashes. */
export class BlockReader {
  /** Until this performance.now(), reads go to libuv's pool (the page cache is missing); 0: warm. */
  private coldUntil = 0;
  /** Moving average of synchronous read time beyond the copy (ms). */
  private excessMs = 0;
  private readonly blockIds = new BlockIdCache();
  private readonly chunkPlaces = new ChunkLocationCache();
  private readonly where = new Uint32Array(2);
  /** Expected hashes of a view being checked (readView is synchronous). */
  private viewHashes = Buffer.allocUnsafe(256 * HASH_SIZE);
  /** Views handed out (every VIEW_SAMPLE-th is timed). */
  private views = 0;
  /** Where the blocks of the request being read lie (`place`; grown as needed). */
  private places: BlockPlaces = { segment: new Int32Array(256), slot: new Float64Array(256), pending: new Uint8Array(256) };
  /** How many runs of consecutive slots the last `place` found. */
  private placedRuns = 0;
  /** Their expected hashes. */
  private placeHashes = Buffer.allocUnsafe(256 * HASH_SIZE);
  /** The last `locate` found a pending (uncommitted) chunk. */
  private locatedNew = false;
  /** The hash is xxh3-128, which native code checks for whole runs at once. */
  private readonly nativeHash: boolean;
  /** Told of a request's read whose blocks lie scattered (locality.ts: the background relocation). */
  onScattered: ((t: Target, first: number, n: number) => void) | null = null;

  constructor(
    private readonly dbs: IndexDbs,
    private readonly blockMap: BlockMap,
    private readonly segments: SegmentFiles,
    private readonly writeback: Writeback,
    private readonly hash: HashFunction,
    private readonly fingerprints: Fingerprints,
    /** Always read through libuv's pool (StoreOptions.readMode 'pool'). */
    private readonly poolReads: boolean,
  ) {
    this.nativeHash = hash === xxh3;
  }

  /**
   * Chunk ids (0 = hole) of `n` blocks from `first`: pending writes first,
   * then the block id cache, then the committed index for the rest (whole
   * cache pages at a time, which are then cached).
   */
  resolve(t: Target, first: number, n: number): number[] {
    const ids = new Array<number>(n).fill(UNRESOLVED);
    if (t.head && this.writeback.hasLineage(t.point.lineage)) {
      for (let i = 0; i < n; i++) {
        const pending = this.writeback.target(t.point.lineage, first + i, t.point.version);
        if (pending >= 0) ids[i] = pending;
      }
    }
    const key = t.key;
    if (this.blockIds.fill(key, first, ids, UNRESOLVED) === 0) return ids;
    // Misses load whole cache pages: one forward scan of the index per page
    // costs far less per block than a seek per block, and neighbours are
    // likely read next.
    const P = BLOCK_CACHE_PAGE;
    for (let page = Math.floor(first / P); page * P < first + n; page++) {
      const from = Math.max(first, page * P) - first;
      const to = Math.min(first + n, (page + 1) * P) - first;
      let missing = false;
      for (let i = from; i < to && !missing; i++) missing = ids[i] === UNRESOLVED;
      if (!missing) continue;
      const committed = new Array<number>(P).fill(UNRESOLVED);
      this.blockMap.lookupRange(t.chain, page * P, committed);
      this.blockIds.store(key, page * P, committed);
      for (let i = from; i < to; i++) if (ids[i] === UNRESOLVED) ids[i] = committed[first + i - page * P];
    }
    return ids;
  }

  /**
   * Chunk id (0 = hole) of block `b` as `resolve` gives it, for scattered
   * blocks: a miss seeks the committed index for this block alone instead
   * of loading (and caching) its whole cache page.
   */
  resolveOne(t: Target, b: number): number {
    if (t.head && this.writeback.hasLineage(t.point.lineage)) {
      const pending = this.writeback.target(t.point.lineage, b, t.point.version);
      if (pending >= 0) return pending;
    }
    const one = [UNRESOLVED];
    if (this.blockIds.fill(t.key, b, one, UNRESOLVED) === 0) return one[0];
    return this.blockMap.lookup(t.chain, b);
  }

  /** Forgets cached index look-ups: call when a commit changed the index or the catalog. */
  invalidate(): void {
    this.blockIds.clear();
    this.chunkPlaces.clear();
  }

  /** Committed chunks now lie elsewhere (relocation): cached places follow, nothing else is forgotten. */
  moved(moves: ReadonlyArray<{ id: number; to: Location }>): void {
    for (const m of moves) this.chunkPlaces.move(m.id, m.to.segment, m.to.slot);
  }

  /**
   * Reads `n` whole blocks into `out` at `outOffset`; attributes them to
   * `label`. Wherever the blocks lie, one native call copies them out of
   * the segments' mappings and checks each against its hash (`gather`).
   * Synchronous: for read-modify-write inside one operation.
   */
  readBlocks(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): void {
    const places = this.place(t, first, n, label);
    if (this.gather(places, t, first, n, out, outOffset)) return;
    const plan = this.runsOf(places, n, out, outOffset);
    for (const r of plan.runs) this.segments.readRun(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE);
    this.verify(plan, t, first, out, outOffset);
  }

  /**
   * `readBlocks` for request handlers, adapting to the page cache. Which
   * chunks to read is decided synchronously (one consistent view of the
   * index). While reads are served from the page cache they are copies from
   * the segments' mappings, on the JS thread, all of a request's blocks in
   * one native call. A copy slower than a cache hit means the disk is being
   * read (a page fault waits for it): for COLD_HOLD_MS each run of
   * consecutive slots is then read with RWF_NOWAIT, and a run that is not
   * cached goes to libuv's pool, so one cold read does not stall every
   * other request; after that a mapped copy probes again. A wrong guess
   * (the JS thread was only preempted) costs a system call per run.
   */
  async readBlocksAsync(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): Promise<void> {
    const places = this.place(t, first, n, label);
    if (this.onScattered !== null && n >= SCATTER_MIN_BLOCKS && this.placedRuns > 1 + n / SCATTER_RUN_BLOCKS) {
      this.onScattered(t, first, n);
    }
    if (!this.poolReads && performance.now() >= this.coldUntil) {
      const started = performance.now();
      if (this.gather(places, t, first, n, out, outOffset)) {
        this.sampleReadTime(started, n, this.placedRuns);
        return;
      }
    }
    const plan = this.runsOf(places, n, out, outOffset);
    if (plan.runs.length > 0 && (this.poolReads || performance.now() < this.coldUntil)) {
      const cold = this.poolReads ? plan.runs
        : plan.runs.filter((r) => !this.segments.readRunCached(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE));
      if (cold.length > 0) {
        await Promise.all(cold.map((r) => this.segments.readRunAsync(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE)));
      }
    } else if (plan.runs.length > 0) {
      const started = performance.now();
      for (const r of plan.runs) this.segments.readRun(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE);
      this.sampleReadTime(started, n, plan.runs.length);
    }
    this.verify(plan, t, first, out, outOffset);
  }

  /**
   * The `n` blocks from `first` as a read-only view of a segment mapping,
   * checked against their hashes, when they are one run of consecutive
   * written slots and reads are not in cold mode; else null (nothing
   * attributed: the caller reads them the ordinary way). No copy at all:
   * for replies. Only committed chunks are viewed. `stored`
   * (ReadOptions.stored) hears of the view and its file range.
   */
  readView(t: Target, first: number, n: number, label?: string, stored?: ReadOptions['stored']): Buffer | null {
    if (this.poolReads || performance.now() < this.coldUntil) return null;
    const ids = this.resolve(t, first, n);
    // Checked synchronously below: a scratch buffer serves every view.
    if (this.viewHashes.length < n * HASH_SIZE) this.viewHashes = Buffer.allocUnsafe(n * HASH_SIZE);
    const hashes = this.viewHashes;
    const loc = this.committedRun(ids, n, hashes);
    if (loc === null) return null;
    const view = this.segments.view(loc, n);
    if (view === null) return null;
    // Hashing touches every page: a slow pass means the disk was read. Timed every VIEW_SAMPLE
    // views (a clock read costs as much as the rest of a small view's work).
    const timed = ++this.views % VIEW_SAMPLE === 0;
    const started = timed ? performance.now() : 0;
    const bad = this.firstBadBlock(view, hashes, 0);
    if (bad >= 0) throw this.damaged({ segment: loc.segment, slot: loc.slot + bad }, t.name, first + bad);
    if (timed) this.sampleReadTime(started, n, 1);
    if (label !== undefined) this.fingerprints.record(label, ids);
    if (stored !== undefined) stored(view, this.segments.fileOf(loc));
    return view;
  }

  /**
   * The `n` blocks from `first` as a range of one segment file with their
   * expected hashes, for a reader that reads and checks them itself (the
   * FUSE view's answers on libuv's pool), when they are one run of
   * consecutive committed slots; else null (nothing attributed). The file
   * stays open until `release()`.
   */
  readFile(t: Target, first: number, n: number, label?: string): StoredRange | null {
    const ids = this.resolve(t, first, n);
    const hashes = Buffer.allocUnsafe(n * HASH_SIZE);
    const loc = this.committedRun(ids, n, hashes);
    if (loc === null) return null;
    const file = this.segments.pinnedFile(loc, n);
    if (file === null) return null;
    if (label !== undefined) this.fingerprints.record(label, ids);
    return { ...file, hashes, segment: loc.segment, slot: loc.slot };
  }

  /**
   * Where the chunks `ids` lie when they are one run of consecutive
   * committed slots (their hashes copied into `hashes`), else null: a hole,
   * a jump, or a pending chunk (its slot may be rewritten, or freed and
   * landed in by another block's write, while a view or a file range of it
   * is still being sent: its bytes are copied instead, by the caller's
   * ordinary read).
   */
  private committedRun(ids: number[], n: number, hashes: Buffer): Location | null {
    if (ids[0] === 0) return null;
    const loc = this.locate(ids[0], hashes, 0);
    if (this.locatedNew) return null;
    for (let i = 1; i < n; i++) {
      if (ids[i] === 0) return null;
      const l = this.locate(ids[i], hashes, i * HASH_SIZE);
      if (this.locatedNew || l.segment !== loc.segment || l.slot !== loc.slot + i) return null;
    }
    return loc;
  }

  /** Feeds the time a synchronous read of n blocks in `runs` runs of consecutive slots took into the cold/warm estimate. */
  private sampleReadTime(started: number, n: number, runs: number): void {
    // Time beyond what copying from the page cache takes, averaged so that
    // one preempted read does not flip the mode; a probe after a hold that
    // finds the cache warm resets the average at once.
    // Each sample is capped, so a single scheduling stall of milliseconds
    // cannot flip the mode; three slow reads in a row do.
    const excess = Math.min(4 * COLD_EXCESS_MS,
      Math.max(0, performance.now() - started - (n * BLOCK_SIZE) / CACHED_BYTES_PER_MS - runs * CACHED_MS_PER_RUN));
    this.excessMs = this.coldUntil > 0 && excess < COLD_EXCESS_MS ? excess : this.excessMs * 0.9 + excess * 0.1;
    this.coldUntil = this.excessMs > COLD_EXCESS_MS ? performance.now() + COLD_HOLD_MS : 0;
  }

  /**
   * Where each of `n` blocks from `first` lies (this.places, valid until
   * the next call: use it synchronously) and its expected hash
   * (`placeHashes`); attributes the chunks to `label`.
   */
  private place(t: Target, first: number, n: number, label?: string): BlockPlaces {
    const ids = this.resolve(t, first, n);
    let p = this.places;
    if (p.segment.length < n) {
      const size = Math.max(n, 2 * p.segment.length);
      p = this.places = { segment: new Int32Array(size), slot: new Float64Array(size), pending: new Uint8Array(size) };
      this.placeHashes = Buffer.allocUnsafe(size * HASH_SIZE);
    }
    const hashes = this.placeHashes;
    let runs = 0;
    for (let i = 0; i < n; i++) {
      if (ids[i] === 0) { p.segment[i] = HOLE_SEGMENT; continue; }
      const loc = this.locate(ids[i], hashes, i * HASH_SIZE);
      if (i === 0 || loc.segment !== p.segment[i - 1] || loc.slot !== p.slot[i - 1] + 1) runs++;
      p.segment[i] = loc.segment;
      p.slot[i] = loc.slot;
      p.pending[i] = this.locatedNew ? 1 : 0;
    }
    this.placedRuns = runs;
    if (label !== undefined) this.fingerprints.record(label, ids);
    return p;
  }

  /**
   * Reads and checks the placed blocks in one native call (SegmentFiles.
   * gather); false, with nothing read, when they lie in too many segments
   * or the hash is not the native one (then the caller goes run by run).
   */
  private gather(places: BlockPlaces, t: Target, first: number, n: number, out: Buffer, outOffset: number): boolean {
    if (!this.nativeHash) return false;
    const r = this.segments.gather(places, n, out, outOffset, this.placeHashes);
    if (r === null) return false;
    if (r === -1) return true;
    const k = r >= 0 ? r : -2 - r;
    const loc = { segment: places.segment[k], slot: places.slot[k] };
    if (r >= 0) throw this.damaged(loc, t.name, first + k);
    throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`,
      { volume: t.name, offset: (first + k) * BLOCK_SIZE, length: BLOCK_SIZE });
  }

  /**
   * The placed blocks as runs of consecutive slots to read (holes
   * zero-filled in `out`), with copies of the places and hashes the runs
   * need, which stay valid across awaits.
   */
  private runsOf(places: BlockPlaces, n: number, out: Buffer, outOffset: number): ReadPlan {
    const segs = Array.from(places.segment.subarray(0, n));
    const slots = Array.from(places.slot.subarray(0, n));
    const hashes = Buffer.from(this.placeHashes.subarray(0, n * HASH_SIZE));
    const runs: ReadPlan['runs'] = [];
    for (let i = 0; i < n;) {
      if (segs[i] === HOLE_SEGMENT) {
        out.fill(0, outOffset + i * BLOCK_SIZE, outOffset + (i + 1) * BLOCK_SIZE);
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && segs[j] === segs[i] && slots[j] === slots[i] + (j - i)) j++;
      runs.push({ index: i, count: j - i, loc: { segment: segs[i], slot: slots[i] } });
      i = j;
    }
    return { runs, hashes, segs, slots };
  }

  /** Checks every block read against its chunk's hash (EIO on mismatch). */
  private verify(plan: ReadPlan, t: Target, first: number, out: Buffer, outOffset: number): void {
    for (const r of plan.runs) {
      const start = outOffset + r.index * BLOCK_SIZE;
      const bad = this.firstBadBlock(out.subarray(start, start + r.count * BLOCK_SIZE), plan.hashes, r.index * HASH_SIZE);
      if (bad >= 0) {
        const k = r.index + bad;
        throw this.damaged({ segment: plan.segs[k], slot: plan.slots[k] }, t.name, first + k);
      }
    }
  }

  /** -1 when each block i of `data` hashes to hashes[at + i*16, +16), else the first i that does not. */
  private firstBadBlock(data: Buffer, hashes: Buffer, at: number): number {
    if (this.nativeHash) return verifyBlocks(data, hashes, at);
    for (let k = 0; k * BLOCK_SIZE < data.length; k++) {
      const h = this.hash(data.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE));
      if (h.compare(hashes, at + k * HASH_SIZE, at + (k + 1) * HASH_SIZE) !== 0) return k;
    }
    return -1;
  }

  /** Segment location of chunk `id`; copies its hash into `hashOut` at `hashAt`. */
  private locate(id: number, hashOut: Buffer, hashAt: number): Location {
    this.locatedNew = this.writeback.newPlace(id, this.where, hashOut, hashAt);
    if (this.locatedNew || this.chunkPlaces.get(id, hashOut, hashAt, this.where)) {
      return { segment: this.where[0], slot: this.where[1] };
    }
    // A miss loads the chunk records of its whole cache page (ids are
    // handed out in write order, so a page is usually one written extent).
    const P = CHUNK_CACHE_PAGE;
    const page = Math.floor(id / P);
    for (const { key, value } of this.dbs.chunks.getRange({ start: chunkKey(page * P), end: chunkKey((page + 1) * P) })) {
      this.chunkPlaces.set(parseChunkKey(key), value, 0, value.readUInt32BE(16), value.readUInt32BE(20));
    }
    if (this.chunkPlaces.get(id, hashOut, hashAt, this.where)) return { segment: this.where[0], slot: this.where[1] };
    throw new DormantError('EIO', `chunk ${id} is missing from the index`);
  }

  /** The EIO of a chunk at `loc` whose bytes do not match its hash (block `block` of `volume`, when known). */
  private damaged(loc: Location, volume?: string, block?: number): DormantError {
    const where = volume === undefined ? '' : ` (block ${block} of ${volume})`;
    return new DormantError('EIO',
      `data in segment ${loc.segment} slot ${loc.slot} does not match its checksum${where}`,
      { volume, offset: block === undefined ? undefined : block * BLOCK_SIZE, length: BLOCK_SIZE });
  }

  /** Location and hash of a chunk (pending or committed). */
  chunkLocation(id: number): { loc: Location; hash: Buffer } {
    const hash = Buffer.allocUnsafe(HASH_SIZE);
    return { loc: this.locate(id, hash, 0), hash };
  }

  /** Reads a chunk into `out`, verifying it against its hash (EIO on mismatch). */
  readChunk(id: number, out: Buffer, at: number, volume?: string, block?: number): void {
    const { loc, hash } = this.chunkLocation(id);
    this.segments.readInto(loc, out, at);
    if (!this.hash(out.subarray(at, at + BLOCK_SIZE)).equals(hash)) throw this.damaged(loc, volume, block);
  }
}
