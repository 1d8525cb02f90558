// npm run demo: the main job of dormant on a fresh demo store, step by step.
// Builds a small ext4 golden image, imports it, branches three VMs from it,
// writes into one, snapshots it, and shows that the branches share the
// golden data. Every CLI step is printed as the command a user would type.
import { execFileSync, spawnSync } from 'node:child_process';
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
