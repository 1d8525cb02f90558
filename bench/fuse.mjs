#!/usr/bin/env node
/**
 * FUSE benchmark: the same workloads on a volume file of the FUSE view
 * (`dormant serve --mount`, run from dist/ in a child process), on a file
 * `nbdfuse` shows for another volume of the same daemon over its NBD Unix
 * socket (the generic tool a user would stack on dormant instead), and on a
 * file of the same size on tmpfs (/dev/shm), in the same run:
 *   - 1 MiB sequential write and read (fio, psync engine, through the page cache);
 *   - 4 KiB random read (fio, psync engine) for BENCH_RUNTIME seconds;
 *   - page faults through a MAP_SHARED mapping: first touch (read) of every
 *     page, and first write of every page followed by msync (python3 mmap).
 * Each file is written once, untimed, before the workloads. Prints MB/s, IOPS and faults/s per target, the ratios of dormant's view
 * to nbdfuse and to tmpfs, and a markdown table.
 *
 * Build first (`npx tsc`). Env: BENCH_SIZE_MIB (default 256), BENCH_RUNTIME
 * (s, default 5), BENCH_DIR (work dir, default a temp dir, removed afterwards).
 */
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, mkdirSync, rmSync, writeFileSync, truncateSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.join(here, '..');
if (!existsSync(path.join(repo, 'dist', 'fuse', 'index.js'))) {
  console.error('bench/fuse.mjs: dist/fuse/index.js missing; run `npx tsc` first');
  process.exit(2);
}
const BIN = path.join(repo, 'bin', 'dormant');
const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_SIZE_MIB ?? 256) * MiB;
const RUNTIME = Number(process.env.BENCH_RUNTIME ?? 5);
const ownDir = process.env.BENCH_DIR === undefined;
const dir = process.env.BENCH_DIR ?? mkdtempSync(path.join(tmpdir(), 'dormant-bench-fuse-'));
const store = path.join(dir, 'store');
const mnt = path.join(dir, 'mnt');
const nbdMnt = path.join(dir, 'nbdfuse');
const shmDir = mkdtempSync('/dev/shm/dormant-bench-');
mkdirSync(mnt, { recursive: true });
mkdirSync(nbdMnt, { recursive: true });

let daemon = null;
let nbdfuse = null;
function cleanup() {
  try { execFileSync('fusermount3', ['-uz', nbdMnt], { stdio: 'ignore' }); } catch { /* not mounted */ }
  if (nbdfuse && nbdfuse.exitCode === null) nbdfuse.kill('SIGKILL');
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  try { execFileSync('fusermount', ['-uz', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ }
  rmSync(shmDir, { recursive: true, force: true });
  if (ownDir) rmSync(dir, { recursive: true, force: true });
}

const FAULTS = `
import mmap, os, sys, time
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
pages = size // 4096
t0 = time.perf_counter()
if mode == 'read':
    s = 0
    for i in range(pages):
        s += m[i * 4096]
else:
    for i in range(pages):
        m[i * 4096] = (i & 0x7f) | 1
    m.flush()
dt = time.perf_counter() - t0
m.close(); os.close(fd)
print(pages / dt)
`;

async function fio(file, name, rw, bs, timeBased) {
  const args = [`--name=${name}`, `--filename=${file}`, `--rw=${rw}`, `--bs=${bs}`, '--ioengine=psync',
    `--size=${SIZE}`, '--direct=0', '--invalidate=1', '--output-format=json', `--runtime=${timeBased ? RUNTIME : 60}`];
  if (timeBased) args.push('--time_based');
  if (rw === 'write') args.push('--end_fsync=1');
  const { stdout } = await run('fio', args, { timeout: 180_000, maxBuffer: 16 * MiB });
  const job = JSON.parse(stdout.slice(stdout.indexOf('{'))).jobs[0];
  const side = rw.includes('write') ? job.write : job.read;
  return { mbps: side.bw_bytes / 1e6, iops: side.iops };
}

async function faults(file, mode) {
  // Drop the file's cached pages so every first touch is a real fault.
  await run('python3', ['-c', `import os; fd=os.open(${JSON.stringify(file)}, os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED); os.close(fd)`]);
  const { stdout } = await run('python3', ['-c', FAULTS, file, mode], { timeout: 300_000 });
  return Number(stdout.trim());
}

async function startMount() {
  execFileSync(process.execPath, [BIN, '--store', store, 'init'], { stdio: 'ignore' });
  for (const name of ['bench', 'viaNbd']) {
    execFileSync(process.execPath, [BIN, '--store', store, 'create', name, '--size', String(SIZE), '--kind', 'memory'], { stdio: 'ignore' });
  }
  daemon = spawn(process.execPath, [BIN, '--store', store, 'serve', '--no-tcp', '--no-auto-page', '--mount', mnt],
    { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  daemon.stderr.on('data', (d) => { err += d; });
  const end = Date.now() + 30_000;
  while (!/dormant serve: store /.test(err)) {
    if (daemon.exitCode !== null || Date.now() > end) throw new Error(`dormant serve did not start: ${err}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  // nbdfuse on the daemon's NBD socket: MOUNTPOINT/FILE, in the foreground (its default: 4 connections, multi-threaded FUSE).
  const sock = path.join(store, 'nbd.sock');
  nbdfuse = spawn('nbdfuse', [path.join(nbdMnt, 'viaNbd'), `nbd+unix:///viaNbd?socket=${sock}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  let nerr = '';
  nbdfuse.stderr.on('data', (d) => { nerr += d; });
  while (!existsSync(path.join(nbdMnt, 'viaNbd'))) {
    if (nbdfuse.exitCode !== null || Date.now() > end) throw new Error(`nbdfuse did not start: ${nerr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

try {
  console.log(`bench: ${SIZE / MiB} MiB file, ${RUNTIME} s per random-read run, work dir ${dir}, tmpfs ${shmDir}`);
  await startMount();
  const fuseFile = path.join(mnt, 'volumes', 'bench');
  const tmpfsFile = path.join(shmDir, 'bench');
  writeFileSync(tmpfsFile, '');
  truncateSync(tmpfsFile, SIZE);
  if (statSync(fuseFile).size !== SIZE) throw new Error('volume file has the wrong size');
  const targets = [{ name: 'dormant FUSE', file: fuseFile }, { name: 'nbdfuse', file: path.join(nbdMnt, 'viaNbd') },
    { name: 'tmpfs', file: tmpfsFile }];
  const rows = [
    { name: '1M seq write (psync)', unit: 'MB/s', fn: (f) => fio(f, 'seqwrite', 'write', '1M', false).then((r) => r.mbps) },
    { name: '1M seq read (psync)', unit: 'MB/s', fn: (f) => fio(f, 'seqread', 'read', '1M', false).then((r) => r.mbps) },
    { name: '4k rand read (psync)', unit: 'MB/s', fn: (f) => fio(f, 'randread', 'randread', '4k', true).then((r) => r.mbps) },
    { name: 'mmap first read touch', unit: 'faults/s', fn: (f) => faults(f, 'read') },
    { name: 'mmap first write + msync', unit: 'faults/s', fn: (f) => faults(f, 'write') },
  ];
  // One untimed pass over each file first: whichever target wrote first into the fresh store paid its
  // first-time costs (segment files, tables growing), which put the first target 5-40 % behind the second.
  for (const t of targets) await fio(t.file, 'warmup', 'write', '1M', false);
  const results = [];
  for (const row of rows) {
    const vals = [];
    for (const t of targets) {
      const v = await row.fn(t.file);
      vals.push(v);
      console.log(`bench: ${row.name.padEnd(26)} ${t.name.padEnd(13)} ${v.toFixed(1).padStart(12)} ${row.unit}`);
    }
    results.push({ ...row, vals });
  }
  console.log(`\n${new Date().toISOString()}, ${execFileSync('sh', ['-c', "lscpu | sed -n 's/^Model name: *//p'"]).toString().trim()}`);
  console.log('| workload | dormant FUSE | nbdfuse on dormant NBD | tmpfs | dormant / nbdfuse | dormant / tmpfs |');
  console.log('|---|---:|---:|---:|---:|---:|');
  for (const r of results) {
    const [d, n, t] = r.vals;
    console.log(`| ${r.name} | ${d.toFixed(1)} ${r.unit} | ${n.toFixed(1)} ${r.unit} | ${t.toFixed(1)} ${r.unit} | ${(d / n).toFixed(2)}× | ${(d / t).toFixed(3)} |`);
  }
  execFileSync('fusermount3', ['-u', nbdMnt], { stdio: 'ignore' });
  await new Promise((r) => { const t = setTimeout(r, 10_000); nbdfuse.once('exit', () => { clearTimeout(t); r(); }); });
  daemon.kill('SIGTERM');
  await new Promise((r) => { const t = setTimeout(r, 20_000); daemon.once('exit', () => { clearTimeout(t); r(); }); });
} finally {
  cleanup();
}
