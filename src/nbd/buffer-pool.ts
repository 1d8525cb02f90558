/**
 * Buffers of the sizes clients use again and again (a sequential reader's
 * or writer's 1 MiB, a random writer's 4 KiB), reused instead of
 * allocated per request: a fresh big buffer costs page faults and garbage
 * collection. Sizes from `minBytes` are pooled, at most `maxBuffers` of
 * them; a connection keeps one pool per use (transmission.ts: WRITE
 * payloads; requests.ts: READ replies).
 */
export class BufferPool {
  private readonly free: Buffer[] = [];

  constructor(private readonly minBytes: number, private readonly maxBuffers: number) {}

  /** A buffer of exactly `length` bytes, or undefined below minBytes (the caller allocates). */
  take(length: number): Buffer | undefined {
    if (length < this.minBytes) return undefined;
    for (let i = this.free.length - 1; i >= 0; i--) {
      if (this.free[i].length === length) return this.free.splice(i, 1)[0];
    }
    return Buffer.allocUnsafe(length);
  }

  /** Returns a buffer nobody uses any more. */
  give(b: Buffer | undefined): void {
    if (b === undefined) return;
    if (this.free.length >= this.maxBuffers) this.free.shift();
    this.free.push(b);
  }
}
