/**
 * The store's chunks by content, for moving volumes between stores
 * (src/migrate): the hash of every block of a volume, which of a list of
 * hashes this store holds, and a chunk's bytes by its hash. Chunks are
 * named by their xxh3-128 hash, so two stores agree on a name without
 * talking; a chunk asked for by hash is read and checked against it.
 */
import { HASH_SIZE } from './constants.js';
import type { BlockEngine } from './engine.js';
import type { IndexDbs } from './index-db.js';
import { decodeIds } from './keys.js';
import type { Writeback } from './writeback.js';

/** The content of a volume as block hashes (see Store.blockHashes). */
export interface BlockHashList {
  /** 16 bytes per block (zeroes for a hole). */
  hashes: Buffer;
  /** One bit per block (LSB first): 1 = hole, reads as zeroes. */
  holes: Uint8Array;
  blocks: number;
}

/** Chunk look-ups by hash over one store's index and its pending writes. */
export class ChunkInventory {
  constructor(private readonly dbs: IndexDbs, private readonly writeback: Writeback, private readonly engine: BlockEngine) {}

  /** Ids of the chunks (pending or committed) whose hash is hashes[at, at + 16). */
  idsOf(hashes: Buffer, at = 0): number[] {
    const want = hashes.subarray(at, at + HASH_SIZE);
    const out: number[] = [];
    for (const id of this.writeback.newChunksWithHash(hashes, at)) {
      try {
        if (this.engine.chunkLocation(id).hash.equals(want)) out.push(id);
      } catch { /* committed or dropped meanwhile */ }
    }
    if (this.engine.filter.mayContain(hashes, at)) out.push(...decodeIds(this.dbs.hashes.getBinary(want)));
    return out;
  }

  /** One byte per 16-byte hash of `hashes`: 1 when the store holds a chunk with that hash. */
  has(hashes: Buffer): Uint8Array {
    const n = Math.floor(hashes.length / HASH_SIZE);
    const out = new Uint8Array(n);
    for (let i = 0; i < n; i++) out[i] = this.idsOf(hashes, i * HASH_SIZE).length > 0 ? 1 : 0;
    return out;
  }

  /**
   * Reads the chunk named hashes[at, at + 16) into `out` at `outAt`,
   * checked against its hash; false when the store has no good copy
   * (none, or every copy damaged).
   */
  read(hashes: Buffer, at: number, out: Buffer, outAt: number): boolean {
    for (const id of this.idsOf(hashes, at)) {
      try {
        this.engine.readChunk(id, out, outAt);
        return true;
      } catch { /* damaged or gone: try another copy */ }
    }
    return false;
  }

  /** The hash of every block whose chunk id is in `ids` (Store.chunkMap; 0 = hole). */
  async blockHashes(ids: Float64Array): Promise<BlockHashList> {
    const blocks = ids.length;
    const hashes = Buffer.alloc(blocks * HASH_SIZE);
    const holes = new Uint8Array(Math.ceil(blocks / 8));
    const known = new Map<number, Buffer>();
    for (let b = 0; b < blocks; b++) {
      const id = ids[b];
      if (id === 0) {
        holes[b >> 3] |= 1 << (b & 7);
        continue;
      }
      let h = known.get(id);
      if (!h) {
        h = this.engine.chunkLocation(id).hash;
        known.set(id, h);
      }
      h.copy(hashes, b * HASH_SIZE);
      if ((b & 16383) === 16383) await new Promise((r) => setImmediate(r));
    }
    return { hashes, holes, blocks };
  }
}

/** True when block `b` is a hole in `holes` (BlockHashList.holes). */
export function isHole(holes: Uint8Array, b: number): boolean {
  return (holes[b >> 3] & (1 << (b & 7))) !== 0;
}
