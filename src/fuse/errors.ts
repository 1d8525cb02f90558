/**
 * The one place where store errors become FUSE errno values.
 *
 * libfuse's replies take a positive errno. The store throws
 * DormantError with a `code`; most codes have a same-named errno. ERANGE (a
 * range outside the volume) is ENOSPC for writes, as for a full disk, and
 * EINVAL otherwise. ENOSPC (a full store: the free-space floor refused the
 * write) stays ENOSPC and is not logged per request: the store logs once
 * when writes start being refused. Anything unexpected becomes EIO and is
 * logged by the caller with the original error.
 */
import os from 'node:os';
import { isDormantError } from '../blockstore/index.js';

const E = os.constants.errno;

/** errno values handed back to the kernel. */
export const FUSE_ERRNO = {
  EPERM: E.EPERM,
  ENOENT: E.ENOENT,
  EIO: E.EIO,
  EBADF: E.EBADF,
  EACCES: E.EACCES,
  EBUSY: E.EBUSY,
  EEXIST: E.EEXIST,
  ENOTDIR: E.ENOTDIR,
  EISDIR: E.EISDIR,
  EINVAL: E.EINVAL,
  EFBIG: E.EFBIG,
  ENOSPC: E.ENOSPC,
  EROFS: E.EROFS,
  ENOTSUP: E.ENOTSUP,
  ENOSYS: E.ENOSYS,
  ENOTCONN: E.ENOTCONN,
} as const;

/** A FUSE errno plus whether the original error deserves a log line. */
export interface MappedError {
  errno: number;
  /** true when the error was not an expected, user-caused failure. */
  unexpected: boolean;
}

/** Maps anything a Store or VolumeHandle call threw to an errno; `write` for data-writing calls. */
export function mapStoreError(err: unknown, write = false): MappedError {
  if (!isDormantError(err)) return { errno: FUSE_ERRNO.EIO, unexpected: true };
  switch (err.code) {
    case 'ENOENT': return { errno: FUSE_ERRNO.ENOENT, unexpected: false };
    case 'EEXIST': return { errno: FUSE_ERRNO.EEXIST, unexpected: false };
    case 'EINVAL': return { errno: FUSE_ERRNO.EINVAL, unexpected: false };
    case 'ERANGE': return { errno: write ? FUSE_ERRNO.ENOSPC : FUSE_ERRNO.EINVAL, unexpected: false };
    case 'EROFS': return { errno: FUSE_ERRNO.EROFS, unexpected: false };
    case 'EBUSY': return { errno: FUSE_ERRNO.EBUSY, unexpected: false };
    case 'ENOSPC': return { errno: FUSE_ERRNO.ENOSPC, unexpected: false };
    case 'ECLOSED': return { errno: FUSE_ERRNO.EIO, unexpected: false };
    default: return { errno: FUSE_ERRNO.EIO, unexpected: true };
  }
}
