/**
 * Read fingerprints: per client label (a VM), which chunks it read and how
 * often. Guests cache what they read from disk, so these chunks are the
 * memory pages most likely shared between VMs (disk-I/O monitoring).
 *
 * Counts accumulate in memory on the read path (a Map increment per block)
 * and are added to the `prints` database by the next flush commit, so they
 * survive restarts without costing the read path any I/O.
 */
import type { IndexDbs } from './index-db.js';

/** Read counters, in memory plus persisted. */
export class Fingerprints {
  private dirty = new Map<string, Map<number, number>>();

  constructor(private readonly dbs: IndexDbs) {}

  /** Counts one read of each nonzero chunk id for `label`. */
  record(label: string, ids: readonly number[]): void {
    let m = this.dirty.get(label);
    if (!m) { m = new Map(); this.dirty.set(label, m); }
    for (const id of ids) if (id !== 0) m.set(id, (m.get(id) ?? 0) + 1);
  }

  /** True when counts are waiting for a commit. */
  get hasDirty(): boolean { return this.dirty.size > 0; }

  /** Takes the in-memory counts for a commit. */
  take(): Map<string, Map<number, number>> {
    const d = this.dirty;
    this.dirty = new Map();
    return d;
  }

  /** Inside a write transaction: adds taken counts to the index. */
  apply(taken: Map<string, Map<number, number>>): void {
    for (const [label, m] of taken) {
      for (const [id, n] of m) {
        const key: [string, number] = [label, id];
        this.dbs.prints.put(key, (this.dbs.prints.get(key) ?? 0) + n);
      }
    }
  }

  /** Returns taken counts that failed to commit. */
  restore(taken: Map<string, Map<number, number>>): void {
    for (const [label, m] of taken) {
      for (const [id, n] of m) {
        let d = this.dirty.get(label);
        if (!d) { d = new Map(); this.dirty.set(label, d); }
        d.set(id, (d.get(id) ?? 0) + n);
      }
    }
  }

  /** Chunk id -> read count for `label` (persisted + not yet committed). */
  counts(label: string): Map<number, number> {
    const out = new Map<number, number>();
    for (const { key, value } of this.dbs.prints.getRange({ start: [label, 0], end: [label, Number.MAX_SAFE_INTEGER] })) {
      out.set(key[1], value);
    }
    for (const [id, n] of this.dirty.get(label) ?? []) out.set(id, (out.get(id) ?? 0) + n);
    return out;
  }

  /** Labels with recorded reads. */
  labels(): string[] {
    const out = new Set<string>(this.dirty.keys());
    let last: string | undefined;
    for (const key of this.dbs.prints.getKeys({})) {
      const label = (key as [string, number])[0];
      if (label !== last) { out.add(label); last = label; }
    }
    return [...out].sort();
  }

  /** Forgets the counts of `label` (inside a write transaction). */
  clear(label: string): void {
    this.dirty.delete(label);
    for (const key of this.dbs.prints.getKeys({ start: [label, 0], end: [label, Number.MAX_SAFE_INTEGER] })) {
      this.dbs.prints.remove(key as [string, number]);
    }
  }
}
