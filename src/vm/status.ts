/**
 * What `vm status` and `vm list` report of a VM (VmStatus), its states,
 * and the parts of a status that need no running QEMU: the status of a VM
 * when no daemon runs and the words for why QEMU paused one.
 */
import { recordedWorkingSetBytes, type PageoutReport, type PagerStatus, type PrefetchReport } from '../pager/index.js';
import { vmPaths, type VmRecord } from './vm-record.js';

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
  if (status === 'io-error') {
    return ioStatus === 'nospace'
      ? 'io-error: a disk write got ENOSPC (the store is full); free space, then dormant vm resume'
      : `io-error: a disk request failed${ioStatus ? ` (${ioStatus})` : ''}`;
  }
  return status;
}

/** Status of a VM when no daemon runs: nothing runs; its recorded working set is known. */
export function offlineStatus(rec: VmRecord, storeDir?: string): VmStatus {
  const base: VmStatus = { name: rec.name, state: 'stopped', memoryBytes: rec.memoryBytes, cpus: rec.cpus, from: rec.from };
  const ws = storeDir ? recordedWorkingSetBytes(vmPaths(storeDir, rec.name).workingSet) : undefined;
  return ws === undefined ? base : { ...base, workingSetBytes: ws };
}
