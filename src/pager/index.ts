/**
 * The pager: memory volumes' fault stream (FUSE reads and writes of a VM's
 * RAM file), working sets, page-out and prefetch, and the sharing report.
 */
export {
  Pager, VmPager, recordedWorkingSetBytes,
  type PagedVm, type PageoutReport, type PrefetchReport,
} from './pager.js';
export { MemoryIo, VolumeIo, type MemoryCounters } from './faults.js';
export { sharingReport, type SharingReport, type VmSharing, type SharedVm } from './sharing.js';
export { readWorkingSet, type WorkingSet } from './working-set.js';
export { residentMemory, parseSmaps, type Resident } from './process-memory.js';
