/**
 * A full disk, on a real file system: a small tmpfs mounted for this file
 * (the tests run as root) holds the store, `dormant serve --mount` runs on
 * it, and real clients fill it:
 *   - qemu-io writing over NBD until it fails gets ENOSPC ("No space left
 *     on device"), not EIO: the free-space floor refuses writes before the
 *     file system is full; reads keep working and flushed data stays;
 *   - dd writing through the FUSE view gets ENOSPC too;
 *   - with the file system then filled to the last byte by another file,
 *     `dormant rm` and `dormant gc` (through the daemon, and offline) work,
 *     each printing one line and nothing on stderr: the store releases its
 *     space reserve for them;
 *   - SIGTERM with a write still to flush on the full file system: exit 0,
 *     no stack, the write is there afterwards, and `dormant check` is clean.
 * The tmpfs is unmounted in afterAll whatever happens (the FUSE view and
 * the daemon are stopped first).
 */
import { execFile, execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as P from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/helpers.js';
import { dormant, expectFailure, expectOk } from '../helpers/cli.js';
import { cleanupMounts, startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
/** The tmpfs: floor 16 MiB (1/8) and reserve 8 MiB (1/16) by the defaults of space.ts. */
const FS_BYTES = 128 * MiB;
const tmp = new TempDirs();
let work = '';
let fsDir = '';
let store = '';
let mnt = '';
let daemon: MountDaemon | undefined;
/** Random data the tests write (on the ordinary disk, not the tmpfs). */
let data = '';
const fillers: string[] = [];

/** Runs a tool to its end, whatever its exit status (bounded). */
function runAny(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') { reject(err); return; } // could not start
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, stdout, stderr });
    });
  });
}

/** nbd+unix URI of `volume` on the daemon's socket. */
const uri = (volume: string) => `nbd+unix:///${volume}?socket=${path.join(store, 'nbd.sock')}`;

/** Bytes available on the tmpfs now. */
const available = () => { const st = fs.statfsSync(fsDir); return st.bavail * st.bsize; };

/** Fills the tmpfs to the last byte with a file of its own (not the store's); returns its path. */
function fillUp(): string {
  const file = path.join(fsDir, `filler-${fillers.length}`);
  fillers.push(file);
  const fd = fs.openSync(file, 'w');
  const chunk = Buffer.alloc(MiB, 0x5a);
  try {
    for (let size = MiB; size >= 4096; size /= 2) {
      for (;;) {
        try { fs.writeSync(fd, chunk, 0, size); } catch (err) {
          if ((err as NodeJS.ErrnoException).code === 'ENOSPC') break;
          throw err;
        }
      }
    }
  } finally {
    fs.closeSync(fd);
  }
  return file;
}

/**
 * Waits (bounded) until the daemon's stderr matches `re` (its lines reach
 * this process only when its event loop runs: not during a synchronous
 * CLI run).
 */
async function daemonSays(re: RegExp, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!re.test(daemon!.stderr()) && Date.now() < until) await new Promise((r) => setTimeout(r, 50));
  expect(daemon!.stderr()).toMatch(re);
}

/** No line of a stack trace in `text`. */
function expectNoStack(text: string): void {
  expect(text).not.toMatch(/^\s+at /m);
  expect(text).not.toMatch(/Unhandled|uncaught|triggerUncaughtException/i);
}

beforeAll(async () => {
  work = tmp.make('enospc');
  fsDir = path.join(work, 'fs');
  fs.mkdirSync(fsDir);
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${FS_BYTES}`, 'tmpfs', fsDir]);
  store = path.join(fsDir, 'store');
  mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt);
  data = path.join(work, 'random.bin');
  fs.writeFileSync(data, crypto.randomBytes(160 * MiB));
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['create', 'v', '--size', '256M'], { store }));
  daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, '--no-auto-page'], /FUSE on /);
});

afterAll(async () => {
  await daemon?.stop(30_000).catch(() => undefined);
  await cleanupMounts();
  try { execFileSync('umount', [fsDir]); } catch { try { execFileSync('umount', ['-l', fsDir]); } catch { /* not mounted */ } }
  tmp.cleanup();
});

describe('a full store', () => {
  it('over NBD: qemu-io gets ENOSPC before the file system is full; reads go on and flushed data stays', async () => {
    // 8 MiB acknowledged and flushed first.
    await tool('qemu-io', ['-f', 'raw', '-c', `write -s ${data} 0 8M`, '-c', 'flush', uri('v')]);
    // Then write until it fails: 150 MiB of new data do not fit in 128 MiB.
    const r = await runAny('qemu-io', ['-f', 'raw', '-c', `write -s ${data} 8M 150M`, uri('v')]);
    expect(r.code, r.stdout + r.stderr).not.toBe(0);
    expect(r.stdout + r.stderr).toMatch(/No space left on device/);
    expect(r.stdout + r.stderr).not.toMatch(/Input\/output error/);
    // Refused at the floor, not at the end of the file system.
    expect(available()).toBeGreaterThan(4 * MiB);
    await daemonSays(/store: .* under the floor: new writes get ENOSPC/);
    // Smaller writes go on until they too reach the floor; then a write of one block gets NBD_ENOSPC on the wire.
    const c = await RawClient.connect(path.join(store, 'nbd.sock'));
    try {
      await c.go('v');
      let at = 160 * MiB;
      let cookie = 10n;
      for (const size of [MiB, 64 * 1024, 4096]) {
        for (let i = 0; i < 64; i++, at += size) {
          c.request(P.NBD_CMD_WRITE, cookie++, at, size, 0, crypto.randomBytes(size));
          const { error } = await c.simpleReply();
          if (error === P.NBD_ENOSPC) break;
          expect(error).toBe(0);
        }
      }
      c.request(P.NBD_CMD_WRITE, 1n, 250 * MiB, 4096, 0, crypto.randomBytes(4096));
      expect((await c.simpleReply()).error).toBe(P.NBD_ENOSPC);
      expect(available()).toBeGreaterThan(4 * MiB);
      // Reads go on: the flushed 8 MiB read back as written.
      c.request(P.NBD_CMD_READ, 2n, 0, 8 * MiB);
      const got = await c.simpleReply(() => 8 * MiB);
      expect(got.error).toBe(0);
      const want = Buffer.alloc(8 * MiB);
      const fd = fs.openSync(data, 'r');
      fs.readSync(fd, want, 0, want.length, 0);
      fs.closeSync(fd);
      expect(got.data.equals(want)).toBe(true);
    } finally {
      c.socket.destroy();
    }
  });

  it('through FUSE: dd gets ENOSPC', async () => {
    const r = await runAny('dd', [`if=${data}`, `of=${path.join(mnt, 'volumes', 'v')}`, 'bs=1M', 'skip=100', 'seek=200',
      'count=50', 'conv=notrunc']);
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/No space left on device/);
  });

  it('rm and gc through the daemon work on a file system full to the last byte (the reserve is released)', async () => {
    fillUp();
    expect(available()).toBeLessThan(64 * 1024);
    // A catalog change and GC, on a full file system: one line each, nothing on stderr.
    expectOk(dormant(['create', 'gone', '--size', '1M'], { store }));
    const rm = expectOk(dormant(['rm', 'v'], { store }));
    expect(rm).toBe('removed v (run dormant gc to reclaim the space)\n');
    const gc = expectOk(dormant(['gc'], { store }));
    expect(gc.split('\n').filter(Boolean)).toHaveLength(1);
    expect(gc).toMatch(/^reclaimed \d/);
    // A deleted segment's space comes back once no read uses its descriptor or mapping any more
    // (a mapping a reply still views goes with the collector): soon, not always before gc returns.
    for (let i = 0; i < 150 && available() <= 64 * MiB; i++) await new Promise((r) => setTimeout(r, 100));
    expect(available()).toBeGreaterThan(64 * MiB);
    await daemonSays(/store: released the space reserve \(8\.0 MiB\)/);
    // Space back: the reserve is allocated again (it is re-created after GC).
    for (let i = 0; i < 50 && !fs.existsSync(path.join(store, 'reserve')); i++) await new Promise((r) => setTimeout(r, 100));
    expect(fs.statSync(path.join(store, 'reserve')).blocks * 512).toBeGreaterThanOrEqual(8 * MiB);
    await daemonSays(/store: space reserve re-created/);
  });

  it('SIGTERM with a write to flush on a full file system: exit 0, no stack; the write is there and check is clean', async () => {
    expectOk(dormant(['create', 'w', '--size', '64M'], { store }));
    const block = crypto.randomBytes(64 * 1024);
    const c = await RawClient.connect(path.join(store, 'nbd.sock'));
    await c.go('w');
    c.request(P.NBD_CMD_WRITE, 1n, 0, block.length, 0, block);
    expect((await c.simpleReply()).error).toBe(0); // acknowledged, not flushed
    fillUp();
    const exit = await daemon!.stop(60_000);
    c.socket.destroy();
    const log = daemon!.stderr();
    daemon = undefined;
    expect(exit, log).toEqual({ code: 0, signal: null });
    expectNoStack(log);
    expect(log).toMatch(/dormant serve: stopped\n/);
    // The flush needed room on the full file system: the reserve gave it.
    expect(log).toMatch(/store: released the space reserve \(8\.0 MiB\) to let a flush commit/);
    // Offline on the full file system: the write was flushed at shutdown.
    const out = path.join(work, 'w.raw');
    expectOk(dormant(['export', 'w', out], { store }));
    const fd = fs.openSync(out, 'r');
    const got = Buffer.alloc(block.length);
    fs.readSync(fd, got, 0, got.length, 0);
    fs.closeSync(fd);
    expect(got.equals(block)).toBe(true);
    expect(expectOk(dormant(['check'], { store }))).toBe('store is consistent\n');
  });

  it('offline: an import stops at the floor with ENOSPC; rm and gc work on a file system full to the last byte', async () => {
    for (const f of fillers.splice(0)) fs.rmSync(f);
    const small = path.join(work, 'small.bin');
    fs.writeFileSync(small, crypto.randomBytes(48 * MiB));
    expectOk(dormant(['import', 'big', small], { store }));
    // 160 MiB more do not fit: the import fails in one line, and leaves no volume behind.
    expectFailure(dormant(['import', 'big2', data], { store }), /no space left/, 2);
    fillUp();
    expect(available()).toBeLessThan(64 * 1024);
    expect(expectOk(dormant(['rm', 'big'], { store }))).toBe('removed big (run dormant gc to reclaim the space)\n');
    expect(expectOk(dormant(['gc'], { store }))).toMatch(/^reclaimed \d[^\n]*\n$/);
    expect(available()).toBeGreaterThan(40 * MiB);
    expect(expectOk(dormant(['check'], { store }))).toBe('store is consistent\n');
  });
});
