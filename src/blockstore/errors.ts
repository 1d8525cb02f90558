/**
 * The one error type of dormant.
 *
 * Every failure that crosses a module boundary is a DormantError with a
 * `code` (what kind of failure) and context fields (volume, offset, length).
 * Each front end maps codes to its own world in exactly one file:
 * src/cli/exit.ts (exit codes), src/nbd/errors.ts (NBD errno values), and so on.
 */

/** What went wrong, independent of the front end that reports it. */
export type ErrorCode =
  | 'ENOENT' // unknown volume, snapshot or VM
  | 'EEXIST' // name taken
  | 'EINVAL' // bad argument: size, name, range, alignment
  | 'ERANGE' // offset/length outside the volume
  | 'EROFS' // write to a snapshot / read-only export
  | 'EBUSY' // volume open, branches depend on it
  | 'ELOCKED' // store owned by another process
  | 'EACCES' // permission denied: the store directory, the control socket
  | 'ENOTINIT' // store not initialised
  | 'EFORMAT' // on-disk format unknown or damaged header
  | 'EIO' // data does not match its hash, unreadable segment
  | 'ENOSPC' // out of space
  | 'ECLOSED' // store or volume already closed
  | 'EREMOTE' // another host cannot be reached, refused the request or failed it
  | 'EINTERNAL'; // a bug: an invariant did not hold

/** Codes that are the user's to fix (CLI exit 1); everything else is exit 2. */
export const USER_ERROR_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  'ENOENT', 'EEXIST', 'EINVAL', 'ERANGE', 'EROFS', 'EBUSY', 'ELOCKED', 'EACCES', 'ENOTINIT', 'EFORMAT', 'EREMOTE',
]);

/** Context attached to an error; all optional. */
export interface ErrorContext {
  volume?: string;
  offset?: number;
  length?: number;
  path?: string;
  cause?: unknown;
}

/** The error type every module throws. `message` is one line, fit for a user. */
export class DormantError extends Error {
  readonly code: ErrorCode;
  readonly volume?: string;
  readonly offset?: number;
  readonly length?: number;
  readonly path?: string;

  constructor(code: ErrorCode, message: string, context: ErrorContext = {}) {
    super(message, context.cause === undefined ? undefined : { cause: context.cause });
    this.name = 'DormantError';
    this.code = code;
    this.volume = context.volume;
    this.offset = context.offset;
    this.length = context.length;
    this.path = context.path;
  }
}

/** True when `err` is a DormantError, optionally of one of the given codes. */
export function isDormantError(err: unknown, ...codes: ErrorCode[]): err is DormantError {
  return err instanceof DormantError && (codes.length === 0 || codes.includes(err.code));
}

/** Asserts an internal invariant; a failure is a bug (EINTERNAL). */
export function invariant(cond: unknown, what: string): asserts cond {
  if (!cond) throw new DormantError('EINTERNAL', `internal invariant failed: ${what}`);
}
