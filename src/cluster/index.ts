/**
 * The cluster: the placement planner (`dormant plan`, from a file or from
 * the live cluster): which VMs to colocate so that the pages they have in
 * common are kept once per host, and the migrations that get there;
 * cluster state on etcd (`serve --etcd`, `dormant hosts`): hosts under
 * leases, where each VM lives; and the sketches of the VMs' memory
 * fingerprints the hosts publish, from which the sharing of any group of
 * VMs is estimated.
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
export { EtcdClient, EtcdError, parseEndpoints, type KeyValue, type TxnCompare, type TxnOp, type WatchMessage } from './etcd-client.js';
export {
  ETCD_ROOT, HOSTS_PREFIX, KNOWN_PREFIX, VMS_PREFIX, checkHostName, claimVm, hostKey, knownKey, listHosts, moveVmRecord, releaseVm, vmHost, vmKey,
  type HostStatus, type KnownRecord, type LiveRecord, type VmEntry,
} from './cluster-keys.js';
export { DEFAULT_ETCD_TTL_S, Membership, hostMemory, type MembershipOptions } from './membership.js';
export { PrefixWatch, type ChangeFn } from './watch.js';
export {
  FingerprintSketch, SKETCH_K, SKETCH_VALUE_BITS, commonCount, estimateGroup, type GroupEstimate,
} from './sketch.js';
export { PLACED_STATES, REFRESH_MS, VmSketches, chunkHashSet, volumeSketch, type SketchedVm } from './fingerprint.js';
export { liveInput, readLiveInput, type LiveInput } from './live-input.js';
