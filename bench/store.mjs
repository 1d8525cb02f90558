#!/usr/bin/env node
/**
 * Block store benchmark (`npm run bench`): import speed against qemu-img,
 * snapshot/branch cost against volume size, random-read latency against the
 * number of snapshots, and the space taken by many branches of one golden
 * image. Prints one aligned table per part on stdout as it goes, then a
 * markdown summary for the README; progress goes to stderr.
 *
 *   node bench/store.mjs [--quick] [--dir DIR] [--seed N] [--keep]
 *
 * Layout of the bench directory (a fresh temp dir inside --dir, default
 * /var/tmp; removed at the end, on error and on SIGINT/SIGTERM):
 *   image.raw   the golden image: 85% random, 10% zero, 5% duplicate blocks
 *   storeA/     CLI import target; then parts 2 and 3 (in-process API)
 *   storeB/     copy of storeA right after the import; part 4
 *   out*.qcow2  qemu-img outputs (deleted once measured)
 *
 * Everything is bounded by the sizes below; random data comes from seeded
 * AES-128-CTR keystreams and positions from a seeded mulberry32, so two runs
 * with the same --seed write the same bytes. The page cache is never dropped.
 */
import { spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { BLOCK_SIZE, Store } from '../dist/blockstore/index.js';
// Seeded 32-bit PRNG: positions and block classes.
import { mulberry32 } from '../dist/cluster/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const DORMANT = path.join(ROOT, 'bin', 'dormant');
const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

/** Sizes per mode; in part 4 each branch writes 1% of the image's blocks. */
const MODES = {
  full: { image: 1 * GiB, big: 16 * GiB, reads: 20000, branches: 100 },
  quick: { image: 256 * MiB, big: 4 * GiB, reads: 5000, branches: 20 },
};
const TIMING_REPS = 5; // snapshot/branch timings per volume (median reported)
const SNAPSHOT_STEPS = [0, 10, 100]; // part 3: snapshots of the branch before each read run
const WRITES_PER_SNAPSHOT = 8; // part 3: random 4 KiB writes between two snapshots
const BIG_PATTERN_BLOCKS = 4096; // part 2: distinct blocks repeated over the big volume
const BIG_WRITE_BYTES = BIG_PATTERN_BLOCKS * BLOCK_SIZE; // one write call = the whole pattern (16 MiB)
// Explicit flush cadence while filling: a loop of in-memory writes never yields to the
// event loop, so the store's own background flush could not finish and pending grew unbounded.
const FLUSH_EVERY_BLOCKS = 65536;
const SPACE_TARGET = 1.05; // part 4: stored <= 1.05 x (golden + written)
const CHILD_TIMEOUT_MS = 30 * 60 * 1000; // no external command may run longer

// ---------------------------------------------------------------- options

function parseArgs(argv) {
  const o = { quick: false, dir: '/var/tmp', seed: 1, keep: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--quick') o.quick = true;
    else if (a === '--keep') o.keep = true;
    else if (a === '--dir' && i + 1 < argv.length) o.dir = argv[++i];
    else if (a === '--seed' && i + 1 < argv.length) o.seed = Number(argv[++i]);
    else if (a === '-h' || a === '--help') {
      process.stdout.write('usage: node bench/store.mjs [--quick] [--dir DIR] [--seed N] [--keep]\n'
        + '  --quick   256 MiB image, 4 GiB big volume, 5000 reads, 20 branches (default: 1 GiB, 16 GiB, 20000, 100)\n'
        + '  --dir     where to make the temp bench dir (default /var/tmp)\n'
        + '  --seed    seed of the generated data (default 1)\n'
        + '  --keep    keep the bench dir (default: removed at the end)\n');
      process.exit(0);
    } else {
      process.stderr.write(`bench: unknown argument '${a}' (see --help)\n`);
      process.exit(2);
    }
  }
  if (!Number.isSafeInteger(o.seed)) { process.stderr.write('bench: --seed must be an integer\n'); process.exit(2); }
  return o;
}

// ---------------------------------------------------------------- cleanup

let benchDir = null;
let keepDir = false;
let activeChild = null;
const openStores = new Set();

function removeBenchDir() {
  if (activeChild) { try { activeChild.kill('SIGKILL'); } catch { /* already gone */ } activeChild = null; }
  if (benchDir && !keepDir) {
    try { fs.rmSync(benchDir, { recursive: true, force: true }); } catch { /* best effort */ }
    benchDir = null;
  }
}

function onSignal(sig) {
  log(`interrupted (${sig}): removing ${benchDir ?? 'nothing'}`);
  removeBenchDir();
  process.exit(sig === 'SIGINT' ? 130 : 143);
}

// ---------------------------------------------------------------- helpers

const t0 = Date.now();
function log(msg) {
  process.stderr.write(`[bench ${((Date.now() - t0) / 1000).toFixed(1).padStart(6)}s] ${msg}\n`);
}

const nowNs = () => process.hrtime.bigint();
const msSince = (start) => Number(nowNs() - start) / 1e6;

/** Seeded incompressible bytes: an AES-128-CTR keystream named by (seed, label). */
function keystream(seed, label) {
  const k = crypto.createHash('sha256').update(`dormant-bench:${seed}:${label}`).digest();
  const cipher = crypto.createCipheriv('aes-128-ctr', k.subarray(0, 16), k.subarray(16, 32));
  let zeros = Buffer.alloc(0);
  return (n) => {
    if (zeros.length < n) zeros = Buffer.alloc(n);
    return cipher.update(zeros.subarray(0, n));
  };
}

function median(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function percentile(sorted, p) {
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}

function fmtBytes(n) {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 100 ? 0 : 2)} ${units[i]}`;
}

const fmt = (x, d = 1) => (Number.isFinite(x) ? x.toFixed(d) : '-');
const mbps = (bytes, ms) => bytes / 1e6 / (ms / 1000);

/** Aligned plain-text table; numbers (and '-') right-aligned. */
function textTable(header, rows) {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => String(r[i]).length)));
  const numeric = (c) => /^[-+]?[\d.,]+( ?[%x×a-zA-Zµ/]+)?$|^-$/.test(c);
  const right = header.map((_, i) => i > 0 && rows.length > 0 && rows.every((r) => numeric(String(r[i]))));
  const line = (r) => r.map((c, i) => (right[i] ? String(c).padStart(w[i]) : String(c).padEnd(w[i]))).join('  ').trimEnd();
  return [line(header), w.map((n) => '-'.repeat(n)).join('  '), ...rows.map(line)].join('\n');
}

function mdTable(header, rows) {
  const esc = (c) => String(c).replace(/\|/g, '\\|');
  return [
    `| ${header.map(esc).join(' | ')} |`,
    `|${header.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.map(esc).join(' | ')} |`),
  ].join('\n');
}

function section(title, header, rows, notes = []) {
  const out = [`\n=== ${title} ===`, textTable(header, rows), ...notes.map((n) => `  note: ${n}`)];
  process.stdout.write(`${out.join('\n')}\n`);
}

/** Runs a command to completion; resolves with its wall time (ms) and output. Rejects on failure. */
function run(cmd, args) {
  return new Promise((resolve, reject) => {
    const start = nowNs();
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], timeout: CHILD_TIMEOUT_MS });
    activeChild = child;
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => { stdout += d; });
    child.stderr.on('data', (d) => { stderr += d; });
    child.on('error', (err) => { activeChild = null; reject(err); });
    child.on('close', (code, signal) => {
      const ms = msSince(start);
      activeChild = null;
      if (code === 0) resolve({ ms, stdout, stderr });
      else reject(new Error(`${cmd} ${args.join(' ')} failed (${signal ?? `exit ${code}`}): ${stderr.trim() || stdout.trim()}`));
    });
  });
}

function capture(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : '';
}

/** Bytes allocated on disk under `p` (du -s -B1). */
function duBytes(p) {
  const out = capture('du', ['-s', '-B1', p]);
  return Number(out.split(/\s+/)[0]) || 0;
}

/** Reads a whole file once (so the timed tools find it in the page cache). */
function warmRead(file) {
  const fd = fs.openSync(file, 'r');
  const buf = Buffer.allocUnsafe(8 * MiB);
  try {
    let pos = 0;
    for (;;) {
      const n = fs.readSync(fd, buf, 0, buf.length, pos);
      if (n === 0) break;
      pos += n;
    }
  } finally { fs.closeSync(fd); }
}

async function openStore(dir) {
  const s = await Store.open(dir);
  openStores.add(s);
  return s;
}

async function closeStore(s) {
  openStores.delete(s);
  await s.close();
}

// ---------------------------------------------------------------- machine

function machineInfo(dir, shownDir) {
  let cpu = os.cpus()[0]?.model ?? 'unknown';
  try {
    const m = /^model name\s*:\s*(.+)$/m.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'));
    if (m) cpu = m[1].trim();
  } catch { /* not Linux */ }
  const df = capture('df', ['-PT', dir]).split('\n')[1]?.split(/\s+/) ?? [];
  const git = capture('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD']);
  const dirty = capture('git', ['-C', ROOT, 'status', '--porcelain', '--', 'src/blockstore', 'src/cli']) ? ' (+ uncommitted changes in src/blockstore or src/cli)' : '';
  return [
    ['cpu', cpu],
    ['cores', String(typeof os.availableParallelism === 'function' ? os.availableParallelism() : os.cpus().length)],
    ['ram', fmtBytes(os.totalmem())],
    ['kernel', `${os.type()} ${os.release()}`],
    ['bench dir fs', df.length >= 2 ? `${df[1]} on ${df[0]} (${shownDir})` : `unknown (${shownDir})`],
    ['node', process.version],
    ['qemu-img', capture('qemu-img', ['--version']).split('\n')[0] || 'not found'],
    ['dormant', git ? `${git}${dirty}` : 'unknown'],
  ];
}

// ---------------------------------------------------------------- the image

/**
 * Writes the golden image: per 4 KiB block, 85% fresh random bytes, 10%
 * zeroes, 5% a copy of an earlier random block (from a ring of recent ones).
 */
function makeImage(file, size, seed) {
  const rand = mulberry32(seed);
  const bytes = keystream(seed, 'image');
  const CHUNK = 4 * MiB;
  const RING = 1024;
  const ring = Buffer.alloc(RING * BLOCK_SIZE);
  let ringFill = 0;
  let ringNext = 0;
  const counts = { random: 0, zero: 0, duplicate: 0 };
  const fd = fs.openSync(file, 'w');
  try {
    for (let off = 0; off < size; off += CHUNK) {
      const len = Math.min(CHUNK, size - off);
      const buf = bytes(len);
      for (let b = 0; b < len / BLOCK_SIZE; b++) {
        const at = b * BLOCK_SIZE;
        const r = rand();
        if (r < 0.10) {
          buf.fill(0, at, at + BLOCK_SIZE);
          counts.zero++;
        } else if (r < 0.15 && ringFill > 0) {
          const src = Math.floor(rand() * ringFill) * BLOCK_SIZE;
          ring.copy(buf, at, src, src + BLOCK_SIZE);
          counts.duplicate++;
        } else {
          buf.copy(ring, ringNext * BLOCK_SIZE, at, at + BLOCK_SIZE);
          ringNext = (ringNext + 1) % RING;
          ringFill = Math.min(RING, ringFill + 1);
          counts.random++;
        }
      }
      fs.writeSync(fd, buf, 0, len, off);
    }
    fs.fsyncSync(fd); // no dirty image pages left to be written back during the timings
  } finally { fs.closeSync(fd); }
  return counts;
}

// ---------------------------------------------------------------- part 1

async function benchImport(cfg, dir, image) {
  const storeA = path.join(dir, 'storeA');
  await run(DORMANT, ['--store', storeA, 'init']);

  log('part 1: warm-up read, then dormant import');
  warmRead(image);
  const imp = await run(DORMANT, ['--store', storeA, 'import', 'golden', image]);
  const storeDu = duBytes(storeA);

  log('part 1: warm-up read, then qemu-img convert -f raw -O qcow2');
  warmRead(image);
  const q1File = path.join(dir, 'out.qcow2');
  const q1 = await run('qemu-img', ['convert', '-f', 'raw', '-O', 'qcow2', image, q1File]);
  const q1Du = duBytes(q1File);
  fs.rmSync(q1File);

  log('part 1: warm-up read, then qemu-img convert -t writeback (flushes at the end, like dormant)');
  warmRead(image);
  const q2File = path.join(dir, 'out-wb.qcow2');
  const q2 = await run('qemu-img', ['convert', '-t', 'writeback', '-f', 'raw', '-O', 'qcow2', image, q2File]);
  const q2Du = duBytes(q2File);
  fs.rmSync(q2File);

  const r = {
    dormant: mbps(cfg.image, imp.ms), qemu: mbps(cfg.image, q1.ms), qemuWb: mbps(cfg.image, q2.ms),
    dormantMs: imp.ms, qemuMs: q1.ms, qemuWbMs: q2.ms,
  };
  section(`1. import of a ${fmtBytes(cfg.image)} raw image`, ['tool', 'command', 'time s', 'MB/s', 'output on disk', 'vs qemu-img'], [
    ['dormant', 'dormant import golden image.raw', fmt(imp.ms / 1000, 2), fmt(r.dormant), fmtBytes(storeDu), `${fmt(r.dormant / r.qemu, 2)}x`],
    ['qemu-img', 'qemu-img convert -f raw -O qcow2', fmt(q1.ms / 1000, 2), fmt(r.qemu), fmtBytes(q1Du), '1.00x'],
    ['qemu-img', '... -t writeback (fdatasync at end)', fmt(q2.ms / 1000, 2), fmt(r.qemuWb), fmtBytes(q2Du), `${fmt(r.qemuWb / r.qemu, 2)}x`],
  ], [
    'MB/s = 10^6 bytes of image per second of wall time of the whole command (dormant includes node start-up, the final flush + fsync and the listing it prints).',
    'page cache not dropped: the image is read once before each tool, so each reads it from memory; one run each.',
    'qemu-img convert defaults to cache=unsafe for the output (no final flush); dormant syncs before it exits, as -t writeback does.',
    `dormant output: ${imp.stdout.trim()}`,
  ]);
  return { ...r, storeA };
}

// ---------------------------------------------------------------- part 2

/** Writes every block of `name` with a deduplicating pattern, in large writes, flushing as it goes. */
async function fillBig(store, name, size, seed) {
  const pattern = keystream(seed, 'big-pattern')(BIG_WRITE_BYTES);
  const h = await store.openVolume(name);
  const started = nowNs();
  let sinceFlush = 0;
  try {
    for (let off = 0; off < size; off += BIG_WRITE_BYTES) {
      const len = Math.min(BIG_WRITE_BYTES, size - off);
      await h.write(off, pattern.subarray(0, len));
      sinceFlush += len / BLOCK_SIZE;
      if (sinceFlush >= FLUSH_EVERY_BLOCKS) {
        await h.flush();
        sinceFlush = 0;
        await yieldToLoop();
      }
      if ((off + len) % GiB === 0) {
        log(`part 2: filled ${fmtBytes(off + len)} of ${fmtBytes(size)} (${fmt(mbps(off + len, msSince(started)))} MB/s)`);
      }
    }
    await h.flush();
  } finally { await h.close(); }
  return msSince(started);
}

async function benchSnapshotBranch(cfg, store) {
  log(`part 2: creating and filling a ${fmtBytes(cfg.big)} volume (${cfg.big / BLOCK_SIZE} blocks, ${BIG_PATTERN_BLOCKS} distinct)`);
  await store.createVolume('big', cfg.big);
  const fillMs = await fillBig(store, 'big', cfg.big, cfg.seed);

  const vols = [['golden', cfg.image], ['big', cfg.big]];
  const snapMs = { golden: [], big: [] };
  const branchMs = { golden: [], big: [] };
  log(`part 2: timing ${TIMING_REPS} snapshots and ${TIMING_REPS} branches per volume`);
  for (let i = 0; i < TIMING_REPS; i++) {
    for (const [v] of vols) {
      const s = nowNs();
      await store.snapshot(v, `s${i}`);
      snapMs[v].push(msSince(s));
    }
  }
  for (let i = 0; i < TIMING_REPS; i++) {
    for (const [v] of vols) {
      const s = nowNs();
      await store.branch(`${v}-b${i}`, `${v}@s${i}`);
      branchMs[v].push(msSince(s));
    }
  }
  const r = {
    snap: { golden: median(snapMs.golden), big: median(snapMs.big) },
    branch: { golden: median(branchMs.golden), big: median(branchMs.big) },
  };
  const row = (op, v, size, xs) => [op, v, fmtBytes(size), String(size / BLOCK_SIZE), fmt(median(xs), 2),
    fmt(Math.min(...xs), 2), fmt(Math.max(...xs), 2)];
  section('2. snapshot and branch time vs volume size (in-process API)',
    ['operation', 'volume', 'size', 'mapped blocks', 'median ms', 'min ms', 'max ms'], [
      row('snapshot', 'golden', cfg.image, snapMs.golden),
      row('snapshot', 'big', cfg.big, snapMs.big),
      row('branch', 'golden', cfg.image, branchMs.golden),
      row('branch', 'big', cfg.big, branchMs.big),
    ], [
      `ratio ${fmtBytes(cfg.big)}/${fmtBytes(cfg.image)}: snapshot ${fmt(r.snap.big / r.snap.golden, 2)}x, branch ${fmt(r.branch.big / r.branch.golden, 2)}x (O(1) means ~1x)`,
      `median of ${TIMING_REPS}, each with a distinct name; nothing pending, so each is one catalog commit (LMDB transaction + its sync).`,
      `big was filled with ${cfg.big / BIG_WRITE_BYTES} writes of ${fmtBytes(BIG_WRITE_BYTES)} (${BIG_PATTERN_BLOCKS} distinct blocks repeated) in ${fmt(fillMs / 1000, 1)} s = ${fmt(mbps(cfg.big, fillMs))} MB/s (all dedup hits).`,
      'golden has the imported image; its 10% zero blocks are holes, so it maps ~90% of its blocks.',
    ]);
  return { ...r, fillMs };
}

// ---------------------------------------------------------------- part 3

/** Latency stats (µs) of a list of samples. */
function latencyStats(xs) {
  const a = Float64Array.from(xs).sort();
  return { mean: a.reduce((x, y) => x + y, 0) / a.length, p50: percentile(a, 50), p99: percentile(a, 99) };
}

/**
 * Branch `reader` of golden@s0 gets snapshots (with a few writes before
 * each) up to every count in SNAPSHOT_STEPS; after each, `cfg.reads` random
 * aligned 4 KiB reads are timed one by one. A sibling branch `control`
 * (never written, never snapshotted) is read in the same time window,
 * interleaved in rounds, so machine noise shows as drift of the control.
 */
async function benchReads(cfg, store) {
  const blocks = cfg.image / BLOCK_SIZE;
  const rand = mulberry32(cfg.seed * 7919 + 3);
  const data = keystream(cfg.seed, 'read-branch-writes');
  const ROUNDS = 10;
  const perRound = Math.ceil(cfg.reads / ROUNDS);
  const warm = Math.min(2000, cfg.reads);
  await store.branch('reader', 'golden@s0');
  await store.branch('control', 'golden@s0');
  const h = await store.openVolume('reader');
  const ctl = await store.openVolume('control');
  const randomOffset = () => Math.floor(rand() * blocks) * BLOCK_SIZE;
  const timeReads = async (handle, n, out) => {
    const offsets = Array.from({ length: n }, randomOffset);
    for (let i = 0; i < n; i++) {
      const s = nowNs();
      await handle.read(offsets[i], BLOCK_SIZE);
      out.push(Number(nowNs() - s) / 1000);
    }
    await yieldToLoop(); // let signals and timers in, outside the timed calls
  };
  const rows = [];
  const res = {};
  let snaps = 0;
  try {
    for (const k of SNAPSHOT_STEPS) {
      while (snaps < k) {
        for (let w = 0; w < WRITES_PER_SNAPSHOT; w++) await h.write(randomOffset(), data(BLOCK_SIZE));
        await store.snapshot('reader', `r${snaps}`);
        snaps++;
      }
      log(`part 3: ${cfg.reads} random 4 KiB reads after ${k} snapshots (+ as many on the control branch)`);
      await timeReads(h, warm, []);
      await timeReads(ctl, warm, []);
      const lat = [];
      const ctlLat = [];
      for (let r = 0; r < ROUNDS; r++) {
        const n = Math.min(perRound, cfg.reads - r * perRound);
        if (n <= 0) break;
        if (r % 2 === 0) { await timeReads(h, n, lat); await timeReads(ctl, n, ctlLat); }
        else { await timeReads(ctl, n, ctlLat); await timeReads(h, n, lat); }
      }
      res[k] = { ...latencyStats(lat), control: latencyStats(ctlLat) };
      rows.push([String(k), String(k * WRITES_PER_SNAPSHOT), String(lat.length), fmt(res[k].mean), fmt(res[k].p50),
        fmt(res[k].p99), fmt(res[k].control.p50), `${fmt(res[k].p50 / res[k].control.p50, 2)}x`]);
    }
  } finally {
    await h.close();
    await ctl.close();
  }
  const last = SNAPSHOT_STEPS[SNAPSHOT_STEPS.length - 1];
  res.ratio = res[last].p50 / res[0].p50;
  res.corrected = (res[last].p50 / res[last].control.p50) / (res[0].p50 / res[0].control.p50);
  section('3. random 4 KiB read latency on a branch vs snapshots taken (handle.read)',
    ['snapshots', 'blocks rewritten', 'reads', 'mean µs', 'p50 µs', 'p99 µs', 'control p50 µs', 'p50/control'], rows, [
      `ratio p50(${last})/p50(0) = ${fmt(res.ratio, 2)}x; against the control read in the same window: ${fmt(res.corrected, 2)}x (flat means ~1x)`,
      `branch 'reader' of golden@s0 (${fmtBytes(cfg.image)}); ${WRITES_PER_SNAPSHOT} random 4 KiB writes before each snapshot; reads uniform over the volume, after ${warm} untimed warm-up reads.`,
      `control = a sibling branch with no writes and no snapshots, read in ${ROUNDS} interleaved rounds with the reader (it shows machine noise).`,
      'segment files are in the page cache (just written); each read: block-map seek per chain level + chunk record + pread + xxh3 verify.',
    ]);
  return res;
}

// ---------------------------------------------------------------- part 4

async function benchSpace(cfg, storeB) {
  const blocks = cfg.image / BLOCK_SIZE;
  const perBranch = Math.floor(blocks / 100);
  const store = await openStore(storeB);
  const before = await store.stats();
  const duBefore = duBytes(storeB);
  await store.snapshot('golden', 'base');
  const rand = mulberry32(cfg.seed * 104729 + 11);
  const data = keystream(cfg.seed, 'branch-writes');
  const started = nowNs();
  for (let b = 0; b < cfg.branches; b++) {
    await store.branch(`vm${b}`, 'golden@base');
    const h = await store.openVolume(`vm${b}`);
    try {
      const picked = new Set();
      for (let guard = 0; picked.size < perBranch && guard < perBranch * 100; guard++) picked.add(Math.floor(rand() * blocks));
      const buf = data(picked.size * BLOCK_SIZE);
      let i = 0;
      for (const blk of picked) {
        await h.write(blk * BLOCK_SIZE, buf.subarray(i * BLOCK_SIZE, (i + 1) * BLOCK_SIZE));
        i++;
      }
      await h.flush();
    } finally { await h.close(); }
    if ((b + 1) % 10 === 0 || b + 1 === cfg.branches) log(`part 4: ${b + 1}/${cfg.branches} branches written`);
    await yieldToLoop();
  }
  const writeMs = msSince(started);
  const after = await store.stats();
  await closeStore(store);
  const duAfter = duBytes(storeB);
  const written = cfg.branches * perBranch * BLOCK_SIZE;

  const metric = (label, g, a) => {
    const ratio = a / (g + written);
    return { label, golden: g, after: a, expected: g + written, ratio, pass: ratio <= SPACE_TARGET };
  };
  const ms = [
    metric('stats().storedBytes', before.storedBytes, after.storedBytes),
    metric('stats().segmentBytes', before.segmentBytes, after.segmentBytes),
    metric('du of store dir', duBefore, duAfter),
  ];
  section(`4. space: ${cfg.branches} branches of a ${fmtBytes(cfg.image)} golden, each wrote ${perBranch} random blocks (1%)`,
    ['measure', 'golden alone', 'after branches', 'golden + written', 'ratio', `≤ ${SPACE_TARGET}x`],
    ms.map((m) => [m.label, fmtBytes(m.golden), fmtBytes(m.after), fmtBytes(m.expected), `${fmt(m.ratio, 3)}x`, m.pass ? 'PASS' : 'MISS']), [
      `written = ${cfg.branches} x ${perBranch} x 4 KiB = ${fmtBytes(written)} of fresh random data; "golden alone" is the same measure before branching.`,
      `index after: ${fmtBytes(after.indexBytes)} (data.mdb size), ${after.chunks} chunks, ${after.segments} segments; logical ${fmtBytes(after.logicalBytes)}, dedup ${fmt(after.dedupRatio, 2)}x.`,
      `${cfg.branches} full copies would take ${fmtBytes(cfg.branches * cfg.image)}; writing took ${fmt(writeMs / 1000, 1)} s (branch + ${perBranch} single-block writes + flush each).`,
    ]);
  return { ms, written, perBranch };
}

// ---------------------------------------------------------------- main

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  const mode = opts.quick ? 'quick' : 'full';
  const cfg = { ...MODES[mode], seed: opts.seed };
  keepDir = opts.keep;
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', removeBenchDir);

  fs.mkdirSync(opts.dir, { recursive: true });
  benchDir = fs.mkdtempSync(path.join(path.resolve(opts.dir), 'dormant-bench-'));
  log(`mode ${mode}; bench dir ${benchDir}${keepDir ? ' (kept)' : ''}`);

  const machine = machineInfo(benchDir, path.resolve(opts.dir));
  section(`dormant store benchmark (${mode})`, ['machine', ''], machine);

  const image = path.join(benchDir, 'image.raw');
  log(`generating the ${fmtBytes(cfg.image)} image (seed ${cfg.seed})`);
  const counts = makeImage(image, cfg.image, cfg.seed);
  log(`image: ${counts.random} random, ${counts.zero} zero, ${counts.duplicate} duplicate blocks`);

  const imp = await benchImport(cfg, benchDir, image);
  const storeB = path.join(benchDir, 'storeB');
  fs.cpSync(imp.storeA, storeB, { recursive: true });

  const storeA = await openStore(imp.storeA);
  const sb = await benchSnapshotBranch(cfg, storeA);
  const reads = await benchReads(cfg, storeA);
  await closeStore(storeA);
  fs.rmSync(imp.storeA, { recursive: true, force: true }); // make room for part 4

  const space = await benchSpace(cfg, storeB);

  // Summary for the README.
  const last = SNAPSHOT_STEPS[SNAPSHOT_STEPS.length - 1];
  const big = fmtBytes(cfg.big);
  const img = fmtBytes(cfg.image);
  const rows = [
    [`import ${img} raw (MB/s)`, `dormant ${fmt(imp.dormant)}`, `qemu-img convert -O qcow2 ${fmt(imp.qemu)} (-t writeback ${fmt(imp.qemuWb)})`, `${fmt(imp.dormant / imp.qemu, 2)}x (${fmt(imp.dormant / imp.qemuWb, 2)}x)`],
    [`snapshot, ${img} / ${big} volume (ms, median)`, `${fmt(sb.snap.golden, 2)} / ${fmt(sb.snap.big, 2)}`, 'must not grow with size', `${big}/${img}: ${fmt(sb.snap.big / sb.snap.golden, 2)}x`],
    [`branch, ${img} / ${big} volume (ms, median)`, `${fmt(sb.branch.golden, 2)} / ${fmt(sb.branch.big, 2)}`, 'must not grow with size', `${big}/${img}: ${fmt(sb.branch.big / sb.branch.golden, 2)}x`],
    ...SNAPSHOT_STEPS.map((k) => [`4 KiB random read, branch after ${k} snapshots (µs)`,
      `mean ${fmt(reads[k].mean)}, p50 ${fmt(reads[k].p50)}, p99 ${fmt(reads[k].p99)}`, k === 0 ? 'baseline' : 'must stay flat',
      k === 0 ? '-' : `p50 ${fmt(reads[k].p50 / reads[0].p50, 2)}x (${fmt((reads[k].p50 / reads[k].control.p50) / (reads[0].p50 / reads[0].control.p50), 2)}x normalised by the control)`]),
    ...space.ms.map((m) => [`space, ${cfg.branches} branches × 1% written: ${m.label}`, fmtBytes(m.after),
      `golden + written ${fmtBytes(m.expected)}`, `${fmt(m.ratio, 3)}x ${m.pass ? 'PASS' : 'MISS'} (≤ ${SPACE_TARGET})`]),
  ];
  const md = [
    `\n### dormant store benchmark (${mode}, \`npm run bench${opts.quick ? ' -- --quick' : ''}\`)\n`,
    mdTable(['machine', ''], machine),
    '',
    mdTable(['benchmark', 'dormant', 'compared with', 'ratio'], rows),
    '',
    `Page cache not dropped; one run per import tool after a warm-up read; read p50(${last})/p50(0) = ${fmt(reads.ratio, 2)}x (${fmt(reads.corrected, 2)}x against a control branch read in the same window).`,
  ];
  process.stdout.write(`${md.join('\n')}\n`);
  log('done');
}

main().then(async () => {
  removeBenchDir();
}, async (err) => {
  process.stderr.write(`bench: failed: ${err?.stack ?? err}\n`);
  for (const s of openStores) { try { await s.close(); } catch { /* cleaning up anyway */ } }
  removeBenchDir();
  process.exit(1);
});
