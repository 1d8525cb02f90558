/**
 * Improving a placement by local search: moves (one VM to another group)
 * and swaps (two VMs of two groups trade places), each kept only when the
 * groups still fit the hosts (below) and it makes the plan better.
 * Better means, in this order: more MB saved (estimator.ts), then
 * fewer VMs off their current host, so a move that saves nothing but
 * brings a VM home is taken too. Every step is a strict improvement of
 * that pair, so a descent ends; it also ends at the deadline.
 *
 * `iteratedSearch` escapes local optima: from the best plan so far it
 * kicks a few random VMs to random groups where they fit (a seeded PRNG, so
 * a run is repeatable unless the deadline cuts it short), descends again,
 * and keeps the result when it is better. Rounds and time are bounded.
 *
 * The search works on groups, not hosts: group g starts as the VMs of
 * host g, and a change is allowed when the groups, whatever host each then
 * goes to, can still be put on distinct hosts they fit. Fitting is a
 * threshold (need <= capacity), so that holds exactly when the i-th
 * largest need fits the i-th largest capacity for every i. The planner
 * then gives each group its host (migrations.ts: `relabel`), so a group
 * that outgrows its host but fits another is not a dead end. Migrations,
 * the second key, are counted as if group g stays on host g until then.
 *
 * State (class Search): `assign` (group per VM), `members` (VMs per
 * group), `saved` and `size` per group, kept in step with every applied
 * change; `capSorted`, the capacities largest first.
 */
import { EPS, groups, migrationCount, savedMB, sizeMB, totalSavedMB } from './estimator.js';
import type { Instance } from './plan-input.js';
import { mulberry32 } from './synthetic.js';

/** A plan's score: MB saved, then migrations (fewer is better). */
export interface Score { saved: number; migrations: number }

/** True when `a` is better than `b`. */
export function better(a: Score, b: Score): boolean {
  if (a.saved > b.saved + EPS) return true;
  return a.saved >= b.saved - EPS && a.migrations < b.migrations;
}

/** One placement under improvement. */
class Search {
  readonly assign: number[];
  readonly members: number[][];
  readonly saved: number[];
  readonly size: number[];
  private readonly capSorted: number[];
  private readonly needs: number[];
  /** rowSum[v * groups + g]: sum of share(v, w) over the VMs w of group g (an upper bound's part). */
  private readonly rowSum: Float64Array;
  /** without[v]: saved of v's group without v, valid while stamp[v] = groupStamp[v's group]. */
  private readonly without: Float64Array;
  private readonly stamp: Float64Array;
  private readonly groupStamp: number[];
  private clock = 1;
  migrations = 0;

  constructor(readonly inst: Instance, start: readonly number[]) {
    this.assign = [...start];
    this.members = groups(inst, start);
    this.saved = this.members.map((g) => savedMB(inst, g));
    this.size = this.members.map((g) => sizeMB(inst, g));
    this.capSorted = [...inst.capacity].sort((a, b) => b - a);
    this.needs = new Array<number>(inst.capacity.length);
    start.forEach((h, v) => { if (h !== inst.initial[v]) this.migrations++; });
    const n = start.length;
    const hosts = inst.capacity.length;
    this.rowSum = new Float64Array(n * hosts);
    for (let v = 0; v < n; v++) {
      for (let w = 0; w < n; w++) this.rowSum[v * hosts + start[w]] += inst.share[v * n + w];
    }
    this.without = new Float64Array(n);
    this.stamp = new Float64Array(n); // 0: never computed
    this.groupStamp = new Array<number>(hosts).fill(1);
  }

  /** Saved of v's group without v (cached until the group changes). */
  private savedWithout(v: number): number {
    const g = this.assign[v];
    if (this.stamp[v] !== this.groupStamp[g]) {
      this.without[v] = savedMB(this.inst, this.members[g], -1, v);
      this.stamp[v] = this.groupStamp[g];
    }
    return this.without[v];
  }

  /**
   * An upper bound of saved(group g without `out`, with `v`): adding a VM
   * to a spanning tree adds at most the sum of its edges to the tree.
   */
  private bound(g: number, withoutSaved: number, v: number, out: number): number {
    const n = this.assign.length;
    return withoutSaved + this.rowSum[v * this.members.length + g] - (out >= 0 ? this.inst.share[v * n + out] : 0);
  }

  score(): Score {
    return { saved: this.saved.reduce((a, b) => a + b, 0), migrations: this.migrations };
  }

  /** True when groups `a` and `b`, needing `needA` and `needB`, and the others as they are, fit distinct hosts. */
  private ok(a: number, needA: number, b: number, needB: number): boolean {
    const { needs } = this;
    for (let g = 0; g < needs.length; g++) needs[g] = this.size[g] - this.saved[g];
    needs[a] = needA;
    needs[b] = needB;
    if (needA > this.capSorted[0] + EPS || needB > this.capSorted[0] + EPS) return false;
    needs.sort((x, y) => y - x);
    for (let i = 0; i < needs.length; i++) if (needs[i] > this.capSorted[i] + EPS) return false;
    return true;
  }

  /**
   * Whether a change that gains only migrations (`d`: no MB saved) really
   * gains them. Migrations are counted as if group g stayed on host g,
   * while `ok` lets groups trade hosts (they are relabelled onto hosts
   * afterwards): a change that fills group g beyond host g's capacity is
   * relabelled onto another host and its migrations come back (both VMs of
   * an overfull host "moved home" together, then both moved away again).
   * So such a change must fit the hosts of its groups' own indices.
   */
  private keepsCount(d: Score, a: number, needA: number, b: number, needB: number): boolean {
    if (d.saved > EPS) return true;
    const cap = this.inst.capacity;
    return needA <= cap[a] + EPS && needB <= cap[b] + EPS;
  }

  /** Change in migrations when `v` goes from `from` to `to`. */
  private dMig(v: number, from: number, to: number): number {
    const home = this.inst.initial[v];
    return (to === home ? -1 : 0) + (from === home ? 1 : 0);
  }

  /** Puts `v` on `to` (and `u`, when given, on v's host), with the new saved figures. */
  private apply(v: number, to: number, savedFrom: number, savedTo: number, u = -1): void {
    const from = this.assign[v];
    this.migrations += this.dMig(v, from, to) + (u >= 0 ? this.dMig(u, to, from) : 0);
    const sv = this.inst.size[v];
    const su = u >= 0 ? this.inst.size[u] : 0;
    this.members[from].splice(this.members[from].indexOf(v), 1);
    this.members[to].push(v);
    this.assign[v] = to;
    if (u >= 0) {
      this.members[to].splice(this.members[to].indexOf(u), 1);
      this.members[from].push(u);
      this.assign[u] = from;
    }
    this.size[from] += su - sv;
    this.size[to] += sv - su;
    this.saved[from] = savedFrom;
    this.saved[to] = savedTo;
    this.groupStamp[from] = ++this.clock;
    this.groupStamp[to] = ++this.clock;
    const n = this.assign.length;
    const hosts = this.members.length;
    const { share } = this.inst;
    for (let w = 0; w < n; w++) {
      const dv = share[w * n + v];
      const du = u >= 0 ? share[w * n + u] : 0;
      this.rowSum[w * hosts + from] += du - dv;
      this.rowSum[w * hosts + to] += dv - du;
    }
  }

  /** The best move of `v`, applied if it improves the plan; true if it did. */
  private tryMoves(v: number): boolean {
    const { inst } = this;
    const from = this.assign[v];
    const savedFrom = this.savedWithout(v);
    const needFrom = this.size[from] - inst.size[v] - savedFrom;
    let bestTo = -1;
    let bestSaved = 0;
    let bestD: Score = { saved: 0, migrations: 0 };
    for (let to = 0; to < this.members.length; to++) {
      if (to === from) continue;
      const ub = savedFrom + this.bound(to, this.saved[to], v, -1) - this.saved[from] - this.saved[to];
      if (ub < bestD.saved - EPS) continue;
      const savedTo = savedMB(inst, this.members[to], v);
      const d = { saved: savedFrom + savedTo - this.saved[from] - this.saved[to], migrations: this.dMig(v, from, to) };
      const needTo = this.size[to] + inst.size[v] - savedTo;
      if (!better(d, bestD) || !this.ok(from, needFrom, to, needTo) || !this.keepsCount(d, from, needFrom, to, needTo)) continue;
      bestTo = to;
      bestSaved = savedTo;
      bestD = d;
    }
    if (bestTo < 0) return false;
    this.apply(v, bestTo, savedFrom, bestSaved);
    return true;
  }

  /** The best swap of `v` with a VM of another group, applied if it improves the plan. */
  private trySwaps(v: number): boolean {
    const { inst } = this;
    const a = this.assign[v];
    let best: { u: number; savedA: number; savedB: number } | null = null;
    let bestD: Score = { saved: 0, migrations: 0 };
    for (let u = 0; u < this.assign.length; u++) {
      const b = this.assign[u];
      if (b === a) continue;
      const ub = this.bound(a, this.savedWithout(v), u, v) + this.bound(b, this.savedWithout(u), v, u)
        - this.saved[a] - this.saved[b];
      if (ub < bestD.saved - EPS) continue;
      const savedA = savedMB(inst, this.members[a], u, v);
      const savedB = savedMB(inst, this.members[b], v, u);
      const d = {
        saved: savedA + savedB - this.saved[a] - this.saved[b],
        migrations: this.dMig(v, a, b) + this.dMig(u, b, a),
      };
      if (!better(d, bestD)) continue;
      const needA = this.size[a] - inst.size[v] + inst.size[u] - savedA;
      const needB = this.size[b] - inst.size[u] + inst.size[v] - savedB;
      if (!this.ok(a, needA, b, needB) || !this.keepsCount(d, a, needA, b, needB)) continue;
      best = { u, savedA, savedB };
      bestD = d;
    }
    if (!best) return false;
    this.apply(v, this.assign[best.u], best.savedA, best.savedB, best.u);
    return true;
  }

  /** Moves and swaps until none improves the plan or the deadline passes. */
  descend(deadline: number): void {
    for (let improved = true; improved && Date.now() < deadline;) {
      improved = false;
      for (let v = 0; v < this.assign.length; v++) {
        if (this.tryMoves(v)) improved = true;
      }
      if (improved) continue; // swaps cost more: only once moves are exhausted
      for (let v = 0; v < this.assign.length && Date.now() < deadline; v++) {
        if (this.trySwaps(v)) improved = true;
      }
    }
  }

  /** Moves `count` random VMs to random groups where they fit (whatever the score). */
  kick(count: number, rand: () => number): void {
    const { inst } = this;
    const n = this.assign.length;
    const hosts = this.members.length;
    for (let i = 0; i < count; i++) {
      const v = Math.floor(rand() * n);
      const from = this.assign[v];
      const to = (from + 1 + Math.floor(rand() * (hosts - 1))) % hosts;
      const savedFrom = savedMB(inst, this.members[from], -1, v);
      const savedTo = savedMB(inst, this.members[to], v);
      const needTo = this.size[to] + inst.size[v] - savedTo;
      if (!this.ok(from, this.size[from] - inst.size[v] - savedFrom, to, needTo)) continue;
      this.apply(v, to, savedFrom, savedTo);
    }
  }
}

/** A local optimum reached from `start` (a placement within capacities). */
export function localSearch(inst: Instance, start: readonly number[], deadline: number): { assign: number[]; score: Score } {
  const s = new Search(inst, start);
  s.descend(deadline);
  return { assign: s.assign, score: s.score() };
}

/** Bounds of `iteratedSearch`. */
export interface IteratedOptions {
  /** Kick-and-descend rounds at most. */
  rounds: number;
  /** Date.now() after which no new step starts. */
  deadline: number;
  /** Seed of the kicks. */
  seed: number;
}

/**
 * A descent from `start`, the groups relabelled onto hosts by `polish`, a
 * descent again, relabelled again: a placement within capacities when
 * `polish` gives one, and its score.
 */
function settle(
  inst: Instance, start: readonly number[], deadline: number, polish: (assign: number[]) => number[],
): { assign: number[]; score: Score } {
  const first = localSearch(inst, start, deadline);
  const assign = polish(localSearch(inst, polish(first.assign), deadline).assign);
  return { assign, score: scoreOf(inst, assign) };
}

/** The score of a placement. */
export function scoreOf(inst: Instance, assign: readonly number[]): Score {
  return { saved: totalSavedMB(inst, assign), migrations: migrationCount(inst, assign) };
}

/**
 * From `start` (a placement within capacities), rounds of kick + descent;
 * returns the best plan seen. `polish` gives each round's groups their
 * hosts before it is compared (the planner relabels them there).
 */
export function iteratedSearch(
  inst: Instance, start: readonly number[], o: IteratedOptions,
  polish: (assign: number[]) => number[] = (a) => a,
): { assign: number[]; score: Score } {
  let best = settle(inst, start, o.deadline, polish);
  if (inst.capacity.length < 2 || inst.size.length < 2) return best;
  const rand = mulberry32(o.seed);
  const maxKick = Math.max(3, Math.min(12, Math.ceil(inst.size.length / 4)));
  for (let r = 0; r < o.rounds && Date.now() < o.deadline; r++) {
    const s = new Search(inst, best.assign);
    s.kick(2 + Math.floor(rand() * (maxKick - 1)), rand);
    const round = settle(inst, s.assign, o.deadline, polish);
    if (better(round.score, best.score)) best = round;
  }
  return best;
}
