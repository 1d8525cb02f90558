/**
 * The log flags of the commands that keep running (`serve`, `mount`):
 * `--log-level` and `--log-format`, turned into the daemon's LogFn
 * (src/daemon/log.ts). The global `-q` lowers the default level to warn;
 * an explicit `--log-level` (flag or config file) wins over it.
 */
import type { Command } from 'commander';
import type { LogFn } from '../blockstore/index.js';
import { LOG_LEVELS } from '../blockstore/index.js';
import { createLog, parseLogFormat, parseLogLevel } from '../daemon/index.js';
import { isQuiet } from './quiet.js';

/** Adds --log-level and --log-format to `cmd`. */
export function addLogOptions(cmd: Command): Command {
  return cmd
    .option('--log-level <level>', `least severe events logged: ${LOG_LEVELS.join('|')} (default info; warn with -q)`)
    .option('--log-format <format>', 'text (a time and a human-readable line) or json (one object per line: time, level, msg, fields)', 'text');
}

/** The LogFn the flags of `cmd` ask for (EINVAL on a bad value). */
export function logFromOptions(cmd: Command): LogFn {
  const o = cmd.opts<{ logLevel?: string; logFormat: string }>();
  const level = o.logLevel === undefined ? (isQuiet() ? 'warn' : 'info') : parseLogLevel(o.logLevel);
  return createLog({ level, format: parseLogFormat(o.logFormat) });
}
