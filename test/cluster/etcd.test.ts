/**
 * Cluster state on a real etcd (test/helpers/etcd.ts: /usr/bin/etcd on
 * loopback, a temp data dir, free ports): three real `dormant serve --api
 * ... --etcd URL --host-name hN` daemons with a 2 s lease TTL register and
 * `dormant hosts` lists them up with their memory and VMs; then what etcd
 * clients are known to get wrong: a lease revoked behind a daemon's back
 * (detected, registered again), a watch whose revision was compacted while
 * it was cut off (h1 reaches etcd through a proxy in the test that can drop
 * it), etcd stopped and started again on the same data (registrations and
 * watches recover), and a SIGKILLed daemon shown down after its TTL with
 * its VM unavailable. The VM-location transaction (moveVmRecord) and the
 * bad inputs (no etcd named, etcd unreachable at start) too. Every daemon,
 * the proxy, etcd and the temp dirs go at the end; every wait is bounded.
 */
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { EtcdClient, claimVm, hostKey, moveVmRecord, vmHost, type HostStatus } from '../../src/cluster/index.js';
import { freePort } from '../../src/vm/index.js';
import { dormant, dormantAsync, expectFailure, expectOk } from '../helpers/cli.js';
import { TestEtcd, stopAllEtcd } from '../helpers/etcd.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const TTL = 2;
const tmp = new TempDirs();
let dir: string;
let tokenFile: string;
let etcd: TestEtcd;
let proxy: DropProxy;
const hosts: Record<string, { store: string; url: string; d: MountDaemon }> = {};

/** A TCP proxy in front of etcd that can drop every connection and refuse new ones for a while. */
interface DropProxy { url: string; cut(ms: number): Promise<void>; close(): void }

async function dropProxy(port: number): Promise<DropProxy> {
  const sockets = new Set<net.Socket>();
  let refusing = false;
  const server = net.createServer((s) => {
    if (refusing) { s.destroy(); return; }
    const up = net.connect(port, '127.0.0.1');
    for (const x of [s, up]) { sockets.add(x); x.on('close', () => sockets.delete(x)); x.on('error', () => { s.destroy(); up.destroy(); }); }
    s.pipe(up).pipe(s);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return {
    url: `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`,
    async cut(ms) {
      refusing = true;
      for (const s of sockets) s.destroy();
      await new Promise((r) => setTimeout(r, ms));
      refusing = false;
    },
    close() { for (const s of sockets) s.destroy(); server.close(); },
  };
}

/** Starts host `name` on etcd at `etcdUrl`. */
async function startHost(name: string, etcdUrl: string): Promise<void> {
  const store = path.join(dir, name);
  const port = await freePort();
  const d = await startDaemon(store, '', ['serve', '--no-tcp', '--api', `127.0.0.1:${port}`, '--api-token-file', tokenFile,
    '--etcd', etcdUrl, '--host-name', name, '--etcd-ttl', String(TTL)], /in the cluster on etcd/);
  hosts[name] = { store, url: `http://127.0.0.1:${port}`, d };
}

/** Polls `check` every 100 ms until it returns true, for at most `ms`; `what` names it in the failure. */
async function until(what: string, check: () => boolean | Promise<boolean>, ms = 15_000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

// The CLI runs asynchronously here: a synchronous run would block the test process, and with it h1's proxy.
const list = async (): Promise<HostStatus[]> =>
  (JSON.parse(expectOk(await dormantAsync(['hosts', '--etcd', etcd.url, '--json']))) as { hosts: HostStatus[] }).hosts;
const stateOf = async (name: string): Promise<string | undefined> => (await list()).find((h) => h.name === name)?.state;
const logOf = (name: string): string => hosts[name].d.stderr();

beforeAll(async () => {
  dir = tmp.make('etcd');
  etcd = await TestEtcd.start(path.join(dir, 'etcd'));
  proxy = await dropProxy(etcd.clientPort);
  tokenFile = path.join(dir, 'token');
  fs.writeFileSync(tokenFile, 'a-test-token-0123456789abcdef\n', { mode: 0o600 });
  // h2 has one (stopped) VM: a record of the store, made offline with a stand-in test-guest image (it never boots).
  const cache = path.join(dir, 'cache');
  fs.mkdirSync(cache);
  fs.writeFileSync(path.join(cache, 'base.json'), JSON.stringify({ kernel: '/nonexistent/k', initrd: '/nonexistent/i', cmdline: '' }));
  fs.writeFileSync(path.join(dir, 'base.img'), Buffer.alloc(1024 * 1024));
  for (const h of ['h1', 'h2', 'h3', 'h4']) expectOk(dormant(['init'], { store: path.join(dir, h) }));
  const s2 = path.join(dir, 'h2');
  dormant(['import', 'base', path.join(dir, 'base.img')], { store: s2 });
  dormant(['snapshot', 'base', 'v1'], { store: s2 });
  expectOk(dormant(['vm', 'create', 'web1', '--from', 'base@v1', '--memory', '128M', '--cache-dir', cache, '--json'], { store: s2 }));
  await startHost('h1', proxy.url); // h1 reaches etcd through the proxy
  await startHost('h2', etcd.url);
  await startHost('h3', etcd.url);
}, 120_000);

afterAll(async () => {
  for (const h of Object.values(hosts)) await h.d.stop();
  proxy?.close();
  await etcd?.stop();
  await stopAllEtcd();
  await cleanupMounts();
  tmp.cleanup();
});

describe('hosts on etcd', () => {
  it('dormant hosts lists every host up with its API, memory and VMs; the VM is recorded on its host', async () => {
    const got = await list();
    expect(got.map((h) => [h.name, h.state])).toEqual([['h1', 'up'], ['h2', 'up'], ['h3', 'up']]);
    for (const h of got) {
      expect(h.url).toBe(hosts[h.name].url);
      expect(h.capacityBytes).toBeGreaterThan(0);
      expect(h.usedBytes).toBeGreaterThan(0);
      expect(h.usedBytes).toBeLessThanOrEqual(h.capacityBytes);
    }
    expect(got.find((h) => h.name === 'h2')!.vms).toEqual([{ name: 'web1', state: 'stopped' }]);
    expect(await vmHost(etcd.client, 'web1')).toBe('h2');
    const text = expectOk(await dormantAsync(['hosts'], { env: { DORMANT_ETCD: etcd.url } }));
    expect(text).toMatch(/^host\s+state\s+API\s+capacity\s+used\s+VMs$/m);
    expect(text).toMatch(/^h2\s+up\s+http:\/\/127\.0\.0\.1:\d+\s+.*web1 \(stopped\)$/m);
    // Each daemon's watch saw the others come up.
    await until('h1 saw h2 and h3', () => /host h2 is up/.test(logOf('h1')) && /host h3 is up/.test(logOf('h1')));
  });

  it('moveVmRecord moves a VM\'s record only from the host it names (compare-and-swap)', async () => {
    expect(await claimVm(etcd.client, 'mover', 'h1')).toBe('h1');
    expect(await claimVm(etcd.client, 'mover', 'h3')).toBe('h1'); // taken: unchanged
    expect(await moveVmRecord(etcd.client, 'mover', 'h1', 'h3')).toEqual({ moved: true, owner: 'h3' });
    expect(await moveVmRecord(etcd.client, 'mover', 'h1', 'h2')).toEqual({ moved: false, owner: 'h3' });
    expect(await vmHost(etcd.client, 'mover')).toBe('h3');
    expect(await moveVmRecord(etcd.client, 'nobody', 'h1', 'h2')).toEqual({ moved: false, owner: undefined });
    await etcd.client.delete('/dormant/vms/mover');
  });

  it('a lease revoked behind a daemon\'s back is detected and the host registers again', async () => {
    const before = (await etcd.client.get(hostKey('h2')))!.lease;
    await etcd.client.revoke(before);
    await until('h2 registered again', () => /registered again under lease/.test(logOf('h2')));
    expect(logOf('h2')).toMatch(new RegExp(`lease ${before} of host h2 lost`));
    await until('h2 up under a new lease', async () => {
      const kv = await etcd.client.get(hostKey('h2'));
      return kv !== undefined && kv.lease !== before;
    });
    expect(await stateOf('h2')).toBe('up');
  });

  it('a watch whose revision was compacted while it was cut off reads the keys again and goes on', async () => {
    // While h1 cannot reach etcd: a host appears (a lease of the test's), one more write, and the history is compacted.
    const ghostLease = await etcd.client.grant(60);
    const cut = proxy.cut(1200);
    await new Promise((r) => setTimeout(r, 100));
    await etcd.client.put(hostKey('ghost'), JSON.stringify({ name: 'ghost', url: 'http://192.0.2.1:1', capacityBytes: 1, freeBytes: 1, usedBytes: 0, vms: [] }), ghostLease);
    const rev = await etcd.client.put('/dormant/test/filler', 'x');
    await etcd.client.compact(rev);
    await cut;
    await until('h1 re-read after compaction', () => /was compacted/.test(logOf('h1')));
    await until('h1 saw the ghost come up', () => /host ghost is up/.test(logOf('h1')));
    // The watch goes on after the re-read.
    await etcd.client.revoke(ghostLease);
    await until('h1 saw the ghost go down', () => /host ghost is down/.test(logOf('h1')));
    await etcd.client.delete('/dormant/test/filler');
  });

  it('etcd stopped and started again: every host is up again and the watches work', async () => {
    const mark = Object.fromEntries(Object.keys(hosts).map((h) => [h, logOf(h).length]));
    await etcd.restart(1500);
    for (const h of ['h1', 'h2', 'h3']) {
      await until(`${h} reconnected`, () => /etcd answers again/.test(logOf(h).slice(mark[h])));
    }
    await until('all up after the restart', async () => (await list()).every((h) => h.state === 'up'), 20_000);
    expect((await list()).map((h) => h.name)).toEqual(['h1', 'h2', 'h3']);
    // h3's watch works after the restart: it sees a host come and go.
    const lease = await etcd.client.grant(60);
    await etcd.client.put(hostKey('ghost2'), JSON.stringify({ name: 'ghost2', url: 'http://192.0.2.2:1' }), lease);
    await until('h3 saw ghost2 up', () => /host ghost2 is up/.test(logOf('h3').slice(mark.h3)));
    await etcd.client.revoke(lease);
    await until('h3 saw ghost2 down', () => /host ghost2 is down/.test(logOf('h3').slice(mark.h3)));
  }, 60_000);

  it('etcd replaced by an empty one: every host registers again, the VM record comes back, the watches read again', async () => {
    const mark = Object.fromEntries(Object.keys(hosts).map((h) => [h, logOf(h).length]));
    await etcd.wipe();
    await until('all up on the new etcd', async () => {
      const l = await list();
      return l.length === 3 && l.every((h) => h.state === 'up');
    }, 20_000);
    for (const h of ['h1', 'h2', 'h3']) await until(`${h} registered again`, () => /registered again under lease/.test(logOf(h).slice(mark[h])));
    await until('web1 recorded on h2 again', async () => (await vmHost(etcd.client, 'web1')) === 'h2');
    await until('h1 read the keys again', () => /its data was replaced/.test(logOf('h1').slice(mark.h1)));
    const lease = await etcd.client.grant(60);
    await etcd.client.put(hostKey('ghost3'), JSON.stringify({ name: 'ghost3', url: 'http://192.0.2.3:1' }), lease);
    await until('h1 saw ghost3 up', () => /host ghost3 is up/.test(logOf('h1').slice(mark.h1)));
    await etcd.client.revoke(lease);
  }, 60_000);

  it('a daemon killed with SIGKILL is down after its lease TTL, its VM unavailable; the others see it go', async () => {
    hosts.h2.d.child.kill('SIGKILL');
    await hosts.h2.d.exited;
    const killedAt = Date.now();
    await until('h2 down', async () => (await stateOf('h2')) === 'down', (TTL + 8) * 1000);
    expect(Date.now() - killedAt).toBeLessThan((TTL + 8) * 1000);
    const h2 = (await list()).find((h) => h.name === 'h2')!;
    expect(h2).toMatchObject({ state: 'down', url: hosts.h2.url, usedBytes: null, vms: [{ name: 'web1', state: 'unavailable' }] });
    expect(h2.capacityBytes).toBeGreaterThan(0);
    expect(await stateOf('h1')).toBe('up');
    await until('h1 saw h2 go down', () => /host h2 is down/.test(logOf('h1')));
    await until('h3 saw h2 go down', () => /host h2 is down/.test(logOf('h3')));
  });

  it('a daemon stopped with SIGTERM revokes its lease: down at once', async () => {
    await hosts.h3.d.stop();
    const h3 = (await list()).find((h) => h.name === 'h3')!;
    expect(h3.state).toBe('down');
  });
});

describe('bad input', () => {
  it('dormant hosts with no etcd named: one line, exit 1', async () => {
    expectFailure(await dormantAsync(['hosts'], { env: { DORMANT_ETCD: undefined } }), /no etcd named: give --etcd/);
    expectFailure(await dormantAsync(['hosts', '--etcd', 'ftp://x']), /bad --etcd URL 'ftp:\/\/x'/);
  });

  it('etcd that cannot be reached: one line, exit 1 (hosts and serve)', async () => {
    const nobody = `http://127.0.0.1:${await freePort()}`;
    expectFailure(await dormantAsync(['hosts', '--etcd', nobody]), /cannot reach etcd at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
    const r = await dormantAsync(['serve', '--no-tcp', '--api', `127.0.0.1:${await freePort()}`, '--api-token-file', tokenFile,
      '--etcd', nobody, '--host-name', 'lonely'], { store: path.join(dir, 'h4') }, 60_000);
    expectFailure(r, /^dormant: cannot reach etcd at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED$/);
  });

  it('serve flags that do not go together: one line, exit 1', async () => {
    const store = path.join(dir, 'h4');
    expectFailure(await dormantAsync(['serve', '--no-tcp', '--etcd', etcd.url], { store }), /--etcd needs --api HOST:PORT/);
    expectFailure(await dormantAsync(['serve', '--no-tcp', '--host-name', 'x'], { store }), /--host-name is for the cluster: add --etcd URL/);
    expectFailure(await dormantAsync(['serve', '--no-tcp', '--api', '127.0.0.1:1', '--api-token-file', tokenFile, '--etcd', etcd.url, '--host-name', 'a/b'], { store }),
      /bad --host-name 'a\/b'/);
    expectFailure(await dormantAsync(['serve', '--no-tcp', '--api', '127.0.0.1:1', '--api-token-file', tokenFile, '--etcd', etcd.url, '--etcd-ttl', '1'], { store }),
      /bad --etcd-ttl '1'/);
  });
});
