/**
 * Human output: sizes, tables, durations. JSON output never goes through here.
 */
import { DormantError, MAX_VOLUME_SIZE } from '../blockstore/index.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
const SUFFIX: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40, P: 2 ** 50 };

/** 1536 -> "1.5 KiB". */
export function formatBytes(n: number): string {
  let i = 0;
  let v = n;
  while (Math.abs(v) >= (i === 0 ? 1024 : 1023.5) && i < UNITS.length - 1) { v /= 1024; i++; } // never "1024 KiB"
  return i === 0 ? `${v} B` : `${v.toFixed(v >= 99.95 ? 0 : 1)} ${UNITS[i]}`;
}

/** The largest size of a volume, for `parseSize`. */
export const VOLUME_SIZE_LIMIT = { bytes: MAX_VOLUME_SIZE, what: 'the 1 PiB limit of a volume' } as const;

/**
 * "64M", "1.5G", "4096", "2TiB" -> bytes (binary units); EINVAL otherwise,
 * naming `limit` when the size is beyond it.
 */
export function parseSize(text: string, limit?: { bytes: number; what: string }): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$/i.exec(text);
  if (!m) throw new DormantError('EINVAL', `bad size '${text}': use a number with an optional K, M, G, T or P suffix`);
  const bytes = Number(m[1]) * SUFFIX[m[2].toUpperCase()];
  if (limit && bytes > limit.bytes) throw new DormantError('EINVAL', `bad size '${text}': more than ${limit.what}`);
  if (!Number.isSafeInteger(bytes) || bytes <= 0) {
    throw new DormantError('EINVAL', `bad size '${text}': must be a whole number of bytes, at least 1`);
  }
  return bytes;
}

/** Left-aligned columns with a header row. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  return [line(header), ...rows.map(line)].join('\n');
}

/** Bytes per second as "123.4 MB/s" (decimal, like dd and fio). */
export function formatRate(bytes: number, seconds: number): string {
  if (seconds <= 0) return '-';
  return `${(bytes / seconds / 1e6).toFixed(1)} MB/s`;
}
