/**
 * Real FUSE mounts for the tests: the daemon (`dormant mount DIR` or
 * `dormant serve --mount DIR`) in a child process, bounded tool runs, and a
 * last-resort `fusermount -uz` for afterAll. Every wait is bounded; a tool
 * that cannot be started fails the test.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import { BIN, cliEnv, ensureBuilt } from './cli.js';

/** What a finished child process left behind. */
export interface Exit { code: number | null; signal: NodeJS.Signals | null }

/** A running daemon child. */
export interface MountDaemon {
  child: ChildProcess;
  stderr(): string;
  exited: Promise<Exit>;
  /** SIGTERM, then a bounded wait (SIGKILL if it hangs). */
  stop(timeoutMs?: number): Promise<Exit>;
}

const children = new Set<ChildProcess>();
const mounts = new Set<string>();

/** Starts `dormant --store STORE <args>`; resolves once stderr matches `ready`. `mnt`: its mount point ('' for none). */
export async function startDaemon(store: string, mnt: string, args: string[], ready: RegExp,
  timeoutMs = 30_000): Promise<MountDaemon> {
  ensureBuilt();
  if (mnt) mounts.add(mnt);
  const child = spawn(process.execPath, [BIN, '--store', store, ...args], {
    env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.add(child);
  let err = '';
  child.stdout!.resume();
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => { children.delete(child); resolve({ code, signal }); });
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`daemon not ready in ${timeoutMs} ms: ${err}`)), timeoutMs);
    const poll = setInterval(() => {
      if (ready.test(err)) { clearInterval(poll); clearTimeout(timer); resolve(); }
    }, 20);
    void exited.then((e) => {
      clearInterval(poll); clearTimeout(timer);
      reject(new Error(`daemon exited (${e.code}/${e.signal}) before it was ready: ${err}`));
    });
  });
  let termed = false;
  return {
    child,
    stderr: () => err,
    exited,
    async stop(ms = 20_000) {
      if (!termed && child.exitCode === null && child.signalCode === null) { termed = true; child.kill('SIGTERM'); }
      const t = setTimeout(() => child.kill('SIGKILL'), ms);
      try { return await exited; } finally { clearTimeout(t); }
    },
  };
}

/** Runs a tool with a timeout; rejects when it cannot start, fails, or times out. */
export function tool(cmd: string, args: string[], timeoutMs = 120_000): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL' },
      (err, stdout, stderr) => {
        if (c.pid !== undefined) children.delete(c);
        if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
        else resolve({ stdout, stderr });
      });
    if (c.pid !== undefined) children.add(c);
  });
}

/** Python that maps FILE MAP_SHARED, writes pattern(i) at every STEP-th page, msyncs and unmaps. */
export const MMAP_WRITER = `
import mmap, os, sys
path, step, loop = sys.argv[1], int(sys.argv[2]), sys.argv[3] == 'loop'
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
rnd = 0
while True:
    for i in range(0, size // 4096, step):
        m[i * 4096:i * 4096 + 16] = b'PAGE%08dR%03d' % (i, rnd % 1000)
    m.flush()
    if not loop:
        break
    print('round', rnd, flush=True)
    rnd += 1
m.close()
os.close(fd)
print('done', flush=True)
`;

/** The 16 bytes MMAP_WRITER puts at page `i` in round `rnd`. */
export function mmapPattern(i: number, rnd = 0): Buffer {
  return Buffer.from(`PAGE${String(i).padStart(8, '0')}R${String(rnd % 1000).padStart(3, '0')}`);
}

/** Kills every child still running and lazily unmounts every mount point used (afterAll). */
export async function cleanupMounts(): Promise<void> {
  await Promise.all([...children].map((c) => new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) { resolve(); return; }
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  })));
  children.clear();
  for (const m of mounts) {
    await new Promise<void>((resolve) => execFile('fusermount', ['-uz', m], { timeout: 10_000 }, () => resolve()));
  }
  mounts.clear();
}

/** True when `dir` is in /proc/self/mounts. */
export function isMounted(dir: string): boolean {
  return fs.readFileSync('/proc/self/mounts', 'utf8').split('\n').some((l) => l.split(' ')[1] === dir);
}
