/**
 * The block engine: reads, writes and zeroes whole blocks of a point.
 *
 * Read: pending write-back entries first (only for a volume's head), then
 * the committed block map down the branch chain; every chunk read is checked
 * against its hash (a mismatch is EIO, never wrong data).
 * Write: an all-zero block becomes a hole; otherwise the block is hashed and
 * shared with an existing chunk only if the bytes compare equal (the hash is
 * not trusted alone); else it is stored as a new chunk: in the slot of the
 * block's own uncommitted chunk when nothing else refers to that one
 * (writeback.ts), else appended to a segment: through its append buffer for
 * small writes, into reserved slots written straight from the caller's
 * buffer for writes of DIRECT_APPEND_BLOCKS blocks or more. Such a big
 * write takes a run of blocks whose own chunks sit in consecutive slots at
 * once (`rewriteRun`: their renaming in one native call, one slot write)
 * as long as no block of it may be a duplicate.
 *
 * Everything here is synchronous and runs to completion on the JS thread, so
 * no two operations interleave inside a block; only flush (store.ts) awaits,
 * and big writes may be hashed beforehand on libuv's pool (`hashAsync`).
 */
import { BLOCK_SIZE, HASH_SIZE, ZERO_BLOCK } from './constants.js';
import { DormantError } from './errors.js';
import { xxh3, type HashFunction } from './hash.js';
import { hashBlocks, hashPagesAsync, verifyBlocks } from '../native/index.js';
import { HashFilter, type FilterBits } from './hash-filter.js';
import type { IndexDbs } from './index-db.js';
import type { Catalog, Point } from './catalog.js';
import { BlockMap, UNRESOLVED } from './blockmap.js';
import { BLOCK_CACHE_PAGE, BlockIdCache, CHUNK_CACHE_PAGE, ChunkLocationCache } from './cache.js';
import { chunkKey, decodeIds, parseChunkKey } from './keys.js';
import type { Location, SegmentFiles } from './segments.js';
import { FreeSlots } from './landing.js';
import type { BlockHashes, ReadOptions } from './types.js';
import type { Writeback } from './writeback.js';
import type { Fingerprints } from './fingerprints.js';

const MAX_CHUNK_ID = 2 ** 53 - 1;
/** Average time of synchronous reads beyond the copy, above which the page cache is missing. */
const COLD_EXCESS_MS = 0.25;
/** Bytes per ms a page-cache hit copies at the least (1 GB/s). */
const CACHED_BYTES_PER_MS = 1e6;
/** How long reads go to libuv's pool after a cold synchronous read. */
const COLD_HOLD_MS = 250;
/** One view in this many is timed for the cold/warm estimate. */
const VIEW_SAMPLE = 4;
/**
 * Writes of this many blocks (256 KiB) or more append into reserved slots,
 * one pwrite per run from the write's own buffer, instead of copying each
 * block into the segment's append buffer.
 */
const DIRECT_APPEND_BLOCKS = 64;


/** Runs of consecutive slots to read, and the expected hash of every block. */
interface ReadPlan {
  runs: Array<{ index: number; count: number; loc: Location }>;
  hashes: Buffer;
  segs: number[];
  slots: number[];
}

/** A point to read or write, with its search chain. */
export interface Target {
  name: string;
  point: Point;
  chain: Point[];
  /** True for a volume's head: pending writes are visible. */
  head: boolean;
  /** The chain's key in the block id cache. */
  key: string;
}

/** Block-level operations shared by every volume handle. */
export class BlockEngine {
  private readonly scratch = Buffer.allocUnsafe(BLOCK_SIZE);
  /** Until this performance.now(), reads go to libuv's pool (the page cache is missing); 0: warm. */
  private coldUntil = 0;
  /** Moving average of synchronous read time beyond the copy (ms). */
  private excessMs = 0;
  readonly blockMap: BlockMap;
  private readonly blockIds = new BlockIdCache();
  private readonly chunkPlaces = new ChunkLocationCache();
  private readonly where = new Uint32Array(2);
  /** Place of the chunk a write may overwrite (segment, slot). */
  private readonly rewriteAt = new Uint32Array(2);
  /** A run `rewriteRun` may take: first chunk id, segment, first slot. */
  private readonly runAt = new Float64Array(3);
  private hashScratch = Buffer.allocUnsafe(256 * HASH_SIZE);
  /** Expected hashes of a view being checked (readView is synchronous). */
  private viewHashes = Buffer.allocUnsafe(256 * HASH_SIZE);
  /** Views handed out (every VIEW_SAMPLE-th is timed). */
  private views = 0;
  /** The last `locate` found a pending (uncommitted) chunk. */
  private locatedNew = false;
  private zeroScratch = new Uint8Array(256);
  /** Which hashes the store may hold (built from the index after open). */
  readonly filter: HashFilter;
  /** The hash is xxh3-128, which native code computes for whole runs at once. */
  private readonly nativeHash: boolean;
  /**
   * Slot writes of the current writeBlocks call not yet made (overwrites of
   * own slots, and reserved slots of a big write's appends): consecutive
   * slots, consecutive source blocks.
   */
  private slotRun: { loc: Location; count: number; src: Buffer; srcOffset: number; fresh: boolean } | null = null;
  /** The current writeBlocks call appends into reserved slots, written from its buffer (no append-buffer copy). */
  private directAppends = false;
  /** Slot writes of the current writeBlocks call in flight on libuv's pool (null: write synchronously). */
  private landing: Promise<void>[] | null = null;
  /** Free runs of slots, for landings (landing.ts). */
  private readonly freeSlots = new FreeSlots();
  /** The current writeBlocks call's data already lies in these slots (a landed write), and which of them it used. */
  private landedAt: Location | null = null;
  private landedUsed = new Uint8Array(256);
  /** Old slots the current landed write freed, gathered into a run. */
  private freedRun = { segment: 0, slot: 0, count: 0 };

  constructor(
    private readonly dbs: IndexDbs,
    private readonly catalog: Catalog,
    private readonly segments: SegmentFiles,
    private readonly writeback: Writeback,
    private readonly hash: HashFunction,
    private readonly fingerprints: Fingerprints,
    private nextChunkId: number,
    /** Always read through libuv's pool (StoreOptions.readMode 'pool'). */
    private readonly poolReads = false,
  ) {
    this.blockMap = new BlockMap(dbs);
    this.nativeHash = hash === xxh3;
    this.filter = new HashFilter(dbs.hashes);
  }

  /** Target for reading or writing `name` now. */
  target(name: string): Target {
    const point = this.catalog.pointOf(name);
    const chain = this.catalog.chain(point);
    return { name, point, chain, head: !name.includes('@'), key: BlockIdCache.key(chain) };
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

  /** Forgets cached index look-ups: call when a commit changed the index or the catalog. */
  invalidate(): void {
    this.blockIds.clear();
    this.chunkPlaces.clear();
  }

  /**
   * Reads `n` whole blocks into `out` at `outOffset`; attributes them to
   * `label`. Chunks in consecutive slots of one segment are read with one
   * system call, then each block is checked against its hash. Synchronous:
   * for read-modify-write inside one operation.
   */
  readBlocks(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): void {
    const plan = this.plan(t, first, n, out, outOffset, label);
    for (const r of plan.runs) this.segments.readRun(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE);
    this.verify(plan, t, first, out, outOffset);
  }

  /**
   * `readBlocks` for request handlers, adapting to the page cache. Which
   * chunks to read is decided synchronously (one consistent view of the
   * index). While reads are served from the page cache they are copies from
   * the segments' mappings, on the JS thread. A copy slower than a cache hit
   * means the disk is being read (a page fault waits for it): for
   * COLD_HOLD_MS each run is then read with RWF_NOWAIT, and a run that is
   * not cached goes to libuv's pool, so one cold read does not stall every
   * other request; after that a mapped copy probes again. A wrong guess
   * (the JS thread was only preempted) costs a system call per run.
   */
  async readBlocksAsync(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): Promise<void> {
    const plan = this.plan(t, first, n, out, outOffset, label);
    if (plan.runs.length > 0 && (this.poolReads || performance.now() < this.coldUntil)) {
      const cold = this.poolReads ? plan.runs
        : plan.runs.filter((r) => !this.segments.readRunCached(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE));
      if (cold.length > 0) {
        await Promise.all(cold.map((r) => this.segments.readRunAsync(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE)));
      }
    } else if (plan.runs.length > 0) {
      const started = performance.now();
      for (const r of plan.runs) this.segments.readRun(r.loc, r.count, out, outOffset + r.index * BLOCK_SIZE);
      this.sampleReadTime(started, n);
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
    if (ids[0] === 0) return null;
    // Checked synchronously below: a scratch buffer serves every view.
    if (this.viewHashes.length < n * HASH_SIZE) this.viewHashes = Buffer.allocUnsafe(n * HASH_SIZE);
    const hashes = this.viewHashes;
    const loc = this.locate(ids[0], hashes, 0);
    let pending = this.locatedNew;
    for (let i = 1; i < n; i++) {
      if (ids[i] === 0) return null;
      const l = this.locate(ids[i], hashes, i * HASH_SIZE);
      if (l.segment !== loc.segment || l.slot !== loc.slot + i) return null;
      if (this.locatedNew) pending = true;
    }
    // A pending chunk's slot may be rewritten, or freed and landed in by another block's write, while a
    // view of it waits on a socket: its bytes are copied instead (the caller's ordinary read).
    if (pending) return null;
    const view = this.segments.view(loc, n);
    if (view === null) return null;
    // Hashing touches every page: a slow pass means the disk was read. Timed every VIEW_SAMPLE
    // views (a clock read costs as much as the rest of a small view's work).
    const timed = ++this.views % VIEW_SAMPLE === 0;
    const started = timed ? performance.now() : 0;
    const bad = this.firstBadBlock(view, hashes, 0);
    if (bad >= 0) throw this.damaged({ segment: loc.segment, slot: loc.slot + bad }, t.name, first + bad);
    if (timed) this.sampleReadTime(started, n);
    if (label !== undefined) this.fingerprints.record(label, ids);
    if (stored !== undefined) stored(view, this.segments.fileOf(loc));
    return view;
  }

  /** Feeds the time a synchronous read of n blocks took into the cold/warm estimate. */
  private sampleReadTime(started: number, n: number): void {
    // Time beyond what copying from the page cache takes, averaged so that
    // one preempted read does not flip the mode; a probe after a hold that
    // finds the cache warm resets the average at once.
    // Each sample is capped, so a single scheduling stall of milliseconds
    // cannot flip the mode; three slow reads in a row do.
    const excess = Math.min(4 * COLD_EXCESS_MS,
      Math.max(0, performance.now() - started - (n * BLOCK_SIZE) / CACHED_BYTES_PER_MS));
    this.excessMs = this.coldUntil > 0 && excess < COLD_EXCESS_MS ? excess : this.excessMs * 0.9 + excess * 0.1;
    this.coldUntil = this.excessMs > COLD_EXCESS_MS ? performance.now() + COLD_HOLD_MS : 0;
  }

  /** Resolves blocks to chunk locations, zero-fills holes, groups consecutive slots into runs. */
  private plan(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): ReadPlan {
    const ids = this.resolve(t, first, n);
    const segs = new Array<number>(n);
    const slots = new Array<number>(n);
    const hashes = Buffer.allocUnsafe(n * HASH_SIZE);
    for (let i = 0; i < n; i++) {
      if (ids[i] === 0) continue;
      const loc = this.locate(ids[i], hashes, i * HASH_SIZE);
      segs[i] = loc.segment;
      slots[i] = loc.slot;
    }
    const runs: ReadPlan['runs'] = [];
    for (let i = 0; i < n;) {
      if (ids[i] === 0) {
        out.fill(0, outOffset + i * BLOCK_SIZE, outOffset + (i + 1) * BLOCK_SIZE);
        i++;
        continue;
      }
      let j = i + 1;
      while (j < n && ids[j] !== 0 && segs[j] === segs[i] && slots[j] === slots[i] + (j - i)) j++;
      runs.push({ index: i, count: j - i, loc: { segment: segs[i], slot: slots[i] } });
      i = j;
    }
    if (label !== undefined) this.fingerprints.record(label, ids);
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

  private damaged(loc: Location, volume?: string, block?: number): DormantError {
    const where = volume === undefined ? '' : ` (block ${block} of ${volume})`;
    return new DormantError('EIO',
      `data in segment ${loc.segment} slot ${loc.slot} does not match its checksum${where}`,
      { volume, offset: block === undefined ? undefined : block * BLOCK_SIZE, length: BLOCK_SIZE });
  }

  /**
   * Writes whole blocks from `data` (length n * BLOCK_SIZE) at block
   * `first`. With the default hash, all blocks are hashed (and tested for
   * zeroes) by one native call. Blocks whose new content goes into their
   * own uncommitted chunk's slot, and the blocks of a big write, are written
   * in runs of consecutive slots before this returns, or with `async` on
   * libuv's pool: the promise returned then resolves once they have landed,
   * and `data` must not change until it does (reads of those slots are
   * served from it meanwhile).
   */
  writeBlocks(t: Target, first: number, data: Buffer, hashed?: BlockHashes, async = false, landed?: Location): Promise<void> | undefined {
    const n = data.length / BLOCK_SIZE;
    if (landed !== undefined) {
      this.landedAt = landed;
      if (this.landedUsed.length < n) this.landedUsed = new Uint8Array(n);
      this.landedUsed.fill(0, 0, n);
    }
    const { lineage, version } = t.point;
    let hashes: Buffer = this.hashScratch;
    let zero: Uint8Array = this.zeroScratch;
    if (hashed !== undefined) {
      hashes = hashed.hashes;
      zero = hashed.zero;
    } else if (this.nativeHash) {
      if (hashes.length < n * HASH_SIZE) {
        hashes = this.hashScratch = Buffer.allocUnsafe(n * HASH_SIZE);
        zero = this.zeroScratch = new Uint8Array(n);
      }
      hashBlocks(data, hashes, zero);
    } else {
      hashes = Buffer.allocUnsafe(n * HASH_SIZE);
      zero = new Uint8Array(n);
      for (let i = 0; i < n; i++) {
        const block = data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
        if (block.equals(ZERO_BLOCK)) zero[i] = 1; else this.hash(block).copy(hashes, i * HASH_SIZE);
      }
    }
    this.directAppends = n >= DIRECT_APPEND_BLOCKS && landed === undefined;
    this.landing = async && this.directAppends ? [] : null;
    let landing: Promise<void>[] | null = null;
    // Big writes rewrite runs of their own new chunks in place a run at a time (`rewriteRun`).
    const runs = (this.directAppends || landed !== undefined) && this.nativeHash ? this.filter.bits() : null;
    try {
      for (let i = 0; i < n;) {
        if (runs !== null) {
          const done = this.rewriteRun(t, first + i, n - i, data, i, hashes, zero, runs);
          if (done > 0) {
            i += done;
            continue;
          }
          if (landed !== undefined) {
            const added = this.addLandedRun(t, first + i, n - i, i, hashes, zero, runs);
            if (added > 0) {
              i += added;
              continue;
            }
          }
        }
        let target = 0;
        if (zero[i] !== 1) {
          const reuse = this.writeback.rewritable(lineage, first + i);
          target = this.storeChunk(data, i, hashes, reuse !== 0 && this.canRewrite(reuse) ? reuse : 0);
        }
        this.writeback.set(lineage, first + i, version, target);
        i++;
      }
    } finally {
      if (landed !== undefined) this.endLanded(landed, n);
      this.directAppends = false;
      try {
        this.writeSlotRun();
      } finally {
        landing = this.landing;
        this.landing = null;
      }
    }
    // (On a throw above, writes already started still land; a failure of theirs is sync()'s to report.)
    return landing !== null && landing.length > 0 ? Promise.all(landing).then(() => undefined) : undefined;
  }

  /**
   * A landing place for a big write of `n` blocks: `buffer` is a writable
   * view of `n` slots in the page cache for the payload to be read into,
   * `loc` the first slot; null when none can be had (the write goes the
   * ordinary way). Pass both to `writeBlocks` (`landed`) once the payload
   * is in, or to `abandonLanding` if it never comes.
   */
  land(n: number): { loc: Location; buffer: Buffer } | null {
    const loc = this.freeSlots.take(n, (seg, slot, count) => this.segments.landings.canLandAt(seg, slot, count))
      ?? this.segments.landings.reserveFresh(n);
    if (loc === null) return null;
    return { loc, buffer: this.segments.landings.landingView(loc, n) };
  }

  /** A landing whose payload never came: its slots are free again. Only once nothing can still write into its buffer. */
  abandonLanding(loc: Location, n: number): void {
    this.freeSlots.free(loc.segment, loc.slot, n);
    this.segments.landings.endLanding(loc.segment);
  }

  /** Forgets the free slots of `segment` (GC is compacting or deleted it). */
  forgetSlotsOf(segment: number): void {
    this.freeSlots.purge(segment);
  }

  /** The end of a landed writeBlocks call: landed slots it did not use, and the old slots it freed, are free. */
  private endLanded(landed: Location, n: number): void {
    this.landedAt = null;
    this.flushFreed();
    const used = this.landedUsed;
    for (let i = 0; i < n;) {
      if (used[i] === 1) { i++; continue; }
      let j = i + 1;
      while (j < n && used[j] === 0) j++;
      this.freeSlots.free(landed.segment, landed.slot + i, j - i);
      i = j;
    }
    this.segments.landings.endLanding(landed.segment);
  }

  /** Old slots freed by a landed write, gathered into runs (single slots would be dropped as too short). */
  private freeSlot(segment: number, slot: number, count: number): void {
    const r = this.freedRun;
    if (r.count > 0 && r.segment === segment && r.slot + r.count === slot) {
      r.count += count;
      return;
    }
    this.flushFreed();
    r.segment = segment;
    r.slot = slot;
    r.count = count;
  }

  private flushFreed(): void {
    const r = this.freedRun;
    if (r.count > 0) this.freeSlots.free(r.segment, r.slot, r.count);
    r.count = 0;
  }

  /**
   * Hashes and zero flags of `data`'s blocks, computed on libuv's pool (for
   * big writes: the JS thread goes on meanwhile); null when the store's
   * hash is not the native one. `data` must not change until it resolves.
   */
  hashAsync(data: Buffer): Promise<BlockHashes> | null {
    if (!this.nativeHash) return null;
    return hashPagesAsync(data, BLOCK_SIZE);
  }

  /** Makes `n` blocks from `first` read as zeroes (holes). */
  zeroBlocks(t: Target, first: number, n: number): void {
    const ids = this.resolve(t, first, n);
    const { lineage, version } = t.point;
    for (let i = 0; i < n; i++) {
      if (ids[i] !== 0) this.writeback.set(lineage, first + i, version, 0);
    }
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

  /**
   * Id of a chunk holding exactly the bytes of block `i` of `data` (whose
   * hash is hashes[i * 16, +16)), stored anew if none does: in the slot of
   * chunk `reuse` when not 0 (an uncommitted chunk only this block refers
   * to, whose place is in rewriteAt; it keeps its id), else appended. The
   * hash index is only consulted when the hash filter says a committed
   * chunk may have this hash.
   */
  private storeChunk(data: Buffer, i: number, hashes: Buffer, reuse: number): number {
    const at = i * HASH_SIZE;
    const pending = this.writeback.newChunksWithHash(hashes, at);
    for (const id of pending) {
      if (this.sameBytes(id, data, i)) return id;
    }
    const known = this.filter.mayContain(hashes, at);
    if (known) {
      for (const id of decodeIds(this.dbs.hashes.getBinary(hashes.subarray(at, at + HASH_SIZE)))) {
        if (this.sameBytes(id, data, i)) return id;
      }
    }
    // Pending chunks whose hash prefix matches lose `unique`: one with the same full hash must
    // not have its hash index entry overwritten by the commit of the other.
    for (const other of pending) this.writeback.clearUnique(other);
    const unique = !known && pending.length === 0;
    const landed = this.landedAt;
    if (reuse !== 0) {
      this.writeback.rehash(reuse, hashes, at, unique);
      if (landed !== null) {
        this.writeback.relocateRun(reuse, 1, landed.segment, landed.slot + i);
        this.landedUsed[i] = 1;
        this.freeSlot(this.rewriteAt[0], this.rewriteAt[1], 1);
        return reuse;
      }
      this.queueSlotWrite(this.rewriteAt[0], this.rewriteAt[1], data, i * BLOCK_SIZE, 1, false);
      return reuse;
    }
    if (this.nextChunkId >= MAX_CHUNK_ID) throw new DormantError('ENOSPC', 'chunk ids exhausted');
    const id = this.nextChunkId++;
    if (landed !== null) {
      this.writeback.addNewChunk(id, hashes, at, { segment: landed.segment, slot: landed.slot + i }, unique);
      this.landedUsed[i] = 1;
      return id;
    }
    if (this.directAppends) {
      const loc = this.segments.reserve();
      this.writeback.addNewChunk(id, hashes, at, loc, unique);
      this.queueSlotWrite(loc.segment, loc.slot, data, i * BLOCK_SIZE, 1, true);
      return id;
    }
    const loc = this.segments.append(data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
    this.writeback.addNewChunk(id, hashes, at, loc, unique);
    return id;
  }

  /**
   * The general path per block (`storeChunk` + `set`), for blocks whose own
   * uncommitted chunks sit in consecutive slots and whose new content is
   * certainly not stored yet (`filter` is the hash filter's bits), done for
   * a run of them at once: each chunk takes its block's new name natively
   * (Writeback.rehashRun) and the run is one slot write. Returns how many
   * blocks from `block` (block `i` of `data`, at most `count`) it did; 0:
   * take the next block the general way.
   */
  private rewriteRun(t: Target, block: number, count: number, data: Buffer, i: number, hashes: Buffer, zero: Uint8Array,
    filter: FilterBits): number {
    const { lineage, version } = t.point;
    const run = this.runAt;
    const m = this.writeback.rewritableRun(lineage, block, count, zero, i, run);
    const landed = this.landedAt;
    if (m === 0 || (landed === null && !this.segments.canOverwriteRun(run[1], run[2], m))) return 0;
    const done = this.writeback.rehashRun(run[0], m, hashes, i * HASH_SIZE, filter);
    if (done === 0) return 0;
    this.writeback.setVersions(lineage, block, done, version);
    if (landed !== null) {
      // The new bytes are in the landed slots already: the chunks move there, their old slots are free.
      this.writeback.relocateRun(run[0], done, landed.segment, landed.slot + i);
      this.landedUsed.fill(1, i, i + done);
      this.freeSlot(run[1], run[2], done);
      return done;
    }
    this.queueSlotWrite(run[1], run[2], data, i * BLOCK_SIZE, done, false);
    return done;
  }

  /**
   * For a landed write: blocks from `block` (block `i` of the write, at
   * most `count`) that are not zero and own no rewritable chunk get new
   * chunks in their landed slots, registered for a run at once
   * (Writeback.addLandedRun), while their content is certainly stored
   * nowhere yet (`filter`). Returns how many; 0: the general way.
   */
  private addLandedRun(t: Target, block: number, count: number, i: number, hashes: Buffer, zero: Uint8Array,
    filter: FilterBits): number {
    const { lineage, version } = t.point;
    let m = 0;
    while (m < count && zero[i + m] === 0 && this.writeback.rewritable(lineage, block + m) === 0) m++;
    if (m === 0 || this.nextChunkId + m >= MAX_CHUNK_ID) return 0;
    const landed = this.landedAt!;
    const id0 = this.nextChunkId;
    const done = this.writeback.addLandedRun(id0, m, hashes, i * HASH_SIZE, landed.segment, landed.slot + i, filter);
    this.nextChunkId += done;
    for (let k = 0; k < done; k++) this.writeback.set(lineage, block + k, version, id0 + k);
    this.landedUsed.fill(1, i, i + done);
    return done;
  }

  /** True when new chunk `id`'s slot may be overwritten now; its place is then in rewriteAt. */
  private canRewrite(id: number): boolean {
    if (!this.writeback.newPlace(id, this.rewriteAt)) return false;
    return this.landedAt !== null || this.segments.canOverwrite(this.rewriteAt[0], this.rewriteAt[1]);
  }

  /**
   * Adds `count` slot writes to the current run, or writes the run and
   * starts another. `fresh`: reserved slots never written (see
   * SegmentFiles.overwrite); a run holds slots of one kind.
   */
  private queueSlotWrite(segment: number, slot: number, src: Buffer, srcOffset: number, count: number, fresh: boolean): void {
    const r = this.slotRun;
    if (r !== null && r.src === src && r.fresh === fresh && r.loc.segment === segment && r.loc.slot + r.count === slot
      && r.srcOffset + r.count * BLOCK_SIZE === srcOffset) {
      r.count += count;
      return;
    }
    this.writeSlotRun();
    this.slotRun = { loc: { segment, slot }, count, src, srcOffset, fresh };
  }

  /** Makes the queued slot writes (before anything reads segments, and before writeBlocks returns). */
  private writeSlotRun(): void {
    const r = this.slotRun;
    if (r === null) return;
    this.slotRun = null;
    if (this.landing === null) {
      this.segments.overwrite(r.loc, r.count, r.src, r.srcOffset, r.fresh);
      return;
    }
    const landed = this.segments.overwriteAsync(r.loc, r.count, r.src, r.srcOffset);
    if (landed !== null) this.landing.push(landed);
  }

  /**
   * Byte comparison of block `i` of `data` with chunk `id` before sharing;
   * a candidate that fails to read is not shared. No hash check of the
   * candidate is needed: if its bytes equal the block's, they hash to the
   * block's name, which is the candidate's name.
   */
  private sameBytes(id: number, data: Buffer, i: number): boolean {
    this.writeSlotRun();
    try {
      this.segments.readInto(this.chunkLocation(id).loc, this.scratch, 0);
    } catch (err) {
      if (err instanceof DormantError && err.code === 'EIO') return false;
      throw err;
    }
    return this.scratch.compare(data, i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE) === 0;
  }
}
