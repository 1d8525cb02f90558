/**
 * Absent blocks: blocks of a volume whose content is known (the hash of
 * their chunk) but whose chunk is not held here yet. A VM moved in lazy
 * mode runs on volumes like that (src/migrate/lazy.ts): its reads fetch
 * what they need from a `ChunkSource` (the source host), and a background
 * copy fetches the rest.
 *
 * State per volume: the expected hash of every block, one bit per block
 * (1 = absent), how many bits are set, and the fills in flight by block.
 *
 * Invariants:
 *  - an absent block reads as a hole in the store (it was zeroed when it
 *    was marked): nothing of a stale copy can be served;
 *  - a bit is cleared only by a write applied to the whole block (the
 *    engine clears it: a guest's write or zeroing, or the block's fill);
 *  - a fetched chunk is checked against its hash, then written only if its
 *    block is still absent at that moment (synchronously, on the JS
 *    thread): a write the guest made meanwhile wins.
 *
 * The store keeps one of these per lazy volume (Store.setAbsent); the
 * engine refuses a synchronous read of an absent block and views of it;
 * a volume handle fills before its asynchronous reads and before a write
 * that touches part of an absent block.
 */
import { BLOCK_SIZE, HASH_SIZE } from './constants.js';
import { DormantError } from './errors.js';
import { xxh3 } from './hash.js';

/** Where absent chunks come from (a host's API; src/migrate/lazy.ts). */
export interface ChunkSource {
  /** Where the chunks are, for messages (a host URL). */
  readonly where: string;
  /** The bytes of each chunk named in `hashes` (16 bytes each, at most 4096), 4 KiB each, in order. */
  fetch(hashes: Buffer, urgent: boolean): Promise<Buffer>;
}

/** Why a block is filled: a read waits for it, or the background copy. */
export type FillKind = 'demand' | 'background';

/** Counters of a lazy volume's fills. */
export interface AbsentStats {
  /** Chunks fetched because a read (or a partial write) needed them. */
  demandChunks: number;
  /** Chunks fetched by the background copy. */
  backgroundChunks: number;
  /** Bytes received (chunk data). */
  bytesFetched: number;
  /** Fetches that failed. */
  failures: number;
  /** The last failure, cleared by the next fetch that works. */
  lastError: string | null;
}

/** Most chunks per fetch request. */
export const MAX_FETCH = 4096;

/** The absent blocks of one volume. */
export class AbsentBlocks {
  /** Expected hash of each block (meaningful where the block is absent). */
  readonly hashes: Buffer;
  /** One bit per block, 1 = absent. */
  readonly bits: Uint8Array;
  /** Bits set. */
  remaining = 0;
  /** Where the chunks come from; null until the VM that uses the volume is handed over. */
  source: ChunkSource | null = null;
  readonly stats: AbsentStats = { demandChunks: 0, backgroundChunks: 0, bytesFetched: 0, failures: 0, lastError: null };
  /** Fills in flight, by block. */
  private readonly inflight = new Map<number, Promise<void>>();

  constructor(readonly volume: string, readonly blocks: number, hashes?: Buffer, bits?: Uint8Array) {
    this.hashes = hashes ?? Buffer.alloc(blocks * HASH_SIZE);
    this.bits = bits ?? new Uint8Array(Math.ceil(blocks / 8));
    if (this.hashes.length !== blocks * HASH_SIZE || this.bits.length !== Math.ceil(blocks / 8)) {
      throw new DormantError('EINVAL', `absent blocks of '${volume}': ${blocks} blocks, lengths disagree`, { volume });
    }
    for (let b = 0; b < blocks; b++) if (this.isAbsent(b)) this.remaining++;
  }

  /** True when block `b` is absent. */
  isAbsent(b: number): boolean {
    return (this.bits[b >> 3] & (1 << (b & 7))) !== 0;
  }

  /** True when any of `n` blocks from `first` is absent. */
  anyAbsent(first: number, n: number): boolean {
    if (this.remaining === 0) return false;
    const end = Math.min(first + n, this.blocks);
    for (let b = first; b < end; b++) if (this.isAbsent(b)) return true;
    return false;
  }

  /** Marks block `b` absent, its chunk named hashes[at, at + 16). The caller has made it a hole. */
  mark(b: number, hashes: Buffer, at: number): void {
    hashes.copy(this.hashes, b * HASH_SIZE, at, at + HASH_SIZE);
    if (!this.isAbsent(b)) {
      this.bits[b >> 3] |= 1 << (b & 7);
      this.remaining++;
    }
  }

  /** `n` blocks from `first` were written whole: they are no longer absent. */
  clear(first: number, n: number): void {
    if (this.remaining === 0) return;
    const end = Math.min(first + n, this.blocks);
    for (let b = first; b < end; b++) {
      if (!this.isAbsent(b)) continue;
      this.bits[b >> 3] &= ~(1 << (b & 7));
      this.remaining--;
    }
  }

  /** The absent blocks among `n` from `first`. */
  within(first: number, n: number): number[] {
    const out: number[] = [];
    const end = Math.min(first + n, this.blocks);
    for (let b = first; b < end; b++) if (this.isAbsent(b)) out.push(b);
    return out;
  }

  /** Up to `max` absent blocks from `from` on with no fill in flight, and where the search stopped. */
  next(from: number, max: number): { blocks: number[]; end: number } {
    const blocks: number[] = [];
    let b = from;
    for (; b < this.blocks && blocks.length < max; b++) {
      if (this.bits[b >> 3] === 0) { b |= 7; continue; }
      if (this.isAbsent(b) && !this.inflight.has(b)) blocks.push(b);
    }
    return { blocks, end: b };
  }

  /**
   * Fetches the chunks of `blocks` that are absent (joining fills already
   * in flight), checks each against its hash and hands it to `write` for
   * every block still absent when it arrives. Rejects with EIO when the
   * source cannot send them.
   */
  async fill(blocks: readonly number[], kind: FillKind, write: (b: number, chunk: Buffer) => void): Promise<void> {
    const waits: Promise<void>[] = [];
    const mine: number[] = [];
    for (const b of blocks) {
      if (!this.isAbsent(b)) continue;
      const p = this.inflight.get(b);
      if (p !== undefined) waits.push(p);
      else mine.push(b);
    }
    for (let i = 0; i < mine.length; i += MAX_FETCH) {
      const part = mine.slice(i, i + MAX_FETCH);
      const p = this.fetchAndWrite(part, kind, write);
      for (const b of part) this.inflight.set(b, p);
      waits.push(p.finally(() => { for (const b of part) if (this.inflight.get(b) === p) this.inflight.delete(b); }));
    }
    await Promise.all(waits);
  }

  private async fetchAndWrite(blocks: number[], kind: FillKind, write: (b: number, chunk: Buffer) => void): Promise<void> {
    // One request per distinct chunk (blocks of the same content share it).
    const byHash = new Map<string, number[]>();
    for (const b of blocks) {
      const key = this.hashes.toString('hex', b * HASH_SIZE, (b + 1) * HASH_SIZE);
      const list = byHash.get(key);
      if (list) list.push(b); else byHash.set(key, [b]);
    }
    const keys = [...byHash.keys()];
    const wanted = Buffer.from(keys.join(''), 'hex');
    const src = this.source;
    let data: Buffer;
    try {
      if (src === null) throw new Error('the VM using it has not been handed over yet');
      data = await src.fetch(wanted, kind === 'demand');
      if (data.length !== keys.length * BLOCK_SIZE) throw new Error(`${data.length} bytes came for ${keys.length} chunks`);
    } catch (err) {
      this.stats.failures++;
      this.stats.lastError = (err as Error).message;
      throw new DormantError('EIO', `block ${blocks[0]} of '${this.volume}' has not arrived from ${src?.where ?? 'its source host'}, `
        + `which could not send it: ${(err as Error).message}`, { volume: this.volume, offset: blocks[0] * BLOCK_SIZE, length: BLOCK_SIZE });
    }
    for (let i = 0; i < keys.length; i++) {
      const chunk = data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
      if (!xxh3(chunk).equals(wanted.subarray(i * HASH_SIZE, (i + 1) * HASH_SIZE))) {
        this.stats.failures++;
        this.stats.lastError = `chunk ${keys[i]} does not match its hash`;
        throw new DormantError('EIO', `chunk ${keys[i]} of '${this.volume}' from ${src!.where} does not match its hash `
          + '(corrupted in flight): nothing of it was written', { volume: this.volume });
      }
    }
    this.stats.lastError = null;
    this.stats.bytesFetched += data.length;
    if (kind === 'demand') this.stats.demandChunks += keys.length; else this.stats.backgroundChunks += keys.length;
    for (let i = 0; i < keys.length; i++) {
      const chunk = data.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE);
      for (const b of byHash.get(keys[i])!) if (this.isAbsent(b)) write(b, chunk);
    }
  }
}
