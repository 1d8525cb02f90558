/**
 * Import and export refuse host paths into the store directory, whether
 * named directly, through a symbolic link (also a dangling one, whose
 * target would be created, and a link to the store directory), as a hard
 * link of a store file, or through a bind mount of it: exit 1, one line,
 * and `check --data` finds the store intact afterwards. An export over an
 * existing file outside the store replaces it whole, keeping its mode,
 * with no temporary file left; a new file gets the user's umask.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { dormant, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { dormantWithUmask } from '../helpers/cli-as.js';
import { pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

describe('import and export refuse paths into the store', () => {
  let store: string;
  let work: string;
  let segment: string;
  const data = pseudoRandom(7, 40 * BLOCK_SIZE);

  beforeAll(() => {
    ensureBuilt();
    work = tmp.make('paths');
    store = path.join(work, 'store');
    fs.writeFileSync(path.join(work, 'v.img'), data);
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'v', path.join(work, 'v.img')], { store }));
    segment = path.join(store, 'segments', fs.readdirSync(path.join(store, 'segments')).find((f) => f.endsWith('.seg'))!);
  });

  it('export onto a file of the store, named directly', () => {
    expectFailure(dormant(['export', 'v', segment], { store }),
      /refusing to export into '.*\.seg': it is inside the store directory/);
    expectFailure(dormant(['export', 'v', path.join(store, 'index', 'data.mdb')], { store }), /inside the store directory/);
    expectFailure(dormant(['export', 'v', path.join(store, 'new.raw')], { store }), /inside the store directory/);
    expectFailure(dormant(['export', 'v', path.join(store, 'segments', '..', '..', 'store', 'x.raw')], { store }),
      /inside the store directory/);
  });

  it('export through a symbolic link, also a dangling one', () => {
    const link = path.join(work, 'link.raw');
    fs.symlinkSync(segment, link);
    expectFailure(dormant(['export', 'v', link], { store }),
      new RegExp(`refusing to export into '${link}' \\(${segment}\\): it is inside the store directory`));
    const dangling = path.join(work, 'dangling.raw');
    fs.symlinkSync(path.join(store, 'segments', 'made-by-export'), dangling);
    expectFailure(dormant(['export', 'v', dangling], { store }), /inside the store directory/);
    expect(fs.existsSync(path.join(store, 'segments', 'made-by-export'))).toBe(false);
    const dirLink = path.join(work, 'store-link');
    fs.symlinkSync(store, dirLink);
    expectFailure(dormant(['export', 'v', path.join(dirLink, 'segments', path.basename(segment))], { store }),
      /inside the store directory/);
  });

  it('export onto a hard link of a segment file', () => {
    const hard = path.join(work, 'hard.raw');
    fs.linkSync(segment, hard);
    expectFailure(dormant(['export', 'v', hard], { store }),
      /refusing to export into '.*hard\.raw': it is a hard link to a file of the store/);
  });

  it('export into a bind mount of the store\'s segments', () => {
    const bind = path.join(work, 'bind');
    fs.mkdirSync(bind);
    execFileSync('mount', ['--bind', path.join(store, 'segments'), bind]);
    try {
      expectFailure(dormant(['export', 'v', path.join(bind, path.basename(segment))], { store }),
        /refusing to export into .*: (its directory is a directory of the store|it is a hard link to a file of the store)/);
      expectFailure(dormant(['export', 'v', path.join(bind, 'new.raw')], { store }), /its directory is a directory of the store/);
    } finally {
      execFileSync('umount', [bind]);
    }
  });

  it('import from the store directory, a link to it, or a hard link', () => {
    expectFailure(dormant(['import', 'w', segment], { store }), /refusing to import from '.*\.seg': it is inside the store directory/);
    expectFailure(dormant(['import', 'w', path.join(work, 'link.raw')], { store }), /refusing to import from .*inside the store directory/);
    expectFailure(dormant(['import', 'w', path.join(work, 'hard.raw')], { store }),
      /refusing to import from .*hard link to a file of the store/);
    expect(dormant(['info', 'w'], { store }).status).toBe(1);
  });

  it('the store is intact afterwards', () => {
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/no damage found\nstore is consistent\n$/);
    const out = path.join(work, 'v.raw');
    expectOk(dormant(['export', 'v', out], { store }));
    expect(fs.readFileSync(out).equals(data)).toBe(true);
  });

  it('an existing target outside the store is replaced whole, keeping its mode, with no temporary file left', () => {
    const dir = tmp.make('paths-out');
    const out = path.join(dir, 'old.raw');
    fs.writeFileSync(out, Buffer.alloc(100 * BLOCK_SIZE, 0xee));
    fs.chmodSync(out, 0o640);
    expectOk(dormant(['export', 'v', out], { store }));
    expect(fs.readFileSync(out).equals(data)).toBe(true);
    expect(fs.statSync(out).mode & 0o777).toBe(0o640);
    expect(fs.readdirSync(dir)).toEqual(['old.raw']);
  });

  it('a new export takes the user\'s umask, not the store\'s', () => {
    const dir = tmp.make('paths-umask');
    for (const [umask, mode] of [['000', 0o666], ['027', 0o640]] as const) {
      const out = path.join(dir, `v-${umask}.raw`);
      const r = dormantWithUmask(umask, store, ['export', 'v', out]);
      expect(r.status, r.stderr).toBe(0);
      expect(fs.statSync(out).mode & 0o777).toBe(mode);
    }
  });
});
