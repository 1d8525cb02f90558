/**
 * Read fingerprints: per client label (a VM), which chunks it read and how
 * often. Guests cache what they read from disk, so these chunks are the
 * memory pages most likely shared between VMs (disk-I/O monitoring).
 *
 * Counts accumulate in memory on the read path (an array increment per
 * block) and are added to the `prints` database by a flush commit at most
 * every PRINTS_INTERVAL_MS and at close, so they survive restarts without
 * costing the read path any I/O.
 */
import type { IndexDbs, IndexWrites } from './index-db.js';

/** Counts per chunk id in pages of PAGE ids (chunk ids are dense: a page is one written extent). */
type Counters = Map<number, Uint32Array>;
const PAGE = 1024;

/** Page `n` of a label's counters, made on first use. */
function pageOf(c: Counters, n: number): Uint32Array {
  let page = c.get(n);
  if (page === undefined) { page = new Uint32Array(PAGE); c.set(n, page); }
  return page;
}

/** Read counters, in memory plus persisted. */
export class Fingerprints {
  private counters = new Map<string, Counters>();

  constructor(private readonly dbs: IndexDbs) {}

  /** Counts one read of each nonzero chunk id for `label` (an array increment per block). */
  record(label: string, ids: readonly number[]): void {
    const m = this.countersOf(label);
    let pageNo = -1;
    let page: Uint32Array | undefined;
    for (const id of ids) {
      if (id === 0) continue;
      const n = Math.floor(id / PAGE);
      if (n !== pageNo) {
        pageNo = n;
        page = pageOf(m, n);
      }
      page![id % PAGE]++;
    }
  }

  private countersOf(label: string): Counters {
    let m = this.counters.get(label);
    if (!m) { m = new Map(); this.counters.set(label, m); }
    return m;
  }

  /** True when counts are waiting for a commit. */
  get hasDirty(): boolean { return this.counters.size > 0; }

  /** Takes the in-memory counts for a commit. */
  take(): Map<string, Map<number, number>> {
    const d = new Map<string, Map<number, number>>();
    for (const label of this.counters.keys()) d.set(label, this.pending(label));
    this.counters = new Map();
    return d;
  }

  /** The in-memory counts of `label`, by chunk id. */
  private pending(label: string): Map<number, number> {
    const out = new Map<number, number>();
    for (const [n, page] of this.counters.get(label) ?? []) {
      for (let i = 0; i < PAGE; i++) if (page[i] !== 0) out.set(n * PAGE + i, page[i]);
    }
    return out;
  }

  /**
   * Records in `w` the index writes that add taken counts to the persisted
   * ones, yielding to the event loop between slices (a count per chunk read
   * can be hundreds of thousands of entries).
   */
  async apply(taken: Map<string, Map<number, number>>, w: IndexWrites): Promise<void> {
    let n = 0;
    for (const [label, m] of taken) {
      for (const [id, count] of m) {
        if (++n % 4096 === 0) await new Promise((r) => setImmediate(r));
        const key: [string, number] = [label, id];
        w.put(this.dbs.prints, key, (this.dbs.prints.get(key) ?? 0) + count);
      }
    }
  }

  /** Returns taken counts that failed to commit. */
  restore(taken: Map<string, Map<number, number>>): void {
    for (const [label, m] of taken) {
      const c = this.countersOf(label);
      for (const [id, n] of m) pageOf(c, Math.floor(id / PAGE))[id % PAGE] += n;
    }
  }

  /** Chunk id -> read count for `label` (persisted + not yet committed). */
  counts(label: string): Map<number, number> {
    const out = new Map<number, number>();
    for (const { key, value } of this.dbs.prints.getRange({ start: [label, 0], end: [label, Number.MAX_SAFE_INTEGER] })) {
      out.set(key[1], value);
    }
    for (const [id, n] of this.pending(label)) out.set(id, (out.get(id) ?? 0) + n);
    return out;
  }

  /** Labels with recorded reads. */
  labels(): string[] {
    const out = new Set<string>(this.counters.keys());
    let last: string | undefined;
    for (const key of this.dbs.prints.getKeys({})) {
      const label = (key as [string, number])[0];
      if (label !== last) { out.add(label); last = label; }
    }
    return [...out].sort();
  }

  /** Forgets the counts of `label` (inside a write transaction). */
  clear(label: string): void {
    this.counters.delete(label);
    for (const key of this.dbs.prints.getKeys({ start: [label, 0], end: [label, Number.MAX_SAFE_INTEGER] })) {
      this.dbs.prints.remove(key as [string, number]);
    }
  }
}
