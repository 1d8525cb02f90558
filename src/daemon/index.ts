/**
 * The host daemon: composes store + NBD server + control socket + FUSE view
 * + VM runner + pager, and stops them in order.
 */
export { startDaemon, NBD_SOCKET_NAME, type Daemon, type DaemonOptions } from './daemon.js';
export { parseDuration } from './scrub-schedule.js';
export { createLog, parseLogLevel, parseLogFormat, LOG_FORMATS, type LogFormat, type LogOptions } from './log.js';
