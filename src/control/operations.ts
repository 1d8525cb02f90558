/**
 * The control operations: what the CLI asks of a store, whether
 * it opens the store itself (LocalControl) or talks to the daemon that owns
 * it (RemoteControl over the control socket, client.ts). Both
 * implement every method, so a command never knows which one it has.
 */
import {
  DormantError, Store, type DataReport, type LogFn, type GcResult, type StoreStats, type VolumeInfo, type VolumeKind, type VolumeSummary,
} from '../blockstore/index.js';
import { exportFile, importFile, type ProgressFn, type RawImageResult } from '../blockstore/index.js';
import {
  checkHostUrl, migrateVm, pull, push, type LazyCopyStatus, type LazyIncoming, type LazyLeases, type RemoteHost, type TransferResult, type VmMoveResult,
} from '../migrate/index.js';
import { sharingReport, type PageoutReport, type PrefetchReport, type SharingReport } from '../pager/index.js';
import {
  VmMoves, checkRestart, createVm, listVms, offlineStatus, removeVm, vmUsing, readVm, type VmRecord, type VmSpec, type VmStatus, type VmSupervisor,
} from '../vm/index.js';

/** What `vm status` reports: the VM runner's status, and on the destination of a lazy migration its copy's progress. */
export type VmStatusReport = VmStatus & { lazyCopy?: LazyCopyStatus };

/** File name of the daemon's control socket inside the store directory. */
export const CONTROL_SOCKET_NAME = 'control.sock';

/** Store operations offered by a host. */
export interface StoreControl {
  createVolume(name: string, size: number, kind: VolumeKind): Promise<void>;
  snapshot(volume: string, snap: string): Promise<string>;
  branch(name: string, from: string): Promise<void>;
  remove(name: string): Promise<string[]>;
  /** Grows a volume to `size` bytes (shrinking is refused). */
  resize(name: string, size: number): Promise<void>;
  list(): Promise<VolumeSummary[]>;
  info(name: string): Promise<VolumeInfo>;
  stats(): Promise<StoreStats>;
  gc(): Promise<GcResult>;
  /** Consistency check of the store; one line per problem, [] when consistent. */
  check(): Promise<string[]>;
  /**
   * Reads every chunk back and checks it against its hash (`check --data`,
   * `scrub`); `repair`: rewrite damaged chunks from good copies; `rate`:
   * bytes per second at most (0: no bound). `signal` stops it early.
   */
  verifyData(repair: boolean, rate: number, progress?: ProgressFn, signal?: AbortSignal): Promise<DataReport>;
  /** `file` is a path on the host that owns the store; `format`: auto, raw or a qemu-img format name. */
  importFile(name: string, file: string, kind: VolumeKind, format: string, progress?: ProgressFn): Promise<RawImageResult>;
  exportFile(name: string, file: string, progress?: ProgressFn): Promise<RawImageResult>;
  /**
   * Volume transfer with another host's API (src/migrate): `pull` fetches
   * `name` from `url` into this store, `push` sends it there; `as` names
   * the result ('' keeps the name), `ca` (PEM text, '' for none) is trusted for https.
   */
  pull(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn): Promise<TransferResult>;
  push(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn): Promise<TransferResult>;
  /** Moves running VM `name` to the host at `url` (daemon only; `mode`: copy). */
  vmMigrate(name: string, url: string, token: string, mode: string, ca: string, progress?: ProgressFn): Promise<VmMoveResult>;
  /** VMs (src/vm): create works offline; start and stop need the daemon's supervisor. */
  vmCreate(spec: VmSpec): Promise<VmRecord>;
  /** `restart`: a restart policy to record for the VM ('' keeps its own). */
  vmStart(name: string, kvm: boolean, restart?: string): Promise<VmStatus>;
  vmStop(name: string, timeoutMs: number): Promise<VmStatus>;
  /** Pauses a running VM (QMP stop); vmResume continues it. */
  vmPause(name: string): Promise<VmStatus>;
  /** Continues a VM QEMU paused (e.g. on ENOSPC from a full store, once space is freed, or by vmPause): QMP cont. */
  vmResume(name: string): Promise<VmStatus>;
  /** Removes a VM that does not run: its record, memory volume and disk branch; returns the volumes removed. */
  vmRemove(name: string): Promise<string[]>;
  vmStatus(name: string): Promise<VmStatusReport>;
  vmList(): Promise<VmStatus[]>;
  /** Page-out and prefetch of a running VM (daemon only); the sharing report over every VM's memory. */
  vmPageout(name: string, keepBytes: number): Promise<PageoutReport>;
  vmPrefetch(name: string): Promise<PrefetchReport>;
  vmSharing(): Promise<SharingReport>;
  /** Releases the store (local) or the connection (remote). */
  close(): Promise<void>;
}

/** Names of the operations, as used on the wire. */
export const CONTROL_OPS = [
  'createVolume', 'snapshot', 'branch', 'remove', 'resize', 'list', 'info', 'stats', 'gc', 'check', 'verifyData', 'importFile', 'exportFile',
  'pull', 'push', 'vmMigrate', 'vmCreate', 'vmStart', 'vmStop', 'vmPause', 'vmResume', 'vmRemove', 'vmStatus', 'vmList', 'vmPageout',
  'vmPrefetch', 'vmSharing',
] as const;

/** One control operation name. */
export type ControlOp = typeof CONTROL_OPS[number];

/**
 * StoreControl over a Store this process owns. `own`: close the store on
 * close(). `vms`: the daemon's VM supervisor (absent offline, or when the
 * daemon has no FUSE mount to put VM memory on).
 */
export class LocalControl implements StoreControl {
  constructor(readonly store: Store, private readonly own: boolean, private readonly vms?: VmSupervisor,
    private readonly log: LogFn = () => undefined,
    /** This host's name in the cluster on etcd, when it is in one. */
    private readonly hostName?: string) {}

  /** The daemon's lazy migrations: VMs arriving here (their copy's progress in vm status) and leaving (needs the host API). */
  lazy: { incoming?: LazyIncoming; leases?: LazyLeases } = {};

  createVolume(name: string, size: number, kind: VolumeKind) { return this.store.createVolume(name, size, kind); }
  snapshot(volume: string, snap: string) { return this.store.snapshot(volume, snap); }
  branch(name: string, from: string) { return this.store.branch(name, from); }
  async remove(name: string) {
    const user = vmUsing(this.store.dir, name);
    if (user) {
      throw new DormantError('EBUSY', `'${name}' is the ${user.role} of VM '${user.vm}': dormant vm rm ${user.vm} removes the VM with its volumes`,
        { volume: name });
    }
    return this.store.remove(name);
  }
  resize(name: string, size: number) { return this.store.resize(name, size); }
  list() { return this.store.list(); }
  info(name: string) { return this.store.info(name); }
  stats() { return this.store.stats(); }
  gc() { return this.store.gc(); }
  check() { return this.store.check(); }
  verifyData(repair: boolean, rate: number, progress?: ProgressFn, signal?: AbortSignal) {
    return this.store.verifyData({ repair, rate, progress, signal });
  }
  importFile(name: string, file: string, kind: VolumeKind, format: string, progress?: ProgressFn) {
    return importFile(this.store, name, file, kind, progress, format);
  }
  exportFile(name: string, file: string, progress?: ProgressFn) {
    return exportFile(this.store, name, file, progress);
  }
  pull(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn) {
    return pull(this.store, remoteHost(url, token, ca), name, as || undefined, progress);
  }
  push(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn) {
    return push(this.store, remoteHost(url, token, ca), name, as || undefined, progress);
  }
  async vmMigrate(name: string, url: string, token: string, mode: string, ca: string, progress?: ProgressFn) {
    if (mode !== 'copy' && mode !== 'lazy' && mode !== 'auto') throw new DormantError('EINVAL', `bad migration mode '${mode}': use copy or lazy`);
    // auto (plan --apply): lazy for a VM the pager sees idle (it will read little of its memory soon), else copy.
    if (mode === 'auto') mode = (await this.supervisor().status(name)).activity === 'idle' && this.lazy.leases?.selfUrl ? 'lazy' : 'copy';
    return migrateVm(this.store, new VmMoves(this.store, this.supervisor(), this.log), name, remoteHost(url, token, ca), this.log, progress,
      this.hostName, mode as 'copy' | 'lazy', this.lazy.leases);
  }
  async vmCreate(spec: VmSpec) { return createVm(this.store, spec); }
  async vmStart(name: string, kvm: boolean, restart = '') {
    return this.supervisor().start(name, { kvm, ...(restart ? { restart: checkRestart(restart) } : {}) });
  }
  async vmStop(name: string, timeoutMs: number) { return this.supervisor().stop(name, timeoutMs); }
  async vmPause(name: string) { return this.supervisor().pause(name); }
  async vmResume(name: string) { return this.supervisor().resume(name); }
  async vmRemove(name: string) {
    readVm(this.store.dir, name); // ENOENT: unknown VM
    await this.vms?.forget(name);
    return removeVm(this.store, name);
  }
  async vmStatus(name: string): Promise<VmStatusReport> {
    const rec = readVm(this.store.dir, name);
    const s = this.vms ? await this.vms.status(name) : offlineStatus(rec, this.store.dir);
    const disk = this.store.describe(rec.disk) ? await this.store.info(rec.disk) : undefined;
    const mem = this.store.describe(rec.memory) ? await this.store.info(rec.memory) : undefined;
    return {
      ...s,
      ...(disk ? { diskBlocksWritten: disk.blocks.own } : {}),
      ...(mem ? { memoryStoredBytes: mem.allocated, memoryUniqueBytes: mem.unique } : {}),
      ...(this.lazy.incoming?.status(name) ? { lazyCopy: this.lazy.incoming.status(name) } : {}),
    };
  }
  async vmList() { return this.vms ? this.vms.list() : listVms(this.store.dir).map((r) => offlineStatus(r, this.store.dir)); }
  async vmPageout(name: string, keepBytes: number) { return this.supervisor().pageout(name, keepBytes); }
  async vmPrefetch(name: string) { return this.supervisor().prefetch(name); }
  async vmSharing() {
    await this.vms?.writeBackAll();
    return sharingReport(this.store, listVms(this.store.dir));
  }
  private supervisor(): VmSupervisor {
    if (!this.vms) {
      throw new DormantError('EINVAL', 'VMs need the daemon with a FUSE mount for their memory: dormant serve --mount DIR');
    }
    return this.vms;
  }
  async close() { if (this.own) await this.store.close(); }
}

/** Another host from what the CLI sends. */
function remoteHost(url: string, token: string, ca: string): RemoteHost {
  return { url: checkHostUrl(url), token, ...(ca ? { ca: Buffer.from(ca) } : {}) };
}
