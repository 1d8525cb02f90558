/**
 * Flushing: making acknowledged writes durable by committing the
 * write-back to the index, when asked and in the background.
 *
 * State: the queue of flushes (`tail`: each runs after the one before),
 * the background flush in progress, the timer, when the last write came
 * and when read fingerprints were last written.
 *
 * Ordering rule: a flush syncs the segments, then commits the write-back
 * generation it took, in slices of one transaction each (commit.ts);
 * flushes run one after another, each covering every write acknowledged
 * before it was called. The segments are synced before the first slice's
 * transaction, so the index never points at data a crash could lose.
 *
 * Background flushes start when the oldest pending write is
 * `intervalMs` old, when no write came for `idleMs`, or when the
 * write-back is big (`afterWrite`); past twice that size a writer waits
 * for the flush (backpressure). Read fingerprints are counters, not data:
 * they ride along at most every PRINTS_INTERVAL_MS, and always when asked
 * (at close).
 *
 * A full disk: before committing, a flush asks for room for what it may
 * write (the append buffer, the index's growth) and the store releases its
 * space reserve when less is free (space.ts); a flush that still fails with
 * ENOSPC gets the reserve released and is tried once more (the generation
 * was put back, so the second try is an ordinary flush).
 */
import {
  COMMIT_SLICE_ENTRIES, PRINTS_INTERVAL_MS, WRITEBACK_MAX_BLOCKS, WRITEBACK_MAX_PAGES,
} from './constants.js';
import { DormantError } from './errors.js';
import { asError, type LogFn } from './log.js';
import type { Committer, IndexDbs } from './index-db.js';
import type { Catalog } from './catalog.js';
import type { SegmentFiles } from './segments.js';
import type { Writeback } from './writeback.js';
import type { BlockEngine } from './engine.js';
import { applyGeneration } from './commit.js';
import type { Fingerprints } from './fingerprints.js';
import { isNoSpace } from './segment-file.js';

/** Room a flush asks for per pending block (index entries, copied pages of the B-trees), on top of FLUSH_ROOM_BYTES. */
const FLUSH_ROOM_PER_BLOCK = 128;
/** Room a flush asks for in any case: the append buffer and the pages every commit copies. */
const FLUSH_ROOM_BYTES = 2 * 1024 * 1024;

/** What a flush commits, and where. */
export interface FlushContext {
  dbs: IndexDbs;
  catalog: Catalog;
  engine: BlockEngine;
  writeback: Writeback;
  segments: SegmentFiles;
  committer: Committer;
  fingerprints: Fingerprints;
  /** True once the store is closed: no flush runs any more. */
  closed(): boolean;
  /** Releases the space reserve when less than `need` bytes are free (space.ts); true when it did. */
  makeRoom(need: number, why: string): boolean;
  /** Releases the space reserve after an ENOSPC; true when it held some. */
  releaseReserve(why: string): boolean;
  /** One line about a background flush that failed. */
  log: LogFn;
}

/** The flush queue and the background flushes of one store. */
export class Flusher {
  private tail: Promise<void> = Promise.resolve();
  private background: Promise<void> | null = null;
  private timer: NodeJS.Timeout | null = null;
  /** When read fingerprints were last written to the index. */
  private printsAt = Date.now();
  /** When the last write was acknowledged (Date.now()). */
  private lastWriteAt = 0;
  /** The message of the last background flush that failed (logged once until one succeeds). */
  private lastFailure = '';

  /**
   * Flushes in the background once the oldest pending write is
   * `intervalMs` old (0: never by time) or no write came for `idleMs`
   * (capped at `intervalMs`).
   */
  constructor(private readonly ctx: FlushContext, intervalMs: number, idleMs: number) {
    if (intervalMs > 0) {
      const idle = Math.min(idleMs, intervalMs);
      this.timer = setInterval(() => {
        const now = Date.now();
        const wb = this.ctx.writeback;
        const due = wb.size > 0 && (now - this.lastWriteAt >= idle || now - wb.since >= intervalMs);
        if (due || this.printsDue(false)) this.flushInBackground();
      }, Math.max(10, Math.min(idle, intervalMs) / 2));
      this.timer.unref();
    }
  }

  /** Makes every write acknowledged so far durable (and read fingerprints, when `withPrints`). */
  flush(withPrints = false): Promise<void> {
    const run = () => this.flushOnce(withPrints);
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Stops flushing by time (the store is closing). */
  stopTimer(): void {
    if (this.timer) clearInterval(this.timer);
  }

  /**
   * A write was acknowledged: schedules a background flush when enough is
   * pending, and returns it for the writer to wait on past twice that (a
   * writer that never yields would otherwise grow the pending set without
   * bound).
   */
  afterWrite(): Promise<void> | undefined {
    this.lastWriteAt = Date.now();
    const wb = this.ctx.writeback;
    if (wb.size < WRITEBACK_MAX_BLOCKS && wb.pages < WRITEBACK_MAX_PAGES) return undefined;
    this.flushInBackground();
    const over = wb.size >= 2 * WRITEBACK_MAX_BLOCKS || wb.pages >= 2 * WRITEBACK_MAX_PAGES;
    return over ? this.background ?? undefined : undefined;
  }

  private flushInBackground(): void {
    if (this.background || this.ctx.closed()) return;
    this.background = this.flush()
      .then(() => { this.lastFailure = ''; }, (err) => {
        const msg = (err as Error).message;
        if (msg !== this.lastFailure) this.ctx.log(`store: background flush failed: ${msg}`, asError(err));
        this.lastFailure = msg;
      })
      .finally(() => { this.background = null; });
  }

  /**
   * Commits the pending writes, and the read fingerprints when they are
   * due (writing a count per chunk read at every flush would weigh on the
   * read path) or `withPrints`.
   */
  private async flushOnce(withPrints: boolean): Promise<void> {
    const { writeback, segments } = this.ctx;
    if (this.ctx.closed()) return;
    if (writeback.size === 0 && !segments.needsSync() && !this.printsDue(withPrints)) return;
    this.ctx.makeRoom(FLUSH_ROOM_BYTES + writeback.size * FLUSH_ROOM_PER_BLOCK, 'let a flush commit');
    try {
      await this.commitPending(withPrints);
    } catch (err) {
      if (!isNoSpace(err) || !this.ctx.releaseReserve('let a flush commit')) throw err;
      await this.commitPending(withPrints);
    }
  }

  /** Syncs the segments and commits the pending generation in slices; on a failure the generation is put back. */
  private async commitPending(withPrints: boolean): Promise<void> {
    const { dbs, catalog, engine, writeback, segments, committer, fingerprints } = this.ctx;
    const printsDue = this.printsDue(withPrints);
    const gen = writeback.takeGeneration();
    const prints = printsDue ? fingerprints.take() : new Map<string, Map<number, number>>();
    if (printsDue) this.printsAt = Date.now();
    // One transaction per slice: handing a transaction's writes to LMDB and
    // releasing its entries run on the JS thread, in time that grows with
    // the new chunks, so a big generation in one transaction would stall
    // every client. Each slice is consistent on its own (its map entries,
    // the chunk records and counts they need); unflushed writes promise no
    // order, so a crash between slices loses nothing that was promised.
    let printsCommitted = false;
    try {
      for (const [k, slice] of gen.slices(COMMIT_SLICE_ENTRIES).entries()) {
        const entered = await committer.commitPlanned(async (w) => {
          const ids = await applyGeneration(dbs, catalog, engine.blockMap, writeback, slice, w);
          if (k === 0) await fingerprints.apply(prints, w);
          return ids;
        }, k === 0 ? () => segments.sync() : undefined);
        printsCommitted = true;
        // The index changed under cached look-ups: forget them in the same
        // tick that drops the entries readers were seeing instead.
        if (slice.lineages.size > 0) engine.invalidate();
        writeback.releaseCommitted(slice, entered, (hash) => engine.filter.add(hash));
      }
    } catch (err) {
      writeback.restoreGeneration(gen);
      if (!printsCommitted) fingerprints.restore(prints);
      throw err instanceof DormantError ? err
        : new DormantError(isNoSpace(err) ? 'ENOSPC' : 'EIO', `flush failed: ${(err as Error).message}`, { cause: err });
    }
  }

  /** True when read fingerprints are waiting and it is time (or `now`) to write them. */
  private printsDue(now: boolean): boolean {
    return this.ctx.fingerprints.hasDirty && (now || Date.now() - this.printsAt >= PRINTS_INTERVAL_MS);
  }
}
