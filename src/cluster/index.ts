/**
 * The cluster: for now, the placement planner from a file (`dormant plan
 * --input FILE`): which VMs to colocate so that the pages they have in
 * common are kept once per host, and the migrations that get there.
 * Cluster state on etcd and fingerprint sketches are still to come.
 */
export {
  checkPlanInput, parsePlanInput, readPlanInput, toInstance,
  type HostSpec, type Instance, type PlanInput, type VmSpec,
} from './plan-input.js';
export { describePlan, placeVms, plan, type HostPlan, type PlanOptions, type PlanResult } from './planner.js';
export { feasible, needMB, savedMB, totalSavedMB } from './estimator.js';
export { expectedSharingMB, greedyPlacement } from './greedy.js';
export { localSearch } from './local-search.js';
export { hungarian, orderMigrations, relabel } from './migrations.js';
export { BRUTE_FORCE_LIMIT, optimalPlacement } from './brute-force.js';
export { mulberry32, syntheticInput, type SyntheticOptions } from './synthetic.js';
