#!/usr/bin/env node
/**
 * Migration benchmark: downtime and bytes moved when a running VM moves to
 * another host, for an idle VM (paged out) and a busy one (asked for
 * /cgi-bin/status back to back, which touches its ballast and writes its
 * disk), in the same run:
 *   dormant  `dormant vm migrate --mode copy` between two daemons on this
 *            machine (`serve --mount --api`, each its own store with the
 *            test guest's golden image): the disk branch and the memory
 *            volume by missing chunks (a pre-copy round while the guest
 *            runs, the rest paused), QEMU's device state with x-ignore-shared;
 *            The idle case runs twice: the first VM of its image on the
 *            destination, then a sibling (the destination holds the
 *            first one's memory, as a host of many such VMs does);
 *   lazy     `dormant vm migrate --mode lazy` of a third idle VM and a
 *            second busy one: only the manifests go before the pause, the
 *            patch carries hashes, the guest goes on there at once and the
 *            destination fetches what it lacks from the source (on demand
 *            and in the background). Bytes moved count what went before
 *            the guest went on there plus what the destination fetched
 *            until its copy completed (vm status there);
 *   qemu     QEMU's own live migration of the same guest (anonymous RAM,
 *            a qcow2 overlay on the same golden image as shared storage)
 *            to a fresh QEMU on this machine: RAM in the stream, pre-copy.
 * Bytes moved are compared with the VM's disk + RAM (the disk volume's
 * size, 256 MiB of RAM). dormant's downtime is from the guest's pause to
 * its confirmed run on the destination (as `vm migrate` reports it);
 * QEMU's is its own `downtime` figure (query-migrate), which ends when the
 * source has sent its last byte, and beside it the guest's own pause: from
 * the source's STOP event to the destination's RESUME (QEMU's timestamps).
 *
 * Needs root (the daemons raise their priority; FUSE). Build first (npm
 * run setup). Env: BENCH_BALLAST (160M), BENCH_SHARED (50), BENCH_SETTLE_S
 * (20: quiet time before the idle VM is paged out), BENCH_CACHE (image
 * cache, default $TMPDIR/dormant-test-images), BENCH_DIR (work dir,
 * default a temp dir, removed).
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
if (!fs.existsSync(path.join(repo, 'dist', 'migrate', 'index.js'))) {
  console.error('bench/migrate.mjs: dist/ missing; run `npm run setup` first');
  process.exit(2);
}
const BIN = path.join(repo, 'bin', 'dormant');
const MiB = 2 ** 20;
const BALLAST = process.env.BENCH_BALLAST ?? '160M';
const SHARED = Number(process.env.BENCH_SHARED ?? 50);
const SETTLE_S = Number(process.env.BENCH_SETTLE_S ?? 20);
const CACHE = process.env.BENCH_CACHE ?? path.join(os.tmpdir(), 'dormant-test-images');
const ownDir = process.env.BENCH_DIR === undefined;
const dir = process.env.BENCH_DIR ?? fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-bench-migrate-'));
const RAM = 256 * MiB;
const bytesOf = (text) => {
  const m = /^(\d+)([KMG]?)$/i.exec(text);
  if (!m) throw new Error(`bad size ${text}`);
  return Number(m[1]) * { '': 1, K: 1024, M: MiB, G: 1024 * MiB }[m[2].toUpperCase()];
};
const TOKEN = 'bench-migrate-token-0123456789';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const mib = (b) => (b / MiB).toFixed(1);
const log = (line) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${line}\n`);
const freePort = () => new Promise((resolve, reject) => {
  const s = net.createServer();
  s.once('error', reject);
  s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => resolve(port)); });
});

// ---- state torn down on exit, whatever happens ----
const children = new Set();
const mounts = [];
function cleanup() {
  for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } }
  for (const m of mounts) { try { execFileSync('fusermount', ['-uz', m], { stdio: 'ignore' }); } catch { /* not mounted */ } }
  if (ownDir) fs.rmSync(dir, { recursive: true, force: true });
}
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { cleanup(); process.exit(130); });

const dormant = async (store, args, timeout = 600_000) =>
  (await run(process.execPath, [BIN, '--store', store, ...args], { timeout, maxBuffer: 64 * MiB })).stdout;

async function get(port, p = '/', timeoutMs = 10_000) {
  const r = await fetch(`http://127.0.0.1:${port}${p}`, { signal: AbortSignal.timeout(timeoutMs) });
  const text = await r.text();
  if (!r.ok) throw new Error(`HTTP ${r.status}`);
  return text;
}
async function waitHttp(name, port, timeoutMs = 300_000) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try { if ((await get(port, '/', 5_000)).includes(`<h1>${name}</h1>`)) return; } catch { /* booting */ }
    await sleep(500);
  }
  throw new Error(`${name} did not answer HTTP on ${port} within ${timeoutMs / 1000} s`);
}

/** Asks `port()` for /cgi-bin/status back to back until stopped; the longest gap between answers. */
function startLoad(port) {
  const l = { stopped: false, answers: 0, longestGapMs: 0 };
  l.done = (async () => {
    let last = performance.now();
    while (!l.stopped) {
      try {
        await get(port(), '/cgi-bin/status', 30_000);
        const now = performance.now();
        l.longestGapMs = Math.max(l.longestGapMs, now - last);
        last = now;
        l.answers++;
      } catch { await sleep(50); }
    }
  })();
  return l;
}

// ---- the dormant hosts ----
async function host(name) {
  const store = path.join(dir, name);
  const mnt = path.join(dir, `${name}-mnt`);
  fs.mkdirSync(mnt, { recursive: true });
  await dormant(store, ['init']);
  await dormant(store, ['image', 'build-test-guest', 'golden', '--cache-dir', CACHE]);
  const port = await freePort();
  const err = fs.openSync(path.join(dir, `${name}.log`), 'w');
  const child = spawn(process.execPath, [BIN, '--store', store, 'serve', '--no-tcp', '--mount', mnt, '--no-auto-page',
    '--api', `127.0.0.1:${port}`, '--api-token-file', path.join(dir, 'token')], { stdio: ['ignore', 'ignore', err] });
  children.add(child);
  mounts.push(mnt);
  const deadline = Date.now() + 60_000;
  while (!/host API on/.test(fs.readFileSync(path.join(dir, `${name}.log`), 'utf8'))) {
    if (Date.now() > deadline || child.exitCode !== null) throw new Error(`daemon ${name} did not start: ${fs.readFileSync(path.join(dir, `${name}.log`), 'utf8')}`);
    await sleep(200);
  }
  return { name, store, url: `http://127.0.0.1:${port}`, child };
}

async function dormantCase(a, b, vm, busy, label, mode = 'copy') {
  await dormant(a.store, ['vm', 'create', vm, '--from', 'golden@base', '--memory', '256M', '--ballast', BALLAST,
    '--ballast-shared', `${SHARED}%`, '--cache-dir', CACHE]);
  const s = JSON.parse(await dormant(a.store, ['vm', 'start', vm, '--json']));
  await waitHttp(vm, s.hostPort);
  const disk = JSON.parse(await dormant(a.store, ['info', vm, '--json'])).size;
  let port = s.hostPort;
  let load;
  if (busy) {
    load = startLoad(() => port);
    await sleep(5_000);
  } else {
    await sleep(SETTLE_S * 1000);
    await dormant(a.store, ['vm', 'pageout', vm]);
  }
  log(`dormant ${busy ? 'busy' : 'idle'}: migrating ${vm}`);
  const r = JSON.parse(await dormant(a.store, ['vm', 'migrate', vm, '--to', b.url, '--mode', mode, '--token-file', path.join(dir, 'token'), '--json']));
  port = r.hostPort;
  await waitHttp(vm, port, 60_000);
  // Lazy: the move is over once the destination's copy is complete (it answers meanwhile).
  let lazy;
  for (let i = 0; mode === 'lazy' && i < 3000; i++) {
    lazy = JSON.parse(await dormant(b.store, ['vm', 'status', vm, '--json'])).lazyCopy;
    if (lazy?.state === 'complete') break;
    await sleep(200);
  }
  if (mode === 'lazy' && lazy?.state !== 'complete') throw new Error(`${vm}: lazy copy not complete: ${JSON.stringify(lazy)}`);
  if (load) { await sleep(2_000); load.stopped = true; await load.done; }
  await dormant(b.store, ['vm', 'stop', vm, '--timeout', '0']).catch(() => undefined);
  const phases = `rounds while it ran ${r.precopyRounds.join(', ') || 'none'} blocks; ${r.arrivalPages} pages in use read in there before the pause; downtime: write-back ${r.downtimePhasesMs.writeBack}, patch ${r.downtimePhasesMs.patch} (${r.patchedBlocks.memory} memory + `
    + `${r.patchedBlocks.disk} disk blocks), device state ${r.downtimePhasesMs.deviceState}, resume ${r.downtimePhasesMs.resume} ms`;
  // A fetch request carries 16 bytes of hash per chunk besides the chunk.
  const fetched = lazy ? lazy.bytesFetched * (1 + 16 / 4096) : 0;
  return {
    system: mode === 'lazy' ? 'dormant lazy' : 'dormant', kind: label ?? (busy ? 'busy' : 'idle (paged out)'), downtimeMs: r.downtimeMs,
    bytes: r.bytesSent + fetched, before: r.bytesSent,
    detail: lazy
      ? `before it went on there ${mib(r.bytesSent)} MiB (manifests and patch hashes ${mib(r.memoryBytesSent + r.diskBytesSent)}, QEMU stream `
        + `${mib(r.deviceStateBytes)}); then fetched ${mib(fetched)} MiB: ${lazy.demandChunks} chunks on demand, ${lazy.backgroundChunks} `
        + `in the background, in ${lazy.seconds.toFixed(1)} s; ${phases}`
      : `memory ${mib(r.memoryBytesSent)} + disk ${mib(r.diskBytesSent)} + QEMU stream ${mib(r.deviceStateBytes)} MiB; ${phases}`,
    whole: disk + RAM, seconds: r.seconds + (lazy?.seconds ?? 0), gapMs: load?.longestGapMs,
  };
}

// ---- QEMU's own live migration ----
class Qmp {
  static async connect(file) {
    const q = new Qmp();
    for (let i = 0; ; i++) {
      try {
        q.sock = await new Promise((resolve, reject) => { const s = net.connect(file, () => resolve(s)); s.once('error', reject); });
        break;
      } catch (err) { if (i > 300) throw err; await sleep(100); }
    }
    q.buf = '';
    q.waiting = [];
    q.events = [];
    q.sock.setEncoding('utf8');
    q.sock.on('data', (d) => {
      q.buf += d;
      let nl;
      while ((nl = q.buf.indexOf('\n')) >= 0) {
        const msg = JSON.parse(q.buf.slice(0, nl));
        q.buf = q.buf.slice(nl + 1);
        if (!('event' in msg)) q.waiting.shift()?.(msg);
        else q.events.push(msg);
      }
    });
    await new Promise((r) => q.waiting.push(r));
    await q.cmd('qmp_capabilities');
    return q;
  }
  cmd(execute, args) {
    return new Promise((resolve, reject) => {
      this.waiting.push((m) => (m.error ? reject(new Error(`${execute}: ${m.error.desc}`)) : resolve(m.return)));
      this.sock.write(`${JSON.stringify(args ? { execute, arguments: args } : { execute })}\n`);
    });
  }
  close() { this.sock.destroy(); }
}

async function qemuCase(name, busy) {
  const meta = JSON.parse(fs.readFileSync(path.join(CACHE, 'golden.json'), 'utf8'));
  const disk = path.join(dir, `${name}.qcow2`);
  await run('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', meta.image, '-F', 'raw', disk]);
  const cmdline = `${meta.cmdline} dormant.hostname=${name} dormant.ballast=${bytesOf(BALLAST)} dormant.ballast_shared=${SHARED}`;
  const launch = async (tag, extra) => {
    const port = await freePort();
    const qmp = path.join(dir, `${name}-${tag}.qmp`);
    const child = spawn('qemu-system-x86_64', [
      '-name', name, '-machine', 'q35', '-accel', 'tcg,tb-size=16', '-m', '256M', '-smp', '1',
      '-kernel', meta.kernel, '-initrd', meta.initrd, '-append', cmdline,
      '-drive', `file=${disk},format=qcow2,if=virtio`,
      '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${port}-:80`, '-device', 'virtio-net-pci,netdev=n0',
      '-serial', 'null', '-display', 'none', '-nodefaults', '-no-reboot', '-qmp', `unix:${qmp},server=on,wait=off`, ...extra,
    ], { stdio: 'ignore' });
    children.add(child);
    return { port, child, qmp: await Qmp.connect(qmp) };
  };
  const src = await launch('src', []);
  await waitHttp(name, src.port);
  let port = src.port;
  let load;
  if (busy) { load = startLoad(() => port); await sleep(5_000); } else await sleep(SETTLE_S * 1000);
  const inPort = await freePort();
  const dst = await launch('dst', ['-incoming', `tcp:127.0.0.1:${inPort}`]);
  log(`qemu ${busy ? 'busy' : 'idle'}: migrating ${name}`);
  const t0 = performance.now();
  await src.qmp.cmd('migrate', { uri: `tcp:127.0.0.1:${inPort}` });
  let info;
  for (;;) {
    info = await src.qmp.cmd('query-migrate');
    if (info.status === 'completed') break;
    if (info.status === 'failed' || info.status === 'cancelled') throw new Error(`QEMU migration ${info.status}: ${info['error-desc'] ?? ''}`);
    if (performance.now() - t0 > 600_000) throw new Error('QEMU migration not done in 600 s');
    await sleep(20);
  }
  const seconds = (performance.now() - t0) / 1000;
  // The guest's own pause: from the source's STOP event to the destination's RESUME (both stamped by QEMU, same clock).
  const stamp = (q, ev) => {
    const e = q.qmp.events.find((m) => m.event === ev);
    return e ? e.timestamp.seconds * 1000 + e.timestamp.microseconds / 1000 : undefined;
  };
  let resumedAt;
  for (let i = 0; i < 500 && (resumedAt = stamp(dst, 'RESUME')) === undefined; i++) await sleep(10);
  const stopped = stamp(src, 'STOP');
  const pauseMs = stopped !== undefined && resumedAt !== undefined ? Math.round(resumedAt - stopped) : undefined;
  port = dst.port;
  await waitHttp(name, port, 60_000);
  if (load) { await sleep(2_000); load.stopped = true; await load.done; }
  for (const q of [src, dst]) { q.qmp.close(); q.child.kill('SIGKILL'); }
  const diskSize = JSON.parse((await run('qemu-img', ['info', '--output=json', disk])).stdout)['virtual-size'];
  return {
    system: 'qemu', kind: busy ? 'busy' : 'idle', downtimeMs: info.downtime, pauseMs, bytes: info.ram.transferred,
    detail: `RAM stream ${mib(info.ram.transferred)} MiB (disk shared); its own downtime figure ${info.downtime} ms, `
      + `the guest stopped to running there ${pauseMs ?? '?'} ms (STOP to RESUME events)`, whole: diskSize + RAM, seconds, gapMs: load?.longestGapMs,
  };
}

function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(fs.readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown CPU';
  return `${cpu}, ${os.cpus().length} cores, ${Math.round(os.totalmem() / 2 ** 30)} GiB RAM, Linux ${os.release()}`;
}

try {
  fs.writeFileSync(path.join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  const a = await host('a');
  const b = await host('b');
  const rows = [];
  rows.push(await dormantCase(a, b, 'idle1', false, 'idle (paged out), first of its image there'));
  rows.push(await dormantCase(a, b, 'idle2', false, 'idle (paged out), a sibling there'));
  rows.push(await dormantCase(a, b, 'idle3', false, 'idle (paged out), a sibling there', 'lazy'));
  rows.push(await qemuCase('qidle1', false));
  rows.push(await dormantCase(a, b, 'busy1', true));
  rows.push(await dormantCase(a, b, 'busy2', true, 'busy, a sibling there', 'lazy'));
  rows.push(await qemuCase('qbusy1', true));
  for (const r of rows) log(JSON.stringify(r));
  console.log(`\nMigration (${new Date().toISOString().slice(0, 10)}; ${machine()}; TCG): 256 MiB VMs with a ${BALLAST} ballast `
    + `(${SHARED}% alike), both hosts on this machine over loopback; dormant copy and lazy mode vs QEMU's own live migration\n`);
  console.log('| VM | system | downtime | bytes moved | of disk + RAM | what moved | total | longest gap in answers |');
  console.log('|---|---|---:|---:|---:|---|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.kind} | ${r.system} | ${r.downtimeMs} ms | ${mib(r.bytes)} MiB | ${((100 * r.bytes) / r.whole).toFixed(2)} % `
      + `| ${r.detail} | ${r.seconds.toFixed(2)} s | ${r.gapMs === undefined ? '-' : `${r.gapMs.toFixed(0)} ms`} |`);
  }
  console.log('');
  for (const kind of ['idle', 'busy']) {
    const q = rows.find((r) => r.system === 'qemu' && r.kind.startsWith(kind));
    for (const system of ['dormant', 'dormant lazy']) {
      const d = rows.filter((r) => r.system === system && r.kind.startsWith(kind)).pop();
      console.log(`${kind}: ${system} / qemu: downtime ${(d.downtimeMs / q.downtimeMs).toFixed(2)}x its own figure`
        + `${q.pauseMs ? `, ${(d.downtimeMs / q.pauseMs).toFixed(2)}x its guest's stop to resume` : ''}, bytes ${(d.bytes / q.bytes).toFixed(3)}x`
        + `${d.before !== d.bytes ? ` (before the guest went on there: ${(d.before / q.bytes).toFixed(3)}x)` : ''}`);
    }
  }
} finally {
  cleanup();
}
