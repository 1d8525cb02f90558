/**
 * Model-based test of the store: random sequences of write, read, trim,
 * zero, snapshot, branch, rm, gc, relocation (with a write, a flush and GC
 * beside it), flush and reopen over several volumes,
 * checked after every step against a plain model (one Buffer per volume and
 * snapshot). Byte ranges are unaligned and span blocks; volume sizes are not
 * block multiples; contents come from a small palette so deduplication and
 * zero blocks happen all the time. Run once with xxh3 and once with a hash
 * that collides on purpose.
 */
import { describe, expect, test } from 'vitest';
import fc from 'fast-check';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Store, isDormantError, type HashFunction, type VolumeHandle } from '../../src/blockstore/index.js';

const BLOCK = 4096;
const VOLUMES = ['a', 'b', 'c'];
const SNAPS = ['s1', 's2'];
const SIZES = [3 * BLOCK + 123, 5 * BLOCK, 2 * BLOCK - 1];

type Op =
  | { op: 'create'; vol: string; size: number }
  | { op: 'write'; vol: string; at: number; len: number; pattern: number }
  | { op: 'trim' | 'zero'; vol: string; at: number; len: number }
  | { op: 'read'; name: string; at: number; len: number }
  | { op: 'snapshot'; vol: string; snap: string }
  | { op: 'branch'; vol: string; from: string }
  | { op: 'rm'; name: string }
  | { op: 'concurrent'; vol: string; at: number; len: number; pattern: number }
  | { op: 'relocate'; name: string; vol: string; at: number; len: number; pattern: number }
  | { op: 'gc' | 'flush' | 'reopen' };

const name = fc.oneof(fc.constantFrom(...VOLUMES),
  fc.tuple(fc.constantFrom(...VOLUMES), fc.constantFrom(...SNAPS)).map(([v, s]) => `${v}@${s}`));
// Fractions of a volume as integers: fc.double is biased towards tiny values.
const frac = fc.integer({ min: 0, max: 1000 }).map((x) => x / 1000);

const opArb: fc.Arbitrary<Op> = fc.oneof(
  { weight: 2, arbitrary: fc.record({ op: fc.constant('create' as const), vol: fc.constantFrom(...VOLUMES), size: fc.constantFrom(...SIZES) }) },
  { weight: 6, arbitrary: fc.record({ op: fc.constant('write' as const), vol: fc.constantFrom(...VOLUMES), at: frac, len: frac, pattern: fc.nat(7) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constantFrom('trim' as const, 'zero' as const), vol: fc.constantFrom(...VOLUMES), at: frac, len: frac }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('read' as const), name, at: frac, len: frac }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('snapshot' as const), vol: fc.constantFrom(...VOLUMES), snap: fc.constantFrom(...SNAPS) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('branch' as const), vol: fc.constantFrom(...VOLUMES), from: name }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('rm' as const), name }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('concurrent' as const), vol: fc.constantFrom(...VOLUMES), at: frac, len: frac, pattern: fc.nat(7) }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('relocate' as const), name, vol: fc.constantFrom(...VOLUMES), at: frac, len: frac, pattern: fc.nat(7) }) },
  { weight: 4, arbitrary: fc.record({ op: fc.constantFrom('gc' as const, 'flush' as const, 'flush' as const, 'reopen' as const) }) },
);

/** Bytes for a write: blocks from a small palette, some zero, some unique. */
function content(len: number, pattern: number, seq: number): Buffer {
  const b = Buffer.alloc(len);
  for (let i = 0; i < len; i++) {
    const blk = Math.floor(i / BLOCK);
    switch ((pattern + blk) % 8) {
      case 0: break; // zeroes
      case 1: b[i] = 0xab; break;
      case 2: b[i] = i & 0xff; break;
      case 3: b[i] = (i * 7 + seq) & 0xff; break; // unique per write
      default: b[i] = (pattern * 31 + (i % 97)) & 0xff;
    }
  }
  return b;
}

interface Model { vols: Map<string, Buffer>; snaps: Map<string, Buffer>; origin: Map<string, string> }

function range(size: number, at: number, len: number): [number, number] {
  const off = Math.floor(at * size);
  // Short ranges (within a block) as often as long ones.
  return [off, Math.floor(len * (size - off) * (len < 0.5 ? 0.05 : 1))];
}

async function expectCode(p: Promise<unknown>, code: string): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (isDormantError(err) && err.code === code) return;
    throw err;
  }
  throw new Error(`expected ${code}`);
}

async function runOps(ops: Op[], hash?: HashFunction, readMode: 'adaptive' | 'pool' = 'adaptive'): Promise<void> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-model-'));
  let store = await Store.init(dir, { hash, writebackIntervalMs: 0, readMode });
  const handles = new Map<string, VolumeHandle>();
  const m: Model = { vols: new Map(), snaps: new Map(), origin: new Map() };
  const handle = async (n: string) => {
    let h = handles.get(n);
    if (!h) { h = await store.openVolume(n); handles.set(n, h); }
    return h;
  };
  const closeHandles = async () => { for (const h of handles.values()) await h.close(); handles.clear(); };
  const model = (n: string) => m.vols.get(n) ?? m.snaps.get(n);
  let seq = 0;
  try {
    for (const o of ops) {
      seq++;
      switch (o.op) {
        case 'create':
          if (model(o.vol)) { await expectCode(store.createVolume(o.vol, o.size), 'EEXIST'); break; }
          await store.createVolume(o.vol, o.size);
          m.vols.set(o.vol, Buffer.alloc(o.size));
          break;
        case 'write': case 'trim': case 'zero': {
          const cur = m.vols.get(o.vol);
          if (!cur) { await expectCode(store.openVolume(o.vol), 'ENOENT'); break; }
          const [off, len] = range(cur.length, o.at, o.len);
          const h = await handle(o.vol);
          if (o.op === 'write') {
            const data = content(len, o.pattern, seq);
            await h.write(off, data, { fua: o.pattern === 7 });
            data.copy(cur, off);
          } else {
            await (o.op === 'trim' ? h.trim(off, len) : h.zero(off, len));
            cur.fill(0, off, off + len);
          }
          await expectCode(h.write(cur.length - 1, Buffer.alloc(2)), 'ERANGE');
          break;
        }
        case 'read': {
          const cur = model(o.name);
          if (!cur) { await expectCode(store.openVolume(o.name), 'ENOENT'); break; }
          const [off, len] = range(cur.length, o.at, o.len);
          expect((await (await handle(o.name)).read(off, len)).equals(cur.subarray(off, off + len))).toBe(true);
          break;
        }
        case 'snapshot': {
          const cur = m.vols.get(o.vol);
          const full = `${o.vol}@${o.snap}`;
          if (!cur) { await expectCode(store.snapshot(o.vol, o.snap), 'ENOENT'); break; }
          if (m.snaps.has(full)) { await expectCode(store.snapshot(o.vol, o.snap), 'EEXIST'); break; }
          await store.snapshot(o.vol, o.snap);
          m.snaps.set(full, Buffer.from(cur));
          break;
        }
        case 'branch': {
          const src = m.snaps.get(o.from);
          if (!o.from.includes('@')) { await expectCode(store.branch(o.vol, o.from), 'EINVAL'); break; }
          if (!src) { await expectCode(store.branch(o.vol, o.from), 'ENOENT'); break; }
          if (model(o.vol)) { await expectCode(store.branch(o.vol, o.from), 'EEXIST'); break; }
          await store.branch(o.vol, o.from);
          m.vols.set(o.vol, Buffer.from(src));
          m.origin.set(o.vol, o.from);
          break;
        }
        case 'rm': {
          if (!model(o.name)) { await expectCode(store.remove(o.name), 'ENOENT'); break; }
          const targets = o.name.includes('@') ? [o.name] : [o.name, ...[...m.snaps.keys()].filter((s) => s.startsWith(`${o.name}@`))];
          const blocked = [...m.origin.values()].some((from) => targets.includes(from));
          await closeHandles();
          if (blocked) { await expectCode(store.remove(o.name), 'EBUSY'); break; }
          await store.remove(o.name);
          for (const t of targets) { m.vols.delete(t); m.snaps.delete(t); m.origin.delete(t); }
          break;
        }
        case 'concurrent': {
          // A flush in flight while a write and a read of the same range happen:
          // the read must see the new write, and the flushing generation too.
          const cur = m.vols.get(o.vol);
          if (!cur) break;
          const [off, len] = range(cur.length, o.at, o.len);
          const h = await handle(o.vol);
          const before = Buffer.from(cur.subarray(off, off + len));
          const flushing = store.flush();
          expect((await h.read(off, len)).equals(before)).toBe(true);
          const data = content(len, o.pattern, seq);
          const writing = h.write(off, data);
          const snapDuring = o.pattern % 2 === 0 && !m.snaps.has(`${o.vol}@s2`) ? store.snapshot(o.vol, 's2') : null;
          await writing;
          data.copy(cur, off);
          expect((await h.read(off, len)).equals(data)).toBe(true);
          await flushing;
          if (snapDuring) { await snapDuring; m.snaps.set(`${o.vol}@s2`, Buffer.from(cur)); }
          break;
        }
        case 'relocate': {
          // Relocation of a name's chunks while a write to a volume, a flush and a GC run beside it.
          if (!model(o.name)) { await expectCode(store.relocate(o.name), 'ENOENT'); break; }
          const relocating = store.relocate(o.name, { force: o.pattern % 2 === 0 });
          const cur = m.vols.get(o.vol);
          const steps: Promise<unknown>[] = [relocating, store.flush(), store.gc()];
          if (cur) {
            const [off, len] = range(cur.length, o.at, o.len);
            const data = content(len, o.pattern, seq);
            steps.push((await handle(o.vol)).write(off, data));
            data.copy(cur, off);
          }
          await Promise.all(steps);
          break;
        }
        case 'gc': await store.gc(); break;
        case 'flush': await store.flush(); break;
        case 'reopen':
          await closeHandles();
          await store.close();
          store = await Store.open(dir, { hash, writebackIntervalMs: 0, readMode });
          break;
      }
      // After every step, every volume and snapshot reads exactly as the model.
      for (const [n, buf] of [...m.vols, ...m.snaps]) {
        const h = await handle(n);
        expect(h.size).toBe(buf.length);
        const got = await h.read(0, buf.length);
        if (!got.equals(buf)) throw new Error(`${n} differs from the model after ${JSON.stringify(o)}`);
      }
    }
    // The index is consistent, and the space accounting agrees with the
    // model's non-zero blocks.
    await closeHandles();
    expect(await store.check()).toEqual([]);
    for (const v of await store.list()) {
      const buf = model(v.name)!;
      let blocks = 0;
      for (let i = 0; i < buf.length; i += BLOCK) if (buf.subarray(i, i + BLOCK).some((x) => x !== 0)) blocks++;
      expect(v.allocated).toBe(blocks * BLOCK);
    }
  } finally {
    await closeHandles();
    await store.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

describe('store against a plain in-memory model', () => {
  test('random operation sequences (xxh3)', async () => {
    await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 60, size: 'max' }), (ops) => runOps(ops)),
      { numRuns: 150, seed: Number(process.env.DORMANT_SEED ?? Date.now() % 2 ** 31) });
  });

  test('random operation sequences with every read through the thread pool', async () => {
    await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 20, maxLength: 60, size: 'max' }),
      (ops) => runOps(ops, undefined, 'pool')), { numRuns: 60 });
  });

  test('random operation sequences with a hash that always collides', async () => {
    const collide: HashFunction = (b) => Buffer.from(b.subarray(0, 16).map((x) => x & 1));
    await fc.assert(fc.asyncProperty(fc.array(opArb, { minLength: 10, maxLength: 40, size: 'max' }), (ops) => runOps(ops, collide)),
      { numRuns: 25 });
  });
});
