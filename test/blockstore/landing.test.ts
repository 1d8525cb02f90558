/**
 * Landings (src/blockstore/landing.ts): a big write's payload read straight
 * into slots of the store's page cache (VolumeHandle.landing), then applied
 * where it landed. Checked through the store's own API, as the NBD server
 * uses it: the data reads back before and after a flush and a reopen; a
 * working set rewritten pass after pass reuses the slots its last pass
 * freed instead of growing the segments; a landing never given a write
 * (abandon) leaves nothing behind and its slots are used again; zero and
 * duplicate blocks of a landed write read right and their slots are free
 * again; what a snapshot or the index holds is never landed over; GC
 * compacts around landings and leaves a segment with one in flight alone.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { pseudoRandom } from '../helpers/data.js';
import { withStore } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const B = BLOCK_SIZE;
const RUN = 64; // blocks per write: 256 KiB, the smallest write that lands
const RUNS = 8;
const SIZE = RUN * RUNS * B;

/** Disk space the segment files take. */
function segmentBytes(dir: string): number {
  const segs = path.join(dir, 'segments');
  return fs.readdirSync(segs).reduce((sum, f) => sum + fs.statSync(path.join(segs, f)).blocks * 512, 0);
}

/** Writes `data` at `offset` the way the NBD server does for a big WRITE: into a landing, then write(). */
async function landedWrite(h: Awaited<ReturnType<Store['openVolume']>>, offset: number, data: Buffer): Promise<boolean> {
  const buf = h.landing(offset, data.length);
  if (buf === null) {
    await h.write(offset, data);
    return false;
  }
  data.copy(buf);
  await h.write(offset, buf);
  return true;
}

describe('landed writes', () => {
  it('read back, reuse the slots their last pass freed, and survive a flush and a reopen', async () => {
    const dir = tmp.make('land');
    let want = Buffer.alloc(0);
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      let landed = 0;
      let afterTwo = 0;
      for (let pass = 0; pass < 6; pass++) {
        want = pseudoRandom(100 + pass, SIZE);
        for (let r = 0; r < RUNS; r++) {
          if (await landedWrite(h, r * RUN * B, want.subarray(r * RUN * B, (r + 1) * RUN * B))) landed++;
        }
        expect((await h.read(0, SIZE)).equals(want), `pass ${pass}`).toBe(true);
        if (pass === 1) afterTwo = segmentBytes(dir);
      }
      expect(landed).toBe(6 * RUNS);
      // Passes 3-6 landed in slots passes 1-2 freed: the segments did not grow.
      expect(segmentBytes(dir)).toBe(afterTwo);
      await h.flush();
      expect((await h.read(0, SIZE)).equals(want)).toBe(true);
      expect((await store.stats()).chunks).toBe(RUNS * RUN);
      expect(await store.check()).toEqual([]);
      await h.close();
    });
    await withStore(Store.open(dir, { writebackIntervalMs: 0 }), async (again) => {
      const h = await again.openVolume('v');
      expect((await h.read(0, SIZE)).equals(want)).toBe(true);
      expect(await again.check()).toEqual([]);
      await h.close();
    });
  });

  it('an abandoned landing changes nothing and its slots are landed in again; small or unaligned writes do not land', async () => {
    const dir = tmp.make('land-abandon');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      const base = pseudoRandom(1, SIZE);
      await h.write(0, base);
      const a = h.landing(0, RUN * B)!;
      expect(a).not.toBeNull();
      a.fill(0xee);
      h.abandon(a);
      h.abandon(a); // twice: nothing more
      expect((await h.read(0, SIZE)).equals(base)).toBe(true);
      const b = h.landing(0, RUN * B)!;
      expect(b.buffer === a.buffer && b.byteOffset === a.byteOffset).toBe(true); // the same slots again
      h.abandon(b);
      expect(h.landing(0, RUN * B - B)).toBeNull(); // below 256 KiB
      expect(h.landing(100, RUN * B)).toBeNull(); // not block aligned
      await h.flush();
      expect(await store.check()).toEqual([]);
      await h.close();
    });
  });

  it('zero and duplicate blocks of a landed write read right; a snapshot keeps what it froze', async () => {
    const dir = tmp.make('land-mixed');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      const first = pseudoRandom(7, SIZE);
      await landedWrite(h, 0, first.subarray(0, RUN * B));
      await h.flush();
      await store.snapshot('v', 's');
      const next = pseudoRandom(8, RUN * B);
      next.fill(0, 3 * B, 5 * B); // zero blocks
      next.copy(next, 9 * B, 2 * B, 3 * B); // a duplicate inside the write
      first.copy(next, 11 * B, 40 * B, 41 * B); // a block the snapshot holds
      expect(await landedWrite(h, 0, next)).toBe(true);
      expect((await h.read(0, RUN * B)).equals(next)).toBe(true);
      const s = await store.openVolume('v@s');
      expect((await s.read(0, RUN * B)).equals(first.subarray(0, RUN * B))).toBe(true);
      await s.close();
      // Again over the same blocks: now pending, they move to the new landing.
      const third = pseudoRandom(9, RUN * B);
      expect(await landedWrite(h, 0, third)).toBe(true);
      expect((await h.read(0, RUN * B)).equals(third)).toBe(true);
      await h.flush();
      expect(await store.check()).toEqual([]);
      const again = await store.openVolume('v@s');
      expect((await again.read(0, RUN * B)).equals(first.subarray(0, RUN * B))).toBe(true);
      await again.close();
      await h.close();
    });
  });

  it('GC compacts while writes land, and leaves a segment with a landing in flight alone', async () => {
    const dir = tmp.make('land-gc');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      let want = pseudoRandom(1, SIZE);
      await h.write(0, want);
      await h.flush();
      // Overwrite it all twice (landing), flush: the first segment is all garbage.
      for (const seed of [2, 3]) {
        want = pseudoRandom(seed, SIZE);
        for (let r = 0; r < RUNS; r++) await landedWrite(h, r * RUN * B, want.subarray(r * RUN * B, (r + 1) * RUN * B));
      }
      await h.flush();
      // A landing in flight (in the only segment, mostly garbage) while GC runs: the segment is left alone.
      const open = h.landing(0, RUN * B)!;
      const busy = await store.gc();
      expect(busy.segmentsDeleted + busy.segmentsCompacted).toBe(0);
      pseudoRandom(4, RUN * B).copy(open);
      await h.write(0, open);
      pseudoRandom(4, RUN * B).copy(want, 0);
      expect((await h.read(0, SIZE)).equals(want)).toBe(true);
      await h.flush();
      // Landed no more: compacted, and what landed before reads back from its new place.
      const gc = await store.gc();
      expect(gc.segmentsDeleted + gc.segmentsCompacted).toBeGreaterThan(0);
      expect((await h.read(0, SIZE)).equals(want)).toBe(true);
      // Writes land again afterwards.
      want = pseudoRandom(5, SIZE);
      for (let r = 0; r < RUNS; r++) expect(await landedWrite(h, r * RUN * B, want.subarray(r * RUN * B, (r + 1) * RUN * B))).toBe(true);
      expect((await h.read(0, SIZE)).equals(want)).toBe(true);
      await h.flush();
      expect(await store.check()).toEqual([]);
      await h.close();
    });
  });

  it('a landing that began before a flush and ended after it is synced by the next flush', async () => {
    const dir = tmp.make('land-sync');
    await withStore(Store.init(dir, { writebackIntervalMs: 0 }), async (store) => {
      await store.createVolume('v', SIZE);
      const h = await store.openVolume('v');
      const buf = h.landing(0, RUN * B)!;
      await h.flush(); // syncs (and forgets) every segment written so far
      const segs = (store as unknown as { segments: { unsynced: Set<number> } }).segments;
      segs.unsynced.clear();
      const data = pseudoRandom(11, RUN * B);
      data.copy(buf); // the payload arrives after that sync...
      await h.write(0, buf);
      expect(segs.unsynced.size).toBeGreaterThan(0); // ...so the next flush syncs its segment
      await h.flush();
      expect(segs.unsynced.size).toBe(0);
      expect((await h.read(0, RUN * B)).equals(data)).toBe(true);
      await h.close();
    });
  });
});
