/**
 * The destination's side of moving a running VM here (the host API's
 * /v1/vms/<vm>/incoming routes, src/control/api-server.ts), over the
 * daemon's VM runner (MovableVms) and store: check that the VM can come,
 * start QEMU waiting for its device state once its volumes arrived, read
 * in the pages its guest uses, resume it (the commit point), or abort and
 * remove what arrived. The source's side and the steps: vm-move.ts.
 */
import fs from 'node:fs';
import { BLOCK_SIZE, DormantError, type Store } from '../blockstore/index.js';
import { STAGING_SUFFIX } from './incoming.js';
import type { LazyIncoming } from './lazy.js';
import { sha256File, STREAM_TIMEOUT_MS, type FinishAnswer, type IncomingRequest, type MovableRecord, type MovableVms } from './movable.js';

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
   * Reads the guest pages of `body` ({runs: [[first, count], ...]}) of
   * incoming VM `name` into the page cache here, before its source pauses
   * it; the pages read.
   */
  async prefetch(name: string, body: Buffer): Promise<{ pages: number }> {
    const vms = this.need();
    if (!this.pending.has(name)) throw new DormantError('ENOENT', `no incoming VM '${name}' here`);
    const pages = Math.ceil(this.store.describe(vms.record(name).memory)!.size / BLOCK_SIZE);
    let runs: unknown;
    try { runs = (JSON.parse(body.toString('utf8')) as { runs?: unknown }).runs; } catch { runs = undefined; }
    if (!Array.isArray(runs) || !runs.every((r) => Array.isArray(r) && r.length === 2 && Number.isSafeInteger(r[0])
      && Number.isSafeInteger(r[1]) && r[0] >= 0 && r[1] > 0 && r[0] + r[1] <= pages)) {
      throw new DormantError('EINVAL', `a prefetch takes {"runs":[[first, count], ...]} of pages within the VM's ${pages}`);
    }
    return { pages: await vms.readInArrival(name, runs as Array<[number, number]>) };
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
