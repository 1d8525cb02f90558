#!/usr/bin/env node
/**
 * Fingerprint sketches (`npm run bench:placement`, after the planner part;
 * alone: `node bench/placement-sketch.mjs`): the size of a VM's sketch and
 * its error against the exact sets, on real store data. A temporary store
 * (through the store API) gets the memory volumes of VMs in content
 * families shaped like the ballast guests' memory: pages alike in every
 * VM, a part shared within a family (each VM of it holds 70-100 % of the
 * part), the rest the VM's own, some pages zero. The exact fingerprint of
 * each volume is its set of distinct chunk hashes (the same
 * chunkHashSet the hosts sketch from); each k is then measured:
 *   - bytes: of a sketch (and in base64, as a live record carries it);
 *     the size does not depend on the VM's, so bytes per GiB of memory is
 *     given for VMs of 1 GiB and of the size measured;
 *   - pairs: |estimated - exact common pages| as a share of the smaller
 *     VM's pages, over every pair (mean, 95th percentile, worst);
 *   - groups: the estimated pages saved by keeping a group together
 *     (sum - union) against the exact, as a share of the group's pages,
 *     for each family and for all VMs together;
 *   - the time to make a VM's sketch from the store (per GiB of memory).
 *
 *   node bench/placement-sketch.mjs [--quick] [--seed N] [--guests DIR]
 *
 * `--guests STORE` measures the memory volumes (`*.mem`) of a store of
 * real guests instead (stopped daemon; see docs/benchmarks.md). Build
 * first (npm run setup).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { BLOCK_SIZE, Store } from '../dist/blockstore/index.js';
import { FingerprintSketch, chunkHashSet, estimateGroup, mulberry32, volumeSketch } from '../dist/cluster/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const arg = (name) => { const i = args.indexOf(name); return i >= 0 ? args[i + 1] : undefined; };
const SEED = Number(arg('--seed') ?? 1);
const GUESTS = arg('--guests');
const KS = [64, 128, 256, 512];
const FAMILIES = quick ? 2 : 4;
const PER_FAMILY = 4;
const VM_MIB = quick ? 16 : 64;
const PAGES = (VM_MIB * 2 ** 20) / BLOCK_SIZE;

const pct = (x) => `${(100 * x).toFixed(2)} %`;
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const quantile = (xs, q) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(q * s.length))]; };

/** A page whose content is named by `tag` (random bytes from a PRNG seeded by it). */
function page(tag) {
  let h = 2166136261;
  for (let i = 0; i < tag.length; i++) h = Math.imul(h ^ tag.charCodeAt(i), 16777619);
  const rand = mulberry32(h >>> 0);
  const b = Buffer.alloc(BLOCK_SIZE);
  for (let i = 0; i < BLOCK_SIZE; i += 4) b.writeUInt32LE(Math.floor(rand() * 2 ** 32), i);
  return b;
}

/** Writes the synthetic families into `store`; returns the volumes by family. */
async function writeFamilies(store) {
  const rand = mulberry32(SEED * 4099);
  const families = [];
  for (let f = 0; f < FAMILIES; f++) {
    const shared = 0.2 + rand() * 0.5;
    const vms = [];
    for (let v = 0; v < PER_FAMILY; v++) {
      const name = `f${f}v${v}.mem`;
      const hold = 0.7 + rand() * 0.3;
      await store.createVolume(name, PAGES * BLOCK_SIZE, 'memory');
      const h = await store.openVolume(name);
      const STEP = 256;
      for (let first = 0; first < PAGES; first += STEP) {
        const pages = [];
        for (let p = first; p < first + STEP; p++) {
          const x = p / PAGES;
          if (x < 0.1) pages.push(page(`all-${p}`));
          else if (x < 0.1 + shared) pages.push(rand() < hold ? page(`f${f}-${p}`) : page(`${name}-${p}`));
          else if (x < 0.95) pages.push(page(`${name}-${p}`));
          else pages.push(Buffer.alloc(BLOCK_SIZE));
        }
        await h.write(first * BLOCK_SIZE, Buffer.concat(pages));
      }
      await h.flush();
      await h.close();
      vms.push(name);
    }
    families.push(vms);
  }
  return families;
}

/** The exact fingerprints (hex chunk hashes) and the raw hash lists of `volumes`. */
async function fingerprints(store, volumes) {
  const out = new Map();
  for (const v of volumes) {
    const hashes = await chunkHashSet(store, v);
    const set = new Set();
    for (let i = 0; i < hashes.length; i += 16) set.add(hashes.toString('hex', i, i + 16));
    out.set(v, { hashes, set });
  }
  return out;
}

function measure(store, groups, fp, sizes) {
  const volumes = groups.flat();
  const rows = [];
  for (const k of KS) {
    const sk = new Map(volumes.map((v) => [v, FingerprintSketch.fromHashes(fp.get(v).hashes, k)]));
    const bytes = Math.max(...[...sk.values()].map((s) => s.encode().length));
    const b64 = Math.max(...[...sk.values()].map((s) => s.toBase64().length));
    const pairs = [];
    for (let i = 0; i < volumes.length; i++) {
      for (let j = i + 1; j < volumes.length; j++) {
        const a = fp.get(volumes[i]).set;
        const b = fp.get(volumes[j]).set;
        let exact = 0;
        for (const x of a) if (b.has(x)) exact++;
        const est = estimateGroup([sk.get(volumes[i]), sk.get(volumes[j])]).saved;
        pairs.push(Math.abs(est - exact) / Math.min(sizes.get(volumes[i]), sizes.get(volumes[j])));
      }
    }
    const groupErr = (g) => {
      const union = new Set(g.flatMap((v) => [...fp.get(v).set])).size;
      const total = g.reduce((n, v) => n + fp.get(v).set.size, 0);
      const est = estimateGroup(g.map((v) => sk.get(v)));
      return Math.abs(est.saved - (total - union)) / g.reduce((n, v) => n + sizes.get(v), 0);
    };
    const fam = groups.length > 1 ? groups.map(groupErr) : [];
    rows.push({ k, bytes, b64, pairs, fam, all: groupErr(volumes) });
  }
  return rows;
}

function printTable(rows, vmBytes, what) {
  const perGiB = (b) => Math.round(b * 2 ** 30 / vmBytes).toLocaleString('en-US');
  console.log(`### Sketch size and error: ${what}\n`);
  console.log(`| k | bytes (base64) | bytes per GiB, 1 GiB VMs | per GiB, ${Math.round(vmBytes / 2 ** 20)} MiB VMs | pairs: mean error | p95 | worst | families: saving error (worst) | all VMs: saving error |`);
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) {
    console.log(`| ${r.k} | ${r.bytes} (${r.b64}) | ${r.bytes} | ${perGiB(r.bytes)} | ${pct(mean(r.pairs))} | ${pct(quantile(r.pairs, 0.95))} | ${pct(Math.max(...r.pairs))} | `
      + `${r.fam.length ? pct(Math.max(...r.fam)) : '-'} | ${pct(r.all)} |`);
  }
  console.log('\nErrors: of pairs, as a share of the smaller VM\'s pages; of groups, of the group\'s pages.\n');
}

async function timeSketch(store, volume, bytes) {
  const t0 = process.hrtime.bigint();
  await volumeSketch(store, volume);
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  return ms * (2 ** 30 / bytes);
}

if (GUESTS) {
  const store = await Store.open(GUESTS);
  try {
    const volumes = store.entries().filter((e) => e.name.endsWith('.mem') && !e.name.includes('@')).map((e) => e.name).sort();
    const fp = await fingerprints(store, volumes);
    const sizes = new Map(volumes.map((v) => [v, store.describe(v).size / BLOCK_SIZE]));
    for (const v of volumes) console.log(`${v}: ${fp.get(v).set.size} distinct non-zero pages of ${sizes.get(v)}`);
    const mib = (pages) => (pages * BLOCK_SIZE / 2 ** 20).toFixed(1);
    for (let i = 0; i < volumes.length; i++) {
      for (let j = i + 1; j < volumes.length; j++) {
        let exact = 0;
        for (const x of fp.get(volumes[i]).set) if (fp.get(volumes[j]).set.has(x)) exact++;
        const est = estimateGroup([volumes[i], volumes[j]].map((v) => FingerprintSketch.fromHashes(fp.get(v).hashes))).saved;
        console.log(`${volumes[i]} + ${volumes[j]}: ${mib(exact)} MiB in common, estimated at k = 256: ${mib(est)} MiB`);
      }
    }
    console.log('');
    printTable(measure(store, [volumes], fp, sizes), store.describe(volumes[0]).size, `${volumes.length} real guests' memory (${GUESTS})`);
    console.log(`time to sketch a VM from the store: ${(await timeSketch(store, volumes[0], store.describe(volumes[0]).size)).toFixed(0)} ms per GiB of memory\n`);
  } finally {
    await store.close();
  }
} else {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-bench-sketch-'));
  let store;
  try {
    store = await Store.init(path.join(dir, 'store'));
    const groups = await writeFamilies(store);
    const volumes = groups.flat();
    const fp = await fingerprints(store, volumes);
    const sizes = new Map(volumes.map((v) => [v, PAGES]));
    printTable(measure(store, groups, fp, sizes), PAGES * BLOCK_SIZE,
      `${volumes.length} memory volumes of ${VM_MIB} MiB in ${FAMILIES} families of ${PER_FAMILY} (store API, --seed ${SEED})`);
    console.log(`time to sketch a VM from the store: ${(await timeSketch(store, volumes[0], PAGES * BLOCK_SIZE)).toFixed(0)} ms per GiB of memory\n`);
  } finally {
    await store?.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
