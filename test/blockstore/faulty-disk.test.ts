/**
 * A disk that fails writes, under a real file system: nbdkit's memory
 * plugin behind its `error` filter (every write fails with EIO while a
 * trigger file exists), shown as a file by nbdfuse, attached to a loop
 * device, formatted ext4 (no journal, errors=continue, so the file system
 * goes on after an I/O error) and mounted; the store lives there and
 * `dormant serve` serves it. With the trigger in place:
 *   - a write acknowledged and flushed before stays, and reads back after
 *     the file system is unmounted, checked and mounted again (from the
 *     disk, not the page cache);
 *   - a FUA write (its answer is the flush's) made while the disk fails
 *     gets EIO, and so does every later one once the disk works again (the
 *     kernel may have dropped the pages it could not write, and reports
 *     that only once: nothing may be committed that points at them);
 *   - SIGTERM: one line saying the final flush failed and what is lost,
 *     exit 2, no stack; the store opens afterwards consistent, and the
 *     failed write's blocks read as they were before it (holes), never as
 *     a checksum error.
 * Everything is undone in afterAll whatever happens: the daemon, the
 * mount, the loop device, nbdfuse and nbdkit.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as P from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/helpers.js';
import { dormant, expectOk } from '../helpers/cli.js';
import { startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const tmp = new TempDirs();
let work = '';
let trigger = '';
let fuseDir = '';
let fsDir = '';
let store = '';
let loop = '';
let mounted = false;
const children: ChildProcess[] = [];
let daemon: MountDaemon | undefined;
/** Written and flushed before the disk fails. */
const before = crypto.randomBytes(4 * MiB);
/** Written while it fails. */
const during = crypto.randomBytes(4 * MiB);

/** Runs a tool to its end, whatever its exit status (bounded). */
function runAny(cmd: string, args: string[], timeoutMs = 60_000): Promise<{ code: number; out: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * MiB }, (err, stdout, stderr) => {
      if (err && typeof (err as NodeJS.ErrnoException).code === 'string') { reject(err); return; } // could not start
      resolve({ code: err ? Number((err as { code?: number }).code ?? 1) : 0, out: stdout + stderr });
    });
  });
}

/** Waits (bounded) until `ok()` holds. */
async function until(ok: () => boolean, what: string, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!ok()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Starts a helper process that runs until afterAll (a missing tool fails
 * the test). Its stderr goes to a file: nbdkit logs every error it
 * injects, and a pipe nobody reads while this process waits for a
 * synchronous tool would stop it, and the disk with it.
 */
function startChild(cmd: string, args: string[]): ChildProcess {
  const logFile = path.join(work, `${cmd}.log`);
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', fs.openSync(logFile, 'w')] });
  c.once('error', (e) => { process.stderr.write(`${cmd}: ${e.message}\n`); });
  c.once('exit', (code) => { if (code) process.stderr.write(`${cmd} exited ${code}: ${fs.readFileSync(logFile, 'utf8')}\n`); });
  children.push(c);
  return c;
}

const uri = () => `nbd+unix:///v?socket=${path.join(store, 'nbd.sock')}`;

/** The first `n` bytes of volume v through the daemon's NBD export. */
async function readOverNbd(n: number): Promise<Buffer> {
  const out = path.join(work, `read-${crypto.randomBytes(4).toString('hex')}.raw`);
  await tool('nbdcopy', [uri(), out]);
  const got = fs.readFileSync(out).subarray(0, n);
  fs.rmSync(out);
  return got;
}

beforeAll(async () => {
  work = tmp.make('faulty');
  trigger = path.join(work, 'fail-writes');
  const sock = path.join(work, 'nbdkit.sock');
  startChild('nbdkit', ['-f', '--exit-with-parent', '-U', sock, '--filter=error', 'memory', '256M',
    'error=EIO', 'error-pwrite-rate=100%', `error-pwrite-file=${trigger}`]);
  await until(() => fs.existsSync(sock), 'nbdkit');
  fuseDir = path.join(work, 'nbdfuse');
  fs.mkdirSync(fuseDir);
  startChild('nbdfuse', [path.join(fuseDir, 'disk'), '--unix', sock]);
  await until(() => fs.existsSync(path.join(fuseDir, 'disk')), 'nbdfuse');
  loop = execFileSync('losetup', ['-f', '--show', path.join(fuseDir, 'disk')], { encoding: 'utf8' }).trim();
  execFileSync('mke2fs', ['-q', '-t', 'ext4', '-O', '^has_journal', loop]);
  fsDir = path.join(work, 'fs');
  fs.mkdirSync(fsDir);
  execFileSync('mount', ['-o', 'errors=continue', loop, fsDir]);
  mounted = true;
  store = path.join(fsDir, 'store');
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['create', 'v', '--size', '64M'], { store }));
  fs.writeFileSync(path.join(work, 'before.bin'), before);
  const unused = path.join(work, 'no-mount');
  fs.mkdirSync(unused);
  daemon = await startDaemon(store, unused, ['serve', '--no-tcp'], /control socket /);
});

afterAll(async () => {
  fs.rmSync(trigger, { force: true });
  await daemon?.stop(30_000).catch(() => undefined);
  if (mounted) { try { execFileSync('umount', [fsDir]); } catch { try { execFileSync('umount', ['-l', fsDir]); } catch { /* gone */ } } }
  if (loop) { try { execFileSync('losetup', ['-d', loop]); } catch { /* gone */ } }
  try { execFileSync('fusermount3', ['-u', fuseDir]); } catch { try { execFileSync('fusermount3', ['-uz', fuseDir]); } catch { /* gone */ } }
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGTERM');
  tmp.cleanup();
});

describe('a disk that fails writes under the store', () => {
  it('a flushed write stays; a flush while the disk fails, and every later one, gets EIO', async () => {
    await tool('qemu-io', ['-f', 'raw', '-c', `write -s ${path.join(work, 'before.bin')} 0 4M`, '-c', 'flush', uri()]);
    fs.writeFileSync(trigger, '');
    // A FUA write: acknowledged only once flushed, so its answer is the flush's. The
    // client then goes without a flush of its own: the next one comes once the disk works again.
    const c = await RawClient.connect(path.join(store, 'nbd.sock'));
    try {
      await c.go('v');
      c.request(P.NBD_CMD_WRITE, 1n, 8 * MiB, during.length, P.NBD_CMD_FLAG_FUA, during);
      expect((await c.simpleReply()).error).toBe(P.NBD_EIO);
    } finally {
      c.socket.destroy();
    }
    fs.rmSync(trigger);
    // The disk works again, but what it lost is lost: flushes keep failing.
    const again = await runAny('qemu-io', ['-f', 'raw', '-c', 'write -f -P 0x11 60M 4k', uri()]);
    expect(again.code, again.out).not.toBe(0);
    expect(again.out).toMatch(/write failed: Input\/output error/);
    // Reads go on.
    expect((await readOverNbd(4 * MiB)).equals(before)).toBe(true);
  });

  it('SIGTERM: one line about the final flush, exit 2, no stack', async () => {
    const exit = await daemon!.stop(60_000);
    const log = daemon!.stderr();
    daemon = undefined;
    expect(exit, log).toEqual({ code: 2, signal: null });
    expect(log).not.toMatch(/^\s+at /m);
    const lines = log.split('\n').filter((l) => /closing the store/.test(l));
    expect(lines, log).toHaveLength(1);
    expect(lines[0]).toMatch(/the final flush failed: .*(EIO|I\/O error).*are lost/);
    expect(log).toMatch(/dormant serve: stopped, with 1 problem above\n/);
  });

  it('from the disk again: the flushed write is intact, the failed one left no trace, check is clean', async () => {
    fs.rmSync(trigger, { force: true });
    execFileSync('umount', [fsDir]);
    mounted = false;
    // Writes that failed may have left the file system's own metadata behind: e2fsck repairs it (exit 1: fixed).
    try { execFileSync('e2fsck', ['-fy', loop], { stdio: 'ignore' }); } catch (err) {
      expect((err as { status?: number }).status, 'e2fsck exit status').toBeLessThanOrEqual(1);
    }
    execFileSync('mount', ['-o', 'errors=continue', loop, fsDir]);
    mounted = true;
    const out = path.join(work, 'v.raw');
    expectOk(dormant(['export', 'v', out], { store }));
    const got = fs.readFileSync(out);
    expect(got.subarray(0, 4 * MiB).equals(before)).toBe(true);
    expect(got.subarray(8 * MiB, 12 * MiB).equals(Buffer.alloc(4 * MiB))).toBe(true);
    expect(got.subarray(60 * MiB, 60 * MiB + 4096).equals(Buffer.alloc(4096))).toBe(true);
    expect(expectOk(dormant(['check'], { store }))).toBe('store is consistent\n');
  });
});
