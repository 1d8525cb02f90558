#!/usr/bin/env node
/**
 * NBD benchmark: fio's nbd engine over Unix sockets against
 *   - dormant serving a branch of a 1 GiB golden image,
 *   - qemu-nbd -t -e 16 serving a qcow2 overlay on the raw image,
 *   - nbdkit --filter=cow file on the raw image.
 * Workloads: 4 KiB randread/randwrite at iodepth 16, 1 MiB seq read/write at
 * iodepth 4, each for BENCH_RUNTIME seconds (default 10); then, on a region
 * of BENCH_FRAG_MIB (default 256) written once at random in 4 KiB blocks
 * (the same fio sequence on every server, not timed: a log-structured
 * store's blocks are then scattered), reads of that region (4 KiB and
 * 1 MiB, sequential and random) and a 70/30 random read/write mix, named
 * `frag ...` and selected as `frag-<fio rw>-<bs>`. Prints IOPS and
 * MB/s per server and the dormant/peer ratio per workload, then the CPU
 * time each server spent per MiB moved (user + system, all its threads:
 * this process's for dormant, /proc/PID/stat for the peers; fio's own is
 * not counted), which is less noisy than throughput here; then, with fio's
 * CPU per MiB added (fio and the server share the machine's cores), the
 * rate the cores would allow at that cost. After each
 * dormant run its pending writes are flushed (not timed), so that dormant's
 * background flush does not run while a peer is measured, and after every
 * run the page cache is written back (`sync`, not timed), so that no run
 * pays for the kernel writing back what an earlier one left dirty.
 *
 * Build first (`npx tsc`); this imports the compiled modules from dist/.
 * Env: BENCH_SIZE_MIB (default 1024), BENCH_RUNTIME (s, default 10),
 * BENCH_DIR (work dir, default a temp dir, removed afterwards),
 * BENCH_WORKLOADS (comma-separated fio --rw names, or `frag-read-1M` and the
 * like for the fragmented rows; default all),
 * UV_THREADPOOL_SIZE (default 16, as bin/dormant sets it for the daemon).
 */
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { randomFillSync } from 'node:crypto';
import { existsSync, mkdtempSync, openSync, closeSync, writeSync, rmSync, mkdirSync, readFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

// libuv's pool as `dormant serve` has it (bin/dormant sets 16, for the FUSE side), set before
// anything uses the pool: with libuv's default 4, 1 MiB sequential writes measured ~15 % faster
// than the daemon would run them.
process.env.UV_THREADPOOL_SIZE ??= '16';

const here = path.dirname(fileURLToPath(import.meta.url));
const dist = path.join(here, '..', 'dist');
if (!existsSync(path.join(dist, 'nbd', 'index.js'))) {
  console.error('bench/nbd.mjs: dist/nbd/index.js missing; run `npx tsc` first');
  process.exit(2);
}
const { NbdServer, StoreBackend, silentLogger } = await import(path.join(dist, 'nbd', 'index.js'));
const { Store } = await import(path.join(dist, 'blockstore', 'index.js'));

const MiB = 1024 * 1024;
const SIZE = Number(process.env.BENCH_SIZE_MIB ?? 1024) * MiB;
const RUNTIME = Number(process.env.BENCH_RUNTIME ?? 10);
const ownDir = process.env.BENCH_DIR === undefined;
const dir = process.env.BENCH_DIR ?? mkdtempSync(path.join(tmpdir(), 'dormant-bench-'));
mkdirSync(dir, { recursive: true });

const ALL_WORKLOADS = [
  { name: '4k randread qd16', rw: 'randread', bs: '4k', iodepth: 16 },
  { name: '1M seqread qd4', rw: 'read', bs: '1M', iodepth: 4 },
  { name: '4k randwrite qd16', rw: 'randwrite', bs: '4k', iodepth: 16 },
  { name: '1M seqwrite qd4', rw: 'write', bs: '1M', iodepth: 4 },
  // After the region was written at random (fragment(), once per server before the first of these).
  { name: 'frag 1M seqread qd4', rw: 'read', bs: '1M', iodepth: 4, frag: true },
  { name: 'frag 4k seqread qd16', rw: 'read', bs: '4k', iodepth: 16, frag: true },
  { name: 'frag 4k randread qd16', rw: 'randread', bs: '4k', iodepth: 16, frag: true },
  { name: 'frag 1M randread qd4', rw: 'randread', bs: '1M', iodepth: 4, frag: true },
  { name: 'frag 4k randrw 70/30', rw: 'randrw', bs: '4k', iodepth: 16, frag: true },
];
const selector = (w) => (w.frag ? `frag-${w.rw}-${w.bs}` : w.rw);
// BENCH_WORKLOADS=randwrite,write (fio --rw names; frag-read-1M for a fragmented row) runs only those.
const only = process.env.BENCH_WORKLOADS?.split(',').map((x) => x.trim());
const WORKLOADS = only === undefined ? ALL_WORKLOADS : ALL_WORKLOADS.filter((w) => only.includes(selector(w)));
const FRAG_SIZE = Number(process.env.BENCH_FRAG_MIB ?? 256) * MiB;
if (WORKLOADS.length === 0) {
  console.error(`bench/nbd.mjs: BENCH_WORKLOADS=${process.env.BENCH_WORKLOADS} names none of: ${ALL_WORKLOADS.map(selector).join(', ')}`);
  process.exit(2);
}

const children = [];
function startChild(cmd, args) {
  const c = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'inherit'] });
  children.push(c);
  return c;
}
function stopChildren() {
  for (const c of children) if (c.exitCode === null) c.kill('SIGTERM');
}
process.on('exit', stopChildren);
// Killed (a test's timeout, ^C): the peers and the work dir go too.
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.once(sig, () => {
    stopChildren();
    if (ownDir) rmSync(dir, { recursive: true, force: true });
    process.exit(sig === 'SIGINT' ? 130 : 143);
  });
}

async function waitForSocket(p, ms = 20_000) {
  const end = Date.now() + ms;
  while (!existsSync(p)) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${p}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Writes the golden image: the raw file and the dormant volume get the same random bytes. */
async function makeGolden(store, rawPath) {
  await store.createVolume('golden', SIZE);
  const h = await store.openVolume('golden');
  const fd = openSync(rawPath, 'w');
  const buf = Buffer.allocUnsafe(4 * MiB);
  for (let off = 0; off < SIZE; off += buf.length) {
    randomFillSync(buf);
    writeSync(fd, buf, 0, buf.length, off);
    await h.write(off, buf);
  }
  closeSync(fd);
  await h.flush();
  await h.close();
  await store.snapshot('golden', 'base');
  await store.branch('vm', 'golden@base');
}

const TICKS_PER_SECOND = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

/** CPU seconds (user + system) used so far by `pid`, or by this process when pid is null. */
function cpuSeconds(pid) {
  if (pid === null) {
    const u = process.cpuUsage();
    return (u.user + u.system) / 1e6;
  }
  // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / TICKS_PER_SECOND;
}

/** Runs fio asynchronously: dormant serves from this very process, so the event loop must stay free. */
async function fio(uri, w) {
  const args = [
    '--name=bench', '--ioengine=nbd', `--uri=${uri}`, `--rw=${w.rw}`, `--bs=${w.bs}`, `--iodepth=${w.iodepth}`,
    '--numjobs=1', `--size=${w.frag ? FRAG_SIZE : SIZE}`, '--output-format=json',
    ...(w.rw === 'randrw' ? ['--rwmixread=70'] : []),
    ...(w.fill ? [] : [`--runtime=${RUNTIME}`, '--time_based']),
  ];
  const { stdout: out } = await promisify(execFile)('fio', args, { encoding: 'utf8', timeout: (RUNTIME + 120) * 1000, maxBuffer: 16 * MiB });
  const job = JSON.parse(out.slice(out.indexOf('{'))).jobs[0];
  // A mix counts both sides.
  const sides = w.rw === 'randrw' ? [job.read, job.write] : [w.rw.includes('read') ? job.read : job.write];
  const sum = (f) => sides.reduce((a, s) => a + f(s), 0);
  const mib = sum((s) => s.io_bytes) / MiB;
  // fio's own CPU: usr_cpu and sys_cpu are percentages of one CPU over job_runtime (ms).
  const fioCpuPerMiB = (((job.usr_cpu + job.sys_cpu) / 100) * job.job_runtime * 1e3) / mib;
  return { iops: sum((s) => s.iops), mbps: sum((s) => s.bw_bytes) / 1e6, mib, fioCpuPerMiB };
}

/**
 * Scatters the fragmented region: every 4 KiB block of it written once, in
 * fio's random order (the same on every server), then flushed and synced.
 */
async function fragment(t, store) {
  const started = Date.now();
  await fio(t.uri, { rw: 'randwrite', bs: '4k', iodepth: 16, frag: true, fill: true });
  if (t.name === 'dormant') await store.flush();
  execFileSync('sync');
  console.log(`bench: ${t.name}: ${FRAG_SIZE / MiB} MiB written at random in ${((Date.now() - started) / 1000).toFixed(1)} s (not timed)`);
}

async function main() {
  const rawPath = path.join(dir, 'golden.raw');
  console.log(`bench: ${SIZE / MiB} MiB golden image, ${RUNTIME} s per run, work dir ${dir}`);
  const t0 = Date.now();
  // Relocation on, as `dormant serve` has it (BENCH_RELOCATE=0: off, for comparison).
  const store = await Store.init(path.join(dir, 'store'), { relocate: process.env.BENCH_RELOCATE !== '0' });
  await makeGolden(store, rawPath);
  console.log(`bench: golden written in ${((Date.now() - t0) / 1000).toFixed(1)} s`);

  const dormantSock = path.join(dir, 'dormant.sock');
  const server = new NbdServer({ backend: new StoreBackend(store), socketPath: dormantSock, logger: silentLogger });
  await server.listen();

  const overlay = path.join(dir, 'overlay.qcow2');
  execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', rawPath, '-F', 'raw', overlay]);
  const qemuSock = path.join(dir, 'qemu.sock');
  const qemu = startChild('qemu-nbd', ['-t', '-e', '16', '-k', qemuSock, '-f', 'qcow2', '-x', 'vm', overlay]);
  const nbdkitSock = path.join(dir, 'nbdkit.sock');
  const nbdkit = startChild('nbdkit', ['-f', '-U', nbdkitSock, '-e', 'vm', '--filter=cow', 'file', rawPath]);
  await waitForSocket(qemuSock);
  await waitForSocket(nbdkitSock);

  const targets = [
    { name: 'dormant', uri: `nbd+unix:///vm?socket=${dormantSock}`, pid: null },
    { name: 'qemu-nbd', uri: `nbd+unix:///vm?socket=${qemuSock}`, pid: qemu.pid },
    { name: 'nbdkit-cow', uri: `nbd+unix:///vm?socket=${nbdkitSock}`, pid: nbdkit.pid },
  ];
  const results = {};
  const fragmented = new Set();
  for (const w of WORKLOADS) {
    for (const t of targets) {
      if (w.frag && !fragmented.has(t.name)) {
        await fragment(t, store);
        fragmented.add(t.name);
      }
      const cpu0 = cpuSeconds(t.pid);
      const r0 = await fio(t.uri, w);
      r0.cpuPerMiB = ((cpuSeconds(t.pid) - cpu0) * 1e6) / r0.mib;
      results[`${w.name}|${t.name}`] = r0;
      // Pending writes would otherwise be flushed in the background while a peer is measured.
      if (t.name === 'dormant') await store.flush();
      // Nor may a server's dirty page cache be written back by the kernel during a later run
      // (after 30 s by default): every run starts with none (not timed).
      execFileSync('sync');
      const r = results[`${w.name}|${t.name}`];
      console.log(`bench: ${w.name.padEnd(22)} ${t.name.padEnd(10)} ${r.iops.toFixed(0).padStart(8)} IOPS ${r.mbps.toFixed(1).padStart(8)} MB/s ${r.cpuPerMiB.toFixed(0).padStart(7)} us CPU/MiB`);
    }
  }

  console.log('\nworkload                ' + targets.map((t) => t.name.padStart(22)).join('') + '   dormant/qemu-nbd  dormant/nbdkit');
  for (const w of WORKLOADS) {
    const cells = targets.map((t) => {
      const r = results[`${w.name}|${t.name}`];
      return `${r.iops.toFixed(0)} IOPS ${r.mbps.toFixed(0)} MB/s`.padStart(22);
    });
    const d = results[`${w.name}|dormant`].iops;
    const q = results[`${w.name}|qemu-nbd`].iops;
    const k = results[`${w.name}|nbdkit-cow`].iops;
    console.log(`${w.name.padEnd(24)}${cells.join('')}   ${(d / q).toFixed(2).padStart(16)}  ${(d / k).toFixed(2).padStart(14)}`);
  }

  console.log('\nserver CPU per MiB moved (us, user + system)' + ' '.repeat(2) + targets.map((t) => t.name.padStart(12)).join('') + '   dormant/qemu-nbd  dormant/nbdkit');
  for (const w of WORKLOADS) {
    const c = targets.map((t) => results[`${w.name}|${t.name}`].cpuPerMiB);
    console.log(`${w.name.padEnd(46)}${c.map((x) => x.toFixed(0).padStart(12)).join('')}   ${(c[0] / c[1]).toFixed(2).padStart(16)}  ${(c[0] / c[2]).toFixed(2).padStart(14)}`);
  }

  // Server and client share this machine's cores: their CPU per MiB together bounds the rate.
  const cores = availableParallelism();
  console.log(`\nwith the client (fio) on the same ${cores} cores: server + fio CPU per MiB (us) / the rate it allows (MB/s)`);
  console.log(' '.repeat(24) + targets.map((t) => t.name.padStart(22)).join(''));
  for (const w of WORKLOADS) {
    const cells = targets.map((t) => {
      const r = results[`${w.name}|${t.name}`];
      const total = r.cpuPerMiB + r.fioCpuPerMiB;
      return `${total.toFixed(0)} / ${((cores * MiB) / total).toFixed(0)}`.padStart(22); // bytes per µs = MB/s
    });
    console.log(`${w.name.padEnd(24)}${cells.join('')}`);
  }

  await server.close();
  await store.close();
}

try {
  await main();
} finally {
  stopChildren();
  await new Promise((r) => setTimeout(r, 200));
  if (ownDir) rmSync(dir, { recursive: true, force: true });
}
