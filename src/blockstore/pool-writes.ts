/**
 * Writes of segment slots in flight on libuv's pool (SegmentFiles
 * .overwriteAsync): a big write's blocks are written from the caller's
 * buffer while the JS thread goes on.
 *
 * State: each write in flight, by segment (its slots and its source
 * buffer); how many writes use each descriptor; their promises; the first
 * failure.
 *
 * Ordering rule: until a write lands, reads of its slots are served from
 * its source buffer (`covering`), its slots are not overwritten again
 * (SegmentFiles.canOverwrite), its descriptor stays open (once closed, the
 * number could name another file: `usesFd`), and a sync waits for it
 * (`landed`). A write that fails leaves its slots holding unknown bytes:
 * every later sync fails with the first such error (`failure`), so nothing
 * that refers to them is committed. A write that fails because the disk is
 * full is tried once more when the store could release its space reserve
 * (its source buffer is still the caller's, unchanged).
 */
import { BLOCK_SIZE } from './constants.js';
import type { DormantError } from './errors.js';
import { isNoSpace, segmentError, writeFully } from './segment-file.js';

/** Slots being written on libuv's pool: reads of them copy from `src` until the write lands. */
export interface SlotWrite { slot: number; count: number; src: Buffer; srcOffset: number; fd: number }

/** The registry of slot writes in flight. */
export class PoolWrites {
  private readonly bySegment = new Map<number, SlotWrite[]>();
  private count = 0;
  /** Descriptors with writes in flight, and how many. */
  private readonly fds = new Map<number, number>();
  /** Promises of the writes in flight (each already has a rejection handler). */
  private readonly inFlight = new Set<Promise<void>>();
  private firstFailure: DormantError | null = null;

  /**
   * `fdFree(fd)` is called when the last write in flight on `fd` lands;
   * `makeRoom()` releases the space reserve after an ENOSPC (true when it freed some).
   */
  constructor(private readonly fdFree: (fd: number) => void, private readonly makeRoom: () => boolean = () => false) {}

  /** The first write that failed (its slots hold unknown bytes), if any. */
  get failure(): DormantError | null { return this.firstFailure; }

  /**
   * Starts writing `w.count` slots of `segment` from `w.src` at byte `pos`
   * of `w.fd`; resolves once they have landed (EIO if the write failed,
   * ENOSPC when the disk was full).
   */
  start(segment: number, w: SlotWrite, pos: number): Promise<void> {
    let list = this.bySegment.get(segment);
    if (list === undefined) { list = []; this.bySegment.set(segment, list); }
    list.push(w);
    this.count++;
    this.fds.set(w.fd, (this.fds.get(w.fd) ?? 0) + 1);
    const write = () => writeFully(w.fd, w.src, w.srcOffset, w.count * BLOCK_SIZE, pos);
    const landed = write()
      .catch((err: unknown) => {
        if (isNoSpace(err) && this.makeRoom()) return write();
        throw err;
      })
      .then(() => this.forget(segment, w), (err: Error) => {
        this.forget(segment, w);
        const e = segmentError(err, `cannot write segment ${segment}: ${err.message}`);
        this.firstFailure ??= e;
        throw e;
      });
    this.inFlight.add(landed);
    landed.catch(() => undefined).finally(() => this.inFlight.delete(landed));
    return landed;
  }

  /** A write in flight that covers some of `count` slots from `slot` of `segment`, if any. */
  covering(segment: number, slot: number, count = 1): SlotWrite | undefined {
    if (this.count === 0) return undefined;
    const list = this.bySegment.get(segment);
    if (list === undefined) return undefined;
    for (const w of list) if (w.slot < slot + count && slot < w.slot + w.count) return w;
    return undefined;
  }

  /** True when a write into `segment` is in flight. */
  inSegment(segment: number): boolean {
    return this.bySegment.has(segment);
  }

  /** True when a write in flight uses descriptor `fd`. */
  usesFd(fd: number): boolean {
    return this.fds.has(fd);
  }

  /** A promise that settles once the writes in flight now have landed or failed; null when none is. */
  landed(): Promise<unknown> | null {
    return this.inFlight.size > 0 ? Promise.allSettled([...this.inFlight]) : null;
  }

  /** Resolves once no write is in flight (failures are left to their callers and to `failure`). */
  async settled(): Promise<void> {
    while (this.inFlight.size > 0) await Promise.allSettled([...this.inFlight]);
  }

  /** `w` landed or failed: it leaves the registry. */
  private forget(segment: number, w: SlotWrite): void {
    const list = this.bySegment.get(segment)!;
    list.splice(list.indexOf(w), 1);
    if (list.length === 0) this.bySegment.delete(segment);
    this.count--;
    const left = this.fds.get(w.fd)! - 1;
    if (left > 0) this.fds.set(w.fd, left); else this.fds.delete(w.fd);
    if (left <= 0) this.fdFree(w.fd);
  }
}
