/**
 * Crash safety: a child process writes, trims, flushes, FUA-writes and
 * snapshots under load, with relocations of random ranges running beside
 * (locality.ts), and is killed with SIGKILL at random moments, many
 * times. After each kill the store opens without any repair step; every block
 * whose flush (or FUA write) was acknowledged reads back exactly, or as a
 * value written after it; every acknowledged snapshot reads exactly as it was
 * frozen; and GC still works (run between rounds, then verified again).
 */
import { afterAll, describe, expect, test } from 'vitest';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Store } from '../../src/blockstore/index.js';
import { decode } from './crash-values.mjs';
import { ensureBuilt } from '../helpers/cli.js';
import { killWhenRunning } from '../helpers/process.js';

const BLOCK = 4096;
const BLOCKS = 2048;
const ROUNDS = 12;
const child = path.join(__dirname, 'crash-child.mjs');
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-crash-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** Per block: the durable value and the values written after it. */
const durable: string[] = new Array(BLOCKS).fill('Z');
const since: string[][] = Array.from({ length: BLOCKS }, () => []);
const latest: string[] = new Array(BLOCKS).fill('Z');
const snapshots = new Map<string, string[]>();

/** Chunks the children's relocations moved (R lines). */
let relocated = 0;

async function runRound(round: number, gen: number): Promise<number> {
  const logPath = path.join(dir, `round-${round}.log`);
  const run = await killWhenRunning(child, [path.join(dir, 'store'), String(round * 7919 + 1), String(gen), logPath],
    100 + Math.floor(Math.random() * 500), 20_000);
  expect(run.ready, `child never became ready: ${run.stderr}`).toBe(true);
  expect(run.signal).toBe('SIGKILL');

  const unflushed = new Set<number>();
  const lines = fs.readFileSync(logPath, 'utf8').split('\n');
  for (const line of lines) {
    const [kind, a, b] = line.split(' ');
    if (kind === 'R') relocated += Number(a);
    if (kind === 'I') {
      since[Number(a)].push(b);
    } else if (kind === 'W' || kind === 'A') {
      const blk = Number(a);
      latest[blk] = b;
      if (kind === 'A') { durable[blk] = b; since[blk] = []; unflushed.delete(blk); } else unflushed.add(blk);
    } else if (kind === 'F' || kind === 'P') {
      if (kind === 'P') snapshots.set(`crash@${a}`, [...latest]);
      for (const blk of unflushed) { durable[blk] = latest[blk]; since[blk] = []; }
      unflushed.clear();
    }
  }
  return lines.length;
}

async function verify(store: Store, round = -1): Promise<void> {
  const h = await store.openVolume('crash');
  const all = await h.read(0, BLOCKS * BLOCK);
  const bad: string[] = [];
  for (let blk = 0; blk < BLOCKS; blk++) {
    const got = decode(all.subarray(blk * BLOCK, (blk + 1) * BLOCK));
    if (got !== durable[blk] && !since[blk].includes(got)) {
      bad.push(`round ${round} block ${blk}: got ${got}, durable ${durable[blk]}, later ${since[blk].join(',') || '-'}`);
    }
    // Whatever the crash kept becomes the new baseline.
    durable[blk] = got; since[blk] = []; latest[blk] = got;
  }
  await h.close();
  expect(bad.slice(0, 5)).toEqual([]);
  for (const [name, values] of snapshots) {
    const s = await store.openVolume(name);
    const data = await s.read(0, BLOCKS * BLOCK);
    await s.close();
    const diffs = values.map((v, blk) => [v, decode(data.subarray(blk * BLOCK, (blk + 1) * BLOCK)), blk])
      .filter(([v, got]) => v !== got);
    expect(diffs.slice(0, 3), `snapshot ${name}`).toEqual([]);
  }
}

describe('SIGKILL during writes, flushes and relocations', () => {
  test(`${ROUNDS} kills at random moments lose nothing acknowledged`, async () => {
    ensureBuilt(); // the child runs dist/, this test src/: they must be the same code
    const init = await Store.init(path.join(dir, 'store'));
    await init.createVolume('crash', BLOCKS * BLOCK);
    await init.close();
    let gen = 0;
    let totalLines = 0;
    for (let round = 0; round < ROUNDS; round++) {
      totalLines += await runRound(round, gen);
      gen += 1_000_000;
      // Opens with no repair step; everything acknowledged is there.
      const store = await Store.open(path.join(dir, 'store'));
      expect(await store.check(), `index consistent after kill ${round}`).toEqual([]);
      await verify(store, round);
      if (round % 3 === 2) {
        // Drop the oldest snapshot now and then, collect, and check again.
        const oldest = [...snapshots.keys()][0];
        if (oldest) { await store.remove(oldest); snapshots.delete(oldest); }
        const before = (await store.stats()).garbageBytes;
        const r = await store.gc();
        const after = (await store.stats()).garbageBytes;
        // Overwrites and trims left unreferenced chunks; GC frees them. Their
        // bytes stay as garbage only in segments too full to compact.
        expect(r.chunksFreed).toBeGreaterThan(0);
        expect(after).toBeLessThanOrEqual(before + r.chunksFreed * BLOCK);
        expect(await store.check(), `index consistent after gc ${round}`).toEqual([]);
        await verify(store);
      }
      await store.close();
    }
    // The children really worked under load between kills, relocations included.
    expect(totalLines).toBeGreaterThan(ROUNDS * 50);
    expect(relocated).toBeGreaterThan(0);
  });
});
