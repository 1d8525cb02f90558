/**
 * The guest's memory traffic as the FUSE view sees it. QEMU maps a VM's RAM
 * from the memory volume's file (share=on), so:
 *   - a FUSE read of `<vm>.mem` is a guest page fault on a page that is not
 *     in the host page cache (plus the kernel's read-around of it);
 *   - a FUSE write is a dirty page written back (page-out or the kernel's
 *     periodic writeback).
 * MemoryIo is the FUSE mount's IoObserver: it counts both per tracked
 * memory volume and marks the pages read since the last page-out (the
 * epoch), which become the VM's working set at the next page-out.
 *
 * Reads while a prefetch of that volume runs are the prefetch's own
 * read-ahead, not faults: they are counted apart.
 *
 * Event classes: while the pager says the guest is handling an event of a
 * class (a network connection, a timer wake-up of a paged VM), each fault
 * also marks its pages in that class's epoch, and each event of the class
 * is counted; the pager folds those into per-class working sets.
 *
 * Cost per call: a Map lookup and a loop over the pages of the request
 * (at most 32: FUSE requests are at most 128 KiB).
 */
import type { IoObserver } from '../fuse/index.js';

const PAGE = 4096;
/** Seconds of history behind faults/s. */
export const RATE_WINDOW_S = 10;

/** What a guest is woken by: an incoming connection, or its own timers. */
export type EventClass = 'network' | 'timer';

/** Every event class. */
export const EVENT_CLASSES: readonly EventClass[] = ['network', 'timer'];

/** Pages one event class touched in an epoch, and how many events it had. */
export interface ClassEpoch { touched: Uint8Array; events: number }

/** Counters of one memory volume since it was tracked. */
export interface MemoryCounters {
  /** FUSE read requests outside prefetch (guest faults that went to the store). */
  faults: number;
  /** Pages those reads brought in. */
  pagesIn: number;
  /** Pages read by prefetches. */
  prefetchPages: number;
  /** FUSE write requests and the pages they wrote (write-back, page-out). */
  writes: number;
  pagesOut: number;
}

/** Traffic of one tracked memory volume. */
export class VolumeIo {
  readonly counters: MemoryCounters = { faults: 0, pagesIn: 0, prefetchPages: 0, writes: 0, pagesOut: 0 };
  /** Per page: reads since the epoch began (saturating at 255). */
  private touched: Uint8Array;
  /** Prefetches running; reads meanwhile are theirs. */
  private prefetching = 0;
  /** The event the guest handles now, as the pager sees it (null: none it attributes). */
  private current: EventClass | null = null;
  private classes = new Map<EventClass, ClassEpoch>();
  /** Faults per second of the last RATE_WINDOW_S seconds, ring indexed by second. */
  private readonly buckets = new Float64Array(RATE_WINDOW_S);
  private readonly bucketSecond = new Float64Array(RATE_WINDOW_S).fill(-1);

  constructor(readonly pages: number) {
    this.touched = new Uint8Array(pages);
  }

  read(pos: number, len: number): void {
    const first = Math.floor(pos / PAGE);
    const end = Math.min(this.pages, Math.ceil((pos + len) / PAGE));
    const n = Math.max(0, end - first);
    // Prefetched pages are marked like faulted ones: the guest is expected to touch them, and a
    // page-out keeps in the working sets only what QEMU has mapped by then (what it did touch).
    for (let p = first; p < end; p++) if (this.touched[p] < 255) this.touched[p]++;
    if (this.current !== null) {
      const c = this.classEpoch(this.current).touched;
      for (let p = first; p < end; p++) if (c[p] < 255) c[p]++;
    }
    if (this.prefetching > 0) { this.counters.prefetchPages += n; return; }
    this.counters.faults++;
    this.counters.pagesIn += n;
    this.lastFaultAt = Date.now();
    const sec = Math.floor(Date.now() / 1000);
    const slot = sec % RATE_WINDOW_S;
    if (this.bucketSecond[slot] !== sec) { this.bucketSecond[slot] = sec; this.buckets[slot] = 0; }
    this.buckets[slot]++;
  }

  write(pos: number, len: number): void {
    this.counters.writes++;
    this.counters.pagesOut += Math.ceil((pos % PAGE + len) / PAGE);
  }

  /** When the last fault was served (ms since the epoch; 0: none yet). */
  lastFaultAt = 0;

  /** The event class faults are attributed to from now on (null: none). */
  get eventClass(): EventClass | null { return this.current; }

  set eventClass(c: EventClass | null) { this.current = c; }

  /** Counts one event of class `c` (a connection, a timer wake-up). */
  countEvent(c: EventClass): void {
    this.classEpoch(c).events++;
  }

  private classEpoch(c: EventClass): ClassEpoch {
    let e = this.classes.get(c);
    if (e === undefined) { e = { touched: new Uint8Array(this.pages), events: 0 }; this.classes.set(c, e); }
    return e;
  }

  /** Ends the class epochs: what each event class touched and counted since the last call. */
  takeClassEpochs(): Map<EventClass, ClassEpoch> {
    const c = this.classes;
    this.classes = new Map();
    return c;
  }

  /** Faults per second over the last RATE_WINDOW_S whole seconds. */
  faultsPerSecond(now = Date.now()): number {
    const sec = Math.floor(now / 1000);
    let sum = 0;
    for (let i = 0; i < RATE_WINDOW_S; i++) {
      const s = this.bucketSecond[i];
      if (s >= sec - RATE_WINDOW_S && s < sec) sum += this.buckets[i];
    }
    return sum / RATE_WINDOW_S;
  }

  /** Pages read in the current epoch. */
  touchedPages(): number {
    let n = 0;
    for (let i = 0; i < this.pages; i++) if (this.touched[i] !== 0) n++;
    return n;
  }

  /** Ends the epoch: returns its per-page read counts and starts a new one. */
  takeEpoch(): Uint8Array {
    const t = this.touched;
    this.touched = new Uint8Array(this.pages);
    return t;
  }

  /** Runs `fn` with this volume's reads counted as prefetch. */
  async asPrefetch<T>(fn: () => Promise<T>): Promise<T> {
    this.prefetching++;
    try { return await fn(); } finally { this.prefetching--; }
  }
}

/** The FUSE observer: routes reads and writes of tracked memory volumes. */
export class MemoryIo implements IoObserver {
  private readonly vols = new Map<string, VolumeIo>();

  /** Starts tracking `volume` of `bytes` bytes (a VM starts); returns its fresh counters. */
  track(volume: string, bytes: number): VolumeIo {
    const v = new VolumeIo(Math.ceil(bytes / PAGE));
    this.vols.set(volume, v);
    return v;
  }

  /** The tracked traffic of `volume`, if any. */
  get(volume: string): VolumeIo | undefined {
    return this.vols.get(volume);
  }

  read(name: string, pos: number, len: number): void {
    this.vols.get(name)?.read(pos, len);
  }

  write(name: string, pos: number, len: number): void {
    this.vols.get(name)?.write(pos, len);
  }
}
