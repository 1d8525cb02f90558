/**
 * The VM runner: VM records in the store directory, QEMU's command line, a
 * QMP client with events, the supervisor that starts, watches (QMP events,
 * serial log), pauses and stops QEMU, restart policies, and what a status
 * reports.
 */
export {
  createVm, removeVm, vmUsing, readVm, listVms, checkRestart, RESTART_POLICIES, type RestartPolicy, writeVm, vmPaths, checkVmName, checkMemory, checkBallast, hostMemTotal, VMS_DIR, RAM_ALIGN,
  BALLAST_HEADROOM,
  type VmRecord, type VmSpec,
} from './vm-record.js';
export { VmSupervisor, STOP_TIMEOUT_MS, type SupervisorOptions } from './supervisor.js';
export { offlineStatus, type VmState, type VmStatus } from './status.js';
export { qemuArgs, freePort, QEMU_BINARY, type LaunchPaths, type LaunchOptions } from './qemu.js';
export { QmpClient, type QmpEvent } from './qmp.js';
export { VmMoves } from './migration.js';
