/**
 * Deterministic test data: seeded pseudo-random bytes (xorshift32), so a
 * failure reproduces, and helpers to reason about blocks of a buffer.
 */
import { BLOCK_SIZE } from '../../src/blockstore/index.js';

/** `length` pseudo-random bytes from `seed` (never all zero for length >= 4). */
export function pseudoRandom(seed: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  let x = (seed >>> 0) || 0x9e3779b9;
  for (let i = 0; i < length; i += 4) {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    if (i + 4 <= length) out.writeUInt32LE(x, i);
    else for (let j = 0; i + j < length; j++) out[i + j] = (x >>> (8 * j)) & 0xff;
  }
  return out;
}

/** A block of pseudo-random bytes, distinct for each seed. */
export function randomBlock(seed: number): Buffer {
  return pseudoRandom(seed * 2654435761 + 1, BLOCK_SIZE);
}

/** Number of whole or partial blocks of `buf` that hold a nonzero byte. */
export function nonZeroBlocks(buf: Buffer): number {
  let n = 0;
  for (let off = 0; off < buf.length; off += BLOCK_SIZE) {
    const block = buf.subarray(off, Math.min(off + BLOCK_SIZE, buf.length));
    if (block.some((b) => b !== 0)) n++;
  }
  return n;
}

/** Blocks (count) of a volume of `size` bytes. */
export function blocksOf(size: number): number {
  return Math.ceil(size / BLOCK_SIZE);
}

/** Null when `actual` equals `expected`; else where they first differ (block and byte), for a readable failure. */
export function firstDiff(actual: Buffer, expected: Buffer): string | null {
  if (actual.equals(expected)) return null;
  const n = Math.min(actual.length, expected.length);
  for (let i = 0; i < n; i++) {
    if (actual[i] !== expected[i]) {
      return `first difference at byte ${i} (block ${Math.floor(i / BLOCK_SIZE)}): got ${actual[i]}, expected ${expected[i]}`
        + (actual.length !== expected.length ? `; lengths ${actual.length} vs ${expected.length}` : '');
    }
  }
  return `lengths differ: got ${actual.length}, expected ${expected.length}`;
}
