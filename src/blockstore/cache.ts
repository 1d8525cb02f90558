/**
 * Caches of the committed index for the read path: which chunk a block of a
 * point resolves to, and where a chunk lives (segment, slot, hash). A read
 * that hits both costs no LMDB call.
 *
 * Both hold only what the committed index says, so they are cleared
 * whenever a commit may have changed it (the store calls `clear()` when a
 * write-back generation, a GC step or a catalog change is committed, in the
 * same tick that makes the change visible to readers). Pending writes are
 * never cached: the engine consults the write-back overlay first.
 *
 * Memory is bounded: entries live in pages of PAGE_ENTRIES; past the page
 * budget the cache empties itself and refills with what is read next.
 */
import { HASH_SIZE } from './constants.js';

/** Entries per cache page. */
const PAGE_ENTRIES = 1024;
/** Blocks per page of the block id cache (the unit a miss loads). */
export const BLOCK_CACHE_PAGE = PAGE_ENTRIES;
/** Chunk ids per page of the location cache (the unit a miss loads). */
export const CHUNK_CACHE_PAGE = PAGE_ENTRIES;
/** Pages of block ids (8 KiB each): 2048 pages map 8 GiB of volume space. */
const MAX_BLOCK_PAGES = 2048;
/** Pages of chunk locations (24 KiB each): 1024 pages locate 1M chunks (4 GiB of data). */
const MAX_CHUNK_PAGES = 1024;
/** Marks an unknown slot in a page of block ids. */
const UNKNOWN = -1;

/** Resolved chunk ids of blocks, per point chain (its key names every point searched). */
export class BlockIdCache {
  private readonly chains = new Map<string, Map<number, Float64Array>>();
  private pages = 0;

  /** Cache key of a chain of points. */
  static key(chain: ReadonlyArray<{ lineage: number; version: number }>): string {
    let k = '';
    for (const p of chain) k += `${p.lineage}:${p.version},`;
    return k;
  }

  /**
   * Copies known ids of blocks `first + i` into `out[i]` where `out[i]` is
   * `unresolved`; returns how many of those are still unknown.
   */
  fill(key: string, first: number, out: number[], unresolved: number): number {
    const pages = this.chains.get(key);
    let missing = 0;
    for (let i = 0; i < out.length; i++) {
      if (out[i] !== unresolved) continue;
      const b = first + i;
      const page = pages?.get(Math.floor(b / PAGE_ENTRIES));
      const id = page === undefined ? UNKNOWN : page[b % PAGE_ENTRIES];
      if (id === UNKNOWN) missing++;
      else out[i] = id;
    }
    return missing;
  }

  /** Remembers that block `first + i` of the chain resolves to `ids[i]` in the committed index. */
  store(key: string, first: number, ids: readonly number[]): void {
    let pages = this.chains.get(key);
    if (pages === undefined) {
      pages = new Map();
      this.chains.set(key, pages);
    }
    for (let i = 0; i < ids.length; i++) {
      const b = first + i;
      const n = Math.floor(b / PAGE_ENTRIES);
      let page = pages.get(n);
      if (page === undefined) {
        if (this.pages >= MAX_BLOCK_PAGES) {
          this.clear();
          pages = new Map();
          this.chains.set(key, pages);
        }
        page = new Float64Array(PAGE_ENTRIES).fill(UNKNOWN);
        pages.set(n, page);
        this.pages++;
      }
      page[b % PAGE_ENTRIES] = ids[i];
    }
  }

  clear(): void {
    this.chains.clear();
    this.pages = 0;
  }
}

interface ChunkPage {
  known: Uint8Array;
  segment: Uint32Array;
  slot: Uint32Array;
  hashes: Buffer;
}

/** Segment, slot and hash of committed chunks, by chunk id. */
export class ChunkLocationCache {
  private readonly pageMap = new Map<number, ChunkPage>();

  /**
   * When chunk `id` is cached: copies its hash into `hashOut` at `hashAt`,
   * sets `where[0]` = segment and `where[1]` = slot, and returns true.
   */
  get(id: number, hashOut: Buffer, hashAt: number, where: Uint32Array): boolean {
    const page = this.pageMap.get(Math.floor(id / PAGE_ENTRIES));
    const i = id % PAGE_ENTRIES;
    if (page === undefined || page.known[i] === 0) return false;
    // A JS loop: Buffer.copy's native call costs more than 16 bytes.
    const h = page.hashes;
    const from = i * HASH_SIZE;
    for (let k = 0; k < HASH_SIZE; k++) hashOut[hashAt + k] = h[from + k];
    where[0] = page.segment[i];
    where[1] = page.slot[i];
    return true;
  }

  /** Remembers a committed chunk's place; `hash` is read at [hashAt, hashAt + 16). */
  set(id: number, hash: Buffer, hashAt: number, segment: number, slot: number): void {
    const n = Math.floor(id / PAGE_ENTRIES);
    let page = this.pageMap.get(n);
    if (page === undefined) {
      if (this.pageMap.size >= MAX_CHUNK_PAGES) this.pageMap.clear();
      page = {
        known: new Uint8Array(PAGE_ENTRIES),
        segment: new Uint32Array(PAGE_ENTRIES),
        slot: new Uint32Array(PAGE_ENTRIES),
        hashes: Buffer.alloc(PAGE_ENTRIES * HASH_SIZE),
      };
      this.pageMap.set(n, page);
    }
    const i = id % PAGE_ENTRIES;
    hash.copy(page.hashes, i * HASH_SIZE, hashAt, hashAt + HASH_SIZE);
    page.segment[i] = segment;
    page.slot[i] = slot;
    page.known[i] = 1;
  }

  /** A cached chunk now lies at (segment, slot) (relocation); an uncached one stays uncached. */
  move(id: number, segment: number, slot: number): void {
    const page = this.pageMap.get(Math.floor(id / PAGE_ENTRIES));
    const i = id % PAGE_ENTRIES;
    if (page === undefined || page.known[i] === 0) return;
    page.segment[i] = segment;
    page.slot[i] = slot;
  }

  clear(): void {
    this.pageMap.clear();
  }
}
