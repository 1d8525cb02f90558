/**
 * Who may read a store: its owner only. The store directory and every
 * directory under it are 0700, every file in it 0600 (index, segments,
 * lock.pid, VM records, working sets, serial logs), whatever umask the
 * process started with; sockets keep the modes their makers give them
 * (control.sock 0600).
 *
 * How, in order:
 *  - `restrictUmask` (called first by Store.init and Store.open) sets the
 *    process's umask to 077 for the rest of its life (the daemon, or one CLI
 *    command), so everything created in the store afterwards is born
 *    owner-only: LMDB's files, segments, VM records and working sets, and
 *    what the daemon's children make there (QEMU's serial logs and QMP
 *    sockets). The umask the process started with is kept (`userUmask`) for
 *    the files dormant writes for the user outside the store (export).
 *  - `tightenStore` chmods what an older store, or another umask, left
 *    wider, only when the process owns the store directory (root opening
 *    another user's store leaves its modes alone).
 *  - `checkAccess` turns a store directory this user may not enter into
 *    one clear EACCES instead of "not initialised".
 */
import fs from 'node:fs';
import path from 'node:path';
import { DormantError } from './errors.js';

/** Mode of the store directory and every directory under it. */
export const STORE_DIR_MODE = 0o700;
/** Mode of every file the store keeps. */
export const STORE_FILE_MODE = 0o600;
/** Umask of a process that owns a store. */
const STORE_UMASK = 0o077;

/** The umask the process had before `restrictUmask` (undefined until then). */
let startedWith: number | undefined;

/** Sets the process umask to 077, once; a worker thread (which may not change it) keeps its own. */
export function restrictUmask(): void {
  if (startedWith !== undefined) return;
  try {
    startedWith = process.umask(STORE_UMASK);
  } catch {
    // Worker threads cannot change the umask: tightenStore and explicit modes still apply.
  }
}

/** The umask the user started dormant with, for files written outside the store. */
export function userUmask(): number {
  if (startedWith !== undefined) return startedWith;
  const now = process.umask(STORE_UMASK);
  process.umask(now);
  return now;
}

/** Throws EACCES when `dir` exists but this user may not read, write or enter it. */
export function checkAccess(dir: string): void {
  try {
    fs.accessSync(dir, fs.constants.R_OK | fs.constants.W_OK | fs.constants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'EACCES' && code !== 'EPERM') return; // missing: the caller says so
    let owner = '';
    try {
      const st = fs.statSync(dir);
      owner = ` (owned by uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)})`;
    } catch { /* unknown */ }
    throw new DormantError('EACCES', `permission denied on the store directory ${dir}${owner}: `
      + 'run dormant as the store\'s owner, or root', { path: dir, cause: err });
  }
}

/** Chmods the store directory tree to 0700 directories and 0600 files when this process owns it. */
export function tightenStore(dir: string): void {
  const uid = process.getuid?.();
  let st: fs.Stats;
  try { st = fs.lstatSync(dir); } catch { return; }
  if (uid === undefined || st.uid !== uid || !st.isDirectory()) return;
  tighten(dir, st);
}

function tighten(p: string, st: fs.Stats): void {
  try {
    if (st.isDirectory()) {
      if ((st.mode & 0o7777) !== STORE_DIR_MODE) fs.chmodSync(p, STORE_DIR_MODE);
      for (const name of fs.readdirSync(p)) {
        const child = path.join(p, name);
        let cst: fs.Stats;
        try { cst = fs.lstatSync(child); } catch { continue; } // removed meanwhile
        tighten(child, cst);
      }
    } else if (st.isFile() && (st.mode & 0o7777) !== STORE_FILE_MODE) {
      fs.chmodSync(p, STORE_FILE_MODE);
    }
    // Symbolic links have no mode of their own; sockets keep theirs.
  } catch (err) {
    // Removed meanwhile, or a file another user made (root's, in a user's store): left as it is.
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOENT' && code !== 'EPERM') throw err;
  }
}
