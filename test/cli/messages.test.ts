/**
 * Errors said as what they are:
 *  - a user who may not use the daemon's control socket is told so, with
 *    how to fix it, not "store is locked by another process"; one who may
 *    not enter the store directory too;
 *  - sizes beyond 1 PiB (a flag, an imported file) name the limit.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { dormantAsNobody } from '../helpers/cli-as.js';
import { cleanupMounts, startDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(async () => {
  await cleanupMounts();
  tmp.cleanup();
});

/** A fresh store with volume `v` in a directory other users may traverse. */
function freshStore(prefix: string): { work: string; store: string } {
  const work = tmp.make(prefix);
  fs.chmodSync(work, 0o711);
  const store = path.join(work, 'store');
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['create', 'v', '--size', '1M'], { store }));
  return { work, store };
}

beforeAll(() => ensureBuilt());

describe('permission denied is said as such', () => {
  it('on the daemon\'s control socket, and on the store directory', async () => {
    const { work, store } = freshStore('eacces');
    const daemon = await startDaemon(store, path.join(work, 'no-mount'), ['serve', '--no-tcp'], /dormant serve: store /);
    try {
      fs.chmodSync(store, 0o711); // others may reach control.sock (mode 0600) but not use it
      const line = expectFailure(dormantAsNobody(store, ['list']), new RegExp(
        'permission denied on the daemon\'s control socket .*control\\.sock \\(owned by uid 0, mode 600\\): '
        + 'run dormant as the user the daemon runs as, or root'));
      expect(line).not.toMatch(/locked/);
      fs.chmodSync(store, 0o700);
      expectFailure(dormantAsNobody(store, ['list']),
        /permission denied on the store directory .*store \(owned by uid 0, mode 700\): run dormant as the store's owner, or root/);
      expect(JSON.parse(expectOk(dormant(['list', '--json'], { store }))).volumes.map((v: { name: string }) => v.name)).toEqual(['v']);
    } finally {
      fs.chmodSync(store, 0o700);
      await daemon.stop();
    }
  });
});

describe('sizes beyond 1 PiB name the limit', () => {
  let store: string;
  beforeAll(() => { ({ store } = freshStore('pib')); });

  it('--size 99999P', () => {
    expectFailure(dormant(['create', 'huge', '--size', '99999P'], { store }), /bad size '99999P': more than the 1 PiB limit of a volume/);
    expectFailure(dormant(['create', 'huge', '--size', '1025T'], { store }), /bad size '1025T': more than the 1 PiB limit of a volume/);
    expectOk(dormant(['create', 'max', '--size', '1P'], { store }));
  });

  it('import of a sparse file beyond 1 PiB', () => {
    const big = path.join('/dev/shm', `dormant-pib-${process.pid}.img`);
    fs.writeFileSync(big, '');
    try {
      fs.truncateSync(big, 2 ** 51); // tmpfs holds a sparse file this big
      expectFailure(dormant(['import', 'huge', big], { store }),
        new RegExp(`'${big}' is 2251799813685248 bytes: larger than the 1 PiB limit of a volume`));
    } finally {
      fs.rmSync(big, { force: true });
    }
    expect(dormant(['info', 'huge'], { store }).status).toBe(1);
  });
});
