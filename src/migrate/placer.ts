/**
 * Putting chunks where a received volume uses them: the blocks waiting for
 * each chunk (by hash), filled at once from this store's own copy when it
 * has one, else when the chunk arrives, checked against its hash first.
 * Shared by a whole volume being received (incoming.ts) and by a patch of
 * the blocks that changed (patch.ts). In lazy mode the chunks still to
 * come are not sent at all: `defer` makes their blocks holes and hands
 * them over, to be marked absent (lazy.ts) and fetched when read.
 */
import { BLOCK_SIZE, DormantError, HASH_SIZE, xxh3, type Store, type VolumeHandle } from '../blockstore/index.js';

/** Blocks waiting for chunks, and the writes that fill them. */
export class ChunkPlacer {
  /** Blocks to write per hash (hex) still to come. */
  private readonly waiting = new Map<string, number[]>();
  /** Chunks received so far. */
  chunksReceived = 0;

  constructor(private readonly handle: VolumeHandle, private readonly size: number) {}

  /** Bytes of block `b` inside the volume (the last block may be short). */
  private length(b: number): number {
    return Math.min(BLOCK_SIZE, this.size - b * BLOCK_SIZE);
  }

  /**
   * Fills the blocks of `wanted` (hash hex -> blocks) whose chunk this
   * store holds; the rest wait. Returns the hashes still needed (16 bytes
   * each, in `wanted`'s order) and how many distinct chunks were here.
   */
  async fill(store: Store, wanted: Map<string, number[]>): Promise<{ needed: Buffer; present: number }> {
    const keys = [...wanted.keys()];
    const have = store.haveChunks(Buffer.from(keys.join(''), 'hex'));
    const needed: string[] = [];
    let present = 0;
    const buf = Buffer.alloc(BLOCK_SIZE);
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      const blocks = wanted.get(key)!;
      if (have[i] && store.readChunkByHash(Buffer.from(key, 'hex'), 0, buf, 0)) {
        for (const b of blocks) await this.handle.write(b * BLOCK_SIZE, buf.subarray(0, this.length(b)));
        present++;
      } else {
        needed.push(key);
        this.waiting.set(key, blocks);
      }
    }
    return { needed: Buffer.from(needed.join(''), 'hex'), present };
  }

  /** Chunks still to come. */
  get remaining(): number {
    return this.waiting.size;
  }

  /** Hashes (16 bytes each) of the chunks still to come. */
  stillNeeded(): Buffer {
    return Buffer.from([...this.waiting.keys()].join(''), 'hex');
  }

  /**
   * Takes the chunk named hashes[at, at + 16) whose bytes are data[dataAt,
   * dataAt + 4096): checked against its name (EINVAL if they differ:
   * corrupted in flight; nothing is written), then written wherever the
   * volume uses it. A chunk not (or no longer) waited for is ignored.
   */
  async accept(hashes: Buffer, at: number, data: Buffer, dataAt: number): Promise<void> {
    const key = hashes.toString('hex', at, at + HASH_SIZE);
    const blocks = this.waiting.get(key);
    if (!blocks) return;
    const bytes = data.subarray(dataAt, dataAt + BLOCK_SIZE);
    if (bytes.length !== BLOCK_SIZE || !xxh3(bytes).equals(hashes.subarray(at, at + HASH_SIZE))) {
      throw new DormantError('EINVAL', `chunk ${key} does not match its hash (corrupted in flight): nothing of it was written`);
    }
    this.waiting.delete(key);
    for (const b of blocks) await this.handle.write(b * BLOCK_SIZE, bytes.subarray(0, this.length(b)));
    this.chunksReceived++;
  }

  /**
   * Gives up waiting: every block still waiting for its chunk becomes a
   * hole (nothing stale of it can be read) and is returned, by hash (hex),
   * for the caller to mark absent.
   */
  async defer(): Promise<Map<string, number[]>> {
    const out = new Map(this.waiting);
    this.waiting.clear();
    for (const blocks of out.values()) for (const b of blocks) await this.zero(b);
    return out;
  }

  /** Makes block `b` a hole. */
  zero(b: number): Promise<void> {
    return this.handle.zero(b * BLOCK_SIZE, this.length(b));
  }
}
