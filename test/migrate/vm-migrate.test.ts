/**
 * `dormant vm migrate` (copy mode) between real hosts on this machine: two
 * daemons with `serve --mount --api` (each its own store with the test
 * guest's golden image, its own FUSE view and QEMUs), and a third one
 * killed in the middle of a migration. A migrated VM keeps its identity:
 * the same hostname page, its uptime goes on (no reboot), its disk counter
 * goes on, and it answers HTTP on the port the destination gives it; the
 * source holds nothing of it afterwards; the pages its guest was using were
 * read into the destination's page cache before the pause. A paged-out VM migrates without
 * faulting its memory back in. A destination that dies before the commit
 * point leaves the VM running on the source, and a retry succeeds.
 *
 * The hosts are in a cluster on a real etcd (started by the test on
 * loopback): a VM's location record moves to the destination at the
 * migration's commit point; the hosts publish their running guests'
 * fingerprint sketches, and `plan --etcd` plans those guests with the
 * sharing the sketches estimate.
 *
 * Every QEMU pid seen is SIGKILLed at the end, every daemon and etcd
 * stopped, the mounts lazily unmounted and temp dirs removed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantAsync, dormantJson, expectFailure, expectOk, type CliResult } from '../helpers/cli.js';
import { CACHE, diskCounter, startClusterHost, vmStatus, waitHttp, type ClusterHost, type Status } from '../helpers/guest.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';
import { stopAllEtcd, TestEtcd } from '../helpers/etcd.js';

const tmp = new TempDirs();
const qemuPids = new Set<number>();
type Host = ClusterHost;
let a: Host;
let b: Host;
let tokenFile = '';
let etcd: TestEtcd;

const host = (prefix: string, extra: string[] = []): Promise<Host> => startClusterHost(tmp, prefix, etcd.url, tokenFile, extra);

/** Boots VM `vm` on `h` and waits for its page; its status. */
async function boot(h: Host, vm: string): Promise<Status> {
  expectOk(dormant(['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE], { store: h.store }));
  expectOk(dormant(['vm', 'start', vm], { store: h.store }));
  const s = vmStatus(h.store, vm);
  qemuPids.add(s.pid!);
  await waitHttp(h.store, vm, s.hostPort!);
  return s;
}

/** The uptime (seconds) the guest's page shows. */
async function guestUptime(port: number): Promise<number> {
  const page = await (await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(30_000) })).text();
  const m = /uptime:?\s*([\d.]+)/.exec(page);
  expect(m, page).not.toBeNull();
  return Number(m![1]);
}

const json = <T = any>(r: CliResult): T => JSON.parse(expectOk(r)) as T;
const volumes = (store: string) => dormantJson<{ volumes: { name: string }[] }>(['list'], { store }).volumes.map((v) => v.name);

beforeAll(async () => {
  const dir = tmp.make('vm-migrate');
  tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, 'migrate-test-token-0123456789\n', { mode: 0o600 });
  etcd = await TestEtcd.start(path.join(dir, 'etcd'));
  a = await host('vm-migrate-a');
  b = await host('vm-migrate-b');
}, 400_000);

afterAll(async () => {
  for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  for (const h of [a, b]) await h?.daemon.stop(60_000).catch(() => undefined);
  await stopAllEtcd();
  await cleanupMounts();
  tmp.cleanup();
});

const migrate = (from: Host, vm: string, to: string, extra: string[] = []) =>
  dormantAsync(['vm', 'migrate', vm, '--to', to, '--token-file', tokenFile, '--json', ...extra], { store: from.store }, 300_000);

describe('vm migrate --mode copy', () => {
  it('moves a running VM: same page, uptime and disk counter go on, the source keeps nothing', async () => {
    const before = await boot(a, 'm1');
    const counter = await diskCounter(a.store, 'm1');
    const up = await guestUptime(before.hostPort!);
    const location = async () => (await etcd.client.get('/dormant/vms/m1'))?.value;
    for (let i = 0; i < 100 && await location() !== 'vm-migrate-a'; i++) await new Promise((r) => setTimeout(r, 100));
    expect(await location()).toBe('vm-migrate-a');
    const r = json(await migrate(a, 'm1', b.url));
    // Moved in the commit step, not at the next refresh of either host.
    expect(await location()).toBe('vm-migrate-b');
    expect(r).toMatchObject({ vm: 'm1', mode: 'copy', to: b.url });
    for (const k of ['downtimeMs', 'bytesSent', 'memoryBytesSent', 'diskBytesSent', 'deviceStateBytes', 'seconds']) {
      expect(typeof r[k], k).toBe('number');
    }
    // The golden image is on both hosts: the disk costs its own blocks and a manifest; QEMU's stream carries no RAM.
    expect(r.diskBytesSent).toBeLessThan(8 * 2 ** 20);
    expect(r.deviceStateBytes).toBeLessThan(16 * 2 ** 20);
    expect(r.bytesSent).toBeLessThan(256 * 2 ** 20 + 64 * 2 ** 20);
    // The pages the guest was using were read in there before the pause (src/pager/handover.ts).
    expect(r.arrivalPages).toBeGreaterThan(0);
    expect(b.daemon.stderr()).toMatch(new RegExp(`vm m1: prefetched ${r.arrivalPages}/\\d+ pages of its arrival set`));
    const after = vmStatus(b.store, 'm1');
    qemuPids.add(after.pid!);
    expect(after.state).toMatch(/^(running|booting)$/);
    expect(after.hostPort).toBe(r.hostPort);
    await waitHttp(b.store, 'm1', after.hostPort!, 30_000);
    expect(await guestUptime(after.hostPort!)).toBeGreaterThan(up);
    expect(await diskCounter(b.store, 'm1')).toBe(counter + 1);
    expectFailure(dormant(['vm', 'status', 'm1'], { store: a.store }), /unknown VM 'm1'/);
    expect(volumes(a.store)).not.toContain('m1.mem');
    expect(volumes(a.store)).not.toContain('m1');
    // Back again: the volumes' chunks are still on a, so little travels.
    const back = json(await migrate(b, 'm1', a.url));
    const home = vmStatus(a.store, 'm1');
    qemuPids.add(home.pid!);
    expect(await diskCounter(a.store, 'm1')).toBe(counter + 2);
    expect(back.memoryBytesSent).toBeLessThan(r.memoryBytesSent);
  }, 400_000);

  it('a paged-out VM migrates without faulting its memory back in', async () => {
    await boot(a, 'm2');
    const out = dormantJson<{ residentBefore: number; residentAfter: number }>(['vm', 'pageout', 'm2'], { store: a.store });
    const r = json(await migrate(a, 'm2', b.url));
    // The volumes are read from the store, not through the guest's mapping: what the source faulted in meanwhile
    // is the guest's own idle activity during the pre-copy (its timer ticks, for as long as the migration takes:
    // 2-5 % of what the page-out pushed out on a quiet machine, 5 % and more under the full suite's load). Reading
    // through the mapping would fault all of it back in.
    const pushedOut = out.residentBefore - out.residentAfter;
    expect(pushedOut).toBeGreaterThan(32 * 2 ** 20);
    expect(r.sourcePagesFaulted * 4096).toBeLessThan(0.2 * pushedOut);
    const s = vmStatus(b.store, 'm2');
    qemuPids.add(s.pid!);
    await waitHttp(b.store, 'm2', s.hostPort!, 60_000);
  }, 400_000);

  it('a destination that dies mid-way leaves the VM running on the source; a retry succeeds', async () => {
    const c = await host('vm-migrate-c');
    const s = await boot(a, 'm3');
    const counter = await diskCounter(a.store, 'm3');
    const run = migrate(a, 'm3', c.url);
    // Kill the destination as soon as the memory volume starts arriving.
    for (let i = 0; i < 600 && !/receive m3\.mem/.test(c.daemon.stderr()); i++) await new Promise((r) => setTimeout(r, 50));
    c.daemon.child.kill('SIGKILL');
    const failed = await run;
    expect(failed.status, failed.stderr).toBe(1);
    expect(failed.stderr).toMatch(/^dormant: .*host http:\/\/127\.0\.0\.1:\d+/);
    const back = vmStatus(a.store, 'm3');
    expect(back.state).toMatch(/^(running|booting)$/);
    expect(back.pid).toBe(s.pid);
    expect(await diskCounter(a.store, 'm3')).toBe(counter + 1);
    const r = json(await migrate(a, 'm3', b.url));
    expect(r.vm).toBe('m3');
    const there = vmStatus(b.store, 'm3');
    qemuPids.add(there.pid!);
    expect(await diskCounter(b.store, 'm3')).toBe(counter + 2);
    await c.daemon.stop().catch(() => undefined);
  }, 400_000);

  it('a daemon that starts again knows where a migration stood: none runs twice, none is lost', async () => {
    // As a daemon killed mid-migration leaves them: on a source, a VM marked as leaving (wanted, restart always);
    // on a destination, one marked as arriving that never ran.
    const rec = (vm: string) => path.join(a.store, 'vms', `${vm}.json`);
    for (const [vm, migration] of [['gone1', { to: 'http://10.9.9.9:7450', since: new Date().toISOString() }],
      ['half1', { from: '10.9.9.8', since: new Date().toISOString() }]] as const) {
      expectOk(dormant(['vm', 'create', vm, '--from', 'golden@base', '--memory', '128M', '--cache-dir', CACHE, '--restart', 'always'],
        { store: a.store }));
      const r = JSON.parse(fs.readFileSync(rec(vm), 'utf8'));
      fs.writeFileSync(rec(vm), JSON.stringify({ ...r, wanted: true, migration }));
    }
    await a.daemon.stop(60_000);
    a.daemon = await startDaemon(a.store, a.mnt, ['serve', '--no-tcp', '--mount', a.mnt, ...a.args], /FUSE on /);
    await new Promise((r) => setTimeout(r, 3_000)); // (startWanted runs in the background)
    const s = vmStatus(a.store, 'gone1');
    expect(s.state).toBe('stopped');
    expect(s.reason).toMatch(/was being migrated to http:\/\/10\.9\.9\.9:7450 when the daemon stopped/);
    expect(a.daemon.stderr()).toMatch(/vm gone1: was being migrated to http:\/\/10\.9\.9\.9:7450 when the daemon stopped: not started here/);
    expectFailure(dormant(['vm', 'status', 'half1'], { store: a.store }), /unknown VM 'half1'/);
    expect(volumes(a.store)).not.toContain('half1.mem');
    // Started by hand, it is this host's again.
    expectOk(dormant(['vm', 'start', 'gone1'], { store: a.store }));
    qemuPids.add(vmStatus(a.store, 'gone1').pid!);
    expect(JSON.parse(fs.readFileSync(rec('gone1'), 'utf8')).migration).toBeUndefined();
    expectOk(dormant(['vm', 'stop', 'gone1', '--timeout', '0'], { store: a.store }));
  }, 400_000);

  it('plan --apply moves a VM where the plan puts it, through the source host\'s API', async () => {
    await boot(a, 'p1');
    // Host a is too small for p1 (256 MiB): the plan moves it to b, and --apply does.
    const input = path.join(tmp.make('vm-migrate-plan'), 'plan.json');
    fs.writeFileSync(input, JSON.stringify({
      hosts: [{ name: 'vm-migrate-a', capacityMB: 200 }, { name: 'vm-migrate-b', capacityMB: 8192 }],
      vms: [{ name: 'p1', sizeMB: 256, host: 'vm-migrate-a' }], sharingMB: [],
    }));
    const r = json(await dormantAsync(['plan', '--input', input, '--apply', '--etcd', etcd.url, '--token-file', tokenFile, '--json'],
      {}, 300_000));
    expect(r.migrations).toEqual([{ vm: 'p1', from: 'vm-migrate-a', to: 'vm-migrate-b' }]);
    expect(r.applied).toHaveLength(1);
    expect(r.applied[0]).toMatchObject({ vm: 'p1', from: 'vm-migrate-a', to: 'vm-migrate-b' });
    expect(r.measured.beforeBytes).toBeGreaterThan(0);
    const s = vmStatus(b.store, 'p1');
    qemuPids.add(s.pid!);
    await waitHttp(b.store, 'p1', s.hostPort!, 30_000);
    expectFailure(dormant(['vm', 'status', 'p1'], { store: a.store }), /unknown VM 'p1'/);
    // Without etcd or token, one line.
    expectFailure(dormant(['plan', '--input', input, '--apply'], { env: { DORMANT_ETCD: undefined } }), /--apply finds the hosts in etcd/);
  }, 400_000);

  it('the hosts publish their running guests\' fingerprint sketches; plan --etcd plans them with the sharing they estimate', async () => {
    // Guests booted above run on a and b now, their memory written back by a migration or a page-out.
    const running = new Map<string, string>();
    for (const [h, name] of [[a, 'vm-migrate-a'], [b, 'vm-migrate-b']] as const) {
      for (const v of dormantJson<{ vms: { name: string; state: string }[] }>(['vm', 'list'], { store: h.store }).vms) {
        if (v.state === 'running') running.set(v.name, name);
      }
    }
    const names = [...running.keys()].sort();
    expect(names.length).toBeGreaterThanOrEqual(3);
    const published = async () => {
      const { kvs } = await etcd.client.rangePrefix('/dormant/hosts/');
      return kvs.flatMap((kv) => JSON.parse(kv.value).vms as { name: string; state: string; sketch?: string }[]);
    };
    for (let i = 0; i < 300 && (await published()).filter((v) => v.sketch && running.has(v.name)).length < running.size; i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    expect((await published()).filter((v) => v.sketch).map((v) => v.name).sort()).toEqual(names);
    const r = json(await dormantAsync(['plan', '--etcd', etcd.url, '--json']));
    expect(r.input.vms.map((v: { name: string; host: string; sizeMB: number }) => [v.name, v.host, v.sizeMB]).sort())
      .toEqual([...running].map(([vm, host]) => [vm, host, 256]).sort());
    // Guests of one image booted alike: every pair has pages in common (the kernel's, the page cache of the same disk).
    expect(r.input.sharingMB).toHaveLength((names.length * (names.length - 1)) / 2);
    for (const [, , mb] of r.input.sharingMB) expect(mb).toBeGreaterThan(1);
    const hosts = json<{ hosts: { name: string; recordBytes: number; vms: unknown[] }[] }>(await dormantAsync(['hosts', '--etcd', etcd.url, '--json'])).hosts;
    // About 2.1 KB per running VM's sketch, and the rest of the record (the third host, killed above, is down: no record).
    const up = hosts.filter((h) => h.recordBytes !== null);
    expect(up.map((h) => h.name)).toEqual(['vm-migrate-a', 'vm-migrate-b']);
    for (const h of up) expect(h.recordBytes).toBeLessThan(800 + h.vms.length * 2200);
  }, 60_000);

  it('refuses what it cannot do, with one line', async () => {
    expectFailure(dormant(['vm', 'migrate', 'm1', '--to', b.url, '--token-file', tokenFile, '--mode', 'later'], { store: a.store }),
      /bad --mode 'later': use copy or lazy/);
    expectFailure(await migrate(a, 'nosuch', b.url), /unknown VM 'nosuch'/);
    expectOk(dormant(['vm', 'create', 'idle', '--from', 'golden@base', '--memory', '128M', '--cache-dir', CACHE], { store: a.store }));
    expectFailure(await migrate(a, 'idle', b.url), /it is not running/);
    // A VM of that name on the destination: refused before the guest pauses.
    expectOk(dormant(['vm', 'create', 'idle', '--from', 'golden@base', '--memory', '128M', '--cache-dir', CACHE], { store: b.store }));
    const m = await boot(a, 'dup');
    expectOk(dormant(['vm', 'create', 'dup', '--from', 'golden@base', '--memory', '128M', '--cache-dir', CACHE], { store: b.store }));
    expectFailure(await migrate(a, 'dup', b.url), /a VM named 'dup' already exists on this host/);
    expect(vmStatus(a.store, 'dup')).toMatchObject({ pid: m.pid });
  }, 400_000);
});
