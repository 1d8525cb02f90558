/**
 * The single-writer lock: while one process owns a store, another open
 * fails with ELOCKED naming the owner's pid, in another process or in the
 * same one. An owner killed with SIGKILL leaves no stale lock: the store
 * opens at once, and what the owner had flushed is there.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { DormantError, Store } from '../../src/blockstore/index.js';
import { dormant, expectFailure, expectOk } from '../helpers/cli.js';
import { firstDiff } from '../helpers/data.js';
import { holderData, holdStore, killAll, tryOpenElsewhere } from '../helpers/process.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const stores: Store[] = [];
afterEach(async () => {
  await killAll();
  for (const s of stores.splice(0)) await s.close();
});
afterAll(() => tmp.cleanup());

async function newStore(): Promise<string> {
  const dir = path.join(tmp.make('lock'), 'store');
  await (await Store.init(dir)).close();
  return dir;
}

async function openError(dir: string): Promise<DormantError> {
  const err = await Store.open(dir).then((s) => { stores.push(s); return null; }, (e: unknown) => e);
  expect(err, 'open must fail').toBeInstanceOf(DormantError);
  return err as DormantError;
}

describe('store lock', () => {
  it('a second open in another process fails with ELOCKED naming the owner pid', async () => {
    const dir = await newStore();
    const owner = await holdStore(dir);
    expect(fs.readFileSync(path.join(dir, 'lock.pid'), 'utf8')).toBe(`${owner.pid}\n`);

    // From this (test) process...
    const err = await openError(dir);
    expect(err.code).toBe('ELOCKED');
    expect(err.message).toContain(`is locked by another process (pid ${owner.pid})`);
    // ...from a third process...
    const other = await tryOpenElsewhere(dir);
    expect(other).toEqual({ ok: false, code: 'ELOCKED', message: expect.stringContaining(`(pid ${owner.pid})`) });
    // ...and from the CLI: a user error, one line.
    expectFailure(dormant(['list'], { store: dir }), new RegExp(`locked by another process \\(pid ${owner.pid}\\)`));
    // The failed attempts did not disturb the owner's pid file.
    expect(fs.readFileSync(path.join(dir, 'lock.pid'), 'utf8')).toBe(`${owner.pid}\n`);
  });

  it('after the owner is killed with SIGKILL the store opens at once, with its flushed data', async () => {
    const dir = await newStore();
    const owner = await holdStore(dir, { name: 'v', seed: 5 });
    expect((await openError(dir)).code).toBe('ELOCKED');
    const exit = await owner.kill('SIGKILL');
    expect(exit.signal).toBe('SIGKILL');
    // The dead owner's pid file is still there; it must not matter.
    expect(fs.existsSync(path.join(dir, 'lock.pid'))).toBe(true);

    const started = Date.now();
    const s = await Store.open(dir);
    stores.push(s);
    expect(Date.now() - started, 'no waiting for a stale lock').toBeLessThan(5000);
    expect(fs.readFileSync(path.join(dir, 'lock.pid'), 'utf8')).toBe(`${process.pid}\n`);
    const h = await s.openVolume('v');
    expect(firstDiff(await h.read(0, 16 * 4096), holderData(5))).toBeNull();
    await h.close();
    // Now this process owns it: another process is refused, naming us.
    const other = await tryOpenElsewhere(dir);
    expect(other).toMatchObject({ ok: false, code: 'ELOCKED' });
    expect(other.message).toContain(`(pid ${process.pid})`);
  });

  it('owners killed one after another leave no lock behind', async () => {
    const dir = await newStore();
    for (let round = 0; round < 3; round++) {
      const owner = await holdStore(dir, { name: 'v', seed: round });
      await owner.kill('SIGKILL');
    }
    // The last owner's flushed writes are what the store holds.
    const out = path.join(tmp.make('export'), 'v.img');
    expectOk(dormant(['export', 'v', out], { store: dir }));
    expect(firstDiff(fs.readFileSync(out), holderData(2))).toBeNull();
  });

  it('a second open in the same process fails cleanly and leaves the first working', async () => {
    const dir = await newStore();
    const first = await Store.open(dir);
    stores.push(first);
    const err = await openError(dir);
    expect(err.code).toBe('ELOCKED');
    expect(err.message).toContain(`(pid ${process.pid})`);
    // Store.init on an existing store is refused too, before any lock.
    const initErr = await Store.init(dir).then(() => null, (e: unknown) => e);
    expect(initErr).toMatchObject({ code: 'EEXIST' });

    await first.createVolume('v', 8192);
    const h = await first.openVolume('v');
    await h.write(0, Buffer.alloc(8192, 7));
    await h.flush();
    await h.close();
    expect(fs.readFileSync(path.join(dir, 'lock.pid'), 'utf8')).toBe(`${process.pid}\n`);

    // Once closed, the store opens again in this process, with the data.
    await first.close();
    stores.splice(stores.indexOf(first), 1);
    expect(fs.existsSync(path.join(dir, 'lock.pid')), 'close removes the pid file').toBe(false);
    const again = await Store.open(dir);
    stores.push(again);
    const h2 = await again.openVolume('v');
    expect((await h2.read(0, 8192)).equals(Buffer.alloc(8192, 7))).toBe(true);
    await h2.close();
  });
});
