/**
 * Append-only segment files: the store's data.
 *
 * On-disk layout of `segments/XXXXXXXX.seg` (format version 1):
 *   [0, 4096)   header: [0] magic "DORMSEG\n" [8] u32 format version
 *               [12] u32 segment id [16] u64 created (ms) [32] xxh3-128 of
 *               bytes [0, 32) — the header's checksum; rest zero
 *   [4096 + slot * 4096, +4096)  one chunk per slot, raw 4096 bytes
 * A chunk's checksum is its name (the hash in the index), verified by the
 * store on every read. A slot the index refers to is never rewritten (GC
 * copies live chunks out and deletes the whole file); only the slot of a
 * chunk not yet committed may be overwritten by its own block's next write
 * (`overwrite`, see writeback.ts). Such a rewrite of a slot written before
 * is a copy through a writable twin of the segment's mapping (native
 * writeMapped; JS sees the twin only as the views of landings, below), on file systems that
 * overwrite written blocks in place (ext4, XFS, tmpfs) while more than
 * MIN_FREE_FOR_MAPPED_WRITES is free: no system call and none of the file
 * system's per-page work (a 4 KiB pwrite cost ~5 us here, a quarter of a
 * random-write request). Dirty pages of a mapping are written back by
 * fdatasync like any others, so the ordering rule below holds as it is.
 *
 * Ordering rule (the durability contract): appended data is only referenced
 * by the index after `sync()` has fdatasync'ed every file written since the
 * last sync (and fsync'ed the directory when a file was created). Small
 * appends go to an in-memory buffer first and reach the file when it fills
 * or at sync; reads of buffered slots are served from the buffer. A big
 * write's blocks go to slots handed out by `reserve` and written by the
 * caller with one pwrite per run from its own buffer, before anything reads
 * them, or on libuv's pool (`overwriteAsync`): until such a write lands,
 * reads of its slots are served from its source buffer (the registry of
 * writes in flight), `canOverwrite` refuses its slots, and `sync()` waits
 * for it.
 *
 * The segment being appended to is sized to SEGMENT_MAX_BYTES (a sparse
 * file: holes take no disk) at its first append (opening a store changes
 * no file), so appends never move the file's end; it is trimmed to its
 * last slot when the segment is sealed or closed. `usedBytes` is a
 * segment's size as far as slots go. (Its pages ahead of the append point
 * are not faulted in beforehand: reading the holes on libuv's pool zeroes
 * each page only for the write to copy over it; on two cores that made
 * first passes of 1 MiB appends 1.5-2x slower on memory freed a moment
 * before, and on memory the host had taken back it sped up first passes
 * but not whole runs: README, Benchmarks.)
 *
 * After a crash the last segment may end with a partial or unreferenced
 * tail, or with the sparse rest of its size: appends resume at the next
 * whole slot when the size says where that is, else in a new segment; the
 * tail is garbage for GC.
 *
 * Reads on the JS thread copy from a read-only mapping of the file (native
 * mapFile): a cached 4 KiB read is a memcpy, not a system call. Only bytes
 * below the size the file is known to have are ever touched (past the end a
 * mapping raises SIGBUS): the size is taken when the file is mapped and
 * advanced by our own appends, the only way a segment grows. Views of a
 * mapping leave this module only through `view()`; a mapping that gave any
 * is never unmapped by hand (see SegmentMap.viewed), the others are
 * unmapped on fd eviction and removal.
 */
import fs from 'node:fs';
import path from 'node:path';
import {
  BLOCK_SIZE, BLOCKS_PER_SEGMENT, FORMAT_VERSION, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC, SEGMENT_MAX_BYTES,
} from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';
import {
  allocateRange, chargeMapping, mapFile, populateMapped, preadCached, unmapFile, writableView, writeMapped,
} from '../native/index.js';

/** Where a chunk lives. */
export interface Location { segment: number; slot: number }

/**
 * A read-only mapping of one segment file and how many of its bytes exist.
 * `viewed`: views of it were handed out, so it is never unmapped by hand
 * (a view may still be queued on a socket); it goes when they are collected.
 */
interface SegmentMap {
  ab: ArrayBuffer; bytes: Buffer; size: number; viewed: boolean; writable: boolean;
  /** The writable twin as JS sees it (landings), kept while mapped: made anew, each would count as 64 MiB for the collector. */
  twin: ArrayBuffer | null;
}

/** Slots being written on libuv's pool: reads of them copy from `src` until the write lands. */
interface SlotWrite { slot: number; count: number; src: Buffer; srcOffset: number; fd: number }

/** Blocks buffered before they are written to the file in one call. */
const APPEND_BUFFER_BLOCKS = 256;
/** Open file descriptors kept for reading. */
const MAX_OPEN_FDS = 256;
/**
 * File systems that overwrite a file's written blocks in place, so that a
 * store through a writable mapping into bytes written before never needs
 * new space (elsewhere a full disk would be SIGBUS, not ENOSPC): ext2/3/4,
 * XFS, tmpfs.
 */
const OVERWRITE_IN_PLACE_FS = new Set([0xef53, 0x58465342, 0x01021994]);
/**
 * Fresh slots for landings are allocated on disk this far ahead of the
 * append point, and their pages faulted in on libuv's pool (populateMapped),
 * so that a socket read landing there takes no page fault on the JS thread
 * (a fault per 4 KiB page made a first pass of 1 MiB landings ~25 % slower
 * than writing them from a buffer with pwrite).
 */
const PREPARE_AHEAD_SLOTS = 4096;
/** Below this much free space, rewrites go back to pwrite (belt and braces: ENOSPC stays an error). */
const MIN_FREE_FOR_MAPPED_WRITES = 1024 * 1024 * 1024;

/** Path of segment `id` inside `dir`. */
export function segmentPath(dir: string, id: number): string {
  return path.join(dir, `${id.toString(16).padStart(8, '0')}.seg`);
}

function encodeHeader(id: number, hash: HashFunction): Buffer {
  const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
  h.write(SEGMENT_MAGIC, 0, 'latin1');
  h.writeUInt32BE(FORMAT_VERSION, 8);
  h.writeUInt32BE(id, 12);
  h.writeBigUInt64BE(BigInt(Date.now()), 16);
  hash(h.subarray(0, 32)).copy(h, 32);
  return h;
}

/** Owns the segment directory: appends, reads, sync, deletion. */
export class SegmentFiles {
  private readonly fds = new Map<number, number>(); // id -> fd, insertion order = LRU
  /** The most recently used entry of `fds` (0: none); cleared whenever an fd leaves `fds`. */
  private lastFdId = 0;
  private lastFd = -1;
  private readonly retired: number[] = []; // fds of deleted segments, closed once unpinned
  private readonly pins = new Map<number, number>(); // fd -> asynchronous reads in flight
  private readonly unsynced = new Set<number>();
  private dirUnsynced = false;
  private active = 0; // segment being appended (0 = none yet)
  private activeFd = -1;
  private nextSlot = 0; // next slot of `active` to hand out
  private buffer = Buffer.allocUnsafe(APPEND_BUFFER_BLOCKS * BLOCK_SIZE);
  private bufferBase = 0; // slot of buffer[0]
  private bufferCount = 0;
  private verifiedHeaders = new Set<number>();
  /** The active segment's file is sized ahead (and must be trimmed when appending to it stops). */
  private sizedAhead = false;
  /** Writes in flight on libuv's pool, by segment. */
  private readonly writing = new Map<number, SlotWrite[]>();
  private writingCount = 0;
  /** Fds with writes in flight, and how many: never closed meanwhile (the number could name another file). */
  private readonly writingFds = new Map<number, number>();
  /** Promises of the writes in flight (each already has a rejection handler). */
  private readonly landing = new Set<Promise<void>>();
  /** The first asynchronous write that failed: every later sync fails with it (its slots hold unknown bytes). */
  private writeError: DormantError | null = null;
  private readonly maps = new Map<number, SegmentMap>(); // id -> mapping, for ids with an open fd
  /** Rewrites of written slots are copies through a writable mapping (see overwrite). */
  private mappedWrites: boolean;
  /** Landings in flight (`landingView` .. `endLanding`) per segment: its mapping stays, GC leaves it alone. */
  private readonly landings = new Map<number, number>();
  /** Segments GC is compacting: nothing lands there. */
  private readonly compacting = new Set<number>();
  /** Slots of segment `preparedIn` below `preparedTo` are allocated on disk and faulted in, or being (reserveFresh). */
  private preparedIn = 0;
  private preparedTo = 0;

  constructor(readonly dir: string, private readonly hash: HashFunction) {
    this.mappedWrites = this.roomForMappedWrites(true);
  }

  /**
   * True when rewrites may go through writable mappings: a file system
   * that overwrites in place (checked once, `first`) and room left on it.
   */
  private roomForMappedWrites(first = false): boolean {
    try {
      const st = fs.statfsSync(this.dir);
      if (first && !OVERWRITE_IN_PLACE_FS.has(st.type)) return false;
      return st.bavail * st.bsize >= MIN_FREE_FOR_MAPPED_WRITES;
    } catch {
      return false;
    }
  }

  /** Ids of the segment files present, ascending. */
  list(): number[] {
    return fs.readdirSync(this.dir)
      .filter((f) => /^[0-9a-f]{8}\.seg$/.test(f))
      .map((f) => parseInt(f.slice(0, 8), 16))
      .sort((a, b) => a - b);
  }

  /** Size in bytes of segment `id` on disk (0 if missing). */
  fileSize(id: number): number {
    try { return fs.statSync(segmentPath(this.dir, id)).size; } catch { return 0; }
  }

  /**
   * Bytes of segment `id` that slots may occupy: the header and the slots
   * handed out for the active segment (whose file is sized ahead), the
   * file's size for the others.
   */
  usedBytes(id: number): number {
    if (id === this.active) return SEGMENT_HEADER_SIZE + this.nextSlot * BLOCK_SIZE;
    return this.fileSize(id);
  }

  /** Resumes appending into the newest segment if it has room (after open). */
  resume(): void {
    const ids = this.list();
    const last = ids[ids.length - 1];
    if (last === undefined) return;
    const size = this.fileSize(last);
    const slot = Math.ceil(Math.max(0, size - SEGMENT_HEADER_SIZE) / BLOCK_SIZE);
    if (size < SEGMENT_HEADER_SIZE || slot >= BLOCKS_PER_SEGMENT) return;
    let fd: number;
    try { fd = this.fdFor(last); } catch { return; } // a damaged header: its reads are EIO, appends go to a new segment
    this.active = last;
    this.activeFd = fd;
    this.nextSlot = slot;
    this.bufferBase = slot;
    // Sized ahead at its first append, so that opening a store changes no file.
  }

  /** Highest segment id in use (active or on disk). */
  highestId(): number {
    const ids = this.list();
    return Math.max(this.active, ids[ids.length - 1] ?? 0);
  }

  /** The segment currently appended to (0 if none); GC never compacts it. */
  activeSegment(): number { return this.active; }

  /**
   * Stops appending to the active segment (writes buffered data first), so
   * GC may compact it; the next append starts a new segment.
   */
  seal(): void {
    this.stopAppending();
    this.active = 0;
    this.activeFd = -1;
    this.bufferBase = 0;
  }

  /** Appends one block; the data may stay buffered until `sync()` or the buffer fills. */
  append(block: Buffer): Location {
    if (this.active === 0 || this.nextSlot >= BLOCKS_PER_SEGMENT) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount === APPEND_BUFFER_BLOCKS) this.drain();
    block.copy(this.buffer, this.bufferCount * BLOCK_SIZE, 0, BLOCK_SIZE);
    this.bufferCount++;
    return { segment: this.active, slot: this.nextSlot++ };
  }

  /**
   * Hands out the next slot without its data: the caller writes it with
   * `overwrite` before anything reads it (a big write's run of slots then
   * costs one pwrite from the caller's buffer instead of a copy into the
   * append buffer). Buffered appends are written first: the buffer only
   * ever holds slots after every reserved one.
   */
  reserve(): Location {
    if (this.active === 0 || this.nextSlot >= BLOCKS_PER_SEGMENT) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount > 0) this.drain();
    const slot = this.nextSlot++;
    this.bufferBase = this.nextSlot;
    return { segment: this.active, slot };
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
    const fd = this.fds.get(id);
    return (fd === undefined || !this.pins.has(fd)) && this.writeOf(id, slot, count) === undefined;
  }

  /**
   * `overwrite` with the file part written on libuv's pool: resolves once
   * it has landed (null when nothing was left to write there). The caller
   * leaves `src` unchanged until then; meanwhile reads of the slots are
   * served from it, and they may not be overwritten again.
   */
  overwriteAsync(loc: Location, count: number, src: Buffer, srcOffset: number): Promise<void> | null {
    const n = this.intoBuffer(loc, count, src, srcOffset);
    if (n === 0) return null;
    const fd = this.fdFor(loc.segment);
    const bytes = n * BLOCK_SIZE;
    const pos = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    const w: SlotWrite = { slot: loc.slot, count: n, src, srcOffset, fd };
    let list = this.writing.get(loc.segment);
    if (list === undefined) { list = []; this.writing.set(loc.segment, list); }
    list.push(w);
    this.writingCount++;
    this.writingFds.set(fd, (this.writingFds.get(fd) ?? 0) + 1);
    this.unsynced.add(loc.segment);
    const landed = writeFully(fd, src, srcOffset, bytes, pos).then(() => this.landed(loc.segment, w), (err: Error) => {
      this.landed(loc.segment, w);
      const e = new DormantError('EIO', `cannot write segment ${loc.segment}: ${err.message}`, { cause: err });
      this.writeError ??= e;
      throw e;
    });
    this.landing.add(landed);
    landed.catch(() => undefined).finally(() => this.landing.delete(landed));
    return landed;
  }

  private landed(segment: number, w: SlotWrite): void {
    const list = this.writing.get(segment)!;
    list.splice(list.indexOf(w), 1);
    if (list.length === 0) this.writing.delete(segment);
    this.writingCount--;
    const left = this.writingFds.get(w.fd)! - 1;
    if (left > 0) this.writingFds.set(w.fd, left); else this.writingFds.delete(w.fd);
    if (left <= 0 && this.retired.includes(w.fd)) this.closeRetired();
  }

  /** A write in flight that covers some of `count` slots from `slot` of `segment`, if any. */
  private writeOf(segment: number, slot: number, count = 1): SlotWrite | undefined {
    if (this.writingCount === 0) return undefined;
    const list = this.writing.get(segment);
    if (list === undefined) return undefined;
    for (const w of list) if (w.slot < slot + count && slot < w.slot + w.count) return w;
    return undefined;
  }

  /**
   * True when some of `count` slots from `loc` are not (yet) in the file:
   * still in the append buffer, or being written on the pool. Those are
   * read one at a time (`readEach`).
   */
  private notAllInFile(loc: Location, count: number): boolean {
    return (loc.segment === this.active && loc.slot + count > this.bufferBase)
      || this.writeOf(loc.segment, loc.slot, count) !== undefined;
  }

  /** Reads `count` slots one at a time (each from a write in flight, the append buffer or the file). */
  private readEach(loc: Location, count: number, target: Buffer, targetOffset: number): void {
    for (let i = 0; i < count; i++) {
      this.readInto({ segment: loc.segment, slot: loc.slot + i }, target, targetOffset + i * BLOCK_SIZE);
    }
  }

  /**
   * Overwrites `count` consecutive slots from `loc` with
   * `src[srcOffset, + count * BLOCK_SIZE)`. Only for slots of uncommitted
   * chunks (the caller's rule) and reserved slots (`fresh`: never written):
   * slots still in the append buffer are replaced there, the rest is
   * written to the file (no fsync; the next `sync()` covers it). Slots
   * written before are copied in through the segment's writable mapping
   * (`rewriteMapped`): a 4 KiB pwrite cost ~5 us here, most of it the
   * file system's per-page work, a copy into pages already mapped costs
   * none. Fresh slots get a pwrite (into a hole, a write through a mapping
   * would fault in and zero every page first).
   */
  overwrite(loc: Location, count: number, src: Buffer, srcOffset: number, fresh = false): void {
    const n = this.intoBuffer(loc, count, src, srcOffset);
    if (n === 0) return;
    if (!fresh && this.rewriteMapped(loc, n, src, srcOffset)) return;
    const fd = this.fdFor(loc.segment);
    const bytes = n * BLOCK_SIZE;
    const pos = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    let done = 0;
    try {
      while (done < bytes) done += fs.writeSync(fd, src, srcOffset + done, bytes - done, pos + done);
    } catch (err) {
      throw new DormantError('EIO', `cannot write segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    }
    this.unsynced.add(loc.segment);
  }

  /**
   * Copies `n` slots from `loc`, all of them written to the file before,
   * through the segment's writable mapping; false when that cannot be done
   * (another file system, little free space, past the size known).
   */
  private rewriteMapped(loc: Location, n: number, src: Buffer, srcOffset: number): boolean {
    if (!this.mappedWrites) return false;
    const m = this.mapFor(loc.segment);
    const pos = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    const bytes = n * BLOCK_SIZE;
    if (!m.writable || pos + bytes > m.size) return false;
    writeMapped(m.ab, pos, src, srcOffset, bytes);
    this.unsynced.add(loc.segment);
    return true;
  }

  // ---- Landings: a big write's payload read from the socket straight into slots (see landing.ts) ----

  /**
   * True when `count` slots from `slot` of `segment`, which no chunk uses,
   * may be landed in now: writes through mappings are on, GC is not
   * compacting the segment, no read of it is in flight on the pool (it
   * located bytes it will check), no pool write to those slots is in
   * flight, and none of them is still in the append buffer.
   */
  canLandAt(segment: number, slot: number, count: number): boolean {
    if (!this.mappedWrites || this.compacting.has(segment)) return false;
    if (segment === this.active && slot + count > this.bufferBase) return false;
    const fd = this.fds.get(segment);
    if (fd !== undefined && this.pins.has(fd)) return false;
    return this.writeOf(segment, slot, count) === undefined;
  }

  /**
   * `count` fresh consecutive slots at the end of the active segment (a new
   * segment when they do not fit), their disk blocks allocated now, so a
   * write through the mapping into them cannot fault on a full disk; null
   * when that cannot be done (writes through mappings off, no space).
   */
  reserveFresh(count: number): Location | null {
    if (!this.mappedWrites || count > BLOCKS_PER_SEGMENT) return null;
    if (this.active !== 0 && this.nextSlot + count > BLOCKS_PER_SEGMENT) this.seal(); // (trimmed to its last slot)
    if (this.active === 0) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount > 0) this.drain();
    const slot = this.nextSlot;
    if (this.preparedIn !== this.active) {
      this.preparedIn = this.active;
      this.preparedTo = slot;
    }
    if (slot + count > this.preparedTo - PREPARE_AHEAD_SLOTS / 2) {
      const from = Math.max(slot, this.preparedTo);
      const to = Math.min(BLOCKS_PER_SEGMENT, slot + count + PREPARE_AHEAD_SLOTS);
      try {
        allocateRange(this.activeFd, SEGMENT_HEADER_SIZE + from * BLOCK_SIZE, (to - from) * BLOCK_SIZE);
      } catch {
        return null; // (ENOSPC, or no fallocate here: the caller writes the ordinary way and reports what it gets)
      }
      this.preparedTo = to;
      this.prepare(this.active, Math.max(from, slot + count), to);
    }
    this.nextSlot += count;
    this.bufferBase = this.nextSlot;
    return { segment: this.active, slot };
  }

  /** Faults in slots [from, to) of `segment` (allocated already) on libuv's pool; the segment stays mapped meanwhile. */
  private prepare(segment: number, from: number, to: number): void {
    if (to <= from) return;
    const m = this.mapFor(segment);
    if (!m.writable) return;
    this.pin(segment);
    const done = (): void => this.unpin(segment); // (no bytes of ours: nothing to sync)
    populateMapped(this.twinOf(m), SEGMENT_HEADER_SIZE + from * BLOCK_SIZE, (to - from) * BLOCK_SIZE).then(done, done);
  }

  /**
   * A writable view of `count` slots from `loc` in the page cache (the
   * segment's writable mapping) for a socket read to land in; the landing
   * lasts until `endLanding(loc.segment)`: meanwhile the mapping stays and
   * GC leaves the segment alone. The caller reserved the slots (free or
   * fresh) and is their only writer.
   */
  landingView(loc: Location, count: number): Buffer {
    const m = this.mapFor(loc.segment);
    const pos = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    if (!m.writable || pos + count * BLOCK_SIZE > m.size) {
      throw new DormantError('EINTERNAL', `segment ${loc.segment} cannot take a landing at slot ${loc.slot}`);
    }
    this.pin(loc.segment);
    return Buffer.from(this.twinOf(m), pos, count * BLOCK_SIZE);
  }

  /** The writable twin of a mapping made writable, as JS sees it (made once per mapping). */
  private twinOf(m: SegmentMap): ArrayBuffer {
    m.twin ??= writableView(m.ab);
    return m.twin;
  }

  /**
   * A landing in `segment` is over (its bytes were taken, or dropped). Its
   * bytes reached the page cache after the landing began, perhaps after a
   * sync that started meanwhile: the segment needs the next sync.
   */
  endLanding(segment: number): void {
    this.unsynced.add(segment);
    this.unpin(segment);
  }

  /** One hold more on `segment`'s mapping (a landing, a prepare): it stays mapped, GC leaves the segment alone. */
  private pin(segment: number): void {
    this.landings.set(segment, (this.landings.get(segment) ?? 0) + 1);
  }

  /** One hold on `segment`'s mapping less. */
  private unpin(segment: number): void {
    const n = (this.landings.get(segment) ?? 1) - 1;
    if (n > 0) this.landings.set(segment, n); else this.landings.delete(segment);
  }

  /**
   * GC is about to compact `segment` (`on`), or is done: nothing lands in
   * it meanwhile. False (and nothing marked) when a landing is in flight.
   */
  setCompacting(segment: number, on: boolean): boolean {
    if (!on) {
      this.compacting.delete(segment);
      return true;
    }
    if (this.landings.has(segment)) return false;
    this.compacting.add(segment);
    return true;
  }

  /** Copies the slots of an overwrite that are still in the append buffer there; returns how many precede them. */
  private intoBuffer(loc: Location, count: number, src: Buffer, srcOffset: number): number {
    if (loc.segment !== this.active || loc.slot + count <= this.bufferBase) return count;
    const from = Math.max(loc.slot, this.bufferBase);
    const skip = from - loc.slot;
    src.copy(this.buffer, (from - this.bufferBase) * BLOCK_SIZE, srcOffset + skip * BLOCK_SIZE, srcOffset + count * BLOCK_SIZE);
    return skip;
  }

  /**
   * Reads `count` chunks stored in consecutive slots from `loc` into
   * `target` at `targetOffset` with one system call (a sequential read of a
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
   * A read-only view of `count` slots from `loc` in the segment's mapping,
   * or null when some are still in the append buffer. The mapping then
   * stays until every view of it is collected (see SegmentMap.viewed).
   */
  view(loc: Location, count: number): Buffer | null {
    if (this.notAllInFile(loc, count)) return null;
    const m = this.mapFor(loc.segment);
    const start = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    const end = start + count * BLOCK_SIZE;
    if (end > m.size) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
    m.viewed = true;
    return m.bytes.subarray(start, end);
  }

  /** The descriptor of `loc`'s segment file and the slot's position in it (valid until the fd is evicted or retired). */
  fileOf(loc: Location): { fd: number; position: number } {
    return { fd: this.fdFor(loc.segment), position: SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE };
  }

  /** Copies `count` slots from `loc` out of the segment's mapping (EIO past the file's end). */
  private copyMapped(loc: Location, count: number, target: Buffer, targetOffset: number): void {
    const m = this.mapFor(loc.segment);
    const start = SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE;
    const end = start + count * BLOCK_SIZE;
    if (end > m.size) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
    try {
      m.bytes.copy(target, targetOffset, start, end);
    } catch (err) {
      throw new DormantError('EIO', `cannot read segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    }
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
    const fd = this.fdFor(loc.segment);
    const bytes = count * BLOCK_SIZE;
    let n: number;
    try {
      n = preadCached(fd, target, targetOffset, bytes, SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE);
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
    const fd = this.fdFor(loc.segment);
    this.pins.set(fd, (this.pins.get(fd) ?? 0) + 1);
    const bytes = count * BLOCK_SIZE;
    let done = 0;
    try {
      while (done < bytes) {
        const n = await new Promise<number>((resolve, reject) => {
          fs.read(fd, target, targetOffset + done, bytes - done, SEGMENT_HEADER_SIZE + loc.slot * BLOCK_SIZE + done,
            (err, got) => (err ? reject(err) : resolve(got)));
        });
        if (n === 0) break;
        done += n;
      }
    } catch (err) {
      throw new DormantError('EIO', `cannot read segment ${loc.segment}: ${(err as Error).message}`, { cause: err });
    } finally {
      const left = (this.pins.get(fd) ?? 1) - 1;
      if (left > 0) this.pins.set(fd, left); else this.pins.delete(fd);
      if (left <= 0 && this.retired.includes(fd)) this.closeRetired();
    }
    if (done !== bytes) throw new DormantError('EIO', `segment ${loc.segment} is truncated near slot ${loc.slot}`);
  }

  /** Reads one chunk's bytes into `target` at `targetOffset`. */
  readInto(loc: Location, target: Buffer, targetOffset: number): void {
    const w = this.writeOf(loc.segment, loc.slot);
    if (w !== undefined) {
      const at = w.srcOffset + (loc.slot - w.slot) * BLOCK_SIZE;
      w.src.copy(target, targetOffset, at, at + BLOCK_SIZE);
      return;
    }
    if (loc.segment === this.active && loc.slot >= this.bufferBase && loc.slot < this.bufferBase + this.bufferCount) {
      const at = (loc.slot - this.bufferBase) * BLOCK_SIZE;
      this.buffer.copy(target, targetOffset, at, at + BLOCK_SIZE);
      return;
    }
    this.copyMapped(loc, 1, target, targetOffset);
  }

  /** Writes buffered appends to the file (no fsync). */
  drain(): void {
    if (this.bufferCount === 0) return;
    const bytes = this.bufferCount * BLOCK_SIZE;
    const pos = SEGMENT_HEADER_SIZE + this.bufferBase * BLOCK_SIZE;
    let done = 0;
    while (done < bytes) {
      done += fs.writeSync(this.activeFd, this.buffer, done, bytes - done, pos + done);
    }
    this.unsynced.add(this.active);
    this.bufferBase += this.bufferCount;
    this.bufferCount = 0;
    const m = this.maps.get(this.active);
    if (m) m.size = Math.max(m.size, pos + bytes);
  }

  /** True when appends since the last sync still need one. */
  needsSync(): boolean {
    return this.bufferCount > 0 || this.unsynced.size > 0 || this.dirUnsynced;
  }

  /** Resolves once no write is in flight on libuv's pool (failures are left to their callers and to `sync`). */
  async settled(): Promise<void> {
    while (this.landing.size > 0) await Promise.allSettled([...this.landing]);
  }

  /** Makes every append so far durable (fdatasync files, fsync the directory if needed). */
  async sync(): Promise<void> {
    this.drain();
    if (this.landing.size > 0) await Promise.allSettled([...this.landing]);
    if (this.writeError !== null) throw this.writeError;
    const ids = [...this.unsynced];
    this.unsynced.clear();
    const dirSync = this.dirUnsynced;
    this.dirUnsynced = false;
    await Promise.all(ids.map((id) => fdatasync(this.fdFor(id))));
    if (dirSync) await fsyncPath(this.dir);
    if (this.mappedWrites && !this.roomForMappedWrites()) this.mappedWrites = false;
  }

  /** Deletes a segment file (after the index no longer points into it). */
  remove(id: number): void {
    if (id === this.active) throw new DormantError('EINTERNAL', `cannot delete the active segment ${id}`);
    if (this.landings.has(id)) throw new DormantError('EINTERNAL', `cannot delete segment ${id}: a write is landing in it`);
    const fd = this.fds.get(id);
    if (fd !== undefined) {
      this.fds.delete(id);
      if (this.lastFdId === id) this.lastFdId = 0;
      this.retired.push(fd); // a reader may still hold this location; close later
    }
    this.unmap(id);
    fs.rmSync(segmentPath(this.dir, id), { force: true });
    this.verifiedHeaders.delete(id);
    this.dirUnsynced = true;
  }

  /** Closes fds of deleted segments (call when no read can be in flight). */
  closeRetired(): void {
    for (let i = this.retired.length - 1; i >= 0; i--) {
      const fd = this.retired[i];
      if (this.pins.has(fd) || this.writingFds.has(fd)) continue; // an asynchronous read or write still uses it
      this.retired.splice(i, 1);
      fs.closeSync(fd);
    }
  }

  /** Closes every file (after a final sync). */
  close(): void {
    this.stopAppending();
    for (const id of [...this.maps.keys()]) this.unmap(id);
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    this.lastFdId = 0;
    this.closeRetired();
    this.active = 0;
    this.activeFd = -1;
  }

  private startSegment(): void {
    this.drain();
    this.sizedAhead = false; // the segment it leaves is full: its size is exact
    const id = this.highestId() + 1;
    const file = segmentPath(this.dir, id);
    const fd = fs.openSync(file, 'wx+');
    fs.writeSync(fd, encodeHeader(id, this.hash), 0, SEGMENT_HEADER_SIZE, 0);
    this.fds.set(id, fd);
    this.verifiedHeaders.add(id);
    this.unsynced.add(id);
    this.dirUnsynced = true;
    this.active = id;
    this.activeFd = fd;
    this.nextSlot = 0;
    this.bufferBase = 0;
    this.startAppending();
  }

  /** Sizes the active segment's file at its maximum (at its first append). */
  private startAppending(): void {
    try {
      fs.ftruncateSync(this.activeFd, SEGMENT_MAX_BYTES);
    } catch (err) {
      throw new DormantError('EIO', `cannot size segment ${this.active}: ${(err as Error).message}`, { cause: err });
    }
    this.sizedAhead = true;
    const m = this.maps.get(this.active);
    if (m) m.size = SEGMENT_MAX_BYTES;
  }

  /**
   * Writes buffered appends and trims the active segment's file to its
   * last slot (no slot past it is referenced, no view reaches past it).
   */
  private stopAppending(): void {
    this.drain();
    if (this.active === 0 || !this.sizedAhead) return;
    this.sizedAhead = false;
    const end = SEGMENT_HEADER_SIZE + this.nextSlot * BLOCK_SIZE;
    try {
      fs.ftruncateSync(this.activeFd, end);
    } catch (err) {
      throw new DormantError('EIO', `cannot trim segment ${this.active}: ${(err as Error).message}`, { cause: err });
    }
    this.unsynced.add(this.active);
    const m = this.maps.get(this.active);
    if (m) m.size = Math.min(m.size, end);
  }

  private fdFor(id: number): number {
    if (id === this.lastFdId) return this.lastFd; // already the most recent: nothing to refresh
    const cached = this.fds.get(id);
    if (cached !== undefined) {
      this.fds.delete(id); // refresh LRU position
      this.fds.set(id, cached);
      this.lastFdId = id;
      this.lastFd = cached;
      return cached;
    }
    let fd: number;
    try {
      fd = fs.openSync(segmentPath(this.dir, id), 'r+');
    } catch (err) {
      throw new DormantError('EIO', `segment ${id} is missing: ${(err as Error).message}`, { cause: err });
    }
    if (!this.verifiedHeaders.has(id)) {
      try {
        this.checkHeader(fd, id);
      } catch (err) {
        fs.closeSync(fd);
        throw err;
      }
      this.verifiedHeaders.add(id);
    }
    this.fds.set(id, fd);
    this.lastFdId = id;
    this.lastFd = fd;
    if (this.fds.size > MAX_OPEN_FDS) {
      for (const [oldId, oldFd] of this.fds) {
        if (oldId === this.active || oldId === id) continue;
        if (this.unsynced.has(oldId) || this.writing.has(oldId) || this.landings.has(oldId)) continue;
        if (this.pins.has(oldFd)) continue;
        this.fds.delete(oldId);
        this.unmap(oldId);
        fs.closeSync(oldFd);
        break;
      }
    }
    return fd;
  }

  /** The mapping of segment `id`, made on first use (its size: the file's, as of now). */
  private mapFor(id: number): SegmentMap {
    const fd = this.fdFor(id);
    let m = this.maps.get(id);
    if (m === undefined) {
      let ab: ArrayBuffer;
      let size: number;
      try {
        size = fs.fstatSync(fd).size;
        ab = mapFile(fd, SEGMENT_MAX_BYTES, this.mappedWrites);
      } catch (err) {
        throw new DormantError('EIO', `cannot map segment ${id}: ${(err as Error).message}`, { cause: err });
      }
      m = { ab, bytes: Buffer.from(ab), size, viewed: false, writable: this.mappedWrites, twin: null };
      this.maps.set(id, m);
    }
    return m;
  }

  private unmap(id: number): void {
    const m = this.maps.get(id);
    if (m === undefined) return;
    this.maps.delete(id);
    // Views may still be queued on sockets: leave the mapping to the
    // collector, charged as external memory so that it collects it soon.
    if (m.viewed) chargeMapping(m.ab);
    else unmapFile(m.ab);
  }

  private checkHeader(fd: number, id: number): void {
    const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
    const n = fs.readSync(fd, h, 0, SEGMENT_HEADER_SIZE, 0);
    const bad = (why: string) => new DormantError('EIO', `segment ${id} has a bad header: ${why}`);
    if (n !== SEGMENT_HEADER_SIZE) throw bad('short file');
    if (h.toString('latin1', 0, 8) !== SEGMENT_MAGIC) throw bad('wrong magic');
    if (!this.hash(h.subarray(0, 32)).equals(h.subarray(32, 48))) throw bad('checksum mismatch');
    const version = h.readUInt32BE(8);
    if (version !== FORMAT_VERSION) throw bad(`format version ${version}, expected ${FORMAT_VERSION}`);
    if (h.readUInt32BE(12) !== id) throw bad(`it names itself segment ${h.readUInt32BE(12)}`);
  }
}

function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.promises.open(p, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}

/** pwrite of `bytes` from `src` at `pos` on libuv's pool, resuming after short writes. */
async function writeFully(fd: number, src: Buffer, srcOffset: number, bytes: number, pos: number): Promise<void> {
  let done = 0;
  while (done < bytes) {
    done += await new Promise<number>((resolve, reject) => {
      fs.write(fd, src, srcOffset + done, bytes - done, pos + done, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }
}
