/**
 * Free space on the store's file system: a floor under which new writes
 * are refused with ENOSPC before the file system is really full, and a
 * reserve file the store gives back so that what must finish on a full
 * file system does (a flush and its commits, `rm`, `gc`, a clean close).
 *
 * State: the reserve (`STORE/reserve`, a preallocated file: held, or
 * released and not re-created yet); the last statfs (bytes available,
 * when read) and the bytes admitted since; whether writes are being
 * refused (one log line per change, not one per write: writes are said
 * to be accepted again only once a quarter of the floor more is free).
 *
 * Rules:
 *  - A write of B bytes is admitted while
 *        available - B - (reserve bytes not held) >= floor
 *    (a quarter of the floor for memory volumes: their writes are the
 *    kernel's write-back of a running VM's RAM, which has no way to pause
 *    the guest, so they may go further into the floor than a disk write,
 *    which the guest sees as ENOSPC). B is the write's length, an upper
 *    bound of the new space it takes (zero and duplicate blocks and
 *    rewrites of its own pending chunks take none). Counting the reserve
 *    not held keeps writes from eating the room it left once released.
 *  - `available` (statfs, blocks available to unprivileged users) is read
 *    again when older than REFRESH_MS, after REFRESH_BYTES admitted, and
 *    before refusing a write when writes were admitted since it was read:
 *    a write is refused only on a fresh figure, and refusals cost no
 *    system call.
 *  - The reserve is released (unlinked) when the caller is about to do
 *    something that must finish and less than what it may need is free
 *    (`makeRoom`), or after it failed with ENOSPC (`release`). It is
 *    re-created (fallocate) once the floor and the whole reserve are free
 *    again, outside any caller's operation (setImmediate).
 *
 * Sizes (defaults scale down on small file systems, whose index is small
 * too): floor = min(FLOOR_MAX, file system / 8), reserve = min(RESERVE_MAX,
 * file system / 16). See docs/internals/store.md for what each must cover.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DormantError } from './errors.js';
import { asError, asWarn, type LogFn } from './log.js';
import { allocateRange } from '../native/index.js';

/** Largest default floor: commits of a flush's slices, the append buffer, other files of the store. */
export const FLOOR_MAX = 128 * 1024 * 1024;
/** Largest default reserve: what LMDB needs to commit a removal and GC's passes, and a segment compaction. */
export const RESERVE_MAX = 64 * 1024 * 1024;
/** Name of the reserve file in the store directory. */
export const RESERVE_FILE = 'reserve';
/** statfs is read again after this long... */
const REFRESH_MS = 1000;
/** ...or after this many bytes were admitted. */
const REFRESH_BYTES = 64 * 1024 * 1024;
/** The reserve is re-created only when this much more than floor + reserve is free (no flapping at the edge). */
const RECREATE_MARGIN = 4 * 1024 * 1024;

/** Sizes of the floor and the reserve (defaults from the file system's size). */
export interface SpaceOptions {
  floorBytes?: number;
  reserveBytes?: number;
}

/** The floor and the reserve of one store. */
export class SpaceGuard {
  readonly floor: number;
  readonly reserveSize: number;
  private readonly reservePath: string;
  /** Bytes of the reserve file allocated now. */
  private held = 0;
  private available = 0;
  private readAt = 0;
  private admittedSince = 0;
  private refusing = false;
  private recreating = false;
  private closed = false;

  /** Measures the file system of `dir` and makes sure the reserve is there (or will be once there is room). */
  constructor(private readonly dir: string, opts: SpaceOptions = {}, private readonly log: LogFn = () => undefined) {
    const st = fs.statfsSync(dir);
    const total = st.blocks * st.bsize;
    this.floor = opts.floorBytes ?? Math.min(FLOOR_MAX, Math.floor(total / 8));
    this.reserveSize = opts.reserveBytes ?? Math.min(RESERVE_MAX, Math.floor(total / 16));
    this.reservePath = path.join(dir, RESERVE_FILE);
    this.held = allocatedBytes(this.reservePath);
    this.refresh();
    this.maybeRecreate(false);
  }

  /**
   * Admits a write of `bytes` to a volume of `kind`, or throws ENOSPC when
   * it would leave less than the floor free (see the rules above).
   */
  admit(bytes: number, kind: 'disk' | 'memory', volume?: string): void {
    if (Date.now() - this.readAt >= REFRESH_MS || this.admittedSince >= REFRESH_BYTES) {
      this.refresh();
      this.maybeRecreate(true);
    }
    const floor = kind === 'memory' ? this.floor / 4 : this.floor;
    if (this.room() - bytes < floor && this.admittedSince > 0) this.refresh();
    if (this.room() - bytes < floor) {
      if (kind === 'disk') this.setRefusing(true);
      throw new DormantError('ENOSPC',
        `no space left: ${mib(this.available)} free on the store's file system, writes stop at ${mib(floor + this.reserveSize - this.held)}`
        + ` (floor ${mib(floor)}${this.held < this.reserveSize ? `, space reserve ${mib(this.reserveSize - this.held)} to win back` : ''})`,
      { volume, length: bytes });
    }
    // Writes are said to be accepted again only with some room to spare (no line per write at the edge).
    if (kind === 'disk' && this.refusing && this.room() - bytes >= floor + floor / 4) this.setRefusing(false);
    this.available -= bytes;
    this.admittedSince += bytes;
  }

  /**
   * Before something that must finish (a flush, a removal, GC, closing):
   * when less than `need` bytes are free, releases the reserve. Returns
   * true when it released something.
   */
  makeRoom(need: number, why: string): boolean {
    this.refresh();
    if (this.available >= need) return false;
    return this.release(why);
  }

  /** Bytes available on the file system now (statfs). */
  freeBytes(): number {
    this.refresh();
    return this.available;
  }

  /** Releases the reserve (after an ENOSPC, or by `makeRoom`); true when it held something. */
  release(why: string): boolean {
    if (this.held === 0) return false;
    const freed = this.held;
    try {
      fs.rmSync(this.reservePath, { force: true });
    } catch (err) {
      this.log(`store: cannot release the space reserve ${this.reservePath}: ${(err as Error).message}`, asError(err));
      return false;
    }
    this.held = 0;
    this.refresh();
    this.log(`store: released the space reserve (${mib(freed)}) to ${why}; ${mib(this.available)} free now`,
      { level: 'warn', freed, available: this.available });
    return true;
  }

  /** Reads statfs again, and re-creates the reserve later when there is room for it (after GC). */
  settle(): void {
    this.refresh();
    this.maybeRecreate(true);
  }

  /** Stops re-creating the reserve (the store is closing). */
  close(): void {
    this.closed = true;
  }

  /** Bytes writes may use before the floor, counting the reserve not held as used. */
  private room(): number {
    return this.available - (this.reserveSize - this.held);
  }

  private refresh(): void {
    try {
      const st = fs.statfsSync(this.dir);
      this.available = st.bavail * st.bsize;
    } catch {
      this.available = 0; // (the directory is gone: nothing will be written there)
    }
    this.readAt = Date.now();
    this.admittedSince = 0;
  }

  private setRefusing(on: boolean): void {
    if (on === this.refusing) return;
    this.refusing = on;
    this.log(on
      ? `store: ${mib(this.available)} free on the file system of ${this.dir}, under the floor: new writes get ENOSPC (reads go on)`
      : `store: free space is back above the floor (${mib(this.available)} free): writes are accepted again`,
      { level: on ? 'warn' : 'info', available: this.available, full: on });
  }

  /**
   * Allocates the rest of the reserve when the floor and the whole reserve
   * are free; `later`: not now but after the current operation
   * (setImmediate), as it may take a moment.
   */
  private maybeRecreate(later: boolean): void {
    if (this.closed || this.recreating || this.held >= this.reserveSize) return;
    if (this.available - (this.reserveSize - this.held) < this.floor + RECREATE_MARGIN) return;
    const run = (): void => {
      this.recreating = false;
      if (this.closed || this.held >= this.reserveSize) return;
      const wasReleased = this.held === 0;
      try {
        this.held = allocateReserve(this.reservePath, this.reserveSize);
      } catch (err) {
        this.held = allocatedBytes(this.reservePath);
        this.log(`store: cannot allocate the space reserve ${this.reservePath}: ${(err as Error).message}`,
          asWarn({ err: (err as Error).message }));
        return;
      }
      const st = fs.statfsSync(this.dir);
      this.available = st.bavail * st.bsize;
      if (wasReleased && later) this.log(`store: space reserve re-created (${mib(this.held)})`, { held: this.held });
    };
    if (!later) { run(); return; }
    this.recreating = true;
    setImmediate(run).unref();
  }
}

/** Bytes the file at `p` has allocated on disk (0 when missing). */
function allocatedBytes(p: string): number {
  try {
    const st = fs.statSync(p);
    return Math.min(st.size, st.blocks * 512);
  } catch {
    return 0;
  }
}

/** Makes `p` a file of `size` bytes allocated on disk (fallocate, else zeroes written); returns its allocated bytes. */
function allocateReserve(p: string, size: number): number {
  const fd = fs.openSync(p, 'a+', 0o600);
  try {
    try {
      allocateRange(fd, 0, size);
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOSPC') throw err;
      const zeroes = Buffer.alloc(1024 * 1024);
      for (let at = 0; at < size; at += zeroes.length) fs.writeSync(fd, zeroes, 0, Math.min(zeroes.length, size - at), at);
    }
  } catch (err) {
    fs.closeSync(fd);
    fs.rmSync(p, { force: true });
    throw err;
  }
  fs.closeSync(fd);
  return allocatedBytes(p);
}

/** `n` bytes in MiB for log lines and messages. */
function mib(n: number): string {
  return `${(Math.max(0, n) / 1048576).toFixed(1)} MiB`;
}
