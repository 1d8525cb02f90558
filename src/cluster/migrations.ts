/**
 * From a placement to the migrations that carry it out.
 *
 * `relabel`: the local search decides which VMs go together; which host
 * each group goes to is then chosen to keep as many VMs where they are as
 * possible: an assignment problem (groups x hosts, a group may go only to
 * a host it fits), solved exactly by the Hungarian method in O(hosts^3).
 * It never changes the MB saved, only the migrations.
 *
 * `orderMigrations`: an order in which the moves, done one at a time,
 * never make a host need more than its capacity. Repeatedly, the first
 * pending move (in VM order) that fits now is done: its destination fits
 * the VM, and its source does not need more than before or than its
 * capacity (with estimated sharing a host could, in principle, need more
 * without a VM). When no pending move fits, the VMs wait on each other in
 * a cycle (two full hosts trading VMs): one of them goes first to a third
 * host with room, chosen so that the move into the host it left then fits,
 * and on to its destination later, so that VM appears twice in the list.
 * When no such host exists either, the remaining moves are listed as they
 * are and `safe` is false: carried out in that order, one would overfill a
 * host for a while.
 */
import { EPS, fits, groups, migrationCount, needMB } from './estimator.js';
import type { Instance } from './plan-input.js';

/**
 * A host for each group (`assign` relabelled) that keeps the most VMs
 * where they are now. `assign` may put a group on a host it does not fit
 * (the local search's groups); the result never does, when the groups can
 * fit distinct hosts at all.
 */
export function relabel(inst: Instance, assign: readonly number[]): number[] {
  const g = groups(inst, assign);
  const BIG = 1e9;
  const cost = g.map((members) => {
    const need = needMB(inst, members);
    return inst.capacity.map((cap, h) => {
      if (!fits(need, cap)) return BIG;
      let stays = 0;
      for (const v of members) if (inst.initial[v] === h) stays++;
      return -stays;
    });
  });
  const hostOf = hungarian(cost);
  const relabelled = assign.map((h) => hostOf[h]);
  if (g.some((_, i) => cost[i][hostOf[i]] >= BIG)) return [...assign]; // cannot happen for a feasible grouping
  if (!g.every((members, h) => fits(needMB(inst, members), inst.capacity[h]))) return relabelled;
  return migrationCount(inst, relabelled) < migrationCount(inst, assign) ? relabelled : [...assign];
}

/**
 * Minimum-cost assignment of rows to columns of a square matrix (the
 * Hungarian method with potentials): returns the column of each row.
 */
export function hungarian(cost: number[][]): number[] {
  const n = cost.length;
  const u = new Array<number>(n + 1).fill(0);
  const v = new Array<number>(n + 1).fill(0);
  const rowOfCol = new Array<number>(n + 1).fill(0); // 1-based row matched to column j; column 0 is the free row
  const way = new Array<number>(n + 1).fill(0);
  for (let i = 1; i <= n; i++) {
    rowOfCol[0] = i;
    let j0 = 0;
    const minv = new Array<number>(n + 1).fill(Infinity);
    const used = new Array<boolean>(n + 1).fill(false);
    do {
      used[j0] = true;
      const i0 = rowOfCol[j0];
      let delta = Infinity;
      let j1 = 0;
      for (let j = 1; j <= n; j++) {
        if (used[j]) continue;
        const cur = cost[i0 - 1][j - 1] - u[i0] - v[j];
        if (cur < minv[j]) { minv[j] = cur; way[j] = j0; }
        if (minv[j] < delta) { delta = minv[j]; j1 = j; }
      }
      for (let j = 0; j <= n; j++) {
        if (used[j]) { u[rowOfCol[j]] += delta; v[j] -= delta; } else minv[j] -= delta;
      }
      j0 = j1;
    } while (rowOfCol[j0] !== 0);
    do {
      const j1 = way[j0];
      rowOfCol[j0] = rowOfCol[j1];
      j0 = j1;
    } while (j0 !== 0);
  }
  const colOfRow = new Array<number>(n).fill(-1);
  for (let j = 1; j <= n; j++) if (rowOfCol[j] > 0) colOfRow[rowOfCol[j] - 1] = j - 1;
  return colOfRow;
}

/** One migration, by index. */
export interface Step { vm: number; from: number; to: number }

/** Migrations from `inst.initial` to `target`, in an order that never overfills a host when `safe`. */
export function orderMigrations(inst: Instance, target: readonly number[]): { steps: Step[]; safe: boolean } {
  const cur = [...inst.initial];
  const members = groups(inst, cur);
  const pending = target.map((_, v) => v).filter((v) => cur[v] !== target[v]);
  const steps: Step[] = [];

  const canMove = (v: number, to: number): boolean => {
    const from = cur[v];
    if (!fits(needMB(inst, members[to], v), inst.capacity[to])) return false;
    const after = needMB(inst, members[from], -1, v);
    return after <= Math.max(inst.capacity[from], needMB(inst, members[from])) + EPS;
  };
  const move = (v: number, to: number): void => {
    const from = cur[v];
    members[from].splice(members[from].indexOf(v), 1);
    members[to].push(v);
    cur[v] = to;
    steps.push({ vm: v, from, to });
  };

  let hops = 0;
  while (pending.length > 0) {
    const i = pending.findIndex((v) => canMove(v, target[v]));
    if (i >= 0) {
      const [v] = pending.splice(i, 1);
      move(v, target[v]);
      continue;
    }
    if (hops < target.length && hop()) { hops++; continue; }
    for (const v of pending) move(v, target[v]);
    return { steps, safe: false };
  }
  return { steps, safe: true };

  /** Breaks a cycle through a third host; true if it found one. */
  function hop(): boolean {
    for (const v of pending) {
      const from = cur[v];
      for (let c = 0; c < inst.capacity.length; c++) {
        if (c === from || c === target[v] || !canMove(v, c)) continue;
        move(v, c);
        if (pending.some((u) => u !== v && target[u] === from && canMove(u, from))) return true;
        steps.pop(); // undo: it would not unblock the host it left
        members[c].splice(members[c].indexOf(v), 1);
        members[from].push(v);
        cur[v] = from;
      }
    }
    return false;
  }
}
