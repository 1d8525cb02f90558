/**
 * Pure builders for multi-part replies: the chunks of a structured READ
 * (data runs as OFFSET_DATA, zero runs as OFFSET_HOLE) and the descriptors
 * of a BLOCK_STATUS reply. No I/O; the transmission loop writes the result.
 */
import type { Extent } from '../blockstore/index.js';
import * as C from './codec.js';
import * as P from './protocol.js';

/** Granularity of hole detection in READ replies: the store's block. */
export const HOLE_GRANULE = P.PREFERRED_BLOCK_SIZE;
/** Most descriptors one BLOCK_STATUS chunk may carry. */
export const MAX_EXTENTS_PER_CHUNK = 1 << 20;

const ZERO_GRANULE = Buffer.alloc(HOLE_GRANULE);

function isZero(data: Buffer, start: number, end: number): boolean {
  return data.compare(ZERO_GRANULE, 0, end - start, start, end) === 0;
}

/**
 * The buffers of a structured READ reply for `data` read at `offset`.
 * Runs of all-zero granules (aligned to the export, not the request) become
 * OFFSET_HOLE chunks; the rest OFFSET_DATA chunks sharing `data` (no copy).
 * With `df` the whole range is one OFFSET_DATA chunk. The last chunk carries
 * DONE: the data is already in memory, so no error can follow.
 */
export function readReplyChunks(cookie: bigint, offset: number, data: Buffer, df: boolean): Buffer[] {
  const n = data.length;
  if (n === 0) return [C.encodeNoneChunk(cookie)];
  if (df) return [C.encodeOffsetDataHeader(cookie, P.NBD_REPLY_FLAG_DONE, offset, n), data];
  // Runs: [start, end, zero] in request-relative offsets.
  const runs: Array<[number, number, boolean]> = [];
  let pos = 0;
  while (pos < n) {
    const next = Math.min(n, pos + HOLE_GRANULE - ((offset + pos) % HOLE_GRANULE));
    const zero = isZero(data, pos, next);
    const last = runs[runs.length - 1];
    if (last !== undefined && last[2] === zero) last[1] = next;
    else runs.push([pos, next, zero]);
    pos = next;
  }
  const out: Buffer[] = [];
  runs.forEach(([s, e, zero], i) => {
    const flags = i === runs.length - 1 ? P.NBD_REPLY_FLAG_DONE : 0;
    if (zero) {
      out.push(C.encodeOffsetHole(cookie, flags, offset + s, e - s));
    } else {
      out.push(C.encodeOffsetDataHeader(cookie, flags, offset + s, e - s));
      out.push(s === 0 && e === n ? data : data.subarray(s, e));
    }
  });
  return out;
}

/** base:allocation status of one store extent. */
function statusOf(e: Extent): number {
  return e.hole ? P.NBD_STATE_HOLE | P.NBD_STATE_ZERO : 0;
}

/**
 * BLOCK_STATUS descriptors for [offset, offset+length) from the store's
 * extents: clipped to the request, consecutive from `offset`, nonzero
 * lengths, equal neighbours merged, gaps reported as data (status 0, always
 * safe). With `reqOne`, exactly one descriptor. Never empty for length > 0.
 */
export function blockStatusDescriptors(
  extents: readonly Extent[],
  offset: number,
  length: number,
  reqOne: boolean,
): C.BlockDescriptor[] {
  const end = offset + length;
  const out: C.BlockDescriptor[] = [];
  let pos = offset;
  const add = (len: number, status: number): void => {
    const last = out[out.length - 1];
    if (last !== undefined && last.status === status) last.length += len;
    else out.push({ length: len, status });
    pos += len;
  };
  const sorted = [...extents].sort((a, b) => a.offset - b.offset);
  for (const e of sorted) {
    if (pos >= end || out.length >= MAX_EXTENTS_PER_CHUNK) break;
    const s = Math.max(e.offset, pos);
    const t = Math.min(e.offset + e.length, end);
    if (t <= s) continue;
    if (s > pos) add(s - pos, 0);
    add(t - s, statusOf(e));
  }
  if (pos < end && out.length < MAX_EXTENTS_PER_CHUNK) add(end - pos, 0);
  if (out.length > MAX_EXTENTS_PER_CHUNK) out.length = MAX_EXTENTS_PER_CHUNK;
  if (reqOne) out.length = Math.min(out.length, 1);
  return out;
}
