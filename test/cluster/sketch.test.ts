/**
 * Fingerprint sketches (src/cluster/sketch.ts) against exact sets: the wire
 * form round-trips and a damaged one is refused; sets smaller than k give
 * exact figures; on random families of sets (a part common to all, a part
 * per family, a part of each set's own, like the ballast guests' memory)
 * the estimated common elements of pairs and the union, saving and common
 * part of groups stay within bounds of the exact figures, and a sketch
 * that kept too few values (k = 16) would not (the bounds can fail). All
 * draws from seeded PRNGs: the figures are the same on every run.
 */
import { describe, expect, it } from 'vitest';
import { FingerprintSketch, commonCount, estimateGroup, mulberry32, SKETCH_K } from '../../src/cluster/index.js';

/** A random 48-bit value. */
const draw48 = (rand: () => number): number => Math.floor(rand() * 2 ** 24) * 2 ** 24 + Math.floor(rand() * 2 ** 24);

/** `n` random values. */
function pool(rand: () => number, n: number): number[] {
  return Array.from({ length: n }, () => draw48(rand));
}

/** A family of sets: each holds a share of `common`, of its family's part and values of its own. */
function families(seed: number, nFamilies: number, perFamily: number): Set<number>[][] {
  const rand = mulberry32(seed);
  const common = pool(rand, 20_000);
  return Array.from({ length: nFamilies }, () => {
    const part = pool(rand, 10_000 + Math.floor(rand() * 30_000));
    return Array.from({ length: perFamily }, () => {
      const s = new Set<number>();
      const keep = (xs: number[], p: number) => { for (const x of xs) if (rand() < p) s.add(x); };
      keep(common, 0.2 + rand() * 0.6);
      keep(part, 0.3 + rand() * 0.7);
      for (const x of pool(rand, 5_000 + Math.floor(rand() * 40_000))) s.add(x);
      return s;
    });
  });
}

const sketchOf = (s: Set<number>, k = SKETCH_K) => FingerprintSketch.fromValues(Float64Array.from(s), k);
const intersection = (a: Set<number>, b: Set<number>) => { let n = 0; for (const x of a) if (b.has(x)) n++; return n; };
const union = (sets: Set<number>[]) => new Set(sets.flatMap((s) => [...s])).size;
const inAll = (sets: Set<number>[]) => [...sets[0]].filter((x) => sets.every((s) => s.has(x))).length;

/** Errors of pairwise common-element estimates, as fractions of the smaller set: mean and worst. */
function pairErrors(sets: Set<number>[], k: number): { mean: number; worst: number } {
  const sk = sets.map((s) => sketchOf(s, k));
  const errs: number[] = [];
  for (let i = 0; i < sets.length; i++) {
    for (let j = i + 1; j < sets.length; j++) {
      const exact = intersection(sets[i], sets[j]);
      errs.push(Math.abs(commonCount(sk[i], sk[j]) - exact) / Math.min(sets[i].size, sets[j].size));
    }
  }
  return { mean: errs.reduce((a, b) => a + b, 0) / errs.length, worst: Math.max(...errs) };
}

describe('fingerprint sketches', () => {
  it('the wire form round-trips, its size is fixed by k, and a damaged one is one EINVAL', () => {
    const rand = mulberry32(7);
    const s = sketchOf(new Set(pool(rand, 10_000)));
    const buf = s.encode();
    expect(buf.length).toBe(9 + 6 * SKETCH_K);
    const back = FingerprintSketch.fromBase64(s.toBase64());
    expect(back.count).toBe(10_000);
    expect(back.k).toBe(SKETCH_K);
    expect([...back.values]).toEqual([...s.values]);
    expect(back.values.length).toBe(SKETCH_K);
    // The k smallest, ascending.
    const sorted = [...s.values].sort((a, b) => a - b);
    expect([...s.values]).toEqual(sorted);
    const small = sketchOf(new Set([5, 3, 3, 9]));
    expect(small.count).toBe(3);
    expect(small.complete).toBe(true);
    expect(FingerprintSketch.decode(small.encode()).values).toEqual(Float64Array.from([3, 5, 9]));
    expect(() => FingerprintSketch.decode(buf.subarray(0, buf.length - 3))).toThrow(/bad fingerprint sketch/);
    expect(() => FingerprintSketch.decode(Buffer.from([2, ...buf.subarray(1)]))).toThrow(/version 2/);
    const swapped = Buffer.from(buf);
    buf.copy(swapped, 9, 15, 21);
    buf.copy(swapped, 15, 9, 15);
    expect(() => FingerprintSketch.decode(swapped)).toThrow(/not ascending/);
    expect(() => FingerprintSketch.decode(Buffer.alloc(2))).toThrow(/bad fingerprint sketch/);
  });

  it('sets of at most k elements give exact figures', () => {
    const a = new Set([1, 2, 3, 4, 5, 6]);
    const b = new Set([4, 5, 6, 7]);
    const c = new Set([6, 7, 8]);
    expect(commonCount(sketchOf(a), sketchOf(b))).toBe(3);
    expect(estimateGroup([a, b, c].map((s) => sketchOf(s)))).toEqual({ union: 8, saved: 5, commonToAll: 1, exact: true });
    expect(estimateGroup([])).toEqual({ union: 0, saved: 0, commonToAll: 0, exact: true });
  });

  it('pairs: the estimated common elements stay close to the exact intersections on random families', () => {
    const sets = families(11, 3, 4).flat();
    const e = pairErrors(sets, SKETCH_K);
    expect(e.mean).toBeLessThan(0.025);
    expect(e.worst).toBeLessThan(0.08);
    // The bounds mean something: a sketch of 16 values misses them.
    const coarse = pairErrors(sets, 16);
    expect(coarse.mean).toBeGreaterThan(0.025);
  });

  it('groups: union, saving and common part of families and of everything, against exact sets', () => {
    const fams = families(23, 3, 5);
    const groups = [...fams, fams.flat(), [fams[0][0], fams[1][0], fams[2][0]], fams[0].slice(0, 2), fams[1].slice(1, 4)];
    const errors = (k: number) => groups.map((g) => {
      const est = estimateGroup(g.map((s) => sketchOf(s, k)));
      const u = union(g);
      const total = g.reduce((n, s) => n + s.size, 0);
      expect(est.exact).toBe(false);
      expect(est.saved).toBeCloseTo(total - est.union, 6);
      return {
        union: Math.abs(est.union - u) / u,
        // The saving's error as a share of the group's total size; the common part's as a share of its smallest set.
        saved: Math.abs(est.saved - (total - u)) / total,
        common: Math.abs(est.commonToAll - inAll(g)) / Math.min(...g.map((s) => s.size)),
      };
    });
    const e = errors(SKETCH_K);
    const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
    expect(mean(e.map((x) => x.union))).toBeLessThan(0.04);
    expect(Math.max(...e.map((x) => x.union))).toBeLessThan(0.08);
    expect(Math.max(...e.map((x) => x.saved))).toBeLessThan(0.06);
    expect(Math.max(...e.map((x) => x.common))).toBeLessThan(0.1);
    // The bounds mean something: with 16 values they are missed.
    const coarse = errors(16);
    expect(mean(coarse.map((x) => x.union))).toBeGreaterThan(0.04);
    expect(Math.max(...coarse.map((x) => x.common))).toBeGreaterThan(0.1);
  });
});
