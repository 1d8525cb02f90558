/**
 * Who may use the FUSE view: by default only the daemon's user (another
 * user gets EACCES); with `dormant mount --allow-other` others may read it,
 * and only read.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { dormant, expectOk } from '../helpers/cli.js';
import { shAsNobody } from '../helpers/cli-as.js';
import { pseudoRandom } from '../helpers/data.js';
import { cleanupMounts, startDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const data = pseudoRandom(11, 64 * BLOCK_SIZE);
const other = pseudoRandom(12, 64 * BLOCK_SIZE);

afterAll(async () => {
  await cleanupMounts();
  tmp.cleanup();
});

/** A store in a directory other users may traverse, holding `v` (data) and `w` (other); with a mount point. */
function makeStore(prefix: string): { work: string; store: string; mnt: string } {
  const work = tmp.make(prefix);
  fs.chmodSync(work, 0o755);
  const store = path.join(work, 'store');
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt, { mode: 0o755 });
  fs.writeFileSync(path.join(work, 'v.img'), data);
  fs.writeFileSync(path.join(work, 'w.img'), other);
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['import', 'v', path.join(work, 'v.img')], { store }));
  expectOk(dormant(['import', 'w', path.join(work, 'w.img')], { store }));
  return { work, store, mnt };
}

describe('who may use the view', () => {
  it('only the daemon\'s user by default', async () => {
    const { store, mnt } = makeStore('view-own');
    const daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt], /FUSE on /);
    try {
      expect(fs.readdirSync(path.join(mnt, 'volumes')).sort()).toEqual(['v', 'w']);
      const r = shAsNobody(`ls ${mnt}/volumes`);
      expect(r.status).not.toBe(0);
      expect(r.stderr).toMatch(/Permission denied/);
      expect(shAsNobody(`head -c 4096 ${mnt}/volumes/v`).status).not.toBe(0);
    } finally {
      await daemon.stop();
    }
  });

  it('dormant mount --allow-other: others may read, not write', async () => {
    const { store, mnt } = makeStore('view-other');
    const daemon = await startDaemon(store, mnt, ['mount', '--allow-other', mnt], /dormant mount: store /);
    try {
      const ls = shAsNobody(`ls ${mnt}/volumes`);
      expect(ls.stderr).toBe('');
      expect(ls.stdout.toString().trim().split('\n').sort()).toEqual(['v', 'w']);
      const read = shAsNobody(`cat ${mnt}/volumes/v`);
      expect(read.status).toBe(0);
      expect(read.stdout.equals(data)).toBe(true);
      const write = shAsNobody(`printf x | dd of=${mnt}/volumes/v conv=notrunc status=none`);
      expect(write.status).not.toBe(0);
      expect(write.stderr).toMatch(/Permission denied/);
    } finally {
      await daemon.stop();
    }
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/no damage found/);
    const out = path.join(path.dirname(store), 'v.raw');
    expectOk(dormant(['export', 'v', out], { store }));
    expect(fs.readFileSync(out).equals(data)).toBe(true);
  });
});
