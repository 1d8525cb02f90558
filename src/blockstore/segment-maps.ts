/**
 * Open descriptors and mappings of segment files.
 *
 * State: descriptors by segment id, least recently used first; the mapping
 * of each segment with an open descriptor, with how many of its bytes
 * exist; descriptors of deleted segments not closed yet (`retired`); reads
 * in flight on libuv's pool per descriptor (`pins`); the segments whose
 * header was checked; whether new mappings are writable (`writable`).
 *
 * Descriptors: a segment's header is checked when its file is first
 * opened. Past MAX_OPEN_FDS the least recently used descriptor is closed,
 * unless something still needs it: a read on the pool (pinned), or what
 * the owner says through `keepOpen` (the active segment, unsynced files,
 * pool writes, landings). A deleted segment's descriptor is retired, not
 * closed: a reader may still hold one of its locations; it is closed once
 * no read or write in flight uses it (`closeRetired`).
 *
 * Mappings: reads on the JS thread copy from a read-only mapping of the
 * file (native mapFile): a cached 4 KiB read is a memcpy, not a system
 * call. Only bytes below the size the file is known to have are ever
 * touched (past the end a mapping raises SIGBUS): the size is taken when
 * the file is mapped and changed by our own appends and trims (`extend`,
 * `trim`), the only ways a segment's size changes. A mapping that gave
 * views (`viewed`) is never unmapped by hand, since a view may still be
 * queued on a socket: it is charged to the collector as external memory
 * and goes with its views. The others are unmapped when their descriptor
 * is closed or their segment deleted.
 */
import fs from 'node:fs';
import { SEGMENT_MAX_BYTES } from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';
import { checkHeader, segmentPath } from './segment-file.js';
import { chargeMapping, mapFile, unmapFile, writableView } from '../native/index.js';

/** Open file descriptors kept for reading. */
const MAX_OPEN_FDS = 256;

/**
 * A mapping of one segment file and how many of its bytes exist.
 * `viewed`: views of it were handed out, so it is never unmapped by hand
 * (a view may still be queued on a socket); it goes when they are collected.
 */
export interface SegmentMap {
  ab: ArrayBuffer; bytes: Buffer; size: number; viewed: boolean; writable: boolean;
  /** The writable twin as JS sees it (landings), kept while mapped: made anew, each would count as 64 MiB for the collector. */
  twin: ArrayBuffer | null;
}

/** What the owner of the segments tells about them. */
export interface SegmentMapsHost {
  /** True when segment `id`'s descriptor must stay open (it is written or about to be synced). */
  keepOpen(id: number): boolean;
  /** True when a write in flight on libuv's pool uses descriptor `fd`. */
  writingTo(fd: number): boolean;
}

/** Descriptors and mappings of the segment files of one directory. */
export class SegmentMaps {
  private readonly fds = new Map<number, number>(); // id -> fd, insertion order = LRU
  /** The most recently used entry of `fds` (0: none); cleared whenever an fd leaves `fds`. */
  private lastFdId = 0;
  private lastFd = -1;
  private readonly retired: number[] = []; // fds of deleted segments, closed once unpinned
  private readonly pins = new Map<number, number>(); // fd -> asynchronous reads in flight
  private readonly verifiedHeaders = new Set<number>();
  private readonly maps = new Map<number, SegmentMap>(); // id -> mapping, for ids with an open fd

  /**
   * New mappings are writable (they get a writable twin), and writes
   * through mappings are allowed (SegmentFiles.overwrite, landings).
   */
  writable: boolean;

  constructor(private readonly dir: string, private readonly hash: HashFunction, private readonly host: SegmentMapsHost,
    writable: boolean) {
    this.writable = writable;
  }

  /** The descriptor of segment `id`, opened (and its header checked) on first use. */
  fdFor(id: number): number {
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
        checkHeader(fd, id, this.hash);
      } catch (err) {
        fs.closeSync(fd);
        throw err;
      }
      this.verifiedHeaders.add(id);
    }
    this.fds.set(id, fd);
    this.lastFdId = id;
    this.lastFd = fd;
    if (this.fds.size > MAX_OPEN_FDS) this.evictOne(id);
    return fd;
  }

  /** Takes in the descriptor of segment `id`, a file just created with a good header. */
  adopt(id: number, fd: number): void {
    this.fds.set(id, fd);
    this.verifiedHeaders.add(id);
  }

  /** True when a read of segment `id` is in flight on libuv's pool (it located bytes it will check). */
  readPinned(id: number): boolean {
    const fd = this.fds.get(id);
    return fd !== undefined && this.pins.has(fd);
  }

  /** One read more in flight on `fd`: it stays open. */
  pin(fd: number): void {
    this.pins.set(fd, (this.pins.get(fd) ?? 0) + 1);
  }

  /** One read less in flight on `fd` (closed now if retired and unused). */
  unpin(fd: number): void {
    const left = (this.pins.get(fd) ?? 1) - 1;
    if (left > 0) this.pins.set(fd, left); else this.pins.delete(fd);
    if (left <= 0) this.released(fd);
  }

  /** Nothing in flight uses `fd` any more: closed now if it is retired. */
  released(fd: number): void {
    if (this.retired.includes(fd)) this.closeRetired();
  }

  /** The mapping of segment `id`, made on first use (its size: the file's, as of now). */
  mapFor(id: number): SegmentMap {
    const fd = this.fdFor(id);
    let m = this.maps.get(id);
    if (m === undefined) {
      let ab: ArrayBuffer;
      let size: number;
      try {
        size = fs.fstatSync(fd).size;
        ab = mapFile(fd, SEGMENT_MAX_BYTES, this.writable);
      } catch (err) {
        throw new DormantError('EIO', `cannot map segment ${id}: ${(err as Error).message}`, { cause: err });
      }
      m = { ab, bytes: Buffer.from(ab), size, viewed: false, writable: this.writable, twin: null };
      this.maps.set(id, m);
    }
    return m;
  }

  /** The writable twin of a mapping made writable, as JS sees it (made once per mapping). */
  twinOf(m: SegmentMap): ArrayBuffer {
    m.twin ??= writableView(m.ab);
    return m.twin;
  }

  /** Segment `id`'s file now has at least `size` bytes. */
  extend(id: number, size: number): void {
    const m = this.maps.get(id);
    if (m) m.size = Math.max(m.size, size);
  }

  /** Segment `id`'s file now has at most `size` bytes. */
  trim(id: number, size: number): void {
    const m = this.maps.get(id);
    if (m) m.size = Math.min(m.size, size);
  }

  /** Segment `id` is being deleted: its descriptor is retired, its mapping dropped, its header forgotten. */
  retire(id: number): void {
    const fd = this.fds.get(id);
    if (fd !== undefined) {
      this.fds.delete(id);
      if (this.lastFdId === id) this.lastFdId = 0;
      this.retired.push(fd); // a reader may still hold this location; close later
    }
    this.unmap(id);
    this.verifiedHeaders.delete(id);
  }

  /** Closes descriptors of deleted segments that nothing in flight uses. */
  closeRetired(): void {
    for (let i = this.retired.length - 1; i >= 0; i--) {
      const fd = this.retired[i];
      if (this.pins.has(fd) || this.host.writingTo(fd)) continue; // an asynchronous read or write still uses it
      this.retired.splice(i, 1);
      fs.closeSync(fd);
    }
  }

  /** Unmaps and closes everything (the store is closing: nothing is in flight). */
  closeAll(): void {
    for (const id of [...this.maps.keys()]) this.unmap(id);
    for (const fd of this.fds.values()) fs.closeSync(fd);
    this.fds.clear();
    this.lastFdId = 0;
    this.closeRetired();
  }

  /** Closes the least recently used descriptor nothing needs (never `justOpened`'s). */
  private evictOne(justOpened: number): void {
    for (const [oldId, oldFd] of this.fds) {
      if (oldId === justOpened || this.host.keepOpen(oldId) || this.pins.has(oldFd)) continue;
      this.fds.delete(oldId);
      this.unmap(oldId);
      fs.closeSync(oldFd);
      break;
    }
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
}
