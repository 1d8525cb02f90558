/**
 * The segment being appended to (src/blockstore/append-segment.ts): sized ahead
 * to its maximum as a sparse file at its first append (opening a store
 * changes no file), trimmed to its last slot on close; after a crash (a file
 * left at its full size) appends go to a new segment and nothing already
 * flushed is lost. Big writes append into reserved slots
 * written straight from their buffer (on libuv's pool for volume writes:
 * until those land, reads and dedup compares of the slots are served from
 * the write's buffer, and the slots are not overwritten again); small ones
 * go through the append buffer.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { SEGMENT_HEADER_SIZE, SEGMENT_MAX_BYTES } from '../../src/blockstore/constants.js';
import { pseudoRandom } from '../helpers/data.js';
import { withStore } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const MiB = 1 << 20;

function segmentFiles(dir: string): string[] {
  const segs = path.join(dir, 'segments');
  return fs.readdirSync(segs).filter((f) => f.endsWith('.seg')).sort().map((f) => path.join(segs, f));
}

describe('the segment being appended to', () => {
  it('is sized ahead while open, trimmed to its last slot on close, and resumed after reopening', async () => {
    const dir = tmp.make('seg-size');
    const first = pseudoRandom(1, 3 * BLOCK_SIZE);
    await withStore(Store.init(dir), async (store) => {
      await store.createVolume('v', 4 * MiB);
      const h = await store.openVolume('v');
      await h.write(0, first);
      await h.flush();
      const [file] = segmentFiles(dir);
      expect(fs.statSync(file).size).toBe(SEGMENT_MAX_BYTES);
      expect((await store.stats()).segmentBytes).toBe(SEGMENT_HEADER_SIZE + 3 * BLOCK_SIZE);
      await h.close();
    });
    const files = segmentFiles(dir);
    expect(files.length).toBe(1);
    expect(fs.statSync(files[0]).size).toBe(SEGMENT_HEADER_SIZE + 3 * BLOCK_SIZE);

    const second = pseudoRandom(2, 2 * BLOCK_SIZE);
    await withStore(Store.open(dir), async (store) => {
      const h = await store.openVolume('v');
      await h.write(3 * BLOCK_SIZE, second);
      await h.flush();
      await h.close();
    });
    expect(segmentFiles(dir)).toEqual(files);
    expect(fs.statSync(files[0]).size).toBe(SEGMENT_HEADER_SIZE + 5 * BLOCK_SIZE);
    await withStore(Store.open(dir), async (store) => {
      // Opening and reading change no file: the segment is only sized ahead at its next append.
      expect(fs.statSync(files[0]).size).toBe(SEGMENT_HEADER_SIZE + 5 * BLOCK_SIZE);
      const h = await store.openVolume('v');
      expect((await h.read(0, 5 * BLOCK_SIZE)).equals(Buffer.concat([first, second]))).toBe(true);
      expect(fs.statSync(files[0]).size).toBe(SEGMENT_HEADER_SIZE + 5 * BLOCK_SIZE);
      expect(await store.check()).toEqual([]);
      await h.close();
    });
  });

  it('after a crash left it at its full size, appends go to a new segment and flushed data reads back', async () => {
    const dir = tmp.make('seg-crash');
    const data = pseudoRandom(3, 8 * BLOCK_SIZE);
    await withStore(Store.init(dir), async (store) => {
      await store.createVolume('v', 4 * MiB);
      const h = await store.openVolume('v');
      await h.write(0, data);
      await h.flush();
      await h.close();
    });
    // What a crash leaves: the file still at the size it was given ahead, garbage past the last slot.
    const [file] = segmentFiles(dir);
    fs.truncateSync(file, SEGMENT_MAX_BYTES);
    const fd = fs.openSync(file, 'r+');
    fs.writeSync(fd, pseudoRandom(4, BLOCK_SIZE), 0, BLOCK_SIZE, SEGMENT_HEADER_SIZE + 8 * BLOCK_SIZE);
    fs.closeSync(fd);

    const more = pseudoRandom(5, 4 * BLOCK_SIZE);
    await withStore(Store.open(dir), async (store) => {
      const h = await store.openVolume('v');
      await h.write(8 * BLOCK_SIZE, more);
      await h.flush();
      expect(segmentFiles(dir).length).toBe(2);
      expect((await h.read(0, 12 * BLOCK_SIZE)).equals(Buffer.concat([data, more]))).toBe(true);
      expect(await store.check()).toEqual([]);
      await h.close();
    });
    expect(fs.statSync(segmentFiles(dir)[1]).size).toBe(SEGMENT_HEADER_SIZE + 4 * BLOCK_SIZE);
  });

  it('mixes big writes (reserved slots) with buffered small ones, duplicates inside a big write included', async () => {
    const dir = tmp.make('seg-direct');
    const B = BLOCK_SIZE;
    const small = pseudoRandom(7, 3 * B);
    // 96 blocks; blocks 40..47 repeat blocks 0..7, so the write compares bytes with slots of its own run.
    const big = pseudoRandom(8, 96 * B);
    big.copy(big, 40 * B, 0, 8 * B);
    const after = pseudoRandom(9, 2 * B);
    const expected = Buffer.alloc(128 * B);
    small.copy(expected, 0);
    big.copy(expected, 4 * B);
    after.copy(expected, 100 * B);
    const check = async (store: Store) => {
      const h = await store.openVolume('v');
      expect((await h.read(0, 128 * B)).equals(expected)).toBe(true);
      await h.close();
    };
    await withStore(Store.init(dir), async (store) => {
      await store.createVolume('v', 128 * B);
      const h = await store.openVolume('v');
      await h.write(0, small); // buffered
      await h.write(4 * B, big); // reserved slots, one run split by the duplicate compares
      await h.write(100 * B, after); // buffered again, after the reserved slots
      await check(store);
      await h.flush();
      await check(store);
      // 3 + 88 distinct + 2 blocks, one slot each.
      expect((await store.stats()).segmentBytes).toBe(SEGMENT_HEADER_SIZE + 93 * B);
      expect(await store.check()).toEqual([]);
      await h.close();
    });
    await withStore(Store.open(dir), check);
  });

  it('serves reads of slots whose write is still in flight on the pool from the write, and never rewrites them meanwhile', async () => {
    const dir = tmp.make('seg-inflight');
    const B = BLOCK_SIZE;
    const data = pseudoRandom(10, 128 * B);
    const again = Buffer.from(data); // the same bytes: a dedup compare with the slots in flight
    const other = pseudoRandom(11, 128 * B);
    await withStore(Store.init(dir), async (store) => {
      await store.createVolume('v', 1024 * B);
      await store.createVolume('w', 1024 * B);
      const engine = store.engine;
      // Keep libuv's pool (4 threads) busy, so that no write queued behind can land before the checks below.
      const busy = Array.from({ length: 4 }, () => new Promise((r) => crypto.pbkdf2('x', 'y', 400_000, 32, 'sha256', r)));
      const landing = engine.writeBlocks(engine.target('v'), 0, data, undefined, true);
      expect(landing).toBeInstanceOf(Promise);
      const out = Buffer.alloc(128 * B);
      engine.readBlocks(engine.target('v'), 0, 128, out, 0);
      expect(out.equals(data)).toBe(true);
      // Shared, not stored again: the compare read the slots in flight.
      const second = engine.writeBlocks(engine.target('w'), 0, again, undefined, true);
      expect(second).toBeUndefined();
      // A rewrite of blocks whose slots are in flight appends instead of overwriting them.
      const third = engine.writeBlocks(engine.target('v'), 0, other, undefined, true);
      engine.readBlocks(engine.target('w'), 0, 128, out, 0);
      expect(out.equals(data)).toBe(true);
      await Promise.all([landing, third, ...busy]);
      expect((await store.stats()).segmentBytes).toBe(SEGMENT_HEADER_SIZE + 256 * B);
      const v = await store.openVolume('v');
      const w = await store.openVolume('w');
      expect((await v.read(0, 128 * B)).equals(other)).toBe(true);
      expect((await w.read(0, 128 * B)).equals(data)).toBe(true);
      await store.flush();
      expect(await store.check()).toEqual([]);
      await v.close();
      await w.close();
    });
    await withStore(Store.open(dir), async (store) => {
      const w = await store.openVolume('w');
      expect((await w.read(0, 128 * B)).equals(data)).toBe(true);
      await w.close();
    });
  });
});
