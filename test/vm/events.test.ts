/**
 * What QEMU tells the supervisor, with real guests (the test guest of
 * test/vm/boot.test.ts): `vm console` reaches the shell the guest runs on
 * its serial line (a command typed in is run, its output comes back, and
 * `vm log` has it too; through pipes, and on a pty where Ctrl-] detaches);
 * `vm pause` shows `paused` with the reason (QMP STOP) and the guest stops
 * answering HTTP, `vm resume` brings it back (RESUME); `poweroff -f` typed
 * into the console shows `stopped` with QEMU's reason (SHUTDOWN
 * guest-shutdown); a panic reported through the pvpanic device shows
 * `crashed` (GUEST_PANICKED, SHUTDOWN guest-panic); a guest whose kernel
 * panics at once (no rdinit, no root driver) shows `crashed` with the
 * panic line, not `running`, its QEMU is made to quit, and its
 * `on-failure` policy sees the panic. The console and QMP sockets are
 * 0600; `vm console` of a VM that does not run exits 1 in one line.
 *
 * Every QEMU pid seen is SIGKILLed in afterAll, then the daemon is
 * stopped, the mount lazily unmounted and temp dirs removed. Every wait is
 * bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cliEnv, dormant, expectFailure, expectOk } from '../helpers/cli.js';
import type { MountDaemon } from '../helpers/mount-daemon.js';
import {
  BOOT_TIMEOUT_MS, CACHE, sleep, startVmDaemon, tearDownVms, vmStatus, waitHttp, type Status,
} from '../helpers/guest.js';
import { TempDirs } from '../helpers/tmp.js';
import { readVm, writeVm } from '../../src/vm/index.js';

const tmp = new TempDirs();
let store = '';
let daemon: MountDaemon | undefined;
const qemuPids = new Set<number>();
const status = (vm: string): Status & { qemuStatus?: string } => vmStatus(store, vm);

/** `vm console <vm>` with pipes: what it printed so far, a way to type, and its exit. */
function openConsole(vm: string): { child: ChildProcess; out: () => string; type: (s: string) => void; exit: Promise<number | null> } {
  const child = spawn(process.execPath, [BIN, '--store', store, 'vm', 'console', vm], { env: cliEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  child.stdout!.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  child.stderr!.on('data', (d: Buffer) => { out += d.toString('latin1'); });
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, out: () => out, type: (s) => child.stdin!.write(s), exit };
}

/** Waits (bounded) until `pred` holds of `vm`'s status; returns the last status. */
async function until(vm: string, pred: (s: Status & { qemuStatus?: string }) => boolean, timeoutMs: number): Promise<Status & { qemuStatus?: string }> {
  const end = Date.now() + timeoutMs;
  let s = status(vm);
  while (!pred(s) && Date.now() < end) { await sleep(200); s = status(vm); }
  return s;
}

/** Waits (at most 10 s: the daemon's stderr is read as the event loop turns) until the daemon has logged a line matching `re`. */
async function logged(re: RegExp): Promise<void> {
  for (let i = 0; i < 50 && !re.test(daemon!.stderr()); i++) await sleep(200);
  expect(daemon!.stderr()).toMatch(re);
}

const gone = (pid: number) => { try { process.kill(pid, 0); return false; } catch { return true; } };

describe('QMP events and the serial console', () => {
  beforeAll(async () => {
    ({ store, daemon } = await startVmDaemon(tmp, 'e2e-events'));
  }, 240_000);

  afterAll(() => tearDownVms(qemuPids, daemon, tmp));

  it('vm console reaches the guest\'s shell on its serial line; vm log still has what the guest printed', async () => {
    expectOk(dormant(['vm', 'create', 'c', '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE], { store }));
    expectFailure(dormant(['vm', 'console', 'c'], { store }), /^dormant: VM 'c' is not running \(state stopped\): start it with dormant vm start c$/);
    expectFailure(dormant(['vm', 'console', 'nosuch'], { store }), /unknown VM 'nosuch'/);
    expectOk(dormant(['vm', 'start', 'c'], { store }));
    const s = status('c');
    qemuPids.add(s.pid!);
    await waitHttp(store, 'c', s.hostPort!);
    for (const f of ['c.console', 'c.qmp']) {
      const st = fs.statSync(path.join(store, 'vms', f));
      expect(st.isSocket(), f).toBe(true);
      expect(st.mode & 0o777, f).toBe(0o600);
    }
    const con = openConsole('c');
    try {
      // The shell computes 42: the output is the guest's, not an echo of what was typed.
      const deadline = Date.now() + 30_000;
      while (!/dormant-console-42/.test(con.out()) && Date.now() < deadline) {
        con.type('echo dormant-console-$((6*7))\n');
        await sleep(2_000);
      }
      expect(con.out(), 'the guest shell answered on the console').toMatch(/dormant-console-42/);
      expect(con.out()).not.toMatch(/Ctrl-\]/); // the detach hint is for terminals only
    } finally {
      con.child.stdin!.end();
    }
    expect(await Promise.race([con.exit, sleep(10_000).then(() => 'still running')])).toBe(0);
    expect(expectOk(dormant(['vm', 'log', 'c'], { store }))).toMatch(/^dormant-console-42\r?$/m);
    expect(expectOk(dormant(['vm', 'log', 'c'], { store }))).toMatch(/^dormant-guest: c booted/m);

    // On a terminal (script(1) gives it a pty): raw mode, the hint line, Ctrl-] detaches with exit 0.
    const cmd = `${process.execPath} ${BIN} --store ${store} vm console c`;
    const tty = spawn('script', ['-qec', cmd, '/dev/null'], { env: cliEnv(), stdio: ['pipe', 'pipe', 'pipe'] });
    let out = '';
    tty.stdout!.on('data', (d: Buffer) => { out += d.toString('latin1'); });
    const exit = new Promise<number | null>((resolve) => tty.once('exit', (code) => resolve(code)));
    try {
      const deadline = Date.now() + 30_000;
      while (!/tty-42/.test(out) && Date.now() < deadline) {
        tty.stdin!.write('echo tty-$((2*21))\r');
        await sleep(2_000);
      }
      expect(out, 'the guest shell answered through the pty').toMatch(/tty-42/);
      expect(out).toMatch(/connected to the serial console of VM c; Ctrl-\] detaches/);
      tty.stdin!.write('\x1d');
      expect(await Promise.race([exit, sleep(10_000).then(() => 'still running')])).toBe(0);
      expect(out).toMatch(/detached from the console of VM c/);
    } finally {
      tty.kill('SIGKILL');
    }
  }, BOOT_TIMEOUT_MS + 90_000);

  it('vm pause shows paused with the reason (STOP) and the guest stops; vm resume brings it back (RESUME)', async () => {
    const port = status('c').hostPort!;
    const p = JSON.parse(expectOk(dormant(['vm', 'pause', 'c', '--json'], { store }))) as Status & { qemuStatus?: string };
    expect(p.state).toBe('paused');
    const s = await until('c', (x) => x.qemuStatus === 'paused', 5_000);
    expect(s.state).toBe('paused');
    expect(s.reason).toMatch(/^paused: QMP stop \(dormant vm pause\)/);
    expect(expectOk(dormant(['vm', 'status', 'c'], { store }))).toMatch(/^state:\s+paused \(paused: QMP stop/m);
    await expect(fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3_000) })).rejects.toThrow();
    await logged(/vm c: paused \(QEMU event STOP\)/);
    expect(expectOk(dormant(['vm', 'resume', 'c'], { store }))).toBe('VM c: running\n');
    expect(status('c').state).toBe('running');
    expect(status('c').reason).toBeUndefined();
    const page = await (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(20_000) })).text();
    expect(page).toMatch(/<h1>c<\/h1>/);
    await logged(/vm c: running again \(QEMU event RESUME\)/);
  }, 60_000);

  it('a guest that powers off shows stopped with QEMU\'s reason (SHUTDOWN guest-shutdown)', async () => {
    const pid = status('c').pid!;
    const con = openConsole('c');
    try {
      await sleep(500);
      con.type('sync; poweroff -f\n');
      const s = await until('c', (x) => x.state !== 'running', 30_000);
      expect(s.state).toBe('stopped');
      expect(s.reason).toBe('the guest powered off (guest-shutdown)');
    } finally {
      con.child.stdin!.end();
    }
    // The console sees its socket close when QEMU goes.
    expect(await Promise.race([con.exit, sleep(10_000).then(() => 'still running')])).toBe(0);
    for (let i = 0; i < 50 && !gone(pid); i++) await sleep(100);
    expect(gone(pid), 'QEMU exited').toBe(true);
    await logged(/vm c: stopped: the guest powered off \(guest-shutdown\)/);
    expectFailure(dormant(['vm', 'console', 'c'], { store }), /VM 'c' is not running \(state stopped\)/);
    expect(fs.existsSync(path.join(store, 'vms', 'c.console')), 'QEMU removed its console socket').toBe(false);
  }, 60_000);

  it('a guest that reports a panic through pvpanic shows crashed (GUEST_PANICKED, then SHUTDOWN guest-panic)', async () => {
    expectOk(dormant(['vm', 'start', 'c'], { store }));
    const s = status('c');
    qemuPids.add(s.pid!);
    await waitHttp(store, 'c', s.hostPort!);
    const con = openConsole('c');
    try {
      await sleep(500);
      // What the pvpanic driver does on a panic: write PVPANIC_PANICKED (1) to the device's port 0x505 (1285).
      con.type("printf '\\001' | dd of=/dev/port bs=1 seek=1285 count=1 conv=notrunc\n");
      const c = await until('c', (x) => x.state !== 'running', 30_000);
      expect(c.state, JSON.stringify(c)).toBe('crashed');
      expect(c.reason).toBe('the guest panicked: GUEST_PANICKED, action poweroff (guest-panic)');
    } finally {
      con.child.stdin!.end();
    }
    await logged(/vm c: the guest panicked \(GUEST_PANICKED, action poweroff\)/);
    await logged(/vm c: crashed: the guest panicked: GUEST_PANICKED, action poweroff \(guest-panic\)/);
    for (let i = 0; i < 50 && !gone(s.pid!); i++) await sleep(100);
    expect(gone(s.pid!), 'QEMU exited').toBe(true);
    expect(await Promise.race([con.exit, sleep(10_000).then(() => 'still running')])).toBe(0);
  }, BOOT_TIMEOUT_MS + 60_000);

  it('a guest whose kernel panics at once shows crashed with the panic, not running; its restart policy sees it', async () => {
    expectOk(dormant(['vm', 'create', 'p', '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE, '--restart', 'on-failure'], { store }));
    // No /init to run from the initramfs: the kernel mounts root= itself, has no virtio driver built in, and panics.
    const rec = readVm(store, 'p');
    writeVm(store, { ...rec, cmdline: `${rec.cmdline} rdinit=/nonexistent` });
    expectOk(dormant(['vm', 'start', 'p'], { store }));
    const pid = status('p').pid!;
    qemuPids.add(pid);
    const s = await until('p', (x) => x.state === 'crashed', 60_000);
    expect(s.state, JSON.stringify(s)).toBe('crashed');
    expect(s.reason).toMatch(/^the guest's kernel panicked: Kernel panic - not syncing: VFS: Unable to mount root fs/);
    // The panicked guest's QEMU is told to quit (with panic=0 it would spin for ever).
    for (let i = 0; i < 100 && !gone(pid); i++) await sleep(100);
    expect(gone(pid), 'QEMU of the panicked guest exited').toBe(true);
    await logged(/vm p: crashed: the guest's kernel panicked: Kernel panic - not syncing/);
    await logged(/vm p: panicked \(the guest's kernel panicked: Kernel panic - not syncing: .*\); restart policy on-failure: starting it again in 1 s \(1 of 5\)/);
    // Stop the restarts: vm stop cancels them (the VM may be starting again by now, or down).
    const stop = dormant(['vm', 'stop', 'p', '--timeout', '1'], { store });
    expect([0, 1]).toContain(stop.status);
    const after = status('p');
    if (after.pid) qemuPids.add(after.pid);
    await sleep(3_000);
    expect(['stopped', 'crashed']).toContain(status('p').state);
  }, 120_000);
});
