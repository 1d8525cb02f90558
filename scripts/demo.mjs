// npm run demo: the main job of dormant on a fresh demo store, step by step.
// Part 1: builds a small ext4 golden image, imports it, branches three VMs
// from it, writes into one, snapshots it, and shows that the branches share
// the golden data. Part 2: builds a bootable test guest, starts the daemon
// with its FUSE view, boots two VMs from the one golden image under QEMU
// (disk over NBD, RAM in the store) and shows each answering HTTP. Every CLI
// step is printed as the command a user would type.
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { Store } from '../dist/blockstore/index.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const work = path.join(root, '.demo');
const store = path.join(work, 'store');
const bin = path.join(root, 'bin', 'dormant');

function dormant(...args) {
  console.log(`\n$ dormant ${args.join(' ')}`);
  const r = spawnSync(process.execPath, [bin, ...args], {
    env: { ...process.env, DORMANT_STORE: store }, stdio: ['ignore', 'inherit', 'inherit'],
  });
  if (r.status !== 0) { console.error(`demo: 'dormant ${args.join(' ')}' failed (exit ${r.status})`); process.exit(1); }
}

function step(text) { console.log(`\n== ${text}`); }

fs.rmSync(work, { recursive: true, force: true });
fs.mkdirSync(work, { recursive: true });
console.log(`demo store: ${store} (DORMANT_STORE=${store} bin/dormant list, to look around afterwards)`);

step('build a golden image: a 64 MiB ext4 file system holding ~20 MiB of files');
const tree = path.join(work, 'rootfs');
fs.mkdirSync(path.join(tree, 'usr/lib'), { recursive: true });
fs.cpSync(path.join(root, 'node_modules/typescript/lib'), path.join(tree, 'usr/lib/typescript'), { recursive: true });
fs.writeFileSync(path.join(tree, 'etc-hostname'), 'golden\n');
const image = path.join(work, 'golden.img');
execFileSync('mke2fs', ['-q', '-F', '-t', 'ext4', '-b', '4096', '-L', 'golden', '-d', tree, image, '64M']);
console.log(`made ${path.relative(root, image)} with mke2fs -d`);

dormant('init');
dormant('import', 'golden', image);
dormant('snapshot', 'golden', 'base');
for (const vm of ['vm1', 'vm2', 'vm3']) dormant('branch', vm, '--from', 'golden@base');

step('vm1 writes 2 MiB of new data (as its guest would, through the store API)');
{
  const s = await Store.open(store);
  const h = await s.openVolume('vm1');
  await h.write(40 * 2 ** 20, crypto.randomBytes(2 * 2 ** 20));
  await h.flush();
  await h.close();
  await s.close();
  console.log('wrote 2 MiB at offset 40 MiB of vm1, flushed');
}
dormant('snapshot', 'vm1', 'after-write');

step('what is stored: the branches share the golden data, vm1 adds only what it wrote');
dormant('list');
dormant('info', 'vm2');
dormant('stats');

const json = (...args) => JSON.parse(execFileSync(process.execPath, [bin, ...args, '--json'],
  { env: { ...process.env, DORMANT_STORE: store } }));
const mib = (blocks) => `${(blocks * 4096 / 2 ** 20).toFixed(1)} MiB`;
step('summary');
const golden = json('info', 'golden@base');
console.log(`golden@base holds ${mib(golden.blocks.allocated)} of data.`);
for (const vm of ['vm1', 'vm2', 'vm3']) {
  const i = json('info', vm);
  console.log(`${vm}: sees ${mib(i.blocks.allocated)} = ${mib(i.blocks.inherited)} inherited from golden@base `
    + `+ ${mib(i.blocks.own)} written by itself`);
}
const stats = json('stats');
console.log(`Stored: ${(stats.storedBytes / 2 ** 20).toFixed(1)} MiB for ${(stats.logicalBytes / 2 ** 20).toFixed(1)} MiB `
  + `that the 4 volumes and 2 snapshots show (dedup ratio ${stats.dedupRatio.toFixed(2)}): the golden data once, plus vm1's 2 MiB.`);

// ---- Part 2: real VMs -------------------------------------------------------

step('part 2: boot two real VMs from one golden image (QEMU under TCG: about 20 s each)');
dormant('image', 'build-test-guest', 'guest');

const mnt = path.join(work, 'mnt');
fs.mkdirSync(mnt, { recursive: true });
console.log(`\n$ dormant serve --no-tcp --mount ${path.relative(root, mnt)} &`);
const daemon = spawn(process.execPath, [bin, 'serve', '--no-tcp', '--mount', mnt], {
  env: { ...process.env, DORMANT_STORE: store }, stdio: ['ignore', 'ignore', 'pipe'],
});
let daemonLog = '';
daemon.stderr.on('data', (d) => { daemonLog += d; });
const daemonExit = new Promise((resolve) => daemon.on('exit', resolve));
const stopDaemon = async () => {
  if (daemon.exitCode !== null || daemon.signalCode !== null) return;
  daemon.kill('SIGTERM'); // the daemon stops its VMs, unmounts and flushes
  const timer = setTimeout(() => daemon.kill('SIGKILL'), 60_000);
  await daemonExit;
  clearTimeout(timer);
};
process.once('SIGINT', () => { void stopDaemon().then(() => process.exit(130)); });

try {
  for (let i = 0; !daemonLog.includes('dormant serve: store'); i++) {
    if (i > 300 || daemon.exitCode !== null) throw new Error(`the daemon did not start:\n${daemonLog}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  for (const vm of ['web1', 'web2']) dormant('vm', 'create', vm, '--from', 'guest@base', '--memory', '256M');
  for (const vm of ['web1', 'web2']) dormant('vm', 'start', vm);

  step('waiting for both VMs to answer HTTP on their forwarded ports');
  const vms = JSON.parse(execFileSync(process.execPath, [bin, 'vm', 'list', '--json'],
    { env: { ...process.env, DORMANT_STORE: store } })).vms;
  const started = Date.now();
  for (const v of vms) {
    const url = `http://127.0.0.1:${v.hostPort}/cgi-bin/status`;
    let answer = null;
    while (answer === null && Date.now() - started < 180_000) {
      try {
        const res = await fetch(url, { signal: AbortSignal.timeout(2000) });
        if (res.ok) answer = await res.text();
      } catch { /* still booting */ }
      if (answer === null) await new Promise((r) => setTimeout(r, 1000));
    }
    if (answer === null) throw new Error(`${v.name} did not answer on ${url} within 180 s; see: dormant vm log ${v.name}`);
    console.log(`\n$ curl ${url}\n${answer.trim()}`);
  }
  console.log(`(both answering ${((Date.now() - started) / 1000).toFixed(0)} s after start)`);

  step('the running VMs, and what the store holds for them');
  dormant('vm', 'list');
  dormant('list');

  step('page web1 out: its RAM goes to the store while it keeps running, then it answers again');
  dormant('vm', 'pageout', 'web1');
  const web1 = vms.find((v) => v.name === 'web1');
  const t0 = Date.now();
  const again = await (await fetch(`http://127.0.0.1:${web1.hostPort}/`, { signal: AbortSignal.timeout(30_000) })).text();
  console.log(`\n$ curl http://127.0.0.1:${web1.hostPort}/   (${Date.now() - t0} ms after the page-out)\n${again.trim()}`);
  dormant('vm', 'status', 'web1');
  dormant('vm', 'sharing');
  for (const vm of ['web1', 'web2']) dormant('vm', 'stop', vm, '--timeout', '2');
} finally {
  await stopDaemon();
}
console.log('\nweb1 and web2 booted from the same guest@base: their disks are branches of it (only what they');
console.log('wrote is theirs), and their RAM lives in memory volumes web1.mem and web2.mem in the store:');
console.log('paged out, web1 kept running on the few pages it touches, faulted back from the store.');
