/**
 * The VM supervisor, run by the daemon (`dormant serve --mount DIR`): starts
 * QEMU for a VM record, watches it, stops it.
 *
 * State per VM, in memory only (a VM not known here is `stopped`):
 *   starting -> running -> stopping -> stopped
 *                      \-> stopped or crashed (the guest powered off,
 *                          rebooted or panicked, or QEMU exited without
 *                          being asked; with the reason)
 * A VM may be started again from stopped or crashed (once its old QEMU is
 * gone). `stop` asks the guest with QMP system_powerdown, then QMP quit
 * after `timeoutMs`, then SIGKILL.
 * From QEMU's first QMP answer until it exits, the supervisor keeps one QMP
 * connection per VM (QEMU serves one client at a time) and applies its
 * events at once (running.ts): SHUTDOWN ends the VM with the event's reason
 * before QEMU exits, STOP shows it `paused` (the reason asked of QEMU:
 * e.g. `io-error` when a disk write got ENOSPC from a full store and
 * werror=enospc paused the guest) until RESUME. `pause` and `resume` are
 * QMP stop and cont on that connection; there is no automatic resume. The
 * serial log is watched for the guest's first output (`booting` until
 * then) and a Linux kernel panic, which ends the VM like QEMU's own panic
 * action would (QMP quit).
 * stopAll() (daemon shutdown) stops every VM in parallel before the FUSE
 * mount and the NBD server go away.
 */
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DormantError, asError, asWarn, type LogFn } from '../blockstore/index.js';
import { MemoryIo, Pager, dropPatched, readInArrival, touchedPages, type PageoutReport, type PrefetchReport, type VmPager } from '../pager/index.js';
import { PortProxy } from './port-proxy.js';
import { freePort, keepFuseDeviceFromChildren, QEMU_BINARY, qemuArgs } from './qemu.js';
import { QmpClient } from './qmp.js';
import { checkVmName, listVms, readVm, setMigration, vmPaths, type RestartPolicy, type VmRecord } from './vm-record.js';
import { RestartKeeper } from './restart.js';
import { applyEvent, end, SerialWatch, type Running } from './running.js';
import { liveStatus, offlineStatus, type VmStatus } from './status.js';

/** util-linux setpriv (Debian: always installed), to give QEMU a parent-death signal. */
const SETPRIV = '/usr/bin/setpriv';
/** coreutils nice, to start QEMU at niceness 0 from a daemon that raised its own priority. */
const NICE = '/usr/bin/nice';

/** Options of the supervisor. */
export interface SupervisorOptions {
  storeDir: string;
  /** FUSE mount point of the store. */
  mountDir: string;
  nbdSocket: string;
  log?: LogFn;
  /** The FUSE mount's observer of memory-volume traffic (faults, write-back); the supervisor tracks each VM's. */
  io?: MemoryIo;
  /** Page out VMs that turn idle (default true), and the initial idle timeout in seconds. */
  autoPage?: boolean;
  idleTimeoutSeconds?: number;
  /** Requests served so far on a volume's NBD export (the VM's disk I/O), when the daemon counts them. */
  diskOps?: (volume: string) => number;
}

/** How long `resume` waits after QMP cont before it asks whether the guest paused again. */
const RESUME_SETTLE_MS = 500;

/** Default wait between system_powerdown and quit. */
export const STOP_TIMEOUT_MS = 10_000;

/** Starts, watches and stops the VMs of one store. */
export class VmSupervisor {
  private readonly vms = new Map<string, Running>();
  private readonly log: LogFn;
  readonly io: MemoryIo;
  private readonly pager: Pager;
  private readonly restarts: RestartKeeper;

  constructor(private readonly o: SupervisorOptions) {
    this.log = o.log ?? (() => undefined);
    this.restarts = new RestartKeeper(o.storeDir, (name) => this.start(name), this.log);
    this.io = o.io ?? new MemoryIo();
    this.pager = new Pager({ io: this.io, log: this.log, autoPage: o.autoPage, idleTimeoutSeconds: o.idleTimeoutSeconds });
    keepFuseDeviceFromChildren();
  }

  private memFile(rec: VmRecord): string {
    return path.join(path.resolve(this.o.mountDir), 'volumes', rec.memory);
  }

  /** Starts QEMU for VM `name`; resolves once QEMU runs and answers QMP. */
  async start(name: string, opts: { kvm?: boolean; restart?: RestartPolicy; incoming?: boolean } = {}): Promise<VmStatus> {
    checkVmName(name);
    const rec = readVm(this.o.storeDir, name);
    const cur = this.vms.get(name);
    if (cur && (cur.state === 'starting' || cur.state === 'running' || cur.state === 'stopping')) {
      throw new DormantError('EBUSY', `VM '${name}' is already ${cur.state} (pid ${cur.child.pid})`);
    }
    if (cur) await this.gone(cur); // ended by an event: its QEMU may still be on its way out
    const memFile = this.memFile(rec);
    // Never a synchronous call on the FUSE mount here: this process serves it (the event loop would deadlock).
    await fs.promises.access(memFile).catch(() => {
      throw new DormantError('ENOENT', `memory volume of VM '${name}' not found at ${memFile}`);
    });
    for (const f of [rec.kernel, rec.initrd]) {
      if (!fs.existsSync(f)) throw new DormantError('ENOENT', `kernel file of VM '${name}' is missing: ${f}`);
    }
    const p = vmPaths(this.o.storeDir, name);
    for (const f of [p.qmp, p.console]) fs.rmSync(f, { force: true });
    fs.writeFileSync(p.log, '');
    // QEMU forwards an internal port; the daemon's proxy owns the VM's host port and sees each connection.
    const guestPort = await freePort();
    let pager: VmPager | undefined;
    const proxy = await PortProxy.listen('127.0.0.1', 0, guestPort, async () => { await pager?.connection(); },
      (ms) => pager?.answered(ms));
    const hostPort = proxy.port;
    const args = qemuArgs(rec, { memFile, nbdSocket: this.o.nbdSocket, qmpSocket: p.qmp, serialLog: p.log, consoleSocket: p.console },
      { hostPort: guestPort, kvm: opts.kvm, incoming: opts.incoming });
    // Under setpriv --pdeathsig: if the daemon dies (even by SIGKILL), its QEMUs die too; their RAM
    // is on the daemon's FUSE view, which is gone then, so they could not run on anyway.
    // QEMU runs at the normal priority even when the daemon raised its own (it serves every fault).
    const own = os.getPriority();
    const argv = [...(own !== 0 ? [NICE, '-n', String(-own)] : []), ...(fs.existsSync(SETPRIV) ? [SETPRIV, '--pdeathsig', 'KILL'] : []),
      QEMU_BINARY, ...args];
    const child = spawn(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'] });
    const vm: Running = {
      rec, child, state: 'starting', hostPort, proxy, startedAt: Date.now(), stderrTail: '', exited: Promise.resolve(),
      io: this.pager.track(rec.memory, rec.memoryBytes),
      // A VM arriving from another host has booted there: no boot to wait for.
      ...(opts.incoming ? { alive: true } : {}),
    };
    vm.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => { vm.stderrTail += err.message; });
      child.once('close', (code, signal) => { vm.gone = true; this.exited(vm, code, signal); resolve(); });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => { vm.stderrTail = (vm.stderrTail + d).slice(-2000); });
    this.vms.set(name, vm);
    this.log(`vm ${name}: starting QEMU (pid ${child.pid}, port ${hostPort}): ${QEMU_BINARY} ${args.join(' ')}`);
    // QEMU is up once its QMP socket answers; it names its vCPU threads. That connection stays, for events.
    const deadline = Date.now() + 30_000;
    let vcpuThreads: number[] = [];
    for (;;) {
      if (vm.state === 'crashed' || vm.gone) {
        throw new DormantError('EINVAL', `VM '${name}' did not start: ${vm.reason ?? 'QEMU exited'}`);
      }
      try {
        const qmp = await QmpClient.connect(p.qmp, 2_000);
        this.keepQmp(vm, qmp);
        try {
          const cpus = await qmp.execute('query-cpus-fast') as Array<{ 'thread-id': number }>;
          vcpuThreads = cpus.map((c) => c['thread-id']).filter((t) => Number.isInteger(t) && t > 0);
        } catch (err) {
          qmp.close();
          throw err;
        }
        break;
      } catch {
        if (Date.now() > deadline) {
          child.kill('SIGKILL');
          throw new DormantError('EINTERNAL', `VM '${name}': QEMU did not answer QMP within 30 s`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    // Owner-only from birth (umask 077 gives sockets 0700); 0600 as the store's other files.
    await Promise.all([p.qmp, p.console].map((f) => fs.promises.chmod(f, 0o600).catch(() => undefined)));
    const diskOps = this.o.diskOps;
    pager = this.pager.attach({
      name, memory: rec.memory, memFile, memoryBytes: rec.memoryBytes, workingSetFile: p.workingSet,
      pid: child.pid!, vcpuThreads, ...(diskOps ? { diskOps: () => diskOps(rec.disk) } : {}),
    }, vm.io);
    vm.pager = pager;
    if (vm.gone) this.releasePager(vm); // (QEMU exited meanwhile)
    else vm.serial = new SerialWatch(p.log, () => { vm.alive = true; }, (line) => this.panicked(vm, line));
    if (vm.state === 'starting') {
      vm.state = 'running';
      this.log(`vm ${name}: running`);
    }
    this.restarts.setWanted(name, true, opts.restart);
    // Started here by hand after an interrupted migration away: it is this host's again.
    if (!opts.incoming && rec.migration?.to) setMigration(this.o.storeDir, name, undefined);
    return this.status(name);
  }

  /** Keeps `qmp` as VM `vm`'s connection: its events change the VM at once. */
  private keepQmp(vm: Running, qmp: QmpClient): void {
    vm.qmp = qmp;
    qmp.onEvent = (e) => applyEvent(vm, e, this.log);
    qmp.onClose(() => {
      if (vm.qmp !== qmp) return;
      vm.qmp = undefined;
      if (!vm.gone && vm.state === 'running') this.log(`vm ${vm.rec.name}: QMP connection lost; QEMU's events are not seen any more`);
    });
  }

  /**
   * A Linux kernel panic on the serial line: the VM ends at once, as with
   * QEMU's own panic action (shutdown), and QEMU is told to quit (a kernel
   * with panic=0 would spin on a host CPU for ever).
   */
  private panicked(vm: Running, line: string): void {
    if (vm.state !== 'running' || vm.ending) return;
    vm.panicked = line;
    end(vm, { state: 'crashed', reason: `the guest's kernel panicked: ${line}`, kind: 'panicked' }, this.log);
    const qmp = vm.qmp;
    void (qmp ? qmp.execute('quit', undefined, 2_000) : Promise.reject(new Error('no QMP connection'))).catch(() => undefined);
    setTimeout(() => { if (!vm.gone) vm.child.kill('SIGKILL'); }, 5_000).unref();
  }

  /** Waits until `vm`'s QEMU has exited (SIGKILL after 10 s). */
  private async gone(vm: Running): Promise<void> {
    if (vm.gone) return;
    const t = setTimeout(() => {
      this.log(`vm ${vm.rec.name}: QEMU still there 10 s after it ended, SIGKILL`);
      vm.child.kill('SIGKILL');
    }, 10_000);
    await vm.exited;
    clearTimeout(t);
  }

  /** The pager of the running VM `name` (EINVAL when it is not running). */
  private running(name: string, what: string): VmPager {
    checkVmName(name);
    readVm(this.o.storeDir, name);
    const vm = this.vms.get(name);
    if (!vm || vm.state !== 'running' || !vm.child.pid || !vm.pager) {
      throw new DormantError('EINVAL', `cannot ${what} VM '${name}': it is not running (state ${vm?.state ?? 'stopped'})`);
    }
    return vm.pager;
  }

  /**
   * Pushes VM `name`'s guest RAM out to the store while it runs, sparing the
   * `keepBytes` hottest bytes of its working set (EBUSY while another
   * page-out or prefetch of it runs).
   */
  async pageout(name: string, keepBytes = 0): Promise<PageoutReport> {
    if (!Number.isSafeInteger(keepBytes) || keepBytes < 0) throw new DormantError('EINVAL', `bad keep size ${keepBytes}`);
    const pager = this.running(name, 'page out');
    const r = await pager.pageout(keepBytes);
    this.vms.get(name)!.lastPageout = r;
    return r;
  }

  /** Brings VM `name`'s recorded working set back into memory ahead of need. */
  async prefetch(name: string): Promise<PrefetchReport> {
    const pager = this.running(name, 'prefetch');
    const r = await pager.prefetch();
    this.vms.get(name)!.lastPrefetch = r;
    return r;
  }

  /** Writes the dirty guest RAM of every running VM back into the store (for a consistent sharing report). */
  async writeBackAll(): Promise<void> {
    // One at a time: each holds a pool thread until the store has flushed.
    for (const v of [...this.vms.values()].filter((x) => x.state === 'running' && x.pager)) {
      await v.pager!.writeBack().catch((err: Error) => this.log(`vm ${v.rec.name}: write-back: ${err.message}`, asError(err, { vm: v.rec.name })));
    }
  }


  /** Lets go of `vm`'s pager: the agent closes the memory file, writing back what QEMU left dirty (this process serves those writes). */
  private releasePager(vm: Running): void {
    const pager = vm.pager;
    vm.pager = undefined;
    if (!pager) return;
    this.pager.detach(pager);
    vm.lastPageout = pager.lastPageout ?? vm.lastPageout;
    vm.lastPrefetch = pager.lastPrefetch ?? vm.lastPrefetch;
    pager.close().catch((err: Error) => this.log(`vm ${vm.rec.name}: closing its memory file: ${err.message}`));
  }

  private exited(vm: Running, code: number | null, signal: NodeJS.Signals | null): void {
    this.releasePager(vm);
    vm.serial?.close();
    vm.qmp?.close();
    vm.pause = undefined;
    void vm.proxy?.close();
    const how = signal ? `killed by signal ${signal}` : `exit code ${code}`;
    if (vm.state === 'stopping') {
      vm.state = 'stopped';
      this.log(`vm ${vm.rec.name}: stopped (${how})`, { vm: vm.rec.name, state: 'stopped', how });
      return;
    }
    if (vm.ending) {
      // Ended by a SHUTDOWN event or a panic on the serial line: state and reason are set already.
      this.log(`vm ${vm.rec.name}: QEMU exited (${how})`);
      this.restarts.exited(vm.rec.name, vm.ending.kind, vm.ending.reason);
      return;
    }
    if (code === 0 && !signal && vm.state === 'running') {
      // QEMU exits 0 when the guest powers off (or reboots: -no-reboot); here without a SHUTDOWN event seen.
      vm.state = 'stopped';
      vm.reason = 'the guest powered off';
      this.log(`vm ${vm.rec.name}: stopped: ${vm.reason}`);
      this.restarts.exited(vm.rec.name, 'powered-off', vm.reason);
      return;
    }
    const last = vm.stderrTail.trim().split('\n').pop()?.trim();
    vm.state = 'crashed';
    vm.reason = `QEMU ${how}${last ? `: ${last}` : ''}`;
    this.log(`vm ${vm.rec.name}: crashed: ${vm.reason}`);
    this.restarts.exited(vm.rec.name, 'crashed', vm.reason);
  }

  /** At daemon start: brings back the VMs that were running and whose restart policy says so (in the background). */
  startWanted(): Promise<void> {
    return this.restarts.startWanted();
  }

  /** Stops VM `name`: powerdown, quit after `timeoutMs`, SIGKILL as a last resort. */
  async stop(name: string, timeoutMs = STOP_TIMEOUT_MS, keepWanted = false): Promise<VmStatus> {
    checkVmName(name);
    readVm(this.o.storeDir, name);
    // A stop is respected: no restart pending, and the next daemon leaves it stopped (not so at daemon shutdown).
    this.restarts.cancel(name);
    if (!keepWanted) this.restarts.setWanted(name, false);
    const vm = this.vms.get(name);
    if (vm && !vm.gone && vm.ending) await this.gone(vm); // ended by itself, on its way out
    if (!vm || (vm.state !== 'running' && vm.state !== 'starting' && vm.state !== 'stopping')) {
      throw new DormantError('EINVAL', `VM '${name}' is not running`);
    }
    vm.state = 'stopping';
    // No more sampling, SCHED_IDLE or automatic page-out of a VM on its way out.
    if (vm.pager) this.pager.detach(vm.pager);
    const gone = (ms: number) => Promise.race([
      vm.exited.then(() => true), new Promise<boolean>((r) => { setTimeout(() => r(false), ms).unref(); }),
    ]);
    try {
      const qmp = vm.qmp ?? await QmpClient.connect(vmPaths(this.o.storeDir, name).qmp, 2_000);
      if (!vm.qmp) this.keepQmp(vm, qmp);
      // timeoutMs 0: QEMU quits at once (a VM that moved to another host, or one that never ran here).
      if (timeoutMs > 0) await qmp.execute('system_powerdown');
      if (timeoutMs === 0 || !await gone(timeoutMs)) {
        if (timeoutMs > 0) this.log(`vm ${name}: no power-off after ${timeoutMs} ms, sending QMP quit`);
        await qmp.execute('quit').catch(() => undefined);
      }
    } catch (err) {
      this.log(`vm ${name}: QMP: ${(err as Error).message}`);
    }
    if (!await gone(5_000)) {
      this.log(`vm ${name}: QEMU still there, SIGKILL`, asWarn({ vm: name }));
      vm.child.kill('SIGKILL');
      await vm.exited;
    }
    return this.status(name);
  }

  /**
   * Forgets VM `name` before `vm rm` removes it: EBUSY while its QEMU runs
   * (starting, running, paused or stopping); waits for a QEMU that ended by
   * itself to exit.
   */
  async forget(name: string): Promise<void> {
    const vm = this.vms.get(name);
    if (vm && (vm.state === 'starting' || vm.state === 'running' || vm.state === 'stopping')) {
      throw new DormantError('EBUSY', `VM '${name}' is ${vm.state} (pid ${vm.child.pid}): stop it first (dormant vm stop ${name})`);
    }
    this.restarts.cancel(name);
    if (vm) await this.gone(vm);
    this.vms.delete(name);
  }

  /** Stops every VM that runs (daemon shutdown), and waits for those on their way out. */
  async stopAll(timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
    this.restarts.close();
    const live = [...this.vms.values()].filter((v) => v.state === 'running' || v.state === 'starting' || v.state === 'stopping');
    await Promise.all([
      ...live.map((v) => this.stop(v.rec.name, timeoutMs, true).catch((err: Error) => {
        this.log(`vm ${v.rec.name}: stop failed: ${err.message}`);
        v.child.kill('SIGKILL');
      })),
      ...[...this.vms.values()].filter((v) => !live.includes(v)).map((v) => this.gone(v)),
    ]);
    await this.pager.close(); // after the VMs: their memory files are closed (and written back) first
  }

  /** The host port of VM `name` while its QEMU runs. */
  hostPort(name: string): number | undefined {
    return this.vms.get(name)?.hostPort;
  }

  /** True when QEMU runs for VM `name` (running or paused, not on its way out). */
  isRunning(name: string): boolean {
    const vm = this.vms.get(name);
    return vm !== undefined && vm.state === 'running' && !vm.gone && !vm.ending;
  }

  /** Guest pages VM `name` faulted in through the FUSE view since its QEMU started (0 when it does not run). */
  pagesIn(name: string): number {
    return this.vms.get(name)?.io.counters.pagesIn ?? 0;
  }

  /** Guest pages VM `name` touched since its last page-out, sorted, at most `max` (src/pager/handover.ts). */
  touchedPages(name: string, max: number): Promise<number[]> {
    return touchedPages(this.running(name, 'read the pages of'), max);
  }

  /** Reads `pages` of VM `name` (arriving from another host) into the page cache; pages read. */
  async readInArrival(name: string, pages: number[]): Promise<number> {
    return (await readInArrival(this.running(name, 'read in the memory of'), pages)).cachedPages;
  }

  /** A patch rewrote `pages` of memory volume `volume`: out of the page cache of the VM running on it here, if any. */
  async dropPatched(volume: string, pages: number[]): Promise<void> {
    const vm = [...this.vms.values()].find((v) => v.rec.memory === volume && v.pager && v.state === 'running' && !v.gone);
    if (vm) await dropPatched(vm.pager!, pages);
  }

  /** Writes VM `name`'s dirty guest RAM back into its memory volume (EINVAL when it does not run). */
  writeBack(name: string): Promise<void> {
    return this.running(name, 'write back').writeBack();
  }

  /** VM `name`'s persistent QMP connection (EINVAL when it does not run or has none). */
  qmpOf(name: string, what: string): QmpClient {
    this.running(name, what);
    const qmp = this.vms.get(name)!.qmp;
    if (!qmp) throw new DormantError('EINVAL', `cannot ${what} VM '${name}': its QMP connection is gone`);
    return qmp;
  }

  /** Pauses VM `name` (QMP stop): its vCPUs stop until `resume`. A paused VM is left as it is. */
  async pause(name: string): Promise<VmStatus> {
    const qmp = this.qmpOf(name, 'pause');
    if (!this.vms.get(name)!.pause) {
      this.log(`vm ${name}: pausing (QMP stop)`);
      await qmp.execute('stop').catch((err: Error) => { throw new DormantError('EINVAL', `cannot pause VM '${name}': ${err.message}`); });
    }
    return this.status(name);
  }

  /**
   * Continues VM `name` after QEMU paused it (QMP cont), e.g. on ENOSPC once
   * space was freed, or after `pause`; ENOSPC when the guest is paused again
   * at once because its disk still gets ENOSPC (EIO for another disk
   * error). A running VM is left as it is.
   */
  async resume(name: string): Promise<VmStatus> {
    const qmp = this.qmpOf(name, 'resume');
    const before = await qmp.execute('query-status') as { running: boolean; status: string };
    if (before.running) return this.status(name);
    this.log(`vm ${name}: resuming (QEMU status ${before.status})`);
    await qmp.execute('cont');
    // A write QEMU retries that still gets ENOSPC pauses the guest again at once.
    await new Promise((r) => setTimeout(r, RESUME_SETTLE_MS));
    const after = await qmp.execute('query-status') as { running: boolean; status: string };
    if (!after.running && after.status === 'io-error') {
      const block = await qmp.execute('query-block') as Array<{ 'io-status'?: string }>;
      if (block.some((b) => b['io-status'] === 'nospace')) {
        throw new DormantError('ENOSPC',
          `VM '${name}' paused again at once (io-error): its disk still gets ENOSPC; free space first (dormant rm, dormant gc)`);
      }
      throw new DormantError('EIO', `VM '${name}' paused again at once (io-error): a disk request still fails`);
    }
    return this.status(name);
  }

  /** Status of VM `name` (ENOENT when there is no such VM). */
  async status(name: string): Promise<VmStatus> {
    checkVmName(name);
    return this.statusOf(readVm(this.o.storeDir, name));
  }

  /** Status of every VM. */
  async list(): Promise<VmStatus[]> {
    return Promise.all(listVms(this.o.storeDir).map((rec) => this.statusOf(rec)));
  }

  private async statusOf(rec: VmRecord): Promise<VmStatus> {
    const base = offlineStatus(rec, this.o.storeDir);
    const vm = this.vms.get(rec.name);
    return vm ? liveStatus(base, vm, this.memFile(rec)) : base;
  }
}
