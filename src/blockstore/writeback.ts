/**
 * Write-back: acknowledged writes that are not yet in the index.
 *
 * A write appends new chunk data to a segment (unsynced) and records a
 * pending entry (lineage, block) -> {version, target}, target being a chunk
 * id or 0 (zeroes). Reads look here first. A flush takes the whole current
 * generation, syncs the segments, and commits the generation to the index in
 * one transaction; writes that arrive meanwhile go to a new generation.
 * Since only synced data is ever committed, the index never points at data
 * a crash could lose.
 *
 * State per generation: Map<lineage, Map<block, PendingEntry>>. Two
 * generations at most: `current` and `flushing`. New chunks keep their id
 * from the moment they are appended; only those still referenced when their
 * generation commits are entered in the chunk table.
 *
 * A new chunk that only the current generation's entry of one block
 * references (`rewritable`) belongs to nobody else: no index entry, no
 * flush, no other block points at it. A rewrite of that block with new
 * content overwrites the chunk's slot and renames it (`rehash`) instead of
 * appending, so a working set rewritten between two flushes costs page
 * cache, not disk. Committed chunks are never rewritten, so the index still
 * only ever points at synced data.
 */
import type { Location } from './segments.js';

/** A pending block: the version it was written at and its chunk (0 = zeroes). */
export interface PendingEntry { version: number; target: number }

/**
 * A chunk appended to a segment but not yet in the index. `unique`: when it
 * was stored, no other chunk (committed or pending) had its hash, so its
 * commit need not look up the hash index; cleared if a chunk with the same
 * hash is stored while this one is pending.
 */
export interface NewChunk { id: number; hash: Buffer; loc: Location; unique: boolean }

const NONE: number[] = [];

/** One generation of pending entries. */
export type Generation = Map<number, Map<number, PendingEntry>>;

/** The write-back overlay. */
export class Writeback {
  private current: Generation = new Map();
  private flushing: Generation | null = null;
  private count = 0;
  /** New chunks by id, until committed or dropped. */
  readonly newChunks = new Map<number, NewChunk>();
  /**
   * First 30 bits of a hash (a small integer key) -> the new chunk id with
   * that prefix, or their list when several have it. Candidates only:
   * callers byte-compare.
   */
  private readonly newByHash = new Map<number, number | number[]>();
  /** Chunk id -> number of pending entries (any generation) that reference it. */
  private readonly refs = new Map<number, number>();

  /** Pending blocks in the current generation. */
  get size(): number { return this.count; }

  /** When the current generation got its first entry (Date.now()). */
  since = 0;

  /** Pending entry for a block, newest generation first. */
  get(lineage: number, block: number): PendingEntry | undefined {
    return this.current.get(lineage)?.get(block) ?? this.flushing?.get(lineage)?.get(block);
  }

  /** True when lineage has pending entries in any generation. */
  hasLineage(lineage: number): boolean {
    return (this.current.get(lineage)?.size ?? 0) > 0 || (this.flushing?.get(lineage)?.size ?? 0) > 0;
  }

  /** Records a write of `target` (chunk id or 0) to a block. */
  set(lineage: number, block: number, version: number, target: number): void {
    let m = this.current.get(lineage);
    if (!m) { m = new Map(); this.current.set(lineage, m); }
    const old = m.get(block);
    if (old !== undefined && old.target === target) { old.version = version; return; }
    if (old) this.unref(old.target); else if (this.count++ === 0) this.since = Date.now();
    m.set(block, { version, target });
    this.ref(target);
  }

  /**
   * The new chunk a block's current-generation entry points at, when that
   * entry is its only reference (so its slot may be overwritten); else
   * undefined.
   */
  rewritable(lineage: number, block: number): NewChunk | undefined {
    const e = this.current.get(lineage)?.get(block);
    if (e === undefined || e.target === 0 || this.refs.get(e.target) !== 1) return undefined;
    return this.newChunks.get(e.target);
  }

  /**
   * A rewritable chunk now holds other bytes: files it under their hash,
   * hash[at, at + 16), copied into the chunk's own hash buffer (nothing
   * else holds that buffer while the chunk is rewritable: only a flushing
   * generation's commit reads it, and such a chunk is not rewritable).
   */
  rehash(c: NewChunk, hash: Buffer, at: number, unique: boolean): void {
    this.unlistHash(c.id, c.hash);
    hash.copy(c.hash, 0, at, at + 16);
    c.unique = unique;
    this.listHash(c.id, c.hash);
  }

  /** New chunk candidates whose hash equals the 16 bytes of `hash` at `at`. */
  newChunksWithHash(hash: Buffer, at = 0): number[] {
    const v = this.newByHash.get(hash.readUInt32BE(at) >>> 2);
    return v === undefined ? NONE : typeof v === 'number' ? [v] : v;
  }

  /** Registers a chunk just appended to a segment. */
  addNewChunk(c: NewChunk): void {
    this.newChunks.set(c.id, c);
    this.listHash(c.id, c.hash);
  }

  /** True when chunk `id` is referenced by a pending entry (GC must keep it). */
  references(id: number): boolean {
    return (this.refs.get(id) ?? 0) > 0;
  }

  /** Drops every pending entry of a removed lineage. */
  dropLineage(lineage: number): void {
    const m = this.current.get(lineage);
    if (m) {
      for (const e of m.values()) this.unref(e.target);
      this.count -= m.size;
      this.current.delete(lineage);
    }
    const f = this.flushing?.get(lineage);
    if (f) { for (const e of f.values()) this.unref(e.target); this.flushing!.delete(lineage); }
  }

  /** Starts a flush: the current generation becomes the flushing one. */
  takeGeneration(): Generation {
    if (this.flushing) throw new Error('a flush is already under way');
    const g = this.current;
    this.flushing = g;
    this.current = new Map();
    this.count = 0;
    return g;
  }

  /**
   * Ends a flush: the flushing generation is in the index (or was dropped).
   * `committed` is called for each new chunk the commit entered, before it
   * is forgotten here.
   */
  finishGeneration(g: Generation, committedNew: Set<number>, committed: (c: NewChunk) => void): void {
    for (const m of g.values()) for (const e of m.values()) this.unref(e.target);
    this.flushing = null;
    // New chunks no longer referenced anywhere can be forgotten; the
    // committed ones now live in the index.
    for (const [id, c] of this.newChunks) {
      const entered = committedNew.has(id);
      if (entered) committed(c);
      if (entered || !this.references(id)) this.forgetNew(id, c);
    }
  }

  /** Returns a generation that failed to commit to the current one (newer writes win). */
  restoreGeneration(g: Generation): void {
    for (const [lineage, m] of g) {
      for (const [block, e] of m) {
        if (!this.current.get(lineage)?.has(block)) this.set(lineage, block, e.version, e.target);
        this.unref(e.target);
      }
    }
    this.flushing = null;
  }

  private forgetNew(id: number, c: NewChunk): void {
    this.newChunks.delete(id);
    this.unlistHash(id, c.hash);
  }

  private listHash(id: number, hash: Buffer): void {
    const k = hash.readUInt32BE(0) >>> 2;
    const v = this.newByHash.get(k);
    if (v === undefined) this.newByHash.set(k, id);
    else if (typeof v === 'number') this.newByHash.set(k, [v, id]);
    else v.push(id);
  }

  private unlistHash(id: number, hash: Buffer): void {
    const k = hash.readUInt32BE(0) >>> 2;
    const v = this.newByHash.get(k);
    if (v === id) {
      this.newByHash.delete(k);
    } else if (typeof v === 'object') {
      const i = v.indexOf(id);
      if (i >= 0) v.splice(i, 1);
      if (v.length === 1) this.newByHash.set(k, v[0]);
    }
  }

  private ref(target: number): void {
    if (target !== 0) this.refs.set(target, (this.refs.get(target) ?? 0) + 1);
  }

  private unref(target: number): void {
    if (target === 0) return;
    const n = (this.refs.get(target) ?? 0) - 1;
    if (n > 0) this.refs.set(target, n); else this.refs.delete(target);
  }
}
