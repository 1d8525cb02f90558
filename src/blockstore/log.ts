/**
 * The log call every folder takes: a human-readable line plus the fields
 * that say what it is about (level, vm, export, client, ...). The daemon
 * turns these into structured log events (src/daemon/log.ts, pino); a plain
 * `(line) => void` is a LogFn too, so tests and offline commands can pass
 * one that ignores the fields.
 */

/** Log levels, least severe first. */
export const LOG_LEVELS = ['trace', 'debug', 'info', 'warn', 'error'] as const;

/** One log level. */
export type LogLevel = typeof LOG_LEVELS[number];

/** What an event is about; `level` defaults to info. Values should be strings, numbers or booleans. */
export interface LogFields {
  level?: LogLevel;
  [field: string]: unknown;
}

/** Logs one event: the line as a human reads it, and its fields. */
export type LogFn = (line: string, fields?: LogFields) => void;

/** Fields for a warning about `what` (e.g. `{ vm: name }`). */
export const asWarn = (what: Omit<LogFields, 'level'> = {}): LogFields => ({ level: 'warn', ...what });

/** Fields for a failure about `what`, with the error's message as `err`. */
export function asError(err: unknown, what: Omit<LogFields, 'level'> = {}): LogFields {
  return { level: 'error', ...what, err: (err as Error | null)?.message ?? String(err) };
}
