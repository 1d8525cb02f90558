/**
 * The VM supervisor, run by the daemon (`dormant serve --mount DIR`): starts
 * QEMU for a VM record, watches it, stops it.
 *
 * State per VM, in memory only (a VM not known here is `stopped`):
 *   starting -> running -> stopping -> stopped
 *                      \-> crashed (QEMU exited without being asked; reason
 *                          = exit code or signal, plus QEMU's last stderr line)
 * A VM may be started again from stopped or crashed. `stop` asks the guest
 * with QMP system_powerdown, then QMP quit after `timeoutMs`, then SIGKILL.
 * stopAll() (daemon shutdown) stops every VM in parallel before the FUSE
 * mount and the NBD server go away.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { DormantError } from '../blockstore/index.js';
import { freePort, QEMU_BINARY, qemuArgs, residentMemory } from './qemu.js';
import { QmpClient } from './qmp.js';
import { checkVmName, listVms, readVm, vmPaths, type VmRecord } from './vm-record.js';

/** Where a VM is in its life. */
export type VmState = 'starting' | 'running' | 'stopping' | 'stopped' | 'crashed';

/** What `vm status` and `vm list` show. */
export interface VmStatus {
  name: string;
  state: VmState;
  /** Why it crashed (exit code or signal). */
  reason?: string;
  pid?: number;
  hostPort?: number;
  memoryBytes: number;
  cpus: number;
  from: string;
  /** Resident memory of QEMU: guest RAM (mapping of the memory volume) and QEMU's own. */
  residentGuestRam?: number;
  residentQemu?: number;
  uptimeSeconds?: number;
  /** Blocks the VM's disk branch holds of its own (written since it was branched). */
  diskBlocksWritten?: number;
}

/** Options of the supervisor. */
export interface SupervisorOptions {
  storeDir: string;
  /** FUSE mount point of the store. */
  mountDir: string;
  nbdSocket: string;
  log?: (line: string) => void;
}

interface Running {
  rec: VmRecord;
  child: ChildProcess;
  state: VmState;
  reason?: string;
  hostPort: number;
  startedAt: number;
  stderrTail: string;
  exited: Promise<void>;
}

/** Default wait between system_powerdown and quit. */
export const STOP_TIMEOUT_MS = 10_000;

/** Starts, watches and stops the VMs of one store. */
export class VmSupervisor {
  private readonly vms = new Map<string, Running>();
  private readonly log: (line: string) => void;

  constructor(private readonly o: SupervisorOptions) {
    this.log = o.log ?? (() => undefined);
  }

  private memFile(rec: VmRecord): string {
    return path.join(path.resolve(this.o.mountDir), 'volumes', rec.memory);
  }

  /** Starts QEMU for VM `name`; resolves once QEMU runs and answers QMP. */
  async start(name: string, opts: { kvm?: boolean } = {}): Promise<VmStatus> {
    checkVmName(name);
    const rec = readVm(this.o.storeDir, name);
    const cur = this.vms.get(name);
    if (cur && (cur.state === 'starting' || cur.state === 'running' || cur.state === 'stopping')) {
      throw new DormantError('EBUSY', `VM '${name}' is already ${cur.state} (pid ${cur.child.pid})`);
    }
    const memFile = this.memFile(rec);
    // Never a synchronous call on the FUSE mount here: this process serves it (the event loop would deadlock).
    await fs.promises.access(memFile).catch(() => {
      throw new DormantError('ENOENT', `memory volume of VM '${name}' not found at ${memFile}`);
    });
    for (const f of [rec.kernel, rec.initrd]) {
      if (!fs.existsSync(f)) throw new DormantError('ENOENT', `kernel file of VM '${name}' is missing: ${f}`);
    }
    const p = vmPaths(this.o.storeDir, name);
    fs.rmSync(p.qmp, { force: true });
    fs.writeFileSync(p.log, '');
    const hostPort = await freePort();
    const args = qemuArgs(rec, { memFile, nbdSocket: this.o.nbdSocket, qmpSocket: p.qmp, serialLog: p.log },
      { hostPort, kvm: opts.kvm });
    const child = spawn(QEMU_BINARY, args, { stdio: ['ignore', 'ignore', 'pipe'] });
    const vm: Running = { rec, child, state: 'starting', hostPort, startedAt: Date.now(), stderrTail: '', exited: Promise.resolve() };
    vm.exited = new Promise<void>((resolve) => {
      child.once('error', (err) => { vm.stderrTail += err.message; });
      child.once('close', (code, signal) => { this.exited(vm, code, signal); resolve(); });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => { vm.stderrTail = (vm.stderrTail + d).slice(-2000); });
    this.vms.set(name, vm);
    this.log(`vm ${name}: starting QEMU (pid ${child.pid}, port ${hostPort}): ${QEMU_BINARY} ${args.join(' ')}`);
    // QEMU is up once its QMP socket answers.
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (vm.state === 'crashed') {
        throw new DormantError('EINVAL', `VM '${name}' did not start: ${vm.reason}`);
      }
      try {
        const qmp = await QmpClient.connect(p.qmp, 2_000);
        qmp.close();
        break;
      } catch {
        if (Date.now() > deadline) {
          child.kill('SIGKILL');
          throw new DormantError('EINTERNAL', `VM '${name}': QEMU did not answer QMP within 30 s`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    vm.state = 'running';
    this.log(`vm ${name}: running`);
    return this.status(name);
  }

  private exited(vm: Running, code: number | null, signal: NodeJS.Signals | null): void {
    const how = signal ? `killed by signal ${signal}` : `exit code ${code}`;
    if (vm.state === 'stopping') {
      vm.state = 'stopped';
      this.log(`vm ${vm.rec.name}: stopped (${how})`);
      return;
    }
    const last = vm.stderrTail.trim().split('\n').pop()?.trim();
    vm.state = 'crashed';
    vm.reason = `QEMU ${how}${last ? `: ${last}` : ''}`;
    this.log(`vm ${vm.rec.name}: crashed: ${vm.reason}`);
  }

  /** Stops VM `name`: powerdown, quit after `timeoutMs`, SIGKILL as a last resort. */
  async stop(name: string, timeoutMs = STOP_TIMEOUT_MS): Promise<VmStatus> {
    checkVmName(name);
    readVm(this.o.storeDir, name);
    const vm = this.vms.get(name);
    if (!vm || (vm.state !== 'running' && vm.state !== 'starting' && vm.state !== 'stopping')) {
      throw new DormantError('EINVAL', `VM '${name}' is not running`);
    }
    vm.state = 'stopping';
    const qmpPath = vmPaths(this.o.storeDir, name).qmp;
    const gone = (ms: number) => Promise.race([
      vm.exited.then(() => true), new Promise<boolean>((r) => { setTimeout(() => r(false), ms).unref(); }),
    ]);
    let qmp: QmpClient | undefined;
    try {
      qmp = await QmpClient.connect(qmpPath, 2_000);
      await qmp.execute('system_powerdown');
      if (!await gone(timeoutMs)) {
        this.log(`vm ${name}: no power-off after ${timeoutMs} ms, sending QMP quit`);
        await qmp.execute('quit').catch(() => undefined);
      }
    } catch (err) {
      this.log(`vm ${name}: QMP: ${(err as Error).message}`);
    } finally {
      qmp?.close();
    }
    if (!await gone(5_000)) {
      this.log(`vm ${name}: QEMU still there, SIGKILL`);
      vm.child.kill('SIGKILL');
      await vm.exited;
    }
    return this.status(name);
  }

  /** Stops every VM that runs (daemon shutdown). */
  async stopAll(timeoutMs = STOP_TIMEOUT_MS): Promise<void> {
    const live = [...this.vms.values()].filter((v) => v.state === 'running' || v.state === 'starting' || v.state === 'stopping');
    await Promise.all(live.map((v) => this.stop(v.rec.name, timeoutMs).catch((err: Error) => {
      this.log(`vm ${v.rec.name}: stop failed: ${err.message}`);
      v.child.kill('SIGKILL');
    })));
  }

  /** Status of VM `name` (ENOENT when there is no such VM). */
  status(name: string): VmStatus {
    checkVmName(name);
    return this.statusOf(readVm(this.o.storeDir, name));
  }

  /** Status of every VM. */
  list(): VmStatus[] {
    return listVms(this.o.storeDir).map((rec) => this.statusOf(rec));
  }

  private statusOf(rec: VmRecord): VmStatus {
    const base = { name: rec.name, memoryBytes: rec.memoryBytes, cpus: rec.cpus, from: rec.from };
    const vm = this.vms.get(rec.name);
    if (!vm) return { ...base, state: 'stopped' };
    if (vm.state === 'stopped' || vm.state === 'crashed') {
      return { ...base, state: vm.state, ...(vm.reason ? { reason: vm.reason } : {}) };
    }
    const res = vm.child.pid ? residentMemory(vm.child.pid, this.memFile(rec)) : undefined;
    return {
      ...base, state: vm.state, pid: vm.child.pid, hostPort: vm.hostPort,
      residentGuestRam: res?.guestRam, residentQemu: res?.qemuOwn,
      uptimeSeconds: Math.round((Date.now() - vm.startedAt) / 1000),
    };
  }
}

/** Status of a VM when no daemon runs: nothing runs. */
export function offlineStatus(rec: VmRecord): VmStatus {
  return { name: rec.name, state: 'stopped', memoryBytes: rec.memoryBytes, cpus: rec.cpus, from: rec.from };
}
