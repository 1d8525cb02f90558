/**
 * The write path of the block engine: whole blocks hashed, deduplicated,
 * stored as chunks and recorded in the write-back.
 *
 * An all-zero block becomes a hole; otherwise the block is hashed and
 * shared with an existing chunk only if the bytes compare equal (the hash
 * is not trusted alone: pending chunks by hash prefix, committed ones
 * through the hash index, consulted only when the hash filter says the
 * hash may be there); else it is stored as a new chunk: in the slot of the
 * block's own uncommitted chunk when nothing else refers to that one
 * (writeback.ts), else appended to a segment: through its append buffer
 * for small writes, into reserved slots written straight from the caller's
 * buffer for writes of DIRECT_APPEND_BLOCKS blocks or more. A landed write
 * (landing.ts) is already in its slots: its chunks take them. A big or
 * landed write takes a run of blocks whose own chunks sit in consecutive
 * slots at once (`rewriteRun`: their renaming in one native call, one slot
 * write), and a landed write's run of new chunks likewise
 * (`addLandedRun`), as long as no block of it may be a duplicate.
 *
 * State: the next chunk id; per writeBlocks call, the slot writes queued
 * into one run (`slotRun`), whether it appends into reserved slots, and
 * its writes in flight on libuv's pool. Ordering: a writeBlocks call runs
 * to completion on the JS thread; queued slot writes are made before
 * anything reads the segments (`sameBytes`) and before it returns, or
 * started on the pool (with `async`): until they land, the segments serve
 * reads of those slots from the caller's buffer.
 */
import { BLOCK_SIZE, HASH_SIZE, ZERO_BLOCK } from './constants.js';
import { DormantError } from './errors.js';
import { xxh3, type HashFunction } from './hash.js';
import { hashBlocks, hashPagesAsync } from '../native/index.js';
import type { FilterBits, HashFilter } from './hash-filter.js';
import type { IndexDbs } from './index-db.js';
import { decodeIds } from './keys.js';
import type { Landings } from './landing.js';
import type { BlockReader } from './reader.js';
import type { Location, SegmentFiles } from './segments.js';
import type { BlockHashes } from './types.js';
import type { Writeback } from './writeback.js';
import type { Target } from './engine.js';

const MAX_CHUNK_ID = 2 ** 53 - 1;
/**
 * Writes of this many blocks (256 KiB) or more append into reserved slots,
 * one pwrite per run from the write's own buffer, instead of copying each
 * block into the segment's append buffer.
 */
const DIRECT_APPEND_BLOCKS = 64;

/** Writes of whole blocks. */
export class BlockWriter {
  private readonly scratch = Buffer.allocUnsafe(BLOCK_SIZE);
  /** Place of the chunk a write may overwrite (segment, slot). */
  private readonly rewriteAt = new Uint32Array(2);
  /** A run `rewriteRun` may take: first chunk id, segment, first slot. */
  private readonly runAt = new Float64Array(3);
  private hashScratch = Buffer.allocUnsafe(256 * HASH_SIZE);
  private zeroScratch = new Uint8Array(256);
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
  private inFlight: Promise<void>[] | null = null;

  constructor(
    private readonly dbs: IndexDbs,
    private readonly segments: SegmentFiles,
    private readonly writeback: Writeback,
    private readonly hash: HashFunction,
    private readonly filter: HashFilter,
    private readonly reader: BlockReader,
    private readonly landings: Landings,
    private nextChunkId: number,
  ) {
    this.nativeHash = hash === xxh3;
  }

  /**
   * Writes whole blocks from `data` (length n * BLOCK_SIZE) at block
   * `first`. With the default hash, all blocks are hashed (and tested for
   * zeroes) by one native call. Blocks whose new content goes into their
   * own uncommitted chunk's slot, and the blocks of a big write, are written
   * in runs of consecutive slots before this returns, or with `async` on
   * libuv's pool: the promise returned then resolves once they have landed,
   * and `data` must not change until it does (reads of those slots are
   * served from it meanwhile). `landed`: `data` is a landing's buffer, its
   * payload already in the slots from `landed` (Landings.land).
   */
  writeBlocks(t: Target, first: number, data: Buffer, hashed?: BlockHashes, async = false, landed?: Location): Promise<void> | undefined {
    const n = data.length / BLOCK_SIZE;
    if (landed !== undefined) this.landings.begin(landed, n);
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
    this.inFlight = async && this.directAppends ? [] : null;
    let inFlight: Promise<void>[] | null = null;
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
      if (landed !== undefined) this.landings.end(n);
      this.directAppends = false;
      try {
        this.writeSlotRun();
      } finally {
        inFlight = this.inFlight;
        this.inFlight = null;
      }
    }
    // (On a throw above, writes already started still land; a failure of theirs is sync()'s to report.)
    return inFlight !== null && inFlight.length > 0 ? Promise.all(inFlight).then(() => undefined) : undefined;
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
    const ids = this.reader.resolve(t, first, n);
    const { lineage, version } = t.point;
    for (let i = 0; i < n; i++) {
      if (ids[i] !== 0) this.writeback.set(lineage, first + i, version, 0);
    }
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
    const landed = this.landings.at;
    if (reuse !== 0) {
      this.writeback.rehash(reuse, hashes, at, unique);
      if (landed !== null) {
        this.writeback.relocateRun(reuse, 1, landed.segment, landed.slot + i);
        this.landings.use(i, 1);
        this.landings.freed(this.rewriteAt[0], this.rewriteAt[1], 1);
        return reuse;
      }
      this.queueSlotWrite(this.rewriteAt[0], this.rewriteAt[1], data, i * BLOCK_SIZE, 1, false);
      return reuse;
    }
    if (this.nextChunkId >= MAX_CHUNK_ID) throw new DormantError('ENOSPC', 'chunk ids exhausted');
    const id = this.nextChunkId++;
    if (landed !== null) {
      this.writeback.addNewChunk(id, hashes, at, { segment: landed.segment, slot: landed.slot + i }, unique);
      this.landings.use(i, 1);
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
    const landed = this.landings.at;
    if (m === 0 || (landed === null && !this.segments.canOverwriteRun(run[1], run[2], m))) return 0;
    const done = this.writeback.rehashRun(run[0], m, hashes, i * HASH_SIZE, filter);
    if (done === 0) return 0;
    this.writeback.setVersions(lineage, block, done, version);
    if (landed !== null) {
      // The new bytes are in the landed slots already: the chunks move there, their old slots are free.
      this.writeback.relocateRun(run[0], done, landed.segment, landed.slot + i);
      this.landings.use(i, done);
      this.landings.freed(run[1], run[2], done);
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
    const landed = this.landings.at!;
    const id0 = this.nextChunkId;
    const done = this.writeback.addLandedRun(id0, m, hashes, i * HASH_SIZE, landed.segment, landed.slot + i, filter);
    this.nextChunkId += done;
    for (let k = 0; k < done; k++) this.writeback.set(lineage, block + k, version, id0 + k);
    this.landings.use(i, done);
    return done;
  }

  /** True when new chunk `id`'s slot may be overwritten now; its place is then in rewriteAt. */
  private canRewrite(id: number): boolean {
    if (!this.writeback.newPlace(id, this.rewriteAt)) return false;
    return this.landings.at !== null || this.segments.canOverwrite(this.rewriteAt[0], this.rewriteAt[1]);
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
    if (this.inFlight === null) {
      this.segments.overwrite(r.loc, r.count, r.src, r.srcOffset, r.fresh);
      return;
    }
    const landed = this.segments.overwriteAsync(r.loc, r.count, r.src, r.srcOffset);
    if (landed !== null) this.inFlight.push(landed);
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
      this.segments.readInto(this.reader.chunkLocation(id).loc, this.scratch, 0);
    } catch (err) {
      if (err instanceof DormantError && err.code === 'EIO') return false;
      throw err;
    }
    return this.scratch.compare(data, i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE) === 0;
  }
}
