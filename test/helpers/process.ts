/**
 * Child processes that hold a store (helpers/hold-store.mjs), for lock and
 * crash tests. Every child is bounded by a timeout and killed by `killAll`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { ensureBuilt, REPO, cliEnv } from './cli.js';

const HOLDER = path.join(REPO, 'test', 'helpers', 'hold-store.mjs');

/** A child process holding a store open. */
export interface Holder {
  child: ChildProcess;
  pid: number;
  /** Kills the child with `signal` and waits for it to exit. */
  kill(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const live = new Set<ChildProcess>();

/**
 * Starts hold-store.mjs on `dir`; resolves once it prints "ready", rejects
 * with its "error ..." line (or on exit/timeout) otherwise.
 */
export function holdStore(dir: string, volume?: { name: string; seed: number }, timeoutMs = 30_000): Promise<Holder> {
  ensureBuilt();
  const args = [HOLDER, dir, ...(volume ? [volume.name, String(volume.seed)] : [])];
  const child = spawn(process.execPath, args, { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(child);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => { live.delete(child); resolve({ code, signal }); });
  });
  return new Promise<Holder>((resolve, reject) => {
    let out = '';
    let err = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`holder did not start: ${out}${err}`)); },
      timeoutMs);
    child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      if (!out.includes('\n')) return;
      clearTimeout(timer);
      const line = out.split('\n')[0];
      if (line.startsWith('ready ')) {
        resolve({
          child,
          pid: child.pid!,
          kill: (signal = 'SIGKILL') => { child.kill(signal); return exited; },
        });
      } else {
        reject(new Error(`holder failed: ${line}`));
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`holder exited (code ${code}, signal ${signal}) before it was ready: ${out}${err}`));
    });
  });
}

/** Result of a one-shot attempt to open a store in another process. */
export interface OpenAttempt { ok: boolean; code?: string; message?: string }

/** Tries Store.open(dir) in a fresh child process and reports the outcome. */
export function tryOpenElsewhere(dir: string, timeoutMs = 30_000): Promise<OpenAttempt> {
  ensureBuilt();
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [HOLDER, dir], { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
    live.add(child);
    let out = '';
    const timer = setTimeout(() => { child.kill('SIGKILL'); reject(new Error(`open attempt hung: ${out}`)); }, timeoutMs);
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n')[0];
      if (!out.includes('\n')) return;
      if (line.startsWith('ready ')) child.kill('SIGKILL');
    });
    child.once('exit', () => {
      live.delete(child);
      clearTimeout(timer);
      const line = out.split('\n')[0];
      if (line.startsWith('ready ')) { resolve({ ok: true }); return; }
      const m = /^error (\S+) (.*)$/.exec(line);
      if (m) resolve({ ok: false, code: m[1], message: m[2] });
      else reject(new Error(`unexpected output from open attempt: ${out}`));
    });
  });
}

/** Kills every child still running (afterEach/afterAll). */
export async function killAll(): Promise<void> {
  const waits = [...live].map((c) => new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) { resolve(); return; }
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  }));
  await Promise.all(waits);
  live.clear();
}

/** The 16 blocks hold-store.mjs writes into its volume for `seed`. */
export function holderData(seed: number): Buffer {
  const data = Buffer.alloc(16 * 4096);
  for (let i = 0; i < data.length; i++) data[i] = (i * 31 + seed * 7 + (i >> 12)) & 0xff;
  return data;
}

/** How a child run by `killWhenRunning` ended. */
export interface KilledRun { ready: boolean; stderr: string; signal: NodeJS.Signals | null }

/**
 * Runs `node script ...args`; once it prints READY, kills it with SIGKILL
 * after `delayMs` (and after `guardMs` in any case); resolves when it exited.
 * With `after`, the delay starts only once the file `after.path` matches
 * `after.pattern` (polled every 20 ms), e.g. once the child logged a step.
 */
export function killWhenRunning(script: string, args: string[], delayMs: number, guardMs: number,
  after?: { path: string; pattern: RegExp }): Promise<KilledRun> {
  const proc = spawn(process.execPath, [script, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  live.add(proc);
  let stderr = '';
  let ready = false;
  let poll: NodeJS.Timeout | undefined;
  const arm = (): void => { setTimeout(() => proc.kill('SIGKILL'), delayMs); };
  proc.stderr!.on('data', (d) => { stderr += d; });
  proc.stdout!.on('data', (d: Buffer) => {
    if (!ready && d.toString().includes('READY')) {
      ready = true;
      if (after === undefined) { arm(); return; }
      poll = setInterval(() => {
        let text = '';
        try { text = fs.readFileSync(after.path, 'utf8'); } catch { return; }
        if (after.pattern.test(text)) {
          clearInterval(poll);
          arm();
        }
      }, 20);
    }
  });
  const guard = setTimeout(() => proc.kill('SIGKILL'), guardMs);
  return new Promise((resolve) => proc.on('exit', () => {
    clearTimeout(guard);
    clearInterval(poll);
    live.delete(proc);
    resolve({ ready, stderr, signal: proc.signalCode });
  }));
}
