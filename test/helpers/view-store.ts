/**
 * Shared set-up of the FUSE tests that look at the view from outside: a
 * store in a directory other users may traverse, holding `v` (VIEW_DATA)
 * and `w` (VIEW_OTHER), with a mount point beside it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { dormant, expectOk } from './cli.js';
import { pseudoRandom } from './data.js';
import type { TempDirs } from './tmp.js';

export const VIEW_DATA = pseudoRandom(11, 64 * BLOCK_SIZE);
export const VIEW_OTHER = pseudoRandom(12, 64 * BLOCK_SIZE);

/** Makes the store in a new temp dir of `tmp`; returns the dir, the store and the mount point. */
export function makeViewStore(tmp: TempDirs, prefix: string): { work: string; store: string; mnt: string } {
  const work = tmp.make(prefix);
  fs.chmodSync(work, 0o755);
  const store = path.join(work, 'store');
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt, { mode: 0o755 });
  fs.writeFileSync(path.join(work, 'v.img'), VIEW_DATA);
  fs.writeFileSync(path.join(work, 'w.img'), VIEW_OTHER);
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['import', 'v', path.join(work, 'v.img')], { store }));
  expectOk(dormant(['import', 'w', path.join(work, 'w.img')], { store }));
  return { work, store, mnt };
}
