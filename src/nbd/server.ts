/**
 * The NBD server: owns the listening sockets and the set of connections.
 * Protocol work happens in Connection (handshake, TLS, transmission).
 *
 * States: NEW -> LISTENING (`listen`) -> CLOSING (`close`: listeners stop
 * accepting; each connection finishes its in-flight requests, flushes,
 * releases its handle and closes) -> CLOSED.
 *
 * A stale Unix socket file (nobody accepting on it) is removed before
 * listening; a live one makes `listen` fail with EADDRINUSE.
 *
 * Admission: connections are counted over all listeners, from accept until
 * their socket is closed. One accepted while `maxConnections` are open is
 * destroyed at once, before the greeting. Refusals are logged at most once
 * per REFUSAL_LOG_INTERVAL_MS: the first at once, later ones counted into
 * a summary line written when the interval is over (or at `close`), so a
 * flood of connections cannot flood the log.
 */
import { promises as fs, readFileSync } from 'node:fs';
import * as net from 'node:net';
import { consoleLogger, type NbdBackend, type NbdLogger } from './backend.js';
import { Connection } from './connection.js';
import { TlsCredentials, type NbdTlsOptions } from './tls.js';
import { DEFAULT_LIMITS, type TransmissionLimits, type TransmissionStats } from './transmission.js';

export type { NbdTlsOptions } from './tls.js';

/** Time a client has from connecting to the end of option haggling (TLS included). */
export const DEFAULT_HANDSHAKE_TIMEOUT_MS = 10_000;
/** Connections open at once, over all listeners, unless the open-file limit is lower (defaultMaxConnections). */
export const DEFAULT_MAX_CONNECTIONS = 1000;
/** Longest delay setTimeout keeps (a longer one fires at once). */
const MAX_TIMER_MS = 2 ** 31 - 1;
/** Connection refusals are logged at most once per this interval. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

/** How to run an NBD server. */
export interface NbdServerOptions {
  backend: NbdBackend;
  /** Listen on TCP (port 0 picks a free port). */
  tcp?: { host: string; port: number };
  /** Listen on a Unix socket. */
  socketPath?: string;
  tls?: NbdTlsOptions;
  /** Read fingerprint label: the export name (default) or the client's address. */
  labelBy?: 'export' | 'peer';
  /** Export served for the empty name; none by default. */
  defaultExport?: string;
  logger?: NbdLogger;
  limits?: Partial<TransmissionLimits>;
  /** Time from accept to the end of the handshake, TLS included (default DEFAULT_HANDSHAKE_TIMEOUT_MS). */
  handshakeTimeoutMs?: number;
  /** Connections open at once over all listeners; more are closed at once (default defaultMaxConnections()). */
  maxConnections?: number;
}

/**
 * DEFAULT_MAX_CONNECTIONS, or half the process's open-file limit when that
 * is lower: each connection holds a descriptor, and the store, the FUSE
 * view and the VMs need the rest.
 */
export function defaultMaxConnections(): number {
  let soft = Infinity;
  try {
    const m = /^Max open files\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    if (m !== null && m[1] !== 'unlimited') soft = Number(m[1]);
  } catch {
    // no /proc: keep the default
  }
  return Math.max(1, Math.min(DEFAULT_MAX_CONNECTIONS, Math.floor(soft / 2)));
}

/** True for addresses only this host can reach. */
export function isLoopback(host: string): boolean {
  return /^127\./.test(host) || host === '::1' || /^::ffff:127\./i.test(host) || host === 'localhost';
}

/** Where the server listens once started. */
export interface NbdAddresses {
  tcp?: { host: string; port: number };
  socketPath?: string;
}

async function removeStaleSocket(path: string): Promise<void> {
  const st = await fs.lstat(path).catch(() => null);
  if (st === null || !st.isSocket()) return;
  const live = await new Promise<boolean>((resolve) => {
    const c = net.connect(path);
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
  if (!live) await fs.unlink(path).catch(() => {});
}

function listenOn(server: net.Server, arg: net.ListenOptions): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(arg, () => {
      server.removeListener('error', reject);
      resolve();
    });
  });
}

/** An NBD server over TCP and/or a Unix socket. */
export class NbdServer {
  private readonly listeners: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  /** Counters of the connections that ended, per export. */
  private readonly ended = new Map<string, TransmissionStats>();
  private nextId = 1;
  private closing: Promise<void> | null = null;
  private readonly logger: NbdLogger;
  private readonly tls?: TlsCredentials;
  private readonly limits: TransmissionLimits;
  private readonly maxConnections: number;
  /** Refusals since the last refusal line, and when that line was written. */
  private refusedUnlogged = 0;
  private lastRefusalLog = -Infinity;
  private refusalTimer: NodeJS.Timeout | null = null;

  /** Checks the options and reads the TLS files; throws an Error saying what is wrong. */
  constructor(private readonly opts: NbdServerOptions) {
    this.logger = opts.logger ?? consoleLogger;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    this.maxConnections = opts.maxConnections ?? defaultMaxConnections();
    if (!Number.isInteger(this.maxConnections) || this.maxConnections < 1) throw new Error('maxConnections must be a whole number ≥ 1');
    const timeout = opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS;
    if (!(timeout > 0 && timeout <= MAX_TIMER_MS)) throw new Error(`handshakeTimeoutMs must be > 0 and ≤ ${MAX_TIMER_MS}`);
    if ((opts.tls?.mode ?? 'off') !== 'off') this.tls = TlsCredentials.load(opts.tls!);
  }

  /** Starts listening; resolves with the bound addresses. */
  async listen(): Promise<NbdAddresses> {
    if (this.opts.tcp === undefined && this.opts.socketPath === undefined) throw new Error('nothing to listen on');
    const out: NbdAddresses = {};
    try {
      if (this.opts.tcp !== undefined) {
        const s = this.createListener();
        await listenOn(s, { host: this.opts.tcp.host, port: this.opts.tcp.port });
        const a = s.address() as net.AddressInfo;
        out.tcp = { host: a.address, port: a.port };
      }
      if (this.opts.socketPath !== undefined) {
        await removeStaleSocket(this.opts.socketPath);
        const s = this.createListener();
        await listenOn(s, { path: this.opts.socketPath });
        out.socketPath = this.opts.socketPath;
      }
    } catch (err) {
      await this.closeListeners();
      throw err;
    }
    for (const w of this.tls?.warnings ?? []) this.logger.info(`nbd: warning: ${w}`, { level: 'warn' });
    if (out.tcp !== undefined && !isLoopback(out.tcp.host)) this.warnExposed(out.tcp);
    return out;
  }

  /** One warning line when TCP beyond loopback lets clients in without TLS or unauthenticated. */
  private warnExposed(tcp: { host: string; port: number }): void {
    const where = `NBD on TCP ${tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host}:${tcp.port}`;
    const mode = this.opts.tls?.mode ?? 'off';
    const auth = this.tls?.clientAuth ?? 'none';
    let why: string | null = null;
    if (mode === 'off') why = 'without TLS: anyone who reaches it can list, read and write every export';
    else if (mode === 'on') why = 'with TLS optional (--tls on): clients that skip STARTTLS are neither encrypted nor authenticated';
    else if (auth === 'none') why = 'with TLS but no client authentication: anyone who reaches it can connect';
    if (why !== null) {
      this.logger.info(`nbd: warning: ${where} ${why} (use --tls require with --tls-verify-peer or --tls-psk)`, { level: 'warn' });
    }
  }

  /** Live connections (handshaking or transmitting). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Counters per export since the server started: connections that ended
   * plus the live ones (`connections`: live ones transmitting on it).
   */
  exportStats(): Map<string, ExportStats> {
    const out = new Map<string, ExportStats>();
    for (const [name, s] of this.ended) out.set(name, { ...s, connections: 0 });
    for (const c of this.connections) {
      const u = c.usage();
      if (!u) continue;
      const cur = out.get(u.exportName) ?? { ...zeroStats(), connections: 0 };
      addStats(cur, u.stats);
      cur.connections++;
      out.set(u.exportName, cur);
    }
    return out;
  }

  /** Stops accepting, lets every connection finish its in-flight requests and flush, closes them. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopAccepting = this.closeListeners();
      this.logRefusals();
      await Promise.all([...this.connections].map((c) => c.shutdown()));
      await stopAccepting;
    })();
    return this.closing;
  }

  private createListener(): net.Server {
    const s = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    s.on('error', (err) => { if (s.listening) this.logger.error('nbd: listener error', err); }); // listen() failures are listen()'s to report
    this.listeners.push(s);
    return s;
  }

  private accept(socket: net.Socket): void {
    if (this.closing !== null) {
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.maxConnections) {
      this.refuse(socket);
      return;
    }
    const conn = new Connection(this.nextId++, socket, {
      backend: this.opts.backend,
      logger: this.logger,
      tlsMode: this.opts.tls?.mode ?? 'off',
      tls: this.tls,
      labelBy: this.opts.labelBy ?? 'export',
      defaultExport: this.opts.defaultExport,
      limits: this.limits,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? DEFAULT_HANDSHAKE_TIMEOUT_MS,
    });
    this.connections.add(conn);
    void conn.closed.finally(() => {
      this.connections.delete(conn);
      const u = conn.usage();
      if (!u) return;
      const total = this.ended.get(u.exportName) ?? zeroStats();
      addStats(total, u.stats);
      this.ended.set(u.exportName, total);
    });
  }

  /** Closes a connection beyond the limit at once; logs it unless a refusal was logged within the interval. */
  private refuse(socket: net.Socket): void {
    const peer = socket.remoteAddress !== undefined ? `${socket.remoteAddress}:${socket.remotePort}` : 'unix';
    socket.destroy();
    const now = Date.now();
    if (now - this.lastRefusalLog >= REFUSAL_LOG_INTERVAL_MS && this.refusedUnlogged === 0) {
      this.lastRefusalLog = now;
      const open = this.connections.size;
      this.logger.info(`nbd: refused a connection from ${peer}: ${open} connections open, the limit (max connections ${this.maxConnections})`,
        { level: 'warn', client: peer, open, maxConnections: this.maxConnections });
      return;
    }
    this.refusedUnlogged++;
    this.refusalTimer ??= setTimeout(() => this.logRefusals(), this.lastRefusalLog + REFUSAL_LOG_INTERVAL_MS - now);
    this.refusalTimer.unref();
  }

  /** Writes the summary of refusals not logged yet, if any. */
  private logRefusals(): void {
    if (this.refusalTimer !== null) clearTimeout(this.refusalTimer);
    this.refusalTimer = null;
    const n = this.refusedUnlogged;
    if (n === 0) return;
    this.refusedUnlogged = 0;
    const since = Math.round((Date.now() - this.lastRefusalLog) / 1000);
    this.lastRefusalLog = Date.now();
    this.logger.info(`nbd: refused ${n} more connection${n === 1 ? '' : 's'} in the last ${since} s (max connections ${this.maxConnections})`,
      { level: 'warn', refused: n, seconds: since, maxConnections: this.maxConnections });
  }

  private async closeListeners(): Promise<void> {
    const ls = this.listeners.splice(0);
    await Promise.all(ls.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
  }
}

/** Counters of one export (ExportStats) and its live connections. */
export interface ExportStats extends TransmissionStats {
  connections: number;
}

function zeroStats(): TransmissionStats {
  return { requests: 0, reads: 0, writes: 0, bytesRead: 0, bytesWritten: 0, bytesFromFiles: 0, bytesOnPool: 0, errors: 0 };
}

/** Adds the counters of `s` to `into` (which may carry more fields, such as an export's connections). */
function addStats(into: TransmissionStats, s: TransmissionStats): void {
  for (const k of Object.keys(s) as Array<keyof TransmissionStats>) into[k] += s[k];
}

