#!/usr/bin/env node
/**
 * Pager benchmark, real TCG guests under `dormant serve --mount` (run from
 * dist/ in a child process), all in one run:
 *   1. the store path under page-out: a process maps a 256 MiB memory volume
 *      through the FUSE view, dirties every page (unique pages, then pages
 *      all equal to each other: the dedup path), and msyncs: pages/s in;
 *      then the page cache is dropped and every page faulted back: pages/s out;
 *   2. per VM (BENCH_VMS, default 3, 256 MiB each, one golden image):
 *      nominal RAM; resident guest RAM (smaps Rss of the mapping) and host
 *      page cache of the memory file before, right after and 30 s after
 *      page-out; working-set size; latency of the first request after a
 *      page-out without and with prefetch, against the same VM never paged
 *      out (its request before any page-out);
 *   3. `vm sharing`: pages found equal to disk blocks by the disk-I/O
 *      candidates vs a full scan (coverage), pages shared across VMs, stored
 *      bytes vs non-zero bytes, and the time of each method.
 * Prints tables (markdown) with the machine.
 *
 * Build first (npm run setup). Env: BENCH_VMS (default 3), BENCH_DIR (work
 * dir, default a temp dir, removed afterwards), BENCH_CACHE (test-guest image
 * cache, default $TMPDIR/dormant-test-images).
 */
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, mkdirSync, rmSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.join(here, '..');
if (!existsSync(path.join(repo, 'dist', 'pager', 'index.js'))) {
  console.error('bench/pager.mjs: dist/ missing; run `npm run setup` first');
  process.exit(2);
}
const BIN = path.join(repo, 'bin', 'dormant');
const MiB = 1024 * 1024;
const VMS = Number(process.env.BENCH_VMS ?? 3);
const CACHE = process.env.BENCH_CACHE ?? path.join(os.tmpdir(), 'dormant-test-images');
const ownDir = process.env.BENCH_DIR === undefined;
const dir = process.env.BENCH_DIR ?? mkdtempSync(path.join(os.tmpdir(), 'dormant-bench-pager-'));
const store = path.join(dir, 'store');
const mnt = path.join(dir, 'mnt');
mkdirSync(mnt, { recursive: true });
const names = Array.from({ length: VMS }, (_, i) => `vm${i + 1}`);

let daemon = null;
const qemuPids = new Set();
function cleanup() {
  for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  try { execFileSync('fusermount', ['-uz', mnt], { stdio: 'ignore' }); } catch { /* not mounted */ }
  if (ownDir) rmSync(dir, { recursive: true, force: true });
}

const cli = async (args, timeout = 300_000) => (await run(process.execPath, [BIN, '--store', store, ...args],
  { timeout, maxBuffer: 64 * MiB, killSignal: 'SIGKILL' })).stdout;
const json = async (args, timeout) => JSON.parse(await cli([...args, '--json'], timeout));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mib = (b) => (b / MiB).toFixed(1);

/** Milliseconds until the VM answers GET /cgi-bin/status (bounded). */
async function requestMs(port) {
  const t0 = performance.now();
  const r = await fetch(`http://127.0.0.1:${port}/cgi-bin/status`, { signal: AbortSignal.timeout(60_000) });
  await r.text();
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return performance.now() - t0;
}

async function waitHttp(vm, port) {
  const deadline = Date.now() + 180_000;
  while (Date.now() < deadline) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3_000) });
      if ((await r.text()).includes(`<h1>${vm}</h1>`)) return;
    } catch { /* booting */ }
    await sleep(1_000);
  }
  throw new Error(`${vm} did not answer HTTP`);
}

// Dirty every page of the mapped file (unique or identical content), msync; then drop the cache and fault every page back.
const STORE_PATH = `
import mmap, os, sys, time, struct
path, mode = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_RDWR)
size = os.fstat(fd).st_size
pages = size // 4096
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
seed = os.urandom(4096)
same = bytes(seed)
t0 = time.perf_counter()
for i in range(pages):
    if mode == 'unique':
        m[i * 4096:(i + 1) * 4096] = struct.pack('<Q', i + 1) + seed[8:]
    else:
        m[i * 4096:(i + 1) * 4096] = same
t1 = time.perf_counter()
m.flush()
t2 = time.perf_counter()
m.close()
os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
m = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ)
t3 = time.perf_counter()
s = 0
for i in range(pages):
    s += m[i * 4096]
t4 = time.perf_counter()
m.close(); os.close(fd)
print(pages, t2 - t1, t4 - t3)
`;

function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  return `${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, Linux ${os.release()}`;
}

async function main() {
  await cli(['init']);
  process.stderr.write('bench/pager: building/importing the test guest...\n');
  await cli(['image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 600_000);
  daemon = spawn(process.execPath, [BIN, '--store', store, 'serve', '--no-tcp', '--mount', mnt, '--no-auto-page'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  daemon.stderr.on('data', (d) => { log += d; });
  for (let i = 0; i < 300 && !/FUSE on /.test(log); i++) await sleep(100);
  if (!/FUSE on /.test(log)) throw new Error(`daemon not ready: ${log}`);

  // 1. The store path under page-out and page-in, 4 KiB at a time through FUSE.
  const storePath = [];
  for (const mode of ['unique', 'same']) {
    await cli(['create', `scratch-${mode}.mem`, '--size', '256M', '--kind', 'memory']);
    const { stdout } = await run('python3', ['-c', STORE_PATH, path.join(mnt, 'volumes', `scratch-${mode}.mem`), mode], { timeout: 600_000 });
    const [pages, outS, inS] = stdout.trim().split(/\s+/).map(Number);
    storePath.push({ mode, pages, outPerS: pages / outS, inPerS: pages / inS });
  }

  // 2. The VMs.
  for (const vm of names) await cli(['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--cache-dir', CACHE]);
  process.stderr.write(`bench/pager: booting ${VMS} VMs (TCG)...\n`);
  const port = {};
  for (const vm of names) {
    await cli(['vm', 'start', vm]);
    const s = await json(['vm', 'status', vm]);
    qemuPids.add(s.pid);
    port[vm] = s.hostPort;
  }
  await Promise.all(names.map((vm) => waitHttp(vm, port[vm])));
  await sleep(15_000); // settle into idling
  const rows = {};
  for (const vm of names) {
    const s = await json(['vm', 'status', vm]);
    rows[vm] = { nominal: s.memoryBytes, before: s.residentGuestRam, cachedBefore: s.cachedGuestRam, neverMs: await requestMs(port[vm]) };
  }
  process.stderr.write('bench/pager: page-out, then 30 s idle...\n');
  for (const vm of names) {
    const r = await json(['vm', 'pageout', vm]);
    Object.assign(rows[vm], { right: r.residentAfter, cachedRight: r.cachedAfter, pageoutMs: r.durationMs });
  }
  await sleep(30_000);
  for (const vm of names) {
    const s = await json(['vm', 'status', vm]);
    Object.assign(rows[vm], { after30: s.residentGuestRam, cached30: s.cachedGuestRam });
  }
  for (const vm of names) {
    const r = await json(['vm', 'pageout', vm]); // records the working set of the 30 s (and the requests above)
    rows[vm].ws = r.workingSetPages * 4096;
    rows[vm].coldMs = await requestMs(port[vm]);
    await json(['vm', 'pageout', vm]);
    const pf = await json(['vm', 'prefetch', vm]);
    rows[vm].prefetchMs = pf.durationMs;
    rows[vm].warmMs = await requestMs(port[vm]);
  }

  // 3. Sharing.
  const sh = await json(['vm', 'sharing'], 900_000);

  for (const vm of names) { try { await cli(['vm', 'stop', vm, '--timeout', '1'], 60_000); } catch { /* killed in cleanup */ } }
  daemon.kill('SIGTERM');
  await new Promise((r) => { const t = setTimeout(r, 30_000); daemon.once('exit', () => { clearTimeout(t); r(); }); });

  console.log(`\nMachine: ${machine()}; QEMU TCG, ${VMS} guests of 256 MiB (the test guest: busybox, httpd, a status page rewritten every second)\n`);
  console.log('Store path under page-out (a 256 MiB memory volume mapped through FUSE, every page dirtied then msync; cache dropped, every page faulted back):\n');
  console.log('| pages | out: write-back to the store | in: faults from the store |');
  console.log('|---|---|---|');
  for (const r of storePath) {
    console.log(`| ${r.mode === 'unique' ? 'all distinct' : 'all identical (dedup + byte compare)'} | ${Math.round(r.outPerS)} pages/s (${(r.outPerS * 4096 / 1e6).toFixed(0)} MB/s) | ${Math.round(r.inPerS)} pages/s (${(r.inPerS * 4096 / 1e6).toFixed(0)} MB/s) |`);
  }
  console.log('\nPer VM (resident = smaps Rss of the guest RAM mapping in QEMU; cache = host page cache of the memory file):\n');
  console.log('| VM | RAM | resident before | right after | 30 s after | cache before | right after | 30 s after | working set | page-out | request: never paged out | after page-out | after page-out + prefetch (prefetch time) |');
  console.log('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  for (const vm of names) {
    const r = rows[vm];
    console.log(`| ${vm} | ${mib(r.nominal)} MiB | ${mib(r.before)} MiB | ${mib(r.right)} MiB | ${mib(r.after30)} MiB | ${mib(r.cachedBefore)} MiB | `
      + `${mib(r.cachedRight)} MiB | ${mib(r.cached30)} MiB | ${mib(r.ws)} MiB | ${r.pageoutMs.toFixed(0)} ms | ${r.neverMs.toFixed(0)} ms | `
      + `${r.coldMs.toFixed(0)} ms (${(r.coldMs / r.neverMs).toFixed(1)}×) | ${r.warmMs.toFixed(0)} ms (${(r.warmMs / r.neverMs).toFixed(1)}×) (${r.prefetchMs.toFixed(0)} ms) |`);
  }
  const t = sh.totals;
  console.log('\nSharing (`vm sharing`), pages of 4 KiB:\n');
  console.log('| VM | non-zero | zero | = disk block, candidates | = disk block, full scan | coverage | across VMs | unique |');
  console.log('|---|---|---|---|---|---|---|---|');
  for (const l of sh.vms) {
    console.log(`| ${l.name} | ${l.nonZeroPages} | ${l.zeroPages} | ${l.sharedWithDiskPages} | ${l.sharedWithDiskFullScanPages} | `
      + `${l.coverage === null ? '-' : `${(100 * l.coverage).toFixed(1)}%`} | ${l.sharedAcrossVmsPages} | ${l.uniquePages} |`);
  }
  console.log(`\nMemory volumes: ${mib(t.nonZeroBytes)} MiB non-zero, stored ${mib(t.storedBytes)} MiB `
    + `(${(t.storedBytes / t.nonZeroBytes).toFixed(2)}× of non-zero), ${mib(t.storedBeyondDisksBytes)} MiB not on any of their disks; `
    + `coverage ${t.coverage === null ? '-' : `${(100 * t.coverage).toFixed(1)}%`}; candidates ${sh.timings.candidatesMs} ms vs full scan ${sh.timings.fullScanMs} ms `
    + `(${(sh.timings.fullScanMs / Math.max(1, sh.timings.candidatesMs)).toFixed(0)}×)`);
}

main().then(() => cleanup(), (err) => { console.error(`bench/pager: ${err.stack ?? err}`); cleanup(); process.exit(1); });
process.on('SIGINT', () => { cleanup(); process.exit(130); });
