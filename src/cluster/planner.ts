/**
 * The placement planner: from hosts, VMs (with where they are now) and
 * pairwise sharing to a placement that keeps common pages once per host,
 * the memory before and after, and the migrations in a safe order.
 *
 *   method "search" (the default):
 *     1. starts: the seed's greedy (greedy.ts) and the current placement
 *        (when it is within capacities); when neither fits, best-fit
 *        packing in several orders, and for small inputs enumeration;
 *     2. from each, a descent of moves and swaps (local-search.ts), the
 *        groups relabelled onto hosts to keep the most VMs in place
 *        (migrations.ts), and a descent again;
 *     3. from the best, rounds of kick-and-descend, bounded by `rounds`
 *        and `timeLimitMs`; the best plan wins: most MB saved, then fewest
 *        migrations.
 *   method "greedy": the greedy's placement as it is (the baseline).
 *   method "exhaustive": the optimum by enumeration (small inputs only).
 *
 * Every figure comes from one estimator (estimator.ts), for the current
 * placement and the new one alike; no host of a plan needs more than its
 * capacity by it.
 */
import { DormantError } from '../blockstore/index.js';
import { optimalPlacement } from './brute-force.js';
import { feasible, fits, groups, needMB } from './estimator.js';
import { greedyPlacement, packedPlacement } from './greedy.js';
import { better, iteratedSearch } from './local-search.js';
import { orderMigrations, relabel } from './migrations.js';
import { toInstance, type Instance, type PlanInput } from './plan-input.js';

/** How to plan. */
export interface PlanOptions {
  method?: 'search' | 'greedy' | 'exhaustive';
  /** Kick-and-descend rounds after the first descents (default 60). */
  rounds?: number;
  /** Time after which the search stops where it is (default 5000 ms). */
  timeLimitMs?: number;
  /** Seed of the search's random kicks (default 1). */
  seed?: number;
}

/** One host in a plan: its memory needed now and after. */
export interface HostPlan {
  name: string;
  capacityMB: number;
  beforeMB: number;
  afterMB: number;
  vms: string[];
}

/** A plan, as `dormant plan --json` prints it. */
export interface PlanResult {
  /** VM name -> host name. */
  placement: Record<string, string>;
  /** Memory the current placement needs, all hosts together, each common page once per host. */
  beforeMB: number;
  /** The same for the new placement. */
  afterMB: number;
  /** beforeMB - afterMB. */
  savedMB: number;
  /** The moves, in an order that never overfills a host when `safeOrder`. */
  migrations: { vm: string; from: string; to: string }[];
  /** False when no such order was found (see migrations.ts). */
  safeOrder: boolean;
  /** Per host, in input order. */
  hosts: HostPlan[];
}

/** MB figures rounded to 3 decimals (inputs may be fractional). */
const round = (x: number): number => Math.round(x * 1000) / 1000;

/** The host of each VM in the plan `method` makes (indices). */
export function placeVms(inst: Instance, o: PlanOptions = {}): number[] {
  const method = o.method ?? 'search';
  if (inst.size.length === 0) return [];
  if (method === 'greedy') {
    const g = greedyPlacement(inst);
    if (!g) throw new DormantError('EINVAL', 'the greedy placement cannot fit every VM in the hosts\' capacities');
    return g;
  }
  if (method === 'exhaustive') {
    const best = optimalPlacement(inst);
    if (!best) throw noPlacement(inst);
    return best.assign;
  }
  const deadline = Date.now() + (o.timeLimitMs ?? 5000);
  const starts: number[][] = [];
  const g = greedyPlacement(inst);
  if (g) starts.push(g);
  if (feasible(inst, inst.initial)) starts.push(inst.initial);
  if (starts.length === 0) {
    for (const a of [packedPlacement(inst), smallOptimum(inst)]) if (a) starts.push(a);
    if (starts.length === 0) throw noPlacement(inst);
  }
  const polish = (a: number[]) => relabel(inst, a);
  const seed = o.seed ?? 1;
  let best = iteratedSearch(inst, starts[0], { rounds: 0, deadline, seed }, polish);
  for (const s of starts.slice(1)) {
    const r = iteratedSearch(inst, s, { rounds: 0, deadline, seed }, polish);
    if (better(r.score, best.score)) best = r;
  }
  return iteratedSearch(inst, best.assign, { rounds: o.rounds ?? 60, deadline, seed }, polish).assign;
}

/** For inputs small enough to enumerate (at most 100,000 placements), the optimum; else null. */
function smallOptimum(inst: Instance): number[] | null {
  if (inst.capacity.length ** inst.size.length > 100_000) return null;
  return optimalPlacement(inst)?.assign ?? null;
}

function noPlacement(inst: Instance): DormantError {
  const over = groups(inst, inst.initial)
    .map((m, h) => (fits(needMB(inst, m), inst.capacity[h]) ? '' : inst.hostNames[h]))
    .filter((h) => h !== '');
  return new DormantError('EINVAL', 'no placement found that fits every VM in the hosts\' capacities'
    + ` (the current one overfills ${over.join(', ')})`);
}

/** The plan for `assign` (host index per VM) against the current placement. */
export function describePlan(inst: Instance, assign: readonly number[]): PlanResult {
  const before = groups(inst, inst.initial);
  const after = groups(inst, assign);
  const hosts = inst.hostNames.map((name, h) => ({
    name,
    capacityMB: inst.capacity[h],
    beforeMB: round(needMB(inst, before[h])),
    afterMB: round(needMB(inst, after[h])),
    vms: after[h].map((v) => inst.vmNames[v]),
  }));
  const beforeMB = round(before.reduce((s, m) => s + needMB(inst, m), 0));
  const afterMB = round(after.reduce((s, m) => s + needMB(inst, m), 0));
  const { steps, safe } = orderMigrations(inst, assign);
  return {
    placement: Object.fromEntries(assign.map((h, v) => [inst.vmNames[v], inst.hostNames[h]])),
    beforeMB,
    afterMB,
    savedMB: round(beforeMB - afterMB),
    migrations: steps.map((s) => ({ vm: inst.vmNames[s.vm], from: inst.hostNames[s.from], to: inst.hostNames[s.to] })),
    safeOrder: safe,
    hosts,
  };
}

/** Plans `input` (already checked: plan-input.ts). */
export function plan(input: PlanInput, o: PlanOptions = {}): PlanResult {
  const inst = toInstance(input);
  return describePlan(inst, placeVms(inst, o));
}
