/**
 * The block engine: reads, writes and zeroes whole blocks of a point.
 *
 * Read: pending write-back entries first (only for a volume's head), then
 * the committed block map down the branch chain; every chunk read is checked
 * against its hash (a mismatch is EIO, never wrong data).
 * Write: an all-zero block becomes a hole; otherwise the block is hashed and
 * shared with an existing chunk only if the bytes compare equal (the hash is
 * not trusted alone); else it is appended to a segment as a new chunk.
 *
 * Everything here is synchronous and runs to completion on the JS thread, so
 * no two operations interleave inside a block; only flush (store.ts) awaits.
 */
import { BLOCK_SIZE, HASH_SIZE, ZERO_BLOCK } from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';
import type { IndexDbs } from './index-db.js';
import type { Catalog, Point } from './catalog.js';
import { BlockMap, UNRESOLVED } from './blockmap.js';
import { chunkKey, decodeChunk, decodeIds } from './keys.js';
import type { Location, SegmentFiles } from './segments.js';
import type { Writeback } from './writeback.js';
import type { Fingerprints } from './fingerprints.js';

const MAX_CHUNK_ID = 2 ** 53 - 1;

/** A point to read or write, with its search chain. */
export interface Target {
  name: string;
  point: Point;
  chain: Point[];
  /** True for a volume's head: pending writes are visible. */
  head: boolean;
}

/** Block-level operations shared by every volume handle. */
export class BlockEngine {
  private readonly scratch = Buffer.allocUnsafe(BLOCK_SIZE);
  readonly blockMap: BlockMap;

  constructor(
    private readonly dbs: IndexDbs,
    private readonly catalog: Catalog,
    private readonly segments: SegmentFiles,
    private readonly writeback: Writeback,
    private readonly hash: HashFunction,
    private readonly fingerprints: Fingerprints,
    private nextChunkId: number,
  ) {
    this.blockMap = new BlockMap(dbs);
  }

  /** Target for reading or writing `name` now. */
  target(name: string): Target {
    const point = this.catalog.pointOf(name);
    return { name, point, chain: this.catalog.chain(point), head: !name.includes('@') };
  }

  /** Chunk ids (0 = hole) of `n` blocks from `first`. */
  resolve(t: Target, first: number, n: number): number[] {
    const ids = new Array<number>(n).fill(UNRESOLVED);
    if (t.head && this.writeback.hasLineage(t.point.lineage)) {
      for (let i = 0; i < n; i++) {
        const pe = this.writeback.get(t.point.lineage, first + i);
        if (pe && pe.version <= t.point.version) ids[i] = pe.target;
      }
    }
    this.blockMap.lookupRange(t.chain, first, ids);
    return ids;
  }

  /**
   * Reads `n` whole blocks into `out` at `outOffset`; attributes them to
   * `label`. Chunks in consecutive slots of one segment are read with one
   * system call, then each block is checked against its hash.
   */
  readBlocks(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): void {
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
    for (let i = 0; i < n;) {
      const at = outOffset + i * BLOCK_SIZE;
      if (ids[i] === 0) { out.fill(0, at, at + BLOCK_SIZE); i++; continue; }
      let j = i + 1;
      while (j < n && ids[j] !== 0 && segs[j] === segs[i] && slots[j] === slots[i] + (j - i)) j++;
      this.segments.readRun({ segment: segs[i], slot: slots[i] }, j - i, out, at);
      for (let k = i; k < j; k++) {
        const b = out.subarray(outOffset + k * BLOCK_SIZE, outOffset + (k + 1) * BLOCK_SIZE);
        if (this.hash(b).compare(hashes, k * HASH_SIZE, (k + 1) * HASH_SIZE) !== 0) {
          throw this.damaged({ segment: segs[k], slot: slots[k] }, t.name, first + k);
        }
      }
      i = j;
    }
    if (label !== undefined) this.fingerprints.record(label, ids);
  }

  /** Segment location of chunk `id`; copies its hash into `hashOut` at `hashAt`. */
  private locate(id: number, hashOut: Buffer, hashAt: number): Location {
    const pending = this.writeback.newChunks.get(id);
    if (pending) {
      pending.hash.copy(hashOut, hashAt);
      return pending.loc;
    }
    const raw = this.dbs.chunks.getBinaryFast(chunkKey(id)); // valid until the next get: copied out at once
    if (!raw) throw new DormantError('EIO', `chunk ${id} is missing from the index`);
    raw.copy(hashOut, hashAt, 0, HASH_SIZE);
    return { segment: raw.readUInt32BE(16), slot: raw.readUInt32BE(20) };
  }

  private damaged(loc: Location, volume?: string, block?: number): DormantError {
    const where = volume === undefined ? '' : ` (block ${block} of ${volume})`;
    return new DormantError('EIO',
      `data in segment ${loc.segment} slot ${loc.slot} does not match its checksum${where}`,
      { volume, offset: block === undefined ? undefined : block * BLOCK_SIZE, length: BLOCK_SIZE });
  }

  /** Writes whole blocks from `data` (length n * BLOCK_SIZE) at block `first`. */
  writeBlocks(t: Target, first: number, data: Buffer): void {
    const n = data.length / BLOCK_SIZE;
    const { lineage, version } = t.point;
    for (let i = 0; i < n; i++) {
      const block = data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
      this.writeback.set(lineage, first + i, version, block.equals(ZERO_BLOCK) ? 0 : this.storeChunk(block));
    }
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
    const pending = this.writeback.newChunks.get(id);
    if (pending) return { loc: pending.loc, hash: pending.hash };
    const raw = this.dbs.chunks.getBinary(chunkKey(id));
    if (!raw) throw new DormantError('EIO', `chunk ${id} is missing from the index`);
    const c = decodeChunk(raw);
    return { loc: { segment: c.segment, slot: c.slot }, hash: c.hash };
  }

  /** Reads a chunk into `out`, verifying it against its hash (EIO on mismatch). */
  readChunk(id: number, out: Buffer, at: number, volume?: string, block?: number): void {
    const { loc, hash } = this.chunkLocation(id);
    this.segments.readInto(loc, out, at);
    if (!this.hash(out.subarray(at, at + BLOCK_SIZE)).equals(hash)) throw this.damaged(loc, volume, block);
  }

  /** Id of a chunk holding exactly `block`'s bytes, stored anew if none does. */
  private storeChunk(block: Buffer): number {
    const h = this.hash(block);
    for (const id of this.writeback.newChunksWithHash(h)) {
      if (this.sameBytes(id, block)) return id;
    }
    for (const id of decodeIds(this.dbs.hashes.getBinary(h))) {
      if (this.sameBytes(id, block)) return id;
    }
    if (this.nextChunkId >= MAX_CHUNK_ID) throw new DormantError('ENOSPC', 'chunk ids exhausted');
    const id = this.nextChunkId++;
    const loc = this.segments.append(block);
    this.writeback.addNewChunk({ id, hash: h, loc });
    return id;
  }

  /**
   * Byte comparison before sharing; a candidate that fails to read is not
   * shared. No hash check of the candidate is needed: if its bytes equal
   * `block`, they hash to `block`'s name, which is the candidate's name.
   */
  private sameBytes(id: number, block: Buffer): boolean {
    try {
      this.segments.readInto(this.chunkLocation(id).loc, this.scratch, 0);
    } catch (err) {
      if (err instanceof DormantError && err.code === 'EIO') return false;
      throw err;
    }
    return this.scratch.equals(block);
  }
}
