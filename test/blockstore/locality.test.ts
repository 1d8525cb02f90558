/**
 * Locality (src/blockstore/locality.ts): a volume written at random lies
 * scattered and `info` says so; relocation puts its chunks in block order
 * with the same bytes, leaves chunks another volume shares where they are,
 * keeps every read right while writes, flushes and GC run beside it, and
 * the background loop relocates what scattered reads find.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const BLOCKS = 4096; // 16 MiB

/** A permutation of 0..n-1 from a seed (the order blocks are written in). */
function shuffled(n: number, seed: number): number[] {
  const out = [...Array(n).keys()];
  let s = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    s = (s * 1664525 + 1013904223) >>> 0;
    const j = s % (i + 1);
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Writes `data` block by block in a shuffled order and flushes: every block a chunk of its own, scattered. */
async function writeScattered(store: Store, name: string, data: Buffer, seed: number): Promise<void> {
  const h = await store.openVolume(name);
  for (const b of shuffled(data.length / BLOCK_SIZE, seed)) await h.write(b * BLOCK_SIZE, data.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE));
  await h.flush();
  await h.close();
}

async function readAll(store: Store, name: string, size: number): Promise<Buffer> {
  const h = await store.openVolume(name);
  try { return await h.read(0, size); } finally { await h.close(); }
}

describe('locality', () => {
  it('info reports a randomly written volume scattered, relocation puts it in order with the same bytes', async () => {
    const store = await Store.init(tmp.make('order'), { writebackIntervalMs: 0 });
    try {
      const data = pseudoRandom(7, BLOCKS * BLOCK_SIZE);
      await store.createVolume('v', data.length);
      await writeScattered(store, 'v', data, 1);
      const before = (await store.info('v')).locality;
      expect(before.sampledBlocks).toBe(BLOCKS);
      expect(before.fragmentation).toBeGreaterThan(0.9);

      const r = await store.relocate('v');
      expect(r.chunksMoved).toBe(BLOCKS);
      expect(r.runsAfter).toBeLessThan(r.runsBefore / 100);
      const after = (await store.info('v')).locality;
      expect(after.fragmentation).toBeLessThan(0.01);
      expect((await readAll(store, 'v', data.length)).equals(data)).toBe(true);
      expect(await store.check()).toEqual([]);

      // In order now: a second pass finds nothing to move.
      expect((await store.relocate('v')).chunksMoved).toBe(0);
      // The old slots are garbage GC can reclaim; the data survives it.
      await store.gc();
      expect((await readAll(store, 'v', data.length)).equals(data)).toBe(true);
      expect(await store.check()).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('chunks another volume shares stay where they are', async () => {
    const store = await Store.init(tmp.make('shared'), { writebackIntervalMs: 0 });
    try {
      const golden = pseudoRandom(8, BLOCKS * BLOCK_SIZE);
      await store.createVolume('golden', golden.length);
      const g = await store.openVolume('golden');
      await g.write(0, golden);
      await g.flush();
      await g.close();
      await store.snapshot('golden', 'base');
      await store.branch('vm', 'golden@base');
      // The branch copies golden's blocks in reverse order (deduplicated:
      // it reads scattered, but every chunk is shared) and writes a few new ones at random.
      const vm = await store.openVolume('vm');
      const model = Buffer.from(golden);
      for (let b = 0; b < 512; b++) {
        const src = golden.subarray((BLOCKS - 1 - b) * BLOCK_SIZE, (BLOCKS - b) * BLOCK_SIZE);
        await vm.write(b * BLOCK_SIZE, src);
        src.copy(model, b * BLOCK_SIZE);
      }
      const fresh = pseudoRandom(9, 256 * BLOCK_SIZE);
      for (const k of shuffled(256, 3)) {
        const at = (1024 + 4 * k) * BLOCK_SIZE;
        fresh.copy(model, at, k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE);
        await vm.write(at, fresh.subarray(k * BLOCK_SIZE, (k + 1) * BLOCK_SIZE));
      }
      await vm.flush();
      await vm.close();
      const goldenBefore = (await store.info('golden@base')).locality;
      expect(goldenBefore.fragmentation).toBe(0);

      const r = await store.relocate('vm', { force: true });
      // Only the branch's own new chunks moved (not the copies, not what it inherits); golden still lies in order.
      expect(r.chunksMoved).toBe(256);
      expect((await store.info('golden@base')).locality).toEqual(goldenBefore);
      expect((await readAll(store, 'vm', model.length)).equals(model)).toBe(true);
      expect((await readAll(store, 'golden@base', golden.length)).equals(golden)).toBe(true);
      expect(await store.check()).toEqual([]);
    } finally {
      await store.close();
    }
  });

  it('reads, writes, flushes and GC beside relocation see the right bytes', async () => {
    const store = await Store.init(tmp.make('concurrent'), { writebackIntervalMs: 0 });
    try {
      const model = pseudoRandom(10, BLOCKS * BLOCK_SIZE);
      await store.createVolume('v', model.length);
      await writeScattered(store, 'v', model, 2);
      const h = await store.openVolume('v');
      let seed = 100;
      for (let round = 0; round < 6; round++) {
        const relocating = store.relocate('v', { force: round % 2 === 0 });
        // Writes over ranges being relocated (some of their chunks pending, some rewritten twice), reads of them, a flush, a GC.
        const steps: Promise<unknown>[] = [relocating];
        for (let k = 0; k < 40; k++) {
          const b = (k * 97 + round * 131) % (BLOCKS - 8);
          const data = pseudoRandom(seed++, 8 * BLOCK_SIZE);
          data.copy(model, b * BLOCK_SIZE);
          steps.push(h.write(b * BLOCK_SIZE, data));
          if (k % 10 === 5) steps.push(store.flush());
        }
        steps.push(store.gc());
        await Promise.all(steps);
        expect((await h.read(0, model.length)).equals(model), `round ${round}`).toBe(true);
      }
      await h.flush();
      await h.close();
      expect(await store.check()).toEqual([]);
      expect((await readAll(store, 'v', model.length)).equals(model)).toBe(true);
    } finally {
      await store.close();
    }
  });

  it('the background loop relocates the ranges scattered reads find (disk volumes only)', async () => {
    const dir = tmp.make('background');
    const init = await Store.init(dir, { writebackIntervalMs: 0 });
    const data = pseudoRandom(11, BLOCKS * BLOCK_SIZE);
    await init.createVolume('disk', data.length);
    await init.createVolume('mem', data.length, 'memory');
    await writeScattered(init, 'disk', data, 4);
    const memData = pseudoRandom(12, data.length); // other bytes: no chunk shared with 'disk'
    await writeScattered(init, 'mem', memData, 5);
    await init.close();

    const store = await Store.open(dir, { writebackIntervalMs: 0, relocate: true });
    try {
      for (const [name, bytes] of [['disk', data], ['mem', memData]] as const) {
        const h = await store.openVolume(name);
        // 1 MiB reads of the first 4 MiB only.
        for (let at = 0; at < 4 * 1024 * 1024; at += 1024 * 1024) {
          expect((await h.read(at, 1024 * 1024)).equals(bytes.subarray(at, at + 1024 * 1024))).toBe(true);
        }
        await h.close();
      }
      const deadline = Date.now() + 20_000;
      let stats = await store.stats();
      while (stats.relocation!.queued > 0 || stats.relocation!.chunksMoved < 1024) {
        if (Date.now() > deadline) break;
        await new Promise((r) => setTimeout(r, 50));
        stats = await store.stats();
      }
      // The four extents read, and nothing of the memory volume.
      expect(stats.relocation).toMatchObject({ queued: 0, extents: 4, chunksMoved: 1024 });
      const disk = await store.info('disk');
      const mem = await store.info('mem');
      expect(disk.locality.fragmentation).toBeLessThan(mem.locality.fragmentation);
      expect(mem.locality.fragmentation).toBeGreaterThan(0.9);
      expect((await readAll(store, 'disk', data.length)).equals(data)).toBe(true);
      expect(await store.check()).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
