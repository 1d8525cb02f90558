/**
 * A store is its owner's alone: made and used under umask 000 it is still
 * 0700 (directories) and 0600 (files: index, segments, VM records...), and
 * an older, wider store is tightened when its owner opens it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { dormant, ensureBuilt, expectOk } from '../helpers/cli.js';
import { dormantWithUmask } from '../helpers/cli-as.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());
beforeAll(() => ensureBuilt());

/** Every directory and regular file under `dir` (itself included) with its permission bits. */
function modes(dir: string): Array<{ file: string; dir: boolean; mode: number }> {
  const out = [{ file: '.', dir: true, mode: fs.statSync(dir).mode & 0o7777 }];
  for (const rel of fs.readdirSync(dir, { recursive: true }) as string[]) {
    const st = fs.lstatSync(path.join(dir, rel));
    if (st.isDirectory() || st.isFile()) out.push({ file: rel, dir: st.isDirectory(), mode: st.mode & 0o7777 });
  }
  return out;
}

/** Asserts 0700 on every directory and 0600 on every file under `dir`, which must hold some files. */
function expectOwnerOnly(dir: string): void {
  const all = modes(dir);
  expect(all.filter((m) => !m.dir).length).toBeGreaterThan(2);
  for (const m of all) expect(`${m.file} ${m.mode.toString(8)}`).toBe(`${m.file} ${m.dir ? '700' : '600'}`);
}

describe('permissions: 0700 directories, 0600 files, whatever the umask', () => {
  it('a store made and used under umask 000', () => {
    const work = tmp.make('umask');
    const store = path.join(work, 'store');
    const img = path.join(work, 'img');
    fs.writeFileSync(img, pseudoRandom(3, 20 * BLOCK_SIZE));
    for (const args of [['init'], ['import', 'v', img], ['create', 'm', '--size', '1M', '--kind', 'memory'],
      ['snapshot', 'v', 's'], ['gc'], ['check', '--data']]) {
      const r = dormantWithUmask('000', store, args);
      expect(r.stderr, args.join(' ')).toBe('');
      expect(r.status, args.join(' ')).toBe(0);
    }
    expectOwnerOnly(store);
  });

  it('an existing wider store is tightened when its owner opens it', () => {
    const work = tmp.make('widen');
    const store = path.join(work, 'store');
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['create', 'v', '--size', '1M'], { store }));
    fs.mkdirSync(path.join(store, 'vms'));
    fs.writeFileSync(path.join(store, 'vms', 'old.json'), '{}');
    for (const m of modes(store)) fs.chmodSync(path.join(store, m.file), m.dir ? 0o755 : 0o644);
    expect(fs.statSync(store).mode & 0o777).toBe(0o755);
    expectOk(dormant(['list'], { store }));
    expectOwnerOnly(store);
  });
});
