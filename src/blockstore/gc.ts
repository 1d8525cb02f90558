/**
 * Garbage collection, in three passes, each a transaction of its own so
 * readers and writers keep going between them:
 *
 *  1. dead block-map entries: an entry at v_i followed by one at v_(i+1) is
 *     dead when no retained version of its lineage (snapshots, head) lies in
 *     [v_i, v_(i+1)); every entry of a removed lineage is dead. The check runs
 *     inside each transaction (about FREE_SLICE entries, whole blocks),
 *     against the catalog of that moment.
 *  2. chunks: refs == 0 and not referenced by a pending write -> deleted
 *     (record, hash index), segment live count - 1, in transactions of
 *     FREE_SLICE chunks; then their read fingerprints, in slices too.
 *  3. segments: an empty one is deleted; one whose live fraction is under
 *     COMPACT_LIVE_FRACTION has its chunks copied to the active segment
 *     (verified on the way), synced, re-pointed in one commit, then deleted.
 *     Chunk ids never change, so a reader resolves either the old or the new
 *     location; deleted files' descriptors stay open until no read can use them.
 *
 * GC is what wins space back on a full disk, so what it needs is bounded:
 * each transaction touches at most a slice's pages of the index (LMDB
 * copies the pages a transaction changes, and reuses those freed by
 * earlier ones), empty segments are deleted before any is compacted, least
 * live first, and a segment is compacted only when the file system has
 * room for its live chunks (else it waits for a later GC).
 */
import { BLOCK_SIZE, COMPACT_LIVE_FRACTION, SEGMENT_HEADER_SIZE } from './constants.js';
import type { Catalog } from './catalog.js';
import type { BlockMap } from './blockmap.js';
import type { IndexDbs } from './index-db.js';
import type { BlockEngine } from './engine.js';
import type { Location, SegmentFiles } from './segments.js';
import type { Writeback } from './writeback.js';
import { chunkKey, decodeChunk, decodeIds, encodeChunk, encodeIds, mapKey, parseChunkKey } from './keys.js';
import { DormantError } from './errors.js';
import type { GcResult } from './types.js';

/** What GC needs from the store. */
export interface GcContext {
  dbs: IndexDbs;
  catalog: Catalog;
  blockMap: BlockMap;
  segments: SegmentFiles;
  writeback: Writeback;
  engine: BlockEngine;
  commit<T>(body: () => T, before?: () => Promise<void>): Promise<T>;
  /** Bytes free on the store's file system now (none known: no check before compacting). */
  freeBytes?(): number;
}

/** Dead entries removed (pass 1), chunks freed (pass 2) and read fingerprints removed per transaction, about. */
const FREE_SLICE = 16384;
/** A segment is compacted only with this much room left beside its live chunks (the commit's index pages). */
const COMPACT_ROOM_MARGIN = 4 * 1024 * 1024;

let running = false;

/** Runs the three passes; one GC at a time per process. */
export async function collectGarbage(ctx: GcContext): Promise<GcResult> {
  if (running) throw new DormantError('EBUSY', 'garbage collection is already running');
  running = true;
  try {
    const result: GcResult = { deadEntries: 0, chunksFreed: 0, segmentsCompacted: 0, segmentsDeleted: 0, bytesReclaimed: 0 };
    for (const lineage of ctx.blockMap.lineagesWithEntries()) {
      for (let from: number | null = 0; from !== null;) {
        const start: number = from;
        const r = await ctx.commit(() => removeDeadEntries(ctx, lineage, start));
        result.deadEntries += r.dead;
        from = r.next;
      }
    }
    const freed = new Set<number>();
    let from: Buffer | undefined;
    for (;;) {
      const start = from;
      const next = await ctx.commit(() => freeChunks(ctx, start, freed));
      if (next === null) break;
      from = next;
    }
    result.chunksFreed = freed.size;
    await forgetPrints(ctx, freed);
    await compactSegments(ctx, result);
    return result;
  } finally {
    running = false;
  }
}

/**
 * Removes the dead entries of `lineage` from block `fromBlock` on, stopping
 * at the first block boundary after FREE_SLICE of them (a block's entries
 * are decided together); returns how many, and the block to go on from
 * (null: the lineage is done).
 */
function removeDeadEntries(ctx: GcContext, lineage: number, fromBlock: number): { dead: number; next: number | null } {
  const { dbs, catalog, blockMap } = ctx;
  const retained = catalog.lineages.has(lineage) ? catalog.retainedVersions(lineage) : [];
  const seen = (from: number, to: number) => retained.some((r) => r >= from && r < to);
  const dead: Array<{ block: number; version: number; chunk: number }> = [];
  let prev: { block: number; version: number; chunk: number } | null = null;
  let next: number | null = null;
  for (const e of blockMap.entries(lineage, fromBlock)) {
    if (prev) {
      const newBlock = prev.block !== e.block;
      if (!seen(prev.version, newBlock ? Infinity : e.version)) dead.push(prev);
      if (newBlock && dead.length >= FREE_SLICE) { next = e.block; prev = null; break; }
    }
    prev = e;
  }
  if (prev && !seen(prev.version, Infinity)) dead.push(prev);
  const refDelta = new Map<number, number>();
  for (const e of dead) {
    dbs.map.remove(mapKey(lineage, e.block, e.version));
    if (e.chunk !== 0) refDelta.set(e.chunk, (refDelta.get(e.chunk) ?? 0) + 1);
  }
  for (const [id, n] of refDelta) {
    const raw = dbs.chunks.getBinary(chunkKey(id));
    if (!raw) continue;
    const c = decodeChunk(raw);
    dbs.chunks.put(chunkKey(id), encodeChunk({ ...c, refs: Math.max(0, c.refs - n) }));
  }
  return { dead: dead.length, next };
}

/**
 * Frees up to FREE_SLICE unreferenced chunks from chunk key `from` on (the
 * first when undefined), adding their ids to `freed`; returns the key to
 * go on from, or null when the table is done.
 */
function freeChunks(ctx: GcContext, from: Buffer | undefined, freed: Set<number>): Buffer | null {
  const { dbs, writeback } = ctx;
  const segDelta = new Map<number, number>();
  let n = 0;
  let next: Buffer | null = null;
  for (const { key, value } of dbs.chunks.getRange(from === undefined ? {} : { start: from })) {
    if (n === FREE_SLICE) { next = Buffer.from(key); break; }
    const c = decodeChunk(value);
    const id = parseChunkKey(key);
    if (c.refs !== 0 || writeback.references(id)) continue;
    n++;
    freed.add(id);
    dbs.chunks.remove(key);
    const rest = decodeIds(dbs.hashes.getBinary(c.hash)).filter((x) => x !== id);
    if (rest.length > 0) dbs.hashes.put(c.hash, encodeIds(rest)); else dbs.hashes.remove(c.hash);
    segDelta.set(c.segment, (segDelta.get(c.segment) ?? 0) + 1);
  }
  for (const [seg, k] of segDelta) {
    const live = (dbs.segments.get(seg) ?? 0) - k;
    if (live > 0) dbs.segments.put(seg, live); else dbs.segments.remove(seg);
  }
  return next;
}

/** Removes the read fingerprints of the `freed` chunks, FREE_SLICE per transaction. */
async function forgetPrints(ctx: GcContext, freed: Set<number>): Promise<void> {
  if (freed.size === 0) return;
  const stale: Array<[string, number]> = [];
  for (const key of ctx.dbs.prints.getKeys({})) {
    const k = key as [string, number];
    if (freed.has(k[1])) stale.push(k);
  }
  for (let i = 0; i < stale.length; i += FREE_SLICE) {
    const slice = stale.slice(i, i + FREE_SLICE);
    await ctx.commit(() => { for (const k of slice) ctx.dbs.prints.remove(k); });
  }
}

async function compactSegments(ctx: GcContext, result: GcResult): Promise<void> {
  const { dbs, segments, engine, writeback } = ctx;
  const slotsOf = (id: number) => Math.max(1, Math.ceil((segments.usedBytes(id) - SEGMENT_HEADER_SIZE) / BLOCK_SIZE));
  // A mostly dead active segment is sealed so it can be compacted too, unless
  // a pending write's chunk lives there (it is not in the chunk table yet).
  const current = segments.activeSegment();
  if (current !== 0 && (dbs.segments.get(current) ?? 0) / slotsOf(current) < COMPACT_LIVE_FRACTION
    && !writeback.newChunkSegments().has(current)) {
    segments.seal();
  }
  const active = segments.activeSegment();
  // A segment that filled up while writes were pending holds chunks not yet
  // in the chunk table: it must not be compacted (appends only go to the
  // active segment, so no pending chunk can appear in one later).
  const pendingIn = writeback.newChunkSegments();
  const candidates = new Map<number, { size: number; live: number }>();
  // Least live first: empty segments are deleted before any copying, which needs room.
  const lives = segments.list().map((id) => ({ id, live: dbs.segments.get(id) ?? 0 })).sort((a, b) => a.live - b.live);
  for (const { id, live } of lives) {
    if (id === active || pendingIn.has(id)) continue;
    if (live / slotsOf(id) >= COMPACT_LIVE_FRACTION) continue;
    // No write lands in a candidate from now on (and one landing now keeps its segment out).
    if (!segments.landings.setCompacting(id, true)) continue;
    engine.forgetSlotsOf(id);
    candidates.set(id, { size: segments.usedBytes(id), live });
  }
  try {
    await compactCandidates(ctx, candidates, result);
  } finally {
    for (const id of candidates.keys()) segments.landings.setCompacting(id, false);
  }
}

async function compactCandidates(ctx: GcContext, candidates: Map<number, { size: number; live: number }>, result: GcResult): Promise<void> {
  const { dbs, segments, engine } = ctx;
  if (candidates.size === 0) return;

  // Chunks living in candidate segments.
  const moving = new Map<number, Array<{ id: number; slot: number }>>();
  for (const { key, value } of dbs.chunks.getRange({})) {
    const c = decodeChunk(value);
    if (!candidates.has(c.segment)) continue;
    let list = moving.get(c.segment);
    if (!list) { list = []; moving.set(c.segment, list); }
    list.push({ id: parseChunkKey(key), slot: c.slot });
  }

  const buf = Buffer.allocUnsafe(BLOCK_SIZE);
  for (const [seg, info] of candidates) {
    const chunks = moving.get(seg) ?? [];
    // No room for its live chunks now: it waits for a later GC (the ones deleted meanwhile make room).
    if (chunks.length > 0 && ctx.freeBytes !== undefined && ctx.freeBytes() < chunks.length * BLOCK_SIZE + COMPACT_ROOM_MARGIN) continue;
    // Verify every chunk before copying any: a damaged segment is left in
    // place whole (its good chunks stay readable there), and copies of its
    // good chunks are not made, only to become garbage again at every GC.
    let readable = true;
    for (const c of chunks) {
      try {
        engine.readChunk(c.id, buf, 0);
      } catch (err) {
        if (err instanceof DormantError && err.code === 'EIO') { readable = false; break; }
        throw err;
      }
    }
    if (!readable) continue;
    const moved: Array<{ id: number; from: Location; to: Location }> = [];
    for (const c of chunks) {
      engine.readChunk(c.id, buf, 0);
      moved.push({ id: c.id, from: { segment: seg, slot: c.slot }, to: segments.append(buf) });
    }
    await ctx.commit(() => {
      const delta = new Map<number, number>();
      for (const m of moved) {
        const raw = dbs.chunks.getBinary(chunkKey(m.id));
        if (!raw) continue;
        const c = decodeChunk(raw);
        if (c.segment !== m.from.segment || c.slot !== m.from.slot) continue;
        dbs.chunks.put(chunkKey(m.id), encodeChunk({ ...c, segment: m.to.segment, slot: m.to.slot }));
        delta.set(m.to.segment, (delta.get(m.to.segment) ?? 0) + 1);
      }
      dbs.segments.remove(seg);
      for (const [s, n] of delta) dbs.segments.put(s, (dbs.segments.get(s) ?? 0) + n);
    }, () => segments.sync());
    segments.remove(seg);
    segments.closeRetired();
    result.bytesReclaimed += info.size - moved.length * BLOCK_SIZE;
    if (moved.length > 0) result.segmentsCompacted++; else result.segmentsDeleted++;
  }
  await segments.sync();
}
