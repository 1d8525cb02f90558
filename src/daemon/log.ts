/**
 * The log of the long-running commands (`dormant serve`, `dormant mount`):
 * a LogFn (src/blockstore/log.ts) over pino, one event per line on stderr.
 *
 *   --log-format text  (default) `<ISO time> <line>`: the human-readable
 *                      line as the daemon always wrote it; fields are not
 *                      repeated (the line names what they name);
 *   --log-format json  one JSON object per line: time (ISO), level (its
 *                      name), msg (the same line) and the event's fields
 *                      (vm, export, client, conn, err, counters ...).
 *
 * `--log-level` drops events below it (pino does the filtering). Writes
 * are synchronous (process.stderr on a pipe or file), so the last lines
 * before an exit are not lost.
 */
import { pino } from 'pino';
import { DormantError, LOG_LEVELS, type LogFn, type LogLevel } from '../blockstore/index.js';

/** The two ways of writing events. */
export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = typeof LOG_FORMATS[number];

/** How to log. */
export interface LogOptions {
  level?: LogLevel;
  format?: LogFormat;
  /** Where lines go (default process.stderr). */
  out?: { write(s: string): unknown };
}

/** Checks a --log-level value. */
export function parseLogLevel(text: string): LogLevel {
  if (!(LOG_LEVELS as readonly string[]).includes(text)) {
    throw new DormantError('EINVAL', `bad --log-level '${text}': use ${LOG_LEVELS.join(', ')}`);
  }
  return text as LogLevel;
}

/** Checks a --log-format value. */
export function parseLogFormat(text: string): LogFormat {
  if (!(LOG_FORMATS as readonly string[]).includes(text)) {
    throw new DormantError('EINVAL', `bad --log-format '${text}': use text or json`);
  }
  return text as LogFormat;
}

/** A LogFn writing events at `level` and above in `format`. */
export function createLog(o: LogOptions = {}): LogFn {
  const out = o.out ?? process.stderr;
  const dest = o.format === 'json'
    ? { write: (s: string) => out.write(s) }
    : {
      write: (s: string) => {
        const e = JSON.parse(s) as { time: string; msg: string };
        out.write(`${e.time} ${e.msg}\n`);
      },
    };
  const logger = pino({
    level: o.level ?? 'info',
    base: null,
    timestamp: pino.stdTimeFunctions.isoTime,
    formatters: { level: (label) => ({ level: label }) },
  }, dest);
  return (line, fields) => {
    const { level = 'info', ...rest } = fields ?? {};
    logger[level](rest, line);
  };
}
