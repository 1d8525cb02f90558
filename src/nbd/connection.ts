/**
 * One client connection: drives the handshake machine over the socket,
 * upgrades to TLS in-band, then hands the socket to the transmission loop.
 *
 * Lifecycle:
 *   GREETING -> HANDSHAKE (options; STARTTLS swaps the socket for a
 *   TLSSocket, tls.ts) -> TRANSMISSION -> CLOSING (flush on shutdown, close
 *   the handle, end or destroy the socket) -> CLOSED (`closed` resolves).
 *
 * Rules: nothing thrown here escapes `run()`; every failure ends this
 * connection only. The handle opened by GO/EXPORT_NAME is closed exactly
 * once, after the last request using it completed. During the handshake
 * the receive queue is bounded by pausing the socket. GREETING and
 * HANDSHAKE (the TLS handshake included) must be over within the
 * handshake timeout, else the socket is destroyed and the disconnect line
 * says `handshake timeout`; TRANSMISSION has no timeout.
 */
import type { Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import type { NbdBackend, NbdLogger } from './backend.js';
import { ByteQueue } from './bytequeue.js';
import * as C from './codec.js';
import { Handshake, type HandshakeStep, type NegotiatedExport, type TlsMode } from './handshake.js';
import * as P from './protocol.js';
import { Transmission, type EndReason, type TransmissionLimits, type TransmissionStats } from './transmission.js';
import { setSendBuffer } from '../native/index.js';
import { descriptorOf } from './node-internals.js';
import { largeReadSocket, type DirectReads } from './reader.js';
import type { PreparedUpgrade, TlsCredentials } from './tls.js';

/** Longest option payload we accept; more is treated as a DoS and closes. */
export const MAX_OPTION_DATA = 64 * 1024;
/** Receive-queue size during the handshake above which we stop reading. */
const HANDSHAKE_QUEUE_LIMIT = 4 * MAX_OPTION_DATA;
/** Socket send buffer asked for (a few 1 MiB replies). */
const SEND_BUFFER_BYTES = 4 * 1024 * 1024;
/** How long a graceful close may wait for the peer before the socket is destroyed. */
const CLOSE_GRACE_MS = 5000;

/** Everything a connection needs from its server. */
export interface ConnectionConfig {
  backend: NbdBackend;
  logger: NbdLogger;
  tlsMode: TlsMode;
  /** Present unless tlsMode is 'off'. */
  tls?: TlsCredentials;
  labelBy: 'export' | 'peer';
  defaultExport?: string;
  limits: TransmissionLimits;
  handshakeTimeoutMs: number;
}

/** One NBD client connection. */
export class Connection {
  /** Resolves once the socket is closed and the handle released. */
  readonly closed: Promise<void>;
  private socket: Duplex;
  private readonly queue = new ByteQueue();
  private readonly hs: Handshake;
  private transmission: Transmission | null = null;
  private waiter: (() => void) | null = null;
  private eof = false;
  private paused = false;
  private exportName = '-';
  private endReason: string = 'closed';
  /** The handshake timeout fired: its reason outlives what the cut makes the handshake see. */
  private timedOut = false;
  private shuttingDown = false;
  private readonly name: string;
  private readonly peer: string;
  private readonly onData = (chunk: Buffer): void => this.receive(chunk);
  private readonly onEof = (): void => this.markEof();
  private socketClosed!: () => void;
  private readonly socketClosedEvent = new Promise<void>((resolve) => (this.socketClosed = resolve));
  private readonly onClose = (): void => {
    this.markEof();
    this.socketClosed();
  };

  /** The accepted socket (or the one reading it in large slabs, see reader.ts). */
  private readonly raw: Socket;
  /** Reads straight into WRITE payload buffers (plaintext connections, see reader.ts). */
  private readonly direct: DirectReads | null;

  constructor(id: number, accepted: Socket, private readonly cfg: ConnectionConfig) {
    this.name = `conn#${id}`;
    this.peer = accepted.remoteAddress !== undefined ? `${accepted.remoteAddress}:${accepted.remotePort}` : 'unix';
    // Without TLS the connection reads in large slabs; a TLS socket reads the accepted one its own way.
    const large = cfg.tlsMode === 'off' ? largeReadSocket(accepted, this.queue, this.onData) : null;
    this.queue.transient = large !== null;
    this.direct = large?.direct ?? null;
    const raw = large?.socket ?? accepted;
    this.raw = raw;
    this.socket = raw;
    this.hs = new Handshake({ backend: cfg.backend, tlsMode: cfg.tlsMode, defaultExport: cfg.defaultExport, logger: cfg.logger });
    this.closed = this.run().catch((err: unknown) => {
      cfg.logger.error(`nbd: ${this.name}: unexpected failure`, err, { conn: this.name, client: this.peer });
      raw.destroy();
    });
  }

  /** Server shutdown: a handshaking client is dropped, a transmitting one finishes its requests. */
  shutdown(): Promise<void> {
    this.shuttingDown = true;
    if (this.transmission !== null) this.transmission.shutdown();
    else this.raw.destroy();
    return this.closed;
  }

  private attach(s: Duplex): void {
    s.on('data', this.onData);
    s.on('end', this.onEof);
    s.on('close', this.onClose);
    s.on('error', this.onEof);
  }

  private receive(chunk: Buffer): void {
    this.queue.push(chunk);
    if (this.transmission !== null) {
      this.transmission.onData();
      return;
    }
    if (this.queue.length > HANDSHAKE_QUEUE_LIMIT && !this.paused) {
      this.paused = true;
      this.socket.pause();
    }
    this.wake();
  }

  private markEof(): void {
    this.eof = true;
    this.transmission?.onClose();
    this.wake();
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Waits until `n` bytes are queued; false on EOF. */
  private async need(n: number): Promise<boolean> {
    while (this.queue.length < n) {
      if (this.eof) return false;
      if (this.paused) {
        this.paused = false;
        this.socket.resume();
      }
      await new Promise<void>((resolve) => (this.waiter = resolve));
    }
    return true;
  }

  private write(bufs: Buffer[]): void {
    if (!this.socket.writable) return;
    if (bufs.length === 1) this.socket.write(bufs[0]);
    else if (bufs.length > 1) this.socket.write(Buffer.concat(bufs));
  }

  private async run(): Promise<void> {
    this.cfg.logger.info(`nbd: ${this.name} connected from ${this.peer}`, { event: 'connect', conn: this.name, client: this.peer });
    this.raw.setNoDelay(true);
    this.widenSendBuffer();
    this.attach(this.raw);
    const deadline = setTimeout(() => this.handshakeTimedOut(), this.cfg.handshakeTimeoutMs);
    deadline.unref();
    this.socket.write(this.hs.greeting());
    const exp = await this.handshake();
    clearTimeout(deadline);
    let stats = '';
    if (exp !== null) {
      this.exportName = exp.name;
      this.cfg.logger.info(`nbd: ${this.name} opened export=${exp.name} client=${this.peer}${exp.readOnly ? ' read-only' : ''}`,
        { event: 'open', conn: this.name, client: this.peer, export: exp.name, readOnly: exp.readOnly, size: exp.size });
      const reason = await this.transmit(exp);
      stats = this.statsText();
      await this.release(exp, reason);
    }
    await this.socketClosedEvent;
    this.cfg.logger.info(`nbd: ${this.name} disconnected export=${this.exportName} reason=${this.endReason}${stats} client=${this.peer}`, {
      event: 'close', conn: this.name, client: this.peer, export: this.exportName, reason: this.endReason, ...this.transmission?.stats,
    });
  }

  /** The export this connection transmits on and its counters so far; null before transmission. */
  usage(): { exportName: string; stats: TransmissionStats } | null {
    return this.transmission ? { exportName: this.exportName, stats: this.transmission.stats } : null;
  }

  private handshakeTimedOut(): void {
    this.timedOut = true;
    this.endReason = 'handshake timeout';
    const seconds = this.cfg.handshakeTimeoutMs / 1000;
    this.cfg.logger.info(`nbd: ${this.name} handshake not finished within ${seconds} s (client ${this.peer}): disconnecting`,
      { level: 'warn', conn: this.name, client: this.peer });
    this.hardClose();
  }

  /** The plaintext socket's descriptor, or null when Node does not expose it (node-internals.ts). */
  private socketFd(): number | null {
    return descriptorOf(this.raw);
  }

  /**
   * A 1 MiB read reply does not fit the default socket send buffer
   * (net.core.wmem_default): it leaves in several writes, each waiting for
   * the client to drain the last. A send buffer of SEND_BUFFER_BYTES lets a
   * whole reply go at once. Best effort: the kernel caps it at wmem_max.
   */
  private widenSendBuffer(): void {
    const fd = this.socketFd();
    if (fd === null) return;
    try {
      setSendBuffer(fd, SEND_BUFFER_BYTES);
    } catch {
      // not a socket we can tune: keep the default
    }
  }

  /** Runs option haggling; returns the export to serve, or null when the connection should close. */
  private async handshake(): Promise<NegotiatedExport | null> {
    if (!(await this.need(4))) return this.quit('eof in handshake');
    const flags = this.queue.take(4).readUInt32BE(0);
    let step: HandshakeStep = this.hs.clientFlags(flags);
    for (;;) {
      // STARTTLS reads what TLS needs before its ACK: the client's TLS hello follows the ACK at once.
      const prepared = step.next === 'starttls' ? await this.cfg.tls?.prepare() ?? 'TLS not configured' : null;
      if (typeof prepared === 'string') return this.quit(prepared);
      this.write(step.replies);
      switch (step.next) {
        case 'close':
          return this.quit(step.reason, true);
        case 'transmit':
          if (this.shuttingDown || this.eof) {
            await step.export.handle.close().catch((err) => this.cfg.logger.error(`nbd: ${this.name}: close failed`, err, { conn: this.name }));
            return this.quit('closed during handshake');
          }
          return step.export;
        case 'starttls': {
          const failure = await this.upgradeTls(prepared!);
          if (failure !== null) return this.quit(failure);
          this.hs.tlsStarted();
          break;
        }
        case 'continue':
          break;
      }
      if (this.shuttingDown) return this.quit('shutdown');
      if (!(await this.need(P.OPTION_HEADER_SIZE))) return this.quit('eof in handshake');
      const head = C.decodeOptionHeader(this.queue.peek(P.OPTION_HEADER_SIZE), this.queue.peekOffset());
      if (head === null) return this.quit('bad option magic');
      if (head.length > MAX_OPTION_DATA) return this.quit(`option ${head.option} with ${head.length} bytes`);
      if (!(await this.need(P.OPTION_HEADER_SIZE + head.length))) return this.quit('eof in handshake');
      this.queue.skip(P.OPTION_HEADER_SIZE);
      const data = this.queue.take(head.length);
      step = await this.hs.option(head.option, data);
    }
  }

  /** Ends the handshake: `graceful` lets queued replies (ABORT's ACK) reach the peer first. */
  private quit(reason: string, graceful = false): null {
    if (!this.timedOut) this.endReason = reason;
    if (graceful && this.socket.writable) this.endGracefully();
    else this.hardClose();
    return null;
  }

  private endGracefully(): void {
    this.socket.end();
    setTimeout(() => this.hardClose(), CLOSE_GRACE_MS).unref();
  }

  private hardClose(): void {
    this.socket.destroy();
    this.raw.destroy();
  }

  /** Swaps the plaintext socket for a server-side TLSSocket after the STARTTLS ACK; returns why it failed, or null. */
  private async upgradeTls(prepared: PreparedUpgrade): Promise<string | null> {
    if (this.queue.length > 0) return 'data after STARTTLS before the TLS handshake';
    if (this.eof) return 'eof in handshake';
    const raw = this.raw;
    raw.removeListener('data', this.onData);
    raw.removeListener('end', this.onEof);
    const outcome = await prepared.upgrade(raw);
    if (!outcome.ok) return outcome.reason;
    this.cfg.logger.info(`nbd: ${this.name} ${outcome.summary}`, { conn: this.name, client: this.peer });
    this.socket = outcome.socket;
    this.attach(outcome.socket);
    return null;
  }

  private transmit(exp: NegotiatedExport): Promise<EndReason> {
    const label = this.cfg.labelBy === 'peer' && this.raw.remoteAddress !== undefined ? this.raw.remoteAddress : exp.name;
    // After STARTTLS the TLS socket reads on its own: no direct reads then, and no sendfile replies.
    const plain = this.socket === this.raw;
    const direct = plain ? this.direct : null;
    const t = new Transmission(this.socket, this.queue, exp, label, this.cfg.limits, this.cfg.logger, this.name, direct,
      plain ? this.socketFd() : null);
    this.transmission = t;
    if (this.paused) {
      this.paused = false;
      this.socket.resume();
    }
    if (this.shuttingDown) t.shutdown();
    if (this.queue.length > 0) t.onData();
    if (this.eof) t.onClose();
    return t.done;
  }

  private statsText(): string {
    const s = this.transmission?.stats;
    if (s === undefined) return '';
    return ` requests=${s.requests} reads=${s.reads} writes=${s.writes} bytesRead=${s.bytesRead} bytesWritten=${s.bytesWritten} bytesFromFiles=${s.bytesFromFiles} bytesOnPool=${s.bytesOnPool} errors=${s.errors}`;
  }

  /** After the last request: flush on shutdown, close the handle, close the socket. */
  private async release(exp: NegotiatedExport, reason: EndReason): Promise<void> {
    this.endReason = reason;
    const log = (what: string) => (err: unknown) => this.cfg.logger.error(`nbd: ${this.name}: ${what} failed`,
      err, { conn: this.name, export: exp.name });
    if (reason === 'shutdown') await exp.handle.flush().catch(log('flush'));
    await exp.handle.close().catch(log('close'));
    if ((reason === 'disc' || reason === 'shutdown') && this.socket.writable) this.endGracefully();
    else this.hardClose();
  }
}
