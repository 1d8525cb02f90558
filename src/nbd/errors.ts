/**
 * The one place where store errors become NBD errno values.
 *
 * The store throws DormantError with a `code`; the wire knows a handful of
 * errno values. ERANGE depends on the command (the spec asks for ENOSPC on
 * writes past the end, EINVAL on reads, trims and status queries past it).
 * ENOSPC (a full store: the free-space floor refused the write) stays
 * ENOSPC, so that a hypervisor can tell it from a disk error (QEMU pauses
 * the guest on ENOSPC with its default werror=enospc); it is not logged
 * per request: the store logs once when writes start being refused.
 * Anything unexpected becomes EIO and the original is logged by the caller.
 */
import { isDormantError } from '../blockstore/index.js';
import * as P from './protocol.js';

/** An NBD errno plus whether the original error deserves a log line. */
export interface MappedError {
  errno: number;
  /** true when the error was not an expected, user-caused failure. */
  unexpected: boolean;
  /** Short message for structured error chunks. */
  message: string;
}

/** True for commands that write data (WRITE, WRITE_ZEROES), whose range errors are ENOSPC. */
function isWriteCommand(cmd: number): boolean {
  return cmd === P.NBD_CMD_WRITE || cmd === P.NBD_CMD_WRITE_ZEROES;
}

/** The errno for a request range that lies (partly) outside the export. */
export function outOfRangeErrno(cmd: number): number {
  return isWriteCommand(cmd) ? P.NBD_ENOSPC : P.NBD_EINVAL;
}

/** Maps anything a VolumeHandle call threw to an NBD errno for command `cmd`. */
export function mapStoreError(err: unknown, cmd: number): MappedError {
  if (!isDormantError(err)) {
    return { errno: P.NBD_EIO, unexpected: true, message: 'internal error' };
  }
  switch (err.code) {
    case 'ERANGE':
      return { errno: outOfRangeErrno(cmd), unexpected: false, message: 'out of range' };
    case 'EROFS':
      return { errno: P.NBD_EPERM, unexpected: false, message: 'read-only export' };
    case 'EINVAL':
      return { errno: P.NBD_EINVAL, unexpected: false, message: 'invalid argument' };
    case 'ENOSPC':
      return { errno: P.NBD_ENOSPC, unexpected: false, message: 'no space left' };
    case 'EIO':
      return { errno: P.NBD_EIO, unexpected: true, message: 'I/O error' };
    default:
      return { errno: P.NBD_EIO, unexpected: true, message: 'I/O error' };
  }
}

/** Human name of an NBD errno, for log lines. */
export function errnoName(errno: number): string {
  switch (errno) {
    case P.NBD_EPERM: return 'EPERM';
    case P.NBD_EIO: return 'EIO';
    case P.NBD_ENOMEM: return 'ENOMEM';
    case P.NBD_EINVAL: return 'EINVAL';
    case P.NBD_ENOSPC: return 'ENOSPC';
    case P.NBD_EOVERFLOW: return 'EOVERFLOW';
    case P.NBD_ENOTSUP: return 'ENOTSUP';
    case P.NBD_ESHUTDOWN: return 'ESHUTDOWN';
    default: return `errno ${errno}`;
  }
}

/** An option-phase error reply type for a backend failure while looking up an export. */
export function mapBackendErrorToRep(err: unknown): { rep: number; unexpected: boolean } {
  if (isDormantError(err, 'ENOENT', 'EINVAL')) return { rep: P.NBD_REP_ERR_UNKNOWN, unexpected: false };
  if (isDormantError(err, 'ECLOSED')) return { rep: P.NBD_REP_ERR_SHUTDOWN, unexpected: false };
  return { rep: P.NBD_REP_ERR_INVALID, unexpected: true };
}
