/**
 * GC in slices (gc.ts: about 16,384 dead entries, chunks and fingerprints
 * per transaction, so what it needs on a full disk is bounded): a volume
 * with more dead entries than a slice, a snapshot that keeps an older
 * version alive across the slice boundaries, and a removed branch. After
 * one GC every dead entry and unreferenced chunk is gone, what is
 * retained reads back exactly, and the check finds nothing.
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { withStore } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** More blocks than one slice of GC, not a multiple of it. */
const BLOCKS = 20_000;
const RUN = 256;

/** Block `b` of generation `g`: distinct for every (b, g), so nothing deduplicates. */
function fillRun(buf: Buffer, first: number, g: number): Buffer {
  for (let i = 0; i < buf.length / BLOCK_SIZE; i++) {
    const at = i * BLOCK_SIZE;
    buf.fill((first + i + g * 7) & 0xff, at, at + BLOCK_SIZE);
    buf.writeUInt32BE(first + i, at);
    buf.writeUInt32BE(g, at + 4);
  }
  return buf;
}

async function writeGeneration(store: Store, name: string, g: number, blocks = BLOCKS): Promise<void> {
  const h = await store.openVolume(name);
  const buf = Buffer.alloc(RUN * BLOCK_SIZE);
  for (let first = 0; first < blocks; first += RUN) {
    const n = Math.min(RUN, blocks - first);
    await h.write(first * BLOCK_SIZE, fillRun(buf, first, g).subarray(0, n * BLOCK_SIZE));
  }
  await h.close();
  await store.flush();
}

async function expectGeneration(store: Store, name: string, g: number): Promise<void> {
  const h = await store.openVolume(name);
  const want = Buffer.alloc(RUN * BLOCK_SIZE);
  for (let first = 0; first < BLOCKS; first += RUN) {
    const n = Math.min(RUN, BLOCKS - first);
    const got = await h.read(first * BLOCK_SIZE, n * BLOCK_SIZE);
    expect(got.equals(fillRun(want, first, g).subarray(0, n * BLOCK_SIZE)), `${name} at block ${first}`).toBe(true);
  }
  await h.close();
}

describe('gc in slices', () => {
  it('frees every dead entry and chunk across slices, keeps what a snapshot retains', async () => {
    const dir = path.join(tmp.make('gc-slices'), 'store');
    await withStore(Store.init(dir), async (store) => {
      await store.createVolume('v', BLOCKS * BLOCK_SIZE);
      await writeGeneration(store, 'v', 1);
      await store.snapshot('v', 's1');
      await writeGeneration(store, 'v', 2);
      await store.snapshot('v', 's2');
      await writeGeneration(store, 'v', 3);
      await store.remove('v@s2'); // generation 2's entries are dead: no retained version sees them now
      await store.branch('w', 'v@s1');
      await writeGeneration(store, 'w', 4, 3000);
      await store.remove('w'); // every entry of its lineage is dead
      const r = await store.gc();
      expect(r.deadEntries).toBe(BLOCKS + 3000);
      expect(r.chunksFreed).toBe(BLOCKS + 3000);
      expect(await store.check()).toEqual([]);
      await expectGeneration(store, 'v', 3);
      await expectGeneration(store, 'v@s1', 1);
      const again = await store.gc();
      expect({ dead: again.deadEntries, freed: again.chunksFreed }).toEqual({ dead: 0, freed: 0 });
    });
    // And after reopening: the same content, consistent.
    await withStore(Store.open(dir), async (store) => {
      expect(await store.check()).toEqual([]);
      await expectGeneration(store, 'v', 3);
      await expectGeneration(store, 'v@s1', 1);
    });
  });
});
