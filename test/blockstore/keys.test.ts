/**
 * Binary keys of the index (src/blockstore/keys.ts). Block map keys must sort
 * in LMDB's byte order exactly as (lineage, block, version) sort as numbers,
 * for blocks up to 2^40 and full 32-bit lineages and versions, since every
 * look-up is a range scan over that order; and every encoding round-trips
 * (map values, chunk keys and records, the hash index's id lists).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { open } from 'lmdb';
import { afterAll, describe, expect, it } from 'vitest';
import {
  chunkKey, decodeChunk, decodeIds, encodeChunk, encodeIds, mapKey, mapValue, parseChunkKey, parseMapKey,
  parseMapValue, type MapKey,
} from '../../src/blockstore/keys.js';

const U32 = 2 ** 32 - 1;
const MAX_BLOCK = 2 ** 40;

const tuple = fc.record({
  lineage: fc.oneof(fc.integer({ min: 0, max: U32 }), fc.constantFrom(0, 1, 255, 256, 65535, 65536, U32)),
  block: fc.oneof(fc.integer({ min: 0, max: MAX_BLOCK }),
    fc.constantFrom(0, 1, 2 ** 31, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 38, MAX_BLOCK - 1, MAX_BLOCK)),
  version: fc.oneof(fc.integer({ min: 0, max: U32 }), fc.constantFrom(0, 1, 2, 255, 256, U32)),
});

function numericOrder(a: MapKey, b: MapKey): number {
  return a.lineage - b.lineage || a.block - b.block || a.version - b.version;
}

const sign = (n: number) => (n > 0 ? 1 : n < 0 ? -1 : 0);

describe('block map keys', () => {
  it('are 16 bytes and round-trip', () => {
    fc.assert(fc.property(tuple, (t) => {
      const k = mapKey(t.lineage, t.block, t.version);
      expect(k.length).toBe(16);
      expect(parseMapKey(k)).toEqual(t);
    }), { numRuns: 2000 });
  });

  it('compare as bytes exactly as they compare as numbers', () => {
    fc.assert(fc.property(tuple, tuple, (a, b) => {
      expect(sign(Buffer.compare(mapKey(a.lineage, a.block, a.version), mapKey(b.lineage, b.block, b.version))))
        .toBe(sign(numericOrder(a, b)));
    }), { numRuns: 5000 });
  });

  it('the block field carries across the 32-bit boundary in order', () => {
    const blocks = [2 ** 32 - 2, 2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1, 2 ** 33, MAX_BLOCK];
    const keys = blocks.map((b) => mapKey(7, b, 3));
    for (let i = 1; i < keys.length; i++) expect(Buffer.compare(keys[i - 1], keys[i])).toBe(-1);
    // Version is the least significant field: a higher block with version 0
    // sorts after a lower block with the highest version.
    expect(Buffer.compare(mapKey(7, 2 ** 32 - 1, U32), mapKey(7, 2 ** 32, 0))).toBe(-1);
    expect(Buffer.compare(mapKey(7, MAX_BLOCK, U32), mapKey(8, 0, 0))).toBe(-1);
  });

  describe('in a real LMDB database', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-keys-'));
    afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

    it('iterate in numeric order, and range scans see exactly the numeric range', async () => {
      const env = open({ path: dir, maxDbs: 4 });
      try {
        const db = env.openDB<Buffer, Buffer>('map', { keyEncoding: 'binary', encoding: 'binary' });
        const tuples = fc.sample(tuple, { numRuns: 400, seed: 42 });
        // A dense corner around the 32-bit block boundary too.
        for (const block of [2 ** 32 - 1, 2 ** 32, 2 ** 32 + 1]) {
          for (const version of [0, 1, U32]) tuples.push({ lineage: 3, block, version });
        }
        await db.transaction(() => {
          for (const t of tuples) db.put(mapKey(t.lineage, t.block, t.version), mapValue(t.block));
        });
        const unique = [...new Map(tuples.map((t) => [`${t.lineage}:${t.block}:${t.version}`, t])).values()];
        const expected = unique.sort(numericOrder);
        const got = [...db.getRange({})].map(({ key, value }) => {
          const k = parseMapKey(key);
          expect(parseMapValue(value)).toBe(k.block);
          return k;
        });
        expect(got).toEqual(expected);

        // The store's look-up: newest entry of (lineage 3, block 2^32) at version <= 1.
        const seek = [...db.getRange({
          start: mapKey(3, 2 ** 32, 1), end: mapKey(3, 2 ** 32, 0), reverse: true, limit: 1,
        })].map(({ key }) => parseMapKey(key));
        expect(seek).toEqual([{ lineage: 3, block: 2 ** 32, version: 1 }]);
        // A forward range over blocks [2^32 - 1, 2^32 + 1) of lineage 3 holds exactly those blocks' entries.
        const range = [...db.getRange({ start: mapKey(3, 2 ** 32 - 1, 0), end: mapKey(3, 2 ** 32 + 1, 0) })]
          .map(({ key }) => parseMapKey(key));
        expect(range).toEqual(expected.filter((t) => t.lineage === 3 && t.block >= 2 ** 32 - 1 && t.block < 2 ** 32 + 1));
      } finally {
        await env.close();
      }
    });
  });
});

describe('map values and chunk keys', () => {
  it('round-trip chunk ids up to 2^53 - 1 and sort numerically', () => {
    const id = fc.oneof(fc.integer({ min: 0, max: Number.MAX_SAFE_INTEGER }),
      fc.constantFrom(0, 1, U32, 2 ** 32, Number.MAX_SAFE_INTEGER));
    fc.assert(fc.property(id, id, (a, b) => {
      expect(mapValue(a).length).toBe(8);
      expect(parseMapValue(mapValue(a))).toBe(a);
      expect(parseChunkKey(chunkKey(a))).toBe(a);
      expect(sign(Buffer.compare(chunkKey(a), chunkKey(b)))).toBe(sign(a - b));
    }), { numRuns: 2000 });
  });

  it('0 is the tombstone: eight zero bytes', () => {
    expect(mapValue(0).equals(Buffer.alloc(8))).toBe(true);
  });
});

describe('chunk records and the hash index', () => {
  it('chunk records round-trip and copy the hash out of the buffer', () => {
    const rec = fc.record({
      hash: fc.uint8Array({ minLength: 16, maxLength: 16 }).map((a) => Buffer.from(a)),
      segment: fc.integer({ min: 0, max: U32 }),
      slot: fc.integer({ min: 0, max: U32 }),
      refs: fc.integer({ min: 0, max: U32 }),
    });
    fc.assert(fc.property(rec, (c) => {
      const raw = encodeChunk(c);
      expect(raw.length).toBe(28);
      const back = decodeChunk(raw);
      expect(back).toEqual(c);
      raw.fill(0);
      expect(back.hash.equals(c.hash)).toBe(true);
    }), { numRuns: 1000 });
  });

  it('the ids under one hash round-trip, in order, up to 2^53 - 1', () => {
    const ids = fc.array(fc.oneof(fc.integer({ min: 1, max: Number.MAX_SAFE_INTEGER }),
      fc.constantFrom(1, U32, 2 ** 32, Number.MAX_SAFE_INTEGER)), { maxLength: 20 });
    fc.assert(fc.property(ids, (list) => {
      const raw = encodeIds(list);
      expect(raw.length).toBe(8 * list.length);
      expect(decodeIds(raw)).toEqual(list);
      // Appending one id is appending its 8 bytes (how a colliding chunk joins the list).
      expect(decodeIds(Buffer.concat([raw, mapValue(7)]))).toEqual([...list, 7]);
    }), { numRuns: 1000 });
  });

  it('no entry (undefined) is no ids', () => {
    expect(decodeIds(undefined)).toEqual([]);
    expect(decodeIds(Buffer.alloc(0))).toEqual([]);
  });
});
