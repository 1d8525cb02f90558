/**
 * Dedup never trusts the hash alone. With a deliberately colliding chunk
 * name (every block named 16 zero bytes, or named by its first 16 bytes so
 * blocks with a common prefix collide), different blocks must still read
 * back exactly — pending, after flush, after close and reopen, after rm and
 * a compacting gc — while identical blocks are still stored once.
 *
 * The oracle is a plain Buffer per volume and snapshot; the number of chunks
 * the store keeps must equal the number of distinct nonzero blocks visible
 * anywhere (stats().chunks), which is what "still deduplicated" means.
 */
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store, type HashFunction } from '../../src/blockstore/index.js';
import { firstDiff, pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const HASHES: Array<[string, HashFunction]> = [
  ['every block collides (16 zero bytes)', () => Buffer.alloc(16)],
  ['blocks with the same first 16 bytes collide', (block) => Buffer.from(block.subarray(0, 16))],
];

/** Block with a 16-byte prefix shared by its `group`, and a tail of its own. */
function groupBlock(group: number, member: number): Buffer {
  const b = pseudoRandom(1_000_003 * (member + 1) + group, BLOCK_SIZE);
  pseudoRandom(group + 77, 16).copy(b, 0);
  return b;
}

/** Block equal to another except its last byte. */
function lastByteFlipped(block: Buffer): Buffer {
  const b = Buffer.from(block);
  b[BLOCK_SIZE - 1] ^= 1;
  return b;
}

/** Expected content of every volume and snapshot, and the writes that change it. */
class Model {
  readonly content = new Map<string, Buffer>();

  create(name: string, blocks: number): void { this.content.set(name, Buffer.alloc(blocks * BLOCK_SIZE)); }
  snapshot(volume: string, snap: string): void { this.content.set(`${volume}@${snap}`, Buffer.from(this.content.get(volume)!)); }
  branch(name: string, from: string): void { this.content.set(name, Buffer.from(this.content.get(from)!)); }
  write(name: string, block: number, data: Buffer): void { data.copy(this.content.get(name)!, block * BLOCK_SIZE); }
  remove(name: string): void {
    for (const n of [...this.content.keys()]) if (n === name || n.startsWith(`${name}@`)) this.content.delete(n);
  }

  /** Distinct nonzero blocks across everything readable. */
  distinctBlocks(): number {
    const seen = new Set<string>();
    for (const buf of this.content.values()) {
      for (let off = 0; off < buf.length; off += BLOCK_SIZE) {
        const b = buf.subarray(off, off + BLOCK_SIZE);
        if (b.some((x) => x !== 0)) seen.add(b.toString('base64'));
      }
    }
    return seen.size;
  }
}

/** Applies writes to the store and the model together. */
async function write(store: Store, model: Model, name: string, writes: Array<[number, Buffer]>): Promise<void> {
  const h = await store.openVolume(name);
  try {
    for (const [block, data] of writes) {
      await h.write(block * BLOCK_SIZE, data);
      model.write(name, block, data);
    }
  } finally {
    await h.close();
  }
}

/** Every volume and snapshot reads back as the model says, whole and block by block. */
async function checkAll(store: Store, model: Model, when: string): Promise<void> {
  expect(store.catalog.volumes.size + store.catalog.snapshots.size, `${when}: names`).toBe(model.content.size);
  for (const [name, expected] of model.content) {
    const h = await store.openVolume(name);
    try {
      expect(firstDiff(await h.read(0, expected.length), expected), `${when}: ${name}`).toBeNull();
    } finally {
      await h.close();
    }
  }
}

describe.each(HASHES)('with a colliding hash: %s', (_label, hash) => {
  it('different blocks stay apart, identical blocks are shared, through flush, reopen, rm and gc', async () => {
    const dir = path.join(tmp.make('collide'), 'store');
    const model = new Model();
    let store = await Store.init(dir, { hash, writebackIntervalMs: 0 });
    try {
      // golden: groups of blocks sharing their first 16 bytes, exact copies,
      // near-copies (last byte differs) and holes.
      await store.createVolume('golden', 40 * BLOCK_SIZE);
      model.create('golden', 40);
      const golden: Array<[number, Buffer]> = [];
      for (let i = 0; i < 8; i++) golden.push([i, groupBlock(1, i)]);
      for (let i = 0; i < 8; i++) golden.push([8 + i, groupBlock(2, i)]);
      for (let i = 16; i < 20; i++) golden.push([i, groupBlock(1, 0)]); // copies of block 0
      golden.push([20, groupBlock(2, 0)]); // copy of block 8
      golden.push([21, lastByteFlipped(groupBlock(1, 3))]);
      golden.push([22, lastByteFlipped(lastByteFlipped(groupBlock(1, 3)))]); // equal to block 3
      await write(store, model, 'golden', golden);
      await checkAll(store, model, 'golden pending');
      expect((await store.stats()).chunks).toBe(model.distinctBlocks());
      expect(model.distinctBlocks()).toBe(17);

      // A snapshot, branches, and writes that collide with committed chunks,
      // with each other while pending, and with the snapshot's blocks.
      await store.snapshot('golden', 'base');
      model.snapshot('golden', 'base');
      for (const vm of ['vm1', 'vm2']) {
        await store.branch(vm, 'golden@base');
        model.branch(vm, 'golden@base');
      }
      await write(store, model, 'golden', [[1, groupBlock(1, 100)], [30, groupBlock(1, 101)]]);
      await write(store, model, 'vm1', [
        [0, groupBlock(1, 200)], [2, groupBlock(1, 3)], [25, groupBlock(2, 5)], [26, groupBlock(1, 200)],
        [27, lastByteFlipped(groupBlock(1, 200))],
      ]);
      await write(store, model, 'vm2', [
        [0, groupBlock(1, 200)], [5, groupBlock(3, 0)], [6, groupBlock(3, 1)], [7, Buffer.alloc(BLOCK_SIZE)],
      ]);
      await store.createVolume('ram', 8 * BLOCK_SIZE, 'memory');
      model.create('ram', 8);
      await write(store, model, 'ram', [[0, groupBlock(2, 1)], [1, groupBlock(3, 1)], [2, groupBlock(4, 0)]]);
      await checkAll(store, model, 'branches pending');
      await store.flush();
      await checkAll(store, model, 'after flush');
      expect((await store.stats()).chunks).toBe(model.distinctBlocks());

      // More writes after the snapshot of a branch: the frozen point must not move.
      await store.snapshot('vm1', 's1');
      model.snapshot('vm1', 's1');
      await write(store, model, 'vm1', [[0, groupBlock(1, 300)], [2, groupBlock(1, 301)]]);
      await store.close();

      store = await Store.open(dir, { hash, writebackIntervalMs: 0 });
      await checkAll(store, model, 'after reopen');
      expect((await store.stats()).chunks).toBe(model.distinctBlocks());

      // Scratch data that collides with everything, then removed: the
      // segment becomes mostly garbage and gc compacts it, moving the
      // live chunks (whose names all collide) to a new segment.
      await store.createVolume('scratch', 64 * BLOCK_SIZE);
      model.create('scratch', 64);
      await write(store, model, 'scratch',
        Array.from({ length: 64 }, (_, i): [number, Buffer] => [i, groupBlock(1 + (i % 3), 1000 + i)]));
      await store.flush();
      const before = await store.stats();
      await store.remove('vm2');
      model.remove('vm2');
      await store.remove('scratch');
      model.remove('scratch');
      const gc = await store.gc();
      expect(gc.chunksFreed).toBeGreaterThanOrEqual(64);
      expect(gc.segmentsCompacted + gc.segmentsDeleted).toBeGreaterThan(0);
      const after = await store.stats();
      expect(after.segmentBytes).toBeLessThan(before.segmentBytes);
      await checkAll(store, model, 'after rm + gc');
      expect(after.chunks).toBe(model.distinctBlocks());

      // A write identical to a moved chunk is shared with it, not stored again.
      await write(store, model, 'golden', [[35, groupBlock(1, 5)], [36, lastByteFlipped(groupBlock(2, 2))]]);
      await store.flush();
      expect((await store.stats()).chunks).toBe(model.distinctBlocks());
      await store.close();

      store = await Store.open(dir, { hash, writebackIntervalMs: 0 });
      await checkAll(store, model, 'after gc and reopen');
      expect((await store.stats()).chunks).toBe(model.distinctBlocks());
    } finally {
      await store.close();
    }
  });
});
