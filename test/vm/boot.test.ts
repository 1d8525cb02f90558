/**
 * A real VM end to end: `dormant image build-test-guest` builds the test
 * guest (Debian kernel + busybox, ext4 root) into a fresh store, `dormant
 * serve --mount MNT` serves it, and QEMU (TCG) boots a branch of it with its
 * disk over NBD (Unix socket) and its RAM in a memory volume seen through the
 * FUSE view. The guest must answer HTTP with its hostname; afterwards the
 * memory volume holds blocks in the store and the golden snapshot is
 * byte-for-byte unchanged.
 *
 * The image cache is shared across runs (os.tmpdir()/dormant-test-images), so
 * a second run only imports. Every child (QEMU, the daemon) is killed in
 * afterAll whatever the outcome, the mount is lazily unmounted, temp dirs are
 * removed. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantJson, ensureBuilt, expectOk, exportSha256 } from '../helpers/cli.js';
import { CACHE, dormantAsync } from '../helpers/guest.js';
import { freePort } from '../../src/vm/index.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';

const MiB = 1024 * 1024;
const BOOT_TIMEOUT_MS = 150_000;
const tmp = new TempDirs();

let store = '';
let mnt = '';
let work = '';
let daemon: MountDaemon | undefined;
let qemu: ChildProcess | undefined;
let qemuExit: Promise<void> | undefined;
let meta: { kernel: string; initrd: string; cmdline: string } | undefined;
let goldenBefore = '';

/** Exports `name` (through the daemon when one runs) and returns the sha256 of the raw image. */
const exportHash = (name: string) => exportSha256(name, store, work);

async function killQemu(): Promise<void> {
  if (!qemu || qemu.exitCode !== null || qemu.signalCode !== null) return;
  qemu.kill('SIGTERM');
  const t = setTimeout(() => qemu?.kill('SIGKILL'), 5_000);
  await qemuExit;
  clearTimeout(t);
}

describe('a real VM boots from a golden image served by dormant', () => {
  beforeAll(async () => {
    ensureBuilt();
    work = tmp.make('e2e-boot');
    store = path.join(work, 'store');
    mnt = path.join(work, 'mnt');
    fs.mkdirSync(mnt);
    expectOk(dormant(['init'], { store }));
  });

  afterAll(async () => {
    await killQemu().catch(() => undefined);
    await daemon?.stop().catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  });

  it('builds the test guest and imports it as golden@base (cached the second time)', async () => {
    const t0 = Date.now();
    const first = await dormantAsync(['--store', store, 'image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 200_000);
    expect(first.stderr).toBe('');
    expect(first.stdout).toMatch(/^image (built|up to date \(cached\)): golden 256 MiB, kernel \S+-amd64; imported as golden@base/);
    const t1 = Date.now();
    const again = await dormantAsync(['--store', store, 'image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 60_000);
    expect(again.stdout).toMatch(/^image up to date \(cached\).*golden@base already imported from the same inputs, import skipped/);
    expect(again.stderr).toBe('');
    console.log(`image build: first ${(t1 - t0) / 1000} s, second ${(Date.now() - t1) / 1000} s`);

    meta = JSON.parse(fs.readFileSync(path.join(CACHE, 'golden.json'), 'utf8'));
    for (const f of [meta!.kernel, meta!.initrd]) expect(fs.statSync(f).size).toBeGreaterThan(MiB);
    const info = dormantJson(['info', 'golden'], { store });
    expect(info.snapshots).toContain('golden@base');
    goldenBefore = exportHash('golden@base');
  }, 240_000);

  it('boots a branch under QEMU (disk over NBD, RAM in a memory volume via FUSE) and serves HTTP', async () => {
    expect(meta, 'image built').toBeDefined();
    daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, '--no-auto-page'], /FUSE on /);
    expectOk(dormant(['branch', 'vm1', '--from', 'golden@base'], { store }));
    expectOk(dormant(['create', 'vm1.mem', '--size', '256M', '--kind', 'memory'], { store }));
    expect(fs.statSync(path.join(mnt, 'volumes', 'vm1.mem')).size).toBe(256 * MiB);

    const port = await freePort();
    const serial = path.join(work, 'serial.log');
    const args = [
      '-machine', 'q35,memory-backend=mem0', '-accel', 'tcg,tb-size=16', '-m', '256M', '-smp', '1',
      '-object', `memory-backend-file,id=mem0,size=256M,mem-path=${path.join(mnt, 'volumes', 'vm1.mem')},share=on`,
      '-kernel', meta!.kernel, '-initrd', meta!.initrd,
      '-append', `${meta!.cmdline} dormant.hostname=vm1`,
      '-drive', `file=nbd+unix:///vm1?socket=${path.join(store, 'nbd.sock')},format=raw,if=virtio`,
      '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:80`, '-device', 'virtio-net-pci,netdev=n0',
      '-serial', `file:${serial}`, '-display', 'none', '-nodefaults', '-no-reboot',
    ];
    const started = Date.now();
    qemu = spawn('qemu-system-x86_64', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let qemuOut = '';
    qemu.stdout!.on('data', (d: Buffer) => { qemuOut += d.toString(); });
    qemu.stderr!.on('data', (d: Buffer) => { qemuOut += d.toString(); });
    let spawnError: Error | undefined;
    qemu.once('error', (e) => { spawnError = e; });
    qemuExit = new Promise((resolve) => { qemu!.once('close', () => resolve()); });
    const serialTail = () => (fs.existsSync(serial) ? fs.readFileSync(serial, 'utf8').split('\n').slice(-25).join('\n') : '');

    let page = '';
    while (Date.now() - started < BOOT_TIMEOUT_MS) {
      if (spawnError || qemu.exitCode !== null || qemu.signalCode !== null) {
        throw new Error(`qemu exited early (${spawnError?.message ?? `${qemu.exitCode}/${qemu.signalCode}`}): ${qemuOut}\n${serialTail()}`);
      }
      try {
        const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3_000) });
        page = await r.text();
        if (r.ok && page.includes('vm1')) break;
      } catch { /* not up yet */ }
      await new Promise((r) => setTimeout(r, 1_000));
    }
    const bootSeconds = (Date.now() - started) / 1000;
    expect(page, `no HTTP answer naming vm1 within ${BOOT_TIMEOUT_MS / 1000} s; serial:\n${serialTail()}\n${qemuOut}`)
      .toMatch(/<h1>vm1<\/h1>/);
    console.log(`boot to HTTP under TCG: ${bootSeconds.toFixed(1)} s`);
    expect(page).toMatch(/counter: [1-9]/);

    // The CGI counts on the guest's disk: two requests, two increments.
    const c1 = await (await fetch(`http://127.0.0.1:${port}/cgi-bin/status`, { signal: AbortSignal.timeout(10_000) })).text();
    const c2 = await (await fetch(`http://127.0.0.1:${port}/cgi-bin/status`, { signal: AbortSignal.timeout(10_000) })).text();
    expect(c1).toMatch(/^hostname: vm1$/m);
    const n1 = Number(/^counter: (\d+)$/m.exec(c1)?.[1]);
    const n2 = Number(/^counter: (\d+)$/m.exec(c2)?.[1]);
    expect(n1).toBeGreaterThanOrEqual(2);
    expect(n2).toBe(n1 + 1);
    expect(fs.readFileSync(serial, 'utf8')).toMatch(/dormant-guest: vm1 booted, counter 1\b/);
  }, BOOT_TIMEOUT_MS + 30_000);

  it('leaves the guest RAM in the store and the golden snapshot unchanged', async () => {
    expect(qemu, 'qemu ran').toBeDefined();
    await killQemu();
    const { volumes } = dormantJson<{ volumes: Array<{ name: string; kind: string; allocated: number; unique: number }> }>(
      ['list'], { store });
    const mem = volumes.find((v) => v.name === 'vm1.mem');
    expect(mem?.kind).toBe('memory');
    // The guest kernel and its page cache touched well over a megabyte of RAM.
    expect(mem!.allocated).toBeGreaterThan(4 * MiB);
    const vm1 = volumes.find((v) => v.name === 'vm1');
    expect(vm1!.unique, 'the guest wrote to its branch').toBeGreaterThan(0);
    expect(exportHash('golden@base')).toBe(goldenBefore);
  }, 60_000);
});
