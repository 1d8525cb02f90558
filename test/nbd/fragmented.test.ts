/**
 * Fragmented reads with real clients: a branch written at random in 4 KiB
 * blocks by qemu-io (patterns that repeat, so chunks are shared; zeroed
 * blocks, so holes lie between), then read back sequentially by nbdcopy in
 * big requests whose blocks are scattered over segments, against a plain
 * Buffer model: with the writes still pending, after a flush (committed),
 * and from a snapshot taken halfway. Then, with background relocation on
 * (as `dormant serve` has it): a branch of unique blocks written at random
 * reads back exactly while nbdcopy's reads get it relocated and after, and
 * lies in order afterwards.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MiB, fillVolume, run, seededBytes, serveStore, type Served } from './helpers.js';
import { pseudoRandom } from '../helpers/data.js';

const SIZE = 16 * MiB;
const BLOCK = 4096;
let s: Served;
let golden: Buffer;

beforeAll(async () => {
  golden = seededBytes(SIZE, 23);
  s = await serveStore('fragmented', async (store) => {
    await store.createVolume('golden', SIZE);
    await fillVolume(store, 'golden', golden);
    await store.snapshot('golden', 'base');
    await store.branch('vm', 'golden@base');
  });
}, 60_000);

afterAll(async () => {
  await s?.close();
});

/** Deterministic shuffle of 0..n-1 (xorshift32). */
function shuffled(n: number, seed: number): number[] {
  const order = Array.from({ length: n }, (_, i) => i);
  let x = seed;
  for (let i = n - 1; i > 0; i--) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    const j = x % (i + 1);
    [order[i], order[j]] = [order[j], order[i]];
  }
  return order;
}

/** Writes blocks with qemu-io (pattern p: every byte p; 0: write -z) and applies them to `model`. */
async function writeBlocks(blocks: number[], patternOf: (k: number) => number, model: Buffer): Promise<void> {
  const cmds = blocks.map((b, k) => {
    const p = patternOf(k);
    model.fill(p, b * BLOCK, (b + 1) * BLOCK);
    return p === 0 ? `write -z ${b * BLOCK} 4k` : `write -P ${p} ${b * BLOCK} 4k`;
  });
  await run('qemu-io', ['-f', 'raw', ...cmds.flatMap((c) => ['-c', c]), s.uri('vm')], 120_000);
}

/** The whole export, read by nbdcopy (big sequential requests). */
async function copyOut(exportName: string, file: string): Promise<Buffer> {
  const out = path.join(s.dir, file);
  await run('nbdcopy', [s.uri(exportName), out], 120_000);
  return readFileSync(out);
}

describe('fragmented reads', () => {
  it('a branch written at random reads back exactly: pending, committed and from a snapshot', async () => {
    const model = Buffer.from(golden);
    const order = shuffled(SIZE / BLOCK, 7).slice(0, 2048);
    // Patterns 1..31 repeat (shared chunks); every 17th write zeroes its block (a hole).
    const patternOf = (k: number): number => (k % 17 === 16 ? 0 : 1 + (k % 31));
    await writeBlocks(order.slice(0, 1024), patternOf, model);
    await s.store.flush();
    const half = Buffer.from(model);
    await s.store.snapshot('vm', 'half');
    await writeBlocks(order.slice(1024), (k) => patternOf(k + 1024), model);

    // Scattered over segments, some still in the write-back table.
    expect((await copyOut('vm', 'pending.raw')).equals(model)).toBe(true);
    await s.store.flush();
    expect((await copyOut('vm', 'committed.raw')).equals(model)).toBe(true);
    expect((await copyOut('vm@half', 'half.raw')).equals(half)).toBe(true);
    // The golden image is untouched.
    expect((await copyOut('golden@base', 'golden.raw')).equals(golden)).toBe(true);
  }, 180_000);
});

describe('fragmented reads with background relocation', () => {
  let r: Served;
  afterAll(async () => { await r?.close(); });

  it('nbdcopy reads a branch written at random exactly while its reads get it relocated, and after', async () => {
    const base = seededBytes(SIZE, 29);
    r = await serveStore('relocated', async (store) => {
      await store.createVolume('golden', SIZE);
      await fillVolume(store, 'golden', base);
      await store.snapshot('golden', 'base');
      await store.branch('vm', 'golden@base');
    }, {}, { relocate: true });
    // Unique blocks over the first half, written one by one in a random order: each its own chunk, scattered.
    const model = Buffer.from(base);
    const fresh = pseudoRandom(31, SIZE / 2);
    fresh.copy(model);
    const h = await r.store.openVolume('vm');
    for (const b of shuffled(SIZE / 2 / BLOCK, 11)) await h.write(b * BLOCK, fresh.subarray(b * BLOCK, (b + 1) * BLOCK));
    await h.flush();
    await h.close();
    const before = (await r.store.info('vm')).locality;
    expect(before.fragmentation).toBeGreaterThan(0.4); // the unique half scattered, the inherited half in order

    const copy = async (file: string) => {
      const out = path.join(r.dir, file);
      await run('nbdcopy', [r.uri('vm'), out], 120_000);
      return readFileSync(out);
    };
    expect((await copy('first.raw')).equals(model)).toBe(true);
    const deadline = Date.now() + 30_000;
    let stats = await r.store.stats();
    while (stats.relocation!.queued > 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      stats = await r.store.stats();
    }
    // Every unique block moved (once), none of the inherited golden image's.
    expect(stats.relocation).toMatchObject({ queued: 0, chunksMoved: SIZE / 2 / BLOCK });
    expect((await copy('second.raw')).equals(model)).toBe(true);
    expect((await r.store.info('vm')).locality.fragmentation).toBeLessThan(0.01);
    expect((await r.store.info('golden@base')).locality.fragmentation).toBe(0);
    expect(await r.store.check()).toEqual([]);
  }, 180_000);
});
