/**
 * The segment being appended to: where new chunks get their slots.
 *
 * State: the segment's id (0: none yet) and descriptor; the next slot to
 * hand out; an append buffer holding slots [bufferBase, bufferBase +
 * bufferCount); whether the file is sized ahead.
 *
 * Slots are handed out in order: appended (`append`: the block is copied
 * into the buffer, which reaches the file when it fills, at `drain` or at
 * sync), or reserved without data (`reserve`, `roomFor` + `take`: the
 * caller writes them). The buffer only ever holds slots after every
 * reserved one: it is drained before a reservation.
 *
 * The file is sized to SEGMENT_MAX_BYTES (a sparse file: holes take no
 * disk) at its first append, not when a store is opened (opening a store
 * changes no file), so appends never move the file's end; it is trimmed
 * to its last slot when the segment is sealed or closed. Its pages ahead
 * of the append point are not faulted in beforehand: faulting in a hole
 * zeroes the page only for the write to copy over it.
 *
 * After a crash the last segment may end with a partial or unreferenced
 * tail, or with the sparse rest of its size: `resume` goes on at the next
 * whole slot when the size says where that is, else appends go to a new
 * segment; the tail is garbage for GC.
 *
 * Every file written is added to the owner's `unsynced` set (and a new
 * file reported through `created`), for SegmentFiles.sync.
 */
import fs from 'node:fs';
import { BLOCK_SIZE, BLOCKS_PER_SEGMENT, SEGMENT_HEADER_SIZE, SEGMENT_MAX_BYTES } from './constants.js';
import type { HashFunction } from './hash.js';
import {
  encodeHeader, listSegments, segmentError, segmentFileSize, segmentPath, slotOffset, withRoom, writeFullySync,
} from './segment-file.js';
import type { SegmentMaps } from './segment-maps.js';
import type { Location } from './segments.js';

/** Blocks buffered before they are written to the file in one call. */
const APPEND_BUFFER_BLOCKS = 256;

/** The active segment and its append buffer. */
export class AppendSegment {
  private active = 0; // segment being appended (0 = none yet)
  private activeFd = -1;
  private nextSlot = 0; // next slot of `active` to hand out
  private buffer = Buffer.allocUnsafe(APPEND_BUFFER_BLOCKS * BLOCK_SIZE);
  private bufferBase = 0; // slot of buffer[0]
  private bufferCount = 0;
  /** The active segment's file is sized ahead (and must be trimmed when appending to it stops). */
  private sizedAhead = false;

  /** `makeRoom()` releases the store's space reserve after an ENOSPC (true when it freed some: the write is tried again). */
  constructor(private readonly dir: string, private readonly hash: HashFunction, private readonly maps: SegmentMaps,
    private readonly unsynced: Set<number>, private readonly created: () => void,
    private readonly makeRoom: () => boolean = () => false) {}

  /** The segment appended to (0 if none). */
  get id(): number { return this.active; }

  /** Its descriptor (-1 if none). */
  get fd(): number { return this.activeFd; }

  /** Bytes of the active segment that slots occupy (header and slots handed out); -1 for another segment. */
  usedBytes(id: number): number {
    return id === this.active ? SEGMENT_HEADER_SIZE + this.nextSlot * BLOCK_SIZE : -1;
  }

  /** True when appended blocks wait in the buffer. */
  get buffered(): boolean { return this.bufferCount > 0; }

  /** Resumes appending into the newest segment if it has room (after open). */
  resume(): void {
    const ids = listSegments(this.dir);
    const last = ids[ids.length - 1];
    if (last === undefined) return;
    const size = segmentFileSize(this.dir, last);
    const slot = Math.ceil(Math.max(0, size - SEGMENT_HEADER_SIZE) / BLOCK_SIZE);
    if (size < SEGMENT_HEADER_SIZE || slot >= BLOCKS_PER_SEGMENT) return;
    let fd: number;
    try { fd = this.maps.fdFor(last); } catch { return; } // a damaged header: its reads are EIO, appends go to a new segment
    this.active = last;
    this.activeFd = fd;
    this.nextSlot = slot;
    this.bufferBase = slot;
    // Sized ahead at its first append, so that opening a store changes no file.
  }

  /** Highest segment id in use (active or on disk). */
  highestId(): number {
    const ids = listSegments(this.dir);
    return Math.max(this.active, ids[ids.length - 1] ?? 0);
  }

  /** Appends one block; the data may stay buffered until `drain` or the buffer fills. */
  append(block: Buffer): Location {
    if (this.active === 0 || this.nextSlot >= BLOCKS_PER_SEGMENT) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount === APPEND_BUFFER_BLOCKS) this.drain();
    block.copy(this.buffer, this.bufferCount * BLOCK_SIZE, 0, BLOCK_SIZE);
    this.bufferCount++;
    return { segment: this.active, slot: this.nextSlot++ };
  }

  /** Hands out the next slot without its data (buffered appends are written first). */
  reserve(): Location {
    if (this.active === 0 || this.nextSlot >= BLOCKS_PER_SEGMENT) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount > 0) this.drain();
    const slot = this.nextSlot++;
    this.bufferBase = this.nextSlot;
    return { segment: this.active, slot };
  }

  /**
   * Makes room for `count` consecutive slots in the active segment (sealing
   * it and starting another when they do not fit) with nothing buffered;
   * returns the first. Nothing is handed out until `take(count)`.
   */
  roomFor(count: number): number {
    if (this.active !== 0 && this.nextSlot + count > BLOCKS_PER_SEGMENT) this.seal(); // (trimmed to its last slot)
    if (this.active === 0) this.startSegment();
    else if (!this.sizedAhead) this.startAppending();
    if (this.bufferCount > 0) this.drain();
    return this.nextSlot;
  }

  /** Hands out the `count` slots `roomFor(count)` made room for. */
  take(count: number): void {
    this.nextSlot += count;
    this.bufferBase = this.nextSlot;
  }

  /** True when some of `count` slots from `slot` of `segment` are still in the buffer (not in the file yet). */
  holds(segment: number, slot: number, count: number): boolean {
    return segment === this.active && slot + count > this.bufferBase;
  }

  /** Copies buffered slot `loc` into `target` at `targetOffset`; false when it is not in the buffer. */
  readBuffered(loc: Location, target: Buffer, targetOffset: number): boolean {
    if (loc.segment !== this.active || loc.slot < this.bufferBase || loc.slot >= this.bufferBase + this.bufferCount) return false;
    const at = (loc.slot - this.bufferBase) * BLOCK_SIZE;
    this.buffer.copy(target, targetOffset, at, at + BLOCK_SIZE);
    return true;
  }

  /**
   * Replaces, in the buffer, the slots of an overwrite of `count` slots
   * from `loc` that are still there; returns how many of the slots precede
   * them (those are the caller's to write to the file).
   */
  replaceBuffered(loc: Location, count: number, src: Buffer, srcOffset: number): number {
    if (loc.segment !== this.active || loc.slot + count <= this.bufferBase) return count;
    const from = Math.max(loc.slot, this.bufferBase);
    const skip = from - loc.slot;
    src.copy(this.buffer, (from - this.bufferBase) * BLOCK_SIZE, srcOffset + skip * BLOCK_SIZE, srcOffset + count * BLOCK_SIZE);
    return skip;
  }

  /** Writes buffered appends to the file (no fsync). */
  drain(): void {
    if (this.bufferCount === 0) return;
    const bytes = this.bufferCount * BLOCK_SIZE;
    const pos = slotOffset(this.bufferBase);
    try {
      // The buffer stays as it is until it is written: a failed drain can be repeated.
      withRoom(() => writeFullySync(this.activeFd, this.buffer, 0, bytes, pos), this.makeRoom);
    } catch (err) {
      throw segmentError(err, `cannot write segment ${this.active}: ${(err as Error).message}`);
    }
    this.unsynced.add(this.active);
    this.bufferBase += this.bufferCount;
    this.bufferCount = 0;
    this.maps.extend(this.active, pos + bytes);
  }

  /** Stops appending to the active segment (writes buffered data, trims the file); the next append starts a new one. */
  seal(): void {
    this.stopAppending();
    this.active = 0;
    this.activeFd = -1;
    this.bufferBase = 0;
  }

  /** Writes buffered data and trims the file, leaving no active segment (the store is closing). */
  close(): void {
    this.stopAppending();
    this.active = 0;
    this.activeFd = -1;
  }

  private startSegment(): void {
    this.drain();
    this.sizedAhead = false; // the segment it leaves is full: its size is exact
    const id = this.highestId() + 1;
    const file = segmentPath(this.dir, id);
    let fd: number;
    try {
      fd = withRoom(() => fs.openSync(file, 'wx+'), this.makeRoom);
    } catch (err) {
      throw segmentError(err, `cannot create segment ${id}: ${(err as Error).message}`);
    }
    try {
      withRoom(() => fs.writeSync(fd, encodeHeader(id, this.hash), 0, SEGMENT_HEADER_SIZE, 0), this.makeRoom);
    } catch (err) {
      fs.closeSync(fd);
      fs.rmSync(file, { force: true });
      throw segmentError(err, `cannot create segment ${id}: ${(err as Error).message}`);
    }
    this.maps.adopt(id, fd);
    this.unsynced.add(id);
    this.created();
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
      throw segmentError(err, `cannot size segment ${this.active}: ${(err as Error).message}`);
    }
    this.sizedAhead = true;
    this.maps.extend(this.active, SEGMENT_MAX_BYTES);
  }

  /**
   * Writes buffered appends and trims the active segment's file to its
   * last slot (no slot past it is referenced, no view reaches past it).
   */
  private stopAppending(): void {
    this.drain();
    if (this.active === 0 || !this.sizedAhead) return;
    this.sizedAhead = false;
    const end = slotOffset(this.nextSlot);
    try {
      fs.ftruncateSync(this.activeFd, end);
    } catch (err) {
      throw segmentError(err, `cannot trim segment ${this.active}: ${(err as Error).message}`);
    }
    this.unsynced.add(this.active);
    this.maps.trim(this.active, end);
  }
}
