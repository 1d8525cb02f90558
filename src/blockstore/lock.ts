/**
 * Single-writer lock of a store directory.
 *
 * The lock is a listening Unix socket in Linux's abstract namespace, named
 * after the store directory's device and inode. Binding is exclusive, and the
 * kernel releases it the moment the owner dies (even by SIGKILL), so there
 * is no stale lock to clean up and no race between "is the owner alive?" and
 * "take it". The owner's pid is written beside it, for the error message only.
 */
import net from 'node:net';
import fs from 'node:fs';
import path from 'node:path';
import { DormantError } from './errors.js';

/** Name of the informational pid file in the store directory. */
export const LOCK_PID_FILE = 'lock.pid';

/** A held lock; `release()` frees it. */
export interface StoreLock { release(): Promise<void> }

function lockName(dir: string): string {
  const st = fs.statSync(dir);
  return `\0dormant-store-${st.dev.toString(16)}-${st.ino.toString(16)}`;
}

/** Takes the store's lock or fails with ELOCKED naming the owner's pid. */
export async function acquireStoreLock(dir: string): Promise<StoreLock> {
  const server = net.createServer((c) => c.destroy());
  await new Promise<void>((resolve, reject) => {
    server.once('error', (err: NodeJS.ErrnoException) => {
      if (err.code === 'EADDRINUSE') {
        let owner = '';
        try {
          owner = fs.readFileSync(path.join(dir, LOCK_PID_FILE), 'utf8').trim();
        } catch { /* pid file is informational only */ }
        reject(new DormantError('ELOCKED',
          `store ${dir} is locked by another process${owner ? ` (pid ${owner})` : ''}`, { path: dir }));
      } else {
        reject(new DormantError('EINTERNAL', `cannot lock store ${dir}: ${err.message}`, { path: dir, cause: err }));
      }
    });
    server.listen(lockName(dir), () => resolve());
  });
  // The lock must not keep the process alive by itself.
  server.unref();
  try {
    fs.writeFileSync(path.join(dir, LOCK_PID_FILE), `${process.pid}\n`, { mode: 0o600 });
  } catch (err) {
    // Informational only: a full disk must not keep the owner from opening the store (to free space).
    const code = (err as NodeJS.ErrnoException).code;
    if (code !== 'ENOSPC' && code !== 'EDQUOT') throw err;
  }
  return {
    async release() {
      try { fs.unlinkSync(path.join(dir, LOCK_PID_FILE)); } catch { /* already gone */ }
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
