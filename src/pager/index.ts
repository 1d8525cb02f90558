/**
 * The pager: memory volumes' fault stream (FUSE reads and writes of a VM's
 * RAM file), activity and idleness, working sets per event class, page-out
 * and prefetch (automatic for idle VMs), QEMU's own memory, swap, and the
 * sharing report.
 */
export { Pager, SAMPLE_MS, DEFAULT_IDLE_TIMEOUT_S, type PagerOptions } from './pager.js';
export {
  VmPager, NETWORK_WINDOW_MS,
  type PagedVm, type PageoutReport, type PrefetchReport, type PagerStatus, type WakeReport,
} from './vm-pager.js';
export { IdlePredictor, learnPeriod, predictorOptions, threadPolicy, BUSY_CPU_SHARE, type PredictorOptions } from './idleness.js';
export { MemoryIo, VolumeIo, EVENT_CLASSES, type MemoryCounters, type EventClass } from './faults.js';
export { sharingReport, type SharingReport, type VmSharing, type SharedVm } from './sharing.js';
export { readWorkingSet, recordedWorkingSetBytes, pageRuns, type WorkingSet } from './working-set.js';
export {
  residentMemory, parseSmaps, qemuMemory, parseQemuMemory, swapBytes, type Resident, type QemuMemory,
} from './process-memory.js';
export { SwapFile } from './swap.js';
export { touchedPages, readInArrival, dropPatched } from './handover.js';
