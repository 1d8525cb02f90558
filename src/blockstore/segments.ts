/**
 * Segment files: the store's data (one file's layout: segment-file.ts).
 * SegmentFiles appends, rewrites, reads, syncs and deletes them; its state
 * is kept in parts, one file each: the segment appended to
 * (append-segment.ts), open descriptors and mappings (segment-maps.ts),
 * slot writes in flight on libuv's pool (pool-writes.ts), landings
 * (segment-landings.ts); and here the files written since the last sync.
 *
 * A slot the index refers to is never rewritten (GC copies live chunks out
 * and deletes the whole file); only the slot of a chunk not yet committed
 * may be overwritten by its own block's next write (`overwrite`, see
 * writeback.ts), and a slot no chunk uses may be landed in. A rewrite of a
 * slot written before is a copy through a writable twin of the segment's
 * mapping (native writeMapped; JS sees the twin only as the views of
 * landings), on file systems that overwrite written blocks in place (ext4,
 * XFS, tmpfs) while enough space is free: no system call and none of the
 * file system's per-page work, which make up most of what a pwrite of one
 * block costs. Dirty pages of a mapping are written back by fdatasync like
 * any others, so the ordering rule below holds as it is.
 *
 * Ordering rule (the durability contract): appended data is only referenced
 * by the index after `sync()` has fdatasync'ed every file written since the
 * last sync (and fsync'ed the directory when a file was created or
 * deleted). Small appends go to an in-memory buffer first and reach the
 * file when it fills or at sync; reads of buffered slots are served from
 * the buffer. A big write's blocks go to slots handed out by `reserve` and
 * written by the caller with one pwrite per run from its own buffer, before
 * anything reads them, or on libuv's pool (`overwriteAsync`): until such a
 * write lands, reads of its slots are served from its source buffer,
 * `canOverwrite` refuses its slots, and `sync()` waits for it.
 *
 * A failed fdatasync leaves the pages it could not write in an unknown
 * state (the kernel may drop them and report success next time): every
 * later sync fails with that first error (`syncFailure`), as after a
 * failed pool write (pool-writes.ts), so nothing is committed that points
 * at them. A write that fails because the disk is full is tried again once
 * the store released its space reserve (`makeRoom`, space.ts).
 *
 * Views of a mapping leave this module only through `view()` (see
 * segment-maps.ts for how long a viewed mapping lives).
 */
import fs from 'node:fs';
import { BLOCK_SIZE } from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';
import { AppendSegment } from './append-segment.js';
import { PoolWrites } from './pool-writes.js';
import {
  fdatasync, fsyncPath, listSegments, roomForMappedWrites, segmentError, segmentFileSize, segmentPath, slotOffset, withRoom,
  writeFullySync,
} from './segment-file.js';
import { SegmentLandings } from './segment-landings.js';
import { SegmentMaps } from './segment-maps.js';
import { gatherBlocks, preadCached, writeMapped } from '../native/index.js';

/** Where a chunk lives. */
export interface Location { segment: number; slot: number }

/** Most segments one `gather` reads from (each needs its mapping kept meanwhile; far below the open files kept). */
export const GATHER_MAX_SEGMENTS = 64;
/** `gather`: a block i with segment[i] = HOLE_SEGMENT is a hole. */
export const HOLE_SEGMENT = -1;

/**
 * Where each of a request's blocks lies, in parallel arrays indexed by
 * block (filled by the reader; `n` entries used): segment id or
 * HOLE_SEGMENT, slot, and 1 in `pending` for a chunk not committed yet.
 */
export interface BlockPlaces {
  segment: Int32Array;
  slot: Float64Array;
  pending: Uint8Array;
}

/** `gather`'s arrays: per block its source (index into `ids`, -1 hole, -2 read already) and byte position; per segment its slot span and known size. */
interface GatherScratch {
  source: Int32Array;
  position: Float64Array;
  ids: number[];
  low: Float64Array;
  high: Float64Array;
  sizes: Float64Array;
}

/** Owns the segment directory: appends, rewrites, reads, sync, deletion. */
export class SegmentFiles {
  /** Segments written since the last sync. */
  private readonly unsynced = new Set<number>();
  /** A segment file was created or deleted since the last sync. */
  private dirUnsynced = false;
  private readonly maps: SegmentMaps;
  private readonly writes: PoolWrites;
  private readonly active: AppendSegment;
  /** Landing places for big writes (segment-landings.ts). */
  readonly landings: SegmentLandings;
  /** The first fdatasync that failed: every later sync fails with it. */
  private syncFailure: DormantError | null = null;
  private scratch: GatherScratch = {
    source: new Int32Array(256), position: new Float64Array(256), ids: [],
    low: new Float64Array(GATHER_MAX_SEGMENTS), high: new Float64Array(GATHER_MAX_SEGMENTS),
    sizes: new Float64Array(GATHER_MAX_SEGMENTS),
  };

  /** `makeRoom()` releases the store's space reserve after an ENOSPC (true when it freed some). */
  constructor(readonly dir: string, hash: HashFunction, private readonly makeRoom: () => boolean = () => false) {
    this.maps = new SegmentMaps(dir, hash, {
      keepOpen: (id) => id === this.active.id || this.unsynced.has(id) || this.writes.inSegment(id) || this.landings.holds(id),
      writingTo: (fd) => this.writes.usesFd(fd),
    }, roomForMappedWrites(dir, true));
    this.writes = new PoolWrites((fd) => this.maps.released(fd), makeRoom);
    this.active = new AppendSegment(dir, hash, this.maps, this.unsynced, () => { this.dirUnsynced = true; }, makeRoom);
    this.landings = new SegmentLandings(this.maps, this.active, this.writes, this.unsynced);
  }

  /** Ids of the segment files present, ascending. */
  list(): number[] {
    return listSegments(this.dir);
  }

  /** Size in bytes of segment `id` on disk (0 if missing). */
  fileSize(id: number): number {
    return segmentFileSize(this.dir, id);
  }

  /**
   * Bytes of segment `id` that slots may occupy: the header and the slots
   * handed out for the active segment (whose file is sized ahead), the
   * file's size for the others.
   */
  usedBytes(id: number): number {
    const used = this.active.usedBytes(id);
    return used >= 0 ? used : this.fileSize(id);
  }

  /** Resumes appending into the newest segment if it has room (after open). */
  resume(): void {
    this.active.resume();
  }

  /** Highest segment id in use (active or on disk). */
  highestId(): number {
    return this.active.highestId();
  }

  /** The segment currently appended to (0 if none); GC never compacts it. */
  activeSegment(): number { return this.active.id; }

  /**
   * Stops appending to the active segment (writes buffered data first), so
   * GC may compact it; the next append starts a new segment.
   */
  seal(): void {
    this.active.seal();
  }

  /** Appends one block; the data may stay buffered until `sync()` or the buffer fills. */
  append(block: Buffer): Location {
    return this.active.append(block);
  }

  /**
   * Hands out the next slot without its data: the caller writes it with
   * `overwrite` before anything reads it (a big write's run of slots then
   * costs one pwrite from the caller's buffer instead of a copy into the
   * append buffer). Buffered appends are written first: the buffer only
   * ever holds slots after every reserved one.
   */
  reserve(): Location {
    return this.active.reserve();
  }

  /**
   * True when the slots of segment `id` may be overwritten now: no
   * asynchronous read of it is in flight (that read located the old bytes
   * and will check them against their hash).
   */
  canOverwrite(id: number, slot: number): boolean {
    return this.canOverwriteRun(id, slot, 1);
  }

  /** `canOverwrite` for each of `count` slots from `slot`. */
  canOverwriteRun(id: number, slot: number, count: number): boolean {
    return !this.maps.readPinned(id) && this.writes.covering(id, slot, count) === undefined;
  }

  /**
   * Overwrites `count` consecutive slots from `loc` with
   * `src[srcOffset, + count * BLOCK_SIZE)`. Only for slots of uncommitted
   * chunks (the caller's rule) and reserved slots (`fresh`: never written):
   * slots still in the append buffer are replaced there, the rest is
   * written to the file (no fsync; the next `sync()` covers it). Slots
   * written before are copied in through the segment's writable mapping
   * (`rewriteMapped`): most of a small pwrite's cost is the file system's
   * per-page work, and a copy into pages already mapped has none. Fresh
   * slots get a pwrite (into a hole, a write through a mapping would fault
   * in and zero every page first).
   */
  overwrite(loc: Location, count: number, src: Buffer, srcOffset: number, fresh = false): void {
    const n = this.active.replaceBuffered(loc, count, src, srcOffset);
    if (n === 0) return;
    if (!fresh && this.rewriteMapped(loc, n, src, srcOffset)) return;
    const fd = this.maps.fdFor(loc.segment);
    try {
      withRoom(() => writeFullySync(fd, src, srcOffset, n * BLOCK_SIZE, slotOffset(loc.slot)), this.makeRoom);
    } catch (err) {
      throw segmentError(err, `cannot write segment ${loc.segment}: ${(err as Error).message}`);
    }
    this.unsynced.add(loc.segment);
  }

  /**
   * `overwrite` with the file part written on libuv's pool: resolves once
   * it has landed (null when nothing was left to write there). The caller
   * leaves `src` unchanged until then; meanwhile reads of the slots are
   * served from it, and they may not be overwritten again.
   */
  overwriteAsync(loc: Location, count: number, src: Buffer, srcOffset: number): Promise<void> | null {
    const n = this.active.replaceBuffered(loc, count, src, srcOffset);
    if (n === 0) return null;
    const fd = this.maps.fdFor(loc.segment);
    this.unsynced.add(loc.segment);
    return this.writes.start(loc.segment, { slot: loc.slot, count: n, src, srcOffset, fd }, slotOffset(loc.slot));
  }

  /**
   * Copies `n` slots from `loc`, all of them written to the file before,
   * through the segment's writable mapping; false when that cannot be done
   * (another file system, little free space, past the size known).
   */
  private rewriteMapped(loc: Location, n: number, src: Buffer, srcOffset: number): boolean {
    if (!this.maps.writable) return false;
    const m = this.maps.mapFor(loc.segment);
    const pos = slotOffset(loc.slot);
    const bytes = n * BLOCK_SIZE;
    if (!m.writable || pos + bytes > m.size) return false;
    writeMapped(m.ab, pos, src, srcOffset, bytes);
    this.unsynced.add(loc.segment);
    return true;
  }

  /**
   * Reads `count` chunks stored in consecutive slots from `loc` into
   * `target` at `targetOffset` with one copy (a sequential read of a
   * volume usually maps to consecutive slots).
   */
  readRun(loc: Location, count: number, target: Buffer, targetOffset: number): void {
    if (this.notAllInFile(loc, count)) {
      this.readEach(loc, count, target, targetOffset);
      return;
    }
    this.copyMapped(loc, count, target, targetOffset);
  }

  /**
   * Reads `n` blocks lying anywhere (`places`) into `target` at
   * `targetOffset` and checks each against `hashes` (16 bytes a block, at
   * 0), with one native call for the lot: holes are zero-filled, committed
   * chunks copied out of their segments' mappings. Chunks not committed
   * yet, and every block of a segment some of whose slots are not in its
   * file (the append buffer, a pool write in flight), are copied first, one
   * at a time (`readInto`). Returns -1, the first block that does not match
   * its hash, or `-2 - i` when block i lies past its segment's known end.
   * Null, with nothing read, when the blocks lie in more than
   * GATHER_MAX_SEGMENTS segments (the caller reads them run by run).
   */
  gather(places: BlockPlaces, n: number, target: Buffer, targetOffset: number, hashes: Buffer): number | null {
    const g = this.gatherScratch(n);
    const ids = g.ids;
    ids.length = 0;
    let last = -1;
    let lastIndex = -1;
    for (let i = 0; i < n; i++) {
      const seg = places.segment[i];
      if (seg === HOLE_SEGMENT) { g.source[i] = -1; continue; }
      if (places.pending[i] === 1) {
        this.readInto({ segment: seg, slot: places.slot[i] }, target, targetOffset + i * BLOCK_SIZE);
        g.source[i] = -2;
        continue;
      }
      if (seg !== last) {
        last = seg;
        lastIndex = ids.indexOf(seg);
        if (lastIndex < 0) {
          if (ids.length === GATHER_MAX_SEGMENTS) return null;
          lastIndex = ids.length;
          ids.push(seg);
          g.low[lastIndex] = places.slot[i];
          g.high[lastIndex] = places.slot[i];
        }
      }
      const slot = places.slot[i];
      if (slot < g.low[lastIndex]) g.low[lastIndex] = slot;
      if (slot > g.high[lastIndex]) g.high[lastIndex] = slot;
      g.source[i] = lastIndex;
      g.position[i] = slotOffset(slot);
    }
    const sources: ArrayBuffer[] = new Array(ids.length);
    for (let k = 0; k < ids.length; k++) {
      const loc = { segment: ids[k], slot: g.low[k] };
      if (this.notAllInFile(loc, g.high[k] - g.low[k] + 1)) {
        // Committed chunks are in their files; this only guards the rule.
        for (let i = 0; i < n; i++) {
          if (g.source[i] !== k) continue;
          this.readInto({ segment: ids[k], slot: places.slot[i] }, target, targetOffset + i * BLOCK_SIZE);
          g.source[i] = -2;
        }
      }
    }
    // Mappings are taken after every readInto (which may open files); the
    // native call checks each is still mapped.
    for (let k = 0; k < ids.length; k++) {
      const m = this.maps.mapFor(ids[k]);
      sources[k] = m.ab;
      g.sizes[k] = m.size;
    }
    try {
      return gatherBlocks(sources, g.sizes, g.source, g.position, n, target, targetOffset, hashes);
    } catch (err) {
      throw new DormantError('EIO', `cannot read segments ${ids.join(', ')}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** Scratch arrays of `gather` for `n` blocks (one gather runs at a time: it is synchronous). */
  private gatherScratch(n: number): GatherScratch {
    if (this.scratch.source.length < n) {
      const size = Math.max(n, 2 * this.scratch.source.length);
      this.scratch.source = new Int32Array(size);
      this.scratch.position = new Float64Array(size);
    }
    return this.scratch;
  }

  /**
   * A read-only view of `count` slots from `loc` in the segment's mapping,
   * or null when some are still in the append buffer. The mapping then
   * stays until every view of it is collected (segment-maps.ts, SegmentMap.viewed).
   */
  view(loc: Location, count: number): Buffer | null {
    if (this.notAllInFile(loc, count)) return null;
    const m = this.maps.mapFor(loc.segment);
    const start = slotOffset(loc.slot);
    const end = start + count * BLOCK_SIZE;
    if (end > m.size) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
    m.viewed = true;
    return m.bytes.subarray(start, end);
  }

  /** The descriptor of `loc`'s segment file and the slot's position in it (valid until the fd is evicted or retired). */
  fileOf(loc: Location): { fd: number; position: number } {
    return { fd: this.maps.fdFor(loc.segment), position: slotOffset(loc.slot) };
  }

  /**
   * The file of `count` slots from `loc` for a reader of its own: its
   * descriptor and the first slot's position, pinned (kept open even if GC
   * deletes the segment, and no slot of it overwritten) until `release()`;
   * null when some of the slots are not in the file yet.
   */
  pinnedFile(loc: Location, count: number): { fd: number; position: number; release(): void } | null {
    if (this.notAllInFile(loc, count)) return null;
    const fd = this.maps.fdFor(loc.segment);
    this.maps.pin(fd);
    let pinned = true;
    return { fd, position: slotOffset(loc.slot), release: () => { if (pinned) { pinned = false; this.maps.unpin(fd); } } };
  }

  /**
   * `readRun` if the bytes are all in the page cache (preadv2 RWF_NOWAIT);
   * false, with nothing read, when reading them would wait for the disk.
   */
  readRunCached(loc: Location, count: number, target: Buffer, targetOffset: number): boolean {
    if (this.notAllInFile(loc, count)) {
      this.readEach(loc, count, target, targetOffset);
      return true;
    }
    const fd = this.maps.fdFor(loc.segment);
    const bytes = count * BLOCK_SIZE;
    let n: number;
    try {
      n = preadCached(fd, target, targetOffset, bytes, slotOffset(loc.slot));
    } catch (err) {
      throw new DormantError('EIO', `cannot read segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    }
    if (n < 0) return false;
    if (n !== bytes) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
    return true;
  }

  /**
   * `readRun` without blocking the JS thread: the read runs on libuv's
   * pool, so cold reads of many requests proceed in parallel. Buffered
   * slots are copied at once. The fd stays open (pinned) until the read
   * completes, even if GC deletes the segment meanwhile, and while it is
   * pinned no slot of it is overwritten (`canOverwrite`), so the bytes read
   * are the ones the caller located.
   */
  async readRunAsync(loc: Location, count: number, target: Buffer, targetOffset: number): Promise<void> {
    if (this.notAllInFile(loc, count)) { this.readEach(loc, count, target, targetOffset); return; }
    const fd = this.maps.fdFor(loc.segment);
    this.maps.pin(fd);
    const bytes = count * BLOCK_SIZE;
    const pos = slotOffset(loc.slot);
    let done = 0;
    try {
      while (done < bytes) {
        const n = await new Promise<number>((resolve, reject) => {
          fs.read(fd, target, targetOffset + done, bytes - done, pos + done, (err, got) => (err ? reject(err) : resolve(got)));
        });
        if (n === 0) break;
        done += n;
      }
    } catch (err) {
      throw new DormantError('EIO', `cannot read segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    } finally {
      this.maps.unpin(fd);
    }
    if (done !== bytes) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
  }

  /** Reads one chunk's bytes into `target` at `targetOffset`. */
  readInto(loc: Location, target: Buffer, targetOffset: number): void {
    const w = this.writes.covering(loc.segment, loc.slot);
    if (w !== undefined) {
      const at = w.srcOffset + (loc.slot - w.slot) * BLOCK_SIZE;
      w.src.copy(target, targetOffset, at, at + BLOCK_SIZE);
      return;
    }
    if (this.active.readBuffered(loc, target, targetOffset)) return;
    this.copyMapped(loc, 1, target, targetOffset);
  }

  /**
   * True when some of `count` slots from `loc` are not (yet) in the file:
   * still in the append buffer, or being written on the pool. Those are
   * read one at a time (`readEach`).
   */
  private notAllInFile(loc: Location, count: number): boolean {
    return this.active.holds(loc.segment, loc.slot, count) || this.writes.covering(loc.segment, loc.slot, count) !== undefined;
  }

  /** Reads `count` slots one at a time (each from a write in flight, the append buffer or the file). */
  private readEach(loc: Location, count: number, target: Buffer, targetOffset: number): void {
    for (let i = 0; i < count; i++) {
      this.readInto({ segment: loc.segment, slot: loc.slot + i }, target, targetOffset + i * BLOCK_SIZE);
    }
  }

  /** Copies `count` slots from `loc` out of the segment's mapping (EIO past the file's end). */
  private copyMapped(loc: Location, count: number, target: Buffer, targetOffset: number): void {
    const m = this.maps.mapFor(loc.segment);
    const start = slotOffset(loc.slot);
    const end = start + count * BLOCK_SIZE;
    if (end > m.size) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
    try {
      m.bytes.copy(target, targetOffset, start, end);
    } catch (err) {
      throw new DormantError('EIO', `cannot read segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    }
  }

  /** True when appends since the last sync still need one. */
  needsSync(): boolean {
    return this.active.buffered || this.unsynced.size > 0 || this.dirUnsynced;
  }

  /** Resolves once no write is in flight on libuv's pool (failures are left to their callers and to `sync`). */
  settled(): Promise<void> {
    return this.writes.settled();
  }

  /** Makes every append so far durable (fdatasync files, fsync the directory if needed). */
  async sync(): Promise<void> {
    if (this.syncFailure !== null) throw this.syncFailure;
    this.active.drain();
    const inFlight = this.writes.landed();
    if (inFlight !== null) await inFlight;
    if (this.writes.failure !== null) throw this.writes.failure;
    const ids = [...this.unsynced];
    this.unsynced.clear();
    const dirSync = this.dirUnsynced;
    this.dirUnsynced = false;
    try {
      await Promise.all(ids.map((id) => fdatasync(this.maps.fdFor(id))));
      if (dirSync) await fsyncPath(this.dir);
    } catch (err) {
      this.syncFailure ??= segmentError(err, `cannot sync segments: ${(err as Error).message}`);
      throw this.syncFailure;
    }
    if (this.maps.writable && !roomForMappedWrites(this.dir)) this.maps.writable = false;
  }

  /** Deletes a segment file (after the index no longer points into it). */
  remove(id: number): void {
    if (id === this.active.id) throw new DormantError('EINTERNAL', `cannot delete the active segment ${id}`);
    if (this.landings.holds(id)) throw new DormantError('EINTERNAL', `cannot delete segment ${id}: a write is landing in it`);
    this.maps.retire(id);
    fs.rmSync(segmentPath(this.dir, id), { force: true });
    this.dirUnsynced = true;
  }

  /** Closes fds of deleted segments (call when no read can be in flight). */
  closeRetired(): void {
    this.maps.closeRetired();
  }

  /** Closes every file (after a final sync). */
  close(): void {
    try {
      this.active.close();
    } finally {
      this.maps.closeAll();
    }
  }
}
