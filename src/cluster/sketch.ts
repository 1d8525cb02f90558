/**
 * Fingerprint sketches: a summary of a fixed size of a set of chunk hashes
 * (a VM's memory fingerprint, fingerprint.ts) from which the size of the
 * union of any group of sets is estimated, and from it the pages the group
 * has in common.
 *
 * A bottom-k sketch: the k smallest values of the set, a value being the
 * first 48 bits of the chunk's xxh3-128 hash, plus the exact number of
 * values in the set. The hashes are uniform already, so no other mixing is
 * needed; the store's chunk ids are not used, since they are dense integers
 * that mean nothing on another host.
 *
 * Why it answers for groups: let t be the smallest of the sketches'
 * thresholds (a sketch's largest value; none for a sketch that holds its
 * whole set). Every value of the union up to t is in the sketch of every
 * set that holds it, since it is among that set's k smallest. So merging
 * the sketches of a group and keeping the values up to t gives a uniform
 * sample of its union, at least k values (the same rule as the set
 * operations of Theta sketches), and for each sampled value exactly the
 * sets that hold it. With the exact sizes |A_i|, since sum |A_i| = sum
 * over the union of the number of sets holding each value,
 *
 *     |union| ~= sum |A_i| * (sample size) / (sum over the sample of holders)
 *
 * exact when every sketch holds its whole set (n <= k). The pages a group
 * saves kept together are sum |A_i| - |union|; the pages common to all of
 * it are |union| times the share of the sample that every set holds.
 * Measured size and error: docs/internals/cluster.md.
 *
 * Wire form (base64 in a host's live record): version byte 1, k (uint16
 * BE), n (uint48 BE), then min(n, k) values (uint48 BE), ascending and
 * distinct.
 */
import { DormantError } from '../blockstore/index.js';

/** Values kept per sketch. */
export const SKETCH_K = 256;
/** Bits of a chunk hash a value keeps. */
export const SKETCH_VALUE_BITS = 48;
const VALUE_BYTES = SKETCH_VALUE_BITS / 8;
const HEADER_BYTES = 1 + 2 + VALUE_BYTES;
const VERSION = 1;
const HASH_BYTES = 16;

/** The bottom-k sketch of one set. */
export class FingerprintSketch {
  /**
   * `values`: the min(count, k) smallest values of the set, ascending and
   * distinct; `count`: how many distinct values the set has.
   */
  constructor(readonly k: number, readonly count: number, readonly values: Float64Array) {}

  /** True when the sketch holds the whole set (then every estimate from it is exact). */
  get complete(): boolean { return this.values.length === this.count; }

  /** The sketch of a set of values (48-bit integers; repeats count once). */
  static fromValues(values: Float64Array, k = SKETCH_K): FingerprintSketch {
    const sorted = Float64Array.from(values).sort();
    let n = 0;
    for (let i = 0; i < sorted.length; i++) if (i === 0 || sorted[i] !== sorted[i - 1]) sorted[n++] = sorted[i];
    return new FingerprintSketch(k, n, sorted.slice(0, Math.min(n, k)));
  }

  /** The sketch of a set of chunk hashes, 16 bytes each (repeats count once). */
  static fromHashes(hashes: Buffer, k = SKETCH_K): FingerprintSketch {
    const n = Math.floor(hashes.length / HASH_BYTES);
    const values = new Float64Array(n);
    for (let i = 0; i < n; i++) values[i] = hashes.readUIntBE(i * HASH_BYTES, VALUE_BYTES);
    return FingerprintSketch.fromValues(values, k);
  }

  /** The wire form (see the header). */
  encode(): Buffer {
    const out = Buffer.alloc(HEADER_BYTES + this.values.length * VALUE_BYTES);
    out[0] = VERSION;
    out.writeUInt16BE(this.k, 1);
    out.writeUIntBE(this.count, 3, VALUE_BYTES);
    this.values.forEach((v, i) => out.writeUIntBE(v, HEADER_BYTES + i * VALUE_BYTES, VALUE_BYTES));
    return out;
  }

  /** Decodes the wire form; EINVAL when it is not one. */
  static decode(buf: Buffer): FingerprintSketch {
    const bad = (why: string) => new DormantError('EINVAL', `bad fingerprint sketch: ${why}`);
    if (buf.length < HEADER_BYTES) throw bad(`${buf.length} bytes`);
    if (buf[0] !== VERSION) throw bad(`version ${buf[0]}`);
    const k = buf.readUInt16BE(1);
    const count = buf.readUIntBE(3, VALUE_BYTES);
    const m = (buf.length - HEADER_BYTES) / VALUE_BYTES;
    if (k === 0 || m !== Math.min(k, count)) throw bad(`${m} values for k ${k} and ${count} in the set`);
    const values = new Float64Array(m);
    for (let i = 0; i < m; i++) {
      values[i] = buf.readUIntBE(HEADER_BYTES + i * VALUE_BYTES, VALUE_BYTES);
      if (i > 0 && values[i] <= values[i - 1]) throw bad('values not ascending');
    }
    return new FingerprintSketch(k, count, values);
  }

  /** The wire form in base64 (what a live record carries). */
  toBase64(): string { return this.encode().toString('base64'); }

  /** Decodes base64 (see decode). */
  static fromBase64(text: string): FingerprintSketch { return FingerprintSketch.decode(Buffer.from(text, 'base64')); }
}

/** What the sketches of a group say about it (in elements: pages, for memory fingerprints). */
export interface GroupEstimate {
  /** Distinct elements of the group, all sets together. */
  union: number;
  /** sum of the sets' sizes - union: what keeping them together saves. */
  saved: number;
  /** Elements every set of the group holds. */
  commonToAll: number;
  /** True when the figures are exact (every sketch holds its whole set). */
  exact: boolean;
}

/** Estimates the union, the saving and the common part of a group from the sets' sketches. */
export function estimateGroup(sketches: readonly FingerprintSketch[]): GroupEstimate {
  const total = sketches.reduce((s, x) => s + x.count, 0);
  if (sketches.length === 0 || total === 0) return { union: 0, saved: 0, commonToAll: 0, exact: true };
  const exact = sketches.every((s) => s.complete);
  const threshold = Math.min(...sketches.map((s) => (s.complete ? Infinity : s.values[s.values.length - 1])));
  // A merge of the ascending value lists up to the threshold: the sample, and how many sets hold each value.
  const at = new Array<number>(sketches.length).fill(0);
  let sample = 0;
  let holders = 0;
  let inAll = 0;
  for (;;) {
    let min = Infinity;
    for (let i = 0; i < sketches.length; i++) if (at[i] < sketches[i].values.length) min = Math.min(min, sketches[i].values[at[i]]);
    if (min === Infinity || min > threshold) break;
    let c = 0;
    for (let i = 0; i < sketches.length; i++) if (at[i] < sketches[i].values.length && sketches[i].values[at[i]] === min) { c++; at[i]++; }
    sample++;
    holders += c;
    if (c === sketches.length) inAll++;
  }
  const union = exact ? sample : (total * sample) / holders;
  const largest = Math.max(...sketches.map((s) => s.count));
  const smallest = Math.min(...sketches.map((s) => s.count));
  // An estimate stays within what is possible: the union covers the largest set and no more than all of them.
  const u = Math.min(total, Math.max(largest, union));
  return { union: u, saved: total - u, commonToAll: Math.min(smallest, (u * inAll) / sample), exact };
}

/** Elements sets a and b have in common (estimated, exact when both sketches are complete). */
export function commonCount(a: FingerprintSketch, b: FingerprintSketch): number {
  return estimateGroup([a, b]).saved;
}
