/**
 * Mounting and unmounting the FUSE view of a store: a libfuse3 session of
 * our own (native/src/fuse.cc, low-level API) whose requests operations.ts
 * answers on the JS thread, several in flight at once.
 *
 * States: unmounted -> mounting -> mounted -> unmounting -> unmounted.
 * Before mounting, the mount point is probed: a FUSE mount left behind by a
 * daemon that died (kill -9) answers ENOTCONN and is cleaned with
 * `fusermount -uz`, with a log line saying so; a live mount is refused
 * (EBUSY). Unmounting stops taking requests, waits (at most
 * UNMOUNT_WAIT_MS) for the answers of those in flight, then closes the
 * device (anything the kernel still queues fails) and detaches the tree
 * lazily; after that every store handle is closed, and the caller closes
 * the store. Unmounted from outside (`fusermount -u`), the view tears
 * itself down the same way and logs it.
 *
 * Page cache and coherence (direct I/O off, so shared mmap works): the
 * kernel caches file pages and drops a file's cached pages at each open(2)
 * (no keep_cache); attributes are cached for ATTR_TIMEOUT_S, and a changed
 * mtime does not invalidate cached data (no auto_inval_data: a VM's RAM
 * file keeps its pages while it is written). So data written over NBD is
 * seen through FUSE by the next open(2) of the file; a descriptor or
 * mapping opened before may serve older pages. One writer path per volume
 * at a time (NBD or FUSE) is the rule; FUSE writes and msync(2) reach the
 * store before they return (no write-back cache), so NBD reads see them.
 *
 * Throughput: requests up to 1 MiB (libfuse3's max_write with the kernel's
 * max_pages); reads of the page cache's read-ahead are at most its window
 * (128 KiB by default).
 *
 * Access: by default only the user who mounted the view may use it (FUSE
 * refuses everyone else, root included, before any request reaches us).
 * `allowOther` lets other users in (allow_other) with the kernel checking
 * the modes the view shows (default_permissions): everyone may read,
 * only the daemon's user may write. While mounted, the mount point is in
 * `store.views`, so import and export refuse paths in it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { DormantError, type Store } from '../blockstore/index.js';
import {
  FUSE_OP, fuseDestroy, fuseInFlight, fuseMount, fuseReplyAttr, fuseReplyBuf, fuseReplyDir, fuseReplyEntry, fuseReplyErr,
  fuseReplyFile, fuseReplyOpen, fuseReplyStatfs, fuseReplyWrite, fuseStop,
} from '../native/index.js';
import { FUSE_ERRNO } from './errors.js';
import { HandlePool } from './handles.js';
import { FuseOperations, type FuseLog, type FuseReply, type IoObserver } from './operations.js';

/** Largest FUSE request (libfuse3's max_write: 256 pages). */
export const FUSE_MAX_IO = 1024 * 1024;
/** Seconds the kernel caches attributes and names (sizes after a resize show within this). */
export const ATTR_TIMEOUT_S = 1;
/** At unmount, how long requests in flight get to be answered before they are failed (ENOTCONN). */
const UNMOUNT_WAIT_MS = 30_000;

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
  // Requests held (answered at most once: one answered after its session is gone is dropped here).
  // A request is a number libfuse may reuse for a new one once it is answered: forget it before answering.
  const held = new Set<number>();
  const answer = (req: number, send: () => void) => { if (held.delete(req)) send(); };
  const reply: FuseReply = {
    err: (req, errno) => answer(req, () => fuseReplyErr(req, errno)),
    buf: (req, data, length) => answer(req, () => fuseReplyBuf(req, data, length)),
    write: (req, count) => answer(req, () => fuseReplyWrite(req, count)),
    open: (req, fh) => answer(req, () => fuseReplyOpen(req, fh)),
    attr: (req, attr, timeout) => answer(req, () => fuseReplyAttr(req, attr, timeout)),
    entry: (req, attr, a, e) => answer(req, () => fuseReplyEntry(req, attr, a, e)),
    statfs: (req, values) => answer(req, () => fuseReplyStatfs(req, values)),
    dir: (req, size, offset, names, inos, modes) => answer(req, () => fuseReplyDir(req, size, offset, names, inos, modes)),
    file: (req, fd, position, length, hashes, done) => {
      // Handed over: no longer held here, since once the pool answers it, libfuse frees it and the same
      // number may come back as a new request. Not answered there (r !== -1): held again, for the caller's error.
      if (!held.delete(req)) { done(-2); return; }
      fuseReplyFile(req, fd, position, length, hashes, (r) => {
        if (r !== -1) held.add(req);
        done(r);
      });
    },
  };
  const ops = new FuseOperations(reply, store, handles, log, Boolean(opts.readOnly), opts.observer, ATTR_TIMEOUT_S);
  const options = ['fsname=dormant', 'subtype=dormant', ...(opts.allowOther ? ['allow_other', 'default_permissions'] : [])];
  let unmounting: Promise<void> | null = null;
  let session: number;
  try {
    session = fuseMount(abs, options.join(','), (op, req, ino, a, b, extra) => {
      if (op === FUSE_OP.ENDED) {
        log(`fuse: ${abs} was unmounted from outside; the view is closed`, { level: 'warn', mount: abs });
        void teardown().catch(() => undefined);
        return;
      }
      held.add(req);
      ops.handle(op, req, ino, a, b, extra);
    });
  } catch (err) {
    const other = opts.allowOther ? '; --allow-other needs root or user_allow_other in /etc/fuse.conf' : '';
    throw new DormantError('EINVAL', `cannot mount FUSE on ${abs}: ${(err as Error).message} `
      + `(needs /dev/fuse, libfuse3 and fusermount3 from fuse3${other})`, { path: abs, cause: err });
  }
  // The view keeps the process up while mounted, as a listening socket would.
  const keepAlive = setInterval(() => undefined, 1 << 30);
  store.views.add(abs);

  const teardown = (): Promise<void> => {
    unmounting ??= (async () => {
      clearInterval(keepAlive);
      fuseStop(session);
      const deadline = Date.now() + UNMOUNT_WAIT_MS;
      while (fuseInFlight(session) > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
      if (fuseInFlight(session) > 0) {
        log(`fuse: ${held.size} request(s) still unanswered after ${UNMOUNT_WAIT_MS / 1000} s at unmount; failing them`,
          { level: 'warn', mount: abs });
        for (const req of [...held]) reply.err(req, FUSE_ERRNO.ENOTCONN);
        for (let i = 0; i < 100 && fuseInFlight(session) > 0; i++) await new Promise((r) => setTimeout(r, 10));
      }
      try {
        fuseDestroy(session);
      } catch (err) {
        throw new DormantError('EBUSY', `cannot unmount ${abs}: ${(err as Error).message}`, { path: abs, cause: err });
      } finally {
        held.clear();
        store.views.delete(abs);
      }
      await handles.closeAll();
    })();
    return unmounting;
  };
  return { dir: abs, unmount: teardown };
}

