/**
 * The global `-q` / `--quiet`: no progress bars and no informational lines
 * on stderr (image build steps; serve's and mount's info events: their log
 * level becomes warn unless --log-level says otherwise). Errors, warnings,
 * and what a command prints on stdout are not affected. Set once by
 * main.ts before the command's action runs.
 */

let quiet = false;

/** Records the global -q (main.ts, before each action). */
export function setQuiet(on: boolean): void {
  quiet = on;
}

/** True when -q was given. */
export function isQuiet(): boolean {
  return quiet;
}
