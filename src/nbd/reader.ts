/**
 * Large socket reads for plaintext connections.
 *
 * Node reads a socket 64 KiB at a time into a fresh buffer: a 1 MiB WRITE
 * arrives in sixteen reads, each a callback and an allocation, and the
 * writer waits on a small socket buffer while the server takes its time
 * between them. Here a connection reads with `onread` into slabs of
 * SLAB_BYTES: every read takes all that is there (up to the slab's free
 * space, at least MIN_READ), consecutive reads land back to back (the
 * receive queue merges them), and nothing is allocated per read.
 *
 * Big slabs come from one pool shared by all connections; a connection
 * keeps one while its reads are big and goes back to a small buffer of its
 * own (SMALL_BYTES) once they are small, so idle connections (most of
 * them, on a host of idle VMs) hold 64 KiB each. Bytes of a buffer are only
 * referenced by the receive queue (which runs in transient mode: `take`
 * copies), so a buffer is free again once the queue holds nothing in it.
 *
 * A big WRITE's payload need not pass through a slab: once its request has
 * been parsed, `DirectReads.into` makes the following reads land in the
 * payload's own buffer (only what the slab already held is copied), so the
 * kernel's copy is the only one.
 *
 * Node has no public way to read an accepted socket with `onread`: the
 * accepted socket's handle is wrapped in a new Socket that has it (the
 * undocumented `handle` option of net.Socket, which Node uses itself for
 * accepted connections), and the server's connection accounting moves to
 * it. Anything unexpected falls back to ordinary reads.
 */
import net from 'node:net';
import type { ByteQueue } from './bytequeue.js';

/** Big slabs (shared pool), for connections moving data. */
const SLAB_BYTES = 1024 * 1024;
/** Each connection's own small read buffer, while its reads are small. */
const SMALL_BYTES = 64 * 1024;
/** A read is offered at least this much room in a big slab (a Unix socket buffers ~208 KiB by default)... */
const MIN_READ = 256 * 1024;
/** ...and at least this much in the small buffer. */
const MIN_SMALL_READ = 16 * 1024;
/** Free big slabs kept for reuse. */
const POOL_MAX = 16;

const pool: Buffer[] = [];
const takeSlab = (): Buffer => pool.pop() ?? Buffer.allocUnsafe(SLAB_BYTES);
const giveSlab = (b: Buffer): void => { if (pool.length < POOL_MAX) pool.push(b); };

interface AcceptedInternals { _handle?: object | null; _server?: unknown; server?: unknown }

/** Reads into a caller's buffer instead of the receive queue. */
export interface DirectReads {
  /**
   * The next `dest.length` bytes of the stream go into `dest`, then `done`
   * runs (from a read's callback). Call with the receive queue empty.
   */
  into(dest: Buffer, done: () => void): void;
  /**
   * Forgets the target set by `into`; its `done` never runs. A read into it
   * may still be under way: the caller must not reuse `dest` (drop it).
   */
  cancel(): void;
  /**
   * The next read takes at most `bytes` (a request header): when the next
   * request is likely a big WRITE too, its payload then lands straight in
   * its buffer instead of partly in a slab to be copied out (an extra small
   * read costs less than copying the ~200 KiB a socket buffer holds).
   */
  limitNext(bytes: number): void;
}

/**
 * A socket over `accepted`'s connection that passes every read to
 * `onBytes` (a view valid until the queue has consumed it; `onBytes` pushes
 * it to `queue`), or null when this Node cannot do it (then use `accepted`
 * as it is). `accepted` must not be used any more when a socket is
 * returned.
 *
 * Node asks for the buffer of the next read (`room`) right after each
 * read's callback, and the kernel may fill it any time after: the region
 * handed out is libuv's until the next callback, so only then is a slab
 * switched or handed back.
 */
export function largeReadSocket(accepted: net.Socket, queue: ByteQueue, onBytes: (chunk: Buffer) => void):
  { socket: net.Socket; direct: DirectReads } | null {
  const old = accepted as unknown as AcceptedInternals;
  const handle = old._handle;
  if (handle === undefined || handle === null || accepted.readableLength > 0) return null;
  let small: Buffer | null = null;
  /** Buffer of the region handed out (small or a big slab), and where the region starts. */
  let cur: Buffer | null = null;
  let pos = 0;
  /** Bytes of the last read. */
  let last = 0;
  /** Big slabs the queue may still hold bytes of (not handed out). */
  let retired: Buffer[] = [];
  /** The buffer reads go into instead of the queue (DirectReads), and the region of it handed out last. */
  let target: { dest: Buffer; filled: number; done: () => void } | null = null;
  let targetRegion: Buffer | null = null;
  /** A cap on the next read's size (limitNext), 0: none. */
  let limit = 0;
  /** Fills the target from a read that landed in a slab region handed out before it was set; returns the rest. */
  const fillFrom = (chunk: Buffer): Buffer => {
    const t = target!;
    const k = Math.min(chunk.length, t.dest.length - t.filled);
    chunk.copy(t.dest, t.filled, 0, k);
    t.filled += k;
    return chunk.subarray(k);
  };
  const finishTarget = (): void => {
    const t = target;
    if (t === null || t.filled < t.dest.length) return;
    target = null;
    t.done();
  };
  const release = (): void => {
    if (retired.length === 0) return;
    const held = retired.filter((b) => queue.holds(b.buffer));
    for (const b of retired) if (!held.includes(b)) giveSlab(b);
    retired = held;
  };
  const room = (): Buffer => {
    if (target !== null) {
      targetRegion = target.dest.subarray(target.filled);
      return targetRegion;
    }
    targetRegion = null;
    if (queue.length === 0) {
      // Nothing is held: busy connections read into a big slab, quiet ones into their small buffer.
      if (last >= SMALL_BYTES / 2) {
        if (cur === null || cur === small) cur = takeSlab();
      } else {
        if (cur !== null && cur !== small) giveSlab(cur);
        if (small === null || queue.holds(small.buffer)) small = Buffer.allocUnsafe(SMALL_BYTES);
        cur = small;
      }
      pos = 0;
    } else if (cur === null || cur.length - pos < (cur === small ? MIN_SMALL_READ : MIN_READ)) {
      // The queue holds a partial request here: continue in a fresh big slab.
      if (cur !== null && cur !== small) retired.push(cur);
      cur = takeSlab();
      pos = 0;
    }
    release();
    if (limit > 0 && cur !== small) {
      const n = limit;
      limit = 0;
      return cur.subarray(pos, pos + Math.min(n, cur.length - pos));
    }
    return cur.subarray(pos);
  };
  let s: net.Socket;
  try {
    s = new net.Socket({
      handle, allowHalfOpen: false, readable: true, writable: true,
      onread: {
        buffer: room,
        callback: (n: number, buf: Uint8Array): boolean => {
          last = n;
          if (targetRegion !== null && buf === targetRegion) {
            targetRegion = null;
            if (target !== null) { // (else cancelled: the bytes are dropped with the connection)
              target.filled += n;
              finishTarget();
            }
            return true;
          }
          pos += n;
          let chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
          if (target !== null) {
            chunk = fillFrom(chunk);
            finishTarget();
          }
          if (chunk.length > 0) onBytes(chunk);
          return true;
        },
      },
    } as net.SocketConstructorOpts & { handle: object });
  } catch {
    return null;
  }
  // The server counts its connections down when a socket it accepted is destroyed.
  const fresh = s as unknown as AcceptedInternals;
  fresh._server = old._server;
  fresh.server = old.server;
  old._server = null;
  old._handle = null;
  const direct: DirectReads = {
    into(dest, done) {
      target = { dest, filled: 0, done };
      if (dest.length === 0) finishTarget();
    },
    cancel() {
      target = null;
    },
    limitNext(bytes) {
      limit = bytes;
    },
  };
  return { socket: s, direct };
}
