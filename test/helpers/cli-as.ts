/**
 * The real CLI run as someone else would run it: under another umask
 * (`sh -c 'umask 000; exec node bin/dormant ...'`), or as another user
 * (`setpriv` to nobody, uid and gid 65534, no groups).
 */
import { spawnSync } from 'node:child_process';
import { BIN, cliEnv, type CliResult } from './cli.js';

/** The uid and gid of user nobody. */
export const NOBODY = 65534;

/** Runs `dormant --store STORE ...args` with the given umask (octal string, e.g. '000'). */
export function dormantWithUmask(umask: string, store: string, args: string[]): CliResult {
  const quoted = [process.execPath, BIN, '--store', store, ...args].map((a) => `'${a.replace(/'/g, "'\\''")}'`).join(' ');
  const r = spawnSync('sh', ['-c', `umask ${umask}; exec ${quoted}`], { env: cliEnv(), encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs `dormant --store STORE ...args` as user nobody. */
export function dormantAsNobody(store: string, args: string[]): CliResult {
  const r = spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', process.execPath, BIN, '--store', store,
    ...args], { env: cliEnv({ HOME: '/tmp' }), encoding: 'utf8', timeout: 60_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Runs `sh -c script` as user nobody; stdout as bytes. */
export function shAsNobody(script: string): { status: number | null; stdout: Buffer; stderr: string } {
  const r = spawnSync('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'sh', '-c', script], { timeout: 30_000 });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}
