/**
 * Block map look-ups over the committed index.
 *
 * An entry (lineage, block, version) -> chunk id (0 = tombstone) is visible
 * at point (lineage, v) when it is the newest entry of that block with
 * version <= v. One look-up is one reverse cursor seek; a range of blocks is
 * one forward scan per chain level. Neither depends on how many snapshots
 * the lineage has, only on how many chain levels (branch depth) are searched.
 */
import type { IndexDbs } from './index-db.js';
import type { Point } from './catalog.js';
import { mapKey, parseMapKey, parseMapValue } from './keys.js';

/** Ranges up to this many blocks use per-block seeks; longer ones a scan. */
const SEEK_LIMIT = 4;
/** Marks a block not found at any level yet. */
export const UNRESOLVED = -1;

/** Read-only queries of the committed block map. */
export class BlockMap {
  constructor(private readonly dbs: IndexDbs) {}

  /** Newest entry of `lineage` for `block` at version <= `version`: chunk id, 0 (tombstone) or undefined. */
  seek(lineage: number, block: number, version: number): number | undefined {
    for (const { value } of this.dbs.map.getRange({
      start: mapKey(lineage, block, version),
      end: mapKey(lineage, block, 0),
      reverse: true,
      limit: 1,
    })) {
      return parseMapValue(value);
    }
    return undefined;
  }

  /** Chunk id visible at the first point of `chain` (0 = hole). */
  lookup(chain: Point[], block: number): number {
    for (const p of chain) {
      const id = this.seek(p.lineage, block, p.version);
      if (id !== undefined) return id;
    }
    return 0;
  }

  /**
   * Fills `out[i]` for blocks `first + i` of `chain`, only where `out[i]` is
   * UNRESOLVED on entry (callers pre-fill what they know, e.g. pending writes).
   * On return every slot holds a chunk id or 0.
   */
  lookupRange(chain: Point[], first: number, out: number[]): void {
    const n = out.length;
    let open = 0;
    for (let i = 0; i < n; i++) if (out[i] === UNRESOLVED) open++;
    for (const p of chain) {
      if (open === 0) break;
      if (open <= SEEK_LIMIT) {
        for (let i = 0; i < n; i++) {
          if (out[i] !== UNRESOLVED) continue;
          const id = this.seek(p.lineage, first + i, p.version);
          if (id !== undefined) { out[i] = id; open--; }
        }
        continue;
      }
      // Forward scan: entries come in (block, version) order; keep the last
      // one at version <= p.version for each block still unresolved.
      const found = new Map<number, number>();
      for (const { key, value } of this.dbs.map.getRange({
        start: mapKey(p.lineage, first, 0),
        end: mapKey(p.lineage, first + n, 0),
      })) {
        const k = parseMapKey(key);
        if (k.version > p.version) continue;
        const i = k.block - first;
        if (out[i] !== UNRESOLVED) continue;
        found.set(i, parseMapValue(value));
      }
      for (const [i, id] of found) { out[i] = id; open--; }
    }
    if (open > 0) for (let i = 0; i < n; i++) if (out[i] === UNRESOLVED) out[i] = 0;
  }

  /** Every entry of a lineage in key order (for GC and accounting), from block `fromBlock` on. */
  *entries(lineage: number, fromBlock = 0): Generator<{ block: number; version: number; chunk: number }> {
    for (const { key, value } of this.dbs.map.getRange({
      start: mapKey(lineage, fromBlock, 0),
      end: mapKey(lineage + 1, 0, 0),
      snapshot: false,
    })) {
      const k = parseMapKey(key);
      yield { block: k.block, version: k.version, chunk: parseMapValue(value) };
    }
  }

  /** Lineage ids that have entries in the map. */
  lineagesWithEntries(): number[] {
    const out: number[] = [];
    let next = 0;
    for (;;) {
      let found: number | undefined;
      for (const { key } of this.dbs.map.getRange({ start: mapKey(next, 0, 0), limit: 1 })) {
        found = parseMapKey(key).lineage;
      }
      if (found === undefined) return out;
      out.push(found);
      next = found + 1;
    }
  }
}
