/**
 * A generation of pending write-back entries: (lineage, block) -> (version,
 * target), target being a chunk id or 0 (zeroes). The write-back keeps two
 * at most (the current one, and the one a flush is committing; see
 * writeback.ts); a flush commits a generation in slices (`slices`).
 *
 * Layout: no JavaScript object per block, so that a generation can span a
 * working set of gigabytes without weighing on the collector. Entries live
 * in pages of ENTRY_PAGE consecutive blocks per lineage: one Float64Array
 * of ENTRY_PAGE targets (-1: no entry) followed by ENTRY_PAGE versions.
 * Block numbers exceed 2^32, so page numbers and offsets come from
 * division, never bit shifts.
 *
 * Counts (`count`, `pages`) are kept by whoever changes the pages: the
 * write-back, and `slices` for the generations it makes.
 */

/** Blocks per entry page: 512 bytes of memory per page in use. */
export const ENTRY_PAGE = 32;

/** One generation of pending entries. */
export class Generation {
  /** lineage -> page number -> [target x ENTRY_PAGE (-1: none), version x ENTRY_PAGE]. */
  readonly lineages = new Map<number, Map<number, Float64Array>>();
  /** Entries. */
  count = 0;
  /** Pages allocated. */
  pages = 0;

  /** Page `pageNo` of `lineage`, if it has one. */
  page(lineage: number, pageNo: number): Float64Array | undefined {
    return this.lineages.get(lineage)?.get(pageNo);
  }

  /** Page `pageNo` of `lineage`, made (empty) if missing. */
  makePage(lineage: number, pageNo: number): Float64Array {
    let m = this.lineages.get(lineage);
    if (m === undefined) { m = new Map(); this.lineages.set(lineage, m); }
    let p = m.get(pageNo);
    if (p === undefined) {
      p = new Float64Array(2 * ENTRY_PAGE).fill(-1, 0, ENTRY_PAGE);
      m.set(pageNo, p);
      this.pages++;
    }
    return p;
  }

  /**
   * This generation cut into generations of about `maxEntries` entries
   * each (whole pages, shared with this one), in order; itself when it is
   * that small.
   */
  slices(maxEntries: number): Generation[] {
    if (this.count <= maxEntries) return [this];
    const out: Generation[] = [];
    let cur = new Generation();
    for (const [lineage, pages] of this.lineages) {
      for (const [pageNo, p] of pages) {
        if (cur.count >= maxEntries) { out.push(cur); cur = new Generation(); }
        let m = cur.lineages.get(lineage);
        if (m === undefined) { m = new Map(); cur.lineages.set(lineage, m); }
        m.set(pageNo, p);
        cur.pages++;
        for (let i = 0; i < ENTRY_PAGE; i++) if (p[i] >= 0) cur.count++;
      }
    }
    out.push(cur);
    return out;
  }

  /** Entries of `lineage` as [block, version, target]; the array is reused between steps. */
  *entries(lineage: number): Generator<[number, number, number]> {
    const m = this.lineages.get(lineage);
    if (m === undefined) return;
    const e: [number, number, number] = [0, 0, 0];
    for (const [pageNo, p] of m) {
      for (let i = 0; i < ENTRY_PAGE; i++) {
        if (p[i] < 0) continue;
        e[0] = pageNo * ENTRY_PAGE + i;
        e[1] = p[ENTRY_PAGE + i];
        e[2] = p[i];
        yield e;
      }
    }
  }
}
