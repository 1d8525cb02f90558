/**
 * Rewrites in place (src/blockstore/writeback.ts `rewritable`): a block
 * written again before its write was committed overwrites its own slot
 * instead of appending, so a working set rewritten between flushes does
 * not grow the segments. Never when anything else may see the old bytes:
 * a committed chunk (a snapshot, the index), a chunk another block shares
 * (dedup), a chunk in the generation being flushed, a segment with an
 * asynchronous read in flight. Also: hashes of chunks committed in this
 * session still deduplicate (the hash filter learns them at commit),
 * pending writes are flushed once writes pause, and a big rewrite takes
 * runs of its own chunks at once while leaving possible duplicates to the
 * general path. Write watches (Store.watchWrites, what a migration's
 * patch sends) name every block written, rewrites in place included,
 * which keep their chunk id.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { Writeback } from '../../src/blockstore/writeback.js';
import { SegmentFiles } from '../../src/blockstore/segments.js';
import { pseudoRandom } from '../helpers/data.js';
import { withStore } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** Disk space the segment files take (the active one is a sparse file sized ahead). */
function segmentBytes(dir: string): number {
  const segs = path.join(dir, 'segments');
  return fs.readdirSync(segs).reduce((sum, f) => sum + fs.statSync(path.join(segs, f)).blocks * 512, 0);
}

const BLOCKS = 64;
const SIZE = BLOCKS * BLOCK_SIZE;

describe('rewrites in place', () => {
  it('a pending block rewritten many times takes its slot once', async () => {
    const dir = tmp.make('rw-pending');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      let last = Buffer.alloc(0);
      for (let round = 0; round < 20; round++) {
        last = pseudoRandom(round + 1, SIZE);
        await h.write(0, last);
        expect((await h.read(0, SIZE)).equals(last)).toBe(true);
      }
      await h.flush();
      // One header block plus one slot per block: twenty rounds did not append twenty times.
      expect(segmentBytes(dir)).toBe(BLOCK_SIZE + SIZE);
      expect((await store.stats()).segmentBytes).toBe(BLOCK_SIZE + SIZE);
      expect((await store.stats()).chunks).toBe(BLOCKS);
      expect((await h.read(0, SIZE)).equals(last)).toBe(true);
      expect(await store.check()).toEqual([]);
      await h.close();
    });
    await withStore(Store.open(dir, { writebackIntervalMs: 0 }), async (again) => {
      const h = await again.openVolume('v');
      expect((await h.read(0, SIZE)).equals(pseudoRandom(20, SIZE))).toBe(true);
      await h.close();
    });
  });

  it('never overwrites what a snapshot, the index or another block holds', async () => {
    const dir = tmp.make('rw-shared');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      const a = pseudoRandom(1, SIZE);
      await h.write(0, a); // pending
      await store.snapshot('v', 's'); // commits a
      const b = pseudoRandom(2, SIZE);
      await h.write(0, b); // a is committed: appended
      const snap = await store.openVolume('v@s');
      expect((await snap.read(0, SIZE)).equals(a)).toBe(true);
      expect((await h.read(0, SIZE)).equals(b)).toBe(true);

      // Two blocks share one pending chunk; rewriting one leaves the other.
      const same = pseudoRandom(3, BLOCK_SIZE);
      await h.write(0, same);
      await h.write(BLOCK_SIZE, same);
      const other = pseudoRandom(4, BLOCK_SIZE);
      await h.write(0, other);
      expect((await h.read(0, BLOCK_SIZE)).equals(other)).toBe(true);
      expect((await h.read(BLOCK_SIZE, BLOCK_SIZE)).equals(same)).toBe(true);

      // A branch of the snapshot and the volume stay apart.
      await store.branch('w', 'v@s');
      const w = await store.openVolume('w');
      await w.write(0, pseudoRandom(5, SIZE));
      await w.write(0, pseudoRandom(6, SIZE));
      expect((await snap.read(0, SIZE)).equals(a)).toBe(true);
      expect((await w.read(0, SIZE)).equals(pseudoRandom(6, SIZE))).toBe(true);
      await h.flush();
      expect((await snap.read(0, SIZE)).equals(a)).toBe(true);
      expect(await store.check()).toEqual([]);
      await Promise.all([h.close(), snap.close(), w.close()]);
    });
  });

  it('writes during a flush go to new slots; the flushed data stays as flushed', async () => {
    const dir = tmp.make('rw-flush');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      const a = pseudoRandom(1, SIZE);
      await h.write(0, a);
      const flushing = h.flush(); // takes the generation holding a
      const b = pseudoRandom(2, SIZE);
      await h.write(0, b); // must not overwrite a's slots while they are committed
      await flushing;
      await store.snapshot('v', 'after'); // commits b
      await h.write(0, pseudoRandom(3, SIZE));
      const snap = await store.openVolume('v@after');
      expect((await snap.read(0, SIZE)).equals(b)).toBe(true);
      expect(await store.check()).toEqual([]);
      await Promise.all([h.close(), snap.close()]);
    });
  });

  it('a read in flight in libuv\'s pool sees the bytes it located', async () => {
    const dir = tmp.make('rw-async');
    await withStore(Store.init(dir, { writebackIntervalMs: 0, readMode: 'pool' }), async (store) => {
      // More than the append buffer holds, so the first blocks are in the file.
      const blocks = 512;
      await store.createVolume('v', blocks * BLOCK_SIZE);
      const h = await store.openVolume('v');
      const a = pseudoRandom(1, blocks * BLOCK_SIZE);
      await h.write(0, a);
      for (let i = 0; i < 50; i++) {
        const reading = h.read(0, 64 * BLOCK_SIZE); // located now, read on the pool
        const b = pseudoRandom(100 + i, 64 * BLOCK_SIZE);
        await h.write(0, b); // same blocks, at once
        const got = await reading; // never EIO: the segment was pinned, the write appended
        expect(got.length).toBe(64 * BLOCK_SIZE);
        expect((await h.read(0, 64 * BLOCK_SIZE)).equals(b)).toBe(true);
      }
      await h.close();
    });
  });

  it('a hash committed in this session deduplicates later writes', async () => {
    const dir = tmp.make('rw-filter');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('a', SIZE);
      await store.createVolume('b', SIZE);
      await new Promise((r) => setTimeout(r, 100)); // the filter's first build (empty index)
      const data = pseudoRandom(7, SIZE);
      const a = await store.openVolume('a');
      await a.write(0, data);
      await a.flush();
      const b = await store.openVolume('b');
      await b.write(0, data);
      await b.flush();
      expect((await store.stats()).chunks).toBe(BLOCKS);
      await Promise.all([a.close(), b.close()]);
    });
  });

  it('big writes hashed on libuv\'s pool land in arrival order with the small ones around them', async () => {
    const dir = tmp.make('rw-order');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      const blocks = 256; // 1 MiB: big enough to be hashed on the pool
      await store.createVolume('v', blocks * BLOCK_SIZE);
      const h = await store.openVolume('v');
      for (let round = 0; round < 20; round++) {
        const big = pseudoRandom(1000 + round, blocks * BLOCK_SIZE);
        const small = pseudoRandom(2000 + round, 3 * BLOCK_SIZE);
        const big2 = pseudoRandom(3000 + round, blocks * BLOCK_SIZE);
        // Issued without waiting, as a pipelining client does: each must land after the one before.
        const done = [
          h.write(0, big),
          h.write(5 * BLOCK_SIZE, small),
          h.zero(100 * BLOCK_SIZE, 10 * BLOCK_SIZE),
          h.write(0, big2.subarray(0, 128 * BLOCK_SIZE)),
          h.write(10 * BLOCK_SIZE + 100, small.subarray(0, 50)),
        ];
        await Promise.all(done);
        const want = Buffer.from(big);
        small.copy(want, 5 * BLOCK_SIZE);
        want.fill(0, 100 * BLOCK_SIZE, 110 * BLOCK_SIZE);
        big2.copy(want, 0, 0, 128 * BLOCK_SIZE);
        small.copy(want, 10 * BLOCK_SIZE + 100, 0, 50);
        expect((await h.read(0, blocks * BLOCK_SIZE)).equals(want)).toBe(true);
      }
      await h.flush();
      expect(await store.check()).toEqual([]);
      await h.close();
    });
  });

  it('pending writes are flushed in the background once writes pause', async () => {
    const dir = tmp.make('rw-idle');
    await withStore(Store.init(dir, { writebackIntervalMs: 60_000, writebackIdleMs: 100 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      await h.write(0, pseudoRandom(1, SIZE));
      expect(store.pendingBlocks).toBe(BLOCKS);
      const end = Date.now() + 10_000;
      while (store.pendingBlocks > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
      expect(store.pendingBlocks).toBe(0);
      await h.close();
    });
  });

  it('writes that never pause are flushed once the oldest is old enough', async () => {
    const dir = tmp.make('rw-age');
    await withStore(Store.init(dir, { writebackIntervalMs: 200, writebackIdleMs: 60_000 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      let flushed = false;
      const end = Date.now() + 10_000;
      for (let i = 0; !flushed && Date.now() < end; i++) {
        await h.write((i % BLOCKS) * BLOCK_SIZE, pseudoRandom(i + 1, BLOCK_SIZE));
        // The age check runs on a timer: let it.
        await new Promise((r) => setTimeout(r, 5));
        flushed = i > 0 && store.pendingBlocks < Math.min(i + 1, BLOCKS);
      }
      expect(flushed).toBe(true);
      await h.close();
    });
  });

  it('a big rewrite takes runs of its own chunks at once and leaves possible duplicates to the general path', async () => {
    const dir = tmp.make('rw-runs');
    const N = 1100; // chunk ids cross a write-back chunk page (1024 ids)
    const B = BLOCK_SIZE;
    const moved = vi.spyOn(Writeback.prototype, 'rehashRun');
    try {
      await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
        await store.createVolume('v', (N + 4) * B);
        const h = await store.openVolume('v');
        const committed = pseudoRandom(99, B);
        await h.write(N * B, committed);
        await h.flush();
        await store.engine.filter.build(); // knows `committed`
        const first = pseudoRandom(1, N * B);
        await h.write(0, first); // N new chunks in consecutive slots
        const second = pseudoRandom(2, N * B);
        committed.copy(second, 5 * B); // a committed chunk's bytes
        second.copy(second, 9 * B, 2 * B, 3 * B); // the bytes of block 2 of the same write
        second.fill(0, 12 * B, 13 * B); // a hole
        await h.write(0, second);
        expect((await h.read(0, N * B)).equals(second)).toBe(true);
        const runs = moved.mock.results.reduce((sum, r) => sum + (r.value as number), 0);
        expect(runs).toBeGreaterThan(N - 20);
        // Later small writes find the rewritten chunks under their new names only.
        await h.write((N + 1) * B, second.subarray(700 * B, 701 * B));
        await h.write((N + 2) * B, first.subarray(700 * B, 701 * B));
        await h.flush();
        const stats = await store.stats();
        // Blocks 5 and 9 share chunks, block 12 is a hole, block N+1 shares block 700's chunk, block N+2 is new.
        expect(stats.chunks).toBe(1 + (N - 3) + 1);
        // The rewrite appended nothing: one header, the committed block, N slots, block N+2.
        expect(stats.segmentBytes).toBe(B * (1 + 1 + N + 1));
        expect(await store.check()).toEqual([]);
        await h.close();
      });
    } finally {
      moved.mockRestore();
    }
    await withStore(Store.open(dir, { writebackIntervalMs: 0 }), async (again) => {
      const h = await again.openVolume('v');
      const want = pseudoRandom(2, N * B);
      pseudoRandom(99, B).copy(want, 5 * B);
      want.copy(want, 9 * B, 2 * B, 3 * B);
      want.fill(0, 12 * B, 13 * B);
      expect((await h.read(0, N * B)).equals(want)).toBe(true);
      expect((await h.read((N + 1) * B, B)).equals(want.subarray(700 * B, 701 * B))).toBe(true);
      expect((await h.read((N + 2) * B, B)).equals(pseudoRandom(1, N * B).subarray(700 * B, 701 * B))).toBe(true);
      await h.close();
    });
  });

  it('small rewrites of written slots are copies through the writable mapping; fresh slots are not; all read back after reopening', async () => {
    const dir = tmp.make('rw-mapped');
    const B = BLOCK_SIZE;
    const N = 128;
    const proto = SegmentFiles.prototype as unknown as { rewriteMapped(...a: unknown[]): boolean };
    const mapped = vi.spyOn(proto, 'rewriteMapped');
    const want = pseudoRandom(1, N * B);
    try {
      await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
        await store.createVolume('v', N * B);
        const h = await store.openVolume('v');
        await h.write(0, want); // a big write: reserved (fresh) slots, written with pwrite
        expect(mapped.mock.results.filter((r) => r.value === true)).toHaveLength(0);
        // 4 KiB rewrites of those pending blocks, each into its own slot, through the mapping.
        for (let i = 0; i < N; i += 3) {
          const b = pseudoRandom(1000 + i, B);
          b.copy(want, i * B);
          await h.write(i * B, b);
          expect((await h.read(i * B, B)).equals(b)).toBe(true);
        }
        const through = mapped.mock.results.filter((r) => r.value === true).length;
        expect(through).toBe(Math.ceil(N / 3));
        expect((await h.read(0, N * B)).equals(want)).toBe(true);
        await h.flush();
        expect((await store.stats()).segmentBytes).toBe(B * (1 + N));
        expect(await store.check()).toEqual([]);
        await h.close();
      });
    } finally {
      mapped.mockRestore();
    }
    await withStore(Store.open(dir, { writebackIntervalMs: 0 }), async (again) => {
      const h = await again.openVolume('v');
      expect((await h.read(0, N * B)).equals(want)).toBe(true);
      expect(await again.check()).toEqual([]);
      await h.close();
    });
  });
});

describe('write watches (Store.watchWrites, what a migration patch sends)', () => {
  it('name every block written, rewrites in place included, which chunk ids cannot tell', async () => {
    const dir = tmp.make('rw-watch');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      await store.createVolume('other', SIZE);
      const h = await store.openVolume('v');
      const o = await store.openVolume('other');
      await h.write(0, pseudoRandom(1, SIZE));
      await h.flush();
      const watch = store.watchWrites('v');
      // A block written after the flush gets a new (pending) chunk...
      await h.write(5 * BLOCK_SIZE, pseudoRandom(2, BLOCK_SIZE));
      const ids = await store.chunkMap('v');
      // ...and written again, its chunk is rewritten in place: same id, other bytes.
      await h.write(5 * BLOCK_SIZE, pseudoRandom(3, BLOCK_SIZE));
      expect((await store.chunkMap('v'))[5]).toBe(ids[5]);
      expect((await h.read(5 * BLOCK_SIZE, BLOCK_SIZE)).equals(pseudoRandom(3, BLOCK_SIZE))).toBe(true);
      // A big write twice (the second a run of rewrites in place), zeroes, and another volume's writes.
      await h.write(16 * BLOCK_SIZE, pseudoRandom(4, 8 * BLOCK_SIZE));
      await h.write(16 * BLOCK_SIZE, pseudoRandom(5, 8 * BLOCK_SIZE));
      await h.zero(40 * BLOCK_SIZE, 2 * BLOCK_SIZE);
      await o.write(0, pseudoRandom(6, SIZE));
      const expected = [5, ...Array.from({ length: 8 }, (_, i) => 16 + i), 40, 41];
      expect(watch.blocks()).toEqual(expected);
      // The ids of scattered blocks, looked up one by one, are those of the whole map.
      await h.flush();
      const all = await store.chunkMap('v');
      expect([...store.chunkIdsOf('v', [0, 5, 17, 40, 63])]).toEqual([all[0], all[5], all[17], all[40], all[63]]);
      expect(all[40]).toBe(0);
      // Closed, it records nothing more.
      watch.close();
      await h.write(60 * BLOCK_SIZE, pseudoRandom(7, BLOCK_SIZE));
      expect(watch.blocks()).toEqual(expected);
      await h.close();
      await o.close();
    });
  });

  it('name the blocks of a big rewrite that renames its own chunks a run at once', async () => {
    const N = 300;
    const B = BLOCK_SIZE;
    const renamed = vi.spyOn(Writeback.prototype, 'rehashRun');
    try {
      await withStore(Store.init(tmp.make('rw-watch-runs'), { writebackIntervalMs: 0 }), async (store) => {
        await store.createVolume('v', N * B);
        const h = await store.openVolume('v');
        await h.flush();
        await store.engine.filter.build();
        await h.write(0, pseudoRandom(1, N * B));
        const watch = store.watchWrites('v');
        await h.write(0, pseudoRandom(2, N * B));
        expect(renamed.mock.results.reduce((sum, r) => sum + (r.value as number), 0)).toBeGreaterThan(N - 20);
        expect(watch.blocks()).toEqual(Array.from({ length: N }, (_, i) => i));
        watch.close();
        await h.close();
      });
    } finally {
      renamed.mockRestore();
    }
  });
});
