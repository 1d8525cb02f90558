/**
 * One image build at a time per cache directory, across processes.
 *
 * Like the store lock (src/blockstore/lock.ts), the lock is a listening Unix
 * socket in Linux's abstract namespace named after the directory's device
 * and inode: binding is exclusive and the kernel releases it when the holder
 * dies, so a killed build leaves no stale lock. Unlike the store lock, a
 * second builder waits (the first one's result is then found in the cache).
 */
import fs from 'node:fs';
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { DormantError } from '../blockstore/index.js';

/** How long a builder waits for another one before giving up. */
const WAIT_MS = 10 * 60_000;
/** Retry interval while another builder holds the lock. */
const RETRY_MS = 200;

function tryBind(name: string): Promise<net.Server | null> {
  return new Promise((resolve, reject) => {
    const server = net.createServer((c) => c.destroy());
    server.once('error', (err: NodeJS.ErrnoException) => (err.code === 'EADDRINUSE' ? resolve(null) : reject(err)));
    server.listen(name, () => { server.unref(); resolve(server); });
  });
}

/** Runs `fn` holding the build lock of `dir` (an existing directory), waiting for it if needed. */
export async function withCacheLock<T>(dir: string, fn: () => Promise<T>, log: (line: string) => void = () => undefined): Promise<T> {
  const st = fs.statSync(dir);
  const name = `\0dormant-image-cache-${st.dev.toString(16)}-${st.ino.toString(16)}`;
  const deadline = Date.now() + WAIT_MS;
  let said = false;
  for (;;) {
    const server = await tryBind(name);
    if (server) {
      try {
        return await fn();
      } finally {
        await new Promise<void>((resolve) => server.close(() => resolve()));
      }
    }
    if (Date.now() > deadline) throw new DormantError('EBUSY', `image cache ${dir} is busy: another build has held it for ${WAIT_MS / 60_000} minutes`);
    if (!said) { log(`image cache ${dir}: another build is running, waiting for it`); said = true; }
    await sleep(RETRY_MS);
  }
}
