/**
 * The destination's side of a lazy VM migration: volumes whose block map
 * arrived (the manifest, then the patch made while the guest was paused)
 * but whose chunks this host lacks are marked absent (the store's
 * absent.ts): a read of one fetches it from the source host's API
 * (`POST /v1/chunks/fetch`, checked against its hash), and a background
 * copy fetches the rest, BATCH chunks per request, IN_FLIGHT requests at
 * once. QEMU reads the memory volume through the FUSE view and the disk
 * over NBD: both go through the store's read path, which fills.
 *
 * States of a lazy VM here (LazyVm.state):
 *   waiting    its volumes arrived with absent blocks; the source has not
 *              handed the VM over yet (QEMU reads nothing before it runs);
 *   copying    the VM runs here; reads fetch what they need, the background
 *              copy fetches the rest;
 *   stalled    the source did not send the last batch (`lastError`); the
 *              copy retries with a growing pause (up to MAX_BACKOFF_MS), and
 *              a read of an absent block fails with EIO meanwhile;
 *   complete   every block is here; the source was told to release its
 *              copy (POST /v1/vms/<vm>/lazy/done).
 *
 * On disk: `<store>/lazy/<volume>.dlzy` per volume with absent blocks
 * (frame.ts: "DLZY", a JSON header {version, volume, vm, source, blocks},
 * then 16 bytes of hash per block and one bit per block, 1 = absent),
 * written when the volume arrives, when the source hands the VM over, and
 * every CHECKPOINT_MS while the copy runs. A checkpoint takes the bits,
 * then flushes the store, then writes them: a bit saved clear is a block
 * whose write is durable. A bit saved set whose block was written since is
 * cleared when the file is loaded (the block is no longer a hole); the one
 * case that cannot be told apart is a block the guest zeroed after the
 * last checkpoint, which after a crash is fetched again (docs/internals/
 * migrate.md). The file is removed once the copy is complete.
 */
import fs from 'node:fs';
import path from 'node:path';
import { AbsentBlocks, BLOCK_SIZE, DormantError, HASH_SIZE, type ChunkSource, type Store } from '../blockstore/index.js';
import { frame, unframe } from './frame.js';
import { request, requestJson, type RemoteHost } from './remote.js';

const MAGIC = 'DLZY';
/** Folder of the store holding lazy volumes' state files. */
export const LAZY_DIR = 'lazy';
/** Chunks per background request. */
const BATCH = 256;
/** Background requests in flight per volume. */
const IN_FLIGHT = 2;
/** How often the copy saves its progress. */
const CHECKPOINT_MS = 2000;
/** Longest pause between attempts while the source does not answer. */
const MAX_BACKOFF_MS = 30_000;
/** A read waits at most this long for its chunks (the guest is stalled meanwhile). */
const DEMAND_TIMEOUT_MS = 10_000;
/** Connection errors after which a read asks its source again (until DEMAND_TIMEOUT_MS). */
const UNREACHABLE = new Set(['ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'EPIPE', 'EHOSTUNREACH', 'ENETUNREACH']);
const BACKGROUND_TIMEOUT_MS = 60_000;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Where a lazy VM's chunks are: the source's API, and the token it gave for this migration. */
export interface LazySource {
  url: string;
  token: string;
  /** CA certificate (PEM) for an https source. */
  ca?: string;
}

/** The JSON part of a state file. */
interface StateHeader {
  version: 1;
  volume: string;
  vm: string | null;
  source: LazySource | null;
  blocks: number;
}

/** What `vm status` shows of a lazy copy (`lazyCopy`). */
export interface LazyCopyStatus {
  from: string;
  state: 'waiting' | 'copying' | 'stalled' | 'complete';
  /** Blocks still absent here. */
  blocksLeft: number;
  /** Blocks that were absent when the VM was handed over (or the daemon started). */
  blocksTotal: number;
  /** Chunks fetched because the guest read them (or wrote part of them). */
  demandChunks: number;
  /** Chunks fetched by the background copy. */
  backgroundChunks: number;
  bytesFetched: number;
  failures: number;
  lastError?: string;
  /** From the hand-over to the end of the copy (so far). */
  seconds: number;
}

/** A lazy VM on this host. */
interface LazyVm {
  vm: string;
  volumes: string[];
  source: LazySource;
  absent: AbsentBlocks[];
  state: LazyCopyStatus['state'];
  blocksTotal: number;
  started: number;
  finished?: number;
  stopped: boolean;
  running?: Promise<void>;
  checkpointing?: Promise<void>;
}

/** Chunks from another host's API. */
class HostChunks implements ChunkSource {
  private readonly host: RemoteHost;
  constructor(src: LazySource) {
    this.host = { url: src.url, token: src.token, ...(src.ca ? { ca: Buffer.from(src.ca) } : {}) };
  }

  get where(): string { return this.host.url; }

  /**
   * A read's fetch (`urgent`) waits up to DEMAND_TIMEOUT_MS in all, asking
   * again while the source cannot be reached (its daemon restarting), so a
   * source back within that time costs the guest a stall, not an EIO.
   */
  async fetch(hashes: Buffer, urgent: boolean): Promise<Buffer> {
    if (!urgent) return (await request(this.host, 'POST', '/v1/chunks/fetch', hashes, { timeoutMs: BACKGROUND_TIMEOUT_MS })).body;
    const deadline = Date.now() + DEMAND_TIMEOUT_MS;
    for (let wait = 100; ; wait = Math.min(1000, wait * 2)) {
      try {
        return (await request(this.host, 'POST', '/v1/chunks/fetch', hashes, { timeoutMs: Math.max(1, deadline - Date.now()) })).body;
      } catch (err) {
        const code = ((err as Error).cause as NodeJS.ErrnoException | undefined)?.code;
        if (code === undefined || !UNREACHABLE.has(code) || Date.now() + wait >= deadline) throw err;
        await sleep(wait);
      }
    }
  }
}

/** The lazy volumes and VMs of this host (destination side). */
export class LazyIncoming {
  private readonly vms = new Map<string, LazyVm>();
  private readonly dir: string;

  constructor(private readonly store: Store, private readonly log: (line: string) => void = () => undefined) {
    this.dir = path.join(store.dir, LAZY_DIR);
  }

  /** Marks the blocks of `deferred` (hash hex -> blocks, holes already) of `volume` absent (Receiver.commit). */
  add(volume: string, deferred: Map<string, number[]>): void {
    let ab = this.store.absentOf(volume);
    if (!ab) {
      const entry = this.store.describe(volume);
      if (!entry) throw new DormantError('ENOENT', `unknown volume '${volume}'`, { volume });
      ab = new AbsentBlocks(volume, Math.ceil(entry.size / BLOCK_SIZE));
    }
    for (const [key, blocks] of deferred) {
      const hash = Buffer.from(key, 'hex');
      for (const b of blocks) ab.mark(b, hash, 0);
    }
    this.store.setAbsent(volume, ab);
    // A patch of a VM already handed over: these blocks come from its source too.
    const lv = [...this.vms.values()].find((v) => v.volumes.includes(volume) && v.state !== 'complete');
    if (lv) {
      ab.source = new HostChunks(lv.source);
      if (!lv.absent.includes(ab)) lv.absent.push(ab);
    }
    this.save(ab, ab.bits, lv?.vm ?? null, lv?.source ?? null);
  }

  /**
   * VM `vm` is coming here lazily (before its QEMU starts: loading the
   * device state reads guest RAM): its volumes' absent blocks, and those a
   * patch marks later, are fetched from `source` from now on.
   */
  attach(vm: string, volumes: string[], source: LazySource): void {
    const absent: AbsentBlocks[] = [];
    for (const v of volumes) {
      const ab = this.store.absentOf(v);
      if (!ab) continue;
      ab.source = new HostChunks(source);
      this.save(ab, ab.bits, vm, source);
      absent.push(ab);
    }
    this.vms.set(vm, { vm, volumes, source, absent, state: 'waiting', blocksTotal: 0, started: performance.now(), stopped: false });
  }

  /** VM `vm` runs here: the background copy starts. Returns the blocks absent per volume, or undefined if it did not come lazily. */
  start(vm: string): Record<string, number> | undefined {
    const lv = this.vms.get(vm);
    if (!lv || lv.running) return undefined;
    lv.state = 'copying';
    lv.started = performance.now();
    lv.blocksTotal = lv.absent.reduce((n, ab) => n + ab.remaining, 0);
    const early = lv.absent.reduce((n, ab) => n + ab.stats.demandChunks, 0);
    if (early > 0) this.log(`vm ${vm}: ${early} chunks were fetched on demand before it ran here (QEMU loading its device state reads guest RAM)`);
    lv.running = this.copy(lv).catch((err: Error) => this.log(`vm ${vm}: lazy copy from ${lv.source.url}: ${err.message}`));
    return Object.fromEntries(lv.absent.map((ab) => [ab.volume, ab.remaining]));
  }

  /** The progress of VM `vm`'s lazy copy, if it had one since the daemon started. */
  status(vm: string): LazyCopyStatus | undefined {
    const lv = this.vms.get(vm);
    if (!lv) return undefined;
    const sum = (f: (ab: AbsentBlocks) => number) => lv.absent.reduce((n, ab) => n + f(ab), 0);
    const lastError = lv.absent.map((ab) => ab.stats.lastError).find((e) => e !== null);
    return {
      from: lv.source.url, state: lv.state, blocksLeft: sum((ab) => ab.remaining), blocksTotal: lv.blocksTotal,
      demandChunks: sum((ab) => ab.stats.demandChunks), backgroundChunks: sum((ab) => ab.stats.backgroundChunks),
      bytesFetched: sum((ab) => ab.stats.bytesFetched), failures: sum((ab) => ab.stats.failures),
      ...(lastError ? { lastError } : {}),
      seconds: Math.round(((lv.finished ?? performance.now()) - lv.started) / 10) / 100,
    };
  }

  /** Ends anything lazy about `volume` (removed, or its migration aborted): its copy stops, its state file goes. */
  async forget(volume: string): Promise<void> {
    for (const lv of this.vms.values()) {
      if (!lv.volumes.includes(volume) || lv.state === 'complete') continue;
      lv.stopped = true;
      await lv.running;
      this.vms.delete(lv.vm);
    }
    if (this.store.describe(volume) && this.store.absentOf(volume)) this.store.setAbsent(volume, undefined);
    fs.rmSync(this.file(volume), { force: true });
  }

  /**
   * At daemon start (after incoming VMs that never ran were removed):
   * loads the state files, clears the bits of blocks written since the
   * last checkpoint, and resumes the copies. Returns the VMs resumed.
   */
  async load(): Promise<string[]> {
    let files: string[];
    try { files = fs.readdirSync(this.dir).filter((f) => f.endsWith('.dlzy')); } catch { return []; }
    const byVm = new Map<string, { source: LazySource; volumes: string[]; absent: AbsentBlocks[] }>();
    for (const f of files) {
      const file = path.join(this.dir, f);
      let h: StateHeader;
      let ab: AbsentBlocks;
      try {
        ({ header: h, ab } = this.read(file));
      } catch (err) {
        this.log(`lazy copy: cannot read ${file} (${(err as Error).message}): left as it is`);
        continue;
      }
      if (!this.store.describe(h.volume)) { fs.rmSync(file, { force: true }); continue; }
      const ids = await this.store.chunkMap(h.volume);
      for (let b = 0; b < ab.blocks && ab.remaining > 0; b++) if (ab.isAbsent(b) && ids[b] !== 0) ab.clear(b, 1);
      this.store.setAbsent(h.volume, ab);
      if (h.vm === null || h.source === null) {
        this.log(`volume ${h.volume}: ${ab.remaining} blocks absent and no source host (its VM was never handed over): reads of them fail`);
        continue;
      }
      ab.source = new HostChunks(h.source);
      const g = byVm.get(h.vm) ?? { source: h.source, volumes: [], absent: [] };
      g.volumes.push(h.volume);
      g.absent.push(ab);
      byVm.set(h.vm, g);
    }
    for (const [vm, g] of byVm) {
      this.vms.set(vm, { vm, ...g, state: 'waiting', blocksTotal: 0, started: performance.now(), stopped: false });
      const left = Object.values(this.start(vm) ?? {}).reduce((a, n) => a + n, 0);
      this.log(`vm ${vm}: resuming its lazy copy from ${g.source.url} (${left} blocks left)`);
    }
    return [...byVm.keys()];
  }

  /** Stops the copies and saves their progress (daemon stop). */
  async close(): Promise<void> {
    for (const lv of this.vms.values()) lv.stopped = true;
    for (const lv of this.vms.values()) {
      await lv.running;
      if (lv.state !== 'complete') await this.checkpoint(lv).catch((err: Error) => this.log(`vm ${lv.vm}: lazy copy: ${err.message}`));
    }
  }

  /** The background copy of `lv`, then the completion. */
  private async copy(lv: LazyVm): Promise<void> {
    let saved = performance.now();
    let backoff = 0;
    for (const ab of lv.absent) {
      let cursor = 0;
      const worker = async (): Promise<void> => {
        while (!lv.stopped && this.store.absentOf(ab.volume) === ab && ab.remaining > 0) {
          if (backoff > 0) await sleep(backoff);
          const { blocks, end } = ab.next(cursor, BATCH);
          cursor = end >= ab.blocks ? 0 : end;
          if (blocks.length === 0) { await sleep(20); continue; } // (the rest is being fetched by reads)
          try {
            await this.store.fillAbsent(ab.volume, blocks, 'background');
            if (lv.state === 'stalled') this.log(`vm ${lv.vm}: ${lv.source.url} answers again: the lazy copy goes on`);
            lv.state = 'copying';
            backoff = 0;
          } catch (err) {
            if (lv.stopped || this.store.absentOf(ab.volume) !== ab) return;
            if (lv.state !== 'stalled') this.log(`vm ${lv.vm}: lazy copy stalled: ${(err as Error).message}`);
            lv.state = 'stalled';
            backoff = Math.min(MAX_BACKOFF_MS, Math.max(250, backoff * 2));
          }
          if (performance.now() - saved > CHECKPOINT_MS) {
            saved = performance.now();
            await this.checkpoint(lv);
          }
        }
      };
      await Promise.all(Array.from({ length: IN_FLIGHT }, worker));
    }
    if (lv.stopped) return;
    await this.complete(lv);
  }

  /** Saves the progress of `lv`'s volumes: bits taken before a flush, written after it. */
  private checkpoint(lv: LazyVm): Promise<void> {
    lv.checkpointing ??= (async () => {
      try {
        const bits = lv.absent.map((ab) => Uint8Array.from(ab.bits));
        await this.store.flush();
        lv.absent.forEach((ab, i) => { if (this.store.absentOf(ab.volume) === ab) this.save(ab, bits[i], lv.vm, lv.source); });
      } finally {
        lv.checkpointing = undefined;
      }
    })();
    return lv.checkpointing;
  }

  /** Every block is here: the volumes are ordinary ones again, and the source may release its copy. */
  private async complete(lv: LazyVm): Promise<void> {
    await lv.checkpointing;
    await this.store.flush();
    for (const ab of lv.absent) {
      if (this.store.absentOf(ab.volume) === ab) this.store.setAbsent(ab.volume, undefined);
      fs.rmSync(this.file(ab.volume), { force: true });
    }
    lv.state = 'complete';
    lv.finished = performance.now();
    const s = this.status(lv.vm)!;
    this.log(`vm ${lv.vm}: lazy copy from ${lv.source.url} complete: ${s.demandChunks} chunks fetched on demand, `
      + `${s.backgroundChunks} in the background (${s.bytesFetched} bytes) in ${s.seconds} s`);
    const host: RemoteHost = { url: lv.source.url, token: lv.source.token, ...(lv.source.ca ? { ca: Buffer.from(lv.source.ca) } : {}) };
    for (let attempt = 0; ; attempt++) {
      try {
        await requestJson(host, 'POST', `/v1/vms/${encodeURIComponent(lv.vm)}/lazy/done`);
        return;
      } catch (err) {
        if (attempt >= 5) {
          this.log(`vm ${lv.vm}: cannot tell ${lv.source.url} the copy is complete (${(err as Error).message}): `
            + `its volumes ${lv.volumes.join(', ')} stay there until removed`);
          return;
        }
        await sleep(1000 * 2 ** attempt);
      }
    }
  }

  private file(volume: string): string {
    return path.join(this.dir, `${volume}.dlzy`);
  }

  /** Writes the state file of `ab` with bits `bits` (atomically: a temp file, fsync, rename). */
  private save(ab: AbsentBlocks, bits: Uint8Array, vm: string | null, source: LazySource | null): void {
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const header: StateHeader = { version: 1, volume: ab.volume, vm, source, blocks: ab.blocks };
    const { out, body } = frame(MAGIC, header, ab.hashes.length + bits.length);
    ab.hashes.copy(out, body);
    out.set(bits, body + ab.hashes.length);
    const file = this.file(ab.volume);
    const tmp = `${file}.tmp`;
    const fd = fs.openSync(tmp, 'w', 0o600);
    try {
      fs.writeSync(fd, out);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    fs.renameSync(tmp, file);
  }

  private read(file: string): { header: StateHeader; ab: AbsentBlocks } {
    const f = unframe(fs.readFileSync(file), MAGIC, 'lazy state');
    const h = f.header as StateHeader;
    if (h?.version !== 1 || typeof h.volume !== 'string' || !Number.isSafeInteger(h.blocks) || h.blocks <= 0) throw f.bad('header fields');
    const hashBytes = h.blocks * HASH_SIZE;
    if (f.body.length !== hashBytes + Math.ceil(h.blocks / 8)) throw f.bad('body length');
    const ab = new AbsentBlocks(h.volume, h.blocks, Buffer.from(f.body.subarray(0, hashBytes)), new Uint8Array(f.body.subarray(hashBytes)));
    return { header: h, ab };
  }
}
