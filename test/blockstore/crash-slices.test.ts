/**
 * Crash safety of flushes committed in several transactions (slices of
 * COMMIT_SLICE_ENTRIES pending entries): a child writes every block of a
 * volume big enough for three slices, with blocks that share a chunk across
 * slices, flushes, and repeats; it is killed with SIGKILL at random moments
 * (while writing, and between or inside the slices of a flush), every other
 * time only after its first flush was acknowledged. After each
 * kill the store opens without repair, `check()` finds reference counts and
 * index consistent, and every block reads as a whole generation no older
 * than the last acknowledged flush and no newer than the last one started.
 */
import { afterAll, describe, expect, test } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { BLOCKS, block } from './crash-slices-values.mjs';
import { ensureBuilt } from '../helpers/cli.js';
import { killWhenRunning } from '../helpers/process.js';

const ROUNDS = 5;
const child = path.join(__dirname, 'crash-slices-child.mjs');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-crash-slices-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Kills the child at a random moment; returns the generations it logged as flushed and as started. */
async function round(n: number, gen: number): Promise<{ flushed: number; started: number }> {
  const logPath = path.join(dir, `round-${n}.log`);
  // Even rounds: a random moment after the child is ready (writing, or in its first flush).
  // Odd rounds: a random moment after its first flush was acknowledged (the next
  // generation's writes or flush), so some kills always follow a flush, however slow
  // the machine is.
  const after = n % 2 === 1 ? { path: logPath, pattern: /^F /m } : undefined;
  const delay = n % 2 === 1 ? Math.floor(Math.random() * 2000) : 300 + Math.floor(Math.random() * 2500);
  const run = await killWhenRunning(child, [path.join(dir, 'store'), String(gen), logPath], delay, 30_000, after);
  expect(run.ready, `child never became ready: ${run.stderr}`).toBe(true);
  expect(run.signal).toBe('SIGKILL');
  let flushed = -1;
  let started = -1;
  for (const line of fs.readFileSync(logPath, 'utf8').split('\n')) {
    const [kind, g] = line.split(' ');
    if (kind === 'F') flushed = Number(g);
    if (kind === 'S') started = Number(g);
  }
  return { flushed, started };
}

describe('crash during a flush of several slices', () => {
  test(`${ROUNDS} kills lose nothing flushed and leave the index consistent`, async () => {
    ensureBuilt();
    const store = await Store.init(path.join(dir, 'store'), { writebackIntervalMs: 0 });
    await store.createVolume('v', BLOCKS * BLOCK_SIZE);
    await store.close();
    let durable = -1; // generation every block holds at least
    let gen = 0;
    const flushes: number[] = [];
    for (let n = 0; n < ROUNDS; n++) {
      const { flushed, started } = await round(n, gen);
      if (flushed >= 0) durable = flushed;
      flushes.push(flushed);
      const s = await Store.open(path.join(dir, 'store'), { writebackIntervalMs: 0 });
      try {
        expect(await s.check()).toEqual([]);
        const h = await s.openVolume('v');
        const all = await h.read(0, BLOCKS * BLOCK_SIZE);
        const bad: string[] = [];
        let newest = durable;
        for (let b = 0; b < BLOCKS && bad.length < 5; b++) {
          const got = all.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
          const g = got.readUInt32LE(4);
          const whole = g >= Math.max(durable, 0) && g <= Math.max(started, durable) && got.equals(block(b, g));
          // Before the first flush a block may still be a hole.
          if (!whole && !(durable < 0 && got.equals(Buffer.alloc(BLOCK_SIZE)))) bad.push(`block ${b}: generation ${g}`);
          if (whole) newest = Math.max(newest, g);
        }
        expect(bad, `after round ${n} (flushed ${durable}, started ${started})`).toEqual([]);
        await h.close();
        gen = Math.max(started, newest) + 1;
      } finally {
        await s.close();
      }
    }
    // The kills must have landed after at least one flush, or nothing was tested.
    expect(flushes.some((f) => f >= 0)).toBe(true);
  }, 240_000);
});
