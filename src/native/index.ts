/**
 * The native addon (native/, built by scripts/setup.sh). For the pager:
 * pidfds, process_madvise, page residency of another process (pagemap) and
 * of a file (mincore, cachestat), per-page XXH3-128 hashes. For the block
 * store's data path: reads that never wait for the disk (preadCached),
 * batch hashing / checking of 4096-byte blocks, and the write-back's
 * renaming of a run of rewritten chunks (rehashRun). This is the only module
 * that loads the .node file; everything else imports from here.
 *
 * Threading rule: anything that may enter the kernel's reclaim or fault path
 * for a file this daemon serves through FUSE (process_madvise, mmap +
 * mincore of a memory file) runs on the libuv pool and returns a Promise:
 * blocking the JS thread there could deadlock. mappingResidency reads
 * /proc/PID/pagemap, which takes the target's mmap_lock (held by a QEMU
 * thread that may be waiting for a fault the daemon serves): it stays
 * synchronous, and the daemon calls it only from the memory agent process.
 * The store's calls (mapFile, preadCached, block hashing) only touch segment
 * files on a real file system, and rehashRun only memory of its arguments:
 * they stay synchronous.
 *
 * Errors from system calls and out-of-range arguments are NativeError (code
 * = errno name); wrong JS types are TypeError.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** An errno name, as set on NativeError.code. */
export type NativeErrno = 'EPERM' | 'ESRCH' | 'EINVAL' | 'ENOSYS' | 'ENOMEM' | 'EFAULT' | 'EBADF' | 'EACCES' | 'EIO' | string;

/** A failed system call (or an argument the addon refused with EINVAL). */
export class NativeError extends Error {
  readonly code: NativeErrno;
  readonly errno: number;
  readonly syscall: string;

  constructor(message: string, code: NativeErrno, errno: number, syscall: string) {
    super(message);
    this.name = 'NativeError';
    this.code = code;
    this.errno = errno;
    this.syscall = syscall;
  }
}

/**
 * A FUSE request as native/src/fuse.cc hands it over (on the JS thread):
 * its op (FUSE_OP), the request to answer exactly once with a fuseReply*
 * (a number), the inode (the parent for LOOKUP and REFUSE), two numbers
 * (READ/WRITE/READDIR: offset and size; SETATTR: the FUSE_SET_ATTR_* bits
 * and the new size; OPEN: the open flags; FSYNC: datasync; REFUSE of a
 * rename: the new parent) and a name (LOOKUP, REFUSE) or a WRITE's payload
 * (a Buffer of its own). op ENDED (req 0): the file system was unmounted
 * from outside. Must not throw.
 */
export type FuseHandler = (op: number, req: number, ino: number, a: number, b: number, extra: string | Buffer | undefined) => void;

/** The op codes of FuseHandler (native/src/fuse.cc keeps the same table). */
export const FUSE_OP = {
  ENDED: -1, LOOKUP: 1, GETATTR: 2, SETATTR: 3, OPEN: 4, READ: 5, WRITE: 6, RELEASE: 7, FSYNC: 8, READDIR: 9,
  STATFS: 10, REFUSE: 11,
} as const;

/** fuseReplyAttr's layout: one Float64Array of these fields, in this order. */
export const FUSE_ATTR_FIELDS = ['ino', 'mode', 'nlink', 'uid', 'gid', 'size', 'blocks', 'blksize', 'atimeMs', 'mtimeMs', 'ctimeMs'] as const;

/** Advice for processMadvise: MADV_PAGEOUT, MADV_COLD, MADV_WILLNEED. */
export type Advice = 'pageout' | 'cold' | 'willneed';

/** A byte range in the target process's address space. */
export interface Range { addr: number; length: number }

/** Per-page residency: bitmap has one byte per page, 1 when the page is in RAM. */
export interface MappingResidency { present: number; total: number; bitmap: Uint8Array }

/** Per-page XXH3-128 (16 bytes each, xxhash-addon's byte order) and all-zero flags. */
export interface PageHashes { hashes: Buffer; zero: Uint8Array; pages: number }

interface Addon {
  fuseMount(mountpoint: string, options: string, handler: FuseHandler): number;
  fuseStop(session: number): void;
  fuseInFlight(session: number): number;
  fuseDestroy(session: number): void;
  fuseReplyErr(req: number, errno: number): number;
  fuseReplyBuf(req: number, data: Uint8Array, length: number): number;
  fuseReplyWrite(req: number, count: number): number;
  fuseReplyOpen(req: number, fh: number): number;
  fuseReplyAttr(req: number, attr: Float64Array, timeout: number): number;
  fuseReplyEntry(req: number, attr: Float64Array, attrTimeout: number, entryTimeout: number): number;
  fuseReplyStatfs(req: number, values: Float64Array): number;
  fuseReplyDir(req: number, size: number, offset: number, names: string[], inos: number[], modes: number[]): number;
  fuseReplyFile(req: number, fd: number, position: number, length: number, hashes: Uint8Array, done: (r: number) => void): void;
  pidfdOpen(pid: number): number;
  processMadvise(pidfd: number, ranges: Range[], advice: Advice): Promise<number>;
  mappingResidency(pid: number, addr: number, length: number): MappingResidency;
  fileResidency(fd: number, offset: number, length: number): Promise<MappingResidency>;
  fileCached(fd: number, offset: number, length: number): Promise<MappingResidency>;
  fileAdvise(fd: number, offset: number, length: number, advice: string): Promise<void>;
  setCloexec(fd: number): void;
  setThreadIdle(tid: number, idle: boolean): void;
  hashPages(data: Uint8Array, pageSize?: number): PageHashes;
  hashPagesAsync(data: Uint8Array, pageSize?: number): Promise<PageHashes>;
  mapFile(fd: number, length: number, writable?: boolean): ArrayBuffer;
  writeMapped(ab: ArrayBuffer, position: number, src: Uint8Array, srcOffset: number, length: number): void;
  writableView(ab: ArrayBuffer): ArrayBuffer;
  allocateRange(fd: number, position: number, length: number): void;
  populateMapped(twin: ArrayBuffer, position: number, length: number): Promise<number>;
  unmapFile(ab: ArrayBuffer): void;
  chargeMapping(ab: ArrayBuffer): void;
  setSendBuffer(fd: number, bytes: number): number;
  notifySocket(path: string, message: string): void;
  sendFileRange(socketFd: number, head: Uint8Array, fileFd: number, position: number, length: number): number;
  recvStream(socketFd: number, size: number, dest: Uint8Array, hashes: Uint8Array, zero: Uint8Array, from: number,
    onEvent: (slot: number, header: Buffer | null) => void,
    onEnd: (err: Error | null, end?: RecvStreamEnd) => void): RecvStream;
  preadCached(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number;
  hashBlocks(data: Uint8Array, hashes: Uint8Array, zero: Uint8Array): number;
  verifyBlocks(data: Uint8Array, hashes: Uint8Array, at: number): number;
  gatherBlocks(sources: ArrayBuffer[], sizes: Float64Array, source: Int32Array, position: Float64Array, n: number,
    out: Uint8Array, outOffset: number, hashes: Uint8Array): number;
  rehashRun(slots: Float64Array, mask: number, words: Uint32Array | null, fmask: number, pageHashes: Uint8Array,
    pageFlags: Uint8Array, j0: number, id0: number, count: number, newHashes: Uint8Array, at: number): number;
  addRun(slots: Float64Array, mask: number, words: Uint32Array | null, fmask: number, pageHashes: Uint8Array,
    pageFlags: Uint8Array, pageSegments: Uint32Array, pageSlots: Uint32Array, j0: number, id0: number, count: number,
    newHashes: Uint8Array, at: number, segment: number, slot0: number): number;
  PAGE_SIZE: number;
  XXH3_ISA: string;
}

const ADDON_PATH = path.join(path.dirname(fileURLToPath(import.meta.url)), '../../native/build/Release/dormant_native.node');

function loadAddon(): Addon {
  try {
    return createRequire(import.meta.url)(ADDON_PATH) as Addon;
  } catch (e) {
    throw new Error(`cannot load the native addon ${ADDON_PATH} (${(e as Error).message}); run \`npm run setup\` to build it`);
  }
}

const addon = loadAddon();

/** The system page size (sysconf(_SC_PAGESIZE)). */
export const PAGE_SIZE: number = addon.PAGE_SIZE;

/** The instruction set XXH3 runs with here ('avx512', 'avx2', 'sse2'; DORMANT_XXH3 may force a narrower one). */
export const XXH3_ISA: string = addon.XXH3_ISA;

// The addon throws plain Errors carrying errno and syscall; give them their type.
function retype(e: unknown): unknown {
  if (e instanceof Error && !(e instanceof NativeError)) {
    const f = e as Error & { code?: unknown; errno?: unknown; syscall?: unknown };
    if (typeof f.code === 'string' && typeof f.errno === 'number' && typeof f.syscall === 'string') {
      const n = new NativeError(f.message, f.code, f.errno, f.syscall);
      n.stack = f.stack?.replace(/^Error:/, 'NativeError:');
      return n;
    }
  }
  return e;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (e) {
    throw retype(e);
  }
}

async function callAsync<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (e) {
    throw retype(e);
  }
}

/** Sets FD_CLOEXEC on descriptor `fd` of this process (EBADF if it is not open). */
export function setCloexec(fd: number): void {
  call(() => addon.setCloexec(fd));
}

/**
 * Puts thread `tid` (an entry of /proc/PID/task) under SCHED_IDLE (it runs
 * only when no other thread wants the CPU), or back under SCHED_OTHER.
 */
export function setThreadIdle(tid: number, idle: boolean): void {
  call(() => addon.setThreadIdle(tid, idle));
}

/** Sends `message` as one datagram to the Unix socket `path` ('@': abstract), from this process (systemd's NOTIFY_SOCKET). */
export function notifySocket(path: string, message: string): void {
  call(() => addon.notifySocket(path, message));
}

/** Opens a pidfd for pid (the caller closes it with fs.closeSync). */
export function pidfdOpen(pid: number): number {
  return call(() => addon.pidfdOpen(pid));
}

/**
 * Advises ranges of the process behind pidfd, on the libuv pool; resolves
 * with the bytes advised (IOV_MAX ranges a call, resuming after partial
 * returns). Zero-length ranges are skipped; no ranges resolve with 0.
 */
export function processMadvise(pidfd: number, ranges: Range[], advice: Advice): Promise<number> {
  return callAsync(() => addon.processMadvise(pidfd, ranges, advice));
}

/** Which pages of [addr, addr+length) of pid are in RAM, from /proc/PID/pagemap (bit 63). */
export function mappingResidency(pid: number, addr: number, length: number): MappingResidency {
  return call(() => addon.mappingResidency(pid, addr, length));
}

/**
 * Which pages of fd's [offset, offset+length) are in the page cache: mmap in
 * this process + mincore, on the libuv pool, never touching the bytes. Not
 * for a FUSE file this process serves: unmapping it writes the file's dirty
 * pages back under our mmap_lock (use fileCached).
 */
export function fileResidency(fd: number, offset: number, length: number): Promise<MappingResidency> {
  return callAsync(() => addon.fileResidency(fd, offset, length));
}

/**
 * posix_fadvise on the libuv pool: 'dontneed' drops the clean page-cache
 * pages of the range that no process maps (after starting write-back of the
 * dirty ones); 'willneed' starts read-ahead. length 0 = to the end.
 */
export function fileAdvise(fd: number, offset: number, length: number, advice: 'dontneed' | 'willneed'): Promise<void> {
  return callAsync(() => addon.fileAdvise(fd, offset, length, advice));
}

/** fileResidency from cachestat(2), with no mapping: safe on the FUSE files this process serves. */
export function fileCached(fd: number, offset: number, length: number): Promise<MappingResidency> {
  return callAsync(() => addon.fileCached(fd, offset, length));
}

/** XXH3-128 and zero flag of each pageSize-byte page of data (length a multiple of pageSize). */
export function hashPages(data: Buffer | Uint8Array, pageSize?: number): PageHashes {
  return call(() => addon.hashPages(data, pageSize));
}

/**
 * hashPages on the libuv pool, for big buffers. The addon keeps data alive
 * until the promise settles; do not transfer (detach) its ArrayBuffer
 * meanwhile, and writes during the call give unspecified hashes.
 */
export function hashPagesAsync(data: Buffer | Uint8Array, pageSize?: number): Promise<PageHashes> {
  return callAsync(() => addon.hashPagesAsync(data, pageSize));
}

/**
 * A read-only shared mapping of the first `length` bytes of fd (the file
 * may be shorter: bytes past its end must not be read, the process would
 * get SIGBUS). Released by unmapFile, or when collected. `writable` also
 * makes a writable twin, for writeMapped and (as JS sees it) writableView
 * (fd open for writing); chargeMapping drops the twin.
 */
export function mapFile(fd: number, length: number, writable = false): ArrayBuffer {
  return call(() => addon.mapFile(fd, length, writable));
}

/**
 * Copies `length` bytes of `src` from `srcOffset` into the file mapped by
 * `ab` (a mapFile buffer made `writable`) at `position`, through its
 * writable twin: a memcpy into the page cache. Only where the file has
 * bytes already and the file system overwrites them in place (else the
 * process gets SIGBUS); the bytes reach the disk with the next fdatasync.
 */
export function writeMapped(ab: ArrayBuffer, position: number, src: Uint8Array, srcOffset: number, length: number): void {
  call(() => addon.writeMapped(ab, position, src, srcOffset, length));
}

/**
 * The writable twin of `ab` (a mapFile buffer made `writable`) as an
 * ArrayBuffer JS can write: for socket reads straight into the page cache.
 * Only slots the caller reserved may be written, only bytes the file has
 * and whose blocks are allocated (else SIGBUS); it is detached (length 0)
 * once the twin goes with unmapFile or chargeMapping.
 */
export function writableView(ab: ArrayBuffer): ArrayBuffer {
  return call(() => addon.writableView(ab));
}

/**
 * Faults in pages [position, +length) of a writable twin on libuv's pool
 * (MADV_POPULATE_WRITE): resolves with 0, or the errno the kernel gave
 * (EINVAL before Linux 5.14: nothing done). The range's blocks must be
 * allocated (allocateRange), and the twin must stay mapped until it settles.
 */
export function populateMapped(twin: ArrayBuffer, position: number, length: number): Promise<number> {
  return callAsync(() => addon.populateMapped(twin, position, length));
}

/** fallocate(fd, 0, position, length): the range's blocks are allocated now (NativeError ENOSPC when they cannot be). */
export function allocateRange(fd: number, position: number, length: number): void {
  call(() => addon.allocateRange(fd, position, length));
}

/** Unmaps a mapFile buffer now; every view of it then has length 0. Idempotent. */
export function unmapFile(ab: ArrayBuffer): void {
  addon.unmapFile(ab);
}

/**
 * Counts a mapFile buffer as external memory until it is collected, so the
 * garbage collector soon releases a mapping that views keep alive (and the
 * deleted file's disk space it pins). Idempotent.
 */
export function chargeMapping(ab: ArrayBuffer): void {
  addon.chargeMapping(ab);
}

/**
 * Reads `length` bytes at `position` of fd into buffer at `offset` only if
 * they are all in the page cache (preadv2 RWF_NOWAIT): returns the bytes
 * read (fewer at end of file), or -1 when the read would wait for the disk.
 * Synchronous and cheap: for the store's read path on the JS thread.
 */
export function preadCached(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number {
  return call(() => addon.preadCached(fd, buffer, offset, length, position));
}

/**
 * For each 4096-byte block i of data (length a multiple of 4096): zero[i] =
 * 1 when it is all zeroes, else 0 and its XXH3-128 (the bytes of
 * xxhash-addon's XXHash128.hash) written to hashes[i*16, +16). Returns the
 * number of zero blocks.
 */
export function hashBlocks(data: Uint8Array, hashes: Uint8Array, zero: Uint8Array): number {
  return call(() => addon.hashBlocks(data, hashes, zero));
}

/** -1 when each 4096-byte block i of data hashes to hashes[at + i*16, +16); else the first i that does not. */
export function verifyBlocks(data: Uint8Array, hashes: Uint8Array, at: number): number {
  return call(() => addon.verifyBlocks(data, hashes, at));
}

/**
 * Reads `n` scattered 4096-byte blocks into `out` from `outOffset` and
 * checks them, in one call. Block i: `source[i]` >= 0 copies it from the
 * mapFile buffer `sources[source[i]]` at byte `position[i]`, which must lie
 * below `sizes[source[i]]` (the bytes the file is known to have); -1 is a
 * hole (zero-filled, not checked); -2 is already in `out` (checked only).
 * Every block but holes is checked against hashes[i*16, +16). Returns -1,
 * the first block i that does not match its hash, or -2 - i when block i
 * lies past its source's size (nothing copied from there on).
 */
export function gatherBlocks(sources: ArrayBuffer[], sizes: Float64Array, source: Int32Array, position: Float64Array, n: number,
  out: Uint8Array, outOffset: number, hashes: Uint8Array): number {
  return call(() => addon.gatherBlocks(sources, sizes, source, position, n, out, outOffset, hashes));
}

/**
 * Sets SO_SNDBUF of socket fd; returns the size the kernel now reports
 * (Linux doubles the request and caps it at net.core.wmem_max).
 */
export function setSendBuffer(fd: number, bytes: number): number {
  return call(() => addon.setSendBuffer(fd, bytes));
}

/**
 * Sends `head`, then `length` bytes of file `fileFd` from `position`, on
 * non-blocking socket `socketFd` (sendfile: the file's pages go to the
 * socket by reference, no copy here). Returns the bytes sent, head
 * included: fewer than all when the socket's buffer filled (the caller
 * sends the rest) or the file ended. NativeError for a failed socket
 * (EPIPE, ECONNRESET...). The file's bytes must not change until the peer
 * has read them: only for data that is never rewritten in place.
 */
export function sendFileRange(socketFd: number, head: Uint8Array, fileFd: number, position: number, length: number): number {
  return call(() => addon.sendFileRange(socketFd, head, fileFd, position, length));
}

/** A stream of WRITE payloads being received on libuv's pool (recvStream). */
export interface RecvStream {
  /**
   * Offers the landing for a later payload (slots 1, 2, ... in the order
   * offered): false once the job is over, and then the caller keeps it.
   */
  offer(dest: Uint8Array, hashes: Uint8Array, zero: Uint8Array): boolean;
  /** Asks the job to take on no further payload (it ends within ~20 ms). */
  stop(): void;
}

/** How a recvStream job ended. */
export interface RecvStreamEnd {
  /** A slot left partly filled (a stall, or the stream ended), or -1. */
  stalledSlot: number;
  /** Bytes of that slot filled, from its start. */
  filled: number;
  /** Bytes of the next request read but not taken on: they come before anything else the socket gives. */
  leftover: Buffer;
}

/**
 * Receives big WRITE payloads from non-blocking socket `socketFd` on
 * libuv's pool into landing buffers, hashing each 4 KiB block into
 * `hashes`/`zero` as `hashBlocks` does (native/src/recv.cc). Slot 0 is
 * `dest` from byte `from` on (what came before is there already); after
 * each payload the job reads the next request's header, and when that is a
 * WRITE (FUA allowed) of exactly the next offered landing's length, at a
 * block-aligned offset within `size`, it receives that one into it too.
 * On this thread, in order: `onEvent(k, null)` when slot k is whole,
 * `onEvent(k, header)` when the job took on the request (its 28-byte
 * header) whose payload slot k receives, and last `onEnd`. The job stops at
 * a stall of ~20 ms, after ~1 s, at `stop()`, or at the end of the stream.
 * Until `onEnd` ran, the caller must not read the socket nor touch (or
 * transfer) the arrays it passed; the descriptor may be closed meanwhile
 * (the job reads a duplicate).
 */
export function recvStream(socketFd: number, size: number, dest: Uint8Array, hashes: Uint8Array, zero: Uint8Array, from: number,
  onEvent: (slot: number, header: Buffer | null) => void,
  onEnd: (err: Error | null, end?: RecvStreamEnd) => void): RecvStream {
  return call(() => addon.recvStream(socketFd, size, dest, hashes, zero, from, onEvent,
    (err, end) => onEnd(err === null || err === undefined ? null : (retype(err) as Error), end)));
}

/**
 * The write-back's bookkeeping for a run of new chunks in consecutive landed
 * slots (native/src/rehash.cc addRun): while the filter and the prefix
 * table say no chunk has the hash, ids id0.. get hash, place and LIVE |
 * UNIQUE in the chunk page and their prefixes filed; returns how many.
 * `slots`/`mask` are a prefix table in the layout of
 * src/blockstore/prefix-table.ts, with room for `count` more entries.
 */
export function addRun(slots: Float64Array, mask: number, words: Uint32Array | null, fmask: number, pageHashes: Uint8Array,
  pageFlags: Uint8Array, pageSegments: Uint32Array, pageSlots: Uint32Array, j0: number, id0: number, count: number,
  newHashes: Uint8Array, at: number, segment: number, slot0: number): number {
  return call(() => addon.addRun(slots, mask, words, fmask, pageHashes, pageFlags, pageSegments, pageSlots, j0, id0, count,
    newHashes, at, segment, slot0));
}

/**
 * The write-back's in-place rewrite of a run of new chunks, in one call (see
 * native/src/rehash.cc): for ids id0 + k (entries j0 + k of a chunk page),
 * each taking the hash newHashes[at + 16k, +16), in order, while that hash
 * is certainly not a committed chunk's (filter `words`/`fmask`; null: not
 * built, nothing is done) and no new chunk has its prefix (prefix table
 * `slots`/`mask`, in the layout of src/blockstore/prefix-table.ts): moves
 * the chunk to its new prefix, stores the hash in pageHashes and sets
 * pageFlags to LIVE | UNIQUE. Returns how many it did.
 */
export function rehashRun(slots: Float64Array, mask: number, words: Uint32Array | null, fmask: number,
  pageHashes: Uint8Array, pageFlags: Uint8Array, j0: number, id0: number, count: number, newHashes: Uint8Array, at: number): number {
  return call(() => addon.rehashRun(slots, mask, words, fmask, pageHashes, pageFlags, j0, id0, count, newHashes, at));
}

/**
 * Mounts a FUSE file system (libfuse3 low-level API) on `mountpoint` with
 * the `-o` options (e.g. `fsname=x,subtype=y,allow_other`); its requests
 * reach `handler` on the JS thread, several in flight at once. Returns the
 * session. Threads and lifetime: native/src/fuse.cc.
 */
export function fuseMount(mountpoint: string, options: string, handler: FuseHandler): number {
  return call(() => addon.fuseMount(mountpoint, options, handler));
}

/** Stops reading requests (the session's threads are joined); answer what is held, then fuseDestroy. */
export function fuseStop(session: number): void {
  call(() => addon.fuseStop(session));
}

/** Requests handed to the handler and not answered yet. */
export function fuseInFlight(session: number): number {
  return call(() => addon.fuseInFlight(session));
}

/** Closes the session's device (what the kernel still queues fails) and lazily unmounts; after fuseStop. */
export function fuseDestroy(session: number): void {
  call(() => addon.fuseDestroy(session));
}

/** Answers a FUSE request with an errno (0: success with no data). */
export function fuseReplyErr(req: number, errno: number): void {
  call(() => addon.fuseReplyErr(req, errno));
}

/** Answers a READ with the first `length` bytes of `data` (copied to the kernel). */
export function fuseReplyBuf(req: number, data: Uint8Array, length: number): void {
  call(() => addon.fuseReplyBuf(req, data, length));
}

/** Answers a WRITE with the bytes written. */
export function fuseReplyWrite(req: number, count: number): void {
  call(() => addon.fuseReplyWrite(req, count));
}

/** Answers an OPEN: cached pages dropped at open (no keep_cache), not direct I/O (shared writable mmap works). */
export function fuseReplyOpen(req: number, fh: number): void {
  call(() => addon.fuseReplyOpen(req, fh));
}

/** Answers a GETATTR or SETATTR (attr: FUSE_ATTR_FIELDS), cached by the kernel for `timeout` seconds. */
export function fuseReplyAttr(req: number, attr: Float64Array, timeout: number): void {
  call(() => addon.fuseReplyAttr(req, attr, timeout));
}

/** Answers a LOOKUP with the inode attr[0] and its attributes. */
export function fuseReplyEntry(req: number, attr: Float64Array, attrTimeout: number, entryTimeout: number): void {
  call(() => addon.fuseReplyEntry(req, attr, attrTimeout, entryTimeout));
}

/** Answers a STATFS: [bsize, frsize, blocks, bfree, bavail, files, ffree, favail, namemax]. */
export function fuseReplyStatfs(req: number, values: Float64Array): void {
  call(() => addon.fuseReplyStatfs(req, values));
}

/** Answers a READDIR with the entries from index `offset` on that fit in `size` bytes. */
export function fuseReplyDir(req: number, size: number, offset: number, names: string[], inos: number[], modes: number[]): void {
  call(() => addon.fuseReplyDir(req, size, offset, names, inos, modes));
}

/**
 * Answers a READ from a file, off the JS thread: on libuv's pool, reads
 * `length` bytes (a multiple of 4096) of `fd` from `position`, checks each
 * 4096-byte block against hashes[i*16, +16) (XXH3-128) and answers. `done`
 * (on the JS thread) gets -1 when it answered, else nothing was sent: i >= 0
 * block i does not match its hash; -2 the file is shorter; -3 - errno a
 * read error. The caller keeps `fd` open until `done`.
 */
export function fuseReplyFile(req: number, fd: number, position: number, length: number, hashes: Uint8Array,
  done: (r: number) => void): void {
  call(() => addon.fuseReplyFile(req, fd, position, length, hashes, done));
}
