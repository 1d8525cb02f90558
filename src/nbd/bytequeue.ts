/**
 * A receive queue of socket chunks, parsed in place.
 *
 * Design: the socket hands us Buffers; we keep them in arrival order and
 * never copy on push. A header is read straight out of the first chunk
 * when it fits there (the common case); only a header split across chunks
 * is copied into a small merged buffer. A payload that lies inside one
 * chunk is returned as a subarray (zero copy; Node never reuses a socket
 * read buffer, so the view stays valid); one that spans chunks is copied
 * exactly once into its own Buffer.
 *
 * Transient mode (`transient = true`, for connections that read into
 * recycled buffers, see reader.ts): a chunk's memory is only valid while
 * the chunk is queued, so `take` always copies, and chunks that continue
 * each other in memory are merged on push, so a request received in several
 * reads is one contiguous chunk when it fits the buffer.
 *
 * Invariant: `length` is the sum of unread bytes; chunks before `head`
 * are consumed, and `headOff` bytes of chunks[head] are consumed.
 */

/** FIFO of received bytes with zero-copy access where the bytes allow it. */
export class ByteQueue {
  private chunks: Buffer[] = [];
  private head = 0;
  private headOff = 0;
  /** Unread bytes. */
  length = 0;

  /** Chunks' memory is reused once they are consumed: `take` copies (see above). */
  transient = false;

  /** Appends a received chunk (kept by reference). */
  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    const last = this.chunks.length > this.head ? this.chunks[this.chunks.length - 1] : undefined;
    if (this.transient && last !== undefined && last.buffer === chunk.buffer
      && last.byteOffset + last.length === chunk.byteOffset) {
      this.chunks[this.chunks.length - 1] = Buffer.from(last.buffer, last.byteOffset, last.length + chunk.length);
    } else {
      this.chunks.push(chunk);
    }
    this.length += chunk.length;
  }

  /** True when an unread byte lies in `memory`. */
  holds(memory: ArrayBufferLike): boolean {
    for (let i = this.head; i < this.chunks.length; i++) if (this.chunks[i].buffer === memory) return true;
    return false;
  }

  /**
   * Makes the first `n` bytes contiguous and returns the buffer holding
   * them; they start at `peekOffset()`. Requires `n <= length`.
   */
  peek(n: number): Buffer {
    const first = this.chunks[this.head];
    if (first.length - this.headOff >= n) return first;
    const merged = Buffer.allocUnsafe(n);
    this.copyOut(merged, n);
    // Replace the consumed part with the merged bytes so the queue stays consistent.
    this.skipRaw(n);
    if (this.headOff > 0) {
      this.chunks[this.head] = this.chunks[this.head].subarray(this.headOff);
      this.headOff = 0;
    }
    if (this.head > 0) {
      this.head--;
      this.chunks[this.head] = merged;
    } else {
      this.chunks.unshift(merged);
    }
    this.length += n;
    return merged;
  }

  /** Offset in the buffer returned by the last `peek` where the bytes start. */
  peekOffset(): number {
    return this.headOff;
  }

  /**
   * Removes and returns `n` bytes: a view when they lie in one chunk (and
   * the queue is not transient), else one copy (into `into`, of exactly `n`
   * bytes, when given).
   */
  take(n: number, into?: Buffer): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const first = this.chunks[this.head];
    if (!this.transient && first.length - this.headOff >= n) {
      const view = first.subarray(this.headOff, this.headOff + n);
      this.skip(n);
      return view;
    }
    const out = into ?? Buffer.allocUnsafe(n);
    this.copyOut(out, n);
    this.skip(n);
    return out;
  }

  /** Discards `n` bytes (n <= length). */
  skip(n: number): void {
    this.skipRaw(n);
    this.compact();
  }

  /** Removes everything. */
  clear(): void {
    this.chunks = [];
    this.head = 0;
    this.headOff = 0;
    this.length = 0;
  }

  /** Removes and returns every unread byte as one Buffer. */
  takeAll(): Buffer {
    return this.take(this.length);
  }

  private copyOut(dst: Buffer, n: number): void {
    let copied = 0;
    let i = this.head;
    let off = this.headOff;
    while (copied < n) {
      const c = this.chunks[i];
      const k = Math.min(n - copied, c.length - off);
      c.copy(dst, copied, off, off + k);
      copied += k;
      i++;
      off = 0;
    }
  }

  private skipRaw(n: number): void {
    this.length -= n;
    while (n > 0) {
      const c = this.chunks[this.head];
      const avail = c.length - this.headOff;
      if (n < avail) {
        this.headOff += n;
        return;
      }
      n -= avail;
      this.head++;
      this.headOff = 0;
    }
  }

  private compact(): void {
    if (this.head === this.chunks.length) {
      this.chunks.length = 0;
      this.head = 0;
    } else if (this.head > 64) {
      this.chunks = this.chunks.slice(this.head);
      this.head = 0;
    }
  }
}
