/**
 * Space accounting for `list`, `info` and `stats`, computed from the
 * committed index (callers flush first). One pass over each lineage's
 * entries: an entry at version v_i, followed by one at v_(i+1), is seen by
 * the points of the lineage with versions in [v_i, v_(i+1)).
 *
 *  allocated(p) = own data entries p sees + origin's allocated blocks that
 *                 p does not overwrite or trim
 *  unique(p)    = own data entries only p sees, no branch inherits, and
 *                 whose chunk no other entry references (refs == 1)
 *  shared(p)    = allocated(p) - unique(p)
 */
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE, FORMAT_VERSION, SEGMENT_HEADER_SIZE } from './constants.js';
import type { Catalog, Point } from './catalog.js';
import type { BlockMap } from './blockmap.js';
import type { IndexDbs } from './index-db.js';
import { chunkKey, decodeChunk } from './keys.js';
import type { SegmentFiles } from './segments.js';
import type { StoreStats, VolumeInfo, VolumeSummary } from './types.js';

interface PointUsage { ownData: number; unique: number; ownBlocks: number[]; allocated: number; inherited: number }

const key = (p: Point) => `${p.lineage}:${p.version}`;

/** Usage of every readable point (or those of the `only` lineages), by `lineage:version`. */
function computePoints(catalog: Catalog, blockMap: BlockMap, dbs: IndexDbs, only?: Set<number>): Map<string, PointUsage> {
  const result = new Map<string, PointUsage>();
  const refsOf = (id: number) => {
    const raw = dbs.chunks.getBinary(chunkKey(id));
    return raw ? decodeChunk(raw).refs : 0;
  };
  const inherits = new Set<string>();
  for (const l of catalog.lineages.values()) if (l.parent) inherits.add(key(l.parent));

  for (const l of catalog.lineages.values()) {
    if (only && !only.has(l.id)) continue;
    const versions = catalog.retainedVersions(l.id);
    const usage = versions.map((): PointUsage => ({ ownData: 0, unique: 0, ownBlocks: [], allocated: 0, inherited: 0 }));
    const firstAtLeast = (v: number) => {
      let lo = 0, hi = versions.length;
      while (lo < hi) { const mid = (lo + hi) >> 1; if (versions[mid] < v) lo = mid + 1; else hi = mid; }
      return lo;
    };
    let pending: { block: number; version: number; chunk: number } | null = null;
    const account = (e: { block: number; version: number; chunk: number }, nextVersion: number) => {
      const lo = firstAtLeast(e.version);
      const hi = firstAtLeast(nextVersion);
      for (let i = lo; i < hi; i++) {
        const u = usage[i];
        if (l.parent) u.ownBlocks.push(e.block);
        if (e.chunk !== 0) u.ownData++;
      }
      if (e.chunk !== 0 && hi - lo === 1 && !inherits.has(key({ lineage: l.id, version: versions[lo] }))
        && refsOf(e.chunk) === 1) {
        usage[lo].unique++;
      }
    };
    for (const e of blockMap.entries(l.id)) {
      if (pending) account(pending, pending.block === e.block ? e.version : Infinity);
      pending = e;
    }
    if (pending) account(pending, Infinity);
    versions.forEach((v, i) => result.set(key({ lineage: l.id, version: v }), usage[i]));
  }

  // Inherited blocks: the origin's allocated blocks not masked by own entries.
  const done = new Set<string>();
  const resolveAllocated = (p: Point): number => {
    const k = key(p);
    const u = result.get(k);
    if (!u) return 0;
    if (done.has(k)) return u.allocated;
    const l = catalog.lineage(p.lineage);
    if (l.parent) {
      const parentChain = catalog.chain(l.parent);
      let masked = 0;
      for (const b of u.ownBlocks) if (blockMap.lookup(parentChain, b) !== 0) masked++;
      u.inherited = resolveAllocated(l.parent) - masked;
    }
    u.allocated = u.ownData + u.inherited;
    u.ownBlocks = [];
    done.add(k);
    return u.allocated;
  };
  for (const l of catalog.lineages.values()) {
    if (only && !only.has(l.id)) continue;
    for (const v of catalog.retainedVersions(l.id)) resolveAllocated({ lineage: l.id, version: v });
  }
  return result;
}

function summarize(catalog: Catalog, name: string, u: PointUsage | undefined): VolumeSummary {
  const r = catalog.resolve(name);
  const rec = r.readOnly ? catalog.snapshots.get(name)! : catalog.volumes.get(name)!;
  const allocated = (u?.allocated ?? 0) * BLOCK_SIZE;
  const unique = (u?.unique ?? 0) * BLOCK_SIZE;
  return {
    name,
    type: r.readOnly ? 'snapshot' : 'volume',
    kind: r.kind,
    size: r.size,
    allocated,
    unique,
    shared: allocated - unique,
    origin: r.readOnly ? null : catalog.lineage(r.lineage).origin,
    created: rec.created,
  };
}

/** Every volume and snapshot, volumes first in name order, each followed by its snapshots. */
export function computeList(catalog: Catalog, blockMap: BlockMap, dbs: IndexDbs): VolumeSummary[] {
  const points = computePoints(catalog, blockMap, dbs);
  const out: VolumeSummary[] = [];
  for (const name of [...catalog.volumes.keys()].sort()) {
    out.push(summarize(catalog, name, points.get(key(catalog.pointOf(name)))));
    for (const s of catalog.snapshotsOf(name)) out.push(summarize(catalog, s, points.get(key(catalog.pointOf(s)))));
  }
  return out;
}

/** Details of one name. */
export function computeInfo(catalog: Catalog, blockMap: BlockMap, dbs: IndexDbs, name: string,
  openHandles: number): Omit<VolumeInfo, 'locality'> {
  // Only the lineages this name reads through need scanning.
  const points = computePoints(catalog, blockMap, dbs, new Set(catalog.chain(catalog.pointOf(name)).map((p) => p.lineage)));
  const u = points.get(key(catalog.pointOf(name)));
  const s = summarize(catalog, name, u);
  const total = Math.ceil(s.size / BLOCK_SIZE);
  const isSnap = s.type === 'snapshot';
  const snapshots = isSnap ? [] : catalog.snapshotsOf(name);
  const branches = isSnap ? catalog.branchesOf(name) : snapshots.flatMap((n) => catalog.branchesOf(n));
  const originChain = isSnap ? [] : catalog.originChain(name);
  return {
    ...s,
    parentChain: originChain,
    blocks: {
      total,
      allocated: u?.allocated ?? 0,
      own: u?.ownData ?? 0,
      inherited: u?.inherited ?? 0,
      holes: total - (u?.allocated ?? 0),
    },
    snapshots,
    branches,
    openHandles,
  };
}

/** Store totals. */
export function computeStats(dir: string, catalog: Catalog, blockMap: BlockMap, dbs: IndexDbs,
  segments: SegmentFiles): Omit<StoreStats, 'locality' | 'relocation'> {
  const points = computePoints(catalog, blockMap, dbs);
  let logicalBlocks = 0;
  for (const name of [...catalog.volumes.keys(), ...catalog.snapshots.keys()]) {
    logicalBlocks += points.get(key(catalog.pointOf(name)))?.allocated ?? 0;
  }
  let chunks = 0;
  for (const { value } of dbs.chunks.getRange({ snapshot: false })) if (decodeChunk(value).refs > 0) chunks++;
  const segIds = segments.list();
  const segmentBytes = segIds.reduce((sum, id) => sum + segments.usedBytes(id), 0);
  const storedBytes = chunks * BLOCK_SIZE;
  let indexBytes = 0;
  try { indexBytes = fs.statSync(path.join(dir, 'index', 'data.mdb')).size; } catch { /* no index file yet */ }
  return {
    path: dir,
    formatVersion: FORMAT_VERSION,
    volumes: catalog.volumes.size,
    snapshots: catalog.snapshots.size,
    logicalBytes: logicalBlocks * BLOCK_SIZE,
    storedBytes,
    dedupRatio: storedBytes === 0 ? 1 : (logicalBlocks * BLOCK_SIZE) / storedBytes,
    chunks,
    segments: segIds.length,
    segmentBytes,
    garbageBytes: Math.max(0, segmentBytes - segIds.length * SEGMENT_HEADER_SIZE - storedBytes),
    indexBytes,
  };
}
