/**
 * Landing places for big writes: runs of slots a socket read fills
 * directly (the payload lands in the page cache, no copy and no pwrite
 * after it), and the free runs they are taken from.
 *
 * A big write of a block whose chunk is pending and only its own would
 * otherwise overwrite that chunk's slot: its payload copied from the
 * receive buffer into the file by a pwrite on libuv's pool. Landed, the
 * payload is already in the file when the write is applied: the chunk
 * takes the landed slot (keeping its id; `Writeback.relocateRun`) and its old
 * slot becomes free, and the next big write lands there. The page cache a
 * working set uses stays the same pages, rewritten in place by the socket.
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
import type { Location } from './segments.js';

/** The smallest landing (64 KiB): shorter free runs are dropped. */
export const MIN_RUN = 16;
/** Free runs kept at most (beyond: the oldest are dropped, garbage for GC). */
const MAX_RUNS = 1 << 16;

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
