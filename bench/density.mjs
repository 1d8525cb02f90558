#!/usr/bin/env node
/**
 * Density benchmark: how many mostly idle VMs one host keeps alive, each
 * still answering HTTP, in four modes run one after another on the same
 * guests (256 MiB, a ballast of BENCH_BALLAST of which BENCH_SHARED % is
 * alike in every VM, the test guest of `dormant image build-test-guest`):
 *   dormant       `dormant serve --mount` with automatic paging (RAM on the
 *                 FUSE view, disk a branch over NBD);
 *   dormant-swap  the same with `--swap-file` (QEMU's own memory of idle VMs
 *                 paged out to swap too);
 *   qemu          plain QEMU: anonymous RAM, a qcow2 overlay on the golden
 *                 image, its own port forward;
 *   qemu-ksm      plain QEMU with KSM on (/sys/kernel/mm/ksm, restored after).
 * Each mode ramps VMs up one at a time while a prober asks the running VMs
 * for / in turn, one probe every BENCH_PROBE_INTERVAL_MS over all of them
 * (so with N VMs each is asked every N intervals: mostly idle, as the VMs
 * this is for); it stops at the first probe slower than BENCH_PROBE_MS
 * (or failed), when MemAvailable falls under BENCH_MIN_AVAILABLE, or at
 * BENCH_MAX_VMS. Then it keeps probing for BENCH_SETTLE_S (at least one
 * round of every VM) and measures: host memory used, per VM split (guest
 * RAM resident and in the page cache, QEMU's own PSS), nominal RAM / used,
 * host CPU, and probe latency p50 / p99 over the settle window.
 *
 * Host memory used = MemTotal - MemAvailable over the mode's baseline,
 * plus the guest RAM that sits in the page cache (dormant's VMs map their
 * RAM from files: MemAvailable counts those pages as reclaimable, but the
 * VMs need them, so they are counted as used; plain QEMU's RAM is
 * anonymous and counted by MemAvailable already).
 * Prints one markdown table with the machine, and the ratios against the
 * peers.
 *
 * Needs root (KSM, drop_caches, swapon). Build first (npm run setup).
 * Env: BENCH_MODES (default all four), BENCH_MAX_VMS (120), BENCH_BALLAST
 * (160M), BENCH_SHARED (50), BENCH_PROBE_MS (2000), BENCH_PROBE_INTERVAL_MS
 * (1000), BENCH_MIN_AVAILABLE
 * (2G), BENCH_SETTLE_S (60), BENCH_IDLE_TIMEOUT (10, dormant's
 * --idle-timeout), BENCH_SWAP_SIZE (8G), BENCH_DIR (work dir, default a
 * temp dir, removed), BENCH_CACHE (image cache, default
 * $TMPDIR/dormant-test-images), BENCH_DAEMON_LOG (a file for dormant's log),
 * BENCH_CPU_PROF (a directory for a CPU profile of dormant's daemon).
 */
import { spawn, execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const run = promisify(execFile);
const repo = path.join(path.dirname(fileURLToPath(import.meta.url)), '..');
if (!fs.existsSync(path.join(repo, 'dist', 'pager', 'index.js'))) {
  console.error('bench/density.mjs: dist/ missing; run `npm run setup` first');
  process.exit(2);
}
const BIN = path.join(repo, 'bin', 'dormant');
const MiB = 2 ** 20;
const GiB = 2 ** 30;
const size = (t) => {
  const m = /^(\d+(?:\.\d+)?)([KMGT]?)$/i.exec(t);
  if (!m) throw new Error(`bad size ${t}`);
  return Math.round(Number(m[1]) * 1024 ** ' KMGT'.indexOf((m[2] || ' ').toUpperCase()));
};
const MODES = (process.env.BENCH_MODES ?? 'dormant,dormant-swap,qemu,qemu-ksm').split(',').map((s) => s.trim()).filter(Boolean);
const MAX_VMS = Number(process.env.BENCH_MAX_VMS ?? 120);
const BALLAST = size(process.env.BENCH_BALLAST ?? '160M');
const SHARED = Number(process.env.BENCH_SHARED ?? 50);
const PROBE_MS = Number(process.env.BENCH_PROBE_MS ?? 2000);
const PROBE_INTERVAL_MS = Number(process.env.BENCH_PROBE_INTERVAL_MS ?? 1000);
const MIN_AVAILABLE = size(process.env.BENCH_MIN_AVAILABLE ?? '2G');
const SETTLE_S = Number(process.env.BENCH_SETTLE_S ?? 60);
const IDLE_TIMEOUT = process.env.BENCH_IDLE_TIMEOUT ?? '10';
const SWAP_SIZE = process.env.BENCH_SWAP_SIZE ?? '8G';
const CACHE = process.env.BENCH_CACHE ?? path.join(os.tmpdir(), 'dormant-test-images');
const ownDir = process.env.BENCH_DIR === undefined;
const dir = process.env.BENCH_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-bench-density-'));
const RAM = 256 * MiB;
for (const m of MODES) if (!['dormant', 'dormant-swap', 'qemu', 'qemu-ksm'].includes(m)) throw new Error(`unknown mode ${m}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mib = (b) => (b / MiB).toFixed(1);
const log = (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);

function meminfo() {
  const t = fs.readFileSync('/proc/meminfo', 'utf8');
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+)`, 'm').exec(t)[1]) * 1024;
  return { total: kb('MemTotal'), available: kb('MemAvailable') };
}
const used = () => { const m = meminfo(); return m.total - m.available; };
function cpuTimes() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  const idle = f[3] + f[4];
  return { busy: f.reduce((a, b) => a + b, 0) - idle, total: f.reduce((a, b) => a + b, 0) };
}
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.once('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});
function dropCaches() {
  try { execFileSync('sync'); fs.writeFileSync('/proc/sys/vm/drop_caches', '3'); } catch { /* not root: baseline includes cache */ }
}

// ---- state torn down on exit, whatever happens ----
const qemuPids = new Set();
let daemon = null;
let ksmSaved = null;
const KSM = '/sys/kernel/mm/ksm';
function ksmOn() {
  ksmSaved = Object.fromEntries(['run', 'pages_to_scan', 'sleep_millisecs'].map((k) => [k, fs.readFileSync(`${KSM}/${k}`, 'utf8').trim()]));
  fs.writeFileSync(`${KSM}/pages_to_scan`, '1000');
  fs.writeFileSync(`${KSM}/sleep_millisecs`, '20');
  fs.writeFileSync(`${KSM}/run`, '1');
}
function ksmRestore() {
  if (!ksmSaved) return;
  for (const [k, v] of Object.entries(ksmSaved)) { try { fs.writeFileSync(`${KSM}/${k}`, v); } catch { /* best effort */ } }
  ksmSaved = null;
}
function killAll() {
  for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  qemuPids.clear();
}
function cleanup() {
  killAll();
  if (daemon && daemon.exitCode === null) daemon.kill('SIGKILL');
  try { execFileSync('fusermount', ['-uz', path.join(dir, 'mnt')], { stdio: 'ignore' }); } catch { /* not mounted */ }
  try { execFileSync('swapoff', [path.join(dir, 'swap')], { stdio: 'ignore' }); } catch { /* not on */ }
  ksmRestore();
  if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });

// ---- one VM's HTTP ----
async function get(port, timeoutMs) {
  const t0 = performance.now();
  const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return { ms: performance.now() - t0, text };
}
async function waitHttp(name, port) {
  const deadline = Date.now() + 300_000;
  while (Date.now() < deadline) {
    try { if ((await get(port, 5_000)).text.includes(`<h1>${name}</h1>`)) return; } catch { /* booting */ }
    await sleep(500);
  }
  throw new Error(`${name} did not answer HTTP within 300 s`);
}

/** Asks the running VMs for / in turn, one every PROBE_INTERVAL_MS, until stopped; the first probe slower than PROBE_MS (or failing) ends the ramp. */
function startProber(vms) {
  const p = { samples: [], failure: null, stopped: false, done: null };
  p.done = (async () => {
    let i = 0;
    while (!p.stopped) {
      if (vms.length === 0) { await sleep(200); continue; }
      const vm = vms[i++ % vms.length];
      const next = Date.now() + PROBE_INTERVAL_MS;
      try {
        const { ms } = await get(vm.port, PROBE_MS * 5);
        p.samples.push({ at: Date.now(), ms });
        if (ms > PROBE_MS / 2) log(`slow probe: ${vm.name} ${ms.toFixed(0)} ms${p.booting ? ` (${p.booting} booting)` : ''}`);
        if (ms > PROBE_MS && !p.failure) p.failure = `${vm.name} answered in ${ms.toFixed(0)} ms`;
      } catch (err) {
        if (!p.failure) p.failure = `${vm.name}: ${err.message}`;
      }
      await sleep(Math.max(0, next - Date.now()));
    }
  })();
  return p;
}

// ---- the four modes ----
const cmdline = (name, meta) => `${meta.cmdline} dormant.hostname=${name} dormant.ballast=${BALLAST} dormant.ballast_shared=${SHARED}`;

async function dormantMode(swap) {
  const store = path.join(dir, 'store');
  const mnt = path.join(dir, 'mnt');
  fs.rmSync(store, { recursive: true, force: true });
  fs.mkdirSync(mnt, { recursive: true });
  const cli = async (args, timeout = 300_000) => (await run(process.execPath, [BIN, '--store', store, ...args],
    { timeout, maxBuffer: 64 * MiB, killSignal: 'SIGKILL' })).stdout;
  await cli(['init']);
  await cli(['image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 600_000);
  const prof = process.env.BENCH_CPU_PROF ? [`--cpu-prof`, `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const args = [...prof, BIN, '--store', store, 'serve', '--no-tcp', '--mount', mnt, '--idle-timeout', IDLE_TIMEOUT];
  if (swap) args.push('--swap-file', path.join(dir, 'swap'), '--swap-size', SWAP_SIZE);
  daemon = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let err = '';
  const daemonLog = process.env.BENCH_DAEMON_LOG ? fs.createWriteStream(process.env.BENCH_DAEMON_LOG, { flags: 'a' }) : null;
  daemon.stderr.on('data', (d) => { err = (err + d).slice(-20_000); daemonLog?.write(d); });
  for (let i = 0; !/FUSE on /.test(err); i++) {
    if (i > 600 || daemon.exitCode !== null) throw new Error(`daemon did not start: ${err}`);
    await sleep(100);
  }
  return {
    async start(name) {
      await cli(['vm', 'create', name, '--from', 'golden@base', '--memory', '256M', '--ballast', String(BALLAST),
        '--ballast-shared', `${SHARED}%`, '--cache-dir', CACHE]);
      const s = JSON.parse(await cli(['vm', 'start', name]) && await cli(['vm', 'status', name, '--json']));
      qemuPids.add(s.pid);
      return { name, port: s.hostPort, pid: s.pid };
    },
    async split() {
      const { vms } = JSON.parse(await cli(['vm', 'list', '--json'], 600_000));
      const sum = (k) => vms.reduce((a, v) => a + (v[k] ?? 0), 0);
      return { guestResident: sum('residentGuestRam'), guestCached: sum('cachedGuestRam'), qemuPss: sum('qemuPss'),
        paged: vms.filter((v) => v.pagedOut).length };
    },
    async stop() {
      daemon.kill('SIGTERM');
      await new Promise((r) => { const t = setTimeout(() => { daemon.kill('SIGKILL'); r(); }, 300_000); daemon.once('exit', () => { clearTimeout(t); r(); }); });
      daemon = null;
      qemuPids.clear();
    },
  };
}

async function qemuMode(ksm) {
  const meta = JSON.parse(fs.readFileSync(path.join(CACHE, 'golden.json'), 'utf8'));
  if (ksm) ksmOn();
  const vms = [];
  return {
    async start(name) {
      const disk = path.join(dir, `${name}.qcow2`);
      await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', meta.image, '-F', 'raw', disk]);
      const port = await freePort();
      const child = spawn('qemu-system-x86_64', [
        '-name', name, '-machine', 'q35', '-accel', 'tcg,tb-size=16', '-m', '256M', '-smp', '1',
        '-kernel', meta.kernel, '-initrd', meta.initrd, '-append', cmdline(name, meta),
        '-drive', `file=${disk},format=qcow2,if=virtio`,
        '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:80`, '-device', 'virtio-net-pci,netdev=n0',
        '-serial', 'null', '-display', 'none', '-nodefaults', '-no-reboot',
      ], { stdio: 'ignore' });
      qemuPids.add(child.pid);
      vms.push(child.pid);
      return { name, port, pid: child.pid };
    },
    async split() {
      let guestResident = 0;
      let qemuPss = 0;
      for (const pid of vms) {
        let text = '';
        try { text = fs.readFileSync(`/proc/${pid}/smaps`, 'utf8'); } catch { continue; }
        // Guest RAM is QEMU's one big anonymous mapping (>= 200 MiB); the rest is QEMU's own.
        let big = false;
        for (const line of text.split('\n')) {
          const h = /^([0-9a-f]+)-([0-9a-f]+) /.exec(line);
          if (h) { big = parseInt(h[2], 16) - parseInt(h[1], 16) >= 200 * MiB; continue; }
          const f = /^Pss:\s+(\d+) kB/.exec(line);
          if (f) { if (big) guestResident += Number(f[1]) * 1024; else qemuPss += Number(f[1]) * 1024; }
        }
      }
      return { guestResident, guestCached: 0, qemuPss, paged: 0 };
    },
    async stop() {
      killAll();
      await sleep(2_000);
      if (ksm) ksmRestore();
    },
  };
}

async function runMode(mode) {
  killAll();
  dropCaches();
  await sleep(3_000);
  const baseline = used();
  log(`${mode}: baseline ${mib(baseline)} MiB used`);
  const m = mode.startsWith('dormant') ? await dormantMode(mode === 'dormant-swap') : await qemuMode(mode === 'qemu-ksm');
  const vms = [];
  const prober = startProber(vms);
  let reason = `cap of ${MAX_VMS} VMs`;
  try {
    for (let i = 1; i <= MAX_VMS; i++) {
      if (prober.failure) { reason = `probe: ${prober.failure}`; break; }
      if (meminfo().available < MIN_AVAILABLE) { reason = `MemAvailable under ${mib(MIN_AVAILABLE)} MiB`; break; }
      prober.booting = `d${i}`;
      const vm = await m.start(`d${i}`);
      try { await waitHttp(vm.name, vm.port); } catch (err) { reason = `boot: ${err.message}`; break; }
      prober.booting = null;
      vms.push(vm);
      if (i % 10 === 0 || i === 1) log(`${mode}: ${i} VMs, ${mib(used() - baseline)} MiB used`);
    }
    if (prober.failure && !reason.startsWith('probe')) reason = `probe: ${prober.failure}`;
    log(`${mode}: ${vms.length} VMs (${reason}); settling ${SETTLE_S} s`);
    const settleFrom = Date.now();
    const c0 = cpuTimes();
    await sleep(Math.max(SETTLE_S * 1000, vms.length * PROBE_INTERVAL_MS));
    const c1 = cpuTimes();
    const rawUsed = used() - baseline;
    const split = await m.split();
    const hostUsed = rawUsed + split.guestCached;
    const lat = prober.samples.filter((s) => s.at >= settleFrom).map((s) => s.ms).sort((a, b) => a - b);
    const q = (p) => (lat.length ? lat[Math.min(lat.length - 1, Math.floor(p * lat.length))] : NaN);
    return {
      mode, n: vms.length, reason, hostUsed, rawUsed, perVm: vms.length ? hostUsed / vms.length : NaN,
      nominalOverUsed: hostUsed > 0 ? (vms.length * RAM) / hostUsed : NaN, ...split,
      cpu: (100 * (c1.busy - c0.busy)) / Math.max(1, c1.total - c0.total), p50: q(0.5), p99: q(0.99), probes: lat.length,
    };
  } finally {
    prober.stopped = true;
    await prober.done;
    await m.stop().catch(() => undefined);
    killAll();
  }
}

function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  return `${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / GiB)} GiB RAM, Linux ${os.release()}`;
}

try {
  const results = [];
  for (const mode of MODES) {
    const r = await runMode(mode);
    results.push(r);
    // Each mode's figures as soon as it ends: a run cut short still tells what it measured.
    log(`${mode} done: ${JSON.stringify(r)}`);
  }
  console.log(`\nDensity (${new Date().toISOString().slice(0, 10)}; ${machine()}): 256 MiB VMs, ballast ${mib(BALLAST)} MiB `
    + `(${SHARED}% alike), a probe every ${PROBE_INTERVAL_MS} ms round-robin, probe limit ${PROBE_MS} ms, `
    + `floor ${mib(MIN_AVAILABLE)} MiB available, cap ${MAX_VMS}; host used = MemTotal - MemAvailable over the baseline `
    + `(in brackets) + guest RAM in the page cache\n`);
  console.log('| mode | VMs | stopped by | host used | per VM | nominal / used | guest resident | guest cached | QEMU PSS | paged | CPU | p50 | p99 |');
  console.log('|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of results) {
    console.log(`| ${r.mode} | ${r.n} | ${r.reason} | ${mib(r.hostUsed)} MiB (${mib(r.rawUsed)}) | ${mib(r.perVm)} MiB | ${r.nominalOverUsed.toFixed(2)}x `
      + `| ${mib(r.guestResident)} MiB | ${mib(r.guestCached)} MiB | ${mib(r.qemuPss)} MiB | ${r.paged} | ${r.cpu.toFixed(1)}% `
      + `| ${r.p50.toFixed(0)} ms | ${r.p99.toFixed(0)} ms |`);
  }
  const by = Object.fromEntries(results.map((r) => [r.mode, r]));
  for (const d of ['dormant', 'dormant-swap']) {
    for (const peer of ['qemu', 'qemu-ksm']) {
      if (by[d] && by[peer]) {
        console.log(`${d} / ${peer}: VMs ${(by[d].n / by[peer].n).toFixed(2)}x, memory per VM ${(by[peer].perVm / by[d].perVm).toFixed(2)}x less`);
      }
    }
  }
} finally {
  cleanup();
}
