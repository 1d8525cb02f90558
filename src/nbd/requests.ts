/**
 * One transmission request, run: validated at the edge, applied to the
 * export's VolumeHandle, answered with exactly one complete reply.
 *
 * The loop (transmission.ts) decides when a request runs and accounts for
 * it (requests in flight, bytes held, the request count); this file
 * decides what it does and what the client gets back. Ways in:
 * - `execute`: any request, awaited. Never rejects: a store error becomes
 *   an NBD errno (errors.ts), logged when unexpected.
 * - `readNow`, `writeNow`: a READ answered from a view of the store, or a
 *   small WRITE applied straight from the receive queue, at once, when the
 *   request is valid and the store can; else false and nothing was done
 *   (the loop then runs it through `execute`, which reports what was
 *   wrong).
 * - `landing`: a store buffer for a valid big WRITE's payload to be
 *   received into (by direct reads or on the pool).
 * - `replyError`: the errors the loop answers itself (a payload too large,
 *   a request while shutting down).
 *
 * Rules: a request is checked before any store call (flags against its
 * command, writes to a read-only export, the range in u64). A reply is
 * handed to the outbox whole, within one synchronous run, so chunks of
 * different replies never interleave. READ data leave without a copy
 * where they can: a view of the store, sent with sendfile from a store
 * file when big; else a pooled buffer, reused once the socket wrote it.
 */
import type { Duplex } from 'node:stream';
import type { BlockHashes, ReadOptions, StoredFile, WriteOptions } from '../blockstore/index.js';
import type { NbdLogger } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import * as C from './codec.js';
import { errnoName, mapStoreError, outOfRangeErrno } from './errors.js';
import type { NegotiatedExport } from './handshake.js';
import type { Outbox } from './outbox.js';
import * as P from './protocol.js';
import { blockStatusDescriptors, readReplyChunks } from './replies.js';
import type { TransmissionStats } from './transmission.js';

/** Flags each command accepts (FUA is valid on all once SEND_FUA is advertised). */
function allowedFlags(type: number, structured: boolean): number | undefined {
  const fua = P.NBD_CMD_FLAG_FUA;
  switch (type) {
    case P.NBD_CMD_READ: return fua | (structured ? P.NBD_CMD_FLAG_DF : 0);
    case P.NBD_CMD_WRITE: case P.NBD_CMD_FLUSH: case P.NBD_CMD_TRIM: case P.NBD_CMD_CACHE: case P.NBD_CMD_DISC:
      return fua;
    case P.NBD_CMD_WRITE_ZEROES: return fua | P.NBD_CMD_FLAG_NO_HOLE | P.NBD_CMD_FLAG_FAST_ZERO;
    case P.NBD_CMD_BLOCK_STATUS: return fua | P.NBD_CMD_FLAG_REQ_ONE;
    default: return undefined;
  }
}

/**
 * READ replies of this size or more whose data are committed chunks leave
 * with sendfile when the socket can take them (`sendStored`): below it a
 * copy in the poll phase's one writev costs less than a system call.
 */
const SENDFILE_BYTES = 64 * 1024;
const FUA = { fua: true } as const;
const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);
const NO_FUA = { fua: false } as const;

/** Runs the requests of one connection's transmission phase against its export (see above). */
export class Requests {
  /** Reply buffers of big reads, reused once written. */
  private readonly buffers = new BufferPool(64 * 1024, 8);

  constructor(
    private readonly exp: NegotiatedExport,
    /** Puts replies on the socket (outbox.ts). */
    private readonly out: Outbox,
    /** The connection's counters: reads, writes, bytes and errors are counted here (requests by the loop). */
    private readonly stats: TransmissionStats,
    /** Label of the reads (the export or the client's address). */
    private readonly label: string,
    private readonly logger: NbdLogger,
    private readonly connName: string,
    /** Destroyed when a reply cannot be sent (the peer is gone). */
    private readonly socket: Duplex,
  ) {}

  /** Validates and runs one request; writes exactly one complete reply. Never rejects. */
  async execute(h: C.RequestHeader, payload: Buffer | null, hashed?: BlockHashes): Promise<void> {
    const exp = this.exp;
    const structured = exp.structuredReplies;
    const allowed = allowedFlags(h.type, structured);
    if (allowed === undefined) return this.replyError(h, P.NBD_EINVAL, 'unknown command');
    if ((h.flags & ~allowed) !== 0) return this.replyError(h, P.NBD_EINVAL, 'invalid flags');
    const t = h.type;
    const writes = t === P.NBD_CMD_WRITE || t === P.NBD_CMD_TRIM || t === P.NBD_CMD_WRITE_ZEROES;
    if (writes && exp.readOnly) return this.replyError(h, P.NBD_EPERM, 'read-only export');
    // u64 bounds: an offset above 2^53 is out of range for any volume (sizes are < 2^50); below it
    // offset + length (< 2^53 + 2^32) compares exactly as a double against the size.
    const offset = h.offset > MAX_SAFE_OFFSET ? Number.POSITIVE_INFINITY : Number(h.offset);
    const length = h.length;
    if (t !== P.NBD_CMD_FLUSH && offset + length > exp.handle.size) {
      return this.replyError(h, outOfRangeErrno(t), 'out of range');
    }
    let opts: WriteOptions = (h.flags & P.NBD_CMD_FLAG_FUA) !== 0 ? FUA : NO_FUA;
    if (hashed !== undefined) opts = { ...opts, hashed };
    const handle = exp.handle;
    try {
      switch (t) {
        case P.NBD_CMD_READ: {
          if (length > P.MAX_PAYLOAD_SIZE) return this.replyError(h, P.NBD_EINVAL, 'read too large');
          const into = this.buffers.take(length);
          const view = this.viewReply(h, offset);
          let data: Buffer;
          try {
            data = length === 0 ? Buffer.alloc(0) : await handle.read(offset, length, { label: this.label, into, view: true, stored: view.stored });
          } catch (err) {
            this.buffers.give(into);
            throw err;
          }
          if (data !== into) this.buffers.give(into); // a view of the store's mapping (or no data): the buffer is unused
          if (data.length !== length) throw new Error(`store returned ${data.length} bytes for ${length}`);
          const sent = into === undefined || data !== into ? undefined : () => this.buffers.give(into);
          this.replyRead(h, offset, data, view.seen || (h.flags & P.NBD_CMD_FLAG_DF) !== 0, view.sent, sent);
          return;
        }
        case P.NBD_CMD_WRITE:
          if (length > 0 && payload !== null) await handle.write(offset, payload, opts);
          this.stats.writes++;
          this.stats.bytesWritten += length;
          break;
        case P.NBD_CMD_FLUSH:
          await handle.flush();
          break;
        case P.NBD_CMD_TRIM:
          if (length > 0) await handle.trim(offset, length, opts);
          break;
        case P.NBD_CMD_WRITE_ZEROES:
          if (length > 0) await handle.zero(offset, length, opts);
          break;
        case P.NBD_CMD_CACHE:
          if (length > 0) await handle.cache(offset, length);
          break;
        case P.NBD_CMD_BLOCK_STATUS: {
          if (!exp.baseAllocation) return this.replyError(h, P.NBD_EINVAL, 'no metadata context selected');
          if (length === 0) return this.replyError(h, P.NBD_EINVAL, 'zero length');
          const extents = await handle.extents(offset, length);
          const reqOne = (h.flags & P.NBD_CMD_FLAG_REQ_ONE) !== 0;
          const descs = blockStatusDescriptors(extents, offset, length, reqOne);
          this.send([C.encodeBlockStatus(h.cookie, P.NBD_REPLY_FLAG_DONE, 1, descs)]);
          return;
        }
      }
      this.send([C.encodeSimpleReply(h.cookie, 0)]);
    } catch (err) {
      const m = mapStoreError(err, t);
      if (m.unexpected) {
        this.logger.error(`nbd: ${this.connName}: command ${t} at ${offset}+${length} failed (${errnoName(m.errno)})`, err,
          { conn: this.connName, command: t, offset, length });
      }
      this.replyError(h, m.errno, m.message);
    }
  }

  /**
   * READ `h` answered at once from a view of the store (VolumeHandle.
   * readView) when it is valid and the store can: true when replied. Else
   * (anything to report, or the store cannot) false: `execute` runs it.
   */
  readNow(h: C.RequestHeader): boolean {
    const exp = this.exp;
    const structured = exp.structuredReplies;
    if ((h.flags & ~allowedFlags(P.NBD_CMD_READ, structured)!) !== 0) return false;
    const length = h.length;
    if (length === 0 || length > P.MAX_PAYLOAD_SIZE) return false;
    const offset = this.offsetInRange(h);
    if (offset === null) return false;
    // (A small view needs no file, nor a callback per request: it is copied into the outbox's slab.)
    const reply = length < SENDFILE_BYTES ? null : this.viewReply(h, offset);
    let view: Buffer | null;
    try {
      view = exp.handle.readView(offset, length, { label: this.label, stored: reply?.stored });
    } catch {
      return false; // `execute` reports it
    }
    if (view === null) return false;
    this.replyRead(h, offset, view, true, reply?.sent ?? false);
    return true;
  }

  /**
   * A ReadOptions.stored callback for READ `h` at `offset`: it notes that
   * the result is a view (`seen`: no all-zero block in it, no hole to look
   * for) and sends a big one with sendfile from the store file (`sent`).
   */
  private viewReply(h: C.RequestHeader, offset: number): { stored: ReadOptions['stored']; seen: boolean; sent: boolean } {
    const r = {
      seen: false,
      sent: false,
      stored: (view: Buffer, file: StoredFile): void => {
        r.seen = true;
        if (view.length >= SENDFILE_BYTES) r.sent = this.sendStored(h, offset, view, file);
      },
    };
    return r;
  }

  /** Counts READ `h` and replies with `data` (unless `sentAlready`); `whole`: one data chunk, no hole scan. */
  private replyRead(h: C.RequestHeader, offset: number, data: Buffer, whole: boolean, sentAlready: boolean, sent?: () => void): void {
    this.stats.reads++;
    this.stats.bytesRead += h.length;
    if (sentAlready) return;
    if (this.exp.structuredReplies) this.send(readReplyChunks(h.cookie, offset, data, whole), sent);
    else this.send([C.encodeSimpleReply(h.cookie, 0), data], sent);
  }

  /**
   * WRITE `h` of `data` (a view of the receive queue, valid only now)
   * applied at once (VolumeHandle.writeNow) when it is valid, without FUA,
   * and the store can: true when it was and is replied; a promise when it
   * was and its reply waits for the store's backpressure to let go (it
   * settles once the reply is out; the loop counts it in flight until
   * then). Else false, nothing done.
   */
  writeNow(h: C.RequestHeader, data: Buffer): boolean | Promise<void> {
    const exp = this.exp;
    if (h.flags !== 0 || exp.readOnly || h.length === 0) return false;
    const offset = this.offsetInRange(h);
    if (offset === null) return false;
    let done: boolean | Promise<void>;
    try {
      done = exp.handle.writeNow(offset, data);
    } catch {
      return false; // `execute` reports it
    }
    if (done === false) return false;
    this.stats.writes++;
    this.stats.bytesWritten += h.length;
    if (done === true) {
      this.send([C.encodeSimpleReply(h.cookie, 0)]);
      return true;
    }
    // Applied; the reply waits for the store to catch up.
    return done.then(() => this.send([C.encodeSimpleReply(h.cookie, 0)]), (err: unknown) => {
      const m = mapStoreError(err, P.NBD_CMD_WRITE);
      this.replyError(h, m.errno, m.message);
    });
  }

  /**
   * A buffer in the store's page cache for WRITE `h`'s payload to land in
   * (VolumeHandle.landing), when the request is valid; null: a pooled one.
   */
  landing(h: C.RequestHeader): Buffer | null {
    if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 || this.exp.readOnly) return null;
    const offset = this.offsetInRange(h);
    if (offset === null) return null;
    try {
      return this.exp.handle.landing(offset, h.length);
    } catch {
      return null; // the ordinary way reports it
    }
  }

  /** Request `h`'s offset when its range lies within the export, else null (`execute` reports it). */
  private offsetInRange(h: C.RequestHeader): number | null {
    if (h.offset > MAX_SAFE_OFFSET) return null;
    const offset = Number(h.offset);
    return offset + h.length > this.exp.handle.size ? null : offset;
  }

  /** One error reply: an ERROR chunk under structured replies, else a simple reply. */
  replyError(h: C.RequestHeader, errno: number, message: string): void {
    this.stats.errors++;
    if (this.exp.structuredReplies) {
      this.send([C.encodeErrorChunk(h.cookie, P.NBD_REPLY_FLAG_DONE, errno, message)]);
    } else {
      this.send([C.encodeSimpleReply(h.cookie, errno)]);
    }
  }

  /**
   * Sends the reply to READ `h` (one data chunk) with sendfile from the
   * store file its bytes lie in, `view` being the same bytes: called by the
   * store while `file.fd` is valid. False when the socket cannot take it
   * now (the caller sends the reply its ordinary way).
   */
  private sendStored(h: C.RequestHeader, offset: number, view: Buffer, file: StoredFile): boolean {
    const head = this.exp.structuredReplies
      ? C.encodeOffsetDataHeader(h.cookie, P.NBD_REPLY_FLAG_DONE, offset, view.length)
      : C.encodeSimpleReply(h.cookie, 0);
    let n: number | false;
    try {
      n = this.out.sendFile(head, view, file);
    } catch (err) {
      // The peer is gone: nothing more can be sent on this connection.
      this.logger.info(`nbd: ${this.connName}: reply failed (${(err as Error).message}), closing`, { level: 'warn', conn: this.connName });
      this.socket.destroy();
      return true;
    }
    if (n === false) return false;
    this.stats.bytesFromFiles += n;
    return true;
  }

  /** Puts one reply; `sent` runs once its buffers may be reused. */
  private send(bufs: Buffer[], sent?: () => void): void {
    this.out.send(bufs, sent);
  }
}
