/**
 * Restart policies with real guests: VM r (`--restart on-failure`) is
 * started again by the daemon after its QEMU is killed, and comes back
 * when a new daemon starts after SIGTERM of the old one; VM s (default
 * `no`) stays stopped; after `vm stop r` the next daemon leaves r stopped
 * too. Bad policies are refused in one line.
 *
 * Every QEMU pid seen is SIGKILLed in afterAll, then the daemon is
 * stopped, the mount lazily unmounted and temp dirs removed.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantJson, expectFailure, expectOk } from '../helpers/cli.js';
import { startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import {
  BOOT_TIMEOUT_MS, CACHE, sleep, startVmDaemon, tearDownVms, vmStatus, waitHttp, type Status,
} from '../helpers/guest.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
let store = '';
let mnt = '';
let daemon: MountDaemon | undefined;
const qemuPids = new Set<number>();
const status = (vm: string): Status => vmStatus(store, vm);

/** Waits until `vm` runs under a QEMU other than `notPid` and answers HTTP. */
async function backUp(vm: string, notPid?: number): Promise<Status> {
  const until = Date.now() + BOOT_TIMEOUT_MS;
  let s = status(vm);
  while (Date.now() < until && !((s.state === 'running' || s.state === 'booting') && s.pid && s.pid !== notPid)) {
    await sleep(500);
    s = status(vm);
  }
  expect(s.pid, `${vm}: ${JSON.stringify(s)}`).toBeTruthy();
  expect(s.pid).not.toBe(notPid);
  qemuPids.add(s.pid!);
  await waitHttp(store, vm, s.hostPort!);
  return status(vm);
}

const restartDaemon = async () => {
  expect((await daemon!.stop(60_000)).code).toBe(0);
  daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, '--no-auto-page', '--metrics', '127.0.0.1:0'], /FUSE on /);
};

/** One scrape of the daemon's metrics: `name{labels}` -> value. */
async function metrics(): Promise<Map<string, number>> {
  const url = /metrics on (http:\/\/\S+\/metrics)/.exec(daemon!.stderr())![1];
  const text = await (await fetch(url, { signal: AbortSignal.timeout(30_000) })).text();
  return new Map(text.split('\n').filter((l) => l && !l.startsWith('#')).map((l) => {
    const i = l.lastIndexOf(' ');
    return [l.slice(0, i), Number(l.slice(i + 1))] as [string, number];
  }));
}

describe('vm restart policies', () => {
  beforeAll(async () => {
    ({ store, mnt, daemon } = await startVmDaemon(tmp, 'e2e-restart'));
  }, 240_000);

  afterAll(() => tearDownVms(qemuPids, daemon, tmp));

  it('creates r with --restart on-failure and s without; refuses a bad policy', () => {
    const create = (vm: string, ...extra: string[]) =>
      dormant(['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE, ...extra], { store });
    expect(JSON.parse(expectOk(create('r', '--restart', 'on-failure', '--json')))).toMatchObject({ name: 'r', restart: 'on-failure' });
    expectOk(create('s'));
    expectFailure(create('t', '--restart', 'sometimes'), /^dormant: bad --restart 'sometimes': use no, on-failure, always$/);
    expectFailure(dormant(['vm', 'start', 's', '--restart', 'often'], { store }), /bad --restart 'often'/);
  });

  it('a QEMU killed under it is started again by the daemon', async () => {
    for (const vm of ['r', 's']) expectOk(dormant(['vm', 'start', vm], { store }));
    const r = await backUp('r');
    await backUp('s');
    process.kill(r.pid!, 'SIGKILL');
    const again = await backUp('r', r.pid);
    expect(again.state).toBe('running');
    expect(daemon!.stderr()).toMatch(/vm r: crashed \(QEMU killed by signal SIGKILL\); restart policy on-failure: starting it again in 1 s \(1 of 5\)/);
  }, 3 * BOOT_TIMEOUT_MS);

  it('after SIGTERM of the daemon, the next one brings r back and leaves s stopped', async () => {
    const old = status('r').pid;
    await restartDaemon();
    const r = await backUp('r', old);
    expect(r.state).toBe('running');
    expect(daemon!.stderr()).toMatch(/vm r: was running, restart policy on-failure: starting it/);
    expect(status('s').state).toBe('stopped');
    const list = dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms;
    expect(list.map((v) => [v.name, v.state])).toEqual([['r', 'running'], ['s', 'stopped']]);
    // The daemon's Prometheus endpoint shows the same (serve --metrics).
    const m = await metrics();
    expect(m.get('dormant_vm_up{vm="r"}')).toBe(1);
    expect(m.get('dormant_vm_up{vm="s"}')).toBe(0);
    expect(m.get('dormant_vm_memory_bytes{vm="r"}')).toBe(256 * 2 ** 20);
    expect(m.get('dormant_vm_guest_resident_bytes{vm="r"}')).toBeGreaterThan(0);
    expect(m.get('dormant_vm_qemu_pss_bytes{vm="r"}')).toBeGreaterThan(0);
  }, 2 * BOOT_TIMEOUT_MS);

  it('a VM stopped with vm stop stays stopped when the daemon starts again', async () => {
    expectOk(dormant(['vm', 'stop', 'r', '--timeout', '1'], { store }));
    await restartDaemon();
    await sleep(3_000);
    expect(status('r').state).toBe('stopped');
    expect(daemon!.stderr()).not.toMatch(/vm r: was running/);
  }, 2 * BOOT_TIMEOUT_MS);
});
