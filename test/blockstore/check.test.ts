/**
 * `dormant check`: a consistent store passes (exit 0), a store that lost a
 * segment file is reported (one line per problem, exit 2), and `--json`
 * gives { consistent, problems }.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
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

  test('a lost segment file is reported with exit 2', () => {
    const segs = path.join(store, 'segments');
    for (const f of fs.readdirSync(segs)) fs.rmSync(path.join(segs, f));
    const r = dormant(['check'], { store });
    expect(r.status).toBe(2);
    expect(r.stdout).toMatch(/chunk \d+: segment 1 does not exist/);
    expect(r.stderr.trim().split('\n')).toEqual([expect.stringMatching(/^dormant: the store has \d+ consistency problem/)]);
    const j = JSON.parse(dormant(['check', '--json'], { store }).stdout);
    expect(j.consistent).toBe(false);
    expect(j.problems.length).toBeGreaterThan(0);
  });
});
