/**
 * The prefix table: new (not yet committed) chunk ids filed under the first
 * 30 bits of their hash, so that a write finds the pending chunks that may
 * already hold its bytes. A key may have several ids; they are candidates
 * only, callers byte-compare. Open addressing in one typed array, so an
 * operation costs about one cache miss where a Map of this size costs
 * several, and no JavaScript object exists per entry.
 *
 * This header is the one description of the table's layout. Two
 * implementations keep to it: PrefixTable below (find, add, remove,
 * resize) and the run calls of native/src/rehash.cc (rehashRun, addRun),
 * which probe, add and remove in this table's own Float64Array in place.
 * test/blockstore/prefix-table.test.ts checks each against the other.
 *
 * Layout (`slots`, `mask`):
 *  - capacity = mask + 1, a power of two (1024 at least); `slots` is a
 *    Float64Array of 2 * capacity doubles.
 *  - Slot i is the pair slots[2i] = key + 1 (0: empty), slots[2i + 1] = id,
 *    side by side so that a probe touches one cache line. Keys are below
 *    2^30 and ids below 2^53: both exact in a double.
 *  - key = prefix(hash): the hash's bytes 0-3 read big-endian, shifted
 *    right by 2: (h0 << 22) | (h1 << 14) | (h2 << 6) | (h3 >> 2).
 *  - A key's home slot is key & mask: the keys are hash bits already, so
 *    they index the table as they are.
 *  - Linear probing: home, home + 1, ... (& mask), up to the first empty
 *    slot. Every entry of a key lies in that run.
 *  - Add (key, id): into the first empty slot of the run. The same pair is
 *    never filed twice (callers' rule), so no search for it first.
 *  - Remove (key, id): the slot i holding the pair is found in the run,
 *    then the rest of the run shifts back: each later entry j whose home
 *    does not lie cyclically in (i, j] moves to slot i, and i becomes j;
 *    at the end slot i is emptied. No tombstones, so an empty slot always
 *    ends a run.
 *  - Load: at most half the slots are full, so every probe ends at an
 *    empty slot. Only PrefixTable changes the capacity (doubled before an
 *    add would pass half full; quartered when fewer than 1/16 are full and
 *    the table is past 65536 slots), refiling every entry, and only it
 *    keeps the count. The native calls never resize: addRun needs room for
 *    its whole run (the caller grows the table first) and returns how many
 *    it filed; rehashRun only moves entries from one key to another.
 */
import { addRun, rehashRun } from '../native/index.js';
import type { ChunkPage } from './chunk-page.js';
import type { FilterBits } from './hash-filter.js';

const NONE: number[] = [];
/** Slots of a new table. */
const MIN_SLOTS = 1024;
/** Above this many slots, a table this sparse shrinks. */
const SHRINK_ABOVE = 65536;

/** The key of the 16-byte hash at hash[at]: its first 30 bits, a small integer. */
export function prefix(hash: Uint8Array, at: number): number {
  return (hash[at] << 22) | (hash[at + 1] << 14) | (hash[at + 2] << 6) | (hash[at + 3] >>> 2);
}

/** New chunk ids by hash prefix, in the layout above. */
export class PrefixTable {
  private slots = new Float64Array(2 * MIN_SLOTS);
  private mask = MIN_SLOTS - 1;
  private count = 0;

  /** Ids filed under `key` (a fresh array; NONE when there are none). */
  find(key: number): number[] {
    const k = key + 1;
    const t = this.slots;
    let out = NONE;
    for (let i = key & this.mask; t[2 * i] !== 0; i = (i + 1) & this.mask) {
      if (t[2 * i] !== k) continue;
      if (out === NONE) out = [t[2 * i + 1]]; else out.push(t[2 * i + 1]);
    }
    return out;
  }

  /** Files `id` under `key` (never a pair already filed). */
  add(key: number, id: number): void {
    if (2 * (this.count + 1) > this.mask + 1) this.resize(2 * (this.mask + 1));
    const t = this.slots;
    let i = key & this.mask;
    while (t[2 * i] !== 0) i = (i + 1) & this.mask;
    t[2 * i] = key + 1;
    t[2 * i + 1] = id;
    this.count++;
  }

  /** Unfiles `id` from `key`, if filed there. */
  remove(key: number, id: number): void {
    const k = key + 1;
    const t = this.slots;
    let i = key & this.mask;
    while (t[2 * i] !== 0 && !(t[2 * i] === k && t[2 * i + 1] === id)) i = (i + 1) & this.mask;
    if (t[2 * i] === 0) return;
    // Shift back every later entry of the run that may live at i.
    for (let j = (i + 1) & this.mask; t[2 * j] !== 0; j = (j + 1) & this.mask) {
      const home = (t[2 * j] - 1) & this.mask;
      const between = i <= j ? home > i && home <= j : home > i || home <= j;
      if (between) continue;
      t[2 * i] = t[2 * j];
      t[2 * i + 1] = t[2 * j + 1];
      i = j;
    }
    t[2 * i] = 0;
    this.count--;
    if (this.mask + 1 > SHRINK_ABOVE && 16 * this.count < this.mask + 1) this.resize((this.mask + 1) / 4);
  }

  /**
   * For ids id0 + k (entries j0 + k of chunk page `cp`), in order: the
   * chunk takes hash newHashes[at + 16k, +16) when `filter` says no
   * committed chunk has it and no id is filed under its prefix (moved from
   * its old prefix here, its hash and flags set in `cp`); stops at the
   * first that does not qualify. Returns how many moved. Natively
   * (rehash.cc rehashRun), on this table in place.
   */
  moveRun(cp: ChunkPage, j0: number, id0: number, count: number, newHashes: Buffer, at: number, filter: FilterBits | null): number {
    if (filter === null) return 0;
    return rehashRun(this.slots, this.mask, filter.words, filter.mask, cp.hashes, cp.flags, j0, id0, count, newHashes, at);
  }

  /**
   * For ids id0 + k (entries j0 + k of chunk page `cp`, fresh), in order:
   * the chunk is new with hash newHashes[at + 16k, +16) in slot slot0 + k
   * of `segment` when `filter` says no committed chunk has the hash and no
   * id is filed under its prefix (filed here); stops at the first that does
   * not qualify. Returns how many were added. Natively (rehash.cc addRun),
   * after growing the table for the whole run.
   */
  addRun(cp: ChunkPage, j0: number, id0: number, count: number, newHashes: Buffer, at: number, segment: number,
    slot0: number, filter: FilterBits | null): number {
    if (filter === null) return 0;
    while (2 * (this.count + count) > this.mask + 1) this.resize(2 * (this.mask + 1));
    const done = addRun(this.slots, this.mask, filter.words, filter.mask, cp.hashes, cp.flags, cp.segment, cp.slot,
      j0, id0, count, newHashes, at, segment, slot0);
    this.count += done;
    return done;
  }

  /** Refiles every entry into a table of `slots` slots. */
  private resize(slots: number): void {
    const old = this.slots;
    this.slots = new Float64Array(2 * slots);
    this.mask = slots - 1;
    this.count = 0;
    for (let i = 0; i < old.length; i += 2) if (old[i] !== 0) this.add(old[i] - 1, old[i + 1]);
  }
}
