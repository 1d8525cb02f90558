/**
 * The pager's pure parts: the fault stream counters (faults.ts), working
 * sets (fold, hottest, runs, persistence next to VM records without being
 * taken for one), and the translation of file page runs to QEMU addresses.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it, vi } from 'vitest';
import { MemoryIo, readWorkingSet } from '../../src/pager/index.js';
import {
  complementRuns, foldEpoch, hottest, pageRuns, recentPages, writeWorkingSet,
} from '../../src/pager/working-set.js';
import { listVms, vmPaths } from '../../src/vm/index.js';
import { runsToRanges } from '../../src/pager/pageout.js';

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });

const touched = (pages: number, hit: number[]) => {
  const t = new Uint8Array(pages);
  for (const p of hit) t[p]++;
  return t;
};

describe('MemoryIo', () => {
  it('counts reads of tracked volumes as faults, page by page, and prefetch reads apart (marked in the epoch all the same)', async () => {
    const io = new MemoryIo();
    const v = io.track('a.mem', 64 * 4096);
    io.read('other', 0, 4096); // untracked: ignored
    io.read('a.mem', 4096, 2 * 4096);
    io.read('a.mem', 4096, 4096);
    io.write('a.mem', 0, 3 * 4096);
    expect(v.counters).toEqual({ faults: 2, pagesIn: 3, prefetchPages: 0, writes: 1, pagesOut: 3 });
    expect(v.touchedPages()).toBe(2);
    await v.asPrefetch(async () => { io.read('a.mem', 10 * 4096, 4 * 4096); });
    expect(v.counters.prefetchPages).toBe(4);
    expect(v.counters.faults).toBe(2);
    const epoch = v.takeEpoch();
    // Prefetched pages are in the epoch too: a page-out keeps of it only what QEMU has mapped.
    expect([...epoch.entries()].filter(([, n]) => n > 0)).toEqual([[1, 2], [2, 1], [10, 1], [11, 1], [12, 1], [13, 1]]);
    expect(v.touchedPages()).toBe(0);
    io.read('a.mem', 63 * 4096, 8 * 4096); // past the end: clipped
    expect(v.touchedPages()).toBe(1);
  });

  it('reports faults per second over the last whole seconds', () => {
    vi.useFakeTimers({ now: 1_700_000_000_250 });
    try {
      const io = new MemoryIo();
      const v = io.track('a.mem', 4096);
      for (let i = 0; i < 30; i++) v.read(0, 4096);
      const now = Date.now();
      expect(v.faultsPerSecond(now)).toBe(0); // the current second is not over
      expect(v.faultsPerSecond(now + 1000)).toBe(3);
      expect(v.faultsPerSecond(now + 20_000)).toBe(0);
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('working sets', () => {
  it('fold epochs into a heat that halves and forgets', () => {
    let ws = foldEpoch(undefined, touched(16, [1, 2, 3]));
    expect(recentPages(ws)).toEqual([1, 2, 3]);
    ws = foldEpoch(ws, touched(16, [3, 4]));
    expect(ws.heat.get(3)).toBe(1.5);
    expect(ws.heat.get(1)).toBe(0.5);
    expect(recentPages(ws)).toEqual([3, 4]);
    expect(hottest(ws, 1)).toEqual([3]);
    expect(hottest(ws, 3)).toEqual([1, 3, 4]);
    expect(hottest(undefined, 3)).toEqual([]);
    for (let i = 0; i < 7; i++) ws = foldEpoch(ws, touched(16, [4]));
    expect(ws.heat.has(1)).toBe(false); // 1/2^8 < 1/64: forgotten
    expect(ws.epochs).toBe(9);
  });

  it('turn sorted pages into runs and their complement', () => {
    expect(pageRuns([1, 2, 3, 7, 9, 10])).toEqual([[1, 3], [7, 1], [9, 2]]);
    expect(complementRuns([1, 2, 3, 7, 9, 10], 12)).toEqual([[0, 1], [4, 3], [8, 1], [11, 1]]);
    expect(complementRuns([], 5)).toEqual([[0, 5]]);
    expect(complementRuns([0, 1, 2], 3)).toEqual([]);
  });

  it('map file page runs to the addresses of QEMU mappings', () => {
    const maps = [{ start: 0x7f0000000000, end: 0x7f0000004000, offset: 0 }, { start: 0x7e0000000000, end: 0x7e0000004000, offset: 0x4000 }];
    expect(runsToRanges([[1, 5]], maps)).toEqual([
      { addr: 0x7f0000001000, length: 0x3000 }, { addr: 0x7e0000000000, length: 0x2000 },
    ]);
    expect(runsToRanges([[9, 2]], maps)).toEqual([]);
  });

  it('persist next to the VM records without being listed as one', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-ws-'));
    dirs.push(dir);
    const file = vmPaths(dir, 'vm1').workingSet;
    expect(readWorkingSet(file)).toBeUndefined();
    const ws = foldEpoch(foldEpoch(undefined, touched(8, [0, 5])), touched(8, [5]));
    writeWorkingSet(file, ws);
    expect(file.endsWith('.json')).toBe(false);
    const back = readWorkingSet(file)!;
    expect([...back.heat.entries()].sort()).toEqual([[0, 0.5], [5, 1.5]]);
    expect(back.epochs).toBe(2);
    expect(listVms(dir)).toEqual([]);
  });
});
