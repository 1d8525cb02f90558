/**
 * A swap file the daemon sets up for itself (`dormant serve --swap-file
 * PATH --swap-size SIZE`, opt-in): with swap on the host, the pager pages
 * out QEMU's own memory of idle VMs too (vm-pager.ts), not only their guest
 * RAM. The file is allocated in full (swap refuses holes), made 0600,
 * formatted with mkswap and enabled with swapon; remove() turns it off and
 * deletes it when the daemon stops. A file that exists already is refused:
 * it is not ours to format.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import { DormantError } from '../blockstore/index.js';
import { allocateRange } from '../native/index.js';

function run(cmd: string, args: string[]): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 120_000, env: { ...process.env, PATH: `${process.env.PATH ?? ''}:/usr/sbin:/sbin` } },
      (err, _out, stderr) => {
        if (!err) { resolve(); return; }
        const e = err as NodeJS.ErrnoException;
        reject(new DormantError(e.code === 'ENOENT' ? 'EINVAL' : 'EINTERNAL',
          e.code === 'ENOENT' ? `${cmd} is not installed` : `${cmd} ${args.join(' ')}: ${(stderr || e.message).trim().split('\n').pop()}`));
      });
  });
}

/** A swap file this process enabled. */
export class SwapFile {
  private constructor(readonly path: string, readonly bytes: number) {}

  /** Creates, formats and enables a swap file of `bytes` at `path`. */
  static async create(path: string, bytes: number): Promise<SwapFile> {
    if (!Number.isSafeInteger(bytes) || bytes < 40 * 4096 || bytes % 4096 !== 0) {
      throw new DormantError('EINVAL', `bad --swap-size ${bytes}: at least 160 KiB, a whole number of 4 KiB pages`);
    }
    let fd: number;
    try {
      fd = fs.openSync(path, fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_WRONLY, 0o600);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      throw new DormantError(e.code === 'EEXIST' ? 'EEXIST' : 'EINVAL',
        e.code === 'EEXIST' ? `--swap-file ${path} exists: name a new file (dormant makes it and removes it)` : `cannot create --swap-file ${path}: ${e.message}`);
    }
    try {
      try { allocateRange(fd, 0, bytes); } finally { fs.closeSync(fd); }
      fs.chmodSync(path, 0o600);
      await run('mkswap', ['-q', path]);
      await run('swapon', [path]);
    } catch (err) {
      fs.rmSync(path, { force: true });
      throw err instanceof DormantError ? err : new DormantError('EINVAL', `cannot set up --swap-file ${path}: ${(err as Error).message}`);
    }
    return new SwapFile(path, bytes);
  }

  /** Turns the swap file off (its pages come back into memory first) and deletes it. */
  async remove(): Promise<void> {
    try {
      await run('swapoff', [this.path]);
    } finally {
      fs.rmSync(this.path, { force: true });
    }
  }
}
