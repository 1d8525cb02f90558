/**
 * `-` (and /dev/stdin, /dev/stdout) for import and export. The copy runs
 * where the store is open, often in the daemon, which cannot use this
 * process's descriptors: a regular file or a character device on stdin or
 * stdout is named as /proc/PID/fd/N (the daemon opens the same file); a
 * pipe or a socket (which /proc cannot reopen) is relayed through a FIFO
 * in a private temporary directory, this process copying between it and
 * its own stdin or stdout. A terminal is refused.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DormantError } from '../blockstore/index.js';

/** Names of this process's stdin (fd 0) and stdout (fd 1) that mean "-". */
const ALIASES: Record<0 | 1, string[]> = {
  0: ['-', '/dev/stdin', '/dev/fd/0', '/proc/self/fd/0'],
  1: ['-', '/dev/stdout', '/dev/fd/1', '/proc/self/fd/1'],
};

/** A host path for the copy, and what to do once the copy is over. */
export interface StdioTarget {
  /** What import reads or export writes. */
  file: string;
  /** True when it is this process's stdout (the summary then goes to stderr). */
  isStdout: boolean;
  /** Waits for the relay (if any) and removes the FIFO; call once, after the copy (also after a failed one). */
  finish(): Promise<void>;
}

/** Resolves `file` for import (fd 0) or export (fd 1). */
export async function stdioPath(file: string, fd: 0 | 1): Promise<StdioTarget> {
  if (!ALIASES[fd].includes(file)) return { file: path.resolve(file), isStdout: false, finish: async () => undefined };
  const st = fs.fstatSync(fd);
  const stream = fd === 0 ? process.stdin : process.stdout;
  if (stream.isTTY) {
    throw new DormantError('EINVAL', fd === 0 ? 'refusing to read an image from a terminal: pipe or redirect it into stdin'
      : 'refusing to write an image to a terminal: pipe or redirect stdout');
  }
  if (st.isFile() || st.isCharacterDevice() || st.isBlockDevice()) {
    return { file: `/proc/${process.pid}/fd/${fd}`, isStdout: fd === 1, finish: async () => undefined };
  }
  return relay(fd);
}

/** A FIFO the copy reads (import) or writes (export), with this process on the other end. */
async function relay(fd: 0 | 1): Promise<StdioTarget> {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'dormant-stdio-'));
  const fifo = path.join(dir, fd === 0 ? 'stdin' : 'stdout');
  try {
    execFileSync('mkfifo', ['-m', '600', fifo], { stdio: 'ignore' });
  } catch (err) {
    await fs.promises.rm(dir, { recursive: true, force: true });
    throw new DormantError('EINVAL', `cannot make a FIFO for ${fd === 0 ? 'stdin' : 'stdout'} in ${dir}: ${(err as Error).message}`);
  }
  let failure: Error | undefined;
  const done = new Promise<void>((resolve) => {
    if (fd === 0) {
      const out = fs.createWriteStream(fifo);
      out.on('error', (err: NodeJS.ErrnoException) => { if (err.code !== 'EPIPE') failure = err; resolve(); });
      out.on('close', () => resolve());
      process.stdin.pipe(out);
    } else {
      const input = fs.createReadStream(fifo);
      input.on('error', (err) => { failure = err; resolve(); });
      input.on('end', () => {
        if (process.stdout.writableNeedDrain) process.stdout.once('drain', () => resolve()); else resolve();
      });
      input.pipe(process.stdout, { end: false });
    }
  });
  return {
    file: fifo,
    isStdout: fd === 1,
    async finish() {
      // The copy is over: if it never opened the FIFO, opening it both ways here releases the relay's open.
      try { fs.closeSync(fs.openSync(fifo, fs.constants.O_RDWR | fs.constants.O_NONBLOCK)); } catch { /* gone */ }
      if (fd === 0) process.stdin.unpipe();
      await done;
      if (fd === 0) process.stdin.destroy();
      await fs.promises.rm(dir, { recursive: true, force: true });
      if (failure) throw new DormantError('EIO', `relaying ${fd === 0 ? 'stdin' : 'stdout'}: ${failure.message}`);
    },
  };
}
