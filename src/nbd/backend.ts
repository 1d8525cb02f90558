/**
 * What the NBD server needs from storage: a list of exports, a description
 * of one, and an open handle to serve. Every method is required, so each
 * backend decides each one. `src/nbd/store-backend.ts` implements it over
 * the block store; tests may implement it over anything.
 */
import type { LogFields, VolumeHandle } from '../blockstore/index.js';

/** One export as NBD_OPT_LIST / NBD_OPT_INFO show it. */
export interface ExportInfo {
  /** Export name: `vol` (writable) or `vol@snap` (read-only). */
  name: string;
  /** Human-readable description (NBD_INFO_DESCRIPTION, LIST). */
  description: string;
  /** Size in bytes. */
  size: number;
  readOnly: boolean;
}

/** The storage side of the NBD server. */
export interface NbdBackend {
  /** Every export, for NBD_OPT_LIST. */
  listExports(): Promise<ExportInfo[]>;
  /** One export by name, for NBD_OPT_INFO; null when unknown. */
  describeExport(name: string): Promise<ExportInfo | null>;
  /**
   * Opens an export for transmission; null when unknown. The caller closes
   * the handle when the connection ends. Handles of one export must share
   * durability: a flush on one covers writes made through the others
   * (the server advertises NBD_FLAG_CAN_MULTI_CONN).
   */
  openExport(name: string): Promise<VolumeHandle | null>;
}

/**
 * Where the server writes its log lines (one per connection event), each
 * with fields naming what it is about (conn, client, export, counters).
 */
export interface NbdLogger {
  /** Normal events (connect, open, disconnect); warnings carry `level: 'warn'` in their fields. */
  info(line: string, fields?: LogFields): void;
  /** Unexpected failures; `err` is the original error. */
  error(line: string, err?: unknown, fields?: LogFields): void;
}

/** Logs to stderr. */
export const consoleLogger: NbdLogger = {
  info: (line) => console.error(line),
  error: (line, err) => console.error(line, err ?? ''),
};

/** Drops everything (tests, benchmarks). */
export const silentLogger: NbdLogger = { info: () => {}, error: () => {} };
