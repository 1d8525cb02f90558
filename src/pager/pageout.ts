/**
 * Page-out and prefetch of a running VM's RAM, which QEMU maps from the
 * memory volume's file on the FUSE view (memory-backend-file, share=on).
 *
 * Page-out, while the guest runs:
 *   1. write back: fdatasync of the memory file. The kernel sends every
 *      dirty page of it to the FUSE view as writes (into the store, deduped
 *      against disk chunks and other VMs' pages), then FUSE fsync = store
 *      flush: the pages are durable before they are dropped.
 *   2. process_madvise(MADV_PAGEOUT) over QEMU's mapping, minus the pages
 *      kept: the kernel unmaps them from QEMU and reclaims the clean ones.
 *      Reclaim never writes dirty file pages itself (only kswapd does), so a
 *      page the guest dirtied since step 1 stays; a second round of 1+2
 *      catches most of those.
 *   3. posix_fadvise(DONTNEED) over the same file pages: drops what the
 *      page cache holds but QEMU does not map (read-around of earlier
 *      faults), which MADV_PAGEOUT never sees.
 * The guest keeps running; a page it touches again faults in through FUSE.
 *
 * Prefetch: the memory agent reads the working set's pages from the file
 * (several reads in flight), so they are in the page cache when it answers
 * and the guest's next touch is a minor fault. Reads end exactly when the
 * pages are there; read-ahead advice (MADV_WILLNEED) gave no such moment
 * and was dropped by FUSE while its queue was busy, so it had to be polled.
 *
 * This process serves the FUSE requests these calls cause, so its JS thread
 * must stay free: system calls run on the libuv pool (process_madvise,
 * reading QEMU's /proc files, which takes QEMU's mmap_lock), and the daemon
 * never opens or maps a memory file itself: the memory agent does
 * (mem-agent.ts says why).
 */
import fs from 'node:fs';
import { DormantError } from '../blockstore/index.js';
import type { MemoryAgent } from './mem-agent.js';
import { pidfdOpen, processMadvise, NativeError, type Range } from '../native/index.js';
import { complementRuns, pageRuns } from './working-set.js';

const PAGE = 4096;
/** Rounds of write-back + MADV_PAGEOUT. */
const PAGEOUT_ROUNDS = 2;

/** One mapping of the memory file in QEMU. */
export interface GuestMapping {
  start: number;
  end: number;
  /** File offset of `start`. */
  offset: number;
}

/** QEMU's mappings of `memFile` (from /proc/PID/maps); [] when the process is gone or has none. */
export async function findMappings(pid: number, memFile: string): Promise<GuestMapping[]> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/maps`, 'utf8'); } catch { return []; }
  const out: GuestMapping[] = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) \S+ ([0-9a-f]+) \S+ \S+\s+(.*)$/.exec(line);
    if (!m || (m[4] !== memFile && m[4] !== `${memFile} (deleted)`)) continue;
    out.push({ start: parseInt(m[1], 16), end: parseInt(m[2], 16), offset: parseInt(m[3], 16) });
  }
  return out;
}

/** Address ranges in QEMU of the file page runs `runs`, clipped to `maps`. */
export function runsToRanges(runs: ReadonlyArray<[number, number]>, maps: readonly GuestMapping[]): Range[] {
  const ranges: Range[] = [];
  for (const [first, count] of runs) {
    const lo = first * PAGE;
    const hi = (first + count) * PAGE;
    for (const m of maps) {
      const a = Math.max(lo, m.offset);
      const b = Math.min(hi, m.offset + (m.end - m.start));
      if (a < b) ranges.push({ addr: m.start + (a - m.offset), length: b - a });
    }
  }
  return ranges;
}

/** A running VM's memory file, operated on by the memory agent (mem-agent.ts), never opened by the daemon. */
export class GuestMemory {
  constructor(readonly file: string, readonly bytes: number, private readonly agent: MemoryAgent) {}

  get pages(): number { return Math.ceil(this.bytes / PAGE); }

  /** Writes every dirty page back into the store and makes it durable (fdatasync -> FUSE writes, then fsync = store flush). */
  writeBack(): Promise<void> { return this.agent.writeBack(this.file); }

  /** Per page: 1 when it is in the host page cache (cachestat; never maps or touches the pages). */
  async cached(): Promise<Uint8Array> { return (await this.agent.cached(this.file, this.bytes, true)).bitmap!; }

  /** Pages in the host page cache. */
  async cachedCount(): Promise<number> { return (await this.agent.cached(this.file, this.bytes, false)).present; }

  /** Per page: 1 when QEMU `pid` has it mapped and present (the guest touched it since it was last paged out). */
  async mapped(pid: number): Promise<Uint8Array> {
    return this.agent.mapped(this.file, this.bytes, pid, await findMappings(pid, this.file));
  }

  /** Reads the page runs `runs` into the page cache (the memory agent's reads, answered by this daemon's FUSE view). */
  readIn(runs: Array<[number, number]>): Promise<number> { return this.agent.readIn(this.file, runs); }

  /** Drops the clean page-cache pages of file page runs `runs` that no process maps (read-ahead QEMU never touched). */
  drop(runs: Array<[number, number]>): Promise<void> {
    return this.agent.drop(this.file, runs.length === 1 && runs[0][0] === 0 && runs[0][1] >= this.pages ? [[0, 0]] : runs);
  }

  /** Drops the page runs `runs` as `drop` does; how many of their pages stayed cached, and the first. */
  dropChecked(runs: Array<[number, number]>): Promise<{ stillCached: number; first?: number }> {
    return this.agent.dropChecked(this.file, runs);
  }

  /** The VM stopped: the agent closes the file. */
  close(): Promise<void> { return this.agent.forget(this.file); }
}

/** Native errors as DormantErrors: a gone process is ESRCH -> the VM is not running. */
function nativeToDormant(err: unknown, what: string): unknown {
  if (!(err instanceof NativeError)) return err;
  if (err.code === 'ESRCH') return new DormantError('EINVAL', `${what}: QEMU is gone (${err.message})`, { cause: err });
  return new DormantError('EINTERNAL', `${what}: ${err.message}`, { cause: err });
}

/** Runs `fn` with a pidfd of QEMU `pid` and its mappings of `mem` (EINVAL if it has none); native errors become DormantErrors. */
async function onGuestMapping<T>(pid: number, mem: GuestMemory, what: string,
  fn: (pidfd: number, maps: GuestMapping[]) => Promise<T>): Promise<T> {
  const maps = await findMappings(pid, mem.file);
  if (maps.length === 0) throw new DormantError('EINVAL', `${what}: QEMU (pid ${pid}) has no mapping of ${mem.file}`);
  let pidfd: number;
  try { pidfd = pidfdOpen(pid); } catch (err) { throw nativeToDormant(err, what); }
  try {
    return await fn(pidfd, maps);
  } catch (err) {
    throw nativeToDormant(err, what);
  } finally {
    fs.closeSync(pidfd);
  }
}

/** What one page-out did. */
export interface PageoutResult {
  /** Pages advised out (the mapping minus the kept pages). */
  advisedPages: number;
  keptPages: number;
  /** Rounds of write-back + MADV_PAGEOUT begun. */
  rounds: number;
  /** Stopped before its end (`stop` said so: the VM woke); the pages advised out so far stay out. */
  stopped: boolean;
  durationMs: number;
}

/**
 * Pages out QEMU `pid`'s mapping of `mem` except the sorted file pages
 * `keep`. `stop` is asked before each step (write-back, advice, drop): when
 * it says true the page-out ends there (a connection woke the VM, and its
 * request needs the pages and the daemon's time more).
 */
export async function pageOut(pid: number, mem: GuestMemory, keep: readonly number[], what: string,
  stop: () => boolean = () => false): Promise<PageoutResult> {
  const started = performance.now();
  const out = complementRuns(keep, mem.pages);
  let rounds = 0;
  let stopped = false;
  const ranges = await onGuestMapping(pid, mem, what, async (pidfd, maps) => {
    const r = runsToRanges(out, maps);
    const steps = [() => mem.writeBack(), () => processMadvise(pidfd, r, 'pageout'), () => mem.drop(out)];
    for (; rounds < PAGEOUT_ROUNDS && !stopped; rounds++) {
      for (const step of steps) {
        if (stop()) { stopped = true; break; }
        await step();
      }
    }
    return r;
  });
  const advised = ranges.reduce((s, r) => s + r.length, 0) / PAGE;
  return { advisedPages: advised, keptPages: keep.length, rounds, stopped, durationMs: performance.now() - started };
}

/**
 * MADV_PAGEOUT over address ranges `ranges` of QEMU `pid` (its own memory,
 * not the guest's: only swap can take anonymous pages). Resolves with the
 * bytes advised.
 */
export async function pageOutRanges(pid: number, ranges: Range[], what: string): Promise<number> {
  if (ranges.length === 0) return 0;
  let pidfd: number;
  try { pidfd = pidfdOpen(pid); } catch (err) { throw nativeToDormant(err, what); }
  try {
    return await processMadvise(pidfd, ranges, 'pageout');
  } catch (err) {
    throw nativeToDormant(err, what);
  } finally {
    fs.closeSync(pidfd);
  }
}

/** What one prefetch did. */
export interface PrefetchResult {
  pages: number;
  /** Of those, in the page cache when prefetch returned. */
  cachedPages: number;
  durationMs: number;
}

/**
 * Brings the sorted file pages `pages` of `mem` into the page cache: the
 * memory agent reads them (eight 128 KiB reads in flight), so each is
 * there when its read is answered and the guest's next touch is a minor
 * fault. `pid` is QEMU's, for messages.
 */
export async function prefetchPages(pid: number, mem: GuestMemory, pages: readonly number[], what: string): Promise<PrefetchResult> {
  const started = performance.now();
  if (pages.length === 0) return { pages: 0, cachedPages: 0, durationMs: 0 };
  try {
    await mem.readIn(pageRuns(pages));
  } catch (err) {
    throw new DormantError('EIO', `${what} (QEMU pid ${pid}): ${(err as Error).message}`, { cause: err });
  }
  const bitmap = await mem.cached();
  const cached = pages.reduce((n, p) => n + (bitmap[p] ? 1 : 0), 0);
  return { pages: pages.length, cachedPages: cached, durationMs: performance.now() - started };
}
