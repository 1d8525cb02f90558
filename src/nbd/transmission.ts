/**
 * The transmission phase of one connection, as a loop: parse requests,
 * admit them within the limits, receive their payloads, dispatch them, and
 * end. What a request does and how it is answered is requests.ts's.
 *
 * Design:
 * - Parsing is synchronous over the ByteQueue (`pump`), called on every
 *   received chunk, on every completion and on socket 'drain'. A WRITE is
 *   dispatched only once its whole payload is in.
 * - Requests run concurrently; replies go out in completion order (the
 *   cookie identifies them). Every reply is written within one synchronous
 *   run (requests.ts), so chunks of different replies never interleave
 *   inside a chunk. The outbox (outbox.ts) batches one poll phase's replies
 *   into as few socket writes as it can.
 * - Memory is bounded: no new request is parsed while `maxInFlight`
 *   requests or `maxInFlightBytes` of payload/read data are outstanding, or
 *   the socket holds `maxWriteBuffer` unsent bytes; then the socket is
 *   paused. One request is always admitted, so any legal size progresses.
 * - Errors are per request (validated at the edge, requests.ts). Only
 *   protocol violations (bad magic, a payload beyond the drain bound) end
 *   the connection. `Requests.execute` never rejects.
 * - A WRITE payload comes through the receive queue, by direct reads into
 *   its buffer (reader.ts), or, in a stream of big WRITEs that can land in
 *   the store, on libuv's pool (pool-receive.ts: its states and hand-back
 *   rules).
 *
 * How the loop and the pool receiver meet: `readPayload` starts a stream
 * (`receiveOnPool`: the socket is paused, the stream is one request in
 * flight until its hand-back); each payload received whole comes back
 * through `received` and runs like any parsed request; at the end
 * `handBack` returns the socket (a partial payload goes on by direct
 * reads, bytes of the next request go to the queue). While it streams, a
 * byte read here is a violation, and stopping asks the job to stop.
 *
 * States: RUNNING -> (DISC | shutdown | peer closed | violation) STOPPING
 * -> in-flight == 0 -> DONE (`done` resolves with the reason).
 */
import type { Duplex } from 'node:stream';
import type { BlockHashes } from '../blockstore/index.js';
import type { NbdLogger } from './backend.js';
import { BufferPool } from './buffer-pool.js';
import type { ByteQueue } from './bytequeue.js';
import * as C from './codec.js';
import type { NegotiatedExport } from './handshake.js';
import { Outbox } from './outbox.js';
import { PoolReceiver, type HandBack } from './pool-receive.js';
import * as P from './protocol.js';
import type { DirectReads } from './reader.js';
import { Requests } from './requests.js';

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

/** WRITE payloads of this size or more are read straight into their buffer when the connection can (reader.ts). */
const DIRECT_PAYLOAD_BYTES = 64 * 1024;
/** WRITEs below this size are offered to the store at once (VolumeHandle.writeNow), straight from the receive queue. */
const NOW_BYTES = 256 * 1024;

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
  /**
   * Payload buffers of writes, reused once the write settled (a payload is
   * copied out of the receive queue when it spans reads, and always when
   * the queue is transient).
   */
  private readonly payloads = new BufferPool(4096, 64);
  /** Puts replies on the socket (outbox.ts). */
  private readonly out: Outbox;
  /** Validates, runs and answers each request (requests.ts). */
  private readonly requests: Requests;

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
    socketFd: number | null = null,
  ) {
    this.out = new Outbox(socket, socketFd);
    this.requests = new Requests(exp, this.out, this.stats, label, logger, connName, socket);
    this.pool = new PoolReceiver(socketFd, exp.handle, {
      landing: (h) => this.requests.landing(h),
      admitting: () => this.ending === null && !this.overLimits(),
      closing: () => this.ending !== null && this.ending !== 'shutdown',
      received: (h, landing, hashed) => {
        this.stats.bytesOnPool += h.length;
        this.take(h, landing, undefined, true, hashed);
      },
      handBack: (back) => this.handBack(back),
      crashed: (err) => {
        this.logger.error(`nbd: ${this.connName}: request handling failed, closing`, err, { conn: this.connName });
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
      this.logger.error(`nbd: ${this.connName}: socket read while its payloads are received on the pool, closing`, undefined, { conn: this.connName });
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
      const h = C.decodeRequest(q.peek(P.REQUEST_SIZE), q.peekOffset());
      if (h === null) {
        this.logger.error(`nbd: ${this.connName}: bad request magic, closing`, undefined, { conn: this.connName });
        this.stop('violation');
        return;
      }
      if (h.type === P.NBD_CMD_WRITE) {
        const next = this.takeWrite(h);
        if (next === 'stop') return;
        if (next === 'wait') break;
        continue;
      }
      q.skip(P.REQUEST_SIZE);
      if (h.type === P.NBD_CMD_DISC) {
        this.stats.requests++;
        this.stop('disc');
        return;
      }
      this.take(h, null);
    }
    if (this.paused && this.ending === null && !this.pool.active) {
      this.resumeReads();
    }
  }

  /**
   * WRITE `h`, whose header heads the queue, with its payload: refused and
   * drained when too big, run at once from the queue when small, else
   * copied out of the queue and run, or, while its payload is still
   * coming, read straight into its buffer (readPayload). 'parse': parse
   * on; 'wait': the payload is still coming; 'stop': the connection ends.
   */
  private takeWrite(h: C.RequestHeader): 'parse' | 'wait' | 'stop' {
    const q = this.queue;
    if (h.length > P.MAX_PAYLOAD_SIZE) {
      q.skip(P.REQUEST_SIZE);
      if (h.length > this.limits.drainLimit) {
        this.logger.error(`nbd: ${this.connName}: WRITE payload of ${h.length} bytes, closing`, undefined, { conn: this.connName });
        this.stop('violation');
        return 'stop';
      }
      this.stats.requests++;
      this.requests.replyError(h, P.NBD_EINVAL, 'payload too large');
      this.drainRemaining = h.length;
      return 'parse';
    }
    if (q.length < P.REQUEST_SIZE + h.length) {
      if (this.direct === null || h.length < DIRECT_PAYLOAD_BYTES || this.ending !== null) return 'wait';
      this.readPayload(h);
      return 'wait'; // (the queue is empty; a paused socket must resume as pump ends, or the payload never comes)
    }
    // A small write done at once is taken straight from the queue (no copy, no promise).
    if (h.length < NOW_BYTES && this.ending === null) {
      const buf = q.peek(P.REQUEST_SIZE + h.length);
      const at = q.peekOffset() + P.REQUEST_SIZE;
      if (this.writeNow(h, buf.subarray(at, at + h.length))) {
        q.skip(P.REQUEST_SIZE + h.length);
        return 'parse';
      }
    }
    q.skip(P.REQUEST_SIZE);
    // A payload that is copied goes into a pooled buffer (fresh 1 MiB
    // buffers cost page faults and GC): the backend is done with it once
    // its write settles.
    const into = this.payloads.take(h.length);
    const payload = q.take(h.length, into);
    if (payload !== into) this.payloads.give(into);
    this.take(h, payload, payload === into ? into : undefined);
    return 'parse';
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
    const landing = this.requests.landing(h);
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
        this.logger.error(`nbd: ${this.connName}: receiving on the pool failed, closing`, back.err, { conn: this.connName });
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
        // Shutting down, the socket reads on (queued requests get ESHUTDOWN, and the peer's close is seen).
        if (this.ending === 'shutdown') this.resumeReads();
        this.pump();
        this.checkFinished();
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
      this.requests.replyError(h, P.NBD_ESHUTDOWN, 'server shutting down');
      this.payloads.give(pooled);
      if (landed) this.exp.handle.abandon(payload!);
    } else {
      this.dispatch(h, payload, pooled, landed, hashed);
    }
  }

  /** Runs one request (`pooled`, `landed`: as for `take`). */
  private dispatch(h: C.RequestHeader, payload: Buffer | null, pooled?: Buffer, landed = false, hashed?: BlockHashes): void {
    if (h.type === P.NBD_CMD_READ && this.requests.readNow(h)) return;
    const cost = h.type === P.NBD_CMD_READ || h.type === P.NBD_CMD_WRITE ? h.length : 0;
    this.inFlight++;
    this.inFlightBytes += cost;
    const complete = (): void => {
      this.payloads.give(pooled);
      // A landing the write did not take (a request refused before it ran) goes back to the store.
      if (landed) this.exp.handle.abandon(payload!);
      this.inFlightBytes -= cost;
      this.settled();
    };
    this.requests.execute(h, payload, hashed).then(complete, (err: unknown) => {
      // A bug: the client may be owed a reply we cannot send. Close this connection only.
      this.logger.error(`nbd: ${this.connName}: request handling failed, closing`, err, { conn: this.connName });
      this.stop('violation');
      complete();
    });
  }

  /**
   * WRITE `h` of `data` (a view of the receive queue, valid only now)
   * applied at once when it can be (Requests.writeNow): true when it was.
   * A reply that waits for the store counts as a request in flight.
   */
  private writeNow(h: C.RequestHeader, data: Buffer): boolean {
    const done = this.requests.writeNow(h, data);
    if (done === false) return false;
    this.stats.requests++;
    if (done === true) return true;
    this.inFlight++;
    done.then(() => this.settled(), () => this.settled());
    return true;
  }

  /** A request in flight is over: parsing may go on, or the connection end. */
  private settled(): void {
    this.inFlight--;
    if (this.ending === null) this.pump();
    this.checkFinished();
  }
}
