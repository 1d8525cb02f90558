/**
 * The store's read-path caches (block -> chunk id per chain of points, chunk
 * id -> segment/slot/hash, each filled a 1024-entry page at a time) and
 * segment mappings must never serve what the index no longer says. Every
 * scenario keeps a model (one Buffer per volume and snapshot) and reads
 * each whole volume before and after each step, so the caches are warm when
 * the step runs, then compares byte for byte: writes pending and flushed,
 * snapshots, branches, rm and re-creating a name, GC moving chunks to other
 * segments and deleting the old files (and a deleted segment's id used
 * again), zero/trim, and more cache pages than the cache keeps. Scenarios
 * (a)-(f) run with both read modes ('adaptive': copies from the segments'
 * mappings; 'pool': reads on libuv's pool).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store, type VolumeHandle } from '../../src/blockstore/index.js';
import { firstDiff, pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** Blocks per cache page (src/blockstore/cache.ts): volumes span several, reads straddle their edges. */
const CACHE_PAGE = 1024;
/** Blocks per segment file (src/blockstore/constants.ts). */
const BLOCKS_PER_SEGMENT = 16384;
/** Blocks of the volumes of most scenarios: three cache pages and a bit. */
const VOL_BLOCKS = 3 * CACHE_PAGE + 200;

/** Seeded integers in [0, n): deterministic, so a failure reproduces. */
function rng(seed: number): (n: number) => number {
  let x = (seed >>> 0) || 1;
  return (n) => {
    x ^= x << 13; x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5; x >>>= 0;
    return x % n;
  };
}

let contentSeq = 1;
/** `n` blocks of fresh pseudo-random bytes (distinct from every earlier call). */
function fresh(n: number): Buffer {
  return pseudoRandom(0x5eed0000 + contentSeq++ * 7919, n * BLOCK_SIZE);
}

/** A store, its open handles, and the model of every volume and snapshot. */
class Harness {
  readonly handles = new Map<string, VolumeHandle>();
  readonly model = new Map<string, Buffer>();

  private constructor(readonly store: Store, readonly dir: string) {}

  static async create(readMode: 'adaptive' | 'pool'): Promise<Harness> {
    const dir = path.join(tmp.make('read-cache'), 'store');
    return new Harness(await Store.init(dir, { writebackIntervalMs: 0, readMode }), dir);
  }

  async handle(name: string): Promise<VolumeHandle> {
    let h = this.handles.get(name);
    if (!h) {
      h = await this.store.openVolume(name);
      this.handles.set(name, h);
    }
    return h;
  }

  async closeHandle(name: string): Promise<void> {
    await this.handles.get(name)?.close();
    this.handles.delete(name);
  }

  async createVolume(name: string, blocks: number): Promise<void> {
    await this.store.createVolume(name, blocks * BLOCK_SIZE);
    this.model.set(name, Buffer.alloc(blocks * BLOCK_SIZE));
  }

  async snapshot(volume: string, snap: string): Promise<string> {
    const full = await this.store.snapshot(volume, snap);
    this.model.set(full, Buffer.from(this.model.get(volume)!));
    return full;
  }

  async branch(name: string, from: string): Promise<void> {
    await this.store.branch(name, from);
    this.model.set(name, Buffer.from(this.model.get(from)!));
  }

  /** Removes a volume (with its snapshots) or a snapshot, closing their handles first. */
  async remove(name: string): Promise<void> {
    const gone = name.includes('@') ? [name] : [name, ...[...this.model.keys()].filter((n) => n.startsWith(`${name}@`))];
    for (const n of gone) await this.closeHandle(n);
    expect((await this.store.remove(name)).sort()).toEqual(gone.sort());
    for (const n of gone) this.model.delete(n);
  }

  /** Writes `data` at block `first` of `name`, in the store and the model. */
  async write(name: string, first: number, data: Buffer): Promise<void> {
    await (await this.handle(name)).write(first * BLOCK_SIZE, data);
    data.copy(this.model.get(name)!, first * BLOCK_SIZE);
  }

  /** Writes `count` fresh blocks at random places of `name` (single blocks and short runs, some all-zero). */
  async scatter(name: string, count: number, seed: number): Promise<void> {
    const blocks = this.model.get(name)!.length / BLOCK_SIZE;
    const r = rng(seed);
    for (let written = 0; written < count;) {
      const run = Math.min(1 + r(8), count - written);
      const first = r(blocks - run + 1);
      const data = fresh(run);
      if (r(10) === 0) data.fill(0, 0, BLOCK_SIZE);  // a zero block becomes a hole
      await this.write(name, first, data);
      written += run;
    }
  }

  /** Zeroes (or trims) a byte range of `name`, in the store and the model. */
  async zero(name: string, offset: number, length: number, how: 'zero' | 'trim' = 'zero'): Promise<void> {
    const h = await this.handle(name);
    await (how === 'zero' ? h.zero(offset, length) : h.trim(offset, length));
    this.model.get(name)!.fill(0, offset, offset + length);
  }

  /**
   * Reads all of `name` and compares with the model: in one read, then in
   * slices of 1000 blocks (across cache page edges), then a few unaligned
   * byte ranges.
   */
  async expectMatches(name: string, when: string): Promise<void> {
    const want = this.model.get(name)!;
    const h = await this.handle(name);
    expect(h.size, `${name} size ${when}`).toBe(want.length);
    const all = await h.read(0, want.length);
    expect(firstDiff(all, want), `${name}, read whole, ${when}`).toBeNull();
    const SLICE = 1000 * BLOCK_SIZE;
    for (let off = 0; off < want.length; off += SLICE) {
      const len = Math.min(SLICE, want.length - off);
      expect(firstDiff(await h.read(off, len), want.subarray(off, off + len)), `${name} slice at ${off}, ${when}`).toBeNull();
    }
    for (const [off, len] of [[100, 3 * BLOCK_SIZE], [CACHE_PAGE * BLOCK_SIZE - 10, 20], [want.length - 5000, 5000]]) {
      if (off < 0 || off + len > want.length) continue;
      expect(firstDiff(await h.read(off, len), want.subarray(off, off + len)), `${name} bytes ${off}+${len}, ${when}`).toBeNull();
    }
  }

  /** `expectMatches` for every volume and snapshot of the model. */
  async expectAll(when: string): Promise<void> {
    for (const name of [...this.model.keys()].sort()) await this.expectMatches(name, when);
  }

  async close(): Promise<void> {
    for (const name of [...this.handles.keys()]) await this.closeHandle(name);
    await this.store.close();
  }
}

function segmentIds(dir: string): number[] {
  return fs.readdirSync(path.join(dir, 'segments')).filter((f) => f.endsWith('.seg')).map((f) => parseInt(f, 16)).sort((a, b) => a - b);
}

for (const readMode of ['adaptive', 'pool'] as const) {
  describe(`read caches stay true to the index (readMode ${readMode})`, () => {
    let h: Harness | null = null;
    afterEach(async () => {
      await h?.close();
      h = null;
    });

    it('(a) writes: reads see pending writes, then the committed ones, over warm caches', async () => {
      h = await Harness.create(readMode);
      await h.createVolume('vol', VOL_BLOCKS);
      await h.expectAll('empty: every block a cached hole');

      await h.scatter('vol', 600, 1);
      await h.expectAll('first writes pending');
      await h.store.flush();
      await h.expectAll('first writes flushed');

      // Overwrite some blocks (written ones and holes), with zero blocks among them.
      await h.scatter('vol', 400, 2);
      await h.write('vol', CACHE_PAGE - 2, fresh(4));            // straddles a cache page edge
      await h.write('vol', 10, Buffer.alloc(3 * BLOCK_SIZE));      // data -> holes
      await h.expectAll('overwrites pending');
      await h.store.flush();
      await h.expectAll('overwrites flushed');

      // The same content twice (deduplicated into one chunk), then one copy changed.
      const twin = fresh(2);
      await h.write('vol', 50, twin);
      await h.write('vol', 2 * CACHE_PAGE + 50, twin);
      await h.store.flush();
      await h.expectAll('twins flushed');
      await h.write('vol', 50, fresh(1));
      await h.expectAll('one twin overwritten, pending');
      await h.store.flush();
      await h.expectAll('one twin overwritten, flushed');
      expect(await h.store.check()).toEqual([]);
    });

    it('(b) snapshots: the snapshot keeps the old content, the head reads the new', async () => {
      h = await Harness.create(readMode);
      await h.createVolume('vol', VOL_BLOCKS);
      await h.scatter('vol', 800, 3);
      await h.store.flush();
      await h.expectAll('before the snapshot');

      await h.snapshot('vol', 's1');
      await h.expectAll('just after the snapshot');
      await h.scatter('vol', 500, 4);
      await h.zero('vol', 5 * BLOCK_SIZE, 40 * BLOCK_SIZE);
      await h.expectAll('head written after s1, pending');
      await h.store.flush();
      await h.expectAll('head written after s1, flushed');

      // A second snapshot with writes pending (snapshot flushes them first).
      await h.scatter('vol', 300, 5);
      await h.expectAll('pending before s2');
      await h.snapshot('vol', 's2');
      await h.scatter('vol', 300, 6);
      await h.expectAll('head written after s2, pending');
      await h.store.flush();
      await h.expectAll('head written after s2, flushed');
      expect(h.model.get('vol@s1')!.equals(h.model.get('vol@s2')!)).toBe(false);
      expect(h.model.get('vol')!.equals(h.model.get('vol@s2')!)).toBe(false);

      // A snapshot removed and its name taken again reads the new point.
      await h.remove('vol@s1');
      await h.scatter('vol', 200, 7);
      await h.snapshot('vol', 's1');
      await h.scatter('vol', 200, 8);
      await h.store.flush();
      await h.expectAll('s1 re-taken');
    });

    it('(c) branches stay apart from their parent; a re-created name reads its new content', async () => {
      h = await Harness.create(readMode);
      await h.createVolume('vol', VOL_BLOCKS);
      await h.scatter('vol', 800, 9);
      await h.snapshot('vol', 'base');
      await h.scatter('vol', 300, 10);
      await h.snapshot('vol', 'later');
      await h.store.flush();
      await h.expectAll('before branching');

      await h.branch('br', 'vol@base');
      await h.expectAll('just branched');
      await h.scatter('br', 400, 11);
      await h.expectAll('branch written, pending');
      await h.store.flush();
      await h.expectAll('branch written, flushed');
      await h.scatter('vol', 400, 12);
      await h.store.flush();
      await h.expectAll('parent written after the branch');

      // A branch of the branch: three chain levels.
      await h.snapshot('br', 'b1');
      await h.branch('leaf', 'br@b1');
      await h.scatter('leaf', 200, 13);
      await h.scatter('br', 200, 14);
      await h.store.flush();
      await h.expectAll('branch of a branch');
      await h.remove('leaf');
      await h.remove('br@b1');

      // rm the branch, re-create the name as an empty volume: zeroes, not the old content.
      await h.expectAll('before rm');
      await h.remove('br');
      await h.createVolume('br', VOL_BLOCKS);
      await h.expectAll('br re-created empty');
      await h.scatter('br', 100, 15);
      await h.expectAll('re-created br written, pending');
      await h.store.flush();
      await h.expectAll('re-created br written, flushed');

      // ... and as a branch of another snapshot: that snapshot's content.
      await h.remove('br');
      await h.branch('br', 'vol@later');
      await h.expectAll('br re-created from vol@later');
      await h.scatter('br', 100, 16);
      await h.store.flush();
      await h.expectAll('br from vol@later written');

      // Pending writes of a removed volume must not leak into its successor.
      await h.scatter('br', 100, 17);
      await h.expectAll('br written, pending, before rm');
      await h.remove('br');
      await h.createVolume('br', VOL_BLOCKS);
      await h.expectAll('br re-created after rm with writes pending');
      await h.store.flush();
      await h.expectAll('flushed after rm with writes pending');
      expect(await h.store.check()).toEqual([]);
    });

    it('(d) GC moves live chunks out of sparse segments and deletes them: reads follow', async () => {
      h = await Harness.create(readMode);
      const BLOCKS = 4096;
      await h.createVolume('vol', BLOCKS);
      // Passes 1-4 fill segment 1 (4 x 4096 blocks); a snapshot after pass 2
      // keeps that pass alive. Passes 5-10 rewrite only the first 3072
      // blocks: segment 1 keeps pass 2 and the tail of pass 4 (~31 % live),
      // segment 2 ends up with only the start of pass 10 live (~6 %).
      for (let pass = 1; pass <= 10; pass++) {
        const n = pass <= 4 ? BLOCKS : 3072;
        await h.write('vol', 0, fresh(n));
        await h.store.flush();
        if (pass === 2) await h.snapshot('vol', 'p2');
        if (pass % 3 === 0) await h.expectMatches('vol', `after pass ${pass}`);
      }
      const before = segmentIds(h.dir);
      expect(before.length, 'segments written').toBe(Math.ceil((4 * BLOCKS + 6 * 3072) / BLOCKS_PER_SEGMENT));
      await h.expectAll('before GC (warm caches)');

      const result = await h.store.gc();
      expect(result.chunksFreed, 'overwritten chunks freed').toBeGreaterThan(0);
      expect(result.segmentsCompacted, 'sparse segments compacted').toBeGreaterThanOrEqual(1);
      const after = segmentIds(h.dir);
      const gone = before.filter((id) => !after.includes(id));
      expect(gone.length, 'segment files deleted').toBe(result.segmentsCompacted + result.segmentsDeleted);
      expect(gone, 'segments 1 and 2 compacted away').toEqual(expect.arrayContaining([1, 2]));
      await h.expectAll('after GC');

      // Write and read on top of the compacted store, and GC once more.
      await h.write('vol', 1000, fresh(500));
      await h.expectAll('written after GC, pending');
      await h.store.flush();
      await h.expectAll('written after GC, flushed');
      await h.remove('vol@p2');
      await h.expectAll('p2 removed');
      // Freeing p2's pass leaves the segment GC copied into under half
      // live: the second GC seals and compacts it in turn.
      const beforeSecond = segmentIds(h.dir);
      const second = await h.store.gc();
      expect(second.chunksFreed, 'p2 chunks freed').toBeGreaterThanOrEqual(BLOCKS);
      expect(second.segmentsCompacted + second.segmentsDeleted, 'segments reclaimed by the second GC').toBeGreaterThanOrEqual(1);
      expect(segmentIds(h.dir)).not.toEqual(beforeSecond);
      await h.expectAll('after the second GC');
      expect(await h.store.check()).toEqual([]);
    });

    it('(e) zero and trim after warm reads make blocks read as zeroes', async () => {
      h = await Harness.create(readMode);
      await h.createVolume('vol', VOL_BLOCKS);
      await h.write('vol', 0, fresh(VOL_BLOCKS));
      await h.store.flush();
      await h.expectAll('full volume, flushed');

      await h.zero('vol', 0, 8 * BLOCK_SIZE);                                      // whole blocks
      await h.zero('vol', (CACHE_PAGE - 3) * BLOCK_SIZE + 100, 6 * BLOCK_SIZE);    // unaligned, across a page edge
      await h.zero('vol', 2000 * BLOCK_SIZE + 10, 20, 'zero');                     // inside one block
      await h.zero('vol', 2100 * BLOCK_SIZE, 300 * BLOCK_SIZE, 'trim');
      await h.expectAll('zeroed, pending');
      await h.store.flush();
      await h.expectAll('zeroed, flushed');

      // Written and zeroed before any flush, over committed data.
      await h.write('vol', 500, fresh(20));
      await h.expectAll('written, pending');
      await h.zero('vol', 505 * BLOCK_SIZE, 10 * BLOCK_SIZE, 'trim');
      await h.expectAll('written then trimmed, pending');
      await h.store.flush();
      await h.expectAll('written then trimmed, flushed');

      // Zero a range that is already holes and data mixed, then rewrite part of it.
      await h.zero('vol', 0, 16 * BLOCK_SIZE);
      await h.write('vol', 4, fresh(2));
      await h.expectAll('hole range rewritten, pending');
      await h.store.flush();
      await h.expectAll('hole range rewritten, flushed');

      // Zero everything.
      await h.zero('vol', 0, VOL_BLOCKS * BLOCK_SIZE, 'trim');
      await h.expectAll('all trimmed, pending');
      await h.store.flush();
      await h.expectAll('all trimmed, flushed');
      expect(await (await h.handle('vol')).extents(0, VOL_BLOCKS * BLOCK_SIZE))
        .toEqual([{ offset: 0, length: VOL_BLOCKS * BLOCK_SIZE, hole: true }]);
    });

    it('(f) a segment GC deleted whole and whose id is handed out again reads its new content', async () => {
      h = await Harness.create(readMode);
      await h.createVolume('vol', VOL_BLOCKS);
      await h.write('vol', 0, fresh(VOL_BLOCKS));
      await h.store.flush();
      await h.expectAll('written');  // segment 1 mapped / open, locations cached
      expect(segmentIds(h.dir)).toEqual([1]);

      await h.remove('vol');
      const result = await h.store.gc();
      expect(result.chunksFreed).toBe(VOL_BLOCKS);
      expect(result.segmentsDeleted, 'the emptied segment is deleted').toBe(1);
      expect(segmentIds(h.dir)).toEqual([]);

      // The next append starts a segment with the lowest free id again: 1.
      await h.createVolume('vol', VOL_BLOCKS);
      await h.expectAll('re-created, empty');
      await h.write('vol', 0, fresh(VOL_BLOCKS));
      await h.expectAll('re-written, pending');
      await h.store.flush();
      expect(segmentIds(h.dir)).toEqual([1]);
      await h.expectAll('re-written, flushed');
      expect(await h.store.check()).toEqual([]);
    });
  });
}

// The block id cache does not depend on how segments are read: one read mode is enough.
describe('the block id cache past its page budget', () => {
  let h: Harness | null = null;
  afterEach(async () => {
    await h?.close();
    h = null;
  });

  it('(g) more block pages than the cache keeps: it empties itself and still reads right', async () => {
    h = await Harness.create('adaptive');
    // A sparse volume spanning 2100 cache pages (the cache keeps 2048);
    // one block written in each page. Only those blocks and their
    // neighbours are read: the model is the written blocks.
    const PAGES = 2100;
    const size = PAGES * CACHE_PAGE * BLOCK_SIZE;
    await h.store.createVolume('big', size);
    const v = await h.handle('big');
    const r = rng(18);
    const where = Array.from({ length: PAGES }, (_, p) => p * CACHE_PAGE + r(CACHE_PAGE - 1));
    const content = new Map<number, Buffer>();
    const blocks = fresh(PAGES);
    for (let p = 0; p < PAGES; p++) {
      const data = blocks.subarray(p * BLOCK_SIZE, (p + 1) * BLOCK_SIZE);
      await v.write(where[p] * BLOCK_SIZE, data);
      content.set(where[p], data);
    }
    await h.store.flush();
    const check = async (when: string) => {
      for (let pass = 0; pass < 2; pass++) {
        for (const b of where) {
          const got = await v.read(b * BLOCK_SIZE, 2 * BLOCK_SIZE);  // the block and its (hole) neighbour
          expect(firstDiff(got.subarray(0, BLOCK_SIZE), content.get(b)!), `block ${b}, ${when}`).toBeNull();
          expect(got.subarray(BLOCK_SIZE).every((x) => x === 0), `block ${b + 1} is a hole, ${when}`).toBe(true);
        }
      }
    };
    await check('written');
    // Overwrite every third written block, and zero every seventh.
    for (let p = 0; p < PAGES; p += 3) {
      const data = fresh(1);
      await v.write(where[p] * BLOCK_SIZE, data);
      content.set(where[p], data);
    }
    for (let p = 0; p < PAGES; p += 7) {
      await v.zero(where[p] * BLOCK_SIZE, BLOCK_SIZE);
      content.set(where[p], Buffer.alloc(BLOCK_SIZE));
    }
    await check('overwritten, pending');
    await h.store.flush();
    await check('overwritten, flushed');
  });
});
