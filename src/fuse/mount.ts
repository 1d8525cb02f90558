/**
 * Mounting and unmounting the FUSE view of a store (fuse-native over
 * libfuse2, fusermount for the unprivileged parts).
 *
 * States: unmounted -> mounting -> mounted -> unmounting -> unmounted.
 * Before mounting, the mount point is probed: a FUSE mount left behind by a
 * daemon that died (kill -9) answers ENOTCONN and is cleaned with
 * `fusermount -uz`, with a log line saying so; a live mount is refused
 * (EBUSY). Unmounting is lazy (`fusermount -uz`): the kernel detaches the
 * tree at once and finishes with files still open; after that every store
 * handle is closed, and the caller closes the store.
 *
 * Page cache and coherence (direct_io off, so shared mmap works): the kernel
 * caches file pages; libfuse2 drops a file's cached pages at each open(2)
 * (no kernel_cache/auto_cache), and attributes are cached for ATTR_TIMEOUT_S.
 * So data written over NBD is seen through FUSE by the next open(2) of the
 * file; a descriptor or mapping opened before may serve older pages. One
 * writer path per volume at a time (NBD or FUSE) is the rule; FUSE writes
 * and msync(2) reach the store before they return, so NBD reads see them.
 *
 * Throughput: libfuse2 moves at most 128 KiB per request (32 pages), so
 * max_read and max_write are 128 KiB and big_writes is on.
 *
 * Access: by default only the user who mounted the view may use it (FUSE
 * refuses everyone else, root included, before any callback runs).
 * `allowOther` lets other users in (allow_other) with the kernel checking
 * the modes the view shows (default_permissions): everyone may read,
 * only the daemon's user may write. While mounted, the mount point is in
 * `store.views`, so import and export refuse paths in it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import Fuse from 'fuse-native';
import { DormantError, type Store } from '../blockstore/index.js';
import { HandlePool } from './handles.js';
import { buildOperations, type FuseLog, type IoObserver } from './operations.js';

/** Largest FUSE request libfuse2 negotiates with the kernel (32 pages). */
export const FUSE_MAX_IO = 128 * 1024;
/** Seconds the kernel caches attributes and names (sizes after a resize show within this). */
export const ATTR_TIMEOUT_S = 1;
/** Per-operation timeout in fuse-native; past it the kernel gets ETIMEDOUT. */
const OP_TIMEOUT_MS = 120_000;

/** fuse-native plus the libfuse2 options it has no field for. */
class DormantFuse extends Fuse {
  override _fuseOptions(): string {
    const base = super._fuseOptions();
    const extra = ['big_writes', `max_write=${FUSE_MAX_IO}`];
    return base ? `${base},${extra.join(',')}` : `-o${extra.join(',')}`;
  }
}

/** Options of `mountStore`. */
export interface MountOptions {
  /** One line per event (stale mount cleaned, unexpected errors). */
  log?: FuseLog;
  /** Every file read-only (EROFS on writes), as `serve --read-only` does for NBD. */
  readOnly?: boolean;
  /** Told of every successful read and write (the pager's fault and page-out stream). */
  observer?: IoObserver;
  /** Other users may use the view too (allow_other, with the modes it shows enforced). */
  allowOther?: boolean;
}

/** What the mount point looks like before mounting. */
export type MountPointState = 'free' | 'stale' | 'mounted';

/** True when `dir` is a mount point in this mount namespace (/proc/self/mountinfo). */
function isMountPoint(dir: string): boolean {
  let info: string;
  try { info = fs.readFileSync('/proc/self/mountinfo', 'utf8'); } catch { return false; }
  const unescape = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return info.split('\n').some((line) => line.split(' ')[4] !== undefined && unescape(line.split(' ')[4]) === dir);
}

/** Probes `dir`: free, a stale FUSE mount (ENOTCONN) or a live mount. ENOENT/EINVAL for a bad dir. */
export function probeMountPoint(dir: string): MountPointState {
  try {
    const st = fs.statSync(dir);
    if (!st.isDirectory()) throw new DormantError('EINVAL', `mount point ${dir} is not a directory`, { path: dir });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOTCONN' || code === 'ECONNABORTED') return 'stale';
    if (code === 'ENOENT') throw new DormantError('ENOENT', `mount point ${dir} does not exist`, { path: dir });
    throw err;
  }
  return isMountPoint(dir) ? 'mounted' : 'free';
}

/** Lazily unmounts a stale FUSE mount at `dir` (fusermount -uz). */
export function cleanStaleMount(dir: string): void {
  try {
    execFileSync('fusermount', ['-uz', dir], { stdio: ['ignore', 'ignore', 'pipe'], timeout: 30_000 });
  } catch (err) {
    const stderr = String((err as { stderr?: Buffer }).stderr ?? '').trim();
    throw new DormantError('EBUSY', `cannot clean stale mount at ${dir} with fusermount -uz: ${stderr || (err as Error).message}`,
      { path: dir, cause: err });
  }
}

/** A mounted FUSE view; `unmount()` detaches it and closes its store handles (not the store). */
export interface FuseMount {
  readonly dir: string;
  unmount(): Promise<void>;
}

/** Mounts the FUSE view of `store` on `dir` (an existing directory); cleans a stale mount first. */
export async function mountStore(store: Store, dir: string, opts: MountOptions = {}): Promise<FuseMount> {
  const log = opts.log ?? (() => undefined);
  const abs = path.resolve(dir);
  const state = probeMountPoint(abs);
  if (state === 'stale') {
    log(`fuse: ${abs} is a stale FUSE mount (its daemon died: transport endpoint is not connected); `
      + 'cleaning it with fusermount -uz', { level: 'warn', mount: abs });
    cleanStaleMount(abs);
    if (probeMountPoint(abs) !== 'free') throw new DormantError('EBUSY', `${abs} is still a mount point after fusermount -uz`, { path: abs });
  } else if (state === 'mounted') {
    throw new DormantError('EBUSY', `${abs} is already a mount point (another dormant mount?); unmount it first: fusermount -u ${abs}`,
      { path: abs });
  }
  const handles = new HandlePool(store);
  const fuse = new DormantFuse(abs, buildOperations(store, handles, log, Boolean(opts.readOnly), opts.observer), {
    timeout: OP_TIMEOUT_MS, maxRead: FUSE_MAX_IO, fsname: 'dormant', subtype: 'dormant',
    attrTimeout: ATTR_TIMEOUT_S, entryTimeout: ATTR_TIMEOUT_S,
    allowOther: Boolean(opts.allowOther), defaultPermissions: Boolean(opts.allowOther),
  });
  await new Promise<void>((resolve, reject) => {
    fuse.mount((err) => {
      if (!err) { resolve(); return; }
      const other = opts.allowOther ? '; --allow-other needs root or user_allow_other in /etc/fuse.conf' : '';
      reject(new DormantError('EINVAL', `cannot mount FUSE on ${abs}: ${err.message} `
        + `(needs /dev/fuse, libfuse2 and fusermount from fuse3${other})`, { path: abs, cause: err }));
    });
  });
  store.views.add(abs);
  let unmounting: Promise<void> | null = null;
  return {
    dir: abs,
    unmount() {
      unmounting ??= (async () => {
        await new Promise<void>((resolve, reject) => fuse.unmount((err) => {
          if (!err) { resolve(); return; }
          reject(new DormantError('EBUSY', `cannot unmount ${abs}: ${err.message}`, { path: abs, cause: err }));
        }));
        store.views.delete(abs);
        await handles.closeAll();
      })();
      return unmounting;
    },
  };
}
