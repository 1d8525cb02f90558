/**
 * `serve --log-stats-every DURATION`: every period, one log line per NBD
 * export that had traffic in it (requests, reads, writes, bytes, errors
 * since the last line), from the NBD server's per-export totals
 * (NbdServer.exportStats: connections that ended plus live ones; the same
 * numbers the metrics endpoint serves). An export without requests in the
 * period gets no line.
 */
import type { LogFn } from '../blockstore/index.js';
import type { ExportStats } from '../nbd/index.js';

/** Counters a stats line reports, in its order. */
const KEYS = ['requests', 'reads', 'writes', 'bytesRead', 'bytesWritten', 'errors'] as const;

/** Periodic per-export counter lines. */
export class StatsLog {
  private last = new Map<string, ExportStats>();
  private lastAt = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly source: () => Map<string, ExportStats>, everyMs: number, private readonly log: LogFn) {
    this.last = snapshot(source);
    this.timer = setInterval(() => this.write(), everyMs);
    this.timer.unref();
  }

  /** Writes one line per export with requests since the last lines. */
  write(): void {
    const now = snapshot(this.source);
    const seconds = (Date.now() - this.lastAt) / 1000;
    for (const [exp, cur] of now) {
      const prev = this.last.get(exp);
      const delta = Object.fromEntries(KEYS.map((k) => [k, cur[k] - (prev?.[k] ?? 0)])) as Record<typeof KEYS[number], number>;
      if (delta.requests <= 0) continue;
      this.log(`nbd: export=${exp} in the last ${seconds.toFixed(0)} s: ${KEYS.map((k) => `${k}=${delta[k]}`).join(' ')} connections=${cur.connections}`,
        { event: 'stats', export: exp, periodSeconds: Number(seconds.toFixed(3)), ...delta, connections: cur.connections });
    }
    this.last = now;
    this.lastAt = Date.now();
  }

  /** Stops the timer. */
  stop(): void {
    clearInterval(this.timer);
  }
}

function snapshot(fn: () => Map<string, ExportStats>): Map<string, ExportStats> {
  return new Map([...fn()].map(([k, v]) => [k, { ...v }]));
}
