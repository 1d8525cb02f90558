/**
 * Who may use the FUSE view: by default only the daemon's user (another
 * user gets EACCES); with `dormant mount --allow-other` others may read it,
 * and only read.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { dormant, expectOk } from '../helpers/cli.js';
import { shAsNobody } from '../helpers/cli-as.js';
import { cleanupMounts, startDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';
import { VIEW_DATA, VIEW_OTHER, makeViewStore } from '../helpers/view-store.js';

const tmp = new TempDirs();
const data = VIEW_DATA;
const other = VIEW_OTHER;
const makeStore = (prefix: string) => makeViewStore(tmp, prefix);

afterAll(async () => {
  await cleanupMounts();
  tmp.cleanup();
});

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
