/**
 * The write-back table (src/blockstore/writeback.ts) against a model built
 * from plain maps: seeded random sequences of writes (zeroes, new chunks,
 * shared new chunks, committed chunks), rewrites in place, flushes that
 * commit or fail, and lineage removals, over block numbers that cross page
 * boundaries and exceed 2^32, and the runs of a big write: appended to
 * consecutive slots, then rewritten a run at a time (`rewritableRun`,
 * `rehashRun`, which stops where the hash filter or the prefix table says
 * a block may be a duplicate), sometimes moved to landed slots
 * (`relocateRun`), and a landed write's new chunks registered a run at once
 * (`addLandedRun`, which stops likewise). After every step each query — the target a
 * reader sees, rewritability, references, new-chunk places and names,
 * hash candidates — must agree with the model.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Generation } from '../../src/blockstore/generation.js';
import { Writeback } from '../../src/blockstore/writeback.js';

interface Entry { version: number; target: number }
interface Chunk { segment: number; slot: number; hash: Buffer; unique: boolean }

class Model {
  current = new Map<string, Entry>();
  flushing: Map<string, Entry> | null = null;
  chunks = new Map<number, Chunk>();

  refs(id: number): number {
    let n = 0;
    for (const g of [this.current, this.flushing]) for (const e of g?.values() ?? []) if (e.target === id) n++;
    return n;
  }

  target(l: number, b: number, maxVersion: number): number {
    const e = this.current.get(`${l}:${b}`) ?? this.flushing?.get(`${l}:${b}`);
    return e !== undefined && e.version <= maxVersion ? e.target : -1;
  }

  rewritable(l: number, b: number): number {
    const e = this.current.get(`${l}:${b}`);
    if (e === undefined || e.target === 0 || !this.chunks.has(e.target)) return 0;
    return this.refs(e.target) === 1 ? e.target : 0;
  }
}

function rng(seed: number): (n: number) => number {
  let s = seed >>> 0;
  return (n) => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return Math.floor((s / 2 ** 32) * n); // the high bits: an LCG's low bits repeat quickly
  };
}

const LINEAGES = [1, 2, 3];
const BASES = [0, 30, 2 ** 36]; // a page boundary at 32, and block numbers past 2^32
const hashOf = (r: (n: number) => number): Buffer => {
  const h = Buffer.alloc(16);
  for (let i = 0; i < 16; i++) h[i] = r(256);
  if (r(4) === 0) h.writeUInt32BE(0xabcdef00, 0); // shared prefixes: candidate lists
  return h;
};

/** Committed hashes' bits for rehashRun: 2^15 bits, about half set, so about one hash in eight may be known. */
const FILTER = {
  words: new Uint32Array(2 ** 10).map((_, i) => Math.imul(i + 1, 2654435761) >>> 0),
  mask: 2 ** 15 - 1,
};
function filterMayContain(h: Buffer): boolean {
  return [0, 4, 8].every((at) => {
    const bit = (h.readUInt32LE(at) & FILTER.mask) >>> 0;
    return (FILTER.words[bit >>> 5] & (1 << (bit & 31))) !== 0;
  });
}
/** The 30 bits the prefix table files a hash under. */
const prefixOf = (h: Buffer): number => h.readUInt32BE(0) >>> 2;

/** Every query of the table and of the model, side by side (one comparison per step keeps it fast). */
function check(wb: Writeback, m: Model, r: (n: number) => number, nextId: number): void {
  const got: unknown[] = [];
  const want: unknown[] = [];
  for (let k = 0; k < 20; k++) {
    const l = LINEAGES[r(3)];
    const b = BASES[r(3)] + r(70);
    const maxV = r(4) === 0 ? r(5) : Number.MAX_SAFE_INTEGER;
    got.push(['target', l, b, maxV, wb.target(l, b, maxV)], ['rewritable', l, b, wb.rewritable(l, b)]);
    want.push(['target', l, b, maxV, m.target(l, b, maxV)], ['rewritable', l, b, m.rewritable(l, b)]);
  }
  const out = new Uint32Array(2);
  const hash = Buffer.alloc(16);
  // The first ids (committed ones, the first new ones), and some of the rest.
  const ids = Array.from({ length: 59 }, (_, k) => k + 1);
  for (let k = 0; k < 40 && nextId > 60; k++) ids.push(60 + r(nextId - 60));
  for (const id of ids) {
    const c = m.chunks.get(id);
    const placed = wb.newPlace(id, out, hash, 0);
    got.push([id, wb.references(id), wb.isNew(id), placed]);
    want.push([id, m.refs(id) > 0, c !== undefined, c !== undefined]);
    if (c !== undefined && placed) {
      got.push([id, out[0], out[1], hash.toString('hex'), wb.newHash(id).toString('hex'), wb.isUnique(id),
        wb.newChunksWithHash(c.hash).sort((x, y) => x - y)]);
      want.push([id, c.segment, c.slot, c.hash.toString('hex'), c.hash.toString('hex'), c.unique,
        [...m.chunks].filter(([, o]) => prefixOf(o.hash) === prefixOf(c.hash)).map(([k]) => k).sort((x, y) => x - y)]);
    }
  }
  got.push(wb.newChunkCount, wb.size, [...wb.newChunkSegments()].sort());
  want.push(m.chunks.size, m.current.size, [...new Set([...m.chunks.values()].map((c) => c.segment))].sort());
  expect(got).toEqual(want);
}

describe('write-back table', () => {
  for (const seed of [1, 2, 3, 4, 5, 6]) {
    it(`agrees with a map model (seed ${seed})`, () => {
      const r = rng(seed);
      const wb = new Writeback();
      const m = new Model();
      let nextId = 20; // ids below are "committed" chunks
      let version = 1;
      let gen: Generation | null = null;
      /** Lineage and block just after the last run appended. */
      let lastRun: [number, number] | null = null;
      for (let step = 0; step < 1500; step++) {
        const op = r(100);
        const l = LINEAGES[r(3)];
        const b = BASES[r(3)] + r(70);
        if (op < 45) {
          // A write: zeroes, a committed chunk, an existing new chunk, a new chunk, or a rewrite in place.
          const kind = r(5);
          let target = 0;
          const reuse = wb.rewritable(l, b);
          if (kind === 1) target = 1 + r(19);
          else if (kind === 2 && m.chunks.size > 0) target = [...m.chunks.keys()][r(m.chunks.size)];
          else if (kind === 3 && reuse !== 0) {
            const hash = hashOf(r);
            const unique = r(2) === 0;
            wb.rehash(reuse, hash, 0, unique);
            const c = m.chunks.get(reuse)!;
            c.hash = hash;
            c.unique = unique;
            target = reuse;
          } else if (kind >= 3) {
            target = nextId++;
            const c = { segment: 1 + r(3), slot: r(1000), hash: hashOf(r), unique: r(2) === 0 };
            const framed = Buffer.concat([Buffer.alloc(16 * 3), c.hash]);
            wb.addNewChunk(target, framed, 48, { segment: c.segment, slot: c.slot }, c.unique);
            m.chunks.set(target, c);
          }
          if (r(10) === 0) version++;
          wb.set(l, b, version, target);
          m.current.set(`${l}:${b}`, { version, target });
        } else if (op < 52 && gen === null) {
          gen = wb.takeGeneration();
          m.flushing = m.current;
          m.current = new Map();
        } else if (op < 62 && gen !== null) {
          const entries: string[] = [];
          for (const lineage of gen.lineages.keys()) {
            for (const [block, v, t] of gen.entries(lineage)) entries.push(`${lineage}:${block}:${v}:${t}`);
          }
          expect(entries.sort()).toEqual([...m.flushing!].map(([k, e]) => `${k}:${e.version}:${e.target}`).sort());
          if (r(5) === 0) {
            wb.restoreGeneration(gen);
            for (const [k, e] of m.flushing!) if (!m.current.has(k)) m.current.set(k, e);
          } else {
            // Commit: the new chunks the generation references are entered.
            const entered = new Set([...m.flushing!.values()].map((e) => e.target).filter((t) => m.chunks.has(t)));
            const named: string[] = [];
            wb.releaseCommitted(gen, entered, (h) => named.push(h.toString('hex')));
            expect(named.sort()).toEqual([...entered].map((id) => m.chunks.get(id)!.hash.toString('hex')).sort());
            m.flushing = null;
            for (const id of [...m.chunks.keys()]) if (entered.has(id) || m.refs(id) === 0) m.chunks.delete(id);
          }
          m.flushing = null;
          gen = null;
        } else if (op < 68) {
          // A big write's appends: a run of new chunks in consecutive slots, for consecutive blocks;
          // often just after the last run (ids go on, the slots or the segment do not).
          const len = 1 + r(40);
          const segment = 1 + r(3);
          const slot = r(1000);
          const [bl, bb] = lastRun !== null && r(2) === 0 ? lastRun : [l, b];
          if (r(10) === 0) version++;
          for (let k = 0; k < len; k++) {
            const id = nextId++;
            const c = { segment, slot: slot + k, hash: hashOf(r), unique: r(2) === 0 };
            wb.addNewChunk(id, c.hash, 0, { segment, slot: slot + k }, c.unique);
            m.chunks.set(id, c);
            wb.set(bl, bb + k, version, id);
            m.current.set(`${bl}:${bb + k}`, { version, target: id });
          }
          lastRun = [bl, bb + len];
        } else if (op < 76) {
          // A big rewrite: the run it may take at once, then as much of it as the filter and the prefixes allow.
          const len = 1 + r(40);
          const zero = new Uint8Array(len).map(() => (r(30) === 0 ? 1 : 0));
          const run = new Float64Array(3);
          const got = wb.rewritableRun(l, b, len, zero, 0, run);
          let want = 0;
          const id0 = m.rewritable(l, b);
          if (id0 !== 0 && zero[0] === 0) {
            const c0 = m.chunks.get(id0)!;
            want = 1;
            while (want < len && Math.floor((id0 + want) / 1024) === Math.floor(id0 / 1024) && zero[want] === 0
              && m.rewritable(l, b + want) === id0 + want && m.chunks.get(id0 + want)!.segment === c0.segment
              && m.chunks.get(id0 + want)!.slot === c0.slot + want) want++;
            expect([...run]).toEqual([id0, c0.segment, c0.slot]);
          }
          expect(got).toBe(want);
          if (got > 0) {
            const hashes = Buffer.concat(Array.from({ length: got }, () => hashOf(r)));
            const built = r(8) !== 0; // (else the filter is still being built: nothing is done)
            const done = wb.rehashRun(id0, got, hashes, 0, built ? FILTER : null);
            let expected = 0;
            for (; built && expected < got; expected++) {
              const h = hashes.subarray(16 * expected, 16 * expected + 16);
              if (filterMayContain(h) || [...m.chunks.values()].some((c) => prefixOf(c.hash) === prefixOf(h))) break;
              const c = m.chunks.get(id0 + expected)!;
              c.hash = Buffer.from(h);
              c.unique = true;
            }
            expect(done).toBe(expected);
            if (r(10) === 0) version++;
            wb.setVersions(l, b, done, version);
            for (let k = 0; k < done; k++) m.current.get(`${l}:${b + k}`)!.version = version;
            if (r(2) === 0 && done > 0) {
              // A landed rewrite: the chunks move to the slots the payload landed in.
              const segment = 1 + r(3);
              const slot = r(1000);
              wb.relocateRun(id0, done, segment, slot);
              for (let k = 0; k < done; k++) Object.assign(m.chunks.get(id0 + k)!, { segment, slot: slot + k });
            }
          }
        } else if (op < 82) {
          // A landed write's new chunks, registered a run at once while nothing may be a duplicate.
          const len = 1 + r(40);
          const segment = 1 + r(3);
          const slot = r(1000);
          const hashes = Buffer.concat(Array.from({ length: len }, () => hashOf(r)));
          const built = r(8) !== 0;
          const done = wb.addLandedRun(nextId, len, hashes, 0, segment, slot, built ? FILTER : null);
          let expected = 0;
          const room = 1024 - (nextId % 1024);
          for (; built && expected < Math.min(len, room); expected++) {
            const h = hashes.subarray(16 * expected, 16 * expected + 16);
            if (filterMayContain(h) || [...m.chunks.values()].some((c) => prefixOf(c.hash) === prefixOf(h))) break;
            m.chunks.set(nextId + expected, { segment, slot: slot + expected, hash: Buffer.from(h), unique: true });
          }
          expect(done).toBe(expected);
          if (r(10) === 0) version++;
          for (let k = 0; k < done; k++) {
            wb.set(l, b + k, version, nextId + k);
            m.current.set(`${l}:${b + k}`, { version, target: nextId + k });
          }
          nextId += done;
        } else if (op < 84) {
          wb.dropLineage(l);
          for (const g of [m.current, m.flushing]) for (const k of [...(g?.keys() ?? [])]) if (k.startsWith(`${l}:`)) g!.delete(k);
        }
        check(wb, m, r, nextId);
      }
    });
  }
});

/** 16 random bytes (hashOf above makes a quarter of its hashes share a prefix, too many for this size). */
const randomHash = (): Buffer => crypto.randomBytes(16);

describe('write-back table at scale', () => {
  it('finds every new chunk by hash while the prefix table grows, shrinks and holds colliding prefixes', () => {
    const wb = new Writeback();
    const hashes = new Map<number, Buffer>();
    const N = 200_000;
    for (let id = 1; id <= N; id++) {
      const h = randomHash();
      if (id % 4000 === 0) h.writeUInt32BE(0x12345678, 0); // several ids under one prefix
      wb.addNewChunk(id, h, 0, { segment: 1, slot: id }, false);
      wb.set(1, id, 1, id);
      hashes.set(id, h);
    }
    const missing = (ids: Iterable<number>) => [...ids].filter((id) => !wb.newChunksWithHash(hashes.get(id)!).includes(id));
    expect(missing(hashes.keys())).toEqual([]);
    // Rewrites move chunks between prefixes; a commit then forgets nine in ten.
    for (let id = 1; id <= N; id += 3) {
      const h = randomHash();
      wb.rehash(id, h, 0, false);
      hashes.set(id, h);
    }
    expect(missing(hashes.keys())).toEqual([]);
    const gen = wb.takeGeneration();
    const committed = new Set([...hashes.keys()].filter((id) => id % 10 !== 0));
    for (let id = 10; id <= N; id += 10) wb.set(2, id, 1, id); // still referenced after the commit
    wb.releaseCommitted(gen, committed, () => undefined);
    const gone = [...committed].slice(0, 5000).map((id) => hashes.get(id)!);
    for (const id of committed) hashes.delete(id);
    expect(wb.newChunkCount).toBe(hashes.size);
    expect(missing(hashes.keys())).toEqual([]);
    // No stale candidates: a committed chunk's hash finds nothing but live ids.
    const live = new Set(hashes.keys());
    expect(gone.flatMap((h) => wb.newChunksWithHash(h).filter((x) => !live.has(x)))).toEqual([]);
  });
});
