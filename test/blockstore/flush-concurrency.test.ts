/**
 * A flush plans its commit in slices and lets the event loop run between
 * them (and while segments sync and LMDB commits), so requests are served
 * while a big generation is being committed. This drives requests into
 * those gaps: a flush of ~20k pending blocks is started, and on every
 * event-loop turn until it resolves the test writes (over blocks of the
 * flushing generation and new ones), reads and checks them against a model,
 * and once removes a second volume that has pending writes of its own.
 * Afterwards, and after a close and reopen, every block reads back as the
 * model says and `check()` finds the store consistent; a GC then drops what
 * the removed volume left. The flush commits in two transactions (slices
 * of COMMIT_SLICE_ENTRIES), so requests also land between them. (That the
 * flush lets the event loop run is measured, not tested: README → NBD
 * benchmark, latency; tests hold no timing assertions.)
 */
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const BLOCKS = 20_000;

describe('requests during a big flush', () => {
  it('writes, reads and a removal during a big flush keep the store consistent', async () => {
    const dir = tmp.make('flush-yield');
    let store = await Store.init(dir, { writebackIntervalMs: 0 });
    try {
      await store.createVolume('big', BLOCKS * BLOCK_SIZE);
      await store.createVolume('gone', 64 * BLOCK_SIZE);
      const h = await store.openVolume('big');
      const g = await store.openVolume('gone');
      const model = pseudoRandom(1, BLOCKS * BLOCK_SIZE);
      await h.write(0, model);
      await g.write(0, pseudoRandom(2, 64 * BLOCK_SIZE));
      await g.close();

      let done = false;
      const flushing = store.flush().then(() => { done = true; });
      let turns = 0;
      let removal: Promise<string[]> | null = null;
      while (!done && turns < 100_000) {
        await new Promise((r) => setImmediate(r));
        turns++;
        const b = (turns * 7919) % BLOCKS;
        const data = pseudoRandom(1000 + turns, BLOCK_SIZE);
        await h.write(b * BLOCK_SIZE, data);
        data.copy(model, b * BLOCK_SIZE);
        const r = (turns * 104729) % BLOCKS;
        expect((await h.read(r * BLOCK_SIZE, BLOCK_SIZE)).equals(model.subarray(r * BLOCK_SIZE, (r + 1) * BLOCK_SIZE))).toBe(true);
        // The removal's catalog commit queues behind the flush; its write-back entries go at once.
        if (removal === null && turns === 3) removal = store.remove('gone');
      }
      await flushing;
      expect(await removal).toEqual(['gone']);
      expect(turns).toBeGreaterThan(8); // requests really ran during the flush
      expect((await h.read(0, model.length)).equals(model)).toBe(true);
      await h.flush();
      expect(await store.check()).toEqual([]);
      await h.close();
      await store.close();

      store = await Store.open(dir, { writebackIntervalMs: 0 });
      const again = await store.openVolume('big');
      expect((await again.read(0, model.length)).equals(model)).toBe(true);
      await again.close();
      expect((await store.list()).map((v) => v.name)).toEqual(['big']);
      await store.gc();
      expect(await store.check()).toEqual([]);
    } finally {
      await store.close();
    }
  });
});
