/**
 * The pager of a host and of each running VM on it. The VM runner (src/vm)
 * owns one Pager for the daemon's life and attaches each VM once QEMU is up;
 * the pager knows a VM only by its memory file, its QEMU pid and the file
 * that keeps its working set. It never reaches into the runner.
 *
 * Per VM, one page-out or prefetch at a time (the runner serialises them):
 *   pageout:  the pages read since the previous page-out (the epoch, from
 *             the FUSE read stream) fold into the working set, which is
 *             written back to its file; the whole guest RAM except the
 *             `keep` hottest pages is written back into the store and
 *             pushed out of QEMU and the page cache (pageout.ts);
 *   prefetch: the pages of the last epoch are brought back into the page
 *             cache ahead of need.
 * The last report of each stays in memory for `vm status`.
 */
import { DormantError } from '../blockstore/index.js';
import { MemoryIo, type VolumeIo } from './faults.js';
import { MemoryAgent } from './mem-agent.js';
import { GuestMemory, pageOut, prefetchPages, type PageoutResult, type PrefetchResult } from './pageout.js';
import { residentMemory } from './process-memory.js';
import { foldEpoch, hottest, readWorkingSet, recentPages, writeWorkingSet } from './working-set.js';

const PAGE = 4096;

/** What `vm pageout` did. */
export interface PageoutReport extends PageoutResult {
  at: string;
  /** Resident guest RAM (smaps Rss of the mapping) before and right after. */
  residentBefore: number;
  residentAfter: number;
  /** Page cache of the memory file before and after (cachestat). */
  cachedBefore: number;
  cachedAfter: number;
  /** Pages written back into the store during the page-out. */
  pagesWritten: number;
  /** Pages read since the previous page-out (the epoch folded into the working set). */
  epochPages: number;
  workingSetPages: number;
}

/** What `vm prefetch` did. */
export interface PrefetchReport extends PrefetchResult {
  at: string;
  residentBefore: number;
  cachedBefore: number;
  cachedAfter: number;
}

/** A running VM as the pager needs to know it. */
export interface PagedVm {
  /** VM name, for messages. */
  name: string;
  /** Its memory volume (the FUSE view's file name) and the file QEMU maps. */
  memory: string;
  memFile: string;
  memoryBytes: number;
  /** Where its working set is kept. */
  workingSetFile: string;
}

/** The host's pager: the memory agent and the FUSE view's memory traffic, shared by every VM. */
export class Pager {
  readonly io: MemoryIo;
  private readonly agent: MemoryAgent;

  constructor(private readonly o: { io?: MemoryIo; log?: (line: string) => void } = {}) {
    this.io = o.io ?? new MemoryIo();
    this.agent = new MemoryAgent(o.log ?? (() => undefined));
  }

  /** Starts counting the memory traffic of a VM whose QEMU is starting; fresh counters. */
  track(memory: string, memoryBytes: number): VolumeIo {
    return this.io.track(memory, memoryBytes);
  }

  /** The pager of VM `vm` once its QEMU runs and maps `vm.memFile`; `io` is what track() gave at its start. */
  attach(vm: PagedVm, io: VolumeIo): VmPager {
    return new VmPager(vm, io, new GuestMemory(vm.memFile, vm.memoryBytes, this.agent), this.o.log ?? (() => undefined));
  }

  /** Stops the memory agent: after every VM's memory file was closed. */
  close(): Promise<void> {
    return this.agent.close();
  }
}

/** The pager of one running VM. */
export class VmPager {
  lastPageout?: PageoutReport;
  lastPrefetch?: PrefetchReport;

  constructor(readonly vm: PagedVm, readonly io: VolumeIo, readonly mem: GuestMemory, private readonly log: (line: string) => void) {}

  /**
   * Pushes the guest RAM of QEMU `pid` out to the store while it runs,
   * sparing the `keepBytes` hottest bytes of its working set. The pages
   * read since the previous page-out fold into the working set first.
   */
  async pageout(pid: number, keepBytes = 0): Promise<PageoutReport> {
    const { name, workingSetFile } = this.vm;
    const mem = this.mem;
    const before = await memoryNow(pid, mem);
    const touched = this.io.takeEpoch();
    const ws = foldEpoch(readWorkingSet(workingSetFile), touched);
    writeWorkingSet(workingSetFile, ws);
    const keep = hottest(ws, Math.min(mem.pages, Math.floor(keepBytes / PAGE)));
    const outBefore = this.io.counters.pagesOut;
    const r = await pageOut(pid, mem, keep, `page-out of VM '${name}'`);
    const after = await memoryNow(pid, mem);
    const report: PageoutReport = {
      ...r, at: new Date().toISOString(), residentBefore: before.resident, residentAfter: after.resident,
      cachedBefore: before.cached, cachedAfter: after.cached,
      pagesWritten: this.io.counters.pagesOut - outBefore,
      epochPages: count(touched), workingSetPages: recentPages(ws).length,
    };
    this.lastPageout = report;
    this.log(`vm ${name}: paged out in ${r.durationMs.toFixed(0)} ms: resident guest RAM ${mib(before.resident)} -> `
      + `${mib(after.resident)} MiB, page cache ${mib(before.cached)} -> ${mib(after.cached)} MiB, `
      + `${report.pagesWritten} pages written, ${keep.length} kept`);
    return report;
  }

  /** Brings the recorded working set of QEMU `pid`'s guest RAM back into memory ahead of need. */
  async prefetch(pid: number): Promise<PrefetchReport> {
    const { name } = this.vm;
    const ws = readWorkingSet(this.vm.workingSetFile);
    if (!ws) {
      throw new DormantError('EINVAL', `cannot prefetch VM '${name}': no working set recorded yet (one is recorded at each vm pageout)`);
    }
    const before = await memoryNow(pid, this.mem);
    const r = await this.io.asPrefetch(() => prefetchPages(pid, this.mem, recentPages(ws), `prefetch of VM '${name}'`));
    const report: PrefetchReport = {
      ...r, at: new Date().toISOString(), residentBefore: before.resident, cachedBefore: before.cached,
      cachedAfter: (await memoryNow(pid, this.mem)).cached,
    };
    this.lastPrefetch = report;
    this.log(`vm ${name}: prefetched ${r.cachedPages}/${r.pages} working-set pages in ${r.durationMs.toFixed(0)} ms`);
    return report;
  }

  /** Writes the dirty guest RAM back into the store, durably. */
  writeBack(): Promise<void> {
    return this.mem.writeBack();
  }

  /** Guest RAM in the host page cache, in bytes (undefined when the agent cannot tell). */
  async cachedBytes(): Promise<number | undefined> {
    return this.mem.cachedCount().then((n) => n * PAGE, () => undefined);
  }

  /** QEMU stopped: the memory agent closes the file, writing back what QEMU left dirty. */
  close(): Promise<void> {
    return this.mem.close();
  }
}

/** Bytes of the working set recorded in `file` (its last epoch), or undefined before the first page-out. */
export function recordedWorkingSetBytes(file: string): number | undefined {
  const ws = readWorkingSet(file);
  return ws ? recentPages(ws).length * PAGE : undefined;
}

const count = (bitmap: Uint8Array): number => {
  let n = 0;
  for (let i = 0; i < bitmap.length; i++) if (bitmap[i] !== 0) n++;
  return n;
};

const mib = (bytes: number) => (bytes / 2 ** 20).toFixed(1);

/** Guest RAM resident in QEMU (smaps of the mapping) and in the host page cache, in bytes. */
async function memoryNow(pid: number, mem: GuestMemory): Promise<{ resident: number; cached: number }> {
  const [res, cached] = await Promise.all([residentMemory(pid, mem.file), mem.cachedCount()]);
  return { resident: res?.guestRam ?? 0, cached: cached * PAGE };
}
