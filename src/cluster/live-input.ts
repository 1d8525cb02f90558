/**
 * The planner's input from the cluster as it runs (`dormant plan --etcd
 * URL`), instead of a file: the hosts that are up, with the capacity their
 * live records give (MemTotal); the VMs they publish that hold memory
 * (running or paused), with their guest RAM as size and the host whose
 * record lists them; and the MB each pair of VMs has in common, estimated
 * from the sketches of their memory fingerprints (sketch.ts). The result
 * is the same PlanInput a file gives, checked by the same checks.
 *
 * A VM listed by a host that its location record does not name (a
 * migration between the two records' updates) is left out there; one
 * listed twice with no record is taken on the first host by name. A VM
 * with no sketch yet (it has just started) shares 0 MB; the notes say how
 * many, which VMs are still booting (left out), and anything else left out.
 */
import { BLOCK_SIZE, DormantError } from '../blockstore/index.js';
import { ETCD_ROOT, HOSTS_PREFIX, VMS_PREFIX, parseRecord, type LiveRecord } from './cluster-keys.js';
import type { EtcdClient } from './etcd-client.js';
import { PLACED_STATES } from './fingerprint.js';
import { checkPlanInput, type PlanInput } from './plan-input.js';
import { FingerprintSketch, commonCount } from './sketch.js';

const MiB = 1024 * 1024;
const round3 = (x: number): number => Math.round(x * 1000) / 1000;

/** A plan input built from live records, and what the user should know about how. */
export interface LiveInput { input: PlanInput; notes: string[] }

/** Builds the input from the hosts' live records and the VM location records (vm -> host). */
export function liveInput(records: readonly LiveRecord[], locations: ReadonlyMap<string, string>): LiveInput {
  const hosts = [...records].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  if (hosts.length === 0) throw new DormantError('EINVAL', 'no host is up in etcd: nothing to plan');
  const notes: string[] = [];
  const vms: PlanInput['vms'] = [];
  const sketches: (FingerprintSketch | undefined)[] = [];
  const taken = new Set<string>();
  const starting: string[] = [];
  for (const h of hosts) {
    for (const v of h.vms ?? []) {
      // A booting guest holds memory soon: say so, or a plan made during boot looks like one of an empty cluster.
      if (v.state === 'booting') starting.push(v.name);
      if (!PLACED_STATES.includes(v.state) || !(Number(v.memoryBytes) > 0)) continue;
      const at = locations.get(v.name);
      if ((at !== undefined && at !== h.name) || taken.has(v.name)) {
        const where = at !== undefined && at !== h.name ? `recorded on host ${at}` : `also on host ${vms.find((x) => x.name === v.name)?.host}`;
        notes.push(`VM ${v.name} listed by host ${h.name} is ${where}: left out there`);
        continue;
      }
      taken.add(v.name);
      vms.push({ name: v.name, sizeMB: round3(v.memoryBytes! / MiB), host: h.name });
      let s: FingerprintSketch | undefined;
      try {
        s = v.sketch ? FingerprintSketch.fromBase64(v.sketch) : undefined;
      } catch (err) {
        notes.push(`VM ${v.name}: ${(err as Error).message}; its sharing counts as 0`);
      }
      sketches.push(s);
    }
  }
  if (starting.length > 0) {
    notes.push(`${starting.length} VM${starting.length === 1 ? ' is' : 's are'} still booting (${starting.slice(0, 5).join(', ')}${starting.length > 5 ? ', ...' : ''}): left out until ${starting.length === 1 ? 'it runs' : 'they run'}`);
  }
  const without = vms.filter((_, i) => !sketches[i]).map((v) => v.name);
  if (without.length > 0) {
    notes.push(`${without.length} VM${without.length === 1 ? ' has' : 's have'} no fingerprint published yet (${without.slice(0, 5).join(', ')}${without.length > 5 ? ', ...' : ''}): sharing counted as 0`);
  }
  const sharingMB: PlanInput['sharingMB'] = [];
  for (let i = 0; i < vms.length; i++) {
    for (let j = i + 1; j < vms.length; j++) {
      const a = sketches[i];
      const b = sketches[j];
      if (!a || !b) continue;
      // Rounded down, and never above the smaller VM: the input's checks hold for any estimate.
      const mb = Math.min(Math.floor((commonCount(a, b) * BLOCK_SIZE / MiB) * 1000) / 1000, vms[i].sizeMB, vms[j].sizeMB);
      if (mb > 0) sharingMB.push([vms[i].name, vms[j].name, mb]);
    }
  }
  const input = checkPlanInput({
    hosts: hosts.map((h) => ({ name: h.name, capacityMB: round3(h.capacityBytes / MiB) })), vms, sharingMB,
  });
  return { input, notes };
}

/** Reads the live records and the VM location records in one range and builds the input. */
export async function readLiveInput(client: EtcdClient): Promise<LiveInput> {
  const { kvs } = await client.rangePrefix(ETCD_ROOT);
  const records: LiveRecord[] = [];
  const locations = new Map<string, string>();
  for (const kv of kvs) {
    if (kv.key.startsWith(HOSTS_PREFIX)) {
      const r = parseRecord<LiveRecord>(kv);
      if (r) records.push(r);
    } else if (kv.key.startsWith(VMS_PREFIX)) {
      locations.set(kv.key.slice(VMS_PREFIX.length), kv.value);
    }
  }
  return liveInput(records, locations);
}
