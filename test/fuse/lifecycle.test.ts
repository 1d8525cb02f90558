/**
 * Mount lifecycle. A `dormant mount` daemon killed with SIGKILL while a child writes through
 * a shared mapping: the next start finds the stale mount (ENOTCONN), cleans
 * it with fusermount -uz and says so, mounts again, and the store is
 * consistent (store.check() is empty). A live mount point is refused;
 * `serve --read-only --mount` makes every file read-only. Every child is bounded and killed in
 * afterAll; the mount point is lazily unmounted whatever happens.
 */
import fs from 'node:fs';
import path from 'node:path';
import { spawn } from 'node:child_process';
import { afterAll, describe, expect, it } from 'vitest';
import { Store } from '../../src/blockstore/index.js';
import { dormant, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, isMounted, MMAP_WRITER, startDaemon } from '../helpers/mount-daemon.js';

const tmp = new TempDirs();

afterAll(async () => {
  await cleanupMounts();
  tmp.cleanup();
});

describe('FUSE mount lifecycle: SIGKILL, busy mount point, read-only', () => {
  it('restart cleans the stale mount with a clear message; the store checks clean', async () => {
    const dir = tmp.make('fuse-crash');
    const store = path.join(dir, 'store');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    expectOk(dormant(['--store', store, 'init']));
    expectOk(dormant(['--store', store, 'create', 'vm-mem', '--size', '32M', '--kind', 'memory']));
    const first = await startDaemon(store, mnt, ['mount', mnt], /dormant mount: store /);

    // A writer dirtying scattered pages of a shared mapping, msync after each round.
    const script = path.join(dir, 'mmap-writer.py');
    fs.writeFileSync(script, MMAP_WRITER);
    const writer = spawn('python3', [script, path.join(mnt, 'volumes', 'vm-mem'), '13', 'loop'],
      { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    writer.stdout!.on('data', (d: Buffer) => { out += d.toString(); });
    const writerExit = new Promise<void>((resolve) => writer.once('exit', () => resolve()));
    const spawnError = new Promise<never>((_, reject) => writer.once('error', reject));
    await Promise.race([spawnError, new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error(`mmap writer made no progress: ${out}`)), 30_000);
      const poll = setInterval(() => {
        if ((out.match(/round/g) ?? []).length >= 2) { clearInterval(poll); clearTimeout(t); resolve(); }
      }, 20);
    })]);

    first.child.kill('SIGKILL');
    expect((await first.exited).signal).toBe('SIGKILL');
    // The writer faults on a dead connection (SIGBUS or an error); make sure it is gone.
    const t = setTimeout(() => writer.kill('SIGKILL'), 5_000);
    await writerExit;
    clearTimeout(t);
    expect(() => fs.statSync(mnt)).toThrow(expect.objectContaining({ code: 'ENOTCONN' }));

    const second = await startDaemon(store, mnt, ['mount', mnt], /dormant mount: store /);
    expect(second.stderr()).toMatch(/stale FUSE mount .*fusermount -uz/);
    expect(fs.readdirSync(path.join(mnt, 'volumes'))).toEqual(['vm-mem']);
    expect(fs.statSync(path.join(mnt, 'volumes', 'vm-mem')).size).toBe(32 * 1024 * 1024);
    expect(await second.stop()).toEqual({ code: 0, signal: null });
    expect(isMounted(mnt)).toBe(false);

    const s = await Store.open(store);
    try {
      expect(await s.check()).toEqual([]);
    } finally {
      await s.close();
    }
  });

  it('a live mount point is refused, not mounted over', async () => {
    const dir = tmp.make('fuse-busy');
    const storeA = path.join(dir, 'a');
    const storeB = path.join(dir, 'b');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    expectOk(dormant(['--store', storeA, 'init']));
    expectOk(dormant(['--store', storeB, 'init']));
    const a = await startDaemon(storeA, mnt, ['mount', mnt], /dormant mount: store /);
    const r = dormant(['--store', storeB, 'mount', mnt]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/already a mount point/);
    expect(await a.stop()).toEqual({ code: 0, signal: null });
  });

  it('serve --read-only --mount: volume files read but refuse writes with EROFS', async () => {
    const dir = tmp.make('fuse-ro');
    const store = path.join(dir, 'store');
    const mnt = path.join(dir, 'mnt');
    fs.mkdirSync(mnt);
    expectOk(dormant(['--store', store, 'init']));
    expectOk(dormant(['--store', store, 'create', 'v', '--size', '1M']));
    const d = await startDaemon(store, mnt, ['serve', '--no-tcp', '--read-only', '--mount', mnt], /FUSE on /);
    const file = path.join(mnt, 'volumes', 'v');
    expect(fs.readFileSync(file).equals(Buffer.alloc(1024 * 1024))).toBe(true);
    expect(() => fs.openSync(file, 'r+')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    expect(() => fs.truncateSync(file, 2 * 1024 * 1024)).toThrow(expect.objectContaining({ code: 'EROFS' }));
    expect(await d.stop()).toEqual({ code: 0, signal: null });
  });
});
