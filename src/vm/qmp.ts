/**
 * A minimal QMP client (QEMU Machine Protocol) over a Unix socket: reads the
 * greeting, negotiates capabilities, then runs one command at a time.
 * Events are ignored. Every wait is bounded by `timeoutMs`.
 */
import net from 'node:net';

/** A connected QMP session. */
export class QmpClient {
  private buf = '';
  private waiting: Array<(msg: Record<string, unknown>) => void> = [];
  private closed = false;

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
        if ('event' in msg) continue;
        this.waiting.shift()?.(msg);
      }
    });
    sock.on('error', () => undefined);
    sock.on('close', () => {
      this.closed = true;
      for (const w of this.waiting.splice(0)) w({ error: { desc: 'QMP connection closed' } });
    });
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
      await qmp.next(timeoutMs); // greeting
      await qmp.execute('qmp_capabilities', undefined, timeoutMs);
    } catch (err) {
      qmp.close(); // (QEMU serves one QMP client at a time: a connection left open would hold the monitor)
      throw err;
    }
    return qmp;
  }

  private next(timeoutMs: number): Promise<Record<string, unknown>> {
    if (this.closed) return Promise.reject(new Error('QMP connection closed'));
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting = this.waiting.filter((w) => w !== done);
        reject(new Error('QMP answer timed out'));
      }, timeoutMs);
      const done = (msg: Record<string, unknown>) => { clearTimeout(t); resolve(msg); };
      this.waiting.push(done);
    });
  }

  /** Runs `command`; resolves with its `return` value, rejects with its error. */
  async execute(command: string, args?: Record<string, unknown>, timeoutMs = 5_000): Promise<unknown> {
    const answer = this.next(timeoutMs);
    this.sock.write(`${JSON.stringify(args ? { execute: command, arguments: args } : { execute: command })}\n`);
    const msg = await answer;
    if ('error' in msg) throw new Error(`QMP ${command}: ${(msg.error as { desc?: string }).desc ?? JSON.stringify(msg.error)}`);
    return msg.return;
  }

  close(): void { this.sock.destroy(); }
}
