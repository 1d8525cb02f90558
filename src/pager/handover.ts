/**
 * A VM's memory across a move to another host (src/migrate): the pages its
 * guest uses now, so the destination has them in its page cache before
 * the guest goes on there, and the pages a patch changed afterwards, which
 * must leave that cache.
 *
 * Why: on the destination QEMU maps the memory volume through the FUSE
 * view. Loading the device state reads guest RAM (virtio rings), and the
 * guest's first moments there touch its idle set: each page not in the
 * page cache is a FUSE read the daemon serves, one round trip at a time,
 * while the guest is still paused for the user. Read in ahead (while the
 * guest still runs on the source), the same pages cost a page-table entry.
 *
 * The pages read in ahead are those of the pre-copy; the pause's patch
 * rewrites some of them in the store. The kernel keeps a FUSE file's pages
 * until the file is opened again, so those pages are dropped (fadvise
 * DONTNEED; nothing maps them yet: QEMU has not touched guest RAM before
 * the device state comes) and then checked gone: a page still cached
 * would show the guest old bytes, so the move fails instead (and the guest
 * resumes on the source).
 */
import { DormantError } from '../blockstore/index.js';
import { pageRuns } from './working-set.js';
import type { PrefetchReport, VmPager } from './vm-pager.js';

/** Pages the guest of `pager` has touched since its last page-out (QEMU maps them), sorted; at most `max`, lowest first. */
export async function touchedPages(pager: VmPager, max: number): Promise<number[]> {
  const bitmap = await pager.mem.mapped(pager.vm.pid);
  const pages: number[] = [];
  for (let p = 0; p < bitmap.length && pages.length < max; p++) if (bitmap[p]) pages.push(p);
  return pages;
}

/** Reads `pages` (sorted) of the arriving VM of `pager` into the page cache. */
export function readInArrival(pager: VmPager, pages: number[]): Promise<PrefetchReport> {
  return pager.prefetchSet('arrival', pages);
}

/**
 * Drops `pages` (sorted) of the VM's memory from the page cache after a
 * patch rewrote them in the store; EBUSY when one stays cached (mapped or
 * being read: it could show old bytes).
 */
export async function dropPatched(pager: VmPager, pages: number[]): Promise<void> {
  if (pages.length === 0) return;
  const r = await pager.mem.dropChecked(pageRuns(pages));
  if (r.stillCached > 0) {
    throw new DormantError('EBUSY', `VM '${pager.vm.name}': ${r.stillCached} patched pages of its memory stay in the page cache `
      + `(first: page ${r.first}); they could show old bytes`);
  }
}
