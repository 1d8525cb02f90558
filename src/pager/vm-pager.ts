/**
 * The pager of one running VM: page-out and prefetch of its guest RAM, its
 * activity, and its working sets per event class. The VM runner attaches it
 * once QEMU runs (pager.ts) and tells it of each connection to the VM's
 * port; the host pager samples it once a second (tick).
 *
 * State, per VM:
 *   activity  active | idle, from the VM's IdlePredictor (idleness.ts);
 *   pagedOut  set by a page-out (automatic or asked for), cleared when the
 *             VM turns active: an active VM is not paged again until it
 *             is idle again;
 *   busy      the page-out or prefetch in progress (one at a time; another
 *             is refused with EBUSY, an automatic one waits for the next tick).
 *
 * Automatic paging (when the host pager has it on):
 *   active -> idle   vCPU threads to SCHED_IDLE; page-out sparing the timer
 *                    working set; with swap on the host, QEMU's own private
 *                    memory is paged out too;
 *   idle, paged      every TRIM_INTERVAL_MS the memory file's page cache
 *                    that QEMU does not map is dropped: each fault reads a
 *                    run of pages around the one the guest touched, and
 *                    those neighbours would otherwise stay cached for good
 *                    (mapped pages and dirty ones are never dropped);
 *   idle -> active   vCPU threads back to SCHED_OTHER; pagedOut cleared.
 *
 * Event classes (faults.ts): a connection to a paged-out VM opens a network
 * window of NETWORK_WINDOW_MS (faults in it are the network working set),
 * and its recorded network set is prefetched before the connection is
 * passed on. Faults of a paged-out idle VM outside such a window are its
 * timer wake-ups: each burst after a whole sample without faults is one wake-up;
 * their period is learnt (median of recent intervals, when they agree) and
 * the timer set is prefetched ahead of the next one if it left the cache.
 */
import os from 'node:os';
import { DormantError, asError, asWarn, type LogFn } from '../blockstore/index.js';
import { setThreadIdle } from '../native/index.js';
import type { VolumeIo } from './faults.js';
import { BUSY_CPU_SHARE, BUSY_DISK_REQUESTS, IdlePredictor, learnPeriod, threadUserSeconds, type PredictorOptions } from './idleness.js';
import { GuestMemory, pageOut, pageOutRanges, prefetchPages, type PageoutResult, type PrefetchResult } from './pageout.js';
import { ownPrivateRanges, residentMemory, swapBytes } from './process-memory.js';
import {
  classPages, foldClasses, foldEpoch, hottest, keepOnly, readWorkingSet, recentPages, unionSorted, writeWorkingSet, type WorkingSet,
} from './working-set.js';

const PAGE = 4096;
/**
 * How long after a connection to a paged-out VM its faults count as the
 * network class; a request still faulting when it ends (a slow, loaded
 * host) keeps the window open a second at a time, up to NETWORK_WINDOW_MAX_MS.
 */
export const NETWORK_WINDOW_MS = 3_000;
const NETWORK_WINDOW_MAX_MS = 15_000;
/**
 * Longest wait for a network prefetch before a connection is passed on
 * anyway (the prefetch goes on; the guest's own faults are served beside it).
 */
const CONNECTION_PREFETCH_MS = 500;
/**
 * A VM whose vCPUs ran more than HOG_CPU_SHARE of a core for HOG_AFTER_S
 * samples in a row (a boot, a batch job) runs at niceness HOG_NICE until it
 * calms down: the wake-up of an idle VM answering a request goes first.
 * Only when the daemon runs with a raised priority of its own (it may then
 * lower a thread's niceness again).
 */
const HOG_CPU_SHARE = 0.5;
const HOG_AFTER_S = 5;
const HOG_NICE = 10;
/** Timer wake-ups remembered to learn their period. */
const WAKE_HISTORY = 8;
/** Prefetch the timer set this long before a predicted wake-up. */
const WAKE_LEAD_MS = 1_000;
/**
 * Connections (the first of each burst) remembered to learn their period
 * (health checks, monitoring, a cron job calling in), and how long before a
 * predicted one the network set is prefetched.
 */
const ARRIVAL_HISTORY = 16;
const ARRIVAL_BURST_MS = 1_500;
const ARRIVAL_LEAD_MS = 2_000;
/** How often an idle paged-out VM's unmapped page cache is dropped. */
const TRIM_INTERVAL_MS = 10_000;
/** No trim this soon after a prefetch (its pages are not mapped yet). */
const TRIM_AFTER_PREFETCH_MS = 15_000;
/** The automatic page-out keeps at most this share of guest RAM (the timer set) resident. */
const MAX_KEEP_SHARE = 1 / 8;

/** What `vm pageout` (or the automatic page-out) did. */
export interface PageoutReport extends PageoutResult {
  at: string;
  /** Automatic (the VM turned idle) or asked for. */
  automatic: boolean;
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
  /** QEMU's own private memory advised out to swap (0 without swap on the host). */
  qemuAdvisedBytes: number;
}

/** What `vm prefetch` (or a prefetch ahead of an event) did. */
export interface PrefetchReport extends PrefetchResult {
  at: string;
  /** What was prefetched: the whole last epoch, one event class's set, or what a VM arriving from another host touched there. */
  set: 'epoch' | 'network' | 'timer' | 'arrival';
  residentBefore: number;
  cachedBefore: number;
  cachedAfter: number;
}

/** A running VM as the pager knows it. */
export interface PagedVm {
  /** VM name, for messages. */
  name: string;
  /** Its memory volume and the file QEMU maps. */
  memory: string;
  memFile: string;
  memoryBytes: number;
  /** Where its working set is kept. */
  workingSetFile: string;
  /** QEMU's pid and its vCPU thread ids. */
  pid: number;
  vcpuThreads: number[];
  /** Requests its disk export served so far (NBD), when known. */
  diskOps?: () => number;
}

/** What the pager says of a VM in `vm status`. */
export interface PagerStatus {
  activity: 'active' | 'idle';
  pagedOut: boolean;
  /** The VM's current idle timeout, and how long it has been quiet, seconds. */
  idleTimeoutSeconds: number;
  quietSeconds: number;
  /** vCPU threads under SCHED_IDLE. */
  schedIdle: boolean;
  /** Recorded working sets, bytes: the last epoch, and per event class. */
  workingSetBytes: number;
  timerSetBytes: number;
  networkSetBytes: number;
  /** Learnt period of timer wake-ups, seconds (absent until learnt). */
  timerPeriodSeconds?: number;
  connections: number;
  /** Learnt period of incoming connections, seconds (absent until learnt). */
  connectionPeriodSeconds?: number;
  /** What made the last busy sample busy (guest CPU, disk requests, connections), and when. */
  lastBusy?: { at: string; cpuShare: number; diskRequests: number; connections: number };
  /** The last wake-up of the paged-out VM by a connection. */
  lastWake?: WakeReport;
}

/** A connection to a paged-out VM, from its arrival to the guest's first byte back. */
export interface WakeReport {
  at: string;
  /** Pages of the network set prefetched before the connection was passed on (0: none recorded yet, or a page-out ran). */
  prefetchPages: number;
  /** From arrival until the connection was passed to the guest (the prefetch, bounded). */
  heldMs: number;
  /** From arrival until the guest's first byte back (absent when it sent none). */
  answeredMs?: number;
  /** Guest page faults served from the store from arrival to the first byte back (the prefetch's reads apart). */
  faults?: number;
}

/** Sampling and automatic paging, as the host pager runs them. */
export interface AutoOptions {
  /** Automatic page-out and SCHED_IDLE of idle VMs. */
  enabled: boolean;
  log: LogFn;
}

/** The pager of one running VM. */
export class VmPager {
  lastPageout?: PageoutReport;
  lastPrefetch?: PrefetchReport;
  activity: 'active' | 'idle' = 'active';
  pagedOut = false;
  readonly predictor: IdlePredictor;
  private busy?: string;
  private schedIdle = false;
  private connections = 0;
  private networkUntil = 0;
  private networkSince = 0;
  /** Sampling state: the last tick's time and counters. */
  private last?: { at: number; cpu: number; disk: number; connections: number; faults: number };
  private wakes: number[] = [];
  private timerPeriodMs?: number;
  private wakePrefetchedFor = 0;
  /** Arrivals of connections (first of a burst) and their learnt period. */
  private arrivals: number[] = [];
  private arrivalPeriodMs?: number;
  private arrivalPrefetchedFor = 0;
  private lastBusy?: PagerStatus['lastBusy'];
  /** Samples in a row without a fault (wake-up detection). */
  private faultlessTicks = 0;
  private lastTrim = 0;
  private lastPrefetchAt = 0;
  private lastWake?: WakeReport;
  /** Samples in a row with the vCPUs above HOG_CPU_SHARE, and whether they run at HOG_NICE. */
  private hogTicks = 0;
  private niced = false;
  /** The wake-up in progress: set by a connection to a paged-out VM, ended by the proxy's report of it. */
  private waking?: WakeReport;
  private wakeFaultsFrom = 0;
  /** The page-out or prefetch in progress (settles when it ends), and whether a connection asked the page-out to stop. */
  private running?: Promise<void>;
  private stopPageout = false;
  /** The working set as last read or folded (`workingSet`). */
  private recorded?: { ws: WorkingSet | undefined };

  constructor(readonly vm: PagedVm, readonly io: VolumeIo, readonly mem: GuestMemory, predictor: PredictorOptions,
    private readonly log: LogFn) {
    this.predictor = new IdlePredictor(predictor);
  }

  /**
   * The recorded working set: read from its file once (an unreadable one
   * counts as none), then kept as each page-out folds it; this pager is
   * its only writer while the VM runs.
   */
  private workingSet(): WorkingSet | undefined {
    if (!this.recorded) {
      let ws: WorkingSet | undefined;
      try { ws = readWorkingSet(this.vm.workingSetFile); } catch { ws = undefined; }
      this.recorded = { ws };
    }
    return this.recorded.ws;
  }

  /** Runs `fn` as this VM's one page-out or prefetch (EBUSY when one runs). */
  private async exclusive<T>(what: string, busy: string, fn: () => Promise<T>): Promise<T> {
    if (this.busy) throw new DormantError('EBUSY', `cannot ${what} VM '${this.vm.name}': a ${this.busy} of it is in progress`);
    this.busy = busy;
    const run = (async () => {
      try { return await fn(); } finally { this.busy = undefined; this.running = undefined; }
    })();
    this.running = run.then(() => undefined, () => undefined);
    return run;
  }

  /**
   * Pushes the guest RAM out to the store while it runs, sparing the
   * `keepBytes` hottest bytes of its working set (an automatic page-out
   * spares the timer set instead). The pages read since the previous
   * page-out fold into the working set first.
   */
  pageout(keepBytes = 0, automatic = false): Promise<PageoutReport> {
    this.stopPageout = false;
    return this.exclusive('page out', 'page-out', async () => {
      const { name, workingSetFile, pid } = this.vm;
      const mem = this.mem;
      const before = await memoryNow(pid, mem);
      // A fault reads a run of pages around the one the guest touched: what the guest really
      // touched is what QEMU maps, so the epochs keep only those pages.
      const mapped = await mem.mapped(pid).catch(() => undefined);
      const touched = this.io.takeEpoch();
      const classEpochs = this.io.takeClassEpochs();
      if (mapped) {
        keepOnly(touched, mapped);
        for (const e of classEpochs.values()) keepOnly(e.touched, mapped);
      }
      const prev = this.workingSet();
      const ws = foldClasses(foldEpoch(prev, touched), classEpochs, prev);
      this.recorded = { ws };
      writeWorkingSet(workingSetFile, ws);
      const keep = automatic
        ? hottestOf(ws.classes?.get('timer'), classPages(ws, 'timer'), Math.floor(mem.pages * MAX_KEEP_SHARE))
        : hottest(ws, Math.min(mem.pages, Math.floor(keepBytes / PAGE)));
      const outBefore = this.io.counters.pagesOut;
      const r = await pageOut(pid, mem, keep, `page-out of VM '${name}'`, () => this.stopPageout);
      const qemuAdvisedBytes = !r.stopped && swapBytes() > 0
        ? await pageOutRanges(pid, await ownPrivateRanges(pid, mem.file), `page-out of QEMU's memory of VM '${name}'`)
        : 0;
      const after = await memoryNow(pid, mem);
      const report: PageoutReport = {
        ...r, at: new Date().toISOString(), automatic, residentBefore: before.resident, residentAfter: after.resident,
        cachedBefore: before.cached, cachedAfter: after.cached,
        pagesWritten: this.io.counters.pagesOut - outBefore,
        epochPages: count(touched), workingSetPages: recentPages(ws).length, qemuAdvisedBytes,
      };
      this.lastPageout = report;
      this.pagedOut = true;
      this.log(`vm ${name}: ${automatic ? 'idle, ' : ''}paged out in ${r.durationMs.toFixed(0)} ms${r.stopped ? ' (stopped by a connection)' : ''}: resident guest RAM `
        + `${mib(before.resident)} -> ${mib(after.resident)} MiB, page cache ${mib(before.cached)} -> ${mib(after.cached)} MiB, `
        + `${report.pagesWritten} pages written, ${keep.length} kept`
        + `${qemuAdvisedBytes ? `, ${mib(qemuAdvisedBytes)} MiB of QEMU's own memory to swap` : ''}`,
      { vm: name, automatic, durationMs: Math.round(r.durationMs), pagesWritten: report.pagesWritten, kept: keep.length });
      return report;
    });
  }

  /** Brings the pages of the last epoch back into memory ahead of need. */
  prefetch(): Promise<PrefetchReport> {
    const ws = this.workingSet();
    if (!ws) {
      throw new DormantError('EINVAL', `cannot prefetch VM '${this.vm.name}': no working set recorded yet (one is recorded at each vm pageout)`);
    }
    return this.prefetchSet('epoch', recentPages(ws));
  }

  /** Prefetches `pages` (sorted), as set `set`; `onRead` is called as soon as they are read in, before the memory figures of the report. */
  prefetchSet(set: PrefetchReport['set'], pages: number[], onRead?: () => void): Promise<PrefetchReport> {
    return this.exclusive('prefetch', 'prefetch', async () => {
      const { name, pid } = this.vm;
      // A connection waits for this prefetch (onRead): its memory figures are taken alongside, not first.
      const beforeNow = memoryNow(pid, this.mem);
      beforeNow.catch(() => undefined); // awaited below
      if (!onRead) await beforeNow;
      this.lastPrefetchAt = Date.now();
      const r = await this.io.asPrefetch(() => prefetchPages(pid, this.mem, pages, `prefetch of VM '${name}'`));
      onRead?.();
      this.lastPrefetchAt = Date.now();
      const before = await beforeNow;
      const report: PrefetchReport = {
        ...r, at: new Date().toISOString(), set, residentBefore: before.resident, cachedBefore: before.cached,
        cachedAfter: (await memoryNow(pid, this.mem)).cached,
      };
      this.lastPrefetch = report;
      this.log(`vm ${name}: prefetched ${r.cachedPages}/${r.pages} pages of its ${set === 'epoch' ? 'working' : set} set `
        + `in ${r.durationMs.toFixed(0)} ms`, { vm: name, set, pages: r.pages, cachedPages: r.cachedPages, durationMs: Math.round(r.durationMs) });
      return report;
    });
  }

  /**
   * A connection to the VM's port arrived. For a paged-out VM: opens a
   * network window and prefetches the network set (bounded in time);
   * resolves when the connection may be passed on. Never rejects.
   */
  async connection(): Promise<void> {
    this.connections++;
    this.noteArrival(Date.now());
    // A woken VM gets its CPU back now, not at the next sample.
    if (this.schedIdle) this.setSchedIdle(false, { enabled: true, log: this.log });
    const started = Date.now();
    if (this.busy === 'page-out') {
      // The VM woke while being paged out: stop there (the page-out ends at its next step), then wake it as a paged-out VM.
      this.stopPageout = true;
      await Promise.race([this.running, new Promise((r) => { setTimeout(r, CONNECTION_PREFETCH_MS).unref(); })]);
    }
    if (!this.pagedOut) return;
    this.networkSince = started;
    this.networkUntil = this.networkSince + NETWORK_WINDOW_MS;
    this.io.eventClass = 'network';
    this.io.countEvent('network');
    // The network set, and the timer set beside it: an automatic page-out kept the timer set resident, so a
    // request's faults never showed the pages of it that the request needs too (mostly cached: cheap to read).
    const ws = this.workingSet();
    const network = classPages(ws, 'network');
    const pages = network.length > 0 ? unionSorted(network, classPages(ws, 'timer')) : [];
    const wake: WakeReport = { at: new Date(started).toISOString(), prefetchPages: 0, heldMs: 0 };
    this.wakeFaultsFrom = this.io.counters.faults;
    this.waking ??= wake;
    if (pages.length > 0 && !this.busy) {
      wake.prefetchPages = pages.length;
      let readIn!: () => void;
      const read = new Promise<void>((r) => { readIn = r; });
      const prefetch = this.prefetchSet('network', pages, readIn).catch((err: Error) => {
        this.log(`vm ${this.vm.name}: network prefetch: ${err.message}`, asWarn({ vm: this.vm.name, err: err.message }));
      });
      await Promise.race([read, prefetch, new Promise((r) => { setTimeout(r, CONNECTION_PREFETCH_MS).unref(); })]);
    }
    wake.heldMs = Date.now() - started;
  }

  /**
   * The proxy's report of a connection: `answeredMs` from its arrival to
   * the guest's first byte back (undefined: none came). Ends the wake-up in
   * progress with one log line.
   */
  answered(answeredMs: number | undefined): void {
    const wake = this.waking;
    if (!wake) return;
    this.waking = undefined;
    if (answeredMs !== undefined) wake.answeredMs = Math.round(answeredMs);
    wake.faults = this.io.counters.faults - this.wakeFaultsFrom;
    this.lastWake = wake;
    this.log(`vm ${this.vm.name}: woken by a connection: ${answeredMs === undefined ? 'no answer' : `answered in ${wake.answeredMs} ms`}`
      + ` (held ${wake.heldMs} ms${wake.prefetchPages ? ` for a prefetch of ${wake.prefetchPages} pages` : ', no network set to prefetch'}; `
      + `${wake.faults} faults)`,
    { vm: this.vm.name, event: 'wake', heldMs: wake.heldMs, prefetchPages: wake.prefetchPages, faults: wake.faults,
      ...(answeredMs === undefined ? {} : { answeredMs: wake.answeredMs }) });
  }

  /** One sample of the VM's activity, then what automatic paging does with it. */
  async tick(auto: AutoOptions, now = Date.now()): Promise<void> {
    const { pid, vcpuThreads } = this.vm;
    let cpu = 0;
    for (const tid of vcpuThreads) cpu += (await threadUserSeconds(pid, tid)) ?? 0;
    const cur = { at: now, cpu, disk: this.vm.diskOps?.() ?? 0, connections: this.connections, faults: this.io.counters.faults };
    const prev = this.last;
    this.last = cur;
    this.classifyFaults(prev, cur, now);
    if (!prev) return;
    const seconds = Math.max(0.001, (now - prev.at) / 1000);
    const cpuShare = (cur.cpu - prev.cpu) / seconds;
    const busy = cpuShare > BUSY_CPU_SHARE || (cur.disk - prev.disk) / seconds >= BUSY_DISK_REQUESTS
      || cur.connections > prev.connections;
    if (busy) {
      this.lastBusy = {
        at: new Date(now).toISOString(), cpuShare: Math.round(cpuShare * 1000) / 1000,
        diskRequests: cur.disk - prev.disk, connections: cur.connections - prev.connections,
      };
    }
    this.hogTicks = cpuShare > HOG_CPU_SHARE ? this.hogTicks + 1 : 0;
    if (auto.enabled) this.setNiced(this.hogTicks >= HOG_AFTER_S, auto);
    this.predictor.sample(busy, seconds);
    // Busy again: what was paged out is coming back; a page-out waits for the VM to be idle again.
    if (busy) this.pagedOut = false;
    const state = this.predictor.idle() ? 'idle' : 'active';
    if (state !== this.activity) {
      this.activity = state;
      auto.log(`vm ${this.vm.name}: ${state} (idle timeout ${this.predictor.timeoutSeconds()} s)`,
        { vm: this.vm.name, activity: state, idleTimeoutSeconds: this.predictor.timeoutSeconds() });
    }
    if (!auto.enabled) return;
    this.setSchedIdle(state === 'idle', auto);
    if (state === 'idle' && !this.pagedOut && !this.busy && !this.connectionDue(now)) {
      this.pageout(0, true).catch((err: Error) => auto.log(`vm ${this.vm.name}: automatic page-out: ${err.message}`,
        asError(err, { vm: this.vm.name })));
    }
    if (state === 'idle' && this.pagedOut) {
      await this.prefetchAheadOfConnection(now);
      await this.prefetchAheadOfWake(now);
      await this.trimCache(now);
    }
  }

  /** Drops the page cache of the memory file that QEMU does not map (an idle paged-out VM's fault read-around). */
  private async trimCache(now: number): Promise<void> {
    if (this.busy || now - this.lastTrim < TRIM_INTERVAL_MS || now - this.lastPrefetchAt < TRIM_AFTER_PREFETCH_MS) return;
    this.lastTrim = now;
    await this.mem.drop([[0, this.mem.pages]]).catch((err: Error) => this.log(`vm ${this.vm.name}: trimming its page cache: ${err.message}`,
      asWarn({ vm: this.vm.name, err: err.message })));
  }

  /** Attributes faults to an event class and learns the period of timer wake-ups. */
  private classifyFaults(prev: VmPager['last'], cur: NonNullable<VmPager['last']>, now: number): void {
    const faulted = prev !== undefined && cur.faults !== prev.faults;
    if (now >= this.networkUntil) {
      if (this.io.eventClass === 'network' && faulted && now - this.networkSince < NETWORK_WINDOW_MAX_MS) {
        this.networkUntil = now + 1_000; // the request is still bringing its pages in
      } else {
        this.io.eventClass = this.pagedOut && this.activity === 'idle' ? 'timer' : null;
      }
    }
    const quietBefore = this.faultlessTicks >= 1;
    this.faultlessTicks = faulted ? 0 : this.faultlessTicks + 1;
    // A burst of faults after at least one whole sample without any is one timer wake-up.
    if (!faulted || !quietBefore || this.io.eventClass !== 'timer') return;
    this.io.countEvent('timer');
    this.wakes.push(now);
    if (this.wakes.length > WAKE_HISTORY) this.wakes.shift();
    this.timerPeriodMs = learnPeriod(this.wakes);
  }

  private async prefetchAheadOfWake(now: number): Promise<void> {
    if (this.timerPeriodMs === undefined || this.wakes.length === 0 || this.busy) return;
    const next = this.wakes[this.wakes.length - 1] + this.timerPeriodMs;
    if (now < next - WAKE_LEAD_MS || now > next || this.wakePrefetchedFor === next) return;
    this.wakePrefetchedFor = next;
    const pages = classPages(this.workingSet(), 'timer');
    if (pages.length === 0) return;
    const cached = await this.mem.cached().catch(() => undefined);
    if (cached && pages.every((p) => cached[p])) return;
    await this.prefetchSet('timer', pages).catch((err: Error) => this.log(`vm ${this.vm.name}: timer prefetch: ${err.message}`,
      asWarn({ vm: this.vm.name, err: err.message })));
  }

  /** Counts a connection's arrival, unless one came in the last ARRIVAL_BURST_MS, and learns their period. */
  private noteArrival(now: number): void {
    const last = this.arrivals[this.arrivals.length - 1];
    if (last !== undefined && now - last < ARRIVAL_BURST_MS) return;
    this.arrivals.push(now);
    if (this.arrivals.length > ARRIVAL_HISTORY) this.arrivals.shift();
    this.arrivalPeriodMs = learnPeriod(this.arrivals);
  }

  /** The next connection predicted from their period (undefined when none is learnt). */
  private nextArrival(): number | undefined {
    if (this.arrivalPeriodMs === undefined || this.arrivals.length === 0) return undefined;
    return this.arrivals[this.arrivals.length - 1] + this.arrivalPeriodMs;
  }

  /**
   * Whether the next connection is likely to come before a page-out now
   * would pay (the VM's past intervals between connections say so): it
   * would be woken while its pages are still going out or coming back, so it
   * is left resident until then.
   */
  private connectionDue(now: number): boolean {
    const last = this.arrivals[this.arrivals.length - 1];
    if (last === undefined) return false;
    const intervals = this.arrivals.slice(1).map((t, i) => t - this.arrivals[i]);
    return !this.predictor.pagesOutBefore(intervals, now - last);
  }

  /** Brings the network set back in the last ARRIVAL_LEAD_MS before a predicted connection (once per prediction). */
  private async prefetchAheadOfConnection(now: number): Promise<void> {
    const next = this.nextArrival();
    if (next === undefined || this.busy || now < next - ARRIVAL_LEAD_MS || now > next || this.arrivalPrefetchedFor === next) return;
    this.arrivalPrefetchedFor = next;
    const pages = classPages(this.workingSet(), 'network');
    if (pages.length === 0) return;
    await this.prefetchSet('network', pages).catch((err: Error) => this.log(`vm ${this.vm.name}: network prefetch ahead of a connection: ${err.message}`,
      asWarn({ vm: this.vm.name, err: err.message })));
  }

  /** Puts every vCPU thread at HOG_NICE or back at 0 (one log line each way). */
  private setNiced(niced: boolean, auto: AutoOptions): void {
    // Only a daemon that could raise its own priority may take a thread back from 10 to 0.
    if (niced === this.niced || (niced && os.getPriority() >= 0)) return;
    this.niced = niced;
    for (const tid of this.vm.vcpuThreads) {
      try { os.setPriority(tid, niced ? HOG_NICE : 0); } catch (err) {
        auto.log(`vm ${this.vm.name}: vCPU thread ${tid}: ${(err as Error).message}`, asWarn({ vm: this.vm.name, tid, err: (err as Error).message }));
      }
    }
    auto.log(niced
      ? `vm ${this.vm.name}: its vCPUs busy for ${HOG_AFTER_S} s: at niceness ${HOG_NICE} while they stay busy (other VMs' wake-ups first)`
      : `vm ${this.vm.name}: its vCPUs calmed down: back at niceness 0`, { vm: this.vm.name, niced });
  }

  /** Puts every vCPU thread under SCHED_IDLE or back; schedIdle says what the kernel took (all of them, or not). */
  private setSchedIdle(idle: boolean, auto: AutoOptions): void {
    if (idle === this.schedIdle) return;
    let ok = true;
    for (const tid of this.vm.vcpuThreads) {
      try { setThreadIdle(tid, idle); } catch (err) {
        ok = false;
        auto.log(`vm ${this.vm.name}: vCPU thread ${tid}: ${(err as Error).message}`, asWarn({ vm: this.vm.name, tid, err: (err as Error).message }));
      }
    }
    if (ok || !idle) this.schedIdle = idle;
  }

  /** What `vm status` shows of the pager. */
  status(): PagerStatus {
    const ws = this.workingSet();
    return {
      activity: this.activity, pagedOut: this.pagedOut,
      idleTimeoutSeconds: this.predictor.timeoutSeconds(), quietSeconds: Math.round(this.predictor.quietSeconds),
      schedIdle: this.schedIdle,
      workingSetBytes: recentPages(ws).length * PAGE,
      timerSetBytes: classPages(ws, 'timer').length * PAGE,
      networkSetBytes: classPages(ws, 'network').length * PAGE,
      ...(this.timerPeriodMs === undefined ? {} : { timerPeriodSeconds: Math.round(this.timerPeriodMs / 100) / 10 }),
      connections: this.connections,
      ...(this.arrivalPeriodMs === undefined ? {} : { connectionPeriodSeconds: Math.round(this.arrivalPeriodMs / 100) / 10 }),
      ...(this.lastBusy ? { lastBusy: this.lastBusy } : {}),
      ...(this.lastWake ? { lastWake: this.lastWake } : {}),
    };
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

/** Of `pages` (sorted), the `n` hottest by `ws`'s heat, sorted. */
function hottestOf(ws: WorkingSet | undefined, pages: number[], n: number): number[] {
  if (pages.length <= n) return pages;
  return hottest(ws, n);
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
