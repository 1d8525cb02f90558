/**
 * The store: a directory with an LMDB index and segment files (appended to;
 * slots are rewritten in place and landed into only as segments.ts and
 * segment-landings.ts allow), owned by one process at a time.
 *
 *   DIR/index/      LMDB environment (index-db.ts)
 *   DIR/segments/   segment files (layout: segment-file.ts; state: segments.ts and the files it names)
 *   DIR/lock.pid    pid of the owner (informational; the lock is lock.ts)
 *   DIR/reserve     the space reserve, given back on a full disk (space.ts)
 * The directory is 0700 and its files 0600, whatever the umask (permissions.ts).
 *
 * The Store opens and closes it, changes the catalog (volumes,
 * snapshots, branches) and answers queries; the parts it owns do the rest:
 * the block engine (engine.ts), the write-back (writeback.ts), the segment
 * files (segments.ts), flushing (flush.ts). State here: the catalog, the
 * open handles per name, and whether the store is closed.
 *
 * Ordering rules:
 *  - flush: sync segments, then commit the write-back generation (flush.ts,
 *    commit.ts); flushes run one after another, each covering every write
 *    acknowledged before it was called;
 *  - snapshot: flush until the volume has no pending writes, bump the head
 *    version synchronously, then commit the catalog change; the commit queue
 *    keeps it ahead of any later flush;
 *  - remove refuses while a handle is open or a branch depends on it;
 *  - a full disk (space.ts): writes are admitted above a free-space floor
 *    only; what must finish (a flush, a catalog change, GC, close) first
 *    gets room, from the space reserve when the disk is short, and is tried
 *    once more after an ENOSPC with the reserve released.
 *
 * About 690 lines, on purpose: this file is the Store class's public
 * methods, each a short delegation to the module that does the work
 * (catalog, engine, writeback, gc, verify, locality, absent blocks; the
 * write watches a migration takes are the write-back's too); splitting the
 * class by concern would scatter one object's surface over several files.
 */
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE, FORMAT_VERSION, MAX_VOLUME_SIZE, WRITEBACK_IDLE_MS, WRITEBACK_INTERVAL_MS } from './constants.js';
import { DormantError } from './errors.js';
import type { LogFn } from './log.js';
import { xxh3, type HashFunction } from './hash.js';
import { Committer, indexExists, openIndexChecked, type IndexDbs } from './index-db.js';
import { Catalog, checkName, splitName, type PersistOps } from './catalog.js';
import { SegmentFiles } from './segments.js';
import { Writeback } from './writeback.js';
import { BlockEngine } from './engine.js';
import { Flusher } from './flush.js';
import { Fingerprints } from './fingerprints.js';
import { Volume, type VolumeHost } from './volume.js';
import { acquireStoreLock, type StoreLock } from './lock.js';
import { computeInfo, computeList, computeStats } from './usage.js';
import { collectGarbage } from './gc.js';
import { StoreLocality, type RelocateResult } from './locality.js';
import { checkIndex } from './check.js';
import { verifyChunks } from './verify.js';
import { checkAccess, restrictUmask, tightenStore } from './permissions.js';
import { parseChunkKey } from './keys.js';
import { SpaceGuard, type SpaceOptions } from './space.js';
import { ChunkInventory, type BlockHashList } from './inventory.js';
import type { AbsentBlocks, FillKind } from './absent.js';
import { isNoSpace } from './segment-file.js';
import type {
  DataReport, FingerprintEntry, GcResult, StoreStats, VerifyOptions, VolumeEntry, VolumeHandle, VolumeInfo, VolumeKind,
  VolumeSummary,
} from './types.js';

/** Options for opening a store. */
export interface StoreOptions {
  /** Chunk-naming function; tests inject a colliding one. Default xxh3-128. */
  hash?: HashFunction;
  /**
   * Pending writes are flushed in the background once the oldest is this
   * many ms old (0 disables background flushes by time; default 30 s).
   */
  writebackIntervalMs?: number;
  /** ...or once no write came for this many ms (default 1 s; capped at writebackIntervalMs). */
  writebackIdleMs?: number;
  /**
   * Segment reads of request handlers: 'adaptive' (default: synchronous
   * while the page cache serves them, libuv's pool in parallel after slow
   * reads) or 'pool' (always the pool: for slow media, and for tests).
   */
  readMode?: 'adaptive' | 'pool';
  /** The free-space floor and the space reserve (defaults from the file system's size: space.ts). */
  space?: SpaceOptions;
  /** One line about the store's state (space: writes refused, the reserve released or re-created; background flush failures); default: nothing. */
  log?: LogFn;
  /**
   * Relocate scattered ranges of disk volumes in the background as reads
   * find them (locality.ts): true, or the pace in bytes per second
   * (true: RELOCATE_BYTES_PER_S). Default off; the daemon turns it on.
   */
  relocate?: boolean | number;
}

/** Room a catalog change asks for before it commits (a few pages of the index). */
const CATALOG_ROOM_BYTES = 1024 * 1024;

/** A versioned copy-on-write block store. */
export class Store implements VolumeHost {
  readonly engine: BlockEngine;
  readonly catalog = new Catalog();
  private readonly writeback = new Writeback();
  private readonly inventory: ChunkInventory;
  private readonly fingerprintsDb: Fingerprints;
  private readonly committer: Committer;
  private readonly segments: SegmentFiles;
  private readonly openHandles = new Map<string, number>();
  private readonly flusher: Flusher;
  /** Relocation (in the background if StoreOptions.relocate), locality figures, and GC's exclusion with relocation. */
  private readonly locality: StoreLocality;
  private closed = false;
  /** The data check running (verify.ts), which close() stops and waits for. */
  private verifying: Promise<DataReport> | null = null;
  private closing = false;
  /**
   * Mount points of the FUSE views of this store that this process serves
   * (src/fuse adds and removes them): import and export refuse paths in them.
   */
  readonly views = new Set<string>();

  private constructor(readonly dir: string, private readonly dbs: IndexDbs, private readonly lock: StoreLock,
    private readonly hash: HashFunction, intervalMs: number, idleMs: number, readMode: StoreOptions['readMode'],
    /** The free-space floor and the space reserve. */
    readonly space: SpaceGuard, log: LogFn, relocate: StoreOptions['relocate']) {
    this.committer = new Committer(dbs);
    this.segments = new SegmentFiles(path.join(dir, 'segments'), hash, () => space.release('finish a segment write'));
    this.catalog.load(dbs.catalog.getRange({}) as Iterable<{ key: string; value: unknown }>);
    this.segments.resume();
    this.fingerprintsDb = new Fingerprints(dbs);
    let nextChunk = 1;
    for (const key of dbs.chunks.getKeys({ reverse: true, limit: 1 })) nextChunk = parseChunkKey(key as Buffer) + 1;
    this.engine = new BlockEngine(dbs, this.catalog, this.segments, this.writeback, hash, this.fingerprintsDb, nextChunk,
      readMode === 'pool');
    this.inventory = new ChunkInventory(dbs, this.writeback, this.engine);
    // Until the hash filter is built, writes consult the hash index for every block.
    this.engine.filter.build().catch((err: unknown) => {
      if (!this.closed) process.emitWarning(`dormant: building the hash filter failed: ${(err as Error).message}`);
    });
    this.flusher = new Flusher({
      dbs, catalog: this.catalog, engine: this.engine, writeback: this.writeback, segments: this.segments,
      committer: this.committer, fingerprints: this.fingerprintsDb, closed: () => this.closed,
      makeRoom: (need, why) => space.makeRoom(need, why), releaseReserve: (why) => space.release(why), log,
    }, intervalMs, idleMs);
    this.locality = new StoreLocality({
      dbs, catalog: this.catalog, blockMap: this.engine.blockMap, segments: this.segments, writeback: this.writeback,
      engine: this.engine, hash,
      // No cache is forgotten: block look-ups do not change, and relocate() moves the cached chunk places.
      commit: (body, before) => this.commitWithRoom(body, 'commit a relocation', before),
      freeBytes: () => space.freeBytes(),
    }, relocate, (message) => log(`store: ${message}`, { level: 'warn' }), () => this.closing || this.closed);
    if (this.locality.background) this.engine.onScattered = (t, first, n) => this.locality.noteScattered(t.name, first, n);
  }

  /** Builds the Store over an open index; closes the index if that fails. */
  private static async construct(dir: string, dbs: IndexDbs, lock: StoreLock, opts: StoreOptions): Promise<Store> {
    try {
      const log = opts.log ?? (() => undefined);
      return new Store(dir, dbs, lock, opts.hash ?? xxh3, opts.writebackIntervalMs ?? WRITEBACK_INTERVAL_MS,
        opts.writebackIdleMs ?? WRITEBACK_IDLE_MS, opts.readMode, new SpaceGuard(dir, opts.space, log), log, opts.relocate);
    } catch (err) {
      await dbs.env.close();
      throw err;
    }
  }

  /** Creates a new store in `dir` (made if missing) and opens it. EEXIST if one is there. */
  static async init(dir: string, opts: StoreOptions = {}): Promise<Store> {
    const abs = path.resolve(dir);
    restrictUmask();
    checkAccess(abs);
    if (indexExists(abs)) throw new DormantError('EEXIST', `a store already exists at ${abs}`, { path: abs });
    fs.mkdirSync(path.join(abs, 'segments'), { recursive: true });
    tightenStore(abs);
    const lock = await acquireStoreLock(abs);
    try {
      const dbs = await openIndexChecked(abs, true);
      await dbs.env.transaction(() => {
        dbs.meta.put('formatVersion', FORMAT_VERSION);
        dbs.meta.put('created', new Date().toISOString());
      });
      await dbs.env.flushed;
      return await Store.construct(abs, dbs, lock, opts);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  /** Opens an existing store; takes its single-writer lock (ELOCKED if taken). */
  static async open(dir: string, opts: StoreOptions = {}): Promise<Store> {
    const abs = path.resolve(dir);
    restrictUmask();
    checkAccess(abs);
    if (!indexExists(abs)) {
      throw new DormantError('ENOTINIT', `store not initialised at ${abs} (run: dormant init)`, { path: abs });
    }
    const lock = await acquireStoreLock(abs);
    try {
      tightenStore(abs);
      fs.mkdirSync(path.join(abs, 'segments'), { recursive: true });
      const dbs = await openIndexChecked(abs, false);
      return await Store.construct(abs, dbs, lock, opts);
    } catch (err) {
      await lock.release();
      throw err;
    }
  }

  /** Creates an empty volume of `size` bytes. */
  async createVolume(name: string, size: number, kind: VolumeKind = 'disk'): Promise<void> {
    this.live();
    checkSize(size);
    checkKind(kind);
    await this.persist(this.catalog.addVolume(name, size, kind, null, null));
  }

  /** Freezes `volume` as `volume@snap` in O(1); returns the snapshot's name. */
  async snapshot(volume: string, snap: string): Promise<string> {
    this.live();
    checkName(snap, 'snapshot name');
    const lineage = this.catalog.resolve(volume).lineage;
    if (splitName(volume).snap !== null) throw new DormantError('EINVAL', `cannot snapshot a snapshot ('${volume}')`);
    this.refuseAbsent(volume, 'snapshot');
    if (this.catalog.exists(`${volume}@${snap}`)) {
      throw new DormantError('EEXIST', `snapshot '${volume}@${snap}' already exists`, { volume });
    }
    // Pending writes belong to the version being frozen: commit them first.
    for (let i = 0; this.writeback.hasLineage(lineage); i++) {
      if (i > 100) throw new DormantError('EBUSY', `volume '${volume}' is being written too fast to snapshot`);
      await this.flush();
    }
    await this.persist(this.catalog.addSnapshot(volume, snap));
    return `${volume}@${snap}`;
  }

  /** Creates writable volume `name` whose content is snapshot `from` (`vol@snap`), in O(1). */
  async branch(name: string, from: string): Promise<void> {
    this.live();
    if (splitName(from).snap === null) {
      throw new DormantError('EINVAL',
        `'${from}' is not a snapshot: branch from volume@snap (make one with: dormant snapshot ${from} <snap>)`);
    }
    const src = this.catalog.resolve(from);
    const parent = this.catalog.pointOf(from);
    await this.persist(this.catalog.addVolume(name, src.size, src.kind, parent, from));
  }

  /** Removes a volume (with its snapshots) or a snapshot; returns the names removed. */
  async remove(name: string): Promise<string[]> {
    this.live();
    const { snap } = splitName(name);
    const targets = snap === null ? [name, ...this.catalog.snapshotsOf(name)] : [name];
    this.catalog.resolve(name);
    for (const t of targets) {
      const open = this.openHandles.get(t) ?? 0;
      if (open > 0) throw new DormantError('EBUSY', `'${t}' is in use (${open} open handle${open > 1 ? 's' : ''})`, { volume: t });
      const deps = this.catalog.branchesOf(t);
      if (deps.length > 0) {
        throw new DormantError('EBUSY',
          `cannot remove '${name}': ${deps.length === 1 ? 'branch' : 'branches'} ${deps.join(', ')} depend${deps.length === 1 ? 's' : ''} on '${t}'`,
          { volume: t });
      }
    }
    if (snap === null) {
      const lineage = this.catalog.resolve(name).lineage;
      await this.persist(this.catalog.removeVolume(name));
      this.engine.absent.delete(name);
      this.writeback.dropLineage(lineage);
    } else {
      await this.persist(this.catalog.removeSnapshot(name));
    }
    return targets;
  }

  /** Renames a volume that has no snapshots, no branches and no open handle (a received volume's commit). */
  async rename(from: string, to: string): Promise<void> {
    this.live();
    if ((this.openHandles.get(from) ?? 0) > 0) throw new DormantError('EBUSY', `'${from}' is in use`, { volume: from });
    this.refuseAbsent(from, 'rename');
    await this.persist(this.catalog.renameVolume(from, to));
  }

  /** Grows a volume (shrinking is refused: data could be lost). */
  async resize(name: string, size: number): Promise<void> {
    this.live();
    checkSize(size);
    const cur = this.catalog.resolve(name);
    if (cur.readOnly) throw new DormantError('EROFS', `'${name}' is a read-only snapshot`, { volume: name });
    if (size < cur.size) {
      throw new DormantError('EINVAL', `cannot shrink '${name}' from ${cur.size} to ${size} bytes: volumes only grow`, { volume: name });
    }
    await this.persist(this.catalog.setSize(name, size));
  }

  /** Opens a volume (`vol`, writable) or snapshot (`vol@snap`, read-only). */
  async openVolume(name: string): Promise<VolumeHandle> {
    this.live();
    const r = this.catalog.resolve(name);
    this.openHandles.set(name, (this.openHandles.get(name) ?? 0) + 1);
    return new Volume(this, name, r.kind, r.readOnly);
  }

  /** Blocks written (acknowledged) and not yet committed by a flush. */
  get pendingBlocks(): number {
    return this.writeback.size;
  }

  /** True when `name` is a volume or snapshot of this store. */
  has(name: string): boolean {
    return this.catalog.exists(name);
  }

  /** One volume or snapshot without space accounting (cheap); null when unknown. */
  describe(name: string): VolumeEntry | null {
    if (!this.catalog.exists(name)) return null;
    const r = this.catalog.resolve(name);
    const rec = r.readOnly ? this.catalog.snapshots.get(name)! : this.catalog.volumes.get(name)!;
    return {
      name, type: r.readOnly ? 'snapshot' : 'volume', kind: r.kind, size: r.size,
      origin: r.readOnly ? null : this.catalog.lineage(r.lineage).origin, created: rec.created,
    };
  }

  /** Every volume and snapshot without space accounting (cheap), volumes each followed by their snapshots. */
  entries(): VolumeEntry[] {
    return [...this.catalog.volumes.keys()].sort()
      .flatMap((v) => [v, ...this.catalog.snapshotsOf(v)])
      .map((n) => this.describe(n)!);
  }

  /** Every volume and snapshot with its space accounting. */
  async list(): Promise<VolumeSummary[]> {
    this.live();
    await this.flush();
    return computeList(this.catalog, this.engine.blockMap, this.dbs);
  }

  /** Details of one volume or snapshot. */
  async info(name: string): Promise<VolumeInfo> {
    this.live();
    this.catalog.resolve(name);
    await this.flush();
    return {
      ...computeInfo(this.catalog, this.engine.blockMap, this.dbs, name, this.openHandles.get(name) ?? 0),
      locality: this.locality.measure([name]),
    };
  }

  /** Store totals. */
  async stats(): Promise<StoreStats> {
    this.live();
    await this.flush();
    return {
      ...computeStats(this.dir, this.catalog, this.engine.blockMap, this.dbs, this.segments),
      locality: this.locality.measure([...this.catalog.volumes.keys()]),
      relocation: this.locality.stats(),
    };
  }

  /**
   * Copies the scattered chunks of `name`'s blocks (all, or `count` from
   * `first`) to consecutive slots, in block order (locality.ts); with
   * `force`, even ranges that lie in few runs. Committed chunks of one
   * reference only; a batch of ranges per commit.
   */
  async relocate(name: string, opts: { first?: number; count?: number; force?: boolean } = {}): Promise<RelocateResult> {
    this.live();
    return this.locality.relocate(name, Math.ceil(this.catalog.resolve(name).size / BLOCK_SIZE), opts);
  }

  /** Reclaims unreferenced chunks and compacts sparse segments. */
  async gc(): Promise<GcResult> {
    this.live();
    // Below the floor GC is what wins space back: it may use the reserve.
    this.space.makeRoom(this.space.floor, 'let gc run');
    await this.flush();
    try {
      return await this.locality.exclusive(() => collectGarbage({
        dbs: this.dbs, catalog: this.catalog, blockMap: this.engine.blockMap, segments: this.segments,
        writeback: this.writeback, engine: this.engine,
        commit: async (body, before) => {
          try {
            return await this.commitWithRoom(body, 'let gc commit', before);
          } finally {
            this.engine.invalidate();
          }
        },
        freeBytes: () => this.space.freeBytes(),
      }));
    } finally {
      this.space.settle();
    }
  }

  /** Consistency check of the index and segments (flushes first); one line per problem. */
  async check(): Promise<string[]> {
    this.live();
    await this.flush();
    await this.committer.idle();
    return checkIndex(this.dbs, this.catalog, this.segments);
  }

  /**
   * Reads every committed chunk back and checks it against its hash
   * (flushes first); with `repair`, rewrites damaged chunks from good
   * copies of their content (verify.ts). One run at a time.
   */
  async verifyData(opts: VerifyOptions = {}): Promise<DataReport> {
    this.live();
    if (this.verifying) throw new DormantError('EBUSY', 'a data check or scrub of this store is already running');
    const run = (async () => {
      await this.flush();
      await this.committer.idle();
      return verifyChunks({
        dbs: this.dbs, catalog: this.catalog, blockMap: this.engine.blockMap, segments: this.segments, engine: this.engine,
        hash: this.hash, closed: () => this.closing,
        commit: async (body, before) => {
          try {
            return await this.committer.commit(body, before);
          } finally {
            this.engine.invalidate();
          }
        },
      }, opts);
    })();
    this.verifying = run;
    try {
      return await run;
    } finally {
      this.verifying = null;
    }
  }

  /** Chunks read by client `label`, most read first. */
  fingerprints(label: string): FingerprintEntry[] {
    const out: FingerprintEntry[] = [];
    for (const [id, count] of this.fingerprintsDb.counts(label)) {
      let hash: Buffer;
      try { hash = this.engine.chunkLocation(id).hash; } catch { continue; } // chunk since collected
      out.push({ hash: hash.toString('hex'), count });
    }
    return out.sort((a, b) => b.count - a.count || (a.hash < b.hash ? -1 : 1));
  }

  /** Chunk id -> read count of client `label` (ids compare contents: one chunk per distinct block). */
  fingerprintIds(label: string): Map<number, number> {
    this.live();
    return this.fingerprintsDb.counts(label);
  }

  /**
   * Chunk id of every block of `name` as a reader sees it now (0 = hole;
   * pending writes included). Equal ids mean equal bytes: writes are
   * deduplicated by hash and byte comparison. Resolved in slices so a big
   * volume does not hold the event loop for long.
   */
  async chunkMap(name: string): Promise<Float64Array> {
    this.live();
    const t = this.engine.target(name);
    const blocks = Math.ceil(this.catalog.resolve(name).size / BLOCK_SIZE);
    const out = new Float64Array(blocks);
    const SLICE = 16384;
    for (let first = 0; first < blocks; first += SLICE) {
      const ids = this.engine.resolve(t, first, Math.min(SLICE, blocks - first));
      out.set(ids, first);
      if (first + SLICE < blocks) await new Promise((r) => setImmediate(r));
    }
    return out;
  }

  /**
   * Records the blocks of volume `name` written from now on (new content,
   * rewrites in place, zeroes): what a migration's patch sends. Chunk ids
   * alone cannot tell: an uncommitted chunk rewritten in place keeps its id.
   * `blocks()` gives them sorted (EBUSY when the volume's lineage changed
   * meanwhile: it was removed and made again), `count()` how many;
   * `close()` ends the watch.
   */
  watchWrites(name: string): { blocks(): number[]; count(): number; close(): void } {
    this.live();
    const lineage = this.engine.target(name).point.lineage;
    const into = new Set<number>();
    this.writeback.watch(lineage, into);
    return {
      blocks: () => {
        if (this.engine.target(name).point.lineage !== lineage) {
          throw new DormantError('EBUSY', `volume '${name}' was replaced while its writes were watched`);
        }
        return [...into].sort((a, b) => a - b);
      },
      count: () => into.size,
      close: () => this.writeback.unwatch(lineage, into),
    };
  }

  /** Chunk ids (0 = hole) of blocks `blocks` (sorted) of `name` as a reader sees them now. */
  chunkIdsOf(name: string, blocks: readonly number[]): Float64Array {
    this.live();
    const t = this.engine.target(name);
    const out = new Float64Array(blocks.length);
    // Long runs resolve by cache pages, scattered blocks one index seek each.
    for (let i = 0; i < blocks.length;) {
      let n = 1;
      while (i + n < blocks.length && blocks[i + n] === blocks[i] + n) n++;
      if (n >= 64) out.set(this.engine.resolve(t, blocks[i], n), i);
      else for (let k = 0; k < n; k++) out[i + k] = this.engine.resolveOne(t, blocks[i + k]);
      i += n;
    }
    return out;
  }

  /**
   * The content of `name` as block hashes (pending writes included), with
   * the snapshot its lineage was branched from: what another store needs to
   * rebuild it from the chunks it lacks (src/migrate).
   */
  async blockHashes(name: string): Promise<BlockHashList & { origin: string | null; ids: Float64Array }> {
    const ids = await this.chunkMap(name);
    const list = await this.inventory.blockHashes(ids);
    return { ...list, ids, origin: this.catalog.lineage(this.catalog.resolve(name).lineage).origin };
  }

  /** The hashes of chunks `ids` (from `chunkMap`; 0 = hole), in order, as a BlockHashList of that many blocks. */
  chunkHashes(ids: Float64Array): Promise<BlockHashList> {
    this.live();
    return this.inventory.blockHashes(ids);
  }

  /** One byte per 16-byte hash: 1 when this store holds that chunk. */
  haveChunks(hashes: Buffer): Uint8Array {
    this.live();
    return this.inventory.has(hashes);
  }

  /** Reads the chunk named hashes[at, at + 16) into out[outAt...], checked; false when the store has no good copy. */
  readChunkByHash(hashes: Buffer, at: number, out: Buffer, outAt: number): boolean {
    this.live();
    return this.inventory.read(hashes, at, out, outAt);
  }

  /** Client labels with recorded reads. */
  fingerprintLabels(): string[] {
    return this.fingerprintsDb.labels();
  }

  /** Makes every write acknowledged so far durable. */
  flush(withPrints = false): Promise<void> {
    return this.flusher.flush(withPrints);
  }

  /** Flushes, stops background work, closes files and releases the lock. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closing = true;
    await this.locality.stop();
    await this.verifying?.catch(() => undefined); // it stops at its next batch
    this.flusher.stopTimer();
    this.engine.filter.close();
    // A final flush that fails (a disk error; no space even with the reserve
    // released) does not keep the store open: everything is closed and
    // released all the same, and its error is thrown afterwards.
    let failure: unknown;
    try {
      await this.flush(true);
    } catch (err) {
      failure = err;
    }
    const lost = this.writeback.size;
    await this.committer.idle();
    await this.segments.settled();
    this.closed = true;
    this.space.close();
    try {
      this.segments.close();
    } catch (err) {
      failure ??= err;
    }
    await this.dbs.env.close();
    await this.lock.release();
    if (failure !== undefined) {
      const code = isNoSpace(failure) ? 'ENOSPC' : 'EIO';
      throw new DormantError(code, `the final flush failed: ${(failure as Error).message}; ${lost} block${lost === 1 ? '' : 's'} `
        + 'written since the last flush that succeeded are lost (the store is consistent as of that flush)', { cause: failure });
    }
  }

  /**
   * VolumeHost: schedules write-back when enough is pending, and makes the
   * writer wait for it past twice that (a writer that never yields would
   * otherwise grow the pending set without bound).
   */
  afterWrite(): Promise<void> | undefined {
    return this.flusher.afterWrite();
  }

  /**
   * Makes `ab`'s blocks of volume `name` absent (absent.ts: their reads
   * fetch them from its source), or, with undefined, ends that (every
   * block is here). The blocks must read as holes; a volume with absent
   * blocks cannot be snapshotted or renamed (its snapshot would freeze
   * holes), and removing it ends them.
   */
  setAbsent(name: string, ab: AbsentBlocks | undefined): void {
    this.live();
    const r = this.catalog.resolve(name);
    if (r.readOnly) throw new DormantError('EROFS', `'${name}' is a snapshot: only a volume can have absent blocks`, { volume: name });
    if (ab === undefined) this.engine.absent.delete(name);
    else this.engine.absent.set(name, ab);
    this.engine.invalidate();
  }

  /** The absent blocks of volume `name`, if it has any registered (setAbsent). */
  absentOf(name: string): AbsentBlocks | undefined {
    return this.engine.absent.get(name);
  }

  /** VolumeHost: fetches absent blocks of `name` and writes them (see AbsentBlocks.fill). */
  async fillAbsent(name: string, blocks: readonly number[], kind: FillKind): Promise<void> {
    const ab = this.engine.absent.get(name);
    if (ab === undefined || blocks.length === 0) return;
    await ab.fill(blocks, kind, (b, chunk) => {
      if (this.closed || this.engine.absent.get(name) !== ab) return;
      this.engine.writeBlocks(this.engine.target(name), b, chunk);
    });
    await this.afterWrite();
  }

  private refuseAbsent(name: string, what: string): void {
    const ab = this.engine.absent.get(name);
    if (ab !== undefined && ab.remaining > 0) {
      throw new DormantError('EBUSY', `cannot ${what} '${name}': ${ab.remaining} of its blocks are still arriving from `
        + `${ab.source?.where ?? 'another host'} (lazy migration; dormant vm status shows the copy)`, { volume: name });
    }
  }

  /** VolumeHost: a handle closed. */
  release(name: string): void {
    const n = (this.openHandles.get(name) ?? 1) - 1;
    if (n > 0) this.openHandles.set(name, n); else this.openHandles.delete(name);
  }

  private async persist(ops: PersistOps): Promise<void> {
    // Cache keys name (lineage, version) points, which a catalog change never
    // reuses, so this is defensive: no look-up cached across it survives.
    this.engine.invalidate();
    const body = () => {
      for (const [k, v] of ops.put) this.dbs.catalog.put(k, v);
      for (const k of ops.remove) this.dbs.catalog.remove(k);
    };
    try {
      this.space.makeRoom(CATALOG_ROOM_BYTES, 'commit a catalog change');
      await this.commitWithRoom(body, 'commit a catalog change');
    } finally {
      this.engine.invalidate();
    }
  }

  /** `committer.commit`, tried once more with the space reserve released when it failed for want of space. */
  private async commitWithRoom<T>(body: () => T, why: string, before?: () => Promise<void>): Promise<T> {
    try {
      return await this.committer.commit(body, before);
    } catch (err) {
      if (!isNoSpace(err) || !this.space.release(why)) throw err;
      return this.committer.commit(body, before);
    }
  }

  private live(): void {
    if (this.closed) throw new DormantError('ECLOSED', 'store is closed');
  }
}

function checkSize(size: number): void {
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_VOLUME_SIZE) {
    throw new DormantError('EINVAL', `bad size ${size}: must be between 1 byte and 1 PiB`);
  }
}

function checkKind(kind: string): void {
  if (kind !== 'disk' && kind !== 'memory') {
    throw new DormantError('EINVAL', `bad kind '${kind}': use disk or memory`);
  }
}
