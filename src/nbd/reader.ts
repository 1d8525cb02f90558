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
 * States of a connection's reads (LargeReads). Node asks for the region of
 * the next read (`room`) right after each read's callback, and the kernel
 * may fill it any time after: the region handed out is libuv's until the
 * next callback, so the state changes only in `room`.
 *
 *   state   next read goes into              entered (in `room`) when
 *   IDLE    nothing yet                      (before the first read)
 *   SMALL   the rest of the connection's     the queue is empty and the last read was
 *           own small buffer                 small (under SMALL_BYTES / 2): a slab held
 *                                            goes back to the pool
 *   SLAB    the rest of a big slab (at most  the queue is empty and the last read was
 *           `limitNext` bytes of it, once)   big (the slab held is kept); or the queue
 *                                            holds part of a request and the buffer has
 *                                            less than MIN_READ (MIN_SMALL_READ) left: a
 *                                            fresh slab, the old one retired until the
 *                                            queue holds nothing in it
 *   DIRECT  the unfilled rest of the target  a target is set (`into`); SMALL or SLAB
 *           (DirectReads.into)               stays as it was, for when the target is
 *                                            full (its `done` runs) or cancelled
 *
 * A read that lands in a SMALL or SLAB region after a target was set fills
 * the target first; what is left goes to the queue.
 *
 * Node has no public way to read an accepted socket with `onread`: how the
 * connection is moved to a Socket that does is in node-internals.ts, the
 * one place that reaches into Node's internals. Anything unexpected there
 * falls back to ordinary reads.
 */
import type net from 'node:net';
import type { ByteQueue } from './bytequeue.js';
import { onreadSocket, type OnRead } from './node-internals.js';

/** Big slabs (shared pool), for connections moving data. */
const SLAB_BYTES = 1024 * 1024;
/** Each connection's own small read buffer, while its reads are small. */
const SMALL_BYTES = 64 * 1024;
/** A read is offered at least this much room in a big slab (more than a socket buffers by default: one read takes all it holds)... */
const MIN_READ = 256 * 1024;
/** ...and at least this much in the small buffer. */
const MIN_SMALL_READ = 16 * 1024;
/** Free big slabs kept for reuse. */
const POOL_MAX = 16;

const pool: Buffer[] = [];
const takeSlab = (): Buffer => pool.pop() ?? Buffer.allocUnsafe(SLAB_BYTES);
const giveSlab = (b: Buffer): void => { if (pool.length < POOL_MAX) pool.push(b); };

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
   * read costs less than copying out what a full socket buffer held).
   */
  limitNext(bytes: number): void;
}

/** Which of its buffers a connection reads into when no target is set (see the state table). */
type BufferState = 'idle' | 'small' | 'slab';

/** A DirectReads target: `dest`, filled up to `filled`. */
interface Target { dest: Buffer; filled: number; done: () => void }

/** One connection's reads (see the state table above). */
class LargeReads implements DirectReads {
  /** Node's `onread` for this connection. */
  readonly onread: OnRead = {
    buffer: (): Buffer => this.room(),
    callback: (n: number, buf: Uint8Array): boolean => this.onRead(n, buf),
  };

  /** IDLE, SMALL or SLAB: what `cur` is. */
  private state: BufferState = 'idle';
  /** The connection's small buffer, once it needed one. */
  private small: Buffer | null = null;
  /** The buffer of SMALL or SLAB, and where the region handed out of it starts. */
  private cur: Buffer | null = null;
  private pos = 0;
  /** Bytes of the last read. */
  private last = 0;
  /** Big slabs the queue may still hold bytes of (not handed out). */
  private retired: Buffer[] = [];
  /** The buffer reads go into instead of the queue (DirectReads). */
  private target: Target | null = null;
  /** DIRECT: the region of the target handed out last (null: a region of `cur` was). */
  private targetRegion: Buffer | null = null;
  /** A cap on the next read's size (limitNext), 0: none. */
  private limit = 0;

  constructor(private readonly queue: ByteQueue, private readonly onBytes: (chunk: Buffer) => void) {}

  into(dest: Buffer, done: () => void): void {
    this.target = { dest, filled: 0, done };
    if (dest.length === 0) this.finishTarget();
  }

  cancel(): void {
    this.target = null;
  }

  limitNext(bytes: number): void {
    this.limit = bytes;
  }

  /** Node's onread.buffer: the region the next read goes into (the one place the state changes). */
  private room(): Buffer {
    if (this.target !== null) {
      this.targetRegion = this.target.dest.subarray(this.target.filled);
      return this.targetRegion;
    }
    this.targetRegion = null;
    if (this.queue.length === 0) {
      // Nothing is held: busy connections read into a big slab, quiet ones into their small buffer.
      if (this.last >= SMALL_BYTES / 2) this.toSlab();
      else this.toSmall();
      this.pos = 0;
    } else if (this.state === 'idle' || this.cur!.length - this.pos < (this.state === 'small' ? MIN_SMALL_READ : MIN_READ)) {
      // The queue holds a partial request here: continue in a fresh big slab.
      this.toFreshSlab();
    }
    this.release();
    const cur = this.cur!;
    if (this.limit > 0 && this.state === 'slab') {
      const n = this.limit;
      this.limit = 0;
      return cur.subarray(this.pos, this.pos + Math.min(n, cur.length - this.pos));
    }
    return cur.subarray(this.pos);
  }

  /** SLAB, in the slab held if there is one (the queue is empty: all of it is free). */
  private toSlab(): void {
    if (this.state !== 'slab') this.cur = takeSlab();
    this.state = 'slab';
  }

  /** SMALL: a slab held goes back to the pool; the small buffer is replaced if the queue still holds bytes of it. */
  private toSmall(): void {
    if (this.state === 'slab') giveSlab(this.cur!);
    if (this.small === null || this.queue.holds(this.small.buffer)) this.small = Buffer.allocUnsafe(SMALL_BYTES);
    this.cur = this.small;
    this.state = 'small';
  }

  /** SLAB in a fresh slab: the current buffer holds part of a request, so a slab held is retired, not given back. */
  private toFreshSlab(): void {
    if (this.state === 'slab') this.retired.push(this.cur!);
    this.cur = takeSlab();
    this.pos = 0;
    this.state = 'slab';
  }

  /** Gives back the retired slabs the queue holds nothing of any more. */
  private release(): void {
    if (this.retired.length === 0) return;
    const held = this.retired.filter((b) => this.queue.holds(b.buffer));
    for (const b of this.retired) if (!held.includes(b)) giveSlab(b);
    this.retired = held;
  }

  /** Node's onread.callback: `n` bytes were read into `buf`, the region `room` handed out. */
  private onRead(n: number, buf: Uint8Array): boolean {
    this.last = n;
    if (this.targetRegion !== null && buf === this.targetRegion) {
      this.targetRegion = null;
      if (this.target !== null) { // (else cancelled: the bytes are dropped with the connection)
        this.target.filled += n;
        this.finishTarget();
      }
      return true;
    }
    this.pos += n;
    let chunk = Buffer.from(buf.buffer, buf.byteOffset, n);
    if (this.target !== null) {
      chunk = this.fillFrom(chunk);
      this.finishTarget();
    }
    if (chunk.length > 0) this.onBytes(chunk);
    return true;
  }

  /** Fills the target from a read that landed in a slab region handed out before it was set; returns the rest. */
  private fillFrom(chunk: Buffer): Buffer {
    const t = this.target!;
    const k = Math.min(chunk.length, t.dest.length - t.filled);
    chunk.copy(t.dest, t.filled, 0, k);
    t.filled += k;
    return chunk.subarray(k);
  }

  /** Runs the target's `done` once it is full. */
  private finishTarget(): void {
    const t = this.target;
    if (t === null || t.filled < t.dest.length) return;
    this.target = null;
    t.done();
  }
}

/**
 * A socket over `accepted`'s connection that passes every read to
 * `onBytes` (a view valid until the queue has consumed it; `onBytes` pushes
 * it to `queue`), or null when this Node cannot do it (then use `accepted`
 * as it is). `accepted` must not be used any more when a socket is
 * returned.
 */
export function largeReadSocket(accepted: net.Socket, queue: ByteQueue, onBytes: (chunk: Buffer) => void):
  { socket: net.Socket; direct: DirectReads } | null {
  const reads = new LargeReads(queue, onBytes);
  const socket = onreadSocket(accepted, reads.onread);
  return socket === null ? null : { socket, direct: reads };
}
