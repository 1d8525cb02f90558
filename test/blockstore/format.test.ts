/**
 * On-disk format versioning. test/fixtures/store-v1/ was written once by the
 * format-1 code (test/fixtures/make-store-v1.mjs, which documents its
 * content); this code must read every volume and snapshot of it exactly and
 * keep writing to it. A store claiming another format version is refused
 * with EFORMAT and a clear message, not misread.
 *
 * Tests work on copies in temp dirs: the fixture itself is never opened.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { open } from 'lmdb';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, DormantError, FORMAT_VERSION, Store } from '../../src/blockstore/index.js';
import { dormant, dormantJson, expectFailure, expectOk, REPO } from '../helpers/cli.js';
import { firstDiff } from '../helpers/data.js';
import { copyTree, TempDirs } from '../helpers/tmp.js';
// @ts-expect-error -- a plain .mjs script without type declarations
import { expectedContents, pattern } from '../fixtures/make-store-v1.mjs';

interface Expected { kind: string; size: number; content: Buffer }
const expected = expectedContents() as Map<string, Expected>;

const FIXTURE = path.join(REPO, 'test', 'fixtures', 'store-v1');

/** sha256 of each name's content, pinned when the fixture was made (independent of the script). */
const PINNED: Record<string, string> = {
  golden: '615de091773d27ce6a035e9e68f4585eb1441bc719904c20475ad30ba0883435',
  'golden@base': '995b9398ddf23c0d7f797794e8a4b521c620d0dc8379232fb3195dad87618609',
  vm1: '0816157dd657b3668180e0dd3089cec22741da04037fed97c22f9101ca590d2b',
  'vm1@s1': '409b3a4ebe01184174abe0940d1ca40acdaef2dbc88c2645d4791776953a3e0e',
  mem: 'b1513ee28d6a4feeedf3fa254e84bd54446ef7828a8cdadff368eda2c62f4338',
};

const sha256 = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

const tmp = new TempDirs();
let store: Store | null = null;
afterEach(async () => { await store?.close(); store = null; });
afterAll(() => tmp.cleanup());

/** A private copy of the fixture. */
function fixtureCopy(): string {
  const dir = path.join(tmp.make('fmt'), 'store');
  copyTree(FIXTURE, dir);
  return dir;
}

/** Distinct nonzero blocks over all contents: the chunks a deduplicating store keeps. */
function distinctBlocks(contents: Iterable<Buffer>): number {
  const seen = new Set<string>();
  for (const c of contents) {
    for (let off = 0; off < c.length; off += BLOCK_SIZE) {
      const b = Buffer.alloc(BLOCK_SIZE);
      c.copy(b, 0, off, Math.min(off + BLOCK_SIZE, c.length));
      if (b.some((x) => x !== 0)) seen.add(b.toString('base64'));
    }
  }
  return seen.size;
}

async function readAll(s: Store, name: string): Promise<Buffer> {
  const h = await s.openVolume(name);
  try { return await h.read(0, h.size); } finally { await h.close(); }
}

/** Sets meta.formatVersion of a closed store directly in its LMDB index (undefined removes it). */
async function setFormatVersion(dir: string, version: number | undefined): Promise<void> {
  const env = open({ path: path.join(dir, 'index'), maxDbs: 16, pageSize: 4096 });
  try {
    const meta = env.openDB<unknown, string>('meta', {});
    if (version === undefined) await meta.remove('formatVersion'); else await meta.put('formatVersion', version);
  } finally {
    await env.close();
  }
}

describe('fixture store-v1', () => {
  it('is small, committed without lock files, and documents format 1', () => {
    const files = (fs.readdirSync(FIXTURE, { recursive: true }) as string[])
      .filter((f) => fs.statSync(path.join(FIXTURE, f)).isFile()).sort();
    expect(files).toEqual([path.join('index', 'data.mdb'), path.join('segments', '00000001.seg')]);
    const bytes = files.reduce((n, f) => n + fs.statSync(path.join(FIXTURE, f)).size, 0);
    expect(bytes).toBeLessThan(2 ** 20);
    expect(FORMAT_VERSION, 'a new format version needs its own fixture and test').toBe(1);
    // The documented content is what was pinned.
    expect(Object.fromEntries([...expected].map(([n, e]) => [n, sha256(e.content)]))).toEqual(PINNED);
    expect(pattern('ab;', 7).toString()).toBe('ab;ab;a');
  });

  it('reads every volume and snapshot exactly as documented', async () => {
    store = await Store.open(fixtureCopy());
    const rows = await store.list();
    expect(rows.map((r) => r.name)).toEqual(['golden', 'golden@base', 'mem', 'vm1', 'vm1@s1']);
    for (const r of rows) {
      const e = expected.get(r.name)!;
      expect({ name: r.name, kind: r.kind, size: r.size }).toEqual({ name: r.name, kind: e.kind, size: e.size });
      const data = await readAll(store, r.name);
      expect(firstDiff(data, e.content), r.name).toBeNull();
      expect(sha256(data)).toBe(PINNED[r.name]);
    }
    expect(rows.find((r) => r.name === 'vm1')!.origin).toBe('golden@base');
    const info = await store.info('vm1');
    expect(info.parentChain).toEqual(['golden@base']);
    expect(info.snapshots).toEqual(['vm1@s1']);
    expect((await store.info('golden@base')).branches).toEqual(['vm1']);
    const stats = await store.stats();
    expect(stats).toMatchObject({ formatVersion: 1, volumes: 3, snapshots: 2 });
    expect(stats.chunks).toBe(distinctBlocks([...expected.values()].map((e) => e.content)));
    // Holes stay holes: golden block 4 and vm1's trimmed blocks take no space.
    const g = await store.openVolume('golden@base');
    expect(await g.extents(4 * BLOCK_SIZE, BLOCK_SIZE)).toEqual([{ offset: 4 * BLOCK_SIZE, length: BLOCK_SIZE, hole: true }]);
    await g.close();
    const v = await store.openVolume('vm1');
    expect(await v.extents(6 * BLOCK_SIZE, 2 * BLOCK_SIZE)).toEqual([{ offset: 6 * BLOCK_SIZE, length: 2 * BLOCK_SIZE, hole: true }]);
    await v.close();
  });

  it('takes writes, snapshots, new volumes and gc, which survive a reopen', async () => {
    const dir = fixtureCopy();
    const model = new Map([...expected].map(([n, e]) => [n, Buffer.from(e.content)]));
    store = await Store.open(dir);
    const write = async (name: string, offset: number, data: Buffer) => {
      const h = await store!.openVolume(name);
      await h.write(offset, data);
      await h.close();
      data.copy(model.get(name)!, offset);
    };
    // A block equal to one the fixture stores is shared with it: this code
    // finds format-1 chunks through format 1's hash index.
    const chunks = (await store.stats()).chunks;
    await write('mem', 5 * BLOCK_SIZE, pattern('golden block 1;', BLOCK_SIZE)); // into a hole
    await store.flush();
    expect((await store.stats()).chunks, 'a write equal to a fixture chunk is deduplicated with it').toBe(chunks);
    await write('vm1', 3 * BLOCK_SIZE + 10, pattern('new vm1;', 2 * BLOCK_SIZE));
    await write('golden', 64 * BLOCK_SIZE, pattern('new tail;', 1000));
    await store.snapshot('vm1', 's2');
    model.set('vm1@s2', Buffer.from(model.get('vm1')!));
    await store.branch('vm2', 'vm1@s1');
    model.set('vm2', Buffer.from(model.get('vm1@s1')!));
    await write('vm2', 0, pattern('vm2 block 0;', BLOCK_SIZE));
    await store.flush();
    await store.remove('vm1@s2');
    model.delete('vm1@s2');
    await store.gc();
    await store.close();

    store = await Store.open(dir);
    expect((await store.list()).map((r) => r.name).sort()).toEqual([...model.keys()].sort());
    for (const [name, content] of model) expect(firstDiff(await readAll(store, name), content), name).toBeNull();
    expect((await store.stats()).chunks).toBe(distinctBlocks(model.values()));
  });

  it('the CLI lists and exports it', () => {
    const dir = fixtureCopy();
    const rows = dormantJson<{ volumes: Array<{ name: string; kind: string }> }>(['list'], { store: dir }).volumes;
    expect(rows.map((r) => `${r.name}:${r.kind}`)).toEqual(
      ['golden:disk', 'golden@base:disk', 'mem:memory', 'vm1:disk', 'vm1@s1:disk']);
    const out = path.join(tmp.make('export'), 'vm1-s1.img');
    expectOk(dormant(['export', 'vm1@s1', out], { store: dir }));
    expect(firstDiff(fs.readFileSync(out), expected.get('vm1@s1')!.content)).toBeNull();
  });
});

describe('a store of another format version', () => {
  it('is refused with EFORMAT and a clear message, and left as it was', async () => {
    const dir = fixtureCopy();
    await setFormatVersion(dir, 99);
    const err = await Store.open(dir).then((s) => { store = s; return null; }, (e: unknown) => e);
    expect(err).toBeInstanceOf(DormantError);
    expect((err as DormantError).code).toBe('EFORMAT');
    expect((err as DormantError).message).toBe(
      `store at ${dir} has format version 99; this dormant reads version 1`);
    expect(fs.existsSync(path.join(dir, 'lock.pid')), 'the refused open released the lock').toBe(false);

    // The CLI: a user error (exit 1), one line.
    expectFailure(dormant(['list'], { store: dir }), /has format version 99; this dormant reads version 1/);
    expectFailure(dormant(['create', 'x', '--size', '1M'], { store: dir }), /format version 99/);
    // `init` does not overwrite it either.
    expectFailure(dormant(['init'], { store: dir }), /a store already exists/);

    // Nothing was changed: with its version put back, it reads as before.
    await setFormatVersion(dir, 1);
    store = await Store.open(dir);
    expect(store.has('x')).toBe(false);
    expect(firstDiff(await readAll(store, 'vm1'), expected.get('vm1')!.content)).toBeNull();
  });

  it('an index without a format version is refused with EFORMAT', async () => {
    const dir = fixtureCopy();
    await setFormatVersion(dir, undefined);
    const err = await Store.open(dir).then((s) => { store = s; return null; }, (e: unknown) => e);
    expect(err).toMatchObject({ code: 'EFORMAT', message: `store at ${dir} has an index without a format version` });
    expectFailure(dormant(['stats'], { store: dir }), /has an index without a format version/);
  });
});
