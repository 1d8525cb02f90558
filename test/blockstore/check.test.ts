/**
 * `dormant check` and `dormant scrub`, through the real CLI:
 *  - a consistent store passes (exit 0); a store that lost a segment file
 *    is reported (one line per problem, exit 3); `--json` gives
 *    { consistent, problems } (and `data` with --data);
 *  - one byte flipped in a segment: plain `check` cannot see it, `check
 *    --data` and `scrub` name the chunk, every volume and snapshot that
 *    reads it and the byte offset, exit 3; an export that trips over it
 *    fails and leaves the previous target as it was, with no temporary
 *    file; `--repair` without another copy says it cannot (still exit 3),
 *    and once the same content is written again (stored apart, since the
 *    byte compare against the damaged copy fails) it rewrites the chunk:
 *    exit 0, the data exports exactly, and a later `check --data` is clean.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { flipStoredByte } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';
import { dormant, ensureBuilt, expectOk } from '../helpers/cli.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

describe('dormant check', () => {
  let store: string;
  beforeAll(() => {
    ensureBuilt();
    store = path.join(tmp.make('check'), 'store');
    const img = path.join(tmp.make('check-img'), 'img');
    fs.writeFileSync(img, crypto.randomBytes(300_000));
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'golden', img], { store }));
    expectOk(dormant(['snapshot', 'golden', 'base'], { store }));
    expectOk(dormant(['branch', 'vm1', '--from', 'golden@base'], { store }));
  });

  test('a consistent store passes', () => {
    const r = dormant(['check'], { store });
    expect(r.status).toBe(0);
    expect(r.stdout).toBe('store is consistent\n');
    expect(JSON.parse(expectOk(dormant(['check', '--json'], { store })))).toEqual({ consistent: true, problems: [] });
  });

  test('a lost segment file is reported with exit 3', () => {
    const segs = path.join(store, 'segments');
    for (const f of fs.readdirSync(segs)) fs.rmSync(path.join(segs, f));
    const r = dormant(['check'], { store });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(/chunk \d+: segment 1 does not exist/);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^dormant: the store has \d+ problems?$/)]);
    const j = JSON.parse(dormant(['check', '--json'], { store }).stdout);
    expect(j.consistent).toBe(false);
    expect(j.problems.length).toBeGreaterThan(0);
  });
});

describe('dormant check --data, --repair and scrub', () => {
  const BAD = 5; // the block whose stored copy gets a flipped byte
  const offset = BAD * BLOCK_SIZE;
  let store: string;
  let work: string;
  let img: Buffer;
  let imgFile: string;

  /** Flips one byte of block BAD's stored copy in its segment file. */
  function flipBad(): void {
    if (!flipStoredByte(store, img.subarray(offset, offset + BLOCK_SIZE), 100, 0x40)) throw new Error(`block ${BAD} is in no segment file`);
  }

  /** The line check --data prints for the damaged block, users in name order. */
  const damagedLine = new RegExp(`^chunk \\d+ \\(segment \\d+, slot \\d+\\) does not match its checksum; `
    + `used by golden at byte ${offset}, golden@base at byte ${offset}, vm1 at byte ${offset}`, 'm');

  beforeAll(() => {
    ensureBuilt();
    store = path.join(tmp.make('data'), 'store');
    work = tmp.make('data-work');
    img = crypto.randomBytes(64 * BLOCK_SIZE);
    imgFile = path.join(work, 'img');
    fs.writeFileSync(imgFile, img);
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'golden', imgFile], { store }));
    expectOk(dormant(['snapshot', 'golden', 'base'], { store }));
    expectOk(dormant(['branch', 'vm1', '--from', 'golden@base'], { store }));
  });

  test('a clean store: every chunk read back, exit 0', () => {
    const out = expectOk(dormant(['check', '--data'], { store }));
    expect(out).toMatch(/^data: 64 chunks \(256 KiB\) read back in [\d.]+ s \(.*\): no damage found\nstore is consistent\n$/);
    const j = JSON.parse(expectOk(dormant(['check', '--data', '--json'], { store })));
    expect(j).toMatchObject({ consistent: true, problems: [], data: { chunks: 64, bytes: 64 * BLOCK_SIZE, damaged: [], complete: true } });
  });

  test('a flipped byte: check --data names the chunk, its users and the offset; exit 3', () => {
    flipBad();
    expectOk(dormant(['check'], { store })); // the index is consistent: only reading the data finds it
    const r = dormant(['check', '--data'], { store });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(damagedLine);
    expect(r.stdout).toMatch(/^data: 64 chunks .*: 1 damaged chunk, 0 repaired$/m);
    expect(r.stdout).not.toMatch(/store is consistent/);
    expect(r.stderr).toBe('dormant: the store has 1 problem\n');
    const j = JSON.parse(dormant(['check', '--data', '--json'], { store }).stdout);
    expect(j.consistent).toBe(false);
    expect(j.problems).toHaveLength(1);
    expect(j.data.damaged).toHaveLength(1);
    expect(j.data.damaged[0]).toMatchObject({
      problem: 'does not match its checksum', repaired: false, moreUsers: 0,
      users: [{ name: 'golden', offset }, { name: 'golden@base', offset }, { name: 'vm1', offset }],
    });
  });

  test('scrub finds the same, exit 3', () => {
    const r = dormant(['scrub', '--rate', '0'], { store });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(damagedLine);
    expect(r.stdout).toMatch(/^scrub: 64 chunks \(256 KiB\) read back in .*: 1 damaged chunk, 0 repaired$/m);
    expect(r.stderr).toBe('dormant: scrub found 1 problem it did not repair\n');
    const j = JSON.parse(dormant(['scrub', '--json'], { store }).stdout);
    expect(j).toMatchObject({ chunks: 64, repaired: 0, complete: true });
    expect(j.damaged.map((d: { users: unknown[] }) => d.users)).toEqual([
      [{ name: 'golden', offset }, { name: 'golden@base', offset }, { name: 'vm1', offset }],
    ]);
  });

  test('an export that fails on the damage leaves the previous target intact and no temporary file', () => {
    const dir = tmp.make('data-export');
    const target = path.join(dir, 'golden.raw');
    fs.writeFileSync(target, 'the previous export\n');
    const r = dormant(['export', 'golden', target], { store });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/does not match its checksum/);
    expect(fs.readFileSync(target, 'utf8')).toBe('the previous export\n');
    expect(fs.readdirSync(dir)).toEqual(['golden.raw']);
  });

  test('--repair without another copy of the content: not repairable, still exit 3', () => {
    const r = dormant(['check', '--repair'], { store });
    expect(r.status).toBe(3);
    expect(r.stdout).toMatch(/does not match its checksum; used by golden .*; not repairable: no other stored copy of its content verifies$/m);
    expect(dormant(['check', '--data'], { store }).status).toBe(3);
  });

  test('--repair rewrites the chunk from a later copy of the same content; the data is whole again', () => {
    expectOk(dormant(['import', 'again', imgFile], { store })); // block BAD's content is stored apart
    const r = dormant(['check', '--data', '--repair'], { store });
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/; used by golden at byte 20480, golden@base at byte 20480, vm1 at byte 20480; rewritten from chunk \d+ /);
    expect(r.stdout).toMatch(/: 1 damaged chunk, 1 repaired\nstore is consistent\n$/);
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/no damage found\nstore is consistent\n$/);
    expectOk(dormant(['scrub'], { store }));
    for (const name of ['golden', 'golden@base', 'vm1']) {
      const out = path.join(work, `${name.replace('@', '_')}.raw`);
      expectOk(dormant(['export', name, out], { store }));
      expect(fs.readFileSync(out).equals(img), name).toBe(true);
    }
  });
});
