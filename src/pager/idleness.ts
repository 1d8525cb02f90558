/**
 * Is a VM idle? The pager samples each running VM once a second (activity:
 * its vCPU threads' CPU time, its disk I/O over NBD, connections to its
 * port) and asks the VM's own predictor.
 *
 * A sample is busy when the vCPUs ran guest code (user time) for more than
 * BUSY_CPU_SHARE of a core, the disk served at least BUSY_DISK_REQUESTS
 * requests a second (an idle server's trickle, a journal commit or a page
 * it reads back every few seconds, is not activity), or a connection
 * arrived; otherwise it is quiet.
 * A quiet gap is a run of quiet samples; it ends at the next busy one.
 *
 * The predictor (the seed's unused quanta, with a timeout learnt from the
 * VM's own past): it keeps the lengths of the VM's last GAP_HISTORY
 * completed gaps. A VM is idle once its current gap has lasted the timeout
 * T, the shortest candidate (from min to max, in steps of x1.5) for which
 * the gaps that reached T went on for at least T + payback in a share
 * `confidence` of the cases: paging out then pays (the payback time is
 * what a page-out and the faults after it cost, expressed as time the VM
 * must stay quiet for). With fewer than MIN_HISTORY gaps the initial
 * timeout holds, and so it does (or the candidate, if longer) once fewer
 * than two past gaps reached the candidate: short gaps alone (a boot) say
 * nothing about long ones. When gaps did reach every candidate but rarely
 * went on (quiet spells that keep being cut short), the maximum holds.
 *
 * State table of one VM:
 *   active --(quiet for T)--> idle --(a busy sample)--> active
 * The state and T are what `vm status` shows as activity and idle timeout.
 */
import fs from 'node:fs';

/** vCPU time per second above which a sample is busy (an idle guest's timer work stays far below). */
export const BUSY_CPU_SHARE = 0.05;
/** Disk requests per second from which a sample is busy. */
export const BUSY_DISK_REQUESTS = 8;
/** Completed gaps remembered. */
const GAP_HISTORY = 64;
/** Gaps needed before the timeout is learnt. */
const MIN_HISTORY = 4;

/** Tuning of the predictor; `dormant serve --idle-timeout` sets the initial timeout. */
export interface PredictorOptions {
  /** Timeout before the VM has a history, seconds. */
  initialTimeoutS: number;
  /** Bounds of the learnt timeout, seconds. */
  minTimeoutS: number;
  maxTimeoutS: number;
  /** How long a gap must last beyond the timeout for a page-out to pay, seconds. */
  paybackS: number;
  /** Share of past gaps that must have lasted that long. */
  confidence: number;
}

/** Predictor options from an initial timeout: min = half, max = 20x, payback = the initial timeout. */
export function predictorOptions(initialTimeoutS: number): PredictorOptions {
  return {
    initialTimeoutS,
    minTimeoutS: Math.max(1, initialTimeoutS / 2),
    maxTimeoutS: initialTimeoutS * 20,
    paybackS: initialTimeoutS,
    confidence: 0.7,
  };
}

/** One VM's activity state and its idle-timeout predictor. */
export class IdlePredictor {
  /** Seconds the current quiet gap has lasted. */
  private quiet = 0;
  private readonly gaps: number[] = [];
  private cachedTimeout: number | undefined;

  constructor(private readonly o: PredictorOptions) {}

  /** Takes one sample covering `seconds`. */
  sample(busy: boolean, seconds: number): void {
    if (busy) {
      if (this.quiet > 0) {
        this.gaps.push(this.quiet);
        if (this.gaps.length > GAP_HISTORY) this.gaps.shift();
        this.cachedTimeout = undefined;
      }
      this.quiet = 0;
    } else {
      this.quiet += seconds;
    }
  }

  /** Seconds of the current quiet gap. */
  get quietSeconds(): number { return this.quiet; }

  /** Completed gaps remembered (for status and tests). */
  get history(): readonly number[] { return this.gaps; }

  /** The idle timeout for this VM now, seconds. */
  /**
   * Whether a page-out now would pay, judged by the intervals between a
   * VM's connections (ms) and the time since the last one (`sinceMs`): of
   * the intervals at least that long, the share that went on for the payback
   * too must reach the confidence. Fewer than two such intervals: nothing is
   * known against it, so it would.
   */
  pagesOutBefore(intervals: readonly number[], sinceMs: number): boolean {
    const reached = intervals.filter((g) => g >= sinceMs);
    if (reached.length < 2) return true;
    const lasted = reached.filter((g) => g >= sinceMs + this.o.paybackS * 1000).length;
    return lasted >= this.o.confidence * reached.length;
  }

  timeoutSeconds(): number {
    this.cachedTimeout ??= this.learn();
    return this.cachedTimeout;
  }

  /** True once the current quiet gap has lasted the timeout. */
  idle(): boolean {
    return this.quiet >= this.timeoutSeconds();
  }

  private learn(): number {
    const { minTimeoutS, maxTimeoutS, paybackS, confidence } = this.o;
    if (this.gaps.length < MIN_HISTORY) return this.o.initialTimeoutS;
    for (let t = minTimeoutS; t < maxTimeoutS; t *= 1.5) {
      let reached = 0;
      let lasted = 0;
      for (const g of this.gaps) {
        if (g < t) continue;
        reached++;
        if (g >= t + paybackS) lasted++;
      }
      // No evidence of quiet spells this long: fall back on the initial timeout (or this one, if longer).
      if (reached < 2) return Math.round(Math.max(t, this.o.initialTimeoutS) * 10) / 10;
      if (lasted >= confidence * reached) return Math.round(t * 10) / 10;
    }
    return maxTimeoutS;
  }
}

/**
 * User CPU seconds of thread `tid` of `pid`, from /proc; undefined when
 * gone. Read on the pool. User time only: a vCPU thread runs the guest's
 * code in user mode (TCG's translated code; KVM's guest time is counted as
 * user time too), while its system time is the host's work for it, above
 * all the page faults that bring a paged-out guest's pages back, which must
 * not make an idle VM look busy.
 */
export async function threadUserSeconds(pid: number, tid: number): Promise<number | undefined> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8'); } catch { return undefined; }
  // Fields after the command name (which may hold spaces): utime is the 12th.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  return Number(rest[11]) / CLOCK_TICKS;
}

/** The kernel's USER_HZ (sysconf(_SC_CLK_TCK)): 100 on every Linux architecture dormant runs on. */
const CLOCK_TICKS = 100;

/** The scheduling policy of thread `tid` of `pid` (0 SCHED_OTHER, 5 SCHED_IDLE...), or undefined when gone. */
export async function threadPolicy(pid: number, tid: number): Promise<number | undefined> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/task/${tid}/stat`, 'utf8'); } catch { return undefined; }
  return Number(text.slice(text.lastIndexOf(')') + 2).split(' ')[38]);
}

/** The period of `wakes` (ms timestamps), when the last intervals agree within a quarter; else undefined. */
export function learnPeriod(wakes: readonly number[]): number | undefined {
  if (wakes.length < 4) return undefined;
  const gaps = wakes.slice(1).map((t, i) => t - wakes[i]).sort((a, b) => a - b);
  const median = gaps[Math.floor(gaps.length / 2)];
  const agree = gaps.filter((g) => Math.abs(g - median) <= median / 4).length;
  return agree >= gaps.length - 1 ? median : undefined;
}
