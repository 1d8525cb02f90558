/**
 * The block engine: reads, writes and zeroes whole blocks of a point, for
 * every volume handle of a store. It is the one object the rest of the
 * store talks to about blocks; the work is done in parts:
 *
 *   reader.ts    resolving blocks to chunks, locating and reading chunks,
 *                checked against their hashes; the cold/warm read estimate
 *   writer.ts    hashing, deduplicating and storing blocks as chunks
 *   landing.ts   where big writes land, and the slots a landed write frees
 *
 * State shared by the parts: the committed block map, the hash filter (the
 * committed hashes' bits), the write-back overlay, the segment files.
 *
 * Absent blocks (absent.ts: a volume arriving from another host in lazy
 * mode): a whole-block write or zeroing clears their bits here, where it
 * applies; a synchronous read of one is refused (the handle fills it
 * first) and a view of one is not given.
 *
 * Ordering rule: everything here is synchronous and runs to completion on
 * the JS thread, so no two operations interleave inside a block; only
 * flush (flush.ts) awaits, big writes may be hashed beforehand on libuv's
 * pool (`hashAsync`) and have their slot writes land there, and reads may
 * wait for the pool (`readBlocksAsync`), each having decided what to read
 * from one consistent view of the index.
 */
import type { HashFunction } from './hash.js';
import { HashFilter } from './hash-filter.js';
import type { IndexDbs } from './index-db.js';
import type { Catalog, Point } from './catalog.js';
import { BlockMap } from './blockmap.js';
import { BlockIdCache } from './cache.js';
import { Landings } from './landing.js';
import { BlockReader } from './reader.js';
import type { Location, SegmentFiles } from './segments.js';
import type { BlockHashes, ReadOptions, StoredRange } from './types.js';
import { BlockWriter } from './writer.js';
import type { Writeback } from './writeback.js';
import type { Fingerprints } from './fingerprints.js';
import type { AbsentBlocks } from './absent.js';
import { DormantError } from './errors.js';
import { BLOCK_SIZE } from './constants.js';

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
  /** The committed block map. */
  readonly blockMap: BlockMap;
  /** Which hashes the store may hold (built from the index after open). */
  readonly filter: HashFilter;
  private readonly reader: BlockReader;
  private readonly writer: BlockWriter;
  private readonly landings: Landings;
  /** Absent blocks per volume (Store.setAbsent): only lazy volumes have an entry. */
  readonly absent = new Map<string, AbsentBlocks>();

  constructor(
    dbs: IndexDbs,
    private readonly catalog: Catalog,
    segments: SegmentFiles,
    writeback: Writeback,
    hash: HashFunction,
    fingerprints: Fingerprints,
    nextChunkId: number,
    /** Always read through libuv's pool (StoreOptions.readMode 'pool'). */
    poolReads = false,
  ) {
    this.blockMap = new BlockMap(dbs);
    this.filter = new HashFilter(dbs.hashes);
    this.reader = new BlockReader(dbs, this.blockMap, segments, writeback, hash, fingerprints, poolReads);
    this.landings = new Landings(segments);
    this.writer = new BlockWriter(dbs, segments, writeback, hash, this.filter, this.reader, this.landings, nextChunkId);
  }

  /** Target for reading or writing `name` now. */
  target(name: string): Target {
    const point = this.catalog.pointOf(name);
    const chain = this.catalog.chain(point);
    return { name, point, chain, head: !name.includes('@'), key: BlockIdCache.key(chain) };
  }

  /**
   * Chunk ids (0 = hole) of `n` blocks from `first`: pending writes first,
   * then the block id cache, then the committed index.
   */
  resolve(t: Target, first: number, n: number): number[] {
    return this.reader.resolve(t, first, n);
  }

  /** Chunk id (0 = hole) of block `b`, for scattered look-ups (one index seek on a miss, nothing cached). */
  resolveOne(t: Target, b: number): number {
    return this.reader.resolveOne(t, b);
  }

  /** Forgets cached index look-ups: call when a commit changed the index or the catalog. */
  invalidate(): void {
    this.reader.invalidate();
  }

  /** Committed chunks now lie elsewhere (relocation): the cached places follow; block look-ups stay cached. */
  moved(moves: ReadonlyArray<{ id: number; to: Location }>): void {
    this.reader.moved(moves);
  }

  /** Hears of request reads whose blocks lie scattered (the store's background relocation), or nobody. */
  set onScattered(fn: ((t: Target, first: number, n: number) => void) | null) {
    this.reader.onScattered = fn;
  }

  /**
   * Reads `n` whole blocks into `out` at `outOffset`, checked; attributes
   * them to `label`. Synchronous: for read-modify-write inside one operation.
   */
  readBlocks(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): void {
    const ab = this.absentIn(t, first, n);
    if (ab !== undefined) {
      throw new DormantError('EIO', `block ${first} of '${t.name}' has not arrived from its source host yet (read before its fill)`,
        { volume: t.name, offset: first * BLOCK_SIZE, length: n * BLOCK_SIZE });
    }
    this.reader.readBlocks(t, first, n, out, outOffset, label);
  }

  /** `readBlocks` for request handlers: from the page cache on the JS thread, or on libuv's pool when it is cold. */
  readBlocksAsync(t: Target, first: number, n: number, out: Buffer, outOffset: number, label?: string): Promise<void> {
    return this.reader.readBlocksAsync(t, first, n, out, outOffset, label);
  }

  /**
   * The `n` blocks from `first` as a checked read-only view of a segment
   * mapping (no copy, for replies), or null: the caller reads them the
   * ordinary way (see BlockReader.readView).
   */
  readView(t: Target, first: number, n: number, label?: string, stored?: ReadOptions['stored']): Buffer | null {
    if (this.absentIn(t, first, n) !== undefined) return null;
    return this.reader.readView(t, first, n, label, stored);
  }

  /** The blocks as one range of a segment file with their hashes, or null (see BlockReader.readFile). */
  readFile(t: Target, first: number, n: number, label?: string): StoredRange | null {
    if (this.absentIn(t, first, n) !== undefined) return null;
    return this.reader.readFile(t, first, n, label);
  }

  /**
   * Writes whole blocks from `data` at block `first` (see
   * BlockWriter.writeBlocks); with `async`, a returned promise resolves
   * once its slot writes have landed, and `data` must not change until
   * then. `landed`: the payload lies in the slots `land` gave.
   */
  writeBlocks(t: Target, first: number, data: Buffer, hashed?: BlockHashes, async = false, landed?: Location): Promise<void> | undefined {
    const landing = this.writer.writeBlocks(t, first, data, hashed, async, landed);
    // Applied (a landing still pending is the slot write, not the block map): these blocks are no longer absent.
    if (this.absent.size > 0) this.absent.get(t.name)?.clear(first, Math.ceil(data.length / BLOCK_SIZE));
    return landing;
  }

  /**
   * A landing place for a big write of `n` blocks (a writable view of
   * slots in the page cache, and its first slot), or null. Pass both to
   * `writeBlocks` (`landed`) once the payload is in, or to
   * `abandonLanding` if it never comes.
   */
  land(n: number): { loc: Location; buffer: Buffer } | null {
    return this.landings.land(n);
  }

  /** A landing whose payload never came: its slots are free again. Only once nothing can still write into its buffer. */
  abandonLanding(loc: Location, n: number): void {
    this.landings.abandon(loc, n);
  }

  /** Forgets the free slots of `segment` (GC is compacting or deleted it). */
  forgetSlotsOf(segment: number): void {
    this.landings.forgetSegment(segment);
  }

  /** Hashes and zero flags of `data`'s blocks, computed on libuv's pool; null when the hash is not the native one. */
  hashAsync(data: Buffer): Promise<BlockHashes> | null {
    return this.writer.hashAsync(data);
  }

  /** Makes `n` blocks from `first` read as zeroes (holes). */
  zeroBlocks(t: Target, first: number, n: number): void {
    this.writer.zeroBlocks(t, first, n);
    if (this.absent.size > 0) this.absent.get(t.name)?.clear(first, n);
  }

  /** The absent blocks of `t`'s volume when any of `n` blocks from `first` is absent. */
  absentIn(t: Target, first: number, n: number): AbsentBlocks | undefined {
    if (this.absent.size === 0 || !t.head) return undefined;
    const ab = this.absent.get(t.name);
    return ab?.anyAbsent(first, n) ? ab : undefined;
  }

  /** Location and hash of a chunk (pending or committed). */
  chunkLocation(id: number): { loc: Location; hash: Buffer } {
    return this.reader.chunkLocation(id);
  }

  /** Reads a chunk into `out`, verifying it against its hash (EIO on mismatch). */
  readChunk(id: number, out: Buffer, at: number, volume?: string, block?: number): void {
    this.reader.readChunk(id, out, at, volume, block);
  }
}
