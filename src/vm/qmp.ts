/**
 * A minimal QMP client (QEMU Machine Protocol) over a Unix socket: reads the
 * greeting, negotiates capabilities, then runs commands (each with an `id`,
 * so an answer that comes after its command timed out is dropped instead of
 * being taken for the next command's) and hands every event to `onEvent`.
 * The supervisor keeps one per running VM for QEMU's whole life (QEMU
 * serves one QMP client at a time). Every wait is bounded by `timeoutMs`.
 */
import net from 'node:net';

/** A QMP event: its name, its data, and when QEMU sent it (ms since the epoch). */
export interface QmpEvent {
  event: string;
  data: Record<string, unknown>;
  at: number;
}

/** A connected QMP session. */
export class QmpClient {
  private buf = '';
  private nextId = 1;
  private readonly waiting = new Map<number, (msg: Record<string, unknown>) => void>();
  private greeting?: (msg: Record<string, unknown>) => void;
  private closed = false;
  private readonly closeHandlers: Array<() => void> = [];
  /** Called for each event QEMU sends (set before the first command to miss none). */
  onEvent: (e: QmpEvent) => void = () => undefined;

  private constructor(private readonly sock: net.Socket) {
    sock.setEncoding('utf8');
    sock.on('data', (d: string) => {
      this.buf += d;
      let nl: number;
      while ((nl = this.buf.indexOf('\n')) >= 0) {
        const line = this.buf.slice(0, nl).trim();
        this.buf = this.buf.slice(nl + 1);
        if (!line) continue;
        let msg: Record<string, unknown>;
        try { msg = JSON.parse(line) as Record<string, unknown>; } catch { continue; }
        this.dispatch(msg);
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closed = true;
      const gone = { error: { desc: 'QMP connection closed' } };
      this.greeting?.(gone);
      for (const w of [...this.waiting.values()]) w(gone);
      this.waiting.clear();
      for (const h of this.closeHandlers.splice(0)) h();
    });
  }

  private dispatch(msg: Record<string, unknown>): void {
    if (typeof msg.event === 'string') {
      const ts = msg.timestamp as { seconds?: number; microseconds?: number } | undefined;
      const at = ts?.seconds !== undefined ? ts.seconds * 1000 + Math.floor((ts.microseconds ?? 0) / 1000) : Date.now();
      try { this.onEvent({ event: msg.event, data: (msg.data ?? {}) as Record<string, unknown>, at }); } catch { /* the handler's own business */ }
      return;
    }
    if ('QMP' in msg) { this.greeting?.(msg); this.greeting = undefined; return; }
    const id = msg.id;
    if (typeof id === 'number') {
      const w = this.waiting.get(id);
      this.waiting.delete(id);
      w?.(msg); // (no waiter: the command timed out; its late answer is dropped)
    }
  }

  /** Connects to `socketPath` and negotiates capabilities. */
  static async connect(socketPath: string, timeoutMs = 5_000): Promise<QmpClient> {
    const sock = net.createConnection(socketPath);
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => { sock.destroy(); reject(new Error(`QMP ${socketPath}: connect timed out`)); }, timeoutMs);
      sock.once('connect', () => { clearTimeout(t); resolve(); });
      sock.once('error', (e) => { clearTimeout(t); reject(e); });
    });
    const qmp = new QmpClient(sock);
    try {
      await qmp.bounded(new Promise((resolve) => { qmp.greeting = resolve; }), timeoutMs, 'QMP greeting timed out');
      await qmp.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (err) {
      qmp.close(); // (QEMU serves one QMP client at a time: a connection left open would hold the monitor)
      throw err;
    }
    return qmp;
  }

  private bounded<T>(p: Promise<T>, timeoutMs: number, what: string, onTimeout?: () => void): Promise<T> {
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => { onTimeout?.(); reject(new Error(what)); }, timeoutMs);
      p.then((v) => { clearTimeout(t); resolve(v); }, (e: unknown) => { clearTimeout(t); reject(e as Error); });
    });
  }

  /** Runs `command`; resolves with its `return` value, rejects with its error. */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 5_000): Promise<unknown> {
    if (this.closed) throw new Error(`QMP ${command}: QMP connection closed`);
    const id = this.nextId++;
    const answer = new Promise<Record<string, unknown>>((resolve) => { this.waiting.set(id, resolve); });
    this.sock.write(`${JSON.stringify(args ? { execute: command, arguments: args, id } : { execute: command, id })}\n`);
    const msg = await this.bounded(answer, timeoutMs, `QMP ${command}: answer timed out`, () => this.waiting.delete(id));
    if ('error' in msg) throw new Error(`QMP ${command}: ${(msg.error as { desc?: string }).desc ?? JSON.stringify(msg.error)}`);
    return msg.return;
  }

  /** Whether the connection is gone (QEMU exited, or close()). */
  get isClosed(): boolean { return this.closed; }

  /** Calls `fn` once the connection is gone. */
  onClose(fn: () => void): void {
    if (this.closed) fn(); else this.closeHandlers.push(fn);
  }

  close(): void { this.sock.destroy(); }
}
