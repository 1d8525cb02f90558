/**
 * The VM runner: VM records in the store directory, QEMU's command line, a
 * QMP client, and the supervisor that starts, watches and stops QEMU.
 */
export {
  createVm, removeVm, vmUsing, readVm, listVms, checkRestart, RESTART_POLICIES, type RestartPolicy, writeVm, vmPaths, checkVmName, checkMemory, checkBallast, hostMemTotal, VMS_DIR, RAM_ALIGN,
  BALLAST_HEADROOM,
  type VmRecord, type VmSpec,
} from './vm-record.js';
export {
  VmSupervisor, offlineStatus, STOP_TIMEOUT_MS,
  type VmState, type VmStatus, type SupervisorOptions,
} from './supervisor.js';
export { qemuArgs, freePort, QEMU_BINARY, type LaunchPaths, type LaunchOptions } from './qemu.js';
export { QmpClient } from './qmp.js';
