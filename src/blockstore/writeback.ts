/**
 * Write-back: acknowledged writes that are not yet in the index.
 *
 * A write stores new chunk data in a segment (unsynced) and records a
 * pending entry (lineage, block) -> (version, target), target being a chunk
 * id or 0 (zeroes). Reads look here first. A flush takes the whole current
 * generation, syncs the segments, and commits the generation to the index in
 * slices of one transaction each (`releaseCommitted` after each); writes
 * that arrive meanwhile go to a new generation.
 * Since only synced data is ever committed, the index never points at data
 * a crash could lose.
 *
 * State: two generations at most (generation.ts), `current` and
 * `flushing`; the new chunks, in chunk pages (chunk-page.ts), with their
 * reference counts; the new chunks by hash prefix (prefix-table.ts); the
 * references pending entries hold on committed chunks (`oldRefs`). New
 * chunks keep their id from the moment they are stored; only those still
 * referenced when their generation commits are entered in the chunk table.
 *
 * A new chunk that only the current generation's entry of one block
 * references (`rewritable`) belongs to nobody else: no index entry, no
 * flush, no other block points at it. A rewrite of that block with new
 * content overwrites the chunk's slot and renames it (`rehash`) instead of
 * appending, so a working set rewritten between two flushes costs page
 * cache, not disk. Committed chunks are never rewritten, so the index still
 * only ever points at synced data.
 *
 * Everything here is synchronous, on the JS thread. The last entry page and
 * chunk page used are remembered, so a run of consecutive blocks or ids
 * costs one map look-up per page.
 *
 * This file stays whole past 450 lines: every method keeps the same three
 * structures (entries, chunk pages, prefix table) consistent with each
 * other, and the write-back model test drives them as one.
 */
import { HASH_SIZE } from './constants.js';
import { CHUNK_PAGE, LIVE, UNIQUE, copyHash, newChunkPage, type ChunkPage } from './chunk-page.js';
import { ENTRY_PAGE, Generation } from './generation.js';
import type { FilterBits } from './hash-filter.js';
import { PrefixTable, prefix } from './prefix-table.js';
import type { Location } from './segments.js';

/** The write-back overlay. */
export class Writeback {
  private current = new Generation();
  private flushing: Generation | null = null;
  private readonly chunkPages = new Map<number, ChunkPage>();
  /** Chunks stored and not yet committed or dropped. */
  private newCount = 0;
  /** New chunk ids by hash prefix: candidates only, callers byte-compare. */
  private readonly newByHash = new PrefixTable();
  /** Chunk id -> pending entries referencing it, for chunks that are not new (committed ones). */
  private readonly oldRefs = new Map<number, number>();
  /** New chunks whose reference count fell to 0 (forgotten at the next commit if still unreferenced). */
  private orphans = new Set<number>();
  // The last pages used (of `current`, and of the chunk table).
  private lastLineage = -1;
  private lastPageNo = -1;
  private lastPage: Float64Array | undefined;
  private lastChunkPageNo = -1;
  private lastChunkPage: ChunkPage | undefined;

  /** Write watches (`watch`): lineage -> the block sets to add written blocks to. */
  private readonly watches = new Map<number, Set<Set<number>>>();

  /** When the current generation got its first entry (Date.now()). */
  since = 0;

  /**
   * Adds every block of `lineage` written from now on (new content, a
   * rewrite in place, zeroes) to `into`, until `unwatch`.
   */
  watch(lineage: number, into: Set<number>): void {
    let sets = this.watches.get(lineage);
    if (!sets) this.watches.set(lineage, (sets = new Set()));
    sets.add(into);
  }

  unwatch(lineage: number, into: Set<number>): void {
    const sets = this.watches.get(lineage);
    if (sets?.delete(into) && sets.size === 0) this.watches.delete(lineage);
  }

  private noteWritten(lineage: number, block: number, count: number): void {
    const sets = this.watches.get(lineage);
    if (!sets) return;
    for (const into of sets) for (let k = 0; k < count; k++) into.add(block + k);
  }

  /** Pending blocks in the current generation. */
  get size(): number { return this.current.count; }

  /** Entry pages of the current generation (memory: ENTRY_PAGE * 16 bytes each). */
  get pages(): number { return this.current.pages; }

  /** New chunks not yet committed. */
  get newChunkCount(): number { return this.newCount; }

  /**
   * Chunk id (0 = zeroes) of a pending block as a reader of version
   * `maxVersion` sees it, newest generation first; -1 when none.
   */
  target(lineage: number, block: number, maxVersion: number): number {
    const pageNo = Math.floor(block / ENTRY_PAGE);
    const i = block % ENTRY_PAGE;
    const p = this.currentPage(lineage, pageNo, false);
    let t = p === undefined ? -1 : p[i];
    let v = t < 0 ? 0 : p![ENTRY_PAGE + i];
    if (t < 0 && this.flushing !== null) {
      const f = this.flushing.page(lineage, pageNo);
      if (f !== undefined && f[i] >= 0) { t = f[i]; v = f[ENTRY_PAGE + i]; }
    }
    return t >= 0 && v <= maxVersion ? t : -1;
  }

  /** True when lineage has pending entries in any generation. */
  hasLineage(lineage: number): boolean {
    return (this.current.lineages.get(lineage)?.size ?? 0) > 0 || (this.flushing?.lineages.get(lineage)?.size ?? 0) > 0;
  }

  /** Records a write of `target` (chunk id or 0) to a block. */
  set(lineage: number, block: number, version: number, target: number): void {
    if (this.watches.size !== 0) this.noteWritten(lineage, block, 1);
    const p = this.currentPage(lineage, Math.floor(block / ENTRY_PAGE), true)!;
    const i = block % ENTRY_PAGE;
    const old = p[i];
    p[ENTRY_PAGE + i] = version;
    if (old === target) return;
    if (old >= 0) this.unref(old);
    else if (this.current.count++ === 0) this.since = Date.now();
    p[i] = target;
    this.ref(target);
  }

  /**
   * The new chunk a block's current-generation entry points at, when that
   * entry is its only reference (so its slot may be overwritten); else 0.
   */
  rewritable(lineage: number, block: number): number {
    const p = this.currentPage(lineage, Math.floor(block / ENTRY_PAGE), false);
    if (p === undefined) return 0;
    const id = p[block % ENTRY_PAGE];
    if (id <= 0) return 0;
    const cp = this.chunkPage(id);
    const j = id % CHUNK_PAGE;
    return cp !== undefined && (cp.flags[j] & LIVE) !== 0 && cp.refs[j] === 1 ? id : 0;
  }

  /**
   * How many blocks from `block` (at most `count`) are `rewritable` as one
   * run: none all-zero (zero[zeroAt + k]), chunk ids consecutive within one
   * chunk page, slots consecutive in one segment. out = [first id,
   * segment, first slot] when not 0.
   */
  rewritableRun(lineage: number, block: number, count: number, zero: Uint8Array, zeroAt: number, out: Float64Array): number {
    if (zero[zeroAt] !== 0) return 0;
    const id0 = this.rewritable(lineage, block);
    if (id0 === 0) return 0;
    const cp = this.chunkPage(id0)!;
    let pageNo = Math.floor(block / ENTRY_PAGE);
    let p = this.currentPage(lineage, pageNo, false)!;
    const j0 = id0 % CHUNK_PAGE;
    const segment = cp.segment[j0];
    const slot0 = cp.slot[j0];
    const max = Math.min(count, CHUNK_PAGE - j0);
    let m = 1;
    for (; m < max; m++) {
      const b = block + m;
      if (b % ENTRY_PAGE === 0) {
        pageNo++;
        const next = this.current.page(lineage, pageNo);
        if (next === undefined) break;
        p = next;
      }
      const j = j0 + m;
      if (p[b % ENTRY_PAGE] !== id0 + m || zero[zeroAt + m] !== 0 || (cp.flags[j] & LIVE) === 0 || cp.refs[j] !== 1
        || cp.segment[j] !== segment || cp.slot[j] !== slot0 + m) break;
    }
    out[0] = id0;
    out[1] = segment;
    out[2] = slot0;
    return m;
  }

  /**
   * `rehash` (as unique) of the first blocks of a `rewritableRun` from id
   * `id0`, block k taking hashes[at + 16k, +16), as long as `filter` (the
   * committed hashes' bits; null: not built) says no committed chunk has
   * that hash and no new chunk has its prefix. Returns how many it did:
   * the caller takes the next block the general way.
   */
  rehashRun(id0: number, count: number, hashes: Buffer, at: number, filter: FilterBits | null): number {
    const cp = this.chunkPage(id0)!;
    return this.newByHash.moveRun(cp, id0 % CHUNK_PAGE, id0, count, hashes, at, filter);
  }

  /**
   * Registers new chunks id0 .. id0 + n - 1 (n <= `count`, within one chunk
   * page, ids never used) for the blocks of a landed write whose hashes are
   * hashes[at + 16k], in slots slot0 + k of `segment`, as `addNewChunk`
   * (unique) would, for as long as `filter` says no committed chunk has the
   * hash and no new chunk has its prefix. Returns n; the caller points the
   * blocks at them (`set`).
   */
  addLandedRun(id0: number, count: number, hashes: Buffer, at: number, segment: number, slot0: number,
    filter: FilterBits | null): number {
    const j0 = id0 % CHUNK_PAGE;
    const n = Math.min(count, CHUNK_PAGE - j0);
    const cp = this.chunkPage(id0) ?? this.makeChunkPage(id0);
    const done = this.newByHash.addRun(cp, j0, id0, n, hashes, at, segment, slot0, filter);
    cp.live += done;
    this.newCount += done;
    return done;
  }

  /**
   * New chunks `id0` .. `id0 + count - 1` (one chunk page, as a
   * `rewritableRun` gives them) now live in `count` slots from `slot` of
   * `segment` (a landed write put their new bytes there; their old slots
   * are the caller's to free).
   */
  relocateRun(id0: number, count: number, segment: number, slot: number): void {
    const cp = this.chunkPage(id0)!;
    const j0 = id0 % CHUNK_PAGE;
    for (let k = 0; k < count; k++) {
      cp.segment[j0 + k] = segment;
      cp.slot[j0 + k] = slot + k;
    }
  }

  /** The `count` blocks from `block` were rewritten in place for `version` (their entries keep their chunks). */
  setVersions(lineage: number, block: number, count: number, version: number): void {
    if (this.watches.size !== 0) this.noteWritten(lineage, block, count);
    for (let k = 0; k < count; k++) {
      const b = block + k;
      const p = this.currentPage(lineage, Math.floor(b / ENTRY_PAGE), false)!;
      p[ENTRY_PAGE + (b % ENTRY_PAGE)] = version;
    }
  }

  /** New chunks whose hash may equal the 16 bytes of `hash` at `at` (same first 30 bits: callers byte-compare). */
  newChunksWithHash(hash: Buffer, at = 0): number[] {
    return this.newByHash.find(prefix(hash, at));
  }

  /**
   * Registers a chunk just stored at `loc`, hash[at, at + 16) being its
   * name. `unique`: no other chunk (committed or pending) had that hash, so
   * its commit need not read the hash index.
   */
  addNewChunk(id: number, hash: Buffer, at: number, loc: Location, unique: boolean): void {
    const cp = this.chunkPage(id) ?? this.makeChunkPage(id);
    const j = id % CHUNK_PAGE;
    cp.segment[j] = loc.segment;
    cp.slot[j] = loc.slot;
    cp.refs[j] = this.oldRefs.get(id) ?? 0;
    this.oldRefs.delete(id);
    cp.flags[j] = LIVE | (unique ? UNIQUE : 0);
    copyHash(hash, at, cp.hashes, j * HASH_SIZE);
    cp.live++;
    this.newCount++;
    this.listHash(id, cp.hashes, j * HASH_SIZE);
  }

  /**
   * A rewritable chunk now holds other bytes: files it under their hash,
   * hash[at, at + 16). Nothing else reads the old name while the chunk is
   * rewritable: only a flushing generation's commit reads names, and such
   * a chunk is not rewritable.
   */
  rehash(id: number, hash: Buffer, at: number, unique: boolean): void {
    const cp = this.chunkPage(id)!;
    const j = id % CHUNK_PAGE;
    this.unlistHash(id, cp.hashes, j * HASH_SIZE);
    copyHash(hash, at, cp.hashes, j * HASH_SIZE);
    cp.flags[j] = LIVE | (unique ? UNIQUE : 0);
    this.listHash(id, cp.hashes, j * HASH_SIZE);
  }

  /** True when `id` is a new (not yet committed) chunk. */
  isNew(id: number): boolean {
    const cp = this.chunkPage(id);
    return cp !== undefined && (cp.flags[id % CHUNK_PAGE] & LIVE) !== 0;
  }

  /**
   * Place of new chunk `id` in out[0] (segment) and out[1] (slot), its name
   * copied to hashOut[hashAt, +16); false (nothing written) when `id` is
   * not a new chunk.
   */
  newPlace(id: number, out: Uint32Array, hashOut?: Buffer, hashAt = 0): boolean {
    const cp = this.chunkPage(id);
    const j = id % CHUNK_PAGE;
    if (cp === undefined || (cp.flags[j] & LIVE) === 0) return false;
    out[0] = cp.segment[j];
    out[1] = cp.slot[j];
    if (hashOut !== undefined) copyHash(cp.hashes, j * HASH_SIZE, hashOut, hashAt);
    return true;
  }

  /** Name of new chunk `id`: a view, valid until the chunk is committed or rewritten. */
  newHash(id: number): Buffer {
    const j = id % CHUNK_PAGE;
    return this.chunkPage(id)!.hashes.subarray(j * HASH_SIZE, (j + 1) * HASH_SIZE);
  }

  /**
   * True when new chunk `id` was stored while no other chunk had its hash
   * and none with the same hash prefix came since (its commit need not
   * read the hash index).
   */
  isUnique(id: number): boolean {
    return (this.chunkPage(id)!.flags[id % CHUNK_PAGE] & UNIQUE) !== 0;
  }

  /** A chunk with the same hash prefix as new chunk `id` was stored: `id` is not unique any more. */
  clearUnique(id: number): void {
    this.chunkPage(id)!.flags[id % CHUNK_PAGE] &= ~UNIQUE;
  }

  /** Segments holding new chunks (GC must not compact them). */
  newChunkSegments(): Set<number> {
    const out = new Set<number>();
    for (const cp of this.chunkPages.values()) {
      for (let j = 0; j < CHUNK_PAGE; j++) if ((cp.flags[j] & LIVE) !== 0) out.add(cp.segment[j]);
    }
    return out;
  }

  /** True when chunk `id` is referenced by a pending entry (GC must keep it). */
  references(id: number): boolean {
    const cp = this.chunkPage(id);
    const j = id % CHUNK_PAGE;
    if (cp !== undefined && (cp.flags[j] & LIVE) !== 0) return cp.refs[j] > 0;
    return (this.oldRefs.get(id) ?? 0) > 0;
  }

  /** Drops every pending entry of a removed lineage. */
  dropLineage(lineage: number): void {
    for (const g of [this.current, this.flushing]) {
      if (g === null) continue;
      for (const [, , target] of g.entries(lineage)) {
        this.unref(target);
        g.count--;
      }
      g.pages -= g.lineages.get(lineage)?.size ?? 0;
      g.lineages.delete(lineage);
    }
    this.forgetPage();
  }

  /** Starts a flush: the current generation becomes the flushing one. */
  takeGeneration(): Generation {
    if (this.flushing) throw new Error('a flush is already under way');
    const g = this.current;
    this.flushing = g;
    this.current = new Generation();
    this.forgetPage();
    return g;
  }

  /**
   * A part of the flushing generation (`slice`, from its `slices`) is in
   * the index: its entries leave the flushing generation, the new chunks
   * its commit entered (`committedNew`; `committed` is called with each
   * one's name first) stop being new, and new chunks nothing refers to any
   * more are forgotten. The flush ends when nothing is left in it (or when
   * the last of it was dropped with its lineage).
   */
  releaseCommitted(slice: Generation, committedNew: Set<number>, committed: (hash: Buffer) => void): void {
    const parent = this.flushing;
    for (const [lineage, pages] of parent === null ? [] : slice.lineages) {
      const own = parent!.lineages.get(lineage);
      if (own === undefined) continue; // dropped meanwhile (its references went with it)
      for (const pageNo of pages.keys()) {
        const p = own.get(pageNo);
        if (p === undefined) continue;
        for (let i = 0; i < ENTRY_PAGE; i++) {
          if (p[i] < 0) continue;
          this.unref(p[i]);
          parent!.count--;
        }
        own.delete(pageNo);
        parent!.pages--;
      }
      if (own.size === 0) parent!.lineages.delete(lineage);
    }
    for (const id of committedNew) {
      const cp = this.chunkPage(id);
      const j = id % CHUNK_PAGE;
      if (cp === undefined || (cp.flags[j] & LIVE) === 0) continue;
      committed(cp.hashes.subarray(j * HASH_SIZE, (j + 1) * HASH_SIZE));
      this.forgetNew(id, Math.floor(id / CHUNK_PAGE), cp, j);
    }
    const orphans = this.orphans;
    this.orphans = new Set();
    for (const id of orphans) {
      const cp = this.chunkPage(id);
      const j = id % CHUNK_PAGE;
      if (cp !== undefined && (cp.flags[j] & LIVE) !== 0 && cp.refs[j] <= 0) this.forgetNew(id, Math.floor(id / CHUNK_PAGE), cp, j);
    }
    if (parent !== null && parent.lineages.size === 0) this.flushing = null;
  }

  /**
   * Returns what is left of a generation that failed to commit (the parts
   * not released) to the current one (newer writes win).
   */
  restoreGeneration(g: Generation): void {
    for (const lineage of g.lineages.keys()) {
      for (const [block, version, target] of g.entries(lineage)) {
        if (!this.inCurrent(lineage, block)) this.set(lineage, block, version, target);
        this.unref(target);
      }
    }
    this.flushing = null;
  }

  private inCurrent(lineage: number, block: number): boolean {
    const p = this.current.page(lineage, Math.floor(block / ENTRY_PAGE));
    return p !== undefined && p[block % ENTRY_PAGE] >= 0;
  }

  private currentPage(lineage: number, pageNo: number, create: boolean): Float64Array | undefined {
    if (lineage === this.lastLineage && pageNo === this.lastPageNo && this.lastPage !== undefined) return this.lastPage;
    const p = create ? this.current.makePage(lineage, pageNo) : this.current.page(lineage, pageNo);
    if (p !== undefined) {
      this.lastLineage = lineage;
      this.lastPageNo = pageNo;
      this.lastPage = p;
    }
    return p;
  }

  private forgetPage(): void {
    this.lastLineage = -1;
    this.lastPageNo = -1;
    this.lastPage = undefined;
  }

  private chunkPage(id: number): ChunkPage | undefined {
    const pageNo = Math.floor(id / CHUNK_PAGE);
    if (pageNo === this.lastChunkPageNo) return this.lastChunkPage;
    const cp = this.chunkPages.get(pageNo);
    if (cp !== undefined) {
      this.lastChunkPageNo = pageNo;
      this.lastChunkPage = cp;
    }
    return cp;
  }

  private makeChunkPage(id: number): ChunkPage {
    const pageNo = Math.floor(id / CHUNK_PAGE);
    const cp = newChunkPage();
    this.chunkPages.set(pageNo, cp);
    this.lastChunkPageNo = pageNo;
    this.lastChunkPage = cp;
    return cp;
  }

  private forgetNew(id: number, pageNo: number, cp: ChunkPage, j: number): void {
    this.unlistHash(id, cp.hashes, j * HASH_SIZE);
    // Entries of the current generation may still point at a committed chunk.
    if (cp.refs[j] > 0) this.oldRefs.set(id, cp.refs[j]);
    cp.flags[j] = 0;
    cp.refs[j] = 0;
    this.newCount--;
    if (--cp.live === 0) {
      this.chunkPages.delete(pageNo);
      if (this.lastChunkPageNo === pageNo) { this.lastChunkPageNo = -1; this.lastChunkPage = undefined; }
    }
  }

  private listHash(id: number, hashes: Buffer, at: number): void {
    this.newByHash.add(prefix(hashes, at), id);
  }

  private unlistHash(id: number, hashes: Buffer, at: number): void {
    this.newByHash.remove(prefix(hashes, at), id);
  }

  private ref(target: number): void {
    if (target === 0) return;
    const cp = this.chunkPage(target);
    const j = target % CHUNK_PAGE;
    if (cp !== undefined && (cp.flags[j] & LIVE) !== 0) cp.refs[j]++;
    else this.oldRefs.set(target, (this.oldRefs.get(target) ?? 0) + 1);
  }

  private unref(target: number): void {
    if (target === 0) return;
    const cp = this.chunkPage(target);
    const j = target % CHUNK_PAGE;
    if (cp !== undefined && (cp.flags[j] & LIVE) !== 0) {
      if (--cp.refs[j] === 0) this.orphans.add(target);
      return;
    }
    const n = (this.oldRefs.get(target) ?? 0) - 1;
    if (n > 0) this.oldRefs.set(target, n); else this.oldRefs.delete(target);
  }
}
