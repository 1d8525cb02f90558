/**
 * A host's membership of the cluster (`dormant serve --etcd ...`): it
 * registers under a lease, keeps the lease alive, publishes what it has,
 * records where its VMs live, and watches the other hosts.
 *
 * State: `lease` (the lease id, or undefined when there is none: at start
 * and after one was lost), `reachable` (whether the last request reached
 * etcd). One loop, one tick at a time, every `ttl / 3` seconds (sooner
 * when kicked):
 *
 *   no lease     grant one, write /dormant/known/<host>, read which VM
 *                records name this host, then write the live record under
 *                the lease ("registered", or "registered again under
 *                lease L" after a loss);
 *   lease        one keep-alive; TTL 0 means etcd no longer has it
 *                (expired while etcd or this host could not talk, or
 *                revoked by someone): "lease L lost", and at once a new
 *                one as above;
 *   publish      the live record again when it changed (VMs, their
 *                states and fingerprint sketches as `vms()` gives them,
 *                the API URL), when free memory moved by 64 MiB
 *                or 1 % of capacity, or after 30 s; a put that etcd
 *                refuses because the lease is gone is a loss as above;
 *   VM records   a VM of this host with no record is claimed (create-only
 *                transaction); a VM recorded here that is gone is released
 *                (delete if it still names this host); a VM recorded on
 *                another host is left alone (one warning line);
 *   unreachable  a tick that cannot reach etcd logs one warning and keeps
 *                trying; when etcd answers again the watch is restarted
 *                (one line).
 *
 * The watch of /dormant/hosts/ reports hosts coming up and going down (one
 * line each); a delete of this host's own key (the lease was revoked or
 * the key removed) kicks the loop, which finds the loss by its keep-alive
 * or publishes again. `stop` revokes the lease, so the host is down at
 * once rather than after the TTL.
 */
import fs from 'node:fs';
import { DormantError, asWarn, type LogFn } from '../blockstore/index.js';
import { EtcdError, GRPC_NOT_FOUND, type EtcdClient, type KeyValue } from './etcd-client.js';
import {
  HOSTS_PREFIX, claimVm, hostKey, knownKey, moveVmRecord, parseRecord, releaseVm, VMS_PREFIX,
  type KnownRecord, type LiveRecord, type VmEntry,
} from './cluster-keys.js';
import { PrefixWatch } from './watch.js';

/** Default lease TTL (s) of `serve --etcd`. */
export const DEFAULT_ETCD_TTL_S = 10;

/** What a host registers with. */
export interface MembershipOptions {
  client: EtcdClient;
  name: string;
  /** Its host API URL. */
  url: string;
  ttlSeconds: number;
  /** The host's VMs, their states, sizes and sketches, now (the daemon's: VmSketches.publish). */
  vms: () => Promise<VmEntry[]>;
  log: LogFn;
  /** Memory of the host (default: /proc/meminfo). */
  memory?: () => { capacityBytes: number; freeBytes: number };
}

const MiB = 1024 * 1024;
const REPUBLISH_MS = 30_000;

/** MemTotal and MemAvailable from /proc/meminfo. */
export function hostMemory(): { capacityBytes: number; freeBytes: number } {
  const text = fs.readFileSync('/proc/meminfo', 'utf8');
  const kb = (field: string) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { capacityBytes: kb('MemTotal'), freeBytes: kb('MemAvailable') };
}

/** A host registered in the cluster. */
export class Membership {
  private lease?: string;
  private lost = false;
  private reachable = true;
  private stopping = false;
  private timer?: NodeJS.Timeout;
  private ticking?: Promise<void>;
  private kicked = false;
  private published?: { record: LiveRecord; at: number };
  private forcePublish = false;
  /** VMs this host has claimed (its records). */
  private recorded = new Set<string>();
  private readonly warnedForeign = new Set<string>();
  private readonly watch: PrefixWatch;
  private readonly memory: () => { capacityBytes: number; freeBytes: number };

  private constructor(private readonly o: MembershipOptions) {
    this.memory = o.memory ?? hostMemory;
    this.watch = new PrefixWatch(o.client, HOSTS_PREFIX, (key, before, after) => this.onHostChange(key, before, after), o.log);
  }

  /**
   * Registers (rejects with one EtcdError line when etcd cannot be
   * reached, EEXIST when a live host of that name has another URL) and
   * starts the loop and the watch.
   */
  static async join(o: MembershipOptions): Promise<Membership> {
    const m = new Membership(o);
    const kv = await o.client.get(hostKey(o.name));
    const existing = kv && parseRecord<LiveRecord>(kv);
    if (existing && existing.url !== o.url) {
      throw new DormantError('EEXIST', `host name '${o.name}' is taken by a live host with API ${existing.url} in etcd: choose another --host-name`);
    }
    await m.register();
    await m.syncVms(await o.vms());
    await m.watch.start();
    m.schedule(m.intervalMs());
    return m;
  }

  /** The hosts seen up by the watch, with their records. */
  hostsUp(): LiveRecord[] {
    return [...this.watch.view.values()].map((kv) => parseRecord<LiveRecord>(kv)).filter((r): r is LiveRecord => r !== undefined);
  }

  /** The lease this host holds now (tests, logs). */
  get leaseId(): string | undefined { return this.lease; }

  /**
   * VM `vm` arrived here from host `fromHost` by a migration and runs here
   * now (its commit point): its location moves from that host to this one
   * in one compare-and-swap, so it is never recorded on two hosts; with no
   * such record (the source is in no cluster, or it was released), this
   * host claims it. Returns the host it is recorded on afterwards.
   */
  async arrived(vm: string, fromHost: string | undefined): Promise<string> {
    const { client, name, log } = this.o;
    const moved = fromHost ? await moveVmRecord(client, vm, fromHost, name) : { moved: false, owner: undefined };
    const owner = moved.moved ? name : await claimVm(client, vm, name);
    if (owner === name) {
      this.recorded.add(vm);
      this.warnedForeign.delete(vm);
      log(`cluster: VM ${vm} now recorded on host ${name}${moved.moved ? ` (moved from ${fromHost})` : ''}`, { vm, host: name });
    } else {
      log(`cluster: warning: VM ${vm} arrived here but is recorded on host ${owner} in etcd`, asWarn({ vm, host: owner }));
    }
    return owner;
  }

  /** Stops the loop and the watch and revokes the lease (best effort: a failure is one warning line). */
  async stop(): Promise<void> {
    this.stopping = true;
    clearTimeout(this.timer);
    await this.ticking;
    await this.watch.stop();
    if (this.lease) {
      try {
        await this.o.client.revoke(this.lease);
      } catch (err) {
        this.o.log(`cluster: could not revoke lease ${this.lease} (${(err as Error).message}): host ${this.o.name} shows down after its TTL`, asWarn({ host: this.o.name }));
      }
    }
  }

  private intervalMs(): number {
    return Math.max(300, Math.round((this.o.ttlSeconds * 1000) / 3));
  }

  private schedule(ms: number): void {
    if (this.stopping) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.ticking = this.tick().finally(() => {
        this.ticking = undefined;
        const again = this.kicked || this.lease === undefined && this.reachable;
        this.kicked = false;
        this.schedule(again ? 50 : this.intervalMs());
      });
    }, ms);
  }

  /** Runs the loop soon (after the tick in progress, if any). */
  private kick(): void {
    if (this.ticking) { this.kicked = true; return; }
    this.schedule(0);
  }

  private async tick(): Promise<void> {
    const { client, log, name } = this.o;
    try {
      if (this.lease === undefined) {
        await this.register();
      } else {
        const ttl = await client.keepAlive(this.lease);
        if (ttl <= 0) { this.loseLease('its keep-alive found no such lease'); return; }
      }
      await this.publish(await this.o.vms());
      if (!this.reachable) {
        this.reachable = true;
        log(`cluster: etcd answers again (${client.endpoint}); watching again`, { host: name });
        this.watch.restart();
      }
    } catch (err) {
      if (this.stopping) return;
      if (err instanceof EtcdError && err.etcdCode === GRPC_NOT_FOUND && this.lease !== undefined) {
        this.loseLease('etcd refused a put under it');
        return;
      }
      if (this.reachable) {
        this.reachable = false;
        log(`cluster: warning: ${(err as Error).message}; host ${name} keeps trying every ${Math.round(this.intervalMs() / 100) / 10} s`,
          asWarn({ host: name, err: (err as Error).message }));
      }
    }
  }

  private loseLease(how: string): void {
    this.o.log(`cluster: warning: lease ${this.lease} of host ${this.o.name} lost (${how}); registering again`, asWarn({ host: this.o.name, lease: this.lease }));
    this.lease = undefined;
    this.lost = true;
    this.published = undefined;
  }

  /** A new lease, the known record, the live record under the lease. */
  private async register(): Promise<void> {
    const { client, log, name, url, ttlSeconds } = this.o;
    const lease = await client.grant(ttlSeconds);
    const mem = this.memory();
    const known: KnownRecord = { name, url, capacityBytes: mem.capacityBytes, registeredAt: new Date().toISOString() };
    await client.put(knownKey(name), JSON.stringify(known));
    this.lease = lease;
    this.published = undefined;
    // The VM records as etcd has them now (after a loss they may be gone, e.g. etcd's data was replaced).
    const { kvs } = await client.rangePrefix(VMS_PREFIX);
    this.recorded = new Set(kvs.filter((kv) => kv.value === name).map((kv) => kv.key.slice(VMS_PREFIX.length)));
    this.warnedForeign.clear();
    await this.publish(await this.o.vms());
    log(this.lost
      ? `cluster: host ${name} registered again under lease ${lease}`
      : `cluster: host ${name} registered in etcd (${client.endpoint}) under lease ${lease}, TTL ${ttlSeconds} s`,
    { host: name, lease, ttl: ttlSeconds });
    this.lost = false;
  }

  /** Puts the live record under the lease when it changed enough (or when forced or stale). */
  private async publish(vms: VmEntry[]): Promise<void> {
    const { client, name, url } = this.o;
    const mem = this.memory();
    const record: LiveRecord = {
      name, url, capacityBytes: mem.capacityBytes, freeBytes: mem.freeBytes, usedBytes: mem.capacityBytes - mem.freeBytes,
      vms, pid: process.pid, updatedAt: new Date().toISOString(),
    };
    const p = this.published;
    const same = p && !this.forcePublish && Date.now() - p.at < REPUBLISH_MS
      && JSON.stringify(p.record.vms) === JSON.stringify(vms) && p.record.url === url
      && Math.abs(p.record.freeBytes - mem.freeBytes) < Math.max(64 * MiB, mem.capacityBytes / 100);
    if (!same) {
      this.forcePublish = false;
      await client.put(hostKey(name), JSON.stringify(record), this.lease);
      this.published = { record, at: Date.now() };
    }
    await this.syncVms(vms);
  }

  /** Claims the records of VMs new here, releases those of VMs gone. */
  private async syncVms(vms: VmEntry[]): Promise<void> {
    const { client, log, name } = this.o;
    const here = new Set(vms.map((v) => v.name));
    for (const vm of here) {
      if (this.recorded.has(vm) || this.warnedForeign.has(vm)) continue;
      const owner = await claimVm(client, vm, name);
      if (owner === name) {
        this.recorded.add(vm);
      } else {
        this.warnedForeign.add(vm);
        log(`cluster: warning: VM ${vm} is here but recorded on host ${owner} in etcd; its record is left as it is`, asWarn({ vm, host: owner }));
      }
    }
    for (const vm of [...this.recorded]) {
      if (here.has(vm)) continue;
      await releaseVm(client, vm, name);
      this.recorded.delete(vm);
    }
    for (const vm of [...this.warnedForeign]) if (!here.has(vm)) this.warnedForeign.delete(vm);
  }

  private onHostChange(key: string, before: KeyValue | undefined, after: KeyValue | undefined): void {
    const host = key.slice(HOSTS_PREFIX.length);
    if (host === this.o.name) {
      if (!after && !this.stopping) {
        this.o.log(`cluster: warning: the key of host ${host} vanished from etcd; checking the lease`, asWarn({ host }));
        this.forcePublish = true;
        this.kick();
      }
      return;
    }
    if (after && !before) {
      const r = parseRecord<LiveRecord>(after);
      this.o.log(`cluster: host ${host} is up${r ? ` (${r.url})` : ''}`, { host });
    } else if (!after && before) {
      this.o.log(`cluster: host ${host} is down (its lease ended)`, asWarn({ host }));
    }
  }
}
