/**
 * The reply side of one connection: puts each reply on the socket whole,
 * in the order the transmission loop makes them, at the least cost per
 * reply.
 *
 * - Small replies (at most SLAB_REPLY_BYTES: every error and write reply,
 *   small reads) are copied into a slab; what a poll phase added to the
 *   slab goes to the socket as one write, at the end of the phase
 *   (setImmediate) or before a bigger reply: copying a small reply costs
 *   less than a Writable.write of its own.
 * - Bigger replies are written buffer by buffer (views of the store's
 *   mappings are not copied), corked so that one poll phase's writes leave
 *   in one writev.
 * - `sendFile`: a READ reply whose data lie in a store file and never
 *   change leaves with sendfile (the kernel hands the file's pages to the
 *   socket), when nothing of ours waits in front of it.
 *
 * Slabs: the socket holds a slab until the write of its last part is done;
 * a slab is refilled only once it is full and every write of it is done
 * (SLAB_POOL kept for reuse). Order: every path first hands the slab's
 * unwritten part to the socket, so bytes leave in the order they were put.
 */
import type { Duplex } from 'node:stream';
import type { StoredFile } from '../blockstore/index.js';
import { sendFileRange } from '../native/index.js';

/** Replies up to this size are copied into the slab. */
const SLAB_REPLY_BYTES = 16 * 1024;
/** Size of a slab. */
const SLAB_BYTES = 256 * 1024;
/** Full slabs kept for reuse. */
const SLAB_POOL = 4;

interface Slab { buf: Buffer; writes: number; full: boolean }

/** Writes one connection's replies (see above). */
export class Outbox {
  private slab: Slab | null = null;
  /** Bytes of the current slab handed to the socket, and bytes put in it. */
  private start = 0;
  private end = 0;
  private readonly pool: Slab[] = [];
  private scheduled = false;
  private corked = false;
  private readonly endPhase = (): void => {
    this.scheduled = false;
    this.flush();
  };

  constructor(
    private readonly socket: Duplex,
    /** The plaintext socket's descriptor, for sendFile (null: never). */
    private readonly socketFd: number | null,
  ) {}

  /** Hands everything put so far to the socket now (at the end of a poll phase, before a sendfile, before the socket ends). */
  flush(): void {
    this.hand();
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
  }

  /** Bytes put and not yet taken by the kernel. */
  get pending(): number {
    return this.socket.writableLength + (this.end - this.start);
  }

  /**
   * Puts one reply made of `bufs`. `sent` runs once the socket no longer
   * needs the buffers (copied, written, or the socket failed).
   */
  send(bufs: Buffer[], sent?: () => void): void {
    const s = this.socket;
    if (s.destroyed || !s.writable) {
      sent?.();
      return;
    }
    let total = 0;
    for (let i = 0; i < bufs.length; i++) total += bufs[i].length;
    if (total <= SLAB_REPLY_BYTES) {
      const out = this.room(total);
      for (let i = 0; i < bufs.length; i++) {
        out.set(bufs[i], this.end);
        this.end += bufs[i].length;
      }
      sent?.();
      this.schedule();
      return;
    }
    this.hand();
    if (!this.corked) {
      this.corked = true;
      s.cork();
      this.schedule();
    }
    const last = bufs.length - 1;
    for (let i = 0; i < last; i++) s.write(bufs[i]);
    if (sent === undefined) s.write(bufs[last]);
    else s.write(bufs[last], () => sent());
  }

  /**
   * Sends `head` then the data of `view`, which are the bytes of
   * `file.fd` at `file.position`, with sendfile; what the socket's buffer
   * does not take is written from `view` after it. Returns the bytes that
   * left from the file, or false when something of ours is still waiting
   * to be written (nothing was sent: the caller uses `send`). Throws the
   * native error when the socket failed.
   */
  sendFile(head: Buffer, view: Buffer, file: StoredFile): number | false {
    const s = this.socket;
    if (this.socketFd === null || s.destroyed || !s.writable) return false;
    this.flush();
    if (s.writableLength > 0) return false;
    const n = sendFileRange(this.socketFd, head, file.fd, file.position, view.length);
    if (n < head.length) {
      s.write(head.subarray(n));
      s.write(view);
    } else if (n < head.length + view.length) {
      s.write(view.subarray(n - head.length));
    }
    return Math.max(0, n - head.length);
  }

  /** The slab with room for `n` more bytes (a fresh one when the current is full). */
  private room(n: number): Buffer {
    if (this.slab !== null && this.slab.buf.length - this.end >= n) return this.slab.buf;
    this.hand();
    if (this.slab !== null) {
      this.slab.full = true;
      if (this.slab.writes === 0) this.recycle(this.slab);
    }
    const slab = this.pool.pop() ?? { buf: Buffer.allocUnsafeSlow(SLAB_BYTES), writes: 0, full: false };
    slab.full = false;
    this.slab = slab;
    this.start = 0;
    this.end = 0;
    return slab.buf;
  }

  /** Hands what was put in the slab since the last time to the socket. */
  private hand(): void {
    const slab = this.slab;
    if (slab === null || this.end === this.start) return;
    if (this.socket.destroyed) {
      this.start = this.end; // nobody will read it
      return;
    }
    const part = slab.buf.subarray(this.start, this.end);
    this.start = this.end;
    slab.writes++;
    this.socket.write(part, () => {
      if (--slab.writes === 0 && slab.full) this.recycle(slab);
    });
  }

  private recycle(slab: Slab): void {
    if (this.pool.length < SLAB_POOL && !this.pool.includes(slab)) this.pool.push(slab);
  }

  private schedule(): void {
    if (this.scheduled) return;
    this.scheduled = true;
    setImmediate(this.endPhase);
  }
}
