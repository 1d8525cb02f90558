/**
 * Zero-copy reads (ReadOptions.view, what the NBD server asks for): a read
 * of one run of stored chunks comes back as a read-only view of the
 * segment's file mapping, and that view stays valid — same bytes — after
 * GC has deleted the segment file under it (the mapping lives as long as a
 * view does), and no longer mapped once its last view is collected (a
 * child run with --expose-gc drives the collector). Reads that are not one run (holes, pending data still in the
 * append buffer) come back as ordinary copies with the right bytes.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { fileAdvise } from '../../src/native/index.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** Blocks per segment file (src/blockstore/constants.ts): the volume fills segment 1 exactly. */
const BLOCKS = 16384;
const MiB = 1024 * 1024;

describe('zero-copy reads', () => {
  it('a view outlives the segment file GC deletes under it', async () => {
    const dir = tmp.make('view');
    const store = await Store.init(dir, { writebackIntervalMs: 0 });
    try {
      await store.createVolume('v', BLOCKS * BLOCK_SIZE);
      const h = await store.openVolume('v');
      const first = pseudoRandom(1, BLOCKS * BLOCK_SIZE);
      await h.write(0, first);
      await h.flush();

      const view = await h.read(2 * MiB, MiB, { view: true });
      expect(view.equals(first.subarray(2 * MiB, 3 * MiB))).toBe(true);
      // A view of the whole segment mapping, not a buffer of its own.
      expect(view.buffer.byteLength).toBeGreaterThan(BLOCKS * BLOCK_SIZE);
      // Without `view`, the same read is a copy.
      expect((await h.read(2 * MiB, MiB)).buffer.byteLength).toBeLessThanOrEqual(MiB + 8192);

      const second = pseudoRandom(2, BLOCKS * BLOCK_SIZE);
      await h.write(0, second);
      await h.flush();
      const seg1 = path.join(dir, 'segments', '00000001.seg');
      expect(fs.existsSync(seg1)).toBe(true);
      const gc = await store.gc();
      expect(gc.segmentsDeleted).toBeGreaterThanOrEqual(1);
      expect(fs.existsSync(seg1)).toBe(false);

      expect(view.equals(first.subarray(2 * MiB, 3 * MiB))).toBe(true);
      expect((await h.read(0, BLOCKS * BLOCK_SIZE, { view: true })).equals(second)).toBe(true);
      await h.close();
    } finally {
      await store.close();
    }
  });

  it('once the last view is collected, the deleted segment is no longer mapped', () => {
    const dir = tmp.make('view-gc');
    const out = execFileSync(process.execPath, ['--expose-gc', path.join(__dirname, '../helpers/view-gc.mjs'), path.join(dir, 'store')],
      { encoding: 'utf8', timeout: 60_000 });
    expect(JSON.parse(out.trim().split('\n').pop()!)).toEqual({ viewOk: true, mappedWhileViewed: true, mappedAfterCollect: false });
  });

  it('reads that are not one stored run come back as copies with the right bytes', async () => {
    const dir = tmp.make('view-mixed');
    const store = await Store.init(dir, { writebackIntervalMs: 0 });
    try {
      await store.createVolume('m', 64 * BLOCK_SIZE);
      const h = await store.openVolume('m');
      const data = pseudoRandom(3, 8 * BLOCK_SIZE);
      await h.write(4 * BLOCK_SIZE, data); // blocks 4..11, still in the append buffer
      const pendingRead = await h.read(0, 16 * BLOCK_SIZE, { view: true });
      const expected = Buffer.concat([Buffer.alloc(4 * BLOCK_SIZE), data, Buffer.alloc(4 * BLOCK_SIZE)]);
      expect(pendingRead.equals(expected)).toBe(true); // holes around data: a copy
      await h.flush();
      expect((await h.read(4 * BLOCK_SIZE, 8 * BLOCK_SIZE, { view: true })).equals(data)).toBe(true);
      expect((await h.read(1000, 5000, { view: true })).equals(expected.subarray(1000, 6000))).toBe(true); // unaligned
      await h.close();
    } finally {
      await store.close();
    }
  });

  it('segments dropped from the page cache read back exactly (mapped copies, views, cold-mode reads)', async () => {
    const dir = tmp.make('view-cold');
    const store = await Store.init(dir, { writebackIntervalMs: 0 });
    try {
      await store.createVolume('c', 4096 * BLOCK_SIZE);
      const h = await store.openVolume('c');
      const data = pseudoRandom(9, 4096 * BLOCK_SIZE);
      await h.write(0, data);
      await h.flush();
      // Nothing has mapped the segments yet (only writes so far), so their pages can be dropped.
      for (const f of fs.readdirSync(path.join(dir, 'segments'))) {
        const fd = fs.openSync(path.join(dir, 'segments', f), 'r');
        try { await fileAdvise(fd, 0, 0, 'dontneed'); } finally { fs.closeSync(fd); }
      }
      // Scattered 4 KiB views, then 1 MiB copies, from a cold cache.
      for (let i = 0; i < 300; i++) {
        const b = (i * 2654435761) % 4096;
        expect((await h.read(b * BLOCK_SIZE, BLOCK_SIZE, { view: true })).equals(data.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE))).toBe(true);
      }
      for (let off = 0; off < data.length; off += 1024 * 1024) {
        expect((await h.read(off, 1024 * 1024)).equals(data.subarray(off, off + 1024 * 1024))).toBe(true);
      }
      await h.close();
    } finally {
      await store.close();
    }
  });

  it('gc running while writes fill a segment keeps the pending chunks that segment holds', async () => {
    const dir = tmp.make('gc-pending');
    const store = await Store.init(dir, { writebackIntervalMs: 0 });
    try {
      const blocks = BLOCKS + 100; // fills one segment and spills into the next
      await store.createVolume('p', blocks * BLOCK_SIZE);
      const h = await store.openVolume('p');
      const data = pseudoRandom(11, blocks * BLOCK_SIZE);
      const gc = store.gc(); // flushes (nothing pending), then commits its first steps
      await new Promise((r) => setTimeout(r, 0)); // gc is now waiting for one of those commits
      await h.write(0, data); // a full segment of pending chunks, before gc looks for segments to compact
      await gc;
      await h.flush();
      expect((await h.read(0, data.length)).equals(data)).toBe(true);
      expect(await store.check()).toEqual([]);
      await h.close();
    } finally {
      await store.close();
    }
  });
});
