/**
 * Improving a placement by local search: moves (one VM to another host)
 * and swaps (two VMs on two hosts trade places), each kept only when it
 * leaves every host it touches within its capacity and makes the plan
 * better. Better means, in this order: more MB saved (estimator.ts), then
 * fewer VMs off their current host, so a move that saves nothing but
 * brings a VM home is taken too. Every step is a strict improvement of
 * that pair, so a descent ends; it also ends at the deadline.
 *
 * `iteratedSearch` escapes local optima: from the best plan so far it
 * kicks a few random VMs to random hosts where they fit (a seeded PRNG, so
 * a run is repeatable unless the deadline cuts it short), descends again,
 * and keeps the result when it is better. Rounds and time are bounded.
 *
 * State (class Search): `assign` (host per VM), `members` (VMs per host),
 * `saved` and `size` per host, kept in step with every applied change.
 */
import { EPS, fits, groups, savedMB, sizeMB } from './estimator.js';
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
  migrations = 0;

  constructor(readonly inst: Instance, start: readonly number[]) {
    this.assign = [...start];
    this.members = groups(inst, start);
    this.saved = this.members.map((g) => savedMB(inst, g));
    this.size = this.members.map((g) => sizeMB(inst, g));
    start.forEach((h, v) => { if (h !== inst.initial[v]) this.migrations++; });
  }

  score(): Score {
    return { saved: this.saved.reduce((a, b) => a + b, 0), migrations: this.migrations };
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
  }

  /** The best move of `v`, applied if it improves the plan; true if it did. */
  private tryMoves(v: number): boolean {
    const { inst } = this;
    const from = this.assign[v];
    const savedFrom = savedMB(inst, this.members[from], -1, v);
    if (!fits(this.size[from] - inst.size[v] - savedFrom, inst.capacity[from])) return false;
    let bestTo = -1;
    let bestSaved = 0;
    let bestD: Score = { saved: 0, migrations: 0 };
    for (let to = 0; to < this.members.length; to++) {
      if (to === from) continue;
      const savedTo = savedMB(inst, this.members[to], v);
      if (!fits(this.size[to] + inst.size[v] - savedTo, inst.capacity[to])) continue;
      const d = { saved: savedFrom + savedTo - this.saved[from] - this.saved[to], migrations: this.dMig(v, from, to) };
      if (better(d, bestD)) { bestTo = to; bestSaved = savedTo; bestD = d; }
    }
    if (bestTo < 0) return false;
    this.apply(v, bestTo, savedFrom, bestSaved);
    return true;
  }

  /** The best swap of `v` with a VM on another host, applied if it improves the plan. */
  private trySwaps(v: number): boolean {
    const { inst } = this;
    const a = this.assign[v];
    let best: { u: number; savedA: number; savedB: number } | null = null;
    let bestD: Score = { saved: 0, migrations: 0 };
    for (let u = 0; u < this.assign.length; u++) {
      const b = this.assign[u];
      if (b === a) continue;
      const savedA = savedMB(inst, this.members[a], u, v);
      if (!fits(this.size[a] - inst.size[v] + inst.size[u] - savedA, inst.capacity[a])) continue;
      const savedB = savedMB(inst, this.members[b], v, u);
      if (!fits(this.size[b] - inst.size[u] + inst.size[v] - savedB, inst.capacity[b])) continue;
      const d = {
        saved: savedA + savedB - this.saved[a] - this.saved[b],
        migrations: this.dMig(v, a, b) + this.dMig(u, b, a),
      };
      if (better(d, bestD)) { best = { u, savedA, savedB }; bestD = d; }
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

  /** Moves `count` random VMs to random hosts where they fit (whatever the score). */
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
      if (!fits(this.size[to] + inst.size[v] - savedTo, inst.capacity[to])) continue;
      if (!fits(this.size[from] - inst.size[v] - savedFrom, inst.capacity[from])) continue;
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
 * From `start` (already a local optimum or not), rounds of kick + descent;
 * returns the best plan seen. `polish` is applied to each round's result
 * before it is compared (the planner relabels hosts there).
 */
export function iteratedSearch(
  inst: Instance, start: readonly number[], o: IteratedOptions,
  polish: (assign: number[]) => number[] = (a) => a,
): { assign: number[]; score: Score } {
  let best = localSearch(inst, start, o.deadline);
  best = localSearch(inst, polish(best.assign), o.deadline);
  if (inst.capacity.length < 2 || inst.size.length < 2) return best;
  const rand = mulberry32(o.seed);
  const kickSize = Math.max(2, Math.min(8, Math.round(inst.size.length / 10)));
  for (let r = 0; r < o.rounds && Date.now() < o.deadline; r++) {
    const s = new Search(inst, best.assign);
    s.kick(kickSize, rand);
    s.descend(o.deadline);
    const round = localSearch(inst, polish(s.assign), o.deadline);
    if (better(round.score, best.score)) best = round;
  }
  return best;
}
