/**
 * The prefix table across the language boundary (src/blockstore/prefix-table.ts,
 * whose header describes the layout once, and native/src/rehash.cc, which
 * keeps to it): entries filed by the native run calls (addRun, rehashRun)
 * are found by the TypeScript find(); entries filed by the TypeScript add()
 * stop a native run (the native probe sees the prefix as taken); removals
 * by the TypeScript remove() after native filing, with their backward
 * shifts across the table's end, leave a table the native probe still
 * reads right; and so does a table the TypeScript side resized.
 *
 * The keys pile up on a few home slots on both sides of the table's end,
 * so probe runs are long and wrap. The hash filter is empty, so only the
 * prefix table can stop a native run. A model (id -> key) is checked after
 * every step: find() of every key, and the native probe of every key (an
 * addRun of one block on a copy of the table: 0 when the key is taken).
 */
import crypto from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { PrefixTable, prefix } from '../../src/blockstore/prefix-table.js';
import { CHUNK_PAGE, LIVE, UNIQUE, newChunkPage, type ChunkPage } from '../../src/blockstore/chunk-page.js';
import type { FilterBits } from '../../src/blockstore/hash-filter.js';
import { addRun } from '../../src/native/index.js';

/** An empty hash filter: no hash may be a committed chunk's. */
const FILTER: FilterBits = { words: new Uint32Array(1024), mask: 32767 };
/** Home slots of the keys used (in a table of 1024 slots): both sides of its end. */
const HOMES = [1017, 1018, 1019, 1020, 1021, 1022, 1023, 0, 1, 2, 3, 4];
/** Keys: each home with eight high parts, all colliding in a 1024-slot table. */
const KEYS = HOMES.flatMap((h) => Array.from({ length: 8 }, (_, r) => h + 1024 * (r * 37 + 1)));

/** A random 16-byte hash whose prefix is `key`. */
function hashOf(key: number): Buffer {
  const h = crypto.randomBytes(16);
  h[0] = key >>> 22;
  h[1] = (key >>> 14) & 0xff;
  h[2] = (key >>> 6) & 0xff;
  h[3] = ((key & 0x3f) << 2) | (h[3] & 3);
  expect(prefix(h, 0)).toBe(key);
  return h;
}

/** Hashes of `keys`, back to back. */
function hashesOf(keys: number[]): Buffer {
  return Buffer.concat(keys.map(hashOf));
}

/** The table's own array and mask (the layout both sides share). */
function layoutOf(table: PrefixTable): { slots: Float64Array; mask: number } {
  return table as unknown as { slots: Float64Array; mask: number };
}

/**
 * For each key, whether the native probe sees it as taken: an addRun of
 * one block per key on a copy of the table (a key it files there changes
 * no other key's answer).
 */
function nativeTaken(table: PrefixTable, keys: number[]): boolean[] {
  const { slots, mask } = layoutOf(table);
  const copy = slots.slice();
  const page = newChunkPage();
  return keys.map((key) => addRun(copy, mask, FILTER.words, FILTER.mask, page.hashes, page.flags, page.segment, page.slot,
    0, 1, 1, hashOf(key), 0, 0, 0) === 0);
}

/** The test's picture of the table: id -> key, and page entry j holds id j + 1. */
class Model {
  readonly keyOf = new Map<number, number>();

  idsOf(key: number): number[] {
    return [...this.keyOf].filter(([, k]) => k === key).map(([id]) => id).sort((a, b) => a - b);
  }

  taken(key: number): boolean {
    for (const k of this.keyOf.values()) if (k === key) return true;
    return false;
  }

  /** Checks find() and the native probe of every key against the model. */
  check(table: PrefixTable, keys: number[] = KEYS): void {
    for (const key of keys) {
      expect([...table.find(key)].sort((a, b) => a - b), `find(${key})`).toEqual(this.idsOf(key));
    }
    expect(nativeTaken(table, keys), 'native probe').toEqual(keys.map((k) => this.taken(k)));
  }
}

/** Files `id` (page entry id - 1) under `key` the TypeScript way, its hash in the page as the write-back keeps it. */
function addTs(table: PrefixTable, page: ChunkPage, model: Model, id: number, key: number): void {
  hashOf(key).copy(page.hashes, (id - 1) * 16);
  page.flags[id - 1] = LIVE;
  table.add(key, id);
  model.keyOf.set(id, key);
}

describe('prefix table: TypeScript and native sides', () => {
  it('entries filed natively (addRun, rehashRun) are found by find()', () => {
    const table = new PrefixTable();
    const page = newChunkPage();
    const model = new Model();
    const keys = [KEYS[0], KEYS[1], KEYS[8 * 6], KEYS[8 * 7], KEYS[8 * 7 + 1], KEYS[8 * 11]]; // homes 1017, 1023, 0, 4
    const hashes = hashesOf(keys);
    expect(table.addRun(page, 0, 1, keys.length, hashes, 0, 5, 100, FILTER)).toBe(keys.length);
    keys.forEach((k, b) => model.keyOf.set(1 + b, k));
    expect(page.hashes.subarray(0, 16 * keys.length).equals(hashes)).toBe(true);
    expect([...page.flags.subarray(0, keys.length + 1)]).toEqual([...keys.map(() => LIVE | UNIQUE), 0]);
    expect([...page.slot.subarray(0, keys.length)]).toEqual(keys.map((_, b) => 100 + b));
    model.check(table);

    // The first three move to new keys (one of which another id had: the run stops there).
    const moved = [KEYS[2], KEYS[8 * 8], KEYS[8 * 11]];
    expect(table.moveRun(page, 0, 1, 3, hashesOf(moved), 0, FILTER)).toBe(2);
    model.keyOf.set(1, moved[0]);
    model.keyOf.set(2, moved[1]);
    model.check(table);
    expect(prefix(page.hashes, 0)).toBe(moved[0]);
    expect(prefix(page.hashes, 32)).toBe(keys[2]); // not moved
  });

  it('entries filed by add() stop a native run where their prefix comes', () => {
    const table = new PrefixTable();
    const page = newChunkPage();
    const model = new Model();
    // Three ids on home 1023, so the last lies past the table's end.
    for (const [i, key] of [KEYS[8 * 6], KEYS[8 * 6 + 1], KEYS[8 * 6 + 2]].entries()) addTs(table, page, model, 1 + i, key);
    const run = [KEYS[8 * 7], KEYS[8 * 6 + 3], KEYS[8 * 6 + 2], KEYS[8 * 7 + 1]];
    expect(table.addRun(page, 10, 11, run.length, hashesOf(run), 0, 5, 0, FILTER)).toBe(2);
    model.keyOf.set(11, run[0]);
    model.keyOf.set(12, run[1]);
    expect(page.flags[12]).toBe(0); // the third was not touched
    model.check(table);
    // A move onto a key add() filed stops too.
    expect(table.moveRun(page, 10, 11, 2, hashesOf([KEYS[8 * 7 + 2], KEYS[8 * 6]]), 0, FILTER)).toBe(1);
    model.keyOf.set(11, KEYS[8 * 7 + 2]);
    model.check(table);
  });

  it('remove() after native filing leaves a table the native probe reads right (backward shifts across the end)', () => {
    const table = new PrefixTable();
    const page = newChunkPage();
    const model = new Model();
    const keys = KEYS.filter((_, i) => i % 2 === 0); // 48 keys on 12 homes: one run from 1017 well past 0
    expect(table.addRun(page, 0, 1, keys.length, hashesOf(keys), 0, 1, 0, FILTER)).toBe(keys.length);
    keys.forEach((k, b) => model.keyOf.set(1 + b, k));
    model.check(table);
    for (const b of [0, 5, 6, 7, 20, 21, 40, 47, 30]) {
      table.remove(keys[b], 1 + b);
      model.keyOf.delete(1 + b);
      model.check(table);
    }
    // Native moves out of a run TypeScript shifted, and TypeScript removal of what they filed.
    expect(table.moveRun(page, 1, 2, 4, hashesOf([KEYS[1], KEYS[3], KEYS[5], KEYS[7]]), 0, FILTER)).toBe(4);
    for (let b = 0; b < 4; b++) model.keyOf.set(2 + b, KEYS[1 + 2 * b]);
    model.check(table);
    table.remove(KEYS[3], 3);
    model.keyOf.delete(3);
    model.check(table);
  });

  it('random sequences of add/remove (TypeScript) and addRun/moveRun (native) agree with a model', () => {
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) >>> 0;
      return (seed >>> 8) % n;
    };
    const table = new PrefixTable();
    const page = newChunkPage();
    const model = new Model();
    const MAX_ID = 240; // few enough that the table never grows: the keys keep colliding
    for (let step = 0; step < 1500; step++) {
      const op = rand(4);
      if (op === 0) {
        const id = 1 + rand(MAX_ID);
        if (!model.keyOf.has(id)) addTs(table, page, model, id, KEYS[rand(KEYS.length)]);
      } else if (op === 1 && model.keyOf.size > 0) {
        const ids = [...model.keyOf.keys()];
        const id = ids[rand(ids.length)];
        table.remove(model.keyOf.get(id)!, id);
        model.keyOf.delete(id);
      } else if (op === 2) {
        // Fresh ids, filed natively while their keys are free.
        const id0 = 1 + rand(MAX_ID - 4);
        const count = 1 + rand(4);
        let free = 0;
        while (free < count && !model.keyOf.has(id0 + free)) free++;
        if (free === 0) continue;
        const keys = Array.from({ length: free }, () => KEYS[rand(KEYS.length)]);
        let want = 0;
        const filed = new Set<number>();
        while (want < free && !model.taken(keys[want]) && !filed.has(keys[want])) filed.add(keys[want++]);
        expect(table.addRun(page, id0 - 1, id0, free, hashesOf(keys), 0, 9, 500, FILTER), `addRun at ${step}`).toBe(want);
        for (let b = 0; b < want; b++) model.keyOf.set(id0 + b, keys[b]);
      } else if (op === 3) {
        // Filed ids move natively to new keys while those are free.
        const id0 = 1 + rand(MAX_ID - 3);
        const count = 1 + rand(3);
        let filed = 0;
        while (filed < count && model.keyOf.has(id0 + filed)) filed++;
        if (filed === 0) continue;
        const keys = Array.from({ length: filed }, () => KEYS[rand(KEYS.length)]);
        let want = 0;
        while (want < filed && !model.taken(keys[want])) model.keyOf.set(id0 + want, keys[want++]);
        expect(table.moveRun(page, id0 - 1, id0, filed, hashesOf(keys), 0, FILTER), `moveRun at ${step}`).toBe(want);
      }
      model.check(table);
    }
    expect(model.keyOf.size).toBeGreaterThan(20);
  });

  it('a table TypeScript grew and shrank is read right natively', () => {
    const table = new PrefixTable();
    const page = newChunkPage();
    const model = new Model();
    const N = 40000;
    const keyOf = (i: number): number => (i * 2654435761) % 2 ** 30;
    for (let id = 1; id <= N; id++) {
      table.add(keyOf(id), CHUNK_PAGE + id);
      model.keyOf.set(CHUNK_PAGE + id, keyOf(id));
    }
    expect(layoutOf(table).mask + 1).toBeGreaterThan(65536);
    // A native run into the grown table, one key taken.
    const run = [KEYS[0], KEYS[9], keyOf(17), KEYS[20]];
    expect(table.addRun(page, 0, 1, 4, hashesOf(run), 0, 2, 0, FILTER)).toBe(2);
    model.keyOf.set(1, KEYS[0]);
    model.keyOf.set(2, KEYS[9]);
    const sample = [KEYS[0], KEYS[9], KEYS[20], ...Array.from({ length: 40 }, (_, i) => keyOf(1 + i * 997))];
    model.check(table, sample);
    // Most removed: the table shrinks (refiled by TypeScript), the natively filed entries with it.
    for (let id = 1; id <= N; id++) {
      if (id % 20 === 0) continue;
      table.remove(keyOf(id), CHUNK_PAGE + id);
      model.keyOf.delete(CHUNK_PAGE + id);
    }
    expect(layoutOf(table).mask + 1).toBeLessThan(65536);
    model.check(table, [...sample, ...Array.from({ length: 40 }, (_, i) => keyOf(20 * (i + 1)))]);
    expect(table.moveRun(page, 0, 1, 2, hashesOf([KEYS[30], keyOf(40)]), 0, FILTER)).toBe(1);
    model.keyOf.set(1, KEYS[30]);
    model.check(table, [KEYS[0], KEYS[30], keyOf(40), KEYS[9]]);
  });
});
