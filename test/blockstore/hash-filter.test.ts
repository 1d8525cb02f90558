/**
 * The dedup hash filter (src/blockstore/hash-filter.ts) over a real LMDB
 * database: it may say "present" for an absent hash (rarely), but never
 * "absent" for a hash the index holds — not for hashes indexed before the
 * build, nor ones indexed and added while a build runs, nor after it grows.
 * Then, through the Store: a block written again after a reopen (filter
 * rebuilt from the index) is still deduplicated.
 */
import crypto from 'node:crypto';
import { open, type Database, type RootDatabase } from 'lmdb';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { HashFilter } from '../../src/blockstore/hash-filter.js';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

let env: RootDatabase | null = null;
afterEach(async () => {
  await env?.close();
  env = null;
});

function hashesDb(): Database<Buffer, Buffer> {
  env = open({ path: tmp.make('filter'), maxDbs: 4 });
  return env.openDB<Buffer, Buffer>('hashes', { keyEncoding: 'binary', encoding: 'binary' });
}

const randomHashes = (n: number): Buffer[] => Array.from({ length: n }, () => crypto.randomBytes(16));

async function putAll(db: Database<Buffer, Buffer>, hashes: Buffer[]): Promise<void> {
  await db.transaction(() => {
    for (const h of hashes) db.put(h, Buffer.alloc(8));
  });
}

describe('hash filter', () => {
  it('answers "present" for everything until built', () => {
    const f = new HashFilter(hashesDb());
    expect(randomHashes(100).every((h) => f.mayContain(h))).toBe(true);
  });

  it('after a build: every indexed hash is present, few absent ones are', async () => {
    const db = hashesDb();
    const indexed = randomHashes(200_000); // more than one build slice
    await putAll(db, indexed);
    const f = new HashFilter(db);
    await f.build();
    expect(indexed.filter((h) => !f.mayContain(h))).toEqual([]);
    const absent = randomHashes(20_000).filter((h) => f.mayContain(h)).length;
    expect(absent / 20_000).toBeLessThan(0.02);
    // The check reads the hash at an offset, as the write path does.
    const framed = Buffer.concat([Buffer.alloc(32, 7), indexed[5]]);
    expect(f.mayContain(framed, 32)).toBe(true);
  });

  it('keeps hashes added while a build runs, and while it grows', async () => {
    const db = hashesDb();
    await putAll(db, randomHashes(150_000));
    // As in the store, a hash is added once its commit has put it in the index.
    const f = new HashFilter(db);
    const building = f.build();
    const during = randomHashes(1000);
    await putAll(db, during); // lands anywhere relative to the scan's position
    for (const h of during) f.add(h); // between the build's slices
    await building;
    expect(during.filter((h) => !f.mayContain(h))).toEqual([]);
    // 2^23 bits hold 2^19 hashes at 16 bits each; adding past twice that rebuilds bigger.
    const many = randomHashes(1_100_000);
    await putAll(db, many);
    for (const h of many) f.add(h);
    await f.build();
    expect(many.filter((h) => !f.mayContain(h))).toEqual([]);
    expect(during.filter((h) => !f.mayContain(h))).toEqual([]);
    const absent = randomHashes(20_000).filter((h) => f.mayContain(h)).length;
    expect(absent / 20_000).toBeLessThan(0.02);
  }, 60_000);

  it('through the store: a block written again after a reopen is shared, not stored twice', async () => {
    const dir = tmp.make('filter-store');
    const blocks = 64;
    const data = pseudoRandom(42, blocks * BLOCK_SIZE);
    let store = await Store.init(dir, { writebackIntervalMs: 0 });
    await store.createVolume('a', blocks * BLOCK_SIZE);
    let h = await store.openVolume('a');
    await h.write(0, data);
    await h.close();
    await store.close();

    store = await Store.open(dir, { writebackIntervalMs: 0 });
    // The filter builds in the background after open; give it a moment so the write below uses it.
    await new Promise((r) => setTimeout(r, 200));
    await store.createVolume('b', blocks * BLOCK_SIZE);
    h = await store.openVolume('b');
    await h.write(0, data);
    await h.flush();
    expect((await h.read(0, data.length)).equals(data)).toBe(true);
    await h.close();
    expect((await store.stats()).chunks).toBe(blocks);
    await store.close();
  });
});
