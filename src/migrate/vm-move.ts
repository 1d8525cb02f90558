/**
 * Moving a running VM to another host: the VM's disk and memory
 * are volumes of the store, and QEMU's RAM is a shared file on the FUSE
 * view, so only the chunks the destination lacks and QEMU's device state
 * travel.
 *
 * Source (migrateVm):
 *   1. ask the destination whether it can take the VM (name, volumes,
 *      kernel), before anything else;
 *   2. pre-copy while the guest runs: write its dirty RAM back, push the
 *      disk branch and the memory volume (missing chunks only), committed
 *      there under their names; the chunk id of every block sent is kept;
 *   3. the destination starts QEMU on them with `-incoming defer`
 *      (POST /v1/vms/<vm>/incoming), `x-ignore-shared` on both QEMUs so
 *      that QEMU's stream carries device state, not RAM;
 *   4. pause the guest (QMP stop: QEMU drains and flushes its disk), write
 *      its RAM back again;
 *   5. patch both volumes there in place with the blocks whose chunk id
 *      changed since step 2 (patch.ts): the downtime grows with what the
 *      guest changed, not with its size;
 *   6. QMP migrate to the destination's listener, wait for completion;
 *   7. ask the destination to resume the guest and confirm it runs
 *      (POST .../finish): the commit point;
 *   8. release the source: quit its QEMU, remove the VM and its volumes.
 * Before the commit point any failure aborts the destination's side
 * (POST .../abort: its QEMU killed, the VM and volumes it received
 * removed; the chunks stay, so a retry sends little) and resumes the guest
 * on the source: nothing is lost, and a retry starts over.
 *
 * Lazy mode differs in what travels before the guest continues there:
 *   2. only the manifests: the destination writes the blocks whose chunk it
 *      holds and marks the others absent (lazy.ts);
 *   5. the patch carries hashes only: changed blocks whose chunk the
 *      destination lacks are marked absent too;
 *   7. the finish hands the VM over with this host's API URL and a token
 *      for this migration (lazy-source.ts): the destination fetches absent
 *      chunks from here when read, and copies the rest in the background;
 *   8. QEMU quits here and the VM's record goes, but its volumes stay
 *      until the destination says its copy is complete (POST
 *      /v1/vms/<vm>/lazy/done).
 * The pause then covers the RAM write-back, the patches' metadata and the
 * device state, not the chunks.
 *
 * Destination (IncomingVms): the three routes above, over the daemon's
 * VM supervisor (MovableVms) and store.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { BLOCK_SIZE, DormantError, HASH_SIZE, type Store } from '../blockstore/index.js';
import { STAGING_SUFFIX } from './incoming.js';
import { buildManifest } from './manifest.js';
import { push, pushManifest, pushPatch } from './transfer.js';
import { requestJson, type RemoteHost } from './remote.js';
import type { LazyIncoming, LazySource } from './lazy.js';
import type { LazyLeases } from './lazy-source.js';

/** How a VM moves: copy (every chunk before it continues there) or lazy (chunks fetched there after). */
export type MoveMode = 'copy' | 'lazy';

/** What a VM migration needs of the VM runner (the daemon's supervisor implements it). */
export interface MovableVms {
  /** The VM's record (ENOENT when there is none). */
  record(name: string): MovableRecord;
  /** True when QEMU runs for the VM (running or paused). */
  isRunning(name: string): boolean;
  /** Records in the VM's record that it is being migrated to `to` (undefined: clears it); see src/vm's VmRecord.migration. */
  markMigrating(name: string, to: string | undefined): void;
  /** QMP stop: the vCPUs stop, QEMU flushes the disk. */
  pause(name: string): Promise<void>;
  /** QMP cont (after a pause or a failed migration). */
  cont(name: string): Promise<void>;
  /** Guest pages faulted in through the FUSE view since QEMU started (reads of its memory file). */
  pagesIn(name: string): number;
  /** Writes the guest's dirty RAM back into its memory volume. */
  writeBack(name: string): Promise<void>;
  /** Sends QEMU's device state to `uri` (x-ignore-shared set first); resolves with the stream's bytes once completed. */
  migrateOut(name: string, uri: string, timeoutMs: number): Promise<{ bytes: number }>;
  /** Writes a record received from another host (its volumes are here), marked as arriving from `from` until it runs. */
  adopt(rec: MovableRecord, from: string): void;
  /** Starts QEMU for a VM with `-incoming defer`, x-ignore-shared, listening on `uri` (tcp:HOST:PORT). */
  startIncoming(name: string, uri: string): Promise<void>;
  /** Waits until the incoming migration completed, resumes the guest, and confirms it runs; its status. */
  finishIncoming(name: string, timeoutMs: number): Promise<{ hostPort?: number; state: string }>;
  /** Stops QEMU at once (SIGKILL) if it runs; `reason` is shown in its status. */
  kill(name: string, reason: string): Promise<void>;
  /** After the destination took over: QEMU quits, and the VM, its record and (unless `keepVolumes`) its volumes go. */
  release(name: string, reason: string, keepVolumes?: boolean): Promise<void>;
  /** Removes a VM that does not run, with its record and volumes (an aborted incoming one). */
  remove(name: string): Promise<void>;
  /** The VM whose disk or memory volume `volume` is, if any. */
  usedBy(volume: string): string | undefined;
}

/** The fields of a VM record a move needs (src/vm's VmRecord has them all). */
export interface MovableRecord {
  name: string;
  disk: string;
  memory: string;
  kernel: string;
  initrd: string;
  image: string;
}

/** What `vm migrate --json` prints. */
export interface VmMoveResult {
  vm: string;
  mode: MoveMode;
  to: string;
  /** From the guest's pause on the source to its confirmed run on the destination. */
  downtimeMs: number;
  bytesSent: number;
  memoryBytesSent: number;
  diskBytesSent: number;
  /** QEMU's own migration stream (device state and the few RAM blocks that are not the shared file). */
  deviceStateBytes: number;
  /** Where the downtime went: RAM write-back and flush, the patches, QEMU's device state, the resume there. */
  downtimePhasesMs: { writeBack: number; patch: number; deviceState: number; resume: number };
  /** Blocks sent as patches while the guest was paused, per volume. */
  patchedBlocks: Record<string, number>;
  /** Guest pages faulted in on the source while it moved (a paged-out VM's memory is read from the store, not faulted back). */
  sourcePagesFaulted: number;
  /** The VM's HTTP port on the destination. */
  hostPort?: number;
  /** Lazy mode: what the destination still lacked when the guest continued there (fetched from here afterwards). */
  lazy?: { memoryBytesToFetch: number; diskBytesToFetch: number };
  seconds: number;
}

/** The answer to POST /v1/vms/<vm>/incoming/finish. */
interface FinishAnswer {
  hostPort?: number;
  state: string;
  /** Lazy mode: blocks still absent there per volume when the guest continued. */
  lazyBlocks?: Record<string, number>;
}

/** Body of POST /v1/vms/<vm>/incoming. */
interface IncomingRequest {
  record: MovableRecord;
  kernelSha256: string;
  initrdSha256: string;
  /** The source's name in the cluster on etcd, if it is in one (the VM's location moves from it at the commit point). */
  fromHost?: string;
  /** Lazy mode: where the absent chunks of the VM's volumes are (this request's sender, with a token for them). */
  lazy?: LazySource;
}

/** The longest QEMU's device-state stream may take. */
const STREAM_TIMEOUT_MS = 120_000;

function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** Moves running VM `name` to `host`; see the header. Lazy mode needs `leases` with this host's API URL. */
export async function migrateVm(store: Store, vms: MovableVms, name: string, host: RemoteHost,
  log: (line: string) => void = () => undefined, progress?: (done: number, total: number) => void,
  fromHost?: string, mode: MoveMode = 'copy', leases?: LazyLeases): Promise<VmMoveResult> {
  const rec = vms.record(name);
  if (!vms.isRunning(name)) throw new DormantError('EINVAL', `cannot migrate VM '${name}': it is not running (start it, or push its volumes)`);
  const lazy = mode === 'lazy';
  if (lazy && !leases?.selfUrl) {
    throw new DormantError('EINVAL', `--mode lazy needs this host's API (serve --api): VM '${name}' would fetch its chunks from it`);
  }
  for (const v of [rec.disk, rec.memory]) {
    if (store.absentOf(v)) throw new DormantError('EBUSY', `VM '${name}' is still arriving here lazily ('${v}' lacks blocks): wait for its copy (dormant vm status)`);
  }
  const t0 = performance.now();
  const request: IncomingRequest = {
    record: rec, kernelSha256: sha256File(rec.kernel), initrdSha256: sha256File(rec.initrd), ...(fromHost ? { fromHost } : {}),
  };
  // The destination must be able to run it before the guest pauses: it checks the kernel and the name.
  await requestJson(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/check`, Buffer.from(JSON.stringify(request)));
  const faultsBefore = vms.pagesIn(name);
  // Until it is released, a daemon that starts again must not start it here: it may run there.
  vms.markMigrating(name, host.url);
  const roles = ['disk', 'memory'] as const;
  const sent = { disk: 0, memory: 0 };
  let committed = false;
  let paused = 0;
  try {
    // Pre-copy, while the guest runs: the volumes as the store holds them now, committed there under their names.
    await vms.writeBack(name);
    await store.flush();
    const before: Record<'disk' | 'memory', Float64Array> = { disk: new Float64Array(0), memory: new Float64Array(0) };
    for (const role of roles) {
      const m = await buildManifest(store, rec[role]);
      if (lazy) {
        // Lazy: the manifest only; the destination marks what it lacks absent.
        const r = await pushManifest(host, m);
        sent[role] += r.bytesSent;
        before[role] = m.ids!;
        continue;
      }
      const r = await push(store, host, rec[role], undefined, progress, { manifest: m, partial: true });
      sent[role] += r.bytesSent;
      // Blocks whose chunk could not be sent (rewritten meanwhile) count as changed: the patch sends them.
      const ids = m.ids!;
      for (let b = 0; r.missing?.size && b < ids.length; b++) {
        if (ids[b] !== 0 && r.missing.has(m.hashes.toString('hex', b * HASH_SIZE, (b + 1) * HASH_SIZE))) ids[b] = -1;
      }
      before[role] = ids;
    }
    // The destination starts QEMU now, waiting for the device state: its start is not downtime.
    // Lazy: the destination fetches what it lacks from here (QEMU reads guest RAM as soon as the device state loads),
    // with a token for this migration only.
    const handOver: IncomingRequest = lazy ? {
      ...request,
      lazy: {
        url: leases!.selfUrl!, token: leases!.grant(name, [rec.disk, rec.memory], host.url),
        ...(leases!.selfCa ? { ca: leases!.selfCa } : {}),
      },
    } : request;
    const inc = await requestJson<{ uri: string }>(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming`,
      Buffer.from(JSON.stringify(handOver)));
    log(`vm ${name}: migrating to ${host.url} (${mode}): pre-copied ${sent.disk + sent.memory} bytes, QEMU waits there; pausing`);
    await vms.pause(name);
    paused = performance.now();
    await vms.writeBack(name);
    await store.flush();
    const wroteBack = performance.now();
    // What changed since the pre-copy, patched in place there.
    const patchedBlocks = { disk: 0, memory: 0 };
    await Promise.all(roles.map(async (role) => {
      const p = await pushPatch(store, host, rec[role], before[role], undefined, lazy);
      sent[role] += p.bytesSent;
      patchedBlocks[role] = p.blocks;
    }));
    log(`vm ${name}: patched ${patchedBlocks.disk} disk and ${patchedBlocks.memory} memory blocks there; sending QEMU's device state`);
    const patched = performance.now();
    const stream = await vms.migrateOut(name, inc.uri, STREAM_TIMEOUT_MS);
    const streamed = performance.now();
    const fin = await requestJson<FinishAnswer>(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/finish`);
    committed = true;
    const resumed = performance.now();
    const sourcePagesFaulted = vms.pagesIn(name) - faultsBefore;
    log(`vm ${name}: runs on ${host.url} (port ${fin.hostPort}); releasing it here${lazy ? ' (its volumes stay until the copy there completes)' : ''}`);
    await vms.release(name, `migrated to ${host.url}`, lazy);
    const left = fin.lazyBlocks ?? {};
    return {
      vm: name, mode, to: host.url, downtimeMs: Math.round(resumed - paused),
      bytesSent: sent.disk + sent.memory + stream.bytes, memoryBytesSent: sent.memory, diskBytesSent: sent.disk,
      deviceStateBytes: stream.bytes, sourcePagesFaulted,
      downtimePhasesMs: {
        writeBack: Math.round(wroteBack - paused), patch: Math.round(patched - wroteBack),
        deviceState: Math.round(streamed - patched), resume: Math.round(resumed - streamed),
      },
      patchedBlocks, ...(fin.hostPort !== undefined ? { hostPort: fin.hostPort } : {}),
      ...(lazy ? { lazy: { memoryBytesToFetch: (left[rec.memory] ?? 0) * BLOCK_SIZE, diskBytesToFetch: (left[rec.disk] ?? 0) * BLOCK_SIZE } } : {}),
      seconds: Math.round((performance.now() - t0) / 10) / 100,
    };
  } catch (err) {
    if (committed) throw err; // (the release failed: the VM runs on the destination)
    log(`vm ${name}: migration to ${host.url} failed (${(err as Error).message})${paused ? '; resuming it here' : ''}`);
    // The destination may hold what this migration sent: it removes it (and its QEMU).
    await requestJson(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/abort`,
      Buffer.from(JSON.stringify({ volumes: [rec.disk, rec.memory] })))
      .catch((e: Error) => log(`vm ${name}: abort on ${host.url}: ${e.message}`));
    if (lazy) leases!.revoke(name);
    if (paused) await vms.cont(name);
    vms.markMigrating(name, undefined);
    throw err;
  }
}

/** Incoming VM sessions older than this are aborted (their source is gone). */
const INCOMING_TIMEOUT_MS = 10 * 60_000;

/** The destination's side of VM migrations (the host API's /v1/vms/<vm>/incoming routes). */
export class IncomingVms {
  private readonly pending = new Map<string, NodeJS.Timeout>();
  private readonly sources = new Map<string, string | undefined>();
  /** Called once an incoming VM runs here (the cluster's location record moves), with the source's cluster name. */
  onArrived?: (vm: string, fromHost: string | undefined) => Promise<unknown>;

  constructor(private readonly store: Store, private readonly vms: MovableVms | undefined,
    private readonly log: (line: string) => void = () => undefined,
    /** Ends a push session receiving volume `name` (its staging volume stays). */
    private readonly dropTransfer: (volume: string) => Promise<void> = async () => undefined,
    /** The lazy volumes here (lazy mode); without it, a lazy hand-over is refused. */
    private readonly lazy?: LazyIncoming) {}

  private need(): MovableVms {
    if (!this.vms) throw new DormantError('EINVAL', 'this host runs no VMs (its daemon has no --mount)');
    return this.vms;
  }

  /**
   * Checks that VM `name` (request `body`) can come here: no VM of that
   * name, and its kernel files here with the same content; with `fresh`,
   * none of its volumes either (before they are sent). Returns the request.
   */
  check(name: string, body: Buffer, fresh = true): IncomingRequest {
    const vms = this.need();
    const req = parseIncoming(name, body);
    let exists = true;
    try { vms.record(name); } catch { exists = false; }
    if (exists && !this.pending.has(name)) throw new DormantError('EEXIST', `a VM named '${name}' already exists on this host`);
    for (const v of [req.record.disk, req.record.memory]) {
      if (fresh && !this.pending.has(name) && this.store.describe(v)) {
        throw new DormantError('EEXIST', `volume '${v}' of VM '${name}' already exists on this host (remove it, or migrate under another name)`);
      }
    }
    const { kernel, initrd } = req.record;
    if (!fs.existsSync(kernel) || !fs.existsSync(initrd) || sha256File(kernel) !== req.kernelSha256 || sha256File(initrd) !== req.initrdSha256) {
      throw new DormantError('ENOENT', `the kernel of image '${req.record.image}' is not on this host with the same content: `
        + `build the image here too (dormant image build-test-guest ${req.record.image})`);
    }
    return req;
  }

  /**
   * Adopts the VM's record (its volumes arrived), starts QEMU waiting for
   * the device state on `address`:`port` (the address the source reached
   * this host's API on); the URI to send it to.
   */
  async begin(name: string, body: Buffer, address: string, port: number, from = 'another host'): Promise<{ uri: string }> {
    const vms = this.need();
    const req = this.check(name, body, false);
    for (const v of [req.record.disk, req.record.memory]) {
      if (!this.store.describe(v)) throw new DormantError('ENOENT', `volume '${v}' of VM '${name}' has not arrived: push it first`);
    }
    if (req.lazy && !this.lazy) throw new DormantError('EINVAL', 'this host cannot take a VM lazily (its daemon has no VM runner)');
    vms.adopt({ ...req.record, wanted: false } as MovableRecord, from);
    // Before QEMU starts: loading the device state reads guest RAM (virtio rings), which may be absent here.
    if (req.lazy) this.lazy!.attach(name, [req.record.disk, req.record.memory], req.lazy);
    const host = address.includes(':') ? `[${address}]` : address;
    const uri = `tcp:${host}:${port}`;
    const t = setTimeout(() => { void this.abort(name).catch(() => undefined); }, INCOMING_TIMEOUT_MS);
    t.unref();
    this.pending.set(name, t);
    this.sources.set(name, req.fromHost);
    try {
      await vms.startIncoming(name, uri);
    } catch (err) {
      await this.abort(name).catch(() => undefined);
      throw err;
    }
    this.log(`vm ${name}: incoming from another host, QEMU waits on ${uri}`);
    return { uri };
  }

  /**
   * The device state arrived: resume the guest here; its status. A VM
   * arriving lazily (its volumes' absent blocks fetched from the source
   * since `begin`) starts its background copy once it runs.
   */
  async finish(name: string): Promise<FinishAnswer> {
    const vms = this.need();
    if (!this.pending.has(name)) throw new DormantError('ENOENT', `no incoming VM '${name}' here`);
    const st = await vms.finishIncoming(name, STREAM_TIMEOUT_MS);
    const lazyBlocks = this.lazy?.start(name);
    clearTimeout(this.pending.get(name));
    this.pending.delete(name);
    const fromHost = this.sources.get(name);
    this.sources.delete(name);
    // The VM runs here: its location in the cluster moves with it (a failure there does not undo the move).
    await this.onArrived?.(name, fromHost).catch((err: Error) => this.log(`vm ${name}: cluster location: ${err.message}`));
    this.log(`vm ${name}: arrived, running (port ${st.hostPort})${lazyBlocks
      ? `; ${Object.values(lazyBlocks).reduce((a, n) => a + n, 0)} absent blocks to copy in the background` : ''}`);
    return { ...st, ...(lazyBlocks ? { lazyBlocks } : {}) };
  }

  /**
   * The source gave up before the commit point: QEMU goes, and the VM with
   * the volumes it received (`volumes`: those the source pushed, which
   * `check` saw absent; removed when no VM here uses them).
   */
  async abort(name: string, volumes: string[] = []): Promise<{ aborted: boolean }> {
    const vms = this.need();
    const t = this.pending.get(name);
    if (t !== undefined) {
      clearTimeout(t);
      this.pending.delete(name);
      this.sources.delete(name);
      await vms.kill(name, 'incoming migration aborted');
      await vms.remove(name);
    }
    const removed: string[] = [];
    for (const v of volumes) await this.dropTransfer(v);
    for (const v of volumes) await this.lazy?.forget(v);
    for (const v of volumes.flatMap((x) => [x, `${x}${STAGING_SUFFIX}`])) {
      if (!this.store.describe(v) || vms.usedBy(v)) continue;
      await this.store.remove(v).then(() => removed.push(v), (e: Error) => this.log(`vm ${name}: abort: cannot remove ${v}: ${e.message}`));
    }
    this.log(`vm ${name}: incoming migration aborted; removed here: ${[...(t !== undefined ? ['the VM'] : []), ...removed].join(', ') || 'nothing'}`);
    return { aborted: t !== undefined || removed.length > 0 };
  }

  /** Aborts every pending incoming VM (daemon stop). */
  async close(): Promise<void> {
    for (const name of [...this.pending.keys()]) await this.abort(name).catch(() => undefined);
  }
}

function parseIncoming(name: string, body: Buffer): IncomingRequest {
  let req: IncomingRequest;
  try {
    req = JSON.parse(body.toString('utf8')) as IncomingRequest;
  } catch {
    throw new DormantError('EINVAL', 'an incoming VM request is JSON: {record, kernelSha256, initrdSha256}');
  }
  const r = req?.record;
  if (!r || typeof r !== 'object' || r.name !== name || typeof r.disk !== 'string' || typeof r.memory !== 'string'
    || typeof r.kernel !== 'string' || typeof r.initrd !== 'string' || typeof r.image !== 'string'
    || typeof req.kernelSha256 !== 'string' || typeof req.initrdSha256 !== 'string'
    || (req.fromHost !== undefined && typeof req.fromHost !== 'string')
    || (req.lazy !== undefined && (typeof req.lazy?.url !== 'string' || typeof req.lazy.token !== 'string'
      || (req.lazy.ca !== undefined && typeof req.lazy.ca !== 'string')))) {
    throw new DormantError('EINVAL', `an incoming VM request names VM '${name}' with its record (disk, memory, kernel, initrd, image) and kernel hashes`);
  }
  return req;
}
