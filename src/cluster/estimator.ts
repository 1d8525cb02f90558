/**
 * How much memory a group of VMs needs on one host, from pairwise sharing
 * only: the one estimator every part of the planner uses (greedy, local
 * search, brute force, migration order, before/after in the output).
 *
 *   saved(S) = weight of a maximum spanning tree of S's sharing graph
 *              (nodes: the VMs of S; edge u-v weighs share(u, v) MB)
 *   need(S)  = sum of the sizes of S - saved(S)
 *
 * Why a spanning tree: add S's VMs to the host one by one in the tree's
 * order (each after its parent p). A VM v then brings at most
 * size(v) - share(v, p) MB that are not there yet, whatever else the host
 * holds, so the real memory of S is at most need(S) when the pairwise
 * figures are exact (the Hunter-Worsley bound on a union). Any spanning
 * tree gives such a bound; the maximum one gives the tightest. So need(S)
 * never undercounts, and "need <= capacity" keeps a host within its
 * memory for real, not only by the estimate. For two VMs it is
 * size + size - share, exactly. It is a function of the set, not of an
 * order, so the same placement always gets the same figure.
 *
 * Adding up pairwise sharing instead would count a page common to three
 * VMs three times (it is saved twice), and the seed's "expected sharing"
 * (sum of share(i-th)/i) depends on the order VMs were added in; the
 * greedy still uses the latter to choose, as the seed describes.
 */
import type { Instance } from './plan-input.js';

/** Scratch buffers for `savedMB`, grown on demand (the planner is single-threaded). */
let best = new Float64Array(64);
let inTree = new Uint8Array(64);

/**
 * Weight of a maximum spanning tree over `members` (VM indices), by Prim's
 * algorithm on the dense sharing matrix: O(k^2) for k members. `extra`
 * (optional) is one more VM counted as a member; `skip` (optional) one
 * member left out, so moves and swaps are evaluated without copying.
 */
export function savedMB(inst: Instance, members: readonly number[], extra = -1, skip = -1): number {
  const n = inst.size.length;
  const k = members.length + 1;
  if (best.length < k) { best = new Float64Array(k * 2); inTree = new Uint8Array(k * 2); }
  const node = (i: number): number => (i === members.length ? extra : members[i]);
  let count = 0;
  for (let i = 0; i < k; i++) {
    const v = node(i);
    inTree[i] = v < 0 || v === skip ? 1 : 0; // 1 = not a node of this tree
    if (!inTree[i]) count++;
    best[i] = -1;
  }
  if (count < 2) return 0;
  let total = 0;
  let cur = -1;
  for (let i = 0; i < k; i++) if (!inTree[i]) { cur = i; break; }
  for (let added = 1; added < count; added++) {
    inTree[cur] = 1;
    const row = node(cur) * n;
    let next = -1;
    for (let i = 0; i < k; i++) {
      if (inTree[i]) continue;
      const w = inst.share[row + node(i)];
      if (w > best[i]) best[i] = w;
      if (next < 0 || best[i] > best[next]) next = i;
    }
    total += best[next];
    cur = next;
  }
  return total;
}

/** Sum of the sizes of `members` (with `extra`, without `skip`). */
export function sizeMB(inst: Instance, members: readonly number[], extra = -1, skip = -1): number {
  let s = extra >= 0 ? inst.size[extra] : 0;
  for (const v of members) if (v !== skip) s += inst.size[v];
  return s;
}

/** Memory the group needs on one host: sizes - saved. */
export function needMB(inst: Instance, members: readonly number[], extra = -1, skip = -1): number {
  return sizeMB(inst, members, extra, skip) - savedMB(inst, members, extra, skip);
}

/** Tolerance of every comparison of MB figures (sums of floats). */
export const EPS = 1e-6;

/** True when `need` fits in `capacity` (within EPS). */
export const fits = (need: number, capacity: number): boolean => need <= capacity + EPS;

/** VM indices on each host under `assign` (host index per VM). */
export function groups(inst: Instance, assign: readonly number[]): number[][] {
  const g: number[][] = inst.capacity.map(() => []);
  assign.forEach((h, v) => g[h].push(v));
  return g;
}

/** Total saved MB of a placement: the sum over hosts. */
export function totalSavedMB(inst: Instance, assign: readonly number[]): number {
  return groups(inst, assign).reduce((s, g) => s + savedMB(inst, g), 0);
}

/** True when every host's need fits its capacity. */
export function feasible(inst: Instance, assign: readonly number[]): boolean {
  return groups(inst, assign).every((g, h) => fits(needMB(inst, g), inst.capacity[h]));
}

/** Number of VMs not on their initial host. */
export function migrationCount(inst: Instance, assign: readonly number[]): number {
  let m = 0;
  assign.forEach((h, v) => { if (h !== inst.initial[v]) m++; });
  return m;
}
