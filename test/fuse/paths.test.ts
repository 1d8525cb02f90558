/**
 * While `dormant serve --mount DIR` runs, import and export (through the
 * daemon's control socket) refuse paths in its FUSE view, directly or
 * through a symbolic link, and paths in the store directory (which once
 * killed the daemon with SIGBUS); the daemon keeps serving and the data is
 * intact afterwards (`check --data`, exports byte for byte).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, expectFailure, expectOk } from '../helpers/cli.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
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

describe('import and export next to a served FUSE view', () => {
  let work: string;
  let store: string;
  let mnt: string;
  let daemon: MountDaemon;

  beforeAll(async () => {
    ({ work, store, mnt } = makeStore('view-paths'));
    daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt], /FUSE on /);
  });
  afterAll(async () => { await daemon?.stop().catch(() => undefined); });

  it('export into the view is refused, by its path and through a symbolic link', () => {
    expectFailure(dormant(['export', 'v', path.join(mnt, 'volumes', 'w')], { store }),
      new RegExp(`refusing to export into '${mnt}/volumes/w': it is inside the FUSE view of this store on ${mnt}`));
    const link = path.join(work, 'to-view');
    fs.symlinkSync(path.join(mnt, 'volumes', 'w'), link);
    expectFailure(dormant(['export', 'v', link], { store }),
      new RegExp(`refusing to export into '${link}' \\(${mnt}/volumes/w\\): it is inside the FUSE view`));
    expectFailure(dormant(['export', 'v', path.join(mnt, 'new.raw')], { store }), /inside the FUSE view/);
  });

  it('import from the view is refused', () => {
    expectFailure(dormant(['import', 'copy', path.join(mnt, 'volumes', 'v')], { store }),
      /refusing to import from '.*\/volumes\/v': it is inside the FUSE view of this store/);
  });

  it('export into the store directory through the daemon is refused (it used to die of SIGBUS)', () => {
    const seg = path.join(store, 'segments', fs.readdirSync(path.join(store, 'segments')).find((f) => f.endsWith('.seg'))!);
    expectFailure(dormant(['export', 'v', seg], { store }), /refusing to export into '.*\.seg': it is inside the store directory/);
    const hard = path.join(work, 'hard.raw');
    fs.linkSync(seg, hard);
    expectFailure(dormant(['export', 'v', hard], { store }), /hard link to a file of the store/);
  });

  it('the daemon still serves, and the data is intact', async () => {
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/no damage found\nstore is consistent\n$/);
    expect(fs.readFileSync(path.join(mnt, 'volumes', 'w')).equals(other)).toBe(true);
    expect(daemon.child.exitCode).toBeNull();
    expect((await daemon.stop()).code).toBe(0);
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/no damage found\nstore is consistent\n$/);
    for (const [name, want] of [['v', data], ['w', other]] as const) {
      const out = path.join(work, `${name}.raw`);
      expectOk(dormant(['export', name, out], { store }));
      expect(fs.readFileSync(out).equals(want), name).toBe(true);
    }
  });
});
