/**
 * Big WRITE payloads received on libuv's pool: one connection's stream of
 * them (native recvStream, native/src/recv.cc), from the moment the
 * transmission loop hands it the socket to the moment it hands it back.
 *
 * Why: on a stream of big writes, the kernel's copy out of the socket and
 * the hash of every block are per-byte work this thread would otherwise do
 * between requests. A pool job does both (into the store's landing
 * buffers) while this thread applies the writes already in, and it reads
 * the next request's header itself, so the socket is not left unread
 * between payloads while the client keeps the stream going.
 *
 * States (one receiver per connection):
 *
 *   IDLE       The loop reads the socket (receive queue, direct reads).
 *                start (the loop paused the socket and counts the stream
 *                as a request in flight)   -> STREAMING
 *   STREAMING  The job owns the socket and every landing passed to it.
 *              `current` is the request whose payload it is receiving
 *              (null between a payload received whole and the next
 *              header); up to POOL_OFFERS landings wait on offer.
 *                payload whole             -> the loop runs its write
 *                                             (`received`); current = null
 *                next header taken on      -> current = the first landing
 *                                             offered; one more is offered
 *                job over                  -> hand-back (below), then IDLE,
 *                                             or COOLING after a stall
 *   COOLING    As IDLE, but `mayStart` is false until POOL_STALL_PAUSE_MS
 *              after the stall: a slow client is read the ordinary way.
 *
 * A stream starts only from a landing (a valid big WRITE the store can
 * land), with the socket's descriptor known, and while fewer than
 * POOL_RECEIVES streams run in the whole process. Landings are offered
 * only while the loop admits requests (`PoolHost.admitting`): a stream
 * takes on no more than the limits allow.
 *
 * Hand-back rules, when the job is over (`ended`), in this order:
 * 1. Every landing offered and not taken goes back to the store.
 * 2. The job failed, or the connection is ending (other than a graceful
 *    shutdown): the landing it was filling goes back too, and nothing more
 *    is read (a failure closes the connection): 'failed' / 'stopped'.
 * 3. A payload was left partly received (a stall, a payload still coming
 *    when the job's time was up, or the stream's end): its landing passes
 *    to the loop, which reads the rest by direct reads from `filled` on;
 *    the connection reads the ordinary way for POOL_STALL_PAUSE_MS:
 *    'stalled'.
 * 4. Else the job stopped between requests (the next was not a WRITE it
 *    could take, no landing was on offer, its time was up, or it was asked
 *    to stop): the bytes it read of the next request (`leftover`) go to the
 *    front of the receive queue and the loop parses on: 'finished'.
 *
 * Ownership: from `start` until the hand-back the socket and every array
 * passed to the job are the job's: the loop keeps the socket paused (a byte
 * it reads meanwhile is a violation) and touches no landing. A callback
 * that throws would reach the addon (and end the process), so every
 * callback runs guarded: a throw closes this connection only.
 */
import type { BlockHashes, VolumeHandle } from '../blockstore/index.js';
import { BLOCK_SIZE, HASH_SIZE } from '../blockstore/index.js';
import { recvStream, type RecvStream, type RecvStreamEnd } from '../native/index.js';
import * as C from './codec.js';

/**
 * Streams at once over all connections, so that clients cannot keep the
 * pool from the store's own work: each holds a pool thread for as long as
 * the job may run (recv.cc kJobMs).
 */
const POOL_RECEIVES = 2;
let poolReceives = 0;
/** After a stalled payload, how long a connection reads payloads the ordinary way. */
const POOL_STALL_PAUSE_MS = 1000;
/** Landings kept on offer to a stream: the job may read a header before this thread hears of the last payload. */
const POOL_OFFERS = 2;

/** A landing and the hashes of its blocks, as the pool fills them. */
interface PoolSlot { landing: Buffer; hashed: BlockHashes }

/** A stream of WRITE payloads being received on the pool (STREAMING). */
interface PoolStream {
  native: RecvStream;
  /** The request whose payload the job is receiving (null once it stopped taking any). */
  current: (PoolSlot & { h: C.RequestHeader }) | null;
  /** Landings offered to the job and not taken yet, in order. */
  offered: PoolSlot[];
}

function poolSlot(landing: Buffer): PoolSlot {
  const n = landing.length / BLOCK_SIZE; // (a landing is whole blocks)
  return { landing, hashed: { hashes: Buffer.allocUnsafe(n * HASH_SIZE), zero: new Uint8Array(n) } };
}

/** How the loop takes the socket back when a stream is over (the hand-back rules above). */
export type HandBack =
  /** The job failed: the connection closes. */
  | { kind: 'failed'; err: Error }
  /** Stopped for a connection that is ending: nothing more is read. */
  | { kind: 'stopped' }
  /** WRITE `h`'s payload is in `landing` up to `filled`: the rest comes by direct reads. */
  | { kind: 'stalled'; h: C.RequestHeader; landing: Buffer; filled: number }
  /** Between requests: `leftover` (bytes of the next request) goes first into the receive queue. */
  | { kind: 'finished'; leftover: Buffer };

/** What a stream needs from its connection's transmission loop. */
export interface PoolHost {
  /** A landing for a payload like WRITE `h`'s, when the request is valid and the store can land it; else null. */
  landing(h: C.RequestHeader): Buffer | null;
  /** True while the loop takes new requests (not ending, within its limits): only then is a landing offered. */
  admitting(): boolean;
  /** True once the connection is ending other than by a graceful shutdown. */
  closing(): boolean;
  /** WRITE `h`'s payload is whole in `landing`, its blocks hashed into `hashed`: the write runs. */
  received(h: C.RequestHeader, landing: Buffer, hashed: BlockHashes): void;
  /** The stream is over (after step 1 of the hand-back): the loop takes the socket back. */
  handBack(back: HandBack): void;
  /** A callback threw (a bug): the connection closes. */
  crashed(err: unknown): void;
}

/** One connection's payloads received on the pool (see above). */
export class PoolReceiver {
  private stream: PoolStream | null = null;
  /** When a stream may start again (ms, Date.now): COOLING until then. */
  private coolUntil = 0;

  constructor(
    /** The plaintext socket's descriptor (null: never start). */
    private readonly socketFd: number | null,
    private readonly handle: VolumeHandle,
    private readonly host: PoolHost,
  ) {}

  /** STREAMING: the socket is the job's. */
  get active(): boolean {
    return this.stream !== null;
  }

  /** Whether `start` may be tried now (a descriptor, the process's share of the pool free, not COOLING). */
  mayStart(): boolean {
    return this.socketFd !== null && poolReceives < POOL_RECEIVES && Date.now() >= this.coolUntil;
  }

  /**
   * Receives the rest of landing `into` (from `have` on), WRITE `h`'s
   * payload, and the payloads of the big WRITEs that follow, on the pool;
   * offers landings ahead for the next ones. Call after `mayStart`, with the
   * socket paused and the stream counted in flight. False when the job
   * could not start (nothing was taken: the caller undoes both).
   */
  start(h: C.RequestHeader, into: Buffer, have: number): boolean {
    const first = poolSlot(into);
    let native: RecvStream;
    try {
      const guard = (fn: () => void): void => {
        try {
          fn();
        } catch (err) {
          this.host.crashed(err);
        }
      };
      native = recvStream(this.socketFd!, this.handle.size, into, first.hashed.hashes, first.hashed.zero, have,
        (_slot, header) => guard(() => (header === null ? this.payloadReceived() : this.nextTaken(header))),
        (err, end) => guard(() => this.ended(err, end)));
    } catch {
      return false;
    }
    poolReceives++;
    this.stream = { native, current: { h, ...first }, offered: [] };
    this.offerLandings(h);
    return true;
  }

  /** Asks the job to take on no further payload (the connection is ending); the hand-back follows. */
  stop(): void {
    this.stream?.native.stop();
  }

  /** Keeps POOL_OFFERS landings on offer for payloads like WRITE `h`'s, while the loop admits requests. */
  private offerLandings(h: C.RequestHeader): void {
    const s = this.stream!;
    while (s.offered.length < POOL_OFFERS && this.host.admitting()) {
      const landing = this.host.landing(h); // (h is valid, so its offset and length are: the next request's need only the same length)
      if (landing === null) return;
      const slot = poolSlot(landing);
      if (!s.native.offer(landing, slot.hashed.hashes, slot.hashed.zero)) {
        this.handle.abandon(landing);
        return;
      }
      s.offered.push(slot);
    }
  }

  /** The job received the current payload whole: its write runs. */
  private payloadReceived(): void {
    const s = this.stream!;
    const done = s.current!;
    s.current = null;
    this.host.received(done.h, done.landing, done.hashed);
  }

  /** The job took on the request with this header: its payload goes into the first landing offered. */
  private nextTaken(header: Buffer): void {
    const s = this.stream!;
    const h = C.decodeRequest(header)!; // (the job checked its magic)
    s.current = { h, ...s.offered.shift()! };
    this.offerLandings(h);
  }

  /** The job is over: landings go back or on, and the loop takes the socket back, as the hand-back rules say. */
  private ended(err: Error | null, end?: RecvStreamEnd): void {
    const s = this.stream!;
    this.stream = null;
    poolReceives--;
    for (const o of s.offered) this.handle.abandon(o.landing);
    const cur = s.current;
    if (err !== null || end === undefined || this.host.closing()) {
      if (cur !== null) this.handle.abandon(cur.landing);
      this.host.handBack(err !== null ? { kind: 'failed', err } : { kind: 'stopped' });
      return;
    }
    if (cur !== null) {
      this.coolUntil = Date.now() + POOL_STALL_PAUSE_MS;
      this.host.handBack({ kind: 'stalled', h: cur.h, landing: cur.landing, filled: end.filled });
      return;
    }
    this.host.handBack({ kind: 'finished', leftover: end.leftover });
  }
}
