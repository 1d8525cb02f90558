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
import { BLOCK_SIZE, ZERO_BLOCK } from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';
import type { IndexDbs } from './index-db.js';
import type { Catalog, Point } from './catalog.js';
import { BlockMap, UNRESOLVED } from './blockmap.js';
import { chunkKey, decodeChunk, hashKey } from './keys.js';
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

  /** Reads `n` whole blocks into `out` at `outOffset`; attributes them to `label`. */
  readBlocks(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): void {
    const ids = this.resolve(t, first, n);
    for (let i = 0; i < n; i++) {
      const at = outOffset + i * BLOCK_SIZE;
      if (ids[i] === 0) out.fill(0, at, at + BLOCK_SIZE);
      else this.readChunk(ids[i], out, at, t.name, first + i);
    }
    if (label !== undefined) this.fingerprints.record(label, ids);
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
    if (!this.hash(out.subarray(at, at + BLOCK_SIZE)).equals(hash)) {
      const where = volume === undefined ? '' : ` (block ${block} of ${volume})`;
      throw new DormantError('EIO',
        `data in segment ${loc.segment} slot ${loc.slot} does not match its checksum${where}`,
        { volume, offset: block === undefined ? undefined : block * BLOCK_SIZE, length: BLOCK_SIZE });
    }
  }

  /** Id of a chunk holding exactly `block`'s bytes, stored anew if none does. */
  private storeChunk(block: Buffer): number {
    const h = this.hash(block);
    for (const id of this.writeback.newChunksWithHash(h)) {
      if (this.sameBytes(id, block)) return id;
    }
    for (const id of this.committedWithHash(h)) {
      if (this.sameBytes(id, block)) return id;
    }
    if (this.nextChunkId >= MAX_CHUNK_ID) throw new DormantError('ENOSPC', 'chunk ids exhausted');
    const id = this.nextChunkId++;
    const loc = this.segments.append(block);
    this.writeback.addNewChunk({ id, hash: h, loc });
    return id;
  }

  private *committedWithHash(h: Buffer): Generator<number> {
    for (const key of this.dbs.hashes.getKeys({ start: hashKey(h, 0), end: hashKey(h, MAX_CHUNK_ID) })) {
      const k = key as Buffer;
      yield k.readUInt32BE(16) * 2 ** 32 + k.readUInt32BE(20);
    }
  }

  /** Byte comparison before sharing; a candidate that fails to read is not shared. */
  private sameBytes(id: number, block: Buffer): boolean {
    try {
      this.readChunk(id, this.scratch, 0);
    } catch (err) {
      if (err instanceof DormantError && err.code === 'EIO') return false;
      throw err;
    }
    return this.scratch.equals(block);
  }
}
