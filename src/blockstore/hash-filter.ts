/**
 * A Bloom filter over every chunk hash in the hash index, so a write of new
 * content (the common case) skips the dedup index look-up: "absent" is
 * certain, "present" sends the writer to the index and a byte compare.
 * Chunks not yet committed are not in it (the write-back finds those by
 * hash); a chunk's hash is added when its commit has put it in the index,
 * so a pending chunk rewritten in place leaves no stale bits.
 *
 * Chunk names are already uniformly random (xxh3-128), so the three probe
 * positions are three 32-bit words of the hash itself. Sized at 16 bits
 * per expected chunk (false positives ~0.3 %); it grows (rebuilt from the
 * index) when it holds twice what it was sized for. Until it has been
 * built from the index after open, every query answers "present". Chunks
 * freed by GC leave their bits set: only false positives, never a missed
 * duplicate.
 */
import type { Database } from 'lmdb';

const MIN_BITS = 2 ** 23; // 1 MiB
const MAX_BITS = 2 ** 30; // 128 MiB: 64M chunks (256 GiB of distinct data)
const BITS_PER_CHUNK = 16;
/** Hashes indexed per slice of a build; the event loop runs between slices. */
const BUILD_SLICE = 65536;

function bitsFor(chunks: number): number {
  let bits = MIN_BITS;
  while (bits < chunks * BITS_PER_CHUNK && bits < MAX_BITS) bits *= 2;
  return bits;
}

/** A built filter's bits and their mask, for native probes (the same test as `mayContain`). */
export interface FilterBits { words: Uint32Array; mask: number }

/** Membership filter of chunk hashes. */
export class HashFilter {
  private words = new Uint32Array(MIN_BITS / 32);
  private mask = MIN_BITS - 1;
  private count = 0;
  private ready = false;
  private building: Promise<void> | null = null;
  /** Hashes added while a build runs: replayed into the new bits. */
  private addedDuringBuild: Buffer[] | null = null;
  private closed = false;

  constructor(private readonly hashes: Database<Buffer, Buffer>) {}

  /** False when no chunk has hash `h` (certain); true when one may. */
  mayContain(h: Buffer, at = 0): boolean {
    if (!this.ready) return true;
    return this.test(h.readUInt32LE(at)) && this.test(h.readUInt32LE(at + 4)) && this.test(h.readUInt32LE(at + 8));
  }

  /** The bits for native probes; null until built. */
  bits(): FilterBits | null {
    return this.ready ? { words: this.words, mask: this.mask } : null;
  }

  /**
   * Records a chunk hash: call for every chunk entered in the hash index,
   * once it is there (chunks still pending are the write-back's to find).
   */
  add(h: Buffer, at = 0): void {
    this.set(this.words, this.mask, h, at);
    this.count++;
    if (this.addedDuringBuild === null && this.ready && this.count * BITS_PER_CHUNK > 2 * (this.mask + 1) && this.mask + 1 < MAX_BITS) {
      this.build().catch(() => { /* keeps the current bits: more false positives, never a miss */ });
    }
    // Also when the build just started: its scan may already be past this hash.
    if (this.addedDuringBuild !== null) this.addedDuringBuild.push(Buffer.from(h.subarray(at, at + 16)));
  }

  /**
   * (Re)builds the bits from the hash index in slices, sized for what the
   * index holds. Queries answer "present" until the first build completes;
   * later builds swap the new bits in when complete.
   */
  build(): Promise<void> {
    if (this.building === null) {
      this.building = this.rebuild().finally(() => { this.building = null; });
    }
    return this.building;
  }

  /** Stops a build in progress (the store is closing). */
  close(): void {
    this.closed = true;
  }

  private async rebuild(): Promise<void> {
    // Chunks committed while the scan runs may land behind its position: add() records them here.
    this.addedDuringBuild = [];
    try {
      // Never complete synchronously: an add() that started this build records its hash after the call.
      await new Promise((r) => setImmediate(r));
      const total = (this.hashes.getStats() as { entryCount: number }).entryCount;
      const bits = bitsFor(Math.max(total, this.count));
      const words = new Uint32Array(bits / 32);
      const mask = bits - 1;
      let n = 0;
      let start: Buffer | undefined;
      for (;;) {
        if (this.closed) return;
        let last: Buffer | undefined;
        for (const key of this.hashes.getKeys({ start, limit: BUILD_SLICE, snapshot: false })) {
          const k = key as Buffer;
          if (start !== undefined && last === undefined && k.equals(start)) continue; // where the last slice ended
          this.set(words, mask, k, 0);
          last = Buffer.from(k);
          n++;
        }
        if (last === undefined) break;
        start = last;
        await new Promise((r) => setImmediate(r));
      }
      for (const h of this.addedDuringBuild) this.set(words, mask, h, 0);
      this.words = words;
      this.mask = mask;
      this.count = n + this.addedDuringBuild.length;
      this.ready = true;
    } finally {
      this.addedDuringBuild = null;
    }
  }

  private test(word: number): boolean {
    const bit = (word & this.mask) >>> 0;
    return (this.words[bit >>> 5] & (1 << (bit & 31))) !== 0;
  }

  private set(words: Uint32Array, mask: number, h: Buffer, at: number): void {
    for (let i = 0; i < 3; i++) {
      const bit = (h.readUInt32LE(at + 4 * i) & mask) >>> 0;
      words[bit >>> 5] |= 1 << (bit & 31);
    }
  }
}
