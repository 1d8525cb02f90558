/**
 * Applying a write-back generation (or one slice of it, see
 * Generation.slices) to the index, inside one transaction.
 *
 * For each pending entry (lineage, block) at version v:
 *  - data: put (lineage, block, v) -> chunk, +1 ref; the chunk it replaces -1;
 *  - zeroes: if an older entry or the origin shows data under it, put a
 *    tombstone (0); otherwise delete the entry, leaving a plain hole.
 * New chunks referenced here are entered in the chunk table (once, with
 * the count of references here: a later slice finds them committed and adds
 * its own), the hash index and their segment's live count. Entries of
 * lineages removed since the write are dropped. Reference counts are summed per chunk and written
 * once. The caller synced the segments before this runs.
 *
 * It only reads the index and records its writes in an IndexWrites list,
 * applied afterwards in one batch (by LMDB's write thread): a failed check
 * then leaves the index untouched, and nothing here reads a key it writes
 * (two new chunks of one hash in one generation are merged in memory).
 */
import type { IndexDbs, IndexWrites } from './index-db.js';
import type { Catalog } from './catalog.js';
import type { BlockMap } from './blockmap.js';
import type { Generation } from './generation.js';
import type { Writeback } from './writeback.js';
import { chunkKey, decodeChunk, decodeIds, encodeChunk, encodeIds, mapKey, mapValue, parseMapValue } from './keys.js';
import { invariant } from './errors.js';

const TOMBSTONE = mapValue(0);

/** Entries planned between two yields to the event loop. */
const PLAN_SLICE = 2048;

/**
 * Records the index writes of a generation in `w`; resolves with the ids of
 * new chunks it enters. Yields to the event loop every PLAN_SLICE entries,
 * so requests keep being served while a big generation is planned; nothing
 * it reads changes meanwhile (commits are serialised, new writes go to the
 * next generation; a volume removed meanwhile leaves entries GC drops).
 */
export async function applyGeneration(
  dbs: IndexDbs, catalog: Catalog, blockMap: BlockMap, writeback: Writeback, gen: Generation, w: IndexWrites,
): Promise<Set<number>> {
  let planned = 0;
  const breathe = async (): Promise<void> => {
    if (++planned % PLAN_SLICE === 0) await new Promise((r) => setImmediate(r));
  };
  const entered = new Set<number>();
  const refDelta = new Map<number, number>();
  const segLive = new Map<number, number>();
  const bump = (id: number, d: number) => refDelta.set(id, (refDelta.get(id) ?? 0) + d);

  for (const lineage of gen.lineages.keys()) {
    const l = catalog.lineages.get(lineage);
    if (!l) continue; // removed meanwhile
    const parentChain = l.parent ? catalog.chain(l.parent) : [];
    for (const [block, version, target] of gen.entries(lineage)) {
      await breathe();
      const key = mapKey(lineage, block, version);
      const oldRaw = dbs.map.getBinary(key);
      const old = oldRaw === undefined ? undefined : parseMapValue(oldRaw);
      if (old) bump(old, -1);
      if (target !== 0) {
        w.put(dbs.map, key, mapValue(target));
        bump(target, +1);
        if (writeback.isNew(target)) entered.add(target);
        continue;
      }
      const below = version > 1 ? blockMap.seek(lineage, block, version - 1) : undefined;
      const showsData = below !== undefined ? below !== 0 : blockMap.lookup(parentChain, block) !== 0;
      if (showsData) w.put(dbs.map, key, TOMBSTONE);
      else if (oldRaw !== undefined) w.remove(dbs.map, key);
    }
  }

  // New chunks still referenced: one record each, written with its final
  // count. In id order: a chunk stored when no other had its hash (unique)
  // puts its hash entry without reading it first, before any later chunk
  // with the same hash appends to that entry.
  const hashIds = new Map<string, number[]>(); // hash entries written here, for chunks that are not unique
  const place = new Uint32Array(2);
  for (const id of [...entered].sort((a, b) => a - b)) {
    await breathe();
    invariant(writeback.newPlace(id, place), `new chunk ${id} is pending`);
    const hash = writeback.newHash(id);
    const refs = refDelta.get(id) ?? 0;
    refDelta.delete(id);
    invariant(refs > 0, `new chunk ${id} is referenced`);
    w.put(dbs.chunks, chunkKey(id), encodeChunk({ hash, segment: place[0], slot: place[1], refs }));
    if (writeback.isUnique(id)) {
      w.put(dbs.hashes, hash, mapValue(id));
    } else {
      const k = hash.toString('latin1');
      const ids = hashIds.get(k) ?? decodeIds(dbs.hashes.getBinary(hash));
      ids.push(id);
      hashIds.set(k, ids);
      w.put(dbs.hashes, hash, encodeIds(ids));
    }
    segLive.set(place[0], (segLive.get(place[0]) ?? 0) + 1);
  }

  for (const [id, d] of refDelta) {
    if (d === 0) continue;
    await breathe();
    const raw = dbs.chunks.getBinary(chunkKey(id));
    invariant(raw, `chunk ${id} referenced by the block map exists`);
    const c = decodeChunk(raw);
    const refs = c.refs + d;
    invariant(refs >= 0, `chunk ${id} reference count stays >= 0`);
    w.put(dbs.chunks, chunkKey(id), encodeChunk({ ...c, refs }));
  }
  for (const [seg, n] of segLive) w.put(dbs.segments, seg, (dbs.segments.get(seg) ?? 0) + n);
  return entered;
}
