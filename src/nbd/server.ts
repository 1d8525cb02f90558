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
 */
import { promises as fs, readFileSync } from 'node:fs';
import * as net from 'node:net';
import * as tls from 'node:tls';
import { consoleLogger, type NbdBackend, type NbdLogger } from './backend.js';
import { Connection } from './connection.js';
import type { TlsMode } from './handshake.js';
import { DEFAULT_LIMITS, type TransmissionLimits } from './transmission.js';

/** TLS configuration: x509 certificate and key in PEM files. */
export interface NbdTlsOptions {
  /** off: NOTLS; on: TLS optional; require: every option needs TLS first. */
  mode: TlsMode;
  certFile?: string;
  keyFile?: string;
}

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
  /** Whole handshake must finish within this time (default 30 s). */
  handshakeTimeoutMs?: number;
  /** Concurrent connections accepted per listener (default 1024). */
  maxConnections?: number;
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
  private nextId = 1;
  private closing: Promise<void> | null = null;
  private readonly logger: NbdLogger;
  private readonly secureContext?: tls.SecureContext;
  private readonly limits: TransmissionLimits;

  constructor(private readonly opts: NbdServerOptions) {
    this.logger = opts.logger ?? consoleLogger;
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    const mode = opts.tls?.mode ?? 'off';
    if (mode !== 'off') {
      const { certFile, keyFile } = opts.tls ?? {};
      if (certFile === undefined || keyFile === undefined) throw new Error(`tls mode '${mode}' needs certFile and keyFile`);
      this.secureContext = tls.createSecureContext({
        cert: readFileSync(certFile),
        key: readFileSync(keyFile),
        minVersion: 'TLSv1.2',
      });
    }
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
    return out;
  }

  /** Live connections (handshaking or transmitting). */
  get connectionCount(): number {
    return this.connections.size;
  }

  /** Stops accepting, lets every connection finish its in-flight requests and flush, closes them. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      const stopAccepting = this.closeListeners();
      await Promise.all([...this.connections].map((c) => c.shutdown()));
      await stopAccepting;
    })();
    return this.closing;
  }

  private createListener(): net.Server {
    const s = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    s.maxConnections = this.opts.maxConnections ?? 1024;
    s.on('error', (err) => { if (s.listening) this.logger.error('nbd: listener error', err); }); // listen() failures are listen()'s to report
    this.listeners.push(s);
    return s;
  }

  private accept(socket: net.Socket): void {
    if (this.closing !== null) {
      socket.destroy();
      return;
    }
    const conn = new Connection(this.nextId++, socket, {
      backend: this.opts.backend,
      logger: this.logger,
      tlsMode: this.opts.tls?.mode ?? 'off',
      secureContext: this.secureContext,
      labelBy: this.opts.labelBy ?? 'export',
      defaultExport: this.opts.defaultExport,
      limits: this.limits,
      handshakeTimeoutMs: this.opts.handshakeTimeoutMs ?? 30_000,
    });
    this.connections.add(conn);
    void conn.closed.finally(() => this.connections.delete(conn));
  }

  private async closeListeners(): Promise<void> {
    const ls = this.listeners.splice(0);
    await Promise.all(ls.map((s) => new Promise<void>((resolve) => (s.listening ? s.close(() => resolve()) : resolve()))));
  }
}
