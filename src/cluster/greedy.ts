/**
 * The seed's greedy placement, the planner's baseline and first start:
 *
 *   take the host with the most free memory (all are empty, so the largest
 *   capacity; ties in input order); put there the two unplaced VMs that
 *   share most among the pairs that fit together; then keep adding the
 *   unplaced VM with the highest expected sharing with those already there,
 *   while one fits; next host; repeat.
 *
 * Expected sharing of a candidate c with the VMs already on the host, as
 * the seed defines it: sort them by share(vm, c), largest first, and sum
 * share(i-th, c) / i for i = 1, 2, ... . "Fits" is need <= capacity with
 * the planner's estimator (estimator.ts). Ties go to the larger VM, then to
 * input order. When no pair fits on a host, the largest VM that fits starts
 * it. VMs left over when every host has had its turn (the greedy packs
 * hosts one at a time, so the last ones may be full) go, largest first,
 * where they fit with the most room left; if one fits nowhere the greedy
 * fails and returns null.
 *
 * `packedPlacement` is the fallback when neither the greedy nor the current
 * placement fits: bin packing, VMs largest first (then in random orders),
 * each onto the host where it saves most and, on a tie, leaves the least
 * room.
 */
import { EPS, fits, needMB, savedMB } from './estimator.js';
import type { Instance } from './plan-input.js';
import { mulberry32 } from './synthetic.js';

/** The seed's expected sharing of `candidate` with `members`. */
export function expectedSharingMB(inst: Instance, members: readonly number[], candidate: number): number {
  const n = inst.size.length;
  const shares = members.map((m) => inst.share[m * n + candidate]).sort((a, b) => b - a);
  let sum = 0;
  shares.forEach((s, i) => { sum += s / (i + 1); });
  return sum;
}

/** The greedy's placement (host index per VM), or null when some VM fits nowhere. */
export function greedyPlacement(inst: Instance): number[] | null {
  const n = inst.size.length;
  const assign = new Array<number>(n).fill(-1);
  const unplaced = new Set<number>(Array.from({ length: n }, (_, v) => v));
  const order = inst.capacity.map((c, h) => ({ c, h })).sort((a, b) => b.c - a.c || a.h - b.h).map((x) => x.h);
  const members: number[][] = inst.capacity.map(() => []);

  for (const h of order) {
    if (unplaced.size === 0) break;
    const cap = inst.capacity[h];
    const here = members[h];
    // the pair that shares most among those that fit together
    let pair: [number, number] | null = null;
    let pairShare = -1;
    const list = [...unplaced];
    for (let i = 0; i < list.length; i++) {
      for (let j = i + 1; j < list.length; j++) {
        const a = list[i];
        const b = list[j];
        const s = inst.share[a * n + b];
        if (s < pairShare - EPS) continue;
        if (!fits(needMB(inst, [a, b]), cap)) continue;
        if (pair && s <= pairShare + EPS && inst.size[a] + inst.size[b] <= inst.size[pair[0]] + inst.size[pair[1]]) continue;
        pair = [a, b];
        pairShare = s;
      }
    }
    if (pair) {
      here.push(pair[0], pair[1]);
    } else {
      const single = list.filter((v) => fits(inst.size[v], cap)).sort((a, b) => inst.size[b] - inst.size[a] || a - b)[0];
      if (single === undefined) continue;
      here.push(single);
    }
    for (const v of here) unplaced.delete(v);
    // then the VM with the highest expected sharing, while one fits
    for (;;) {
      let pick = -1;
      let pickScore = -1;
      for (const c of unplaced) {
        const score = expectedSharingMB(inst, here, c);
        if (score < pickScore - EPS) continue;
        if (pick >= 0 && score <= pickScore + EPS && inst.size[c] <= inst.size[pick]) continue;
        if (!fits(needMB(inst, here, c), cap)) continue;
        pick = c;
        pickScore = score;
      }
      if (pick < 0) break;
      here.push(pick);
      unplaced.delete(pick);
    }
  }

  // leftovers: largest first, where they fit with the most room left
  for (const v of [...unplaced].sort((a, b) => inst.size[b] - inst.size[a] || a - b)) {
    let where = -1;
    let room = -Infinity;
    for (let h = 0; h < members.length; h++) {
      const left = inst.capacity[h] - needMB(inst, members[h], v);
      if (left >= -EPS && left > room) { where = h; room = left; }
    }
    if (where < 0) return null;
    members[where].push(v);
  }
  members.forEach((g, h) => { for (const v of g) assign[v] = h; });
  return assign;
}

/** A placement within capacities by best-fit packing, or null after `tries` orders. */
export function packedPlacement(inst: Instance, tries = 50, seed = 1): number[] | null {
  const n = inst.size.length;
  const rand = mulberry32(seed);
  const order = Array.from({ length: n }, (_, v) => v).sort((a, b) => inst.size[b] - inst.size[a] || a - b);
  for (let t = 0; t < tries; t++) {
    if (t > 0) {
      for (let i = n - 1; i > 0; i--) {
        const j = Math.floor(rand() * (i + 1));
        [order[i], order[j]] = [order[j], order[i]];
      }
    }
    const members: number[][] = inst.capacity.map(() => []);
    const assign = new Array<number>(n).fill(-1);
    let placed = true;
    for (const v of order) {
      let where = -1;
      let gain = -Infinity;
      let room = Infinity;
      for (let h = 0; h < members.length; h++) {
        const left = inst.capacity[h] - needMB(inst, members[h], v);
        if (left < -EPS) continue;
        const g = savedMB(inst, members[h], v) - savedMB(inst, members[h]);
        if (g > gain + EPS || (g >= gain - EPS && left < room)) { where = h; gain = g; room = left; }
      }
      if (where < 0) { placed = false; break; }
      members[where].push(v);
      assign[v] = where;
    }
    if (placed) return assign;
  }
  return null;
}
