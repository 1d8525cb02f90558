/**
 * Test helpers: a temp store served over a Unix socket, a bounded runner for
 * real client tools, and a minimal raw NBD client for byte-level tests.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import * as net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Store, type StoreOptions } from '../../src/blockstore/index.js';
import { ByteQueue } from '../../src/nbd/bytequeue.js';
import * as C from '../../src/nbd/codec.js';
import { NbdServer, StoreBackend, type NbdLogger, type NbdServerOptions } from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';

export const MiB = 1024 * 1024;

/** A logger that keeps lines for assertions. */
export function memoryLogger(): NbdLogger & { lines: string[]; errors: string[] } {
  const lines: string[] = [];
  const errors: string[] = [];
  return { lines, errors, info: (l) => lines.push(l), error: (l) => errors.push(l) };
}

/** A temp dir removed by the returned cleanup. */
export function tempDir(prefix: string): string {
  return mkdtempSync(path.join(tmpdir(), `dormant-${prefix}-`));
}

/** Runs a tool; resolves with stdout, rejects (with stderr) on nonzero exit or timeout. */
export function run(cmd: string, args: string[], timeoutMs = 60_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 64 * MiB, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')} failed: ${err.message}\n${stderr}`));
      else resolve(stdout);
    });
  });
}

/** Runs a tool that is expected to fail; resolves with its combined output. */
export function runFailing(cmd: string, args: string[], timeoutMs = 30_000): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL' }, (err, stdout, stderr) => {
      // A tool that cannot start (not installed) is a failure of the test, not the expected refusal.
      if (err && (err as NodeJS.ErrnoException).code === 'ENOENT') reject(new Error(`${cmd} is not installed`));
      else if (err && !err.killed) resolve(`${stdout}${stderr}`);
      else reject(new Error(`${cmd} ${args.join(' ')} unexpectedly ${err ? 'timed out' : 'succeeded'}: ${stdout}${stderr}`));
    });
  });
}

/** A store in a temp dir served over a Unix socket there. */
export interface Served {
  dir: string;
  store: Store;
  server: NbdServer;
  socketPath: string;
  logger: ReturnType<typeof memoryLogger>;
  uri(exportName: string): string;
  close(): Promise<void>;
}

/** Creates a store and an NBD server over it; `setup` fills the store first. */
export async function serveStore(
  prefix: string,
  setup: (store: Store) => Promise<void>,
  extra: Partial<NbdServerOptions> = {},
  storeOptions: StoreOptions = {},
): Promise<Served> {
  const dir = tempDir(prefix);
  const store = await Store.init(path.join(dir, 'store'), storeOptions);
  await setup(store);
  const logger = memoryLogger();
  const socketPath = path.join(dir, 'nbd.sock');
  const server = new NbdServer({ backend: new StoreBackend(store), socketPath, logger, ...extra });
  await server.listen();
  return {
    dir,
    store,
    server,
    socketPath,
    logger,
    uri: (name) => `nbd+unix:///${name}?socket=${socketPath}`,
    close: async () => {
      await server.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Writes `data` into a volume through a store handle. */
export async function fillVolume(store: Store, name: string, data: Buffer, offset = 0): Promise<void> {
  const h = await store.openVolume(name);
  for (let pos = 0; pos < data.length; pos += 4 * MiB) await h.write(offset + pos, data.subarray(pos, pos + 4 * MiB));
  await h.flush();
  await h.close();
}

/** Deterministic pseudo-random bytes (xorshift32). */
export function seededBytes(n: number, seed: number): Buffer {
  const b = Buffer.allocUnsafe(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i += 4) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    if (i + 4 <= n) b.writeUInt32LE(x, i);
    else for (let j = i; j < n; j++) b[j] = (x >>> (8 * (j - i))) & 0xff;
  }
  return b;
}

/** One option reply as a raw client sees it. */
export interface OptReply {
  option: number;
  type: number;
  data: Buffer;
}

/** A bare-bones NBD client over one socket, for byte-level tests. */
export class RawClient {
  private readonly q = new ByteQueue();
  private waiter: (() => void) | null = null;
  ended = false;
  readonly endedPromise: Promise<void>;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (c: Buffer) => {
      this.q.push(c);
      this.wake();
    });
    this.endedPromise = new Promise((resolve) => {
      const end = (): void => {
        this.ended = true;
        this.wake();
        resolve();
      };
      socket.on('end', end);
      socket.on('close', end);
      socket.on('error', end);
    });
  }

  private wake(): void {
    const w = this.waiter;
    this.waiter = null;
    w?.();
  }

  /** Connects over a Unix socket and reads the greeting. */
  static connect(socketPath: string): Promise<RawClient> {
    return RawClient.greeted(net.connect(socketPath));
  }

  /** Connects over TCP and reads the greeting. */
  static connectTcp(host: string, port: number): Promise<RawClient> {
    return RawClient.greeted(net.connect({ host, port }));
  }

  private static async greeted(socket: net.Socket): Promise<RawClient> {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    const c = new RawClient(socket);
    const g = await c.read(P.GREETING_SIZE);
    if (g.readBigUInt64BE(0) !== P.NBDMAGIC || g.readBigUInt64BE(8) !== P.IHAVEOPT) throw new Error('bad greeting');
    return c;
  }

  /** Reads exactly n bytes; rejects on EOF or after `timeoutMs`. */
  async read(n: number, timeoutMs = 10_000): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.q.length < n) {
      if (this.ended) throw new Error(`EOF after ${this.q.length} of ${n} bytes`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timeout waiting for ${n} bytes`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(t);
          resolve();
        };
      });
    }
    return Buffer.from(this.q.take(n));
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Sends client flags (default fixed newstyle + no zeroes). */
  sendFlags(flags = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES): void {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(flags, 0);
    this.write(b);
  }

  async readOptReply(): Promise<OptReply> {
    const h = await this.read(P.OPTION_REPLY_HEADER_SIZE);
    if (h.readBigUInt64BE(0) !== P.NBD_REP_MAGIC) throw new Error('bad option reply magic');
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(len) };
  }

  /** Sends an option and collects replies up to ACK or an error. */
  async option(option: number, data?: Buffer): Promise<OptReply[]> {
    this.write(C.encodeOption(option, data));
    const out: OptReply[] = [];
    for (;;) {
      const r = await this.readOptReply();
      out.push(r);
      if (r.type === P.NBD_REP_ACK || (r.type & P.NBD_REP_FLAG_ERROR) !== 0) return out;
    }
  }

  /** Full handshake to `name`; returns size and transmission flags. */
  async go(name: string, opts: { structured?: boolean; meta?: boolean } = {}): Promise<{ size: number; flags: number }> {
    this.sendFlags();
    if (opts.structured) await this.option(P.NBD_OPT_STRUCTURED_REPLY);
    if (opts.meta) await this.option(P.NBD_OPT_SET_META_CONTEXT, C.encodeMetaContextRequest(name, [P.BASE_ALLOCATION]));
    const replies = await this.option(P.NBD_OPT_GO, C.encodeExportRequest(name, []));
    const last = replies[replies.length - 1];
    if (last.type !== P.NBD_REP_ACK) throw new Error(`GO failed: 0x${last.type.toString(16)}`);
    const info = replies.find((r) => r.type === P.NBD_REP_INFO && r.data.readUInt16BE(0) === P.NBD_INFO_EXPORT)!;
    return { size: Number(info.data.readBigUInt64BE(2)), flags: info.data.readUInt16BE(10) };
  }

  /** Sends one request (and its payload). */
  request(type: number, cookie: bigint, offset: bigint | number, length: number, flags = 0, payload?: Buffer): void {
    const h = C.encodeRequest({ type, flags, cookie, offset: BigInt(offset), length });
    this.write(payload ? Buffer.concat([h, payload]) : h);
  }

  /** Reads a simple reply; `dataLen(cookie)` says how many data bytes follow a successful one. */
  async simpleReply(dataLen: (cookie: bigint) => number = () => 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(P.SIMPLE_REPLY_SIZE);
    const r = C.decodeReplyHeader(h);
    if (r === null || r.kind !== 'simple') throw new Error(`expected a simple reply, got ${h.toString('hex')}`);
    const data = r.error === 0 ? await this.read(dataLen(r.cookie)) : Buffer.alloc(0);
    return { error: r.error, cookie: r.cookie, data };
  }

  /** Reads any reply header (simple or chunk) plus a chunk's payload. */
  async anyReply(): Promise<{ kind: 'simple' | 'chunk'; flags: number; type: number; error: number; cookie: bigint; payload: Buffer }> {
    const m = await this.read(4);
    const magic = m.readUInt32BE(0);
    if (magic === P.NBD_SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(12);
      return { kind: 'simple', flags: 0, type: 0, error: rest.readUInt32BE(0), cookie: rest.readBigUInt64BE(4), payload: Buffer.alloc(0) };
    }
    if (magic !== P.NBD_STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic ${magic.toString(16)}`);
    const rest = await this.read(16);
    const payload = await this.read(rest.readUInt32BE(12));
    const type = rest.readUInt16BE(2);
    const error = type & 0x8000 ? payload.readUInt32BE(0) : 0;
    return { kind: 'chunk', flags: rest.readUInt16BE(0), type, error, cookie: rest.readBigUInt64BE(4), payload };
  }

  /** Resolves true if the server closes the connection within `ms`. */
  async closedWithin(ms: number): Promise<boolean> {
    if (this.ended) return true;
    return Promise.race([this.endedPromise.then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))]);
  }

  destroy(): void {
    this.socket.destroy();
  }
}
