/**
 * Landing places for big writes, as the engine sees them: runs of slots a
 * socket read fills directly (the payload lands in the page cache, no copy
 * and no pwrite after it), where they are taken from, and what a landed
 * write does with its slots. The segments' side (writable twins, holds,
 * fresh slots allocated ahead) is segment-landings.ts.
 *
 * A big write of a block whose chunk is pending and only its own would
 * otherwise overwrite that chunk's slot: its payload copied from the
 * receive buffer into the file by a pwrite on libuv's pool. Landed, the
 * payload is already in the file when the write is applied: the chunk
 * takes the landed slot (keeping its id; `Writeback.relocateRun`) and its old
 * slot becomes free, and the next big write lands there. The page cache a
 * working set uses stays the same pages, rewritten in place by the socket.
 *
 * State: the free runs (FreeSlots), and for the writeBlocks call being
 * applied (Landings): where its payload landed, which of those slots its
 * blocks used, and the old slots it freed so far.
 *
 * Free runs come from such relocations and from landed slots a write did
 * not use (zero blocks, duplicates). A slot is free when no chunk, pending
 * or committed, uses it: a committed chunk's slot is never freed here (GC
 * reclaims those), so the index never points at a slot that is reused. A
 * free slot is landed in only when SegmentLandings.canLandAt says so: no read
 * on the pool is in flight in its segment (it located bytes it will
 * check), no pool write to it, not in the append buffer, GC not compacting
 * the segment. Views of pending chunks are never handed out (readView), so
 * no reply still queued on a socket reads a slot that is reused. After a
 * crash free slots are unreferenced segment bytes, garbage for GC.
 *
 * When no free run fits, fresh slots at the end of the active segment are
 * reserved and allocated on disk first (SegmentLandings.reserveFresh). Runs
 * shorter than MIN_RUN are not kept (they could take no landing).
 */
import type { Location, SegmentFiles } from './segments.js';

/** The smallest landing (64 KiB): shorter free runs are dropped. */
export const MIN_RUN = 16;
/** Free runs kept at most (beyond: the oldest are dropped, garbage for GC). */
const MAX_RUNS = 1 << 16;

/** `count` free slots from `slot` of `segment`. */
interface Run { segment: number; slot: number; count: number }

/** Free runs of slots, first freed first used. */
export class FreeSlots {
  private runs: Run[] = [];
  private head = 0;

  /** `count` slots from `slot` of `segment` are free (no chunk uses them). */
  free(segment: number, slot: number, count: number): void {
    if (count < MIN_RUN) return;
    if (this.runs.length - this.head >= MAX_RUNS) this.shiftHead(); // the oldest run is forgotten: garbage for GC
    this.runs.push({ segment, slot, count });
  }

  /**
   * Takes `count` consecutive free slots for which `ok(segment, slot,
   * count)` holds (the first such run, split if longer); null when none.
   * Runs found unusable stay for later.
   */
  take(count: number, ok: (segment: number, slot: number, count: number) => boolean): Location | null {
    for (let i = this.head; i < this.runs.length; i++) {
      const r = this.runs[i];
      if (r.count < count || !ok(r.segment, r.slot, count)) continue;
      const loc = { segment: r.segment, slot: r.slot };
      r.slot += count;
      r.count -= count;
      if (r.count < MIN_RUN) {
        this.runs[i] = this.runs[this.head]; // the oldest run takes the used one's place...
        this.shiftHead(); // ...and leaves the head
      }
      return loc;
    }
    return null;
  }

  /** Forgets the runs of `segment` (GC deleted or is compacting it). */
  purge(segment: number): void {
    this.runs = this.runs.slice(this.head).filter((r) => r.segment !== segment);
    this.head = 0;
  }

  /** Moves `head` past its run. */
  private shiftHead(): void {
    this.head++;
    if (this.head > 1024 && this.head * 2 > this.runs.length) {
      this.runs = this.runs.slice(this.head);
      this.head = 0;
    }
  }
}

/** Where landings go, and the bookkeeping of the landed write being applied. */
export class Landings {
  /** Free runs of slots, for landings. */
  private readonly free = new FreeSlots();
  /** The current writeBlocks call's data already lies in these slots (a landed write); null: not a landed write. */
  at: Location | null = null;
  /** Which of the landed slots the current call used (1: a chunk took it). */
  private used = new Uint8Array(256);
  /** Old slots the current landed write freed, gathered into a run. */
  private readonly freedRun = { segment: 0, slot: 0, count: 0 };

  constructor(private readonly segments: SegmentFiles) {}

  /**
   * A landing place for a big write of `n` blocks: `buffer` is a writable
   * view of `n` slots in the page cache for the payload to be read into,
   * `loc` the first slot; null when none can be had (the write goes the
   * ordinary way). A free run first, else fresh slots.
   */
  land(n: number): { loc: Location; buffer: Buffer } | null {
    const landings = this.segments.landings;
    const loc = this.free.take(n, (seg, slot, count) => landings.canLandAt(seg, slot, count)) ?? landings.reserveFresh(n);
    if (loc === null) return null;
    return { loc, buffer: landings.landingView(loc, n) };
  }

  /** A landing whose payload never came: its slots are free again. Only once nothing can still write into its buffer. */
  abandon(loc: Location, n: number): void {
    this.free.free(loc.segment, loc.slot, n);
    this.segments.landings.endLanding(loc.segment);
  }

  /** Forgets the free slots of `segment` (GC is compacting or deleted it). */
  forgetSegment(segment: number): void {
    this.free.purge(segment);
  }

  /** A writeBlocks call of `n` blocks whose payload landed at `landed` begins. */
  begin(landed: Location, n: number): void {
    this.at = landed;
    if (this.used.length < n) this.used = new Uint8Array(n);
    this.used.fill(0, 0, n);
  }

  /** Blocks i .. i + count - 1 of the landed write took their landed slots. */
  use(i: number, count: number): void {
    this.used.fill(1, i, i + count);
  }

  /** `count` old slots from `slot` of `segment` were freed by the landed write (gathered into runs: single slots would be dropped as too short). */
  freed(segment: number, slot: number, count: number): void {
    const r = this.freedRun;
    if (r.count > 0 && r.segment === segment && r.slot + r.count === slot) {
      r.count += count;
      return;
    }
    this.flushFreed();
    r.segment = segment;
    r.slot = slot;
    r.count = count;
  }

  /** The landed write of `n` blocks ends: landed slots it did not use, and the old slots it freed, are free. */
  end(n: number): void {
    const landed = this.at!;
    this.at = null;
    this.flushFreed();
    const used = this.used;
    for (let i = 0; i < n;) {
      if (used[i] === 1) { i++; continue; }
      let j = i + 1;
      while (j < n && used[j] === 0) j++;
      this.free.free(landed.segment, landed.slot + i, j - i);
      i = j;
    }
    this.segments.landings.endLanding(landed.segment);
  }

  /** Frees the run of old slots gathered so far. */
  private flushFreed(): void {
    const r = this.freedRun;
    if (r.count > 0) this.free.free(r.segment, r.slot, r.count);
    r.count = 0;
  }
}
