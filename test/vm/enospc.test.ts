/**
 * A VM on a full store: the test guest runs under `dormant serve --mount`
 * with its store on a small tmpfs (mounted here; the tests run as root).
 * Another volume is written over NBD until the store refuses writes
 * (its free-space floor); then a request that makes the guest write its
 * disk (/cgi-bin/status counts itself on the disk and syncs) gets
 * NBD_ENOSPC, and QEMU, with werror=enospc, pauses the guest instead of
 * failing the write in it:
 *   - `vm status` says `paused`, QEMU's status `io-error`, the disk `nospace`;
 *   - `vm resume` while the store is still full fails in one line (the
 *     guest is paused again at once);
 *   - after `dormant rm` + `dormant gc` of the other volume, `vm resume`
 *     continues the guest: the request that was waiting is answered, later
 *     ones count on, and after a restart of the VM the counter read from
 *     its disk goes on from there (nothing written before the pause, nor
 *     the write retried after it, was lost); `dormant check` is clean.
 *
 * Every QEMU pid seen is SIGKILLed in afterAll whatever the outcome, then
 * the daemon is stopped, the FUSE mount and the tmpfs unmounted.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import * as P from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/helpers.js';
import { dormant, expectFailure, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { CACHE, diskCounter, dormantAsync, sleep, vmStatus, waitHttp, type Status } from '../helpers/guest.js';

const MiB = 1024 * 1024;
/** The store's file system: floor 96 MiB (1/8), reserve 48 MiB (1/16) by the defaults of space.ts. */
const FS_BYTES = 768 * MiB;
const tmp = new TempDirs();
let fsDir = '';
let store = '';
let daemon: MountDaemon | undefined;
const qemuPids = new Set<number>();

/** What `vm status --json` adds about a pause. */
type PausedStatus = Status & { qemuStatus?: string; diskIoStatus?: string };
const status = () => vmStatus(store, 'vm1') as PausedStatus;

/** Waits (bounded) until `vm status` of vm1 satisfies `ok`; returns it. */
async function statusWhen(ok: (s: PausedStatus) => boolean, what: string, timeoutMs = 60_000): Promise<PausedStatus> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const s = status();
    if (ok(s)) return s;
    if (Date.now() > end) throw new Error(`vm1 not ${what} within ${timeoutMs / 1000} s: ${JSON.stringify(s)}`);
    await sleep(500);
  }
}

/** Writes fresh random data into volume `name` over NBD until the store answers ENOSPC to a write of one block. */
async function fillStore(name: string): Promise<number> {
  const c = await RawClient.connect(path.join(store, 'nbd.sock'));
  let written = 0;
  try {
    const { size } = await c.go(name);
    let at = 0;
    let cookie = 1n;
    for (const chunk of [MiB, 64 * 1024, 4096]) {
      for (; at + chunk <= size; at += chunk) {
        c.request(P.NBD_CMD_WRITE, cookie++, at, chunk, 0, crypto.randomBytes(chunk));
        const { error } = await c.simpleReply();
        if (error === P.NBD_ENOSPC) break;
        expect(error).toBe(0);
        written += chunk;
      }
    }
    c.request(P.NBD_CMD_WRITE, cookie++, size - 4096, 4096, 0, crypto.randomBytes(4096));
    expect((await c.simpleReply()).error, 'the store refuses a write of one block').toBe(P.NBD_ENOSPC);
  } finally {
    c.socket.destroy();
  }
  return written;
}

describe('a VM whose disk gets ENOSPC from a full store', () => {
  beforeAll(async () => {
    const work = tmp.make('e2e-enospc');
    fsDir = path.join(work, 'fs');
    fs.mkdirSync(fsDir);
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${FS_BYTES}`, 'tmpfs', fsDir]);
    store = path.join(fsDir, 'store');
    const mnt = path.join(work, 'mnt');
    fs.mkdirSync(mnt);
    expectOk(dormant(['init'], { store }));
    await dormantAsync(['--store', store, 'image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 200_000);
    daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, '--no-auto-page'], /FUSE on /);
    expectOk(dormant(['vm', 'create', 'vm1', '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE], { store }));
    expectOk(dormant(['create', 'filler', '--size', '1G'], { store }));
  }, 300_000);

  afterAll(async () => {
    for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    await daemon?.stop(60_000).catch(() => undefined);
    await cleanupMounts();
    try { execFileSync('umount', [fsDir]); } catch { try { execFileSync('umount', ['-l', fsDir]); } catch { /* not mounted */ } }
    tmp.cleanup();
  });

  it('pauses (io-error, nospace) instead of failing the write in the guest; resumes once space is freed, its disk intact', async () => {
    expectOk(dormant(['vm', 'start', 'vm1'], { store }));
    const s0 = status();
    qemuPids.add(s0.pid!);
    await waitHttp(store, 'vm1', s0.hostPort!);
    const before = await diskCounter(store, 'vm1');

    // The store fills up (another volume), up to its floor.
    expect(await fillStore('filler')).toBeGreaterThan(64 * MiB);

    // A request that writes the guest's disk: the write gets ENOSPC and QEMU pauses the guest, so the
    // answer waits (it comes after the resume below).
    const pending = fetch(`http://127.0.0.1:${s0.hostPort}/cgi-bin/status`, { signal: AbortSignal.timeout(240_000) })
      .then((r) => r.text());
    pending.catch(() => undefined);
    const paused = await statusWhen((s) => s.state === 'paused', 'paused');
    expect(paused).toMatchObject({ state: 'paused', qemuStatus: 'io-error', diskIoStatus: 'nospace' });
    expect(paused.reason).toMatch(/ENOSPC/);
    expect(expectOk(dormant(['vm', 'status', 'vm1'], { store }))).toMatch(/^state: +paused \(io-error: a disk write got ENOSPC/m);
    expect(daemon!.stderr()).toMatch(/store: .* under the floor: new writes get ENOSPC/);

    // Still full: the guest is paused again at once, and says so.
    expectFailure(dormant(['vm', 'resume', 'vm1'], { store }), /paused again at once .*ENOSPC/, 2);
    expect(status().state).toBe('paused');

    // Space freed: the other volume removed and collected.
    expect(expectOk(dormant(['rm', 'filler'], { store }))).toBe('removed filler (run dormant gc to reclaim the space)\n');
    expect(expectOk(dormant(['gc'], { store }))).toMatch(/^reclaimed \d/);
    expect(expectOk(dormant(['vm', 'resume', 'vm1'], { store }))).toBe('VM vm1: running\n');
    const resumed = status();
    expect(resumed.state).toBe('running');
    expect(resumed.qemuStatus).toBeUndefined();

    // The request that waited through the pause is answered, and the disk counts on.
    const answered = /^counter: (\d+)$/m.exec(await pending);
    expect(answered, 'the request made before the pause').not.toBeNull();
    expect(Number(answered![1])).toBe(before + 1);
    expect(await diskCounter(store, 'vm1')).toBe(before + 2);

    // From the disk: a restart reads the counter back (and counts the boot).
    expectOk(dormant(['vm', 'stop', 'vm1'], { store }));
    expectOk(dormant(['vm', 'start', 'vm1'], { store }));
    const s1 = status();
    qemuPids.add(s1.pid!);
    await waitHttp(store, 'vm1', s1.hostPort!);
    expect(await diskCounter(store, 'vm1')).toBe(before + 4); // +1 boot, +1 this request
    expectOk(dormant(['vm', 'stop', 'vm1'], { store }));
    expect(expectOk(dormant(['check'], { store }))).toBe('store is consistent\n');
  }, 600_000);
});
