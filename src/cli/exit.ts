/**
 * The one place where errors become exit codes and stderr lines.
 *   0 success, 1 user error (one clear line), 2 internal error,
 *   3 problems found in the store (check, scrub).
 */
import { DormantError, USER_ERROR_CODES, asError, type LogFn } from '../blockstore/index.js';

/** Exit code for a user error. */
export const EXIT_USER = 1;
/** Exit code for an internal error. */
export const EXIT_INTERNAL = 2;
/** Exit code of a check or scrub that found problems it did not repair. */
export const EXIT_PROBLEMS = 3;

/**
 * For the commands that keep running (serve, mount): a failure nothing
 * handled is one line through `log` and exit EXIT_INTERNAL, as Node would
 * exit, but without a stack (DORMANT_DEBUG=1 adds it).
 */
export function exitOnUnhandled(what: string, log: LogFn): void {
  const fail = (err: unknown) => {
    log(`${what}: internal error: ${(err as Error | null)?.message ?? String(err)}`, asError(err));
    if (process.env.DORMANT_DEBUG) process.stderr.write(`${(err as Error | null)?.stack}\n`);
    process.exit(EXIT_INTERNAL);
  };
  process.on('uncaughtException', fail);
  process.on('unhandledRejection', fail);
}

/** Prints one line for `err` and returns the exit code. */
export function reportError(err: unknown): number {
  if (err instanceof DormantError) {
    process.stderr.write(`dormant: ${err.message}\n`);
    if (USER_ERROR_CODES.has(err.code)) return EXIT_USER;
    if (process.env.DORMANT_DEBUG) process.stderr.write(`${err.stack}\n`);
    return EXIT_INTERNAL;
  }
  const e = err as NodeJS.ErrnoException;
  if (e && (e.code === 'ENOENT' || e.code === 'EACCES' || e.code === 'EISDIR' || e.code === 'ENOTDIR') && e.path) {
    process.stderr.write(`dormant: ${e.code === 'ENOENT' ? 'no such file' : 'cannot access'}: ${e.path}\n`);
    return EXIT_USER;
  }
  process.stderr.write(`dormant: internal error: ${e?.message ?? String(err)}\n`);
  if (process.env.DORMANT_DEBUG) process.stderr.write(`${e?.stack}\n`);
  return EXIT_INTERNAL;
}
