/**
 * The write-back table (src/blockstore/writeback.ts) against a model built
 * from plain maps: seeded random sequences of writes (zeroes, new chunks,
 * shared new chunks, committed chunks), rewrites in place, flushes that
 * commit or fail, and lineage removals, over block numbers that cross page
 * boundaries and exceed 2^32. After every step each query — the target a
 * reader sees, rewritability, references, new-chunk places and names,
 * hash candidates — must agree with the model.
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { Writeback, type Generation } from '../../src/blockstore/writeback.js';

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

/** Every query of the table and of the model, side by side (one comparison per step keeps it fast). */
function check(wb: Writeback, m: Model, r: (n: number) => number): void {
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
  for (let id = 1; id < 60; id++) {
    const c = m.chunks.get(id);
    const placed = wb.newPlace(id, out, hash, 0);
    got.push([id, wb.references(id), wb.isNew(id), placed]);
    want.push([id, m.refs(id) > 0, c !== undefined, c !== undefined]);
    if (c !== undefined && placed) {
      got.push([id, out[0], out[1], hash.toString('hex'), wb.newHash(id).toString('hex'), wb.isUnique(id),
        wb.newChunksWithHash(c.hash).includes(id)]);
      want.push([id, c.segment, c.slot, c.hash.toString('hex'), c.hash.toString('hex'), c.unique, true]);
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
        } else if (op < 64) {
          wb.dropLineage(l);
          for (const g of [m.current, m.flushing]) for (const k of [...(g?.keys() ?? [])]) if (k.startsWith(`${l}:`)) g!.delete(k);
        }
        check(wb, m, r);
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
