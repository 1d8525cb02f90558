/**
 * Consistency check of the committed index (an fsck that repairs nothing).
 * The caller flushes first, so no write is pending. Checks:
 *  - every chunk's reference count equals the map entries naming it;
 *  - every named chunk exists; every chunk lies inside an existing segment
 *    file and is listed under its hash in the hash index;
 *  - each segment's live count equals the chunks stored in it;
 *  - catalog links: volumes and snapshots name existing lineages, parents
 *    exist and are frozen versions, snapshots lie below their head version.
 * Returns one line per problem; an empty list means consistent.
 */
import { BLOCK_SIZE, SEGMENT_HEADER_SIZE } from './constants.js';
import type { Catalog } from './catalog.js';
import type { IndexDbs } from './index-db.js';
import { decodeChunk, decodeIds, parseChunkKey, parseMapValue } from './keys.js';
import type { SegmentFiles } from './segments.js';

/** Largest number of problems reported (the rest are counted). */
const MAX_REPORTED = 50;

/** Checks the index against itself and the segment files. */
export function checkIndex(dbs: IndexDbs, catalog: Catalog, segments: SegmentFiles): string[] {
  const problems: string[] = [];
  let more = 0;
  const report = (p: string) => { if (problems.length < MAX_REPORTED) problems.push(p); else more++; };

  const named = new Map<number, number>();
  for (const { value } of dbs.map.getRange({ snapshot: false })) {
    const id = parseMapValue(value);
    if (id !== 0) named.set(id, (named.get(id) ?? 0) + 1);
  }

  const segSlots = new Map<number, number>();
  for (const id of segments.list()) {
    segSlots.set(id, Math.floor((segments.usedBytes(id) - SEGMENT_HEADER_SIZE) / BLOCK_SIZE));
  }
  const liveBySeg = new Map<number, number>();
  for (const { key, value } of dbs.chunks.getRange({ snapshot: false })) {
    const id = parseChunkKey(key);
    const c = decodeChunk(value);
    const n = named.get(id) ?? 0;
    named.delete(id);
    if (c.refs !== n) report(`chunk ${id}: reference count ${c.refs}, but ${n} map entries name it`);
    const slots = segSlots.get(c.segment);
    if (slots === undefined) report(`chunk ${id}: segment ${c.segment} does not exist`);
    else if (c.slot >= slots) report(`chunk ${id}: slot ${c.slot} is beyond the end of segment ${c.segment}`);
    if (!decodeIds(dbs.hashes.getBinary(c.hash)).includes(id)) report(`chunk ${id}: missing from the hash index`);
    liveBySeg.set(c.segment, (liveBySeg.get(c.segment) ?? 0) + 1);
  }
  for (const [id, n] of named) report(`chunk ${id}: named by ${n} map entries but has no record`);

  const recorded = new Map<number, number>();
  for (const { key, value } of dbs.segments.getRange({ snapshot: false })) recorded.set(key, value);
  for (const seg of new Set([...recorded.keys(), ...liveBySeg.keys()])) {
    const want = liveBySeg.get(seg) ?? 0;
    const got = recorded.get(seg) ?? 0;
    if (want !== got) report(`segment ${seg}: live count ${got}, but ${want} chunks are stored in it`);
  }

  for (const v of catalog.volumes.values()) {
    if (!catalog.lineages.has(v.lineage)) report(`volume ${v.name}: lineage ${v.lineage} is missing`);
  }
  for (const s of catalog.snapshots.values()) {
    const l = catalog.lineages.get(s.lineage);
    if (!l) report(`snapshot ${s.name}: lineage ${s.lineage} is missing`);
    else if (s.version >= l.headVersion) report(`snapshot ${s.name}: version ${s.version} is not below the head ${l.headVersion}`);
  }
  for (const l of catalog.lineages.values()) {
    if (!l.parent) continue;
    const p = catalog.lineages.get(l.parent.lineage);
    if (!p) report(`lineage ${l.id}: parent lineage ${l.parent.lineage} is missing`);
    else if (l.parent.version >= p.headVersion) report(`lineage ${l.id}: parent version ${l.parent.version} is not frozen`);
    if (l.origin && !catalog.snapshots.has(l.origin)) report(`lineage ${l.id}: origin ${l.origin} is missing`);
  }
  if (more > 0) problems.push(`... and ${more} more problems`);
  return problems;
}
