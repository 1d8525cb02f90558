/**
 * What `vm status` and `vm list` report of a VM (VmStatus), its states,
 * the status of a VM when no daemon runs, the words for why QEMU paused
 * one, and the status of one the supervisor started (from what it knows:
 * no QMP command per status, the persistent connection's events keep the
 * state).
 */
import {
  qemuMemory, recordedWorkingSetBytes, type PageoutReport, type PagerStatus, type PrefetchReport,
} from '../pager/index.js';
import type { Running } from './running.js';
import { vmPaths, type VmRecord } from './vm-record.js';

const PAGE = 4096;

/**
 * Where a VM is in its life. `booting`: QEMU runs but the guest has shown
 * no life yet (nothing on its serial console); shown by status only, the
 * supervisor's own state is `running` from the first QMP answer.
 */
export type VmState = 'starting' | 'booting' | 'running' | 'paused' | 'stopping' | 'stopped' | 'crashed';

/** What `vm status` and `vm list` show. */
export interface VmStatus {
  name: string;
  state: VmState;
  /** Why it crashed (exit code or signal), or why QEMU paused it. */
  reason?: string;
  /** QEMU's run state when it is not running (QMP query-status: `io-error`, `paused`, ...). */
  qemuStatus?: string;
  /** The disk's I/O status when not `ok` (QMP query-block: `nospace` after ENOSPC, `failed` after another error). */
  diskIoStatus?: string;
  pid?: number;
  /** Thread ids of its vCPUs (QMP query-cpus-fast). */
  vcpuThreads?: number[];
  hostPort?: number;
  memoryBytes: number;
  cpus: number;
  from: string;
  /** Resident memory of QEMU: guest RAM (mapping of the memory volume) and QEMU's own (Rss). */
  residentGuestRam?: number;
  residentQemu?: number;
  /** QEMU's own memory as PSS (the files it shares with other QEMUs divided among them), and its parts. */
  qemuPss?: number;
  qemuMemory?: { translationPss: number; anonPss: number; filesPss: number; swap: number };
  /** Active or idle (the pager's predictor), and whether its RAM is paged out since it was last active. */
  activity?: 'active' | 'idle';
  pagedOut?: boolean;
  /** The pager's view: idle timeout, quiet time, SCHED_IDLE, working sets per event class, timer period. */
  pager?: PagerStatus;
  uptimeSeconds?: number;
  /** Blocks the VM's disk branch holds of its own (written since it was branched). */
  diskBlocksWritten?: number;
  /** Guest RAM in the host page cache (cachestat of the memory file): mapped or not, what the host really holds. */
  cachedGuestRam?: number;
  /** Guest page faults served from the store (FUSE reads of the memory volume), per second over the last 10 s, and in total. */
  faultsPerSecond?: number;
  faults?: number;
  /** Pages read in by faults, by prefetches, and written back to the store, since the VM started. */
  pagesIn?: number;
  prefetchPages?: number;
  pagesOut?: number;
  /** Recorded working set: pages read in the last epoch between page-outs, and pages touched since the last page-out. */
  workingSetBytes?: number;
  touchedSinceLastPageoutBytes?: number;
  lastPageout?: PageoutReport;
  lastPrefetch?: PrefetchReport;
  /** The memory volume in the store: non-zero pages, and of those the bytes no other volume shares. */
  memoryStoredBytes?: number;
  memoryUniqueBytes?: number;
}

/** Why QEMU paused a VM, in words: its run state and the disk's I/O status. */
export function pauseReason(status: string, ioStatus?: string): string {
  switch (status) {
    case 'io-error':
      return ioStatus === 'nospace'
        ? 'io-error: a disk write got ENOSPC (the store is full); free space, then dormant vm resume'
        : `io-error: a disk request failed${ioStatus ? ` (${ioStatus})` : ''}`;
    case 'paused': return 'paused: QMP stop (dormant vm pause); dormant vm resume continues it';
    case 'guest-panicked': return 'guest-panicked: the guest panicked and QEMU paused it';
    case 'internal-error': return 'internal-error: QEMU cannot emulate what the guest did';
    case 'suspended': return 'suspended: the guest suspended itself (ACPI S3)';
    default: return status;
  }
}

/** Status of a VM when no daemon runs: nothing runs; its recorded working set is known. */
export function offlineStatus(rec: VmRecord, storeDir?: string): VmStatus {
  const moving = rec.migration?.to
    ? { reason: `it was being migrated to ${rec.migration.to} when the daemon stopped: see whether it runs there, then vm start or vm rm it here` }
    : rec.migration?.from ? { reason: `arriving from ${rec.migration.from}` } : {};
  const base: VmStatus = { name: rec.name, state: 'stopped', memoryBytes: rec.memoryBytes, cpus: rec.cpus, from: rec.from, ...moving };
  const ws = storeDir ? recordedWorkingSetBytes(vmPaths(storeDir, rec.name).workingSet) : undefined;
  return ws === undefined ? base : { ...base, workingSetBytes: ws };
}

/** Status of a VM the supervisor started: `base` (its offline status) with what the supervisor and the pager know. */
export async function liveStatus(base: VmStatus, vm: Running, memFile: string): Promise<VmStatus> {
  const lastPageout = vm.pager?.lastPageout ?? vm.lastPageout;
  const lastPrefetch = vm.pager?.lastPrefetch ?? vm.lastPrefetch;
  const last = { ...(lastPageout ? { lastPageout } : {}), ...(lastPrefetch ? { lastPrefetch } : {}) };
  if (vm.state === 'stopped' || vm.state === 'crashed') {
    return { ...base, state: vm.state, ...(vm.reason ? { reason: vm.reason } : {}), ...last };
  }
  if (vm.state === 'running' && !vm.alive) await vm.serial?.look();
  if (vm.state === 'running' && vm.pause) await vm.pauseKnown;
  const p = vm.state === 'running' ? vm.pause : undefined;
  const paused = p ? {
    state: 'paused' as const, qemuStatus: p.status, reason: p.reason, ...(p.ioStatus ? { diskIoStatus: p.ioStatus } : {}),
  } : {};
  const q = vm.child.pid ? await qemuMemory(vm.child.pid, memFile) : undefined;
  const cached = vm.pager ? await vm.pager.cachedBytes() : undefined;
  const c = vm.io.counters;
  return {
    ...base, state: vm.state === 'running' && !vm.alive ? 'booting' : vm.state, pid: vm.child.pid, hostPort: vm.hostPort,
    ...(q ? {
      residentGuestRam: q.guestRam, residentQemu: q.rss, qemuPss: q.pss,
      qemuMemory: { translationPss: q.translationPss, anonPss: q.anonPss, filesPss: q.filesPss, swap: q.swap },
    } : {}),
    ...(vm.pager ? {
      vcpuThreads: vm.pager.vm.vcpuThreads, activity: vm.pager.activity, pagedOut: vm.pager.pagedOut, pager: vm.pager.status(),
    } : {}),
    ...(cached === undefined ? {} : { cachedGuestRam: cached }),
    uptimeSeconds: Math.round((Date.now() - vm.startedAt) / 1000),
    faultsPerSecond: Math.round(vm.io.faultsPerSecond() * 10) / 10, faults: c.faults,
    pagesIn: c.pagesIn, prefetchPages: c.prefetchPages, pagesOut: c.pagesOut,
    touchedSinceLastPageoutBytes: vm.io.touchedPages() * PAGE,
    ...last,
    ...paused,
  };
}
