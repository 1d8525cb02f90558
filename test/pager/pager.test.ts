/**
 * The pager end to end, with real TCG guests run by the daemon
 * (`serve --mount`), their RAM a memory volume mapped through the FUSE view:
 *   - `vm pageout` of an idle 256 MiB VM: resident guest RAM (smaps Rss of
 *     the mapping) falls to a small fraction, the console keeps ticking, it
 *     answers HTTP and its disk counter still counts;
 *   - with a recorded working set, `vm prefetch` before a request cuts the
 *     pages the request faults in through FUSE (direction, generous factor);
 *   - paused (vm pause), paged out, exported: the memory volume is byte
 *     for byte what QEMU's mapping held; resumed (vm resume) it runs;
 *     stopped and started it boots clean;
 *   - three VMs from one golden image: `vm sharing` finds pages shared with
 *     disk chunks and across VMs, and the three memory volumes are stored in
 *     well under their summed non-zero data;
 *   - a VM that is not running, an unknown VM, a bad --keep: exit 1, one line.
 *
 * Every QEMU pid seen is SIGKILLed in afterAll whatever the outcome; the
 * daemon is stopped, the mount lazily unmounted, temp dirs removed.
 */
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantJson, expectFailure, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { RemoteControl } from '../../src/control/index.js';
import {
  BOOT_TIMEOUT_MS, CACHE, diskCounter, dormantAsync, sleep, startVmDaemon, tearDownVms, vmStatus, waitHttp,
  type Status,
} from '../helpers/guest.js';

const MiB = 2 ** 20;
const tmp = new TempDirs();
let store = '';
let mnt = '';
let daemon: MountDaemon | undefined;
const qemuPids = new Set<number>();

const status = (vm: string): Status => vmStatus(store, vm);

interface PageoutJson {
  residentBefore: number; residentAfter: number; cachedBefore: number; cachedAfter: number;
  pagesWritten: number; keptPages: number; advisedPages: number; workingSetPages: number;
}
interface SharingJson {
  vms: Array<{
    name: string; pages: number; zeroPages: number; nonZeroPages: number; diskCandidates: number;
    sharedWithDiskPages: number; sharedAcrossVmsPages: number; uniquePages: number;
    sharedWithDiskFullScanPages: number; coverage: number | null;
  }>;
  totals: { nonZeroBytes: number; storedBytes: number; storedBeyondDisksBytes: number; coverage: number | null };
}

const pageout = async (vm: string, extra: string[] = []) =>
  JSON.parse((await dormantAsync(['--store', store, 'vm', 'pageout', vm, '--json', ...extra], 120_000)).stdout) as PageoutJson;

async function startVm(vm: string): Promise<Status> {
  await dormantAsync(['--store', store, 'vm', 'start', vm], 60_000);
  const s = status(vm);
  qemuPids.add(s.pid!);
  await waitHttp(store, vm, s.hostPort!);
  return status(vm);
}

/** Heartbeat lines of `vm`'s serial console. */
const heartbeats = (vm: string) => dormant(['vm', 'log', vm], { store }).stdout.split('\n').filter((l) => l.startsWith('dormant-heartbeat'));


/** A client coming back to an idle VM: the page and the CGI status, three times. */
async function request(vm: string): Promise<void> {
  const port = status(vm).hostPort!;
  for (let i = 0; i < 3; i++) {
    for (const url of [`http://127.0.0.1:${port}/`, `http://127.0.0.1:${port}/cgi-bin/status`]) {
      const r = await fetch(url, { signal: AbortSignal.timeout(30_000) });
      expect(r.status).toBe(200);
      await r.text();
    }
  }
}

describe('dormant vm pageout / prefetch / sharing with real guests', () => {
  beforeAll(async () => {
    ({ store, mnt, daemon } = await startVmDaemon(tmp, 'e2e-pager'));
    for (const vm of ['p1', 'p2', 'p3']) {
      expectOk(dormant(['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE], { store }));
    }
  }, 240_000);

  afterAll(() => tearDownVms(qemuPids, daemon, tmp), 90_000);

  it('refuses to page out or prefetch what is not running, unknown VMs and bad sizes', async () => {
    expectFailure(dormant(['vm', 'pageout', 'p2'], { store }), /cannot page out VM 'p2': it is not running/);
    expectFailure(dormant(['vm', 'prefetch', 'p2'], { store }), /cannot prefetch VM 'p2': it is not running/);
    expectFailure(dormant(['vm', 'pageout', 'nosuch'], { store }), /unknown VM 'nosuch'/);
    expectFailure(dormant(['vm', 'pageout', 'p2', '--keep', 'lots'], { store }), /bad size 'lots'/);
    const lone = path.join(tmp.make('e2e-pager-lone'), 'store');
    expectOk(dormant(['init'], { store: lone }));
    expectFailure(dormant(['vm', 'pageout', 'p2'], { store: lone }), /vm pageout needs the daemon/);
    await startVm('p1');
    expectFailure(dormant(['vm', 'prefetch', 'p1'], { store }), /no working set recorded yet/);
  }, BOOT_TIMEOUT_MS + 60_000);

  it('pages out an idle VM: resident guest RAM drops to a fraction; console, HTTP and disk counter keep working', async () => {
    await sleep(5_000); // let the boot settle into idling
    const before = status('p1');
    const beats = heartbeats('p1').length;
    const counter0 = await diskCounter(store, 'p1');
    const r = await pageout('p1');
    console.log(`page-out of p1: resident guest RAM ${(r.residentBefore / MiB).toFixed(1)} -> ${(r.residentAfter / MiB).toFixed(1)} MiB, `
      + `page cache ${(r.cachedBefore / MiB).toFixed(1)} -> ${(r.cachedAfter / MiB).toFixed(1)} MiB, ${r.pagesWritten} pages written`);
    expect(before.residentGuestRam!).toBeGreaterThan(16 * MiB);
    expect(r.residentBefore).toBeGreaterThan(16 * MiB);
    expect(r.residentAfter).toBeLessThan(r.residentBefore * 0.25);
    // The page cache is dropped too, though the guest refills some of it while the page-out runs.
    expect(r.cachedAfter).toBeLessThan(r.cachedBefore);
    expect(r.advisedPages).toBe(65536);
    // Still idle a few seconds later: the guest faulted back only what it touches.
    await sleep(3_000);
    const after = status('p1');
    expect(after.residentGuestRam!).toBeLessThan(before.residentGuestRam! * 0.5);
    expect(after.faults!).toBeGreaterThan(before.faults!);
    expect(after.lastPageout!.residentAfter).toBe(r.residentAfter);
    // The console ticks on (a heartbeat per second), HTTP answers, the disk counter counts.
    let more = heartbeats('p1').length;
    for (let i = 0; i < 20 && more < beats + 3; i++) { await sleep(1_000); more = heartbeats('p1').length; }
    expect(more).toBeGreaterThanOrEqual(beats + 3);
    await waitHttp(store, 'p1', after.hostPort!, 30_000);
    expect(await diskCounter(store, 'p1')).toBe(counter0 + 1);
    expect(await diskCounter(store, 'p1')).toBe(counter0 + 2);
    const text = expectOk(dormant(['vm', 'status', 'p1'], { store }));
    expect(text).toMatch(/^faults:\s+[\d.]+\/s \(last 10 s\), \d+ since start/m);
    expect(text).toMatch(/^last page-out: \S+, resident /m);
    expect(text).toMatch(/^memory in store: [\d.]+ [KMG]iB non-zero/m);
    expect(status('p1').memoryStoredBytes!).toBeGreaterThan(0);
  }, 120_000);

  it('prefetch of the recorded working set cuts the pages a request faults in', async () => {
    // A real guest does more than the request now and then (the count with prefetch went from 0 to
    // 1,856 pages over nine runs, against 338 to 3,648 without), so a round that misses the margin
    // is measured again, at most three rounds; without a working prefetch every round misses it.
    const rounds: Array<{ cold: number; warm: number }> = [];
    // The counter is read over the control socket from this process, right after the page-out: a CLI
    // call in between takes long enough on a loaded machine for the guest's idle loop to fault back
    // much of what the request would have.
    const control = new RemoteControl(path.join(store, 'control.sock'));
    const pagesIn = async () => (await control.vmStatus('p1')).pagesIn!;
    for (let round = 0; round < 3; round++) {
      // Without prefetch: a client arrives right after a page-out.
      await control.vmPageout('p1', 0);
      let before = await pagesIn();
      await request('p1');
      const cold = await pagesIn() - before;
      // The working set recorded at this page-out holds what the guest touched meanwhile: its idle loop and that request.
      const r = await control.vmPageout('p1', 0);
      expect(r.workingSetPages).toBeGreaterThan(0);
      const pf = JSON.parse(expectOk(dormant(['vm', 'prefetch', 'p1', '--json'], { store }))) as { pages: number; cachedPages: number };
      expect(pf.pages).toBe(r.workingSetPages);
      expect(pf.cachedPages).toBeGreaterThan(pf.pages * 0.5);
      before = await pagesIn();
      await request('p1');
      const warm = await pagesIn() - before;
      console.log(`pages faulted in by a request right after page-out: ${cold} without prefetch, ${warm} with `
        + `(working set ${pf.pages} pages, ${pf.cachedPages} cached by the prefetch)`);
      expect(cold).toBeGreaterThan(0);
      rounds.push({ cold, warm });
      if (warm * 1.5 < cold) break;
    }
    expect(rounds.some((r) => r.warm * 1.5 < r.cold), JSON.stringify(rounds)).toBe(true);
    expect(status('p1').prefetchPages!).toBeGreaterThan(0);
  }, 180_000);

  it('paused, paged out (--keep 8) and exported, the memory volume is what QEMU had; resumed it runs; restarted it boots clean', async () => {
    const s = status('p1');
    const memFile = path.join(mnt, 'volumes', 'p1.mem');
    const maps = fs.readFileSync(`/proc/${s.pid}/maps`, 'utf8').split('\n').filter((l) => l.endsWith(` ${memFile}`));
    expect(maps.length).toBeGreaterThan(0);
    // (The daemon holds p1's only QMP connection: pause and resume go through it.)
    expect(JSON.parse((await dormantAsync(['--store', store, 'vm', 'pause', 'p1', '--json'], 30_000)).stdout).state).toBe('paused');
    try {
      // QEMU's view: read the mapping through /proc/PID/mem while the guest is paused.
      const h = createHash('sha256');
      const fd = fs.openSync(`/proc/${s.pid}/mem`, 'r');
      try {
        let covered = 0;
        for (const line of maps.sort((a, b) => parseInt(a.split(' ')[2], 16) - parseInt(b.split(' ')[2], 16))) {
          const [lo, hi] = line.split(' ')[0].split('-').map((x) => parseInt(x, 16));
          expect(parseInt(line.split(' ')[2], 16)).toBe(covered);
          const buf = Buffer.alloc(8 * MiB);
          for (let a = lo; a < hi; a += buf.length) {
            const n = fs.readSync(fd, buf, 0, Math.min(buf.length, hi - a), a);
            expect(n).toBe(Math.min(buf.length, hi - a));
            h.update(buf.subarray(0, n));
          }
          covered += hi - lo;
        }
        expect(covered).toBe(256 * MiB);
      } finally {
        fs.closeSync(fd);
      }
      const qemuView = h.digest('hex');
      // --keep spares the hottest 8 MiB of the working set: they stay mapped.
      const kept = await pageout('p1', ['--keep', '8']);
      expect(kept.keptPages).toBe(2048);
      expect(kept.advisedPages).toBe(65536 - 2048);
      expect(kept.residentAfter).toBeGreaterThan(0);
      const raw = path.join(tmp.make('e2e-pager-mem'), 'p1.mem.raw');
      await dormantAsync(['--store', store, 'export', 'p1.mem', raw], 120_000);
      const stored = createHash('sha256').update(fs.readFileSync(raw)).digest('hex');
      fs.rmSync(raw);
      expect(stored).toBe(qemuView);
    } finally {
      await dormantAsync(['--store', store, 'vm', 'resume', 'p1'], 30_000);
    }
    await waitHttp(store, 'p1', s.hostPort!, 60_000);
    const counter = await diskCounter(store, 'p1');
    await dormantAsync(['--store', store, 'vm', 'stop', 'p1', '--timeout', '1'], 60_000);
    const again = await startVm('p1');
    expect(again.state).toBe('running');
    expect(await diskCounter(store, 'p1')).toBe(counter + 2); // +1 boot, +1 this request
    expect(dormant(['vm', 'log', 'p1'], { store }).stdout).toMatch(/dormant-guest: p1 booted/);
  }, 2 * BOOT_TIMEOUT_MS);

  it('three VMs from one golden image: vm sharing finds pages shared with disk chunks and across VMs', async () => {
    await Promise.all([startVm('p2'), startVm('p3')]);
    await sleep(3_000);
    const r = JSON.parse((await dormantAsync(['--store', store, 'vm', 'sharing', '--json'], 300_000)).stdout) as SharingJson;
    expect(r.vms.map((v) => v.name)).toEqual(['p1', 'p2', 'p3']);
    for (const v of r.vms) {
      expect(v.pages).toBe(65536);
      expect(v.zeroPages + v.nonZeroPages).toBe(v.pages);
      expect(v.nonZeroPages).toBeGreaterThan(1000);
      expect(v.diskCandidates).toBeGreaterThan(0);
      expect(v.sharedWithDiskPages).toBeGreaterThan(0);
      expect(v.sharedAcrossVmsPages).toBeGreaterThan(0);
      expect(v.sharedWithDiskFullScanPages).toBeGreaterThanOrEqual(v.sharedWithDiskPages);
      expect(v.uniquePages).toBeLessThan(v.nonZeroPages);
    }
    const t = r.totals;
    console.log(`sharing: non-zero ${(t.nonZeroBytes / MiB).toFixed(1)} MiB, stored ${(t.storedBytes / MiB).toFixed(1)} MiB, `
      + `beyond disks ${(t.storedBeyondDisksBytes / MiB).toFixed(1)} MiB, coverage ${t.coverage}`);
    expect(t.storedBytes).toBeLessThan(t.nonZeroBytes * 0.75);
    expect(t.coverage).toBeGreaterThan(0);
    expect(t.coverage).toBeLessThanOrEqual(1);
    const text = expectOk(dormant(['vm', 'sharing'], { store }, ));
    expect(text).toMatch(/^VM\s+PAGES\s+ZERO\s+NONZERO\s+DISK\(READ\)/m);
    expect(text).toMatch(/^p3\s+65536\s+\d+/m);
    expect(text).toMatch(/disk-I\/O candidates found \d+ of the \d+ pages/);
    const list = dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms;
    expect(list.filter((v) => v.state === 'running').length).toBe(3);
  }, 3 * BOOT_TIMEOUT_MS);

  it('kill -9 of the daemon takes its QEMUs and memory agent along; the next daemon cleans the mount and boots the VM', async () => {
    const pids = ['p1', 'p2', 'p3'].map((vm) => status(vm).pid!).filter(Boolean);
    await pageout('p2');
    daemon!.child.kill('SIGKILL');
    await daemon!.exited;
    const gone = (pid: number) => { try { process.kill(pid, 0); return false; } catch { return true; } };
    for (let i = 0; i < 100 && !pids.every(gone); i++) await sleep(100);
    expect(pids.filter((pid) => !gone(pid))).toEqual([]);
    daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, '--no-auto-page'], /FUSE on /);
    expect(daemon.stderr()).toMatch(/is a stale FUSE mount \(its daemon died/);
    expect(status('p2').state).toBe('stopped');
    const s = await startVm('p2');
    expect(s.state).toBe('running');
    expect(expectOk(dormant(['check'], { store }))).toMatch(/consistent/);
  }, BOOT_TIMEOUT_MS + 60_000);
});
