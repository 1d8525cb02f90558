/**
 * The cluster's keys in etcd, what each holds, and the reads and
 * transactions on them that are not a host's own loop (membership.ts):
 *
 *   /dormant/hosts/<host>  JSON LiveRecord, under the host's lease: it is
 *                          there while the host lives (a host whose lease
 *                          expired or was revoked is down)
 *   /dormant/known/<host>  JSON KnownRecord, no lease: that the host was
 *                          ever registered, its API URL and capacity, so a
 *                          dead host is still listed (as down)
 *   /dormant/vms/<vm>      the name of the host the VM lives on, no lease:
 *                          written by that host; moved from one host to
 *                          another only by compare-and-swap (moveVmRecord),
 *                          so a VM is never recorded on two hosts
 *
 * `listHosts` is what `dormant hosts` prints.
 */
import { DormantError } from '../blockstore/index.js';
import type { EtcdClient, KeyValue } from './etcd-client.js';

/** Where everything dormant keeps in etcd lives. */
export const ETCD_ROOT = '/dormant/';
export const HOSTS_PREFIX = `${ETCD_ROOT}hosts/`;
export const KNOWN_PREFIX = `${ETCD_ROOT}known/`;
export const VMS_PREFIX = `${ETCD_ROOT}vms/`;

export const hostKey = (host: string): string => `${HOSTS_PREFIX}${host}`;
export const knownKey = (host: string): string => `${KNOWN_PREFIX}${host}`;
export const vmKey = (vm: string): string => `${VMS_PREFIX}${vm}`;

/** A VM as its host publishes it. */
export interface VmEntry {
  name: string;
  state: string;
  /** Its guest RAM (the size of its memory volume). */
  memoryBytes?: number;
  /** Base64 of the sketch of its memory fingerprint (sketch.ts), for a VM that holds memory (running, paused). */
  sketch?: string;
}

/** What a live host publishes under its lease (refreshed every few seconds). */
export interface LiveRecord {
  name: string;
  /** Its host API. */
  url: string;
  /** MemTotal. */
  capacityBytes: number;
  /** MemAvailable. */
  freeBytes: number;
  /** capacityBytes - freeBytes. */
  usedBytes: number;
  vms: VmEntry[];
  pid: number;
  /** ISO time of this record. */
  updatedAt: string;
}

/** What outlives a host's lease. */
export interface KnownRecord {
  name: string;
  url: string;
  capacityBytes: number;
  /** ISO time the host (last) registered. */
  registeredAt: string;
}

/** One host as `dormant hosts --json` lists it. */
export interface HostStatus {
  name: string;
  url: string;
  state: 'up' | 'down';
  capacityBytes: number;
  /** null for a down host (not known). */
  usedBytes: number | null;
  /** Up: the VMs it publishes; down: the VMs recorded on it, as `unavailable`. */
  vms: VmEntry[];
  /** Bytes of its live record in etcd (fingerprint sketches included); null for a down host. */
  recordBytes: number | null;
}

/** A host name: what goes into keys (no '/', no spaces). */
export function checkHostName(name: string, flag = '--host-name'): string {
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(name)) {
    throw new DormantError('EINVAL', `bad ${flag} '${name}': letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit`);
  }
  return name;
}

/** Parses a JSON record, or undefined when it is not one (a foreign or damaged key is skipped, not fatal). */
export function parseRecord<T extends { name: string }>(kv: KeyValue): T | undefined {
  try {
    const v = JSON.parse(kv.value) as T;
    return v && typeof v === 'object' && typeof v.name === 'string' ? v : undefined;
  } catch {
    return undefined;
  }
}

/** Every host ever registered, up or down, by name. */
export async function listHosts(client: EtcdClient): Promise<HostStatus[]> {
  const { kvs } = await client.rangePrefix(ETCD_ROOT);
  const live = new Map<string, { record: LiveRecord; bytes: number }>();
  const known = new Map<string, KnownRecord>();
  const vmsOn = new Map<string, string[]>();
  for (const kv of kvs) {
    if (kv.key.startsWith(HOSTS_PREFIX)) {
      const r = parseRecord<LiveRecord>(kv);
      if (r) live.set(kv.key.slice(HOSTS_PREFIX.length), { record: r, bytes: Buffer.byteLength(kv.value) });
    } else if (kv.key.startsWith(KNOWN_PREFIX)) {
      const r = parseRecord<KnownRecord>(kv);
      if (r) known.set(kv.key.slice(KNOWN_PREFIX.length), r);
    } else if (kv.key.startsWith(VMS_PREFIX)) {
      const list = vmsOn.get(kv.value) ?? [];
      list.push(kv.key.slice(VMS_PREFIX.length));
      vmsOn.set(kv.value, list);
    }
  }
  const names = [...new Set([...known.keys(), ...live.keys()])].sort();
  return names.map((name): HostStatus => {
    const l = live.get(name);
    if (l) {
      return {
        name, url: l.record.url, state: 'up', capacityBytes: l.record.capacityBytes, usedBytes: l.record.usedBytes,
        vms: (l.record.vms ?? []).map((v) => ({ name: v.name, state: v.state })), recordBytes: l.bytes,
      };
    }
    const k = known.get(name)!;
    return {
      name, url: k.url, state: 'down', capacityBytes: k.capacityBytes, usedBytes: null,
      vms: (vmsOn.get(name) ?? []).sort().map((vm) => ({ name: vm, state: 'unavailable' })), recordBytes: null,
    };
  });
}

/** The host `vm` is recorded on, or undefined. */
export async function vmHost(client: EtcdClient, vm: string): Promise<string | undefined> {
  return (await client.get(vmKey(vm)))?.value;
}

/**
 * Moves the record of where `vm` lives from `fromHost` to `toHost` in one
 * compare-and-swap transaction: it happens only if the record still says
 * `fromHost`. Resolves with `moved`, and otherwise the host the record
 * names now (undefined: no record). Meant to be the commit point of a
 * migration, so that a VM is never recorded on two hosts.
 */
export async function moveVmRecord(client: EtcdClient, vm: string, fromHost: string, toHost: string): Promise<{ moved: boolean; owner?: string }> {
  const key = vmKey(vm);
  const r = await client.txn([{ key, value: fromHost }], [{ put: { key, value: toHost } }], [{ range: { key } }]);
  return r.succeeded ? { moved: true, owner: toHost } : { moved: false, owner: r.read[0]?.value };
}

/** Records `vm` on `host` if no host has it; resolves with the host it is recorded on afterwards. */
export async function claimVm(client: EtcdClient, vm: string, host: string): Promise<string> {
  const key = vmKey(vm);
  const r = await client.txn([{ key, absent: true }], [{ put: { key, value: host } }], [{ range: { key } }]);
  return r.succeeded ? host : r.read[0]?.value ?? host;
}

/** Removes the record of `vm` if it names `host` (the VM is gone from there); resolves with whether it did. */
export async function releaseVm(client: EtcdClient, vm: string, host: string): Promise<boolean> {
  const key = vmKey(vm);
  return (await client.txn([{ key, value: host }], [{ delete: { key } }])).succeeded;
}
