/**
 * Scrubbing on a schedule (`dormant serve --scrub-every 6h [--scrub-rate
 * MB/s]`): the daemon reads every committed chunk back at a bounded rate
 * and checks it against its hash (Store.verifyData, as `dormant scrub`
 * does), one run every interval, the first one interval after start. Each
 * run logs one line: clean, or each damaged chunk with the volumes and
 * offsets that use it. A run is never repaired automatically (`dormant
 * scrub --repair` does that when asked). stop() aborts a run between
 * batches and waits for it.
 *
 * States: waiting -> running -> waiting ... ; stop() -> stopped from either.
 */
import { DormantError, asError, type DataReport, type LogFn, type Store } from '../blockstore/index.js';

/** A scheduled scrub of one store. */
export class ScrubSchedule {
  private timer?: NodeJS.Timeout;
  private running?: Promise<void>;
  private readonly abort = new AbortController();

  /** Schedules runs of `store` every `everyMs`, reading at most `rate` bytes a second. */
  constructor(private readonly store: Store, private readonly everyMs: number, private readonly rate: number,
    private readonly log: LogFn) {
    this.arm();
  }

  private arm(): void {
    if (this.abort.signal.aborted) return;
    this.timer = setTimeout(() => {
      this.running = this.runOnce().finally(() => { this.running = undefined; this.arm(); });
    }, this.everyMs);
    this.timer.unref();
  }

  private async runOnce(): Promise<void> {
    try {
      const r = await this.store.verifyData({ rate: this.rate, signal: this.abort.signal });
      const bad = r.damaged.length + r.badSegments.length;
      const fields = { chunks: r.chunks, bytes: r.bytes, damaged: r.damaged.length, badSegments: r.badSegments.length };
      for (const line of describe(r)) this.log(line, { level: bad > 0 ? 'error' : 'info', ...fields });
    } catch (err) {
      this.log(`scrub: failed: ${(err as Error).message}`, asError(err));
    }
  }

  /** Stops scheduling and aborts a run in progress; resolves once it has stopped. */
  async stop(): Promise<void> {
    this.abort.abort();
    if (this.timer) clearTimeout(this.timer);
    await this.running;
  }
}

/** The log lines of one scrub run. */
export function describe(r: DataReport): string[] {
  const gib = (r.bytes / 2 ** 30).toFixed(2);
  if (!r.complete) return [`scrub: stopped after ${r.chunks} chunks (${gib} GiB)`];
  const head = `scrub: ${r.chunks} chunks (${gib} GiB) read in ${r.seconds.toFixed(1)} s`;
  if (r.damaged.length === 0 && r.badSegments.length === 0) return [`${head}: clean`];
  return [
    `${head}: ${r.damaged.length} damaged chunks, ${r.badSegments.length} bad segment headers (dormant scrub --repair may fix them)`,
    ...r.badSegments.map((s) => `scrub: bad segment header: ${s}`),
    ...r.damaged.map((d) => `scrub: chunk ${d.chunk} (segment ${d.segment} slot ${d.slot}) ${d.problem}; used by `
      + `${d.users.map((u) => `${u.name} at ${u.offset}`).join(', ') || 'nothing'}`),
  ];
}

/** Parses a duration like `30s`, `15m`, `6h`, `1d` into milliseconds (EINVAL otherwise). */
export function parseDuration(text: string, flag: string): number {
  const m = /^(\d+(?:\.\d+)?)(s|m|h|d)$/.exec(text.trim());
  const ms = m ? Number(m[1]) * { s: 1e3, m: 6e4, h: 3.6e6, d: 8.64e7 }[m[2] as 's' | 'm' | 'h' | 'd'] : NaN;
  if (!Number.isFinite(ms) || ms < 1_000 || ms > 365 * 8.64e7) {
    throw new DormantError('EINVAL', `bad ${flag} '${text}': a duration such as 30s, 15m, 6h or 1d (1 s to 365 d)`);
  }
  return Math.round(ms);
}
