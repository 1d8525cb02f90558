#!/usr/bin/env node
/**
 * Placement benchmark (`npm run bench:placement`): the planner of
 * `dormant plan` (src/cluster) against
 *   1. the brute-force optimum on small random instances (6-9 VMs, 2-3
 *      hosts): the share of the optimum's colocated sharing it reaches;
 *   2. the seed's plain greedy on large ones (100-400 VMs, 10-40 hosts):
 *      synthetic sharing in families of VMs (a family shares 15-60 % of
 *      the smaller VM, different families 0-3 %), the current placement
 *      random, as VMs land where there was room;
 * and the time each takes. Colocated sharing = the MB the estimator says a
 * placement saves (sum over hosts of a maximum spanning tree of sharing);
 * "saved" = that minus the current placement's, i.e. `savedMB` of
 * `dormant plan`. The planner runs with its defaults (60 kick rounds, a
 * 5 s limit), as the CLI does. Prints markdown tables on stdout.
 *
 *   node bench/placement.mjs [--quick] [--seed N]
 *
 * Build first (npm run setup). Everything is drawn from seeded PRNGs: the
 * same --seed gives the same instances (timings and, where the 5 s limit
 * cuts the search short, the planner's results may differ).
 */
import os from 'node:os';
import { execFileSync } from 'node:child_process';
import {
  greedyPlacement, mulberry32, optimalPlacement, placeVms, syntheticInput, toInstance, totalSavedMB,
} from '../dist/cluster/index.js';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const seedArg = args.indexOf('--seed');
const SEED = seedArg >= 0 ? Number(args[seedArg + 1]) : 1;
const SMALL_INSTANCES = quick ? 50 : 300;
const LARGE = quick
  ? [{ vms: 100, hosts: 10, families: 10, seeds: 1 }]
  : [
    { vms: 100, hosts: 10, families: 10, seeds: 3 },
    { vms: 200, hosts: 20, families: 15, seeds: 3 },
    { vms: 400, hosts: 40, families: 25, seeds: 2 },
  ];

const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const now = () => process.hrtime.bigint();
const median = (xs) => { const s = [...xs].sort((a, b) => a - b); return s[Math.floor(s.length / 2)]; };
const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;
const pct = (x) => `${(100 * x).toFixed(1)} %`;
const fmt = (x) => Math.round(x).toLocaleString('en-US');

function machine() {
  let model = os.cpus()[0]?.model ?? 'unknown CPU';
  try {
    const m = /Model name:\s*(.+)/.exec(execFileSync('lscpu', { encoding: 'utf8' }));
    if (m) model = m[1].trim();
  } catch { /* lscpu missing: os.cpus() it is */ }
  return `${model}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB, Node.js ${process.versions.node}, `
    + `${new Date().toISOString().slice(0, 10)}`;
}

/** Part 1: planner and greedy against the optimum on small instances. */
function small() {
  const rand = mulberry32(SEED * 7919);
  const rows = { planner: [], greedy: [] };
  const times = { planner: [], greedy: [], optimum: [] };
  let below95 = 0;
  for (let seed = SEED * 100000, done = 0; done < SMALL_INSTANCES; seed++) {
    const input = syntheticInput({
      vms: 6 + Math.floor(rand() * 4), hosts: 2 + Math.floor(rand() * 2), families: 2 + Math.floor(rand() * 2),
      seed, slack: 1.05 + rand() * 0.45,
    });
    if (!input) continue;
    done++;
    const inst = toInstance(input);
    let t = now();
    const best = optimalPlacement(inst);
    times.optimum.push(ms(t));
    t = now();
    const ours = placeVms(inst);
    times.planner.push(ms(t));
    t = now();
    const g = greedyPlacement(inst);
    times.greedy.push(ms(t));
    const opt = best.score.saved;
    const ratio = (a) => (opt === 0 ? 1 : (a ? totalSavedMB(inst, a) : 0) / opt);
    rows.planner.push(ratio(ours));
    rows.greedy.push(ratio(g));
    if (ratio(ours) < 0.95) below95++;
  }
  console.log(`### Against the optimum: ${SMALL_INSTANCES} random instances of 6-9 VMs on 2-3 hosts\n`);
  console.log('| method | mean of optimum | worst | instances at the optimum | median time |');
  console.log('|---|---:|---:|---:|---:|');
  for (const k of ['planner', 'greedy']) {
    const at = rows[k].filter((r) => r >= 1 - 1e-9).length;
    console.log(`| ${k} | ${pct(mean(rows[k]))} | ${pct(Math.min(...rows[k]))} | ${at} / ${rows[k].length} | ${median(times[k]).toFixed(2)} ms |`);
  }
  console.log(`| brute force | 100 % | 100 % | all | ${median(times.optimum).toFixed(2)} ms |`);
  console.log(`\nplanner below 95 % of the optimum: ${below95} instance(s)\n`);
}

/** Part 2: planner against the greedy on large instances. */
function large() {
  console.log('### Against the greedy: VMs of 0.5-2 GiB in families, capacity 1.2 x the VMs\' total\n');
  console.log('| VMs / hosts / families | seed | sharing now (MB) | greedy: sharing, saved | planner: sharing, saved | planner / greedy (sharing) | planner / greedy (saved) | migrations greedy / planner | greedy time | planner time |');
  console.log('|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  const ratios = [];
  for (const shape of LARGE) {
    for (let s = 0; s < shape.seeds; s++) {
      const seed = SEED * 1000 + s;
      const input = syntheticInput({ vms: shape.vms, hosts: shape.hosts, families: shape.families, seed, slack: 1.2 });
      if (!input) { console.error(`seed ${seed}: no initial placement, skipped`); continue; }
      const inst = toInstance(input);
      const before = totalSavedMB(inst, inst.initial);
      let t = now();
      const g = greedyPlacement(inst);
      const tg = ms(t);
      t = now();
      const ours = placeVms(inst);
      const tp = ms(t);
      const gs = g ? totalSavedMB(inst, g) : 0;
      const ps = totalSavedMB(inst, ours);
      const moved = (a) => a.filter((h, v) => h !== inst.initial[v]).length;
      ratios.push(ps / gs);
      console.log(`| ${shape.vms} / ${shape.hosts} / ${shape.families} | ${seed} | ${fmt(before)} | ${fmt(gs)}, ${fmt(gs - before)} | `
        + `${fmt(ps)}, ${fmt(ps - before)} | ${(ps / gs).toFixed(3)}x | ${((ps - before) / (gs - before)).toFixed(3)}x | `
        + `${g ? moved(g) : '-'} / ${moved(ours)} | ${tg.toFixed(0)} ms | ${(tp / 1000).toFixed(2)} s |`);
    }
  }
  console.log(`\nplanner / greedy colocated sharing: ${Math.min(...ratios).toFixed(3)}x to ${Math.max(...ratios).toFixed(3)}x\n`);
}

console.log(`## Placement benchmark\n\nMachine: ${machine()}${quick ? ' (--quick)' : ''}\n`);
small();
large();
