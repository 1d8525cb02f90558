/**
 * The optimum by exhaustion, for small instances only: every assignment of
 * VMs to hosts (hosts^VMs of them) is scored with the planner's estimator,
 * and the best one within capacities is kept (most MB saved, then fewest
 * migrations). Tests and the placement benchmark measure the planner
 * against it.
 */
import { DormantError } from '../blockstore/index.js';
import { fits, groups, migrationCount, needMB, savedMB } from './estimator.js';
import { better, type Score } from './local-search.js';
import type { Instance } from './plan-input.js';

/** Most assignments `optimalPlacement` will enumerate. */
export const BRUTE_FORCE_LIMIT = 5_000_000;

/** The best placement within capacities, or null when none fits. */
export function optimalPlacement(inst: Instance): { assign: number[]; score: Score } | null {
  const n = inst.size.length;
  const hosts = inst.capacity.length;
  if (hosts ** n > BRUTE_FORCE_LIMIT) {
    throw new DormantError('EINVAL', `${hosts}^${n} placements are too many to enumerate (at most ${BRUTE_FORCE_LIMIT})`);
  }
  const assign = new Array<number>(n).fill(0);
  let best: { assign: number[]; score: Score } | null = null;
  for (;;) {
    const g = groups(inst, assign);
    if (g.every((m, h) => fits(needMB(inst, m), inst.capacity[h]))) {
      const score = { saved: g.reduce((s, m) => s + savedMB(inst, m), 0), migrations: migrationCount(inst, assign) };
      if (!best || better(score, best.score)) best = { assign: [...assign], score };
    }
    let i = 0;
    while (i < n && assign[i] === hosts - 1) assign[i++] = 0;
    if (i === n) return best;
    assign[i]++;
  }
}
