/**
 * Landings on the segments' side: runs of slots that a socket read fills
 * directly through the writable twin of a segment's mapping (the payload
 * lands in the page cache: no copy and no pwrite after it). Which slots a
 * landing takes, and what the write then does with them, is landing.ts's.
 *
 * State: holds per segment (landings in flight, and pages being faulted
 * in ahead: the mapping stays, GC and deletion leave the segment alone);
 * the segments GC is compacting (nothing lands there); how far fresh slots
 * of the active segment are prepared (allocated on disk and faulted in).
 *
 * Rules:
 *  - A landing goes only where `canLandAt` says: writes through mappings
 *    on (segment-maps.ts `writable`: a file system that overwrites in
 *    place, and room on it), the segment not being compacted, no read of
 *    it in flight on the pool (that read located bytes it will check), no
 *    pool write to those slots, none of them still in the append buffer.
 *  - Fresh slots (`reserveFresh`) are allocated on disk before anything
 *    lands in them, so that a store through the mapping cannot fault on a
 *    full disk; they are allocated and faulted in PREPARE_AHEAD_SLOTS
 *    ahead of the append point, on libuv's pool, so that a socket read
 *    landing there takes no page fault on the JS thread.
 *  - A landing's bytes reach the page cache after it began, perhaps after
 *    a sync that started meanwhile: its segment is marked for the next
 *    sync when it ends (`endLanding`).
 */
import { BLOCK_SIZE, BLOCKS_PER_SEGMENT } from './constants.js';
import { DormantError } from './errors.js';
import type { AppendSegment } from './append-segment.js';
import type { PoolWrites } from './pool-writes.js';
import { slotOffset } from './segment-file.js';
import type { SegmentMaps } from './segment-maps.js';
import type { Location } from './segments.js';
import { allocateRange, populateMapped } from '../native/index.js';

/**
 * Fresh slots for landings are allocated on disk this far ahead of the
 * append point, and their pages faulted in on libuv's pool, so that a
 * socket read landing there takes no page fault on the JS thread.
 */
const PREPARE_AHEAD_SLOTS = 4096;

/** Landing places in the segments, and the holds landings keep on them. */
export class SegmentLandings {
  /** Landings in flight (`landingView` .. `endLanding`) and prepares, per segment: its mapping stays, GC leaves it alone. */
  private readonly holdsBySegment = new Map<number, number>();
  /** Segments GC is compacting: nothing lands there. */
  private readonly compacting = new Set<number>();
  /** Slots of segment `preparedIn` below `preparedTo` are allocated on disk and faulted in, or being (reserveFresh). */
  private preparedIn = 0;
  private preparedTo = 0;

  constructor(private readonly maps: SegmentMaps, private readonly append: AppendSegment,
    private readonly writes: PoolWrites, private readonly unsynced: Set<number>) {}

  /** True when a landing (or a prepare) holds `segment`: it may be neither deleted nor closed. */
  holds(segment: number): boolean {
    return this.holdsBySegment.has(segment);
  }

  /**
   * True when `count` slots from `slot` of `segment`, which no chunk uses,
   * may be landed in now (see the rules above).
   */
  canLandAt(segment: number, slot: number, count: number): boolean {
    if (!this.maps.writable || this.compacting.has(segment)) return false;
    if (this.append.holds(segment, slot, count)) return false;
    if (this.maps.readPinned(segment)) return false;
    return this.writes.covering(segment, slot, count) === undefined;
  }

  /**
   * `count` fresh consecutive slots at the end of the active segment (a new
   * segment when they do not fit), their disk blocks allocated now, so a
   * write through the mapping into them cannot fault on a full disk; null
   * when that cannot be done (writes through mappings off, no space).
   */
  reserveFresh(count: number): Location | null {
    if (!this.maps.writable || count > BLOCKS_PER_SEGMENT) return null;
    const slot = this.append.roomFor(count);
    const active = this.append.id;
    if (this.preparedIn !== active) {
      this.preparedIn = active;
      this.preparedTo = slot;
    }
    if (slot + count > this.preparedTo - PREPARE_AHEAD_SLOTS / 2) {
      const from = Math.max(slot, this.preparedTo);
      const to = Math.min(BLOCKS_PER_SEGMENT, slot + count + PREPARE_AHEAD_SLOTS);
      try {
        allocateRange(this.append.fd, slotOffset(from), (to - from) * BLOCK_SIZE);
      } catch {
        return null; // (ENOSPC, or no fallocate here: the caller writes the ordinary way and reports what it gets)
      }
      this.preparedTo = to;
      this.prepare(active, Math.max(from, slot + count), to);
    }
    this.append.take(count);
    return { segment: active, slot };
  }

  /**
   * A writable view of `count` slots from `loc` in the page cache (the
   * segment's writable mapping) for a socket read to land in; the landing
   * lasts until `endLanding(loc.segment)`: meanwhile the mapping stays and
   * GC leaves the segment alone. The caller reserved the slots (free or
   * fresh) and is their only writer.
   */
  landingView(loc: Location, count: number): Buffer {
    const m = this.maps.mapFor(loc.segment);
    const pos = slotOffset(loc.slot);
    if (!m.writable || pos + count * BLOCK_SIZE > m.size) {
      throw new DormantError('EINTERNAL', `segment ${loc.segment} cannot take a landing at slot ${loc.slot}`);
    }
    this.hold(loc.segment);
    return Buffer.from(this.maps.twinOf(m), pos, count * BLOCK_SIZE);
  }

  /**
   * A landing in `segment` is over (its bytes were taken, or dropped): the
   * segment needs the next sync.
   */
  endLanding(segment: number): void {
    this.unsynced.add(segment);
    this.release(segment);
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
    if (this.holdsBySegment.has(segment)) return false;
    this.compacting.add(segment);
    return true;
  }

  /** Faults in slots [from, to) of `segment` (allocated already) on libuv's pool; the segment stays mapped meanwhile. */
  private prepare(segment: number, from: number, to: number): void {
    if (to <= from) return;
    const m = this.maps.mapFor(segment);
    if (!m.writable) return;
    this.hold(segment);
    const done = (): void => this.release(segment); // (no bytes of ours: nothing to sync)
    populateMapped(this.maps.twinOf(m), slotOffset(from), (to - from) * BLOCK_SIZE).then(done, done);
  }

  /** One hold more on `segment`'s mapping. */
  private hold(segment: number): void {
    this.holdsBySegment.set(segment, (this.holdsBySegment.get(segment) ?? 0) + 1);
  }

  /** One hold on `segment`'s mapping less. */
  private release(segment: number): void {
    const n = (this.holdsBySegment.get(segment) ?? 1) - 1;
    if (n > 0) this.holdsBySegment.set(segment, n); else this.holdsBySegment.delete(segment);
  }
}
