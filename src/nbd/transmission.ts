/**
 * The transmission phase of one connection: parse requests, run them
 * against the export's VolumeHandle, write replies.
 *
 * Design:
 * - Parsing is synchronous over the ByteQueue (`pump`), called on every
 *   received chunk, on every completion and on socket 'drain'. A WRITE is
 *   dispatched only once its whole payload is queued.
 * - Requests run concurrently; replies go out in completion order (the
 *   cookie identifies them). Every reply is written within one synchronous
 *   run, so chunks of different replies never interleave inside a chunk.
 *   The outbox (outbox.ts) batches one poll phase's replies into as few
 *   socket writes as it can.
 * - Memory is bounded: no new request is parsed while `maxInFlight`
 *   requests or `maxInFlightBytes` of payload/read data are outstanding, or
 *   the socket holds `maxWriteBuffer` unsent bytes; then the socket is
 *   paused. One request is always admitted, so any legal size progresses.
 * - Errors are per request (validated here, at the edge). Only protocol
 *   violations (bad magic, a payload beyond the drain bound) end the
 *   connection. `execute` never rejects.
 * - Big WRITE payloads are received one of three ways: through the
 *   receive queue; straight into their buffer by direct reads (reader.ts);
 *   or, for a stream of big WRITEs whose payloads can land in the store, on
 *   libuv's pool (pool-receive.ts, which has that path's states and
 *   hand-back rules).
 *
 * How the loop and the pool receiver meet: `readPayload` starts a stream
 * (`receiveOnPool`: the socket is paused and the stream counts as one
 * request in flight until its hand-back); the receiver gives back each
 * payload received whole (`received`, run like any parsed request) and,
 * once the job is over, the socket (`handBack`: a partial payload goes on
 * by direct reads, bytes of the next request go to the queue, parsing
 * resumes). While it streams, a byte read here is a violation, the socket
 * stays paused, and stopping asks the job to stop.
 *
 * States: RUNNING -> (DISC | shutdown | peer closed | violation) STOPPING
 * -> in-flight == 0 -> DONE (`done` resolves with the reason).
 */
import type { Duplex } from 'node:stream';
import type { BlockHashes, ReadOptions, StoredFile, WriteOptions } from '../blockstore/index.js';
import { Outbox } from './outbox.js';
import type { NbdLogger } from './backend.js';
import type { ByteQueue } from './bytequeue.js';
import type { DirectReads } from './reader.js';
import * as C from './codec.js';
import { errnoName, mapStoreError, outOfRangeErrno } from './errors.js';
import type { NegotiatedExport } from './handshake.js';
import { PoolReceiver, type HandBack } from './pool-receive.js';
import * as P from './protocol.js';
import { blockStatusDescriptors, readReplyChunks } from './replies.js';

/** Per-connection bounds. */
export interface TransmissionLimits {
  /** Requests executing at once. */
  maxInFlight: number;
  /** Bytes of WRITE payloads and READ results held at once. */
  maxInFlightBytes: number;
  /** Unsent reply bytes before we stop taking requests. */
  maxWriteBuffer: number;
  /** An oversize WRITE payload up to this many bytes is drained; beyond it we disconnect. */
  drainLimit: number;
}

/** Defaults: 64 requests, 64 MiB, 16 MiB of unsent replies, drain up to 128 MiB. */
export const DEFAULT_LIMITS: TransmissionLimits = {
  maxInFlight: 64,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxWriteBuffer: 16 * 1024 * 1024,
  drainLimit: 128 * 1024 * 1024,
};

/** Counters reported in the disconnect log line. */
export interface TransmissionStats {
  requests: number;
  reads: number;
  writes: number;
  bytesRead: number;
  bytesWritten: number;
  /** READ data sent with sendfile straight from store files (part of bytesRead). */
  bytesFromFiles: number;
  /** WRITE payload bytes received on libuv's pool (recvStream) rather than by this thread. */
  bytesOnPool: number;
  errors: number;
}

/** Why transmission ended. */
export type EndReason = 'disc' | 'shutdown' | 'closed' | 'violation';

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
 * Reuses buffers of the sizes clients use again and again (a sequential
 * reader's or writer's 1 MiB, a random writer's 4 KiB). Sizes from
 * `minBytes` are pooled, at most `maxBuffers` of them.
 */
class BufferPool {
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

/** WRITE payloads of this size or more are read straight into their buffer when the connection can (reader.ts). */
const DIRECT_PAYLOAD_BYTES = 64 * 1024;
/**
 * READ replies of this size or more whose data are committed chunks leave
 * with sendfile when the socket can take them (`sendStored`): below it a
 * copy in the poll phase's one writev costs less than a system call.
 */
const SENDFILE_BYTES = 64 * 1024;
/** WRITEs below this size are offered to the store at once (VolumeHandle.writeNow), straight from the receive queue. */
const NOW_BYTES = 256 * 1024;
const FUA = { fua: true } as const;
const MAX_SAFE_OFFSET = BigInt(Number.MAX_SAFE_INTEGER);
const NO_FUA = { fua: false } as const;

/** Runs the transmission phase over `socket`, reading requests from `queue`. */
export class Transmission {
  /** Resolves once no request is in flight and no more will be parsed. */
  readonly done: Promise<EndReason>;
  readonly stats: TransmissionStats = { requests: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, bytesFromFiles: 0, bytesOnPool: 0, errors: 0 };
  private resolveDone!: (r: EndReason) => void;
  private ending: EndReason | null = null;
  private finished = false;
  private inFlight = 0;
  private inFlightBytes = 0;
  private paused = false;
  /** The payload buffer a direct read is filling (readPayload), if any, and whether it is a landing (store-owned). */
  private awaiting: Buffer | null = null;
  private awaitingLanding = false;
  /** Receives streams of big WRITE payloads on the pool (receiveOnPool): the socket is paused meanwhile. */
  private readonly pool: PoolReceiver;
  private drainRemaining = 0;
  private readonly label: string;
  /** Reply buffers of big reads, reused once written (allocating them made GC a sixth of a sequential read). */
  private readonly buffers = new BufferPool(64 * 1024, 8);
  /**
   * Payload buffers of writes, reused once the write settled (a payload is
   * copied out of the receive queue when it spans reads, and always when
   * the queue is transient).
   */
  private readonly payloads = new BufferPool(4096, 64);
  /** Puts replies on the socket (outbox.ts). */
  private readonly out: Outbox;

  constructor(
    private readonly socket: Duplex,
    private readonly queue: ByteQueue,
    private readonly exp: NegotiatedExport,
    label: string,
    private readonly limits: TransmissionLimits,
    private readonly logger: NbdLogger,
    private readonly connName: string,
    /** Reads a big WRITE's payload straight into its buffer (null: through the queue). */
    private readonly direct: DirectReads | null = null,
    /** The plaintext socket's descriptor, for replies sent with sendfile and payloads received on the pool (null: neither). */
    private readonly socketFd: number | null = null,
  ) {
    this.label = label;
    this.out = new Outbox(socket, socketFd);
    this.pool = new PoolReceiver(socketFd, exp.handle, {
      landing: (h) => this.landing(h),
      admitting: () => this.ending === null && !this.overLimits(),
      closing: () => this.ending !== null && this.ending !== 'shutdown',
      received: (h, landing, hashed) => {
        this.stats.bytesOnPool += h.length;
        this.take(h, landing, undefined, true, hashed);
      },
      handBack: (back) => this.handBack(back),
      crashed: (err) => {
        this.logger.error(`nbd: ${this.connName}: request handling failed, closing`, err);
        this.stop('violation');
      },
    });
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
    socket.on('drain', () => this.pump());
  }

  /** Call after pushing received bytes into the queue. */
  onData(): void {
    if (this.pool.active) {
      // The socket is the pool's now: bytes read here as well would tear the stream apart.
      this.logger.error(`nbd: ${this.connName}: socket read while its payloads are received on the pool, closing`);
      this.stop('violation');
      return;
    }
    this.pump();
  }

  /** The peer closed or the socket failed: stop parsing, let in-flight requests finish. */
  onClose(): void {
    this.stop('closed');
  }

  /** Server shutdown: answer queued requests with ESHUTDOWN, finish in-flight ones. */
  shutdown(): void {
    if (this.ending === null) {
      this.ending = 'shutdown';
      this.pool.stop();
      this.pump();
      this.checkFinished();
    }
  }

  private stop(reason: EndReason): void {
    if (this.ending === null || (reason === 'violation' && this.ending !== 'violation')) this.ending = reason;
    this.pool.stop();
    if (reason !== 'shutdown') {
      this.queue.clear();
      if (this.awaiting !== null) {
        // A read may still land in that buffer: a pooled one is dropped, never pooled again; a
        // landing goes back to the store, once the socket reads no more (it is closing now).
        this.direct!.cancel();
        if (this.awaitingLanding) {
          const landing = this.awaiting;
          this.socket.once('close', () => this.exp.handle.abandon(landing));
          if (this.socket.destroyed) this.exp.handle.abandon(landing);
        }
        this.awaiting = null;
      }
    }
    if (reason === 'violation') this.socket.destroy();
    this.checkFinished();
  }

  private checkFinished(): void {
    if (this.ending !== null && this.inFlight === 0 && !this.finished) {
      this.finished = true;
      this.out.flush(); // the last replies go before the connection ends the socket
      this.resolveDone(this.ending);
    }
  }

  private overLimits(): boolean {
    return (
      this.inFlight >= this.limits.maxInFlight ||
      (this.inFlight > 0 && this.inFlightBytes >= this.limits.maxInFlightBytes) ||
      this.out.pending >= this.limits.maxWriteBuffer
    );
  }

  /** Parses and dispatches every complete request the limits allow. */
  private pump(): void {
    const q = this.queue;
    while (this.ending === null || this.ending === 'shutdown') {
      if (this.drainRemaining > 0) {
        const n = Math.min(this.drainRemaining, q.length);
        q.skip(n);
        this.drainRemaining -= n;
        if (this.drainRemaining > 0) break;
      }
      if (this.ending === null && this.overLimits()) {
        if (!this.paused) {
          this.paused = true;
          this.socket.pause();
        }
        return;
      }
      if (q.length < P.REQUEST_SIZE) break;
      const buf = q.peek(P.REQUEST_SIZE);
      const h = C.decodeRequest(buf, q.peekOffset());
      if (h === null) {
        this.logger.error(`nbd: ${this.connName}: bad request magic, closing`);
        this.stop('violation');
        return;
      }
      let payload: Buffer | null = null;
      let pooled: Buffer | undefined;
      if (h.type === P.NBD_CMD_WRITE) {
        if (h.length > P.MAX_PAYLOAD_SIZE) {
          q.skip(P.REQUEST_SIZE);
          if (h.length > this.limits.drainLimit) {
            this.logger.error(`nbd: ${this.connName}: WRITE payload of ${h.length} bytes, closing`);
            this.stop('violation');
            return;
          }
          this.stats.requests++;
          this.replyError(h, P.NBD_EINVAL, 'payload too large');
          this.drainRemaining = h.length;
          continue;
        }
        if (q.length < P.REQUEST_SIZE + h.length) {
          if (this.direct === null || h.length < DIRECT_PAYLOAD_BYTES || this.ending !== null) break;
          this.readPayload(h);
          break; // (the queue is empty; a paused socket must resume below, or the payload never comes)
        }
        // A small write done at once is taken straight from the queue (no copy, no promise).
        if (h.length < NOW_BYTES && this.ending === null) {
          const buf = q.peek(P.REQUEST_SIZE + h.length);
          const at = q.peekOffset() + P.REQUEST_SIZE;
          if (this.writeNow(h, buf.subarray(at, at + h.length))) {
            q.skip(P.REQUEST_SIZE + h.length);
            continue;
          }
        }
        q.skip(P.REQUEST_SIZE);
        // A payload that is copied goes into a pooled buffer (fresh 1 MiB
        // buffers cost page faults and GC): the backend is done with it once
        // its write settles.
        const into = this.payloads.take(h.length);
        payload = q.take(h.length, into);
        if (payload !== into) this.payloads.give(into);
        else pooled = into;
      } else {
        q.skip(P.REQUEST_SIZE);
      }
      if (h.type === P.NBD_CMD_DISC) {
        this.stats.requests++;
        this.stop('disc');
        return;
      }
      this.take(h, payload, pooled);
    }
    if (this.paused && this.ending === null && !this.pool.active) {
      this.resumeReads();
    }
  }

  /** The socket reads again (paused by the limits or for the pool). */
  private resumeReads(): void {
    this.paused = false;
    this.socket.resume();
  }

  /**
   * The rest of WRITE `h`'s payload is read straight into its pooled buffer
   * (`direct`): what the queue holds of it is copied there, the following
   * reads land in the buffer, and the request runs once it is full. Parsing
   * resumes then (the queue is empty meanwhile).
   */
  private readPayload(h: C.RequestHeader): void {
    const q = this.queue;
    q.skip(P.REQUEST_SIZE);
    const landing = this.landing(h);
    const into = landing ?? this.payloads.take(h.length)!;
    const have = q.length;
    if (have > 0) q.take(have, into);
    if (landing !== null && this.receiveOnPool(h, landing, have)) return;
    this.awaitPayload(h, into, have, landing !== null);
  }

  /** The rest of WRITE `h`'s payload, from byte `from` of `into` on, comes by direct reads; then it runs. */
  private awaitPayload(h: C.RequestHeader, into: Buffer, from: number, landed: boolean): void {
    this.awaiting = into;
    this.awaitingLanding = landed;
    this.direct!.into(into.subarray(from), () => this.payloadIn(h, into, landed));
  }

  /** WRITE `h`'s payload is all in `into` (awaitPayload): runs it and parses on. */
  private payloadIn(h: C.RequestHeader, into: Buffer, landed: boolean): void {
    this.awaiting = null;
    this.take(h, into, landed ? undefined : into, landed);
    this.pump();
    // Big writes come in streams: the next read stops after a header, so its payload lands whole.
    if (this.awaiting === null && this.queue.length === 0) this.direct!.limitNext(P.REQUEST_SIZE);
  }

  /**
   * The rest of landing `into` (from `have` on), WRITE `h`'s payload, and
   * the payloads of the big WRITEs that follow it are received on libuv's
   * pool (pool-receive.ts) while this thread applies the writes received
   * so far. The socket is paused meanwhile, and the stream counts as a
   * request in flight (the connection, its handle and the store stay open
   * until its hand-back). False when it cannot be done (no descriptor, a
   * client that stalled a moment ago, the pool's share taken).
   */
  private receiveOnPool(h: C.RequestHeader, into: Buffer, have: number): boolean {
    if (!this.pool.mayStart()) return false;
    const wasPaused = this.paused;
    this.paused = true;
    this.socket.pause();
    this.inFlight++;
    if (this.pool.start(h, into, have)) return true;
    this.inFlight--;
    if (!wasPaused) this.resumeReads();
    return false;
  }

  /** A pool stream is over: the socket is read here again, as `back` says (pool-receive.ts, hand-back rules). */
  private handBack(back: HandBack): void {
    this.inFlight--;
    switch (back.kind) {
      case 'failed':
        this.logger.error(`nbd: ${this.connName}: receiving on the pool failed, closing`, back.err);
        this.stop('violation');
        this.checkFinished();
        return;
      case 'stopped':
        this.checkFinished();
        return;
      case 'stalled':
        this.awaitPayload(back.h, back.landing, back.filled, true);
        this.resumeReads();
        return;
      case 'finished':
        if (back.leftover.length > 0) this.queue.push(back.leftover);
        if (this.ending === 'shutdown') {
          // Shutting down, the socket reads on (queued requests get ESHUTDOWN, and the peer's close is seen).
          this.resumeReads();
        }
        this.pump();
        this.checkFinished();
    }
  }

  /**
   * A buffer in the store's page cache for WRITE `h`'s payload to land in
   * (VolumeHandle.landing), when the request is valid; null: a pooled one.
   */
  private landing(h: C.RequestHeader): Buffer | null {
    if ((h.flags & ~P.NBD_CMD_FLAG_FUA) !== 0 || this.exp.readOnly) return null;
    const offset = this.offsetInRange(h);
    if (offset === null) return null;
    try {
      return this.exp.handle.landing(offset, h.length);
    } catch {
      return null; // the ordinary way reports it
    }
  }

  /**
   * A parsed request (with its whole payload): runs it, or answers
   * ESHUTDOWN while shutting down. `pooled`: the payload's buffer, back to
   * the pool once the request settles; `landed`: the payload is a landing,
   * given back to the store if the write did not take it.
   */
  private take(h: C.RequestHeader, payload: Buffer | null, pooled?: Buffer, landed = false, hashed?: BlockHashes): void {
    this.stats.requests++;
    if (this.ending === 'shutdown') {
      this.replyError(h, P.NBD_ESHUTDOWN, 'server shutting down');
      this.payloads.give(pooled);
      if (landed) this.exp.handle.abandon(payload!);
    } else {
      this.dispatch(h, payload, pooled, landed, hashed);
    }
  }

  /** Runs one request (`pooled`, `landed`: as for `take`). */
  private dispatch(h: C.RequestHeader, payload: Buffer | null, pooled?: Buffer, landed = false, hashed?: BlockHashes): void {
    if (h.type === P.NBD_CMD_READ && this.readNow(h)) return;
    const cost = h.type === P.NBD_CMD_READ || h.type === P.NBD_CMD_WRITE ? h.length : 0;
    this.inFlight++;
    this.inFlightBytes += cost;
    const complete = (): void => {
      this.payloads.give(pooled);
      // A landing the write did not take (a request refused before it ran) goes back to the store.
      if (landed) this.exp.handle.abandon(payload!);
      this.inFlight--;
      this.inFlightBytes -= cost;
      if (this.ending === null) this.pump();
      this.checkFinished();
    };
    this.execute(h, payload, hashed).then(complete, (err: unknown) => {
      // A bug: the client may be owed a reply we cannot send. Close this connection only.
      this.logger.error(`nbd: ${this.connName}: request handling failed, closing`, err);
      this.stop('violation');
      complete();
    });
  }

  /** Validates and runs one request; writes exactly one complete reply. Never rejects. */
  private async execute(h: C.RequestHeader, payload: Buffer | null, hashed?: BlockHashes): Promise<void> {
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
        this.logger.error(`nbd: ${this.connName}: command ${t} at ${offset}+${length} failed (${errnoName(m.errno)})`, err);
      }
      this.replyError(h, m.errno, m.message);
    }
  }

  /**
   * READ `h` answered at once from a view of the store (VolumeHandle.
   * readView) when it is valid and the store can: true when replied. Else
   * (anything to report, or the store cannot) false: `execute` runs it.
   */
  private readNow(h: C.RequestHeader): boolean {
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
   * and the store can: true when it was (replied, or replied once the
   * store's backpressure lets go). Else false, nothing done.
   */
  private writeNow(h: C.RequestHeader, data: Buffer): boolean {
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
    this.stats.requests++;
    this.stats.writes++;
    this.stats.bytesWritten += h.length;
    if (done === true) {
      this.send([C.encodeSimpleReply(h.cookie, 0)]);
      return true;
    }
    // Applied; the reply waits for the store to catch up, like any request in flight.
    this.inFlight++;
    const complete = (): void => {
      this.inFlight--;
      if (this.ending === null) this.pump();
      this.checkFinished();
    };
    done.then(() => this.send([C.encodeSimpleReply(h.cookie, 0)]), (err: unknown) => {
      const m = mapStoreError(err, P.NBD_CMD_WRITE);
      this.replyError(h, m.errno, m.message);
    }).then(complete, complete);
    return true;
  }

  /** Request `h`'s offset when its range lies within the export, else null (`execute` reports it). */
  private offsetInRange(h: C.RequestHeader): number | null {
    if (h.offset > MAX_SAFE_OFFSET) return null;
    const offset = Number(h.offset);
    return offset + h.length > this.exp.handle.size ? null : offset;
  }

  /** One error reply: an ERROR chunk under structured replies, else a simple reply. */
  private replyError(h: C.RequestHeader, errno: number, message: string): void {
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
      this.logger.info(`nbd: ${this.connName}: reply failed (${(err as Error).message}), closing`);
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
