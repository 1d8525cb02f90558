/**
 * The cluster as a user runs it: a real etcd on loopback and three hosts on
 * this machine, each a `dormant serve --mount --api --etcd --host-name`
 * daemon with its own store, FUSE view, API port and QEMUs. Three small
 * ballast guests, one per host (booted one after another): two alike (most of their ballast is the
 * part alike in every guest) on different hosts, one of its own. After a
 * page-out each, the hosts publish their fingerprint sketches; then the
 * CLI, as a user types it:
 *   - `dormant hosts --json` lists the three hosts up, each with its guest;
 *   - `dormant plan --etcd --json` proposes to put the two alike guests on
 *     one host, saving about their common part;
 *   - `dormant plan --etcd --apply` carries it out: each moved guest runs on
 *     its new host, answers HTTP there, and is gone from its old one;
 *   - the memory the hosts keep falls. What `--apply` reports (the hosts'
 *     used memory from etcd) cannot show it here: the three hosts share
 *     this machine's RAM, so each reports the whole machine, and a guest's
 *     RAM costs its QEMU the same on any host. The test measures what the
 *     placement changes: on each host, the distinct chunks of its VMs'
 *     memory volumes (`vm sharing`: stored bytes, each common page once per
 *     host, after writing back the guests' memory), summed over the hosts.
 *     It falls by about the plan's savedMB (docs/internals/cluster.md).
 *
 * Every wait is bounded. afterAll, whatever happened: every QEMU pid seen
 * (and any a host lists) SIGKILLed, the daemons stopped, etcd stopped,
 * the mounts lazily unmounted, temp dirs removed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HostStatus, PlanResult } from '../../src/cluster/index.js';
import { dormant, dormantAsync, expectFailure, expectOk, type CliResult } from '../helpers/cli.js';
import { stopAllEtcd, TestEtcd } from '../helpers/etcd.js';
import { CACHE, sleep, startClusterHost, vmStatus, waitHttp, type ClusterHost, type Status } from '../helpers/guest.js';
import { cleanupMounts } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const MiB = 2 ** 20;
const BALLAST = '112M';
/** The guests and where each starts: the two alike ones apart. */
const GUESTS = [
  { vm: 'alike1', host: 'three-h1', shared: '90%' },
  { vm: 'alike2', host: 'three-h2', shared: '90%' },
  { vm: 'own1', host: 'three-h3', shared: '0%' },
];

const tmp = new TempDirs();
const qemuPids = new Set<number>();
const hosts = new Map<string, ClusterHost>();
let etcd: TestEtcd;
let tokenFile = '';
/** The plan --apply carried out, and the memory measured around it. */
let applied: PlanResult & { applied: { vm: string; from: string; to: string; mode: string }[]; measured: { beforeBytes: number; afterBytes: number } };
let storedBefore = 0;

const json = <T = any>(r: CliResult): T => JSON.parse(expectOk(r)) as T;
const host = (name: string): ClusterHost => hosts.get(name)!;

/** Sum over the hosts of the distinct chunks of their VMs' memory volumes (bytes). */
async function storedMemoryBytes(): Promise<number> {
  let sum = 0;
  for (const h of hosts.values()) {
    sum += json<{ totals: { storedBytes: number } }>(await dormantAsync(['vm', 'sharing', '--json'], { store: h.store }, 120_000)).totals.storedBytes;
  }
  return sum;
}

/** The VMs with a sketch in the hosts' live records. */
async function sketched(): Promise<string[]> {
  const { kvs } = await etcd.client.rangePrefix('/dormant/hosts/');
  return kvs.flatMap((kv) => (JSON.parse(kv.value).vms as { name: string; sketch?: string }[]).filter((v) => v.sketch).map((v) => v.name)).sort();
}

beforeAll(async () => {
  const dir = tmp.make('three-hosts');
  tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, 'three-hosts-test-token-0123456789\n', { mode: 0o600 });
  etcd = await TestEtcd.start(path.join(dir, 'etcd'));
  for (const h of await Promise.all(GUESTS.map((g) => startClusterHost(tmp, g.host, etcd.url, tokenFile)))) hosts.set(h.name, h);
  // One after another: a TCG guest's kernel checks its timer early in boot, and on a busy machine two guests booting
  // (the ballast fill is all CPU) beside it made one panic ("IO-APIC + timer doesn't work").
  for (const g of GUESTS) {
    const store = host(g.host).store;
    expectOk(dormant(['vm', 'create', g.vm, '--from', 'golden@base', '--memory', '256M', '--ballast', BALLAST,
      '--ballast-shared', g.shared, '--cache-dir', CACHE], { store }));
    expectOk(dormant(['vm', 'start', g.vm], { store }));
    const s = vmStatus(store, g.vm);
    qemuPids.add(s.pid!);
    await waitHttp(store, g.vm, s.hostPort!, 180_000);
  }
  // Their memory, ballast included, into the stores: what the sketches are made of.
  for (const g of GUESTS) expectOk(await dormantAsync(['vm', 'pageout', g.vm, '--json'], { store: host(g.host).store }, 120_000));
  for (let i = 0; i < 300 && (await sketched()).length < GUESTS.length; i++) await sleep(100);
}, 600_000);

afterAll(async () => {
  for (const h of hosts.values()) {
    try {
      const r = dormant(['vm', 'list', '--json'], { store: h.store });
      for (const v of (JSON.parse(r.stdout).vms as { pid?: number }[])) if (v.pid) qemuPids.add(v.pid);
    } catch { /* the daemon is gone: the pids seen are killed below */ }
  }
  for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  for (const h of hosts.values()) await h.daemon.stop(60_000).catch(() => undefined);
  await etcd?.stop().catch(() => undefined);
  await stopAllEtcd();
  await cleanupMounts();
  tmp.cleanup();
}, 180_000);

describe('three hosts on etcd: hosts, plan from live fingerprints, --apply', () => {
  it('dormant hosts lists the three hosts up, each with its guest and its sketch published', async () => {
    expect(await sketched()).toEqual(GUESTS.map((g) => g.vm).sort());
    const listed = json<{ hosts: HostStatus[] }>(await dormantAsync(['hosts', '--etcd', etcd.url, '--json'])).hosts;
    expect(listed.map((h) => [h.name, h.state, h.url])).toEqual(GUESTS.map((g) => [g.host, 'up', host(g.host).url]));
    for (const g of GUESTS) {
      const h = listed.find((x) => x.name === g.host)!;
      expect(h.vms.map((v) => [v.name, v.state])).toEqual([[g.vm, 'running']]);
      expect(h.capacityBytes).toBeGreaterThan(0);
    }
    // The text form too, as a user reads it.
    const text = expectOk(await dormantAsync(['hosts', '--etcd', etcd.url]));
    for (const g of GUESTS) expect(text).toMatch(new RegExp(`${g.host}\\s.*up`));
  });

  it('plan --etcd proposes to keep the alike guests on one host, with the MB that saves', async () => {
    const r = json<PlanResult & { input: { sharingMB: [string, string, number][] } }>(
      await dormantAsync(['plan', '--etcd', etcd.url, '--json'], {}, 60_000));
    expect(r.placement.alike1).toBe(r.placement.alike2);
    expect(r.migrations.length).toBeGreaterThanOrEqual(1);
    expect(r.safeOrder).toBe(true);
    // The alike part: 90 % of the ballast in both, about 100 MB, estimated from the sketches.
    const pair = r.input.sharingMB.find(([x, y]) => [x, y].sort().join() === 'alike1,alike2');
    expect(pair, JSON.stringify(r.input.sharingMB)).toBeDefined();
    expect(pair![2]).toBeGreaterThan(80);
    expect(r.savedMB).toBeGreaterThan(80);
    expect(r.savedMB).toBeCloseTo(r.beforeMB - r.afterMB, 2);
  }, 60_000);

  it('plan --etcd --apply moves the guests where the plan puts them; they answer HTTP there', async () => {
    storedBefore = await storedMemoryBytes();
    applied = json(await dormantAsync(['plan', '--etcd', etcd.url, '--apply', '--token-file', tokenFile, '--json'], {}, 900_000));
    expect(applied.placement.alike1).toBe(applied.placement.alike2);
    expect(applied.applied.map((m) => [m.vm, m.from, m.to])).toEqual(applied.migrations.map((m) => [m.vm, m.from, m.to]));
    expect(applied.applied.length).toBeGreaterThanOrEqual(1);
    for (const m of applied.applied) expect(['copy', 'lazy']).toContain(m.mode);
    for (const [vm, to] of Object.entries(applied.placement)) {
      const s = vmStatus(host(to).store, vm);
      if (s.pid) qemuPids.add(s.pid);
      expect(s.state, vm).toMatch(/^(running|booting)$/);
      await waitHttp(host(to).store, vm, s.hostPort!, 60_000);
    }
    for (const m of applied.applied) expectFailure(dormant(['vm', 'status', m.vm], { store: host(m.from).store }), /unknown VM/);
    // etcd has the VMs where they went: hosts lists them there, and each location record names its host.
    const listed = json<{ hosts: HostStatus[] }>(await dormantAsync(['hosts', '--etcd', etcd.url, '--json'])).hosts;
    const on = new Map(listed.flatMap((h) => h.vms.map((v) => [v.name, h.name] as const)));
    for (const [vm, to] of Object.entries(applied.placement)) {
      expect(on.get(vm), vm).toBe(to);
      expect((await etcd.client.get(`/dormant/vms/${vm}`))?.value, vm).toBe(to);
    }
    // What --apply measured: the hosts' used memory from etcd (the whole machine, three times: see above).
    expect(applied.measured.beforeBytes).toBeGreaterThan(0);
    expect(applied.measured.afterBytes).toBeGreaterThan(0);
  }, 900_000);

  it('the memory the hosts keep falls by about what the plan saves', async () => {
    expect(applied, 'plan --apply ran').toBeDefined();
    // A lazy copy is complete before its volume holds every page.
    for (const m of applied.applied.filter((x) => x.mode === 'lazy')) {
      const lazy = () => vmStatus(host(m.to).store, m.vm) as Status & { lazyCopy?: { state: string } };
      for (let i = 0; i < 600 && lazy().lazyCopy?.state !== 'complete'; i++) await sleep(200);
      expect(lazy().lazyCopy?.state).toBe('complete');
    }
    const storedAfter = await storedMemoryBytes();
    const fallMB = (storedBefore - storedAfter) / MiB;
    console.log(`three hosts: memory volumes stored once per host, summed: ${(storedBefore / MiB).toFixed(1)} MiB before, `
      + `${(storedAfter / MiB).toFixed(1)} MiB after (${fallMB.toFixed(1)} MiB less; the plan said ${applied.savedMB} MB); `
      + `--apply's etcd figure: ${(applied.measured.beforeBytes / MiB).toFixed(0)} MiB before, ${(applied.measured.afterBytes / MiB).toFixed(0)} MiB after`);
    expect(fallMB).toBeGreaterThan(0.75 * applied.savedMB);
    expect(fallMB).toBeLessThan(1.25 * applied.savedMB);
  }, 300_000);
});
