/**
 * The daemon's side of the memory agent (mem-agent-main.ts): one child
 * process, started on first use, that holds the memory files open and runs
 * write-back, page cache residency and drop on them. Requests are answered
 * in any order, matched by id. If the agent dies, pending requests fail and
 * the next request starts a new one.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import { DormantError, type LogFn } from '../blockstore/index.js';

const ENTRY = fileURLToPath(new URL('./mem-agent-main.js', import.meta.url));

interface Pending { resolve: (v: unknown) => void; reject: (e: Error) => void; what: string }

/** A connection to the memory agent process. */
export class MemoryAgent {
  private child?: ChildProcess;
  private nextId = 1;
  private readonly pending = new Map<number, Pending>();

  constructor(private readonly log: LogFn = () => undefined) {}

  private start(): ChildProcess {
    const child = spawn(process.execPath, [ENTRY], { stdio: ['pipe', 'pipe', 'inherit'] });
    child.once('exit', (code, signal) => {
      if (this.child === child) this.child = undefined;
      const why = `memory agent exited (${signal ?? `code ${code}`})`;
      if (this.pending.size > 0) this.log(why, { level: 'error' });
      for (const p of this.pending.values()) p.reject(new DormantError('EINTERNAL', `${p.what}: ${why}`));
      this.pending.clear();
    });
    child.stdin!.on('error', () => undefined); // an exit is reported above
    readline.createInterface({ input: child.stdout! }).on('line', (line) => {
      let m: { id: number; ok: boolean; result?: unknown; error?: { message: string; code: string } };
      try { m = JSON.parse(line); } catch { return; }
      const p = this.pending.get(m.id);
      if (!p) return;
      this.pending.delete(m.id);
      if (m.ok) p.resolve(m.result);
      else p.reject(new DormantError('EIO', `${p.what}: ${m.error?.message}`));
    });
    this.child = child;
    return child;
  }

  private call<T>(op: string, file: string, args: Record<string, unknown> = {}): Promise<T> {
    const child = this.child ?? this.start();
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      this.pending.set(id, { resolve: resolve as (v: unknown) => void, reject, what: `${op} ${file}` });
      child.stdin!.write(`${JSON.stringify({ id, op, file, ...args })}\n`);
    });
  }

  /** fdatasync of `file`: its dirty pages go to the store, then the store flushes. */
  writeBack(file: string): Promise<void> { return this.call('writeBack', file); }

  /** Pages of `file` (of `bytes` bytes) in the page cache, and per page if `bitmap`. */
  async cached(file: string, bytes: number, bitmap: boolean): Promise<{ present: number; bitmap?: Uint8Array }> {
    const r = await this.call<{ present: number; bitmap?: string }>('cached', file, { bytes, bitmap });
    return { present: r.present, ...(r.bitmap !== undefined ? { bitmap: new Uint8Array(Buffer.from(r.bitmap, 'base64')) } : {}) };
  }

  /** posix_fadvise(DONTNEED) of the page runs `runs` of `file` ([[0, 0]] = all of it). */
  drop(file: string, runs: Array<[number, number]>): Promise<void> { return this.call('drop', file, { runs }); }
  /** Drops the runs, then counts their pages still cached (the first of them too). */
  dropChecked(file: string, runs: Array<[number, number]>): Promise<{ stillCached: number; first?: number }> {
    return this.call('drop', file, { runs, check: true });
  }

  /** Per page of `file` (`bytes` long): 1 when QEMU `pid` has it present in one of `maps` (its mappings of the file). */
  async mapped(file: string, bytes: number, pid: number, maps: Array<{ start: number; end: number; offset: number }>): Promise<Uint8Array> {
    return new Uint8Array(Buffer.from(await this.call<string>('mapped', file, { bytes, pid, maps }), 'base64'));
  }

  /** Reads the page runs `runs` of `file` into the page cache; resolves once every read is answered. */
  readIn(file: string, runs: Array<[number, number]>): Promise<number> { return this.call('readIn', file, { runs }); }

  /** Closes the agent's descriptor of `file` (the VM stopped). */
  forget(file: string): Promise<void> { return this.call('forget', file); }

  /** Stops the agent once its pending requests are answered (bounded: 30 s), at daemon shutdown. */
  async close(): Promise<void> {
    const child = this.child;
    if (!child) return;
    const deadline = Date.now() + 30_000;
    while (this.pending.size > 0 && Date.now() < deadline && this.child === child) await new Promise((r) => setTimeout(r, 20));
    this.child = undefined;
    child.stdin?.end();
  }
}
