/**
 * `dormant vm` end to end: the daemon (`serve --mount`) runs two real VMs
 * (the test guest of test/vm/boot.test.ts, from the same image cache so it
 * is not rebuilt) from one golden snapshot, each answering HTTP with its own
 * hostname; `vm status` reports resident guest RAM; a QEMU killed with
 * SIGKILL is reported `crashed` while the other VM keeps serving; `vm stop`
 * stops; `vm rm` is refused while a VM runs or a branch depends on its disk,
 * and `rm` of a VM's volume is refused, then removes a stopped VM with its
 * volumes (through the daemon and offline); SIGTERM to the daemon stops a
 * running VM before the daemon exits; bad inputs fail with exit 1 and one
 * line.
 *
 * Every QEMU pid seen is SIGKILLed in afterAll whatever the outcome, then the
 * daemon is stopped, the mount lazily unmounted and temp dirs removed.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cliEnv, dormant, dormantJson, expectFailure, expectOk, exportSha256 } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, type MountDaemon } from '../helpers/mount-daemon.js';
import {
  BOOT_TIMEOUT_MS, CACHE, diskCounter, sleep, startVmDaemon, vmStatus, waitHttp as waitHttpOf, type Status,
} from '../helpers/guest.js';

const tmp = new TempDirs();

let store = '';
let daemon: MountDaemon | undefined;
const qemuPids = new Set<number>();
let goldenSha = '';

const status = (vm: string) => vmStatus(store, vm);
const waitHttp = (vm: string, port: number) => waitHttpOf(store, vm, port);

describe('dormant vm: two VMs from one golden image, supervised by the daemon', () => {
  beforeAll(async () => {
    ({ store, daemon } = await startVmDaemon(tmp, 'e2e-vm'));
    goldenSha = exportSha256('golden@base', store, tmp.make('e2e-vm-export'));
  }, 240_000);

  afterAll(async () => {
    for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
    await daemon?.stop().catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  });

  it('creates VMs a and b from golden@base and refuses bad inputs', () => {
    for (const vm of ['a', 'b']) {
      expect(expectOk(dormant(['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE], { store })))
        .toMatch(new RegExp(`^created VM ${vm}: disk ${vm} from golden@base, memory ${vm}\\.mem 256 MiB`));
    }
    const vols = dormantJson<{ volumes: Array<{ name: string; kind: string; size: number }> }>(['list'], { store }).volumes;
    expect(vols.find((v) => v.name === 'a.mem')).toMatchObject({ kind: 'memory', size: 256 * 2 ** 20 });
    expect(vols.find((v) => v.name === 'b')).toMatchObject({ kind: 'disk' });

    const create = (vm: string, from: string, mem: string) =>
      dormant(['vm', 'create', vm, '--from', from, '--memory', mem, '--cache-dir', CACHE], { store });
    expectFailure(create('a', 'golden@base', '256M'), /VM 'a' exists/);
    // 100M is 50 x 2 MiB; 101M and 3M are not multiples of 2 MiB.
    expectFailure(create('c', 'golden@base', '101M'), /bad memory '101M': must be a multiple of 2 MiB/);
    expectFailure(create('c', 'golden@base', '3M'), /multiple of 2 MiB/);
    expectFailure(create('c', 'golden@base', '64T'), /larger than this host's RAM/);
    expectFailure(create('c', 'golden@nosuch', '256M'), /unknown snapshot 'golden@nosuch'/);
    expectFailure(create('c/x', 'golden@base', '256M'), /invalid VM name/);
    expectFailure(dormant(['vm', 'status', 'nosuch'], { store }), /unknown VM 'nosuch'/);
    expectFailure(dormant(['vm', 'start', 'nosuch'], { store }), /unknown VM 'nosuch'/);
    const lone = path.join(tmp.make('e2e-vm-lone'), 'store');
    expectOk(dormant(['init'], { store: lone }));
    expectFailure(dormant(['vm', 'start', 'a'], { store: lone }), /vm start needs the daemon: start it with dormant serve --mount DIR/);
    expect(dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms.map((v) => [v.name, v.state]))
      .toEqual([['a', 'stopped'], ['b', 'stopped']]);
  });

  it('starts both; each answers HTTP with its own hostname; status shows resident guest RAM', async () => {
    const started = Date.now();
    for (const vm of ['a', 'b']) {
      expect(expectOk(dormant(['vm', 'start', vm], { store }))).toMatch(new RegExp(`^started VM ${vm}: pid \\d+, http://127\\.0\\.0\\.1:\\d+/`));
      qemuPids.add(status(vm).pid!);
    }
    expectFailure(dormant(['vm', 'start', 'a'], { store }), /VM 'a' is already running/);
    const [sa, sb] = [status('a'), status('b')];
    expect(sa.hostPort).not.toBe(sb.hostPort);
    // `booting` until the guest has written to its serial console, `running` only after.
    const logBytes = (vm: string) => { try { return fs.statSync(path.join(store, 'vms', `${vm}.log`)).size; } catch { return 0; } };
    for (const [vm, s] of [['a', sa], ['b', sb]] as const) {
      expect(['booting', 'running']).toContain(s.state);
      if (s.state === 'running') expect(logBytes(vm), `${vm} shown running with an empty serial log`).toBeGreaterThan(0);
    }
    const [pa, pb] = await Promise.all([waitHttp('a', sa.hostPort!), waitHttp('b', sb.hostPort!)]);
    console.log(`two VMs booted to HTTP under TCG in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    expect(pa).toMatch(/<p>hostname: a<\/p>/);
    expect(pb).toMatch(/<p>hostname: b<\/p>/);
    for (const vm of ['a', 'b']) {
      const s = status(vm);
      expect(s.state).toBe('running');
      expect(s.memoryBytes).toBe(256 * 2 ** 20);
      expect(s.residentGuestRam).toBeGreaterThan(0);
      expect(s.residentQemu).toBeGreaterThan(0);
      expect(s.uptimeSeconds).toBeGreaterThanOrEqual(0);
    }
    const list = dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms;
    expect(list.map((v) => [v.name, v.state, v.hostPort])).toEqual([['a', 'running', sa.hostPort], ['b', 'running', sb.hostPort]]);
    expect(expectOk(dormant(['vm', 'list'], { store }))).toMatch(new RegExp(`^a\\s+running\\s+(active|idle)\\S*\\s+${sa.hostPort}\\s+${sa.pid}\\s+256 MiB`, 'm'));
  }, BOOT_TIMEOUT_MS + 30_000);

  it('reports a QEMU killed with SIGKILL as crashed; the other VM keeps serving', async () => {
    const a = status('a');
    expect(a.state).toBe('running');
    process.kill(a.pid!, 'SIGKILL');
    let s = status('a');
    for (let i = 0; i < 50 && s.state !== 'crashed'; i++) { await sleep(100); s = status('a'); }
    expect(s.state).toBe('crashed');
    expect(s.reason).toMatch(/SIGKILL/);
    expect(expectOk(dormant(['vm', 'status', 'a'], { store }))).toMatch(/^state:\s+crashed \(QEMU killed by signal SIGKILL\)$/m);
    const b = status('b');
    const page = await (await fetch(`http://127.0.0.1:${b.hostPort}/`, { signal: AbortSignal.timeout(10_000) })).text();
    expect(page).toMatch(/<h1>b<\/h1>/);
  }, 60_000);

  it('a counter A keeps on its disk survives stop and start of A, is not B\'s, and the golden stays unchanged', async () => {
    const counter = (vm: string) => diskCounter(store, vm);
    // A crashed above; boot it again, bump its counter, stop it, boot it again.
    expectOk(dormant(['vm', 'start', 'a'], { store }));
    qemuPids.add(status('a').pid!);
    await waitHttp('a', status('a').hostPort!);
    const b0 = await counter('b');
    const a1 = await counter('a');
    const a2 = await counter('a');
    expect(a2).toBe(a1 + 1);
    expect(status('a').diskBlocksWritten).toBeGreaterThan(0); // the counter lives in a's own blocks
    expect(expectOk(dormant(['vm', 'stop', 'a', '--timeout', '1'], { store }))).toBe('VM a: stopped\n');
    const memFile = path.join(tmp.make('e2e-vm-mem'), 'a.mem.raw');
    expectOk(dormant(['export', 'a.mem', memFile], { store })); // a stopped VM's memory exports
    expect(fs.statSync(memFile).size).toBe(256 * 2 ** 20);
    expect(fs.readFileSync(memFile).some((x) => x !== 0)).toBe(true);
    expectOk(dormant(['vm', 'start', 'a'], { store }));
    qemuPids.add(status('a').pid!);
    await waitHttp('a', status('a').hostPort!);
    // +1 for the boot, +1 for this request: a's counter came back from its disk.
    expect(await counter('a')).toBe(a2 + 2);
    // b counted only its own requests: a's writes never reached b's disk.
    expect(await counter('b')).toBe(b0 + 1);
    expect(exportSha256('golden@base', store, tmp.make('e2e-vm-export'))).toBe(goldenSha);
  }, 2 * BOOT_TIMEOUT_MS + 60_000);

  it('vm log -f follows the serial console until SIGINT', async () => {
    const beats = (text: string) => text.split('\n').filter((l) => l.startsWith('dormant-heartbeat host=b')).length;
    const before = beats(expectOk(dormant(['vm', 'log', 'b'], { store })));
    const child = spawn(process.execPath, [BIN, '--store', store, 'vm', 'log', 'b', '-f'], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => { out += d.toString(); });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    try {
      // The guest logs a heartbeat every 5 s: one more than there was shows the log is followed.
      for (let i = 0; i < 100 && beats(out) <= before; i++) await sleep(200);
      expect(beats(out)).toBeGreaterThan(before);
      expect(out).toMatch(/^dormant-guest: b booted/m);
    } finally {
      child.kill('SIGINT');
    }
    expect(await exited).toBe(0);
  }, 60_000);

  it('stops b; shows its serial log and its Xen disk line', () => {
    expect(expectOk(dormant(['vm', 'stop', 'b'], { store }))).toBe('VM b: stopped\n');
    expect(status('b').state).toBe('stopped');
    expectFailure(dormant(['vm', 'stop', 'b'], { store }), /VM 'b' is not running/);
    expect(expectOk(dormant(['vm', 'log', 'b'], { store }))).toMatch(/dormant-guest: b booted/);
    const xen = expectOk(dormant(['vm', 'xen-config', 'b'], { store }));
    expect(xen).toContain(`disk = [ 'format=raw, vdev=xvda, access=rw, backendtype=qdisk, target=nbd:unix:${path.join(store, 'nbd.sock')}:exportname=b' ]`);
    expect(xen).toContain(`nbd-client -unix ${path.join(store, 'nbd.sock')} -N b /dev/nbd0`);
  }, 60_000);

  it('vm rm: refused while the VM runs or a branch depends on its disk; rm of a VM\'s volume refused; a stopped VM goes with its volumes', () => {
    expectFailure(dormant(['rm', 'b'], { store }), /^dormant: 'b' is the disk of VM 'b': dormant vm rm b removes the VM with its volumes$/);
    expectFailure(dormant(['rm', 'a.mem'], { store }), /'a\.mem' is the memory of VM 'a'/);
    expectFailure(dormant(['vm', 'rm', 'a'], { store }), /VM 'a' is running \(pid \d+\): stop it first \(dormant vm stop a\)/);
    expectFailure(dormant(['vm', 'rm', 'nope'], { store }), /unknown VM 'nope'/);
    expectOk(dormant(['snapshot', 'b', 's1'], { store }));
    expectOk(dormant(['branch', 'bb', '--from', 'b@s1'], { store }));
    expectFailure(dormant(['vm', 'rm', 'b'], { store }), /cannot remove VM 'b': bb branch from its disk 'b' \(remove it first\)/);
    const names = () => dormantJson<{ volumes: Array<{ name: string }> }>(['list'], { store }).volumes.map((v) => v.name);
    expect(names()).toEqual(expect.arrayContaining(['b', 'b.mem', 'b@s1', 'bb'])); // nothing removed
    expect(status('b').state).toBe('stopped');
    expectOk(dormant(['rm', 'bb'], { store }));
    expect(expectOk(dormant(['vm', 'rm', 'b'], { store })))
      .toBe('removed VM b and b.mem, b, b@s1 (run dormant gc to reclaim the space)\n');
    expect(names().filter((n) => n === 'b' || n.startsWith('b.') || n.startsWith('b@'))).toEqual([]);
    expect(dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms.map((v) => v.name)).toEqual(['a']);
    expectFailure(dormant(['vm', 'status', 'b'], { store }), /unknown VM 'b'/);
    expect(fs.readdirSync(path.join(store, 'vms')).filter((f) => f.startsWith('b.'))).toEqual([]);
    expect(status('a').state).toBe('running');
    expect(exportSha256('golden@base', store, tmp.make('e2e-vm-export'))).toBe(goldenSha);
  }, 60_000);

  it('stops running VMs first when the daemon gets SIGTERM; vm rm works offline', async () => {
    const pid = status('a').pid!;
    const exit = await daemon!.stop(40_000);
    expect(exit).toEqual({ code: 0, signal: null });
    expect(() => process.kill(pid, 0), 'QEMU of a is gone').toThrow();
    expect(daemon!.stderr()).toMatch(/vm a: stopped[\s\S]*dormant serve: stopped/);
    expect(dormantJson<Status>(['vm', 'status', 'a'], { store }).state).toBe('stopped'); // offline
    expect(dormantJson<{ vm: string; volumesRemoved: string[] }>(['vm', 'rm', 'a', '--json'], { store }))
      .toEqual({ vm: 'a', volumesRemoved: ['a.mem', 'a'] });
    expect(dormantJson<{ vms: Status[] }>(['vm', 'list'], { store }).vms).toEqual([]);
    expect(expectOk(dormant(['check'], { store }))).toMatch(/consistent/);
  }, 60_000);
});
