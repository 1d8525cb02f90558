/**
 * Public surface of the pager. The test guest image builder (a real
 * bootable golden image from Debian packages) and the VM runner (records,
 * QEMU launcher, QMP client, supervisor), the fault stream of memory
 * volumes, working sets, page-out and prefetch, and the sharing report.
 */
export {
  buildTestGuest, defaultCacheDir, readImageMeta, metaPath, inputSnapshotName,
  BUILDER_VERSION, DEFAULT_IMAGE_SIZE, DEFAULT_CMDLINE, DEFAULT_HOSTNAME,
  type ImageMeta, type BuildOptions, type BuildResult,
} from './image.js';
export {
  createVm, readVm, listVms, writeVm, vmPaths, checkVmName, checkMemory, hostMemTotal, VMS_DIR, RAM_ALIGN,
  type VmRecord, type VmSpec,
} from './vm-record.js';
export {
  VmSupervisor, offlineStatus, STOP_TIMEOUT_MS,
  type VmState, type VmStatus, type SupervisorOptions, type PageoutReport, type PrefetchReport,
} from './supervisor.js';
export { MemoryIo, type MemoryCounters } from './faults.js';
export { sharingReport, type SharingReport, type VmSharing } from './sharing.js';
export { readWorkingSet, type WorkingSet } from './working-set.js';
export { qemuArgs, residentMemory, parseSmaps, freePort, QEMU_BINARY, type LaunchPaths, type LaunchOptions, type Resident } from './qemu.js';
export { QmpClient } from './qmp.js';
