/**
 * One segment file on disk: its name, its header, and the system calls that
 * write and sync it. No state: the files' state lives in segments.ts,
 * segment-maps.ts, append-segment.ts, pool-writes.ts and segment-landings.ts.
 *
 * On-disk layout of `segments/XXXXXXXX.seg` (the id in hex; format
 * version 1):
 *   [0, 4096)   header: [0] magic "DORMSEG\n" [8] u32 format version
 *               [12] u32 segment id [16] u64 created (ms) [32] xxh3-128 of
 *               bytes [0, 32) — the header's checksum; rest zero
 *   [4096 + slot * 4096, +4096)  one chunk per slot, raw 4096 bytes
 * A chunk's checksum is its name (the hash in the index), verified by the
 * store on every read. The segment being appended to may be longer than
 * its last slot (sized ahead, sparse; see append-segment.ts).
 */
import fs from 'node:fs';
import path from 'node:path';
import { BLOCK_SIZE, FORMAT_VERSION, SEGMENT_HEADER_SIZE, SEGMENT_MAGIC } from './constants.js';
import { DormantError } from './errors.js';
import type { HashFunction } from './hash.js';

/**
 * File systems that overwrite a file's written blocks in place, so that a
 * store through a writable mapping into bytes written before never needs
 * new space (elsewhere a full disk would be SIGBUS, not ENOSPC): ext2/3/4,
 * XFS, tmpfs.
 */
const OVERWRITE_IN_PLACE_FS = new Set([0xef53, 0x58465342, 0x01021994]);
/** Below this much free space, rewrites go back to pwrite (belt and braces: ENOSPC stays an error). */
const MIN_FREE_FOR_MAPPED_WRITES = 1024 * 1024 * 1024;

/** Path of segment `id` inside `dir`. */
export function segmentPath(dir: string, id: number): string {
  return path.join(dir, `${id.toString(16).padStart(8, '0')}.seg`);
}

/** Byte offset of `slot` in a segment file. */
export function slotOffset(slot: number): number {
  return SEGMENT_HEADER_SIZE + slot * BLOCK_SIZE;
}

/** Ids of the segment files in `dir`, ascending. */
export function listSegments(dir: string): number[] {
  return fs.readdirSync(dir)
    .filter((f) => /^[0-9a-f]{8}\.seg$/.test(f))
    .map((f) => parseInt(f.slice(0, 8), 16))
    .sort((a, b) => a - b);
}

/** Size in bytes of segment `id` in `dir` (0 if missing). */
export function segmentFileSize(dir: string, id: number): number {
  try { return fs.statSync(segmentPath(dir, id)).size; } catch { return 0; }
}

/** The header of a new segment `id`. */
export function encodeHeader(id: number, hash: HashFunction): Buffer {
  const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
  h.write(SEGMENT_MAGIC, 0, 'latin1');
  h.writeUInt32BE(FORMAT_VERSION, 8);
  h.writeUInt32BE(id, 12);
  h.writeBigUInt64BE(BigInt(Date.now()), 16);
  hash(h.subarray(0, 32)).copy(h, 32);
  return h;
}

/** Checks the header of segment `id` open as `fd` (EIO naming what is wrong). */
export function checkHeader(fd: number, id: number, hash: HashFunction): void {
  const h = Buffer.alloc(SEGMENT_HEADER_SIZE);
  const n = fs.readSync(fd, h, 0, SEGMENT_HEADER_SIZE, 0);
  const bad = (why: string) => new DormantError('EIO', `segment ${id} has a bad header: ${why}`);
  if (n !== SEGMENT_HEADER_SIZE) throw bad('short file');
  if (h.toString('latin1', 0, 8) !== SEGMENT_MAGIC) throw bad('wrong magic');
  if (!hash(h.subarray(0, 32)).equals(h.subarray(32, 48))) throw bad('checksum mismatch');
  const version = h.readUInt32BE(8);
  if (version !== FORMAT_VERSION) throw bad(`format version ${version}, expected ${FORMAT_VERSION}`);
  if (h.readUInt32BE(12) !== id) throw bad(`it names itself segment ${h.readUInt32BE(12)}`);
}

/**
 * True when rewrites may go through writable mappings in `dir`: room left
 * on its file system, and (when `checkType`, done once) a file system that
 * overwrites in place.
 */
export function roomForMappedWrites(dir: string, checkType = false): boolean {
  try {
    const st = fs.statfsSync(dir);
    if (checkType && !OVERWRITE_IN_PLACE_FS.has(st.type)) return false;
    return st.bavail * st.bsize >= MIN_FREE_FOR_MAPPED_WRITES;
  } catch {
    return false;
  }
}

/**
 * A failed system call on a segment as a DormantError: ENOSPC (and EDQUOT)
 * keep their meaning, so a full disk reaches clients as ENOSPC; anything
 * else is EIO.
 */
export function segmentError(err: unknown, message: string): DormantError {
  if (err instanceof DormantError) return err;
  return new DormantError(isNoSpace(err) ? 'ENOSPC' : 'EIO', message, { cause: err });
}

/** True when `err` says the file system is full (ENOSPC, or EDQUOT: out of quota). */
export function isNoSpace(err: unknown): boolean {
  if (err instanceof DormantError) return err.code === 'ENOSPC';
  const code = (err as NodeJS.ErrnoException | null)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT';
}

/**
 * Runs `fn`; when it fails because the file system is full and `makeRoom()`
 * freed some (the store's space reserve), runs it once more. `fn` must be
 * safe to repeat (a pwrite of the same bytes at the same place).
 */
export function withRoom<T>(fn: () => T, makeRoom: () => boolean): T {
  try {
    return fn();
  } catch (err) {
    if (!isNoSpace(err) || !makeRoom()) throw err;
    return fn();
  }
}

/** pwrite of `bytes` from `src` at `pos`, resuming after short writes (system errors thrown as they are). */
export function writeFullySync(fd: number, src: Buffer, srcOffset: number, bytes: number, pos: number): void {
  let done = 0;
  while (done < bytes) done += fs.writeSync(fd, src, srcOffset + done, bytes - done, pos + done);
}

/** `writeFullySync` on libuv's pool. */
export async function writeFully(fd: number, src: Buffer, srcOffset: number, bytes: number, pos: number): Promise<void> {
  let done = 0;
  while (done < bytes) {
    done += await new Promise<number>((resolve, reject) => {
      fs.write(fd, src, srcOffset + done, bytes - done, pos + done, (err, n) => (err ? reject(err) : resolve(n)));
    });
  }
}

/** fdatasync on libuv's pool. */
export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => fs.fdatasync(fd, (err) => (err ? reject(err) : resolve())));
}

/** fsync of the file or directory at `p` (a directory: its entries are durable). */
export async function fsyncPath(p: string): Promise<void> {
  const fh = await fs.promises.open(p, 'r');
  try { await fh.sync(); } finally { await fh.close(); }
}
