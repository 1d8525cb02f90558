/**
 * Byte-range access to one volume or snapshot (the VolumeHandle every front
 * end uses). Validates ranges at the edge (ERANGE / EINVAL / EROFS), turns
 * them into whole-block engine calls, and does read-modify-write for the
 * partial blocks at either end. A FUA write resolves after a store flush.
 *
 * State per handle: the target and size as of the catalog's epoch, the
 * landing buffers handed out and not yet written, and the tail of the
 * mutations waiting their turn (`ordering`).
 *
 * Writes are admitted by the store's free-space floor first (space.ts): a
 * write refused there fails with ENOSPC before anything of it is applied
 * (zeroing and trimming take no space and are never refused).
 *
 * Absent blocks (absent.ts, a volume arriving in lazy mode): a read fills
 * the absent blocks it covers first (and a few after them: reads go on
 * where they stopped); a write that covers part of an absent block fills
 * that block first (its other bytes are needed), a whole-block write
 * needs nothing (the engine clears its bits as it applies).
 *
 * Ordering rule: a handle's mutations apply in the order they came. A big
 * write is hashed on libuv's pool first; while one is, later mutations of
 * the handle queue behind it (`inOrder`) instead of applying at once.
 */
import { BLOCK_SIZE, HASH_SIZE } from './constants.js';
import type { Location } from './segments.js';
import { DormantError } from './errors.js';
import type { BlockEngine, Target } from './engine.js';
import type { Catalog } from './catalog.js';
import type { FillKind } from './absent.js';
import type { Extent, ReadOptions, StoredRange, VolumeHandle, VolumeKind, WriteOptions } from './types.js';

/** Writes of at least this many bytes are hashed on libuv's pool (smaller ones cost less than the hop). */
const ASYNC_HASH_BYTES = 256 * 1024;
/** Writes of at least this many bytes may land (VolumeHandle.landing). */
const LANDING_BYTES = 256 * 1024;
/** Absent blocks a read fills beyond its own (the next reads are likely there). */
const FILL_AHEAD_BLOCKS = 32;

/** What a handle needs from its store. */
export interface VolumeHost {
  readonly engine: BlockEngine;
  readonly catalog: Catalog;
  flush(): Promise<void>;
  /** Called after every mutation; a returned promise makes the writer wait (backpressure). */
  afterWrite(): Promise<void> | undefined;
  /** Fetches absent blocks `blocks` of volume `name` (absent.ts) and writes them; EIO when their source cannot send them. */
  fillAbsent(name: string, blocks: readonly number[], kind: FillKind): Promise<void>;
  /** Called once when the handle closes. */
  release(name: string): void;
  /** The free-space floor: `admit` throws ENOSPC for a write that would go under it. */
  readonly space: { admit(bytes: number, kind: VolumeKind, volume?: string): void };
}

/** A VolumeHandle over the store's block engine. */
export class Volume implements VolumeHandle {
  private closed = false;
  /** The last mutation queued behind a write still being hashed (null: none). */
  private ordering: Promise<void> | null = null;
  /** Landing buffers handed out and not yet written or abandoned: where they lie. */
  private readonly landings = new Map<Buffer, Location>();
  /** Target and size as of catalog epoch `epoch` (a request's look-ups of both cost more than its block work). */
  private cached: { epoch: number; target: Target; size: number } | null = null;

  constructor(private readonly host: VolumeHost, readonly name: string, readonly kind: VolumeKind,
    readonly readOnly: boolean) {}

  get size(): number {
    return this.current().size;
  }

  /** Target and size now: recomputed when the catalog changed (a snapshot moves the head's version). */
  private current(): { target: Target; size: number } {
    const c = this.cached;
    const epoch = this.host.catalog.epoch;
    if (c !== null && c.epoch === epoch) return c;
    const size = this.host.catalog.resolve(this.name).size;
    const fresh = { epoch, target: this.host.engine.target(this.name), size };
    this.cached = fresh;
    return fresh;
  }

  async read(offset: number, length: number, opts: ReadOptions = {}): Promise<Buffer> {
    let t = this.check(offset, length, false);
    if (opts.into !== undefined && opts.into.length !== length) {
      throw new DormantError('EINVAL', `read buffer of ${opts.into.length} bytes for ${length}`, { volume: this.name, offset, length });
    }
    if (length === 0) return opts.into ?? Buffer.alloc(0);
    const first = Math.floor(offset / BLOCK_SIZE);
    const last = Math.floor((offset + length - 1) / BLOCK_SIZE);
    const n = last - first + 1;
    const ab = this.host.engine.absentIn(t, first, n);
    if (ab !== undefined) {
      await this.host.fillAbsent(this.name, ab.within(first, n + FILL_AHEAD_BLOCKS), 'demand');
      t = this.check(offset, length, false);
    }
    const aligned = offset % BLOCK_SIZE === 0 && length === n * BLOCK_SIZE;
    if (aligned && opts.view === true) {
      const view = this.host.engine.readView(t, first, n, opts.label, opts.stored);
      if (view !== null) return view;
    }
    const out = opts.into ?? Buffer.allocUnsafe(length);
    if (aligned) {
      await this.host.engine.readBlocksAsync(t, first, n, out, 0, opts.label);
      return out;
    }
    const tmp = Buffer.allocUnsafe(n * BLOCK_SIZE);
    await this.host.engine.readBlocksAsync(t, first, n, tmp, 0, opts.label);
    const skip = offset - first * BLOCK_SIZE;
    tmp.copy(out, 0, skip, skip + length);
    return out;
  }

  readView(offset: number, length: number, opts: ReadOptions = {}): Buffer | null {
    const t = this.check(offset, length, false);
    if (length === 0 || offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0) return null;
    return this.host.engine.readView(t, offset / BLOCK_SIZE, length / BLOCK_SIZE, opts.label, opts.stored);
  }

  readFile(offset: number, length: number, opts: ReadOptions = {}): StoredRange | null {
    const t = this.check(offset, length, false);
    if (length === 0 || offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0) return null;
    return this.host.engine.readFile(t, offset / BLOCK_SIZE, length / BLOCK_SIZE, opts.label);
  }

  writeNow(offset: number, data: Buffer): boolean | Promise<void> {
    const t = this.check(offset, data.length, true);
    if (this.ordering !== null || data.length >= ASYNC_HASH_BYTES || data.length === 0) return false;
    if (this.absentEdges(t, offset, data.length).length > 0) return false;
    this.host.space.admit(data.length, this.kind, this.name);
    this.writeRange(t, offset, data);
    return this.host.afterWrite() ?? true;
  }

  landing(offset: number, length: number): Buffer | null {
    this.check(offset, length, true);
    if (length < LANDING_BYTES || offset % BLOCK_SIZE !== 0 || length % BLOCK_SIZE !== 0) return null;
    try {
      this.host.space.admit(length, this.kind, this.name);
    } catch {
      return null; // (the ordinary write path reports ENOSPC)
    }
    const l = this.host.engine.land(length / BLOCK_SIZE);
    if (l === null) return null;
    this.landings.set(l.buffer, l.loc);
    return l.buffer;
  }

  abandon(buffer: Buffer): void {
    const loc = this.landings.get(buffer);
    if (loc === undefined) return;
    this.landings.delete(buffer);
    this.host.engine.abandonLanding(loc, buffer.length / BLOCK_SIZE);
  }

  async write(offset: number, data: Buffer, opts: WriteOptions = {}): Promise<void> {
    const landed = this.landings.get(data);
    if (landed !== undefined) return this.writeLanded(offset, data, landed, opts);
    let t = this.check(offset, data.length, true);
    if (data.length > 0) this.host.space.admit(data.length, this.kind, this.name);
    const edges = this.absentEdges(t, offset, data.length);
    if (edges.length > 0) {
      await this.host.fillAbsent(this.name, edges, 'demand');
      t = this.check(offset, data.length, true);
    }
    const hashing = data.length >= ASYNC_HASH_BYTES && offset % BLOCK_SIZE === 0 && data.length % BLOCK_SIZE === 0
      ? this.host.engine.hashAsync(data) : null;
    if (hashing !== null) {
      // Hashed on libuv's pool while this thread serves other requests;
      // applied in arrival order after every earlier mutation of this handle.
      // (A failure is reported by the await below, perhaps after earlier writes: not unhandled meanwhile.)
      hashing.catch(() => undefined);
      // The blocks' bytes are written on the pool too; the next mutation need not wait for that.
      let landing: Promise<void> | undefined;
      await this.inOrder(async () => {
        const hashed = await hashing;
        landing = this.host.engine.writeBlocks(this.check(offset, data.length, true), offset / BLOCK_SIZE, data, hashed, true);
      });
      if (landing !== undefined) await landing;
    } else if (data.length > 0) {
      if (this.ordering === null) this.writeRange(t, offset, data);
      else await this.inOrder(async () => this.writeRange(this.check(offset, data.length, true), offset, data));
    }
    await this.finish(opts);
  }

  /**
   * A write whose bytes landed in the store's slots (`landing`): applied in
   * arrival order, where it landed, nothing copied. Its blocks come hashed
   * from where they were received (`opts.hashed`, the NBD server's pool
   * receive), else they are hashed here on the JS thread, not on the pool:
   * the socket read just left them in this core's cache, where a pool
   * thread would fetch them from memory, and the hop would add its latency
   * to the write's.
   */
  private async writeLanded(offset: number, data: Buffer, loc: Location, opts: WriteOptions): Promise<void> {
    this.landings.delete(data);
    const n = data.length / BLOCK_SIZE;
    const h = opts.hashed;
    const hashed = h !== undefined && h.hashes.length >= n * HASH_SIZE && h.zero.length >= n ? h : undefined;
    let applied = false;
    const apply = (): void => {
      const t = this.check(offset, data.length, true);
      applied = true;
      this.host.engine.writeBlocks(t, offset / BLOCK_SIZE, data, hashed, false, loc);
    };
    try {
      if (this.ordering === null) apply();
      else await this.inOrder(async () => apply());
    } finally {
      if (!applied) this.host.engine.abandonLanding(loc, n);
    }
    await this.finish(opts);
  }

  async trim(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    await this.zero(offset, length, opts);
  }

  async zero(offset: number, length: number, opts: WriteOptions = {}): Promise<void> {
    let t = this.check(offset, length, true);
    const edges = this.absentEdges(t, offset, length);
    if (edges.length > 0) {
      await this.host.fillAbsent(this.name, edges, 'demand');
      t = this.check(offset, length, true);
    }
    if (length > 0) {
      if (this.ordering === null) this.zeroRange(t, offset, length);
      else await this.inOrder(async () => this.zeroRange(this.check(offset, length, true), offset, length));
    }
    await this.finish(opts);
  }

  async flush(): Promise<void> {
    this.check(0, 0, false);
    await this.host.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length, false);
    // Segment reads go through the page cache; resolving the blocks warms
    // the index pages, which is all a cache hint can usefully do here.
    if (length > 0) {
      const first = Math.floor(offset / BLOCK_SIZE);
      const last = Math.floor((offset + length - 1) / BLOCK_SIZE);
      this.host.engine.resolve(this.host.engine.target(this.name), first, last - first + 1);
    }
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const t = this.check(offset, length, false);
    const out: Extent[] = [];
    if (length === 0) return out;
    const first = Math.floor(offset / BLOCK_SIZE);
    const last = Math.floor((offset + length - 1) / BLOCK_SIZE);
    const ids = this.host.engine.resolve(t, first, last - first + 1);
    // An absent block has data (at its source): it reads as that, not as the hole it is here.
    const ab = this.host.engine.absentIn(t, first, ids.length);
    for (let i = 0; i < ids.length; i++) {
      const start = Math.max(offset, (first + i) * BLOCK_SIZE);
      const end = Math.min(offset + length, (first + i + 1) * BLOCK_SIZE);
      const hole = ids[i] === 0 && !ab?.isAbsent(first + i);
      const prev = out[out.length - 1];
      if (prev && prev.hole === hole) prev.length += end - start;
      else out.push({ offset: start, length: end - start, hole });
    }
    return out;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.host.release(this.name);
  }

  /**
   * Runs `apply` after every mutation queued before it on this handle (so
   * writes land in the order they came, even when some wait for their
   * hashes); resolves when it has run.
   */
  private inOrder(apply: () => Promise<void>): Promise<void> {
    const prev = this.ordering ?? Promise.resolve();
    const run = prev.then(apply);
    const tail = run.catch(() => undefined);
    this.ordering = tail;
    void tail.then(() => { if (this.ordering === tail) this.ordering = null; });
    return run;
  }

  /** Makes a range read as zeroes: whole blocks become holes, partial edges get zero bytes. */
  private zeroRange(t: Target, offset: number, length: number): void {
    const first = Math.ceil(offset / BLOCK_SIZE);
    const end = Math.floor((offset + length) / BLOCK_SIZE);
    if (end > first) {
      this.host.engine.zeroBlocks(t, first, end - first);
      // Edges that are not whole blocks get zero bytes written.
      if (offset < first * BLOCK_SIZE) this.writeRange(t, offset, Buffer.alloc(first * BLOCK_SIZE - offset));
      if (end * BLOCK_SIZE < offset + length) {
        this.writeRange(t, end * BLOCK_SIZE, Buffer.alloc(offset + length - end * BLOCK_SIZE));
      }
    } else {
      this.writeRange(t, offset, Buffer.alloc(length));
    }
  }

  /** Writes bytes at any offset: whole blocks directly, partial ones read-modify-write. */
  private writeRange(t: Target, offset: number, data: Buffer): void {
    const engine = this.host.engine;
    let pos = offset;
    let src = 0;
    while (src < data.length) {
      const block = Math.floor(pos / BLOCK_SIZE);
      const inBlock = pos - block * BLOCK_SIZE;
      if (inBlock === 0 && data.length - src >= BLOCK_SIZE) {
        const whole = Math.floor((data.length - src) / BLOCK_SIZE);
        engine.writeBlocks(t, block, data.subarray(src, src + whole * BLOCK_SIZE));
        pos += whole * BLOCK_SIZE;
        src += whole * BLOCK_SIZE;
        continue;
      }
      const n = Math.min(BLOCK_SIZE - inBlock, data.length - src);
      const buf = Buffer.allocUnsafe(BLOCK_SIZE);
      engine.readBlocks(t, block, 1, buf, 0);
      data.copy(buf, inBlock, src, src + n);
      engine.writeBlocks(t, block, buf);
      pos += n;
      src += n;
    }
  }

  /** The absent blocks a write of `length` bytes at `offset` covers only in part (their other bytes must be fetched first). */
  private absentEdges(t: Target, offset: number, length: number): number[] {
    if (length === 0) return [];
    const first = Math.floor(offset / BLOCK_SIZE);
    const last = Math.floor((offset + length - 1) / BLOCK_SIZE);
    const ab = this.host.engine.absentIn(t, first, last - first + 1);
    if (ab === undefined) return [];
    const edges: number[] = [];
    if (offset % BLOCK_SIZE !== 0 || length < BLOCK_SIZE) edges.push(first);
    if ((offset + length) % BLOCK_SIZE !== 0 && last !== first) edges.push(last);
    return edges.filter((b) => ab.isAbsent(b));
  }

  private async finish(opts: WriteOptions): Promise<void> {
    const backpressure = this.host.afterWrite();
    if (backpressure) await backpressure;
    if (opts.fua) await this.host.flush();
  }

  private check(offset: number, length: number, write: boolean): Target {
    if (this.closed) throw new DormantError('ECLOSED', `volume handle '${this.name}' is closed`, { volume: this.name });
    if (write && this.readOnly) {
      throw new DormantError('EROFS', `'${this.name}' is a read-only snapshot`, { volume: this.name });
    }
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new DormantError('EINVAL', `bad range offset=${offset} length=${length}`, { volume: this.name, offset, length });
    }
    const { target, size } = this.current();
    if (offset + length > size) {
      throw new DormantError('ERANGE', `range ${offset}+${length} is beyond the end of '${this.name}' (${size} bytes)`,
        { volume: this.name, offset, length });
    }
    return target;
  }
}
