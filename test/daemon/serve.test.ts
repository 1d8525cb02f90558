/**
 * `dormant serve` as a host runs it: the real daemon in a child process
 * (`node bin/dormant --store DIR serve ...`), driven by the real CLI through
 * its control socket, by real NBD clients (nbdinfo, qemu-io, qemu-img, with
 * and without TLS) and by a raw in-process NBD client over its Unix socket.
 *
 * Each group has its own fresh store and daemon. Every daemon is stopped
 * with SIGTERM (SIGKILL as a last resort) in afterEach/afterAll whatever the
 * outcome, and every wait is bounded. A missing tool fails the test: tools
 * run through `tool()`, which rejects when the program cannot be started.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import * as P from '../../src/nbd/protocol.js';
import { RawClient } from '../nbd/helpers.js';
import { BIN, cliEnv, ensureBuilt, expectFailure, expectOk, type CliResult } from '../helpers/cli.js';
import { firstDiff, pseudoRandom, randomBlock } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';
import { freePort } from '../../src/vm/index.js';

const MiB = 1024 * 1024;
const tmp = new TempDirs();

// ---------------------------------------------------------------------------
// Processes: the daemon, the CLI and the client tools, all bounded.

/** What a finished child process left behind. */
interface Exit { code: number | null; signal: NodeJS.Signals | null }

/** A running `dormant serve`. */
interface Daemon {
  child: ChildProcess;
  store: string;
  /** TCP port, when it listens on TCP. */
  port?: number;
  /** Everything it wrote to stderr so far. */
  stderr(): string;
  stdout(): string;
  /** Resolves when it exits. */
  exited: Promise<Exit>;
  /** Waits (bounded) until stderr has a line matching `re`; returns the line. */
  waitForLine(re: RegExp, timeoutMs?: number): Promise<string>;
  /** Sends SIGTERM once (a second one would kill it outright). */
  term(): void;
  /** SIGTERM (once), then waits (bounded) for the exit; SIGKILL and a failure if it hangs. */
  stop(timeoutMs?: number): Promise<Exit>;
}

const daemons = new Set<Daemon>();

/** Stops every daemon still running: SIGTERM, then SIGKILL after 10 s. */
async function stopAll(): Promise<void> {
  await Promise.all([...daemons].map(async (d) => {
    await d.stop().catch(() => undefined);
  }));
}

afterAll(async () => {
  await stopAll();
  tmp.cleanup();
});

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Resolves with `p`'s value, or rejects with `what` after `ms`. */
function bounded<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms: ${what}`)), ms);
  });
  return Promise.race([p, timeout]).finally(() => clearTimeout(timer));
}

/**
 * Starts `dormant --store STORE serve ...args` and waits for its ready line
 * ("dormant serve: store ..."). `tcp`: listen on a free 127.0.0.1 port
 * (else --no-tcp).
 */
async function startDaemon(store: string, args: string[] = [], tcp = false): Promise<Daemon> {
  ensureBuilt();
  const port = tcp ? await freePort() : undefined;
  const argv = [BIN, '--store', store, 'serve', ...(tcp ? ['--listen', `127.0.0.1:${port}`] : ['--no-tcp']), ...args];
  const child = spawn(process.execPath, argv, { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  const waiters: (() => void)[] = [];
  const wake = (): void => { for (const w of waiters.splice(0)) w(); };
  child.stderr!.setEncoding('utf8');
  child.stdout!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { err += d; wake(); });
  child.stdout!.on('data', (d: string) => { out += d; });
  let done = false;
  let termSent = false;
  const term = (): void => {
    if (done || termSent) return;
    termSent = true;
    child.kill('SIGTERM');
  };
  const exited = new Promise<Exit>((resolve) => {
    child.once('exit', (code, signal) => { done = true; wake(); resolve({ code, signal }); });
  });
  const waitForLine = async (re: RegExp, timeoutMs = 10_000): Promise<string> => {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = err.split('\n').find((l) => re.test(l));
      if (line !== undefined) return line;
      if (done) throw new Error(`daemon exited before logging ${re}:\n${err}`);
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`no line matching ${re} within ${timeoutMs} ms:\n${err}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, left);
        waiters.push(() => { clearTimeout(t); resolve(); });
      });
    }
  };
  const d: Daemon = {
    child, store, port, exited, waitForLine, term,
    stderr: () => err,
    stdout: () => out,
    stop: async (timeoutMs = 10_000) => {
      daemons.delete(d);
      term();
      try {
        return await bounded(exited, timeoutMs, 'daemon exit after SIGTERM');
      } catch (e) {
        child.kill('SIGKILL');
        await bounded(exited, 5000, 'daemon exit after SIGKILL').catch(() => undefined);
        throw new Error(`${(e as Error).message}; killed with SIGKILL. stderr:\n${err}`);
      }
    },
  };
  daemons.add(d);
  try {
    await waitForLine(/ dormant serve: store /, 15_000);
  } catch (e) {
    await d.stop().catch(() => undefined);
    throw e;
  }
  return d;
}

/** Runs a program to completion (bounded); rejects if it cannot be started or times out. */
function tool(cmd: string, args: string[], timeoutMs = 30_000, env?: NodeJS.ProcessEnv): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 64 * MiB, encoding: 'utf8', env },
      (err, stdout, stderr) => {
        if (err && typeof err.code !== 'number') {
          reject(new Error(`${cmd} ${args.join(' ')}: ${err.killed ? `timed out after ${timeoutMs} ms` : err.message}\n${stderr}`));
          return;
        }
        resolve({ status: err ? (err.code as number) : 0, stdout, stderr });
      });
  });
}

/** A tool run that must succeed; returns stdout. */
async function ok(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await tool(cmd, args, timeoutMs);
  expect(r.status, `${cmd} ${args.join(' ')} failed:\n${r.stdout}${r.stderr}`).toBe(0);
  return r.stdout;
}

/** A tool run that must fail (nonzero exit, not a crash of ours); returns stdout + stderr. */
async function fails(cmd: string, args: string[], timeoutMs?: number): Promise<string> {
  const r = await tool(cmd, args, timeoutMs);
  expect(r.status, `${cmd} ${args.join(' ')} unexpectedly succeeded:\n${r.stdout}${r.stderr}`).not.toBe(0);
  return `${r.stdout}${r.stderr}`;
}

/** `dormant --store STORE ...args` (asynchronously, so daemons' pipes keep draining). */
function cli(store: string, args: string[]): Promise<CliResult> {
  return tool(process.execPath, [BIN, '--store', store, ...args], 60_000, cliEnv());
}

async function cliJson<T = any>(store: string, args: string[]): Promise<T> {
  return JSON.parse(expectOk(await cli(store, [...args, '--json']))) as T;
}

/** A fresh initialised store in a temp dir. */
async function freshStore(prefix: string): Promise<string> {
  const dir = path.join(tmp.make(prefix), 'store');
  expectOk(await cli(dir, ['init']));
  return dir;
}

function writeTemp(name: string, data: Buffer): string {
  const file = path.join(tmp.make('file'), name);
  fs.writeFileSync(file, data);
  return file;
}

const unixUri = (store: string, name: string): string => `nbd+unix:///${name}?socket=${path.join(store, 'nbd.sock')}`;

/** Connection ids seen in "connected" and "disconnected" lines. */
function connLines(stderr: string): { connected: string[]; disconnected: string[] } {
  const ids = (re: RegExp) => stderr.split('\n').map((l) => re.exec(l)?.[1]).filter((x): x is string => x !== undefined);
  return {
    connected: ids(/ nbd: (conn#\d+) connected from /),
    disconnected: ids(/ nbd: (conn#\d+) disconnected /),
  };
}

/** Waits (bounded) until every connection that logged "connected" also logged "disconnected". */
async function waitAllDisconnected(d: Daemon, timeoutMs = 5000): Promise<{ connected: string[]; disconnected: string[] }> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c = connLines(d.stderr());
    if (c.connected.length === c.disconnected.length || Date.now() > deadline) return c;
    await delay(25);
  }
}

/** Sends NBD_CMD_DISC and waits (bounded) for the server to close. */
async function disconnect(c: RawClient): Promise<void> {
  c.request(P.NBD_CMD_DISC, 0xd15cn, 0, 0);
  const closed = await c.closedWithin(5000);
  c.destroy();
  expect(closed, 'server closes after DISC').toBe(true);
}

// ---------------------------------------------------------------------------

describe('serve: the CLI keeps working through the control socket', () => {
  let store: string;
  let d: Daemon;
  const golden = Buffer.alloc(4 * MiB);
  golden.fill(0xab, 0, MiB);
  golden.fill(0xcd, MiB, 2 * MiB);
  const random = pseudoRandom(77, 3_000_001);

  beforeAll(async () => {
    store = await freshStore('serve-ctl');
    d = await startDaemon(store, [], true);
  });
  afterAll(async () => {
    if (d) expect(await d.stop()).toEqual({ code: 0, signal: null });
  });

  it('logs one ready line naming both NBD addresses and the control socket (mode 0600)', () => {
    const ready = d.stderr().split('\n').find((l) => l.includes('dormant serve: store'))!;
    expect(ready).toContain(`nbd://127.0.0.1:${d.port}/<volume>`);
    expect(ready).toContain(`nbd+unix:///<volume>?socket=${path.join(store, 'nbd.sock')}`);
    expect(ready).toContain(`control socket ${path.join(store, 'control.sock')}`);
    const st = fs.statSync(path.join(store, 'control.sock'));
    expect(st.isSocket()).toBe(true);
    expect(st.mode & 0o777).toBe(0o600);
  });

  it('create, import, export (byte for byte), snapshot and branch work while the daemon owns the store', async () => {
    expect(expectOk(await cli(store, ['create', 'empty', '--size', '8M']))).toBe('created disk volume empty: 8.0 MiB (8388608 bytes)\n');
    expect(expectOk(await cli(store, ['import', 'golden', writeTemp('golden.img', golden)])))
      .toMatch(/^imported golden: 4.0 MiB \(4194304 bytes\), 2.0 MiB allocated/);
    expect(expectOk(await cli(store, ['import', 'rnd', writeTemp('rnd.img', random)])))
      .toMatch(/^imported rnd: .* \(3000001 bytes\)/);
    const out = path.join(tmp.make('export'), 'rnd.out');
    expectOk(await cli(store, ['export', 'rnd', out]));
    expect(firstDiff(fs.readFileSync(out), random)).toBeNull();

    expect(expectOk(await cli(store, ['snapshot', 'golden', 'base']))).toBe('created snapshot golden@base\n');
    expect(expectOk(await cli(store, ['branch', 'vm1', '--from', 'golden@base']))).toBe('created branch vm1 from golden@base\n');
    const snapOut = path.join(tmp.make('export'), 'base.out');
    expectOk(await cli(store, ['export', 'golden@base', snapOut]));
    expect(firstDiff(fs.readFileSync(snapOut), golden)).toBeNull();
    // The store is the daemon's: nobody else could have opened it.
    expect(fs.readFileSync(path.join(store, 'lock.pid'), 'utf8')).toBe(`${d.child.pid}\n`);
  });

  it('list, info, stats and gc answer --json through the daemon', async () => {
    const { volumes } = await cliJson<{ volumes: { name: string; type: string; origin: string | null; size: number; allocated: number }[] }>(
      store, ['list']);
    expect(volumes.map((v) => v.name)).toEqual(['empty', 'golden', 'golden@base', 'rnd', 'vm1']);
    expect(volumes.find((v) => v.name === 'vm1')).toMatchObject({ type: 'volume', origin: 'golden@base', size: 4 * MiB, allocated: 2 * MiB });
    expect(volumes.find((v) => v.name === 'golden@base')).toMatchObject({ type: 'snapshot', allocated: 2 * MiB });

    const info = await cliJson(store, ['info', 'vm1']);
    expect(info).toMatchObject({ name: 'vm1', parentChain: ['golden@base'], openHandles: 0 });
    expect(info.blocks).toMatchObject({ total: 1024, allocated: 512, own: 0, inherited: 512, holes: 512 });
    expect((await cliJson(store, ['info', 'golden@base'])).branches).toEqual(['vm1']);

    const stats = await cliJson(store, ['stats']);
    expect(stats).toMatchObject({ path: store, volumes: 4, snapshots: 1 });
    expect(stats.storedBytes).toBeGreaterThanOrEqual(2 * BLOCK_SIZE + 733 * BLOCK_SIZE);

    // Remove the random volume; gc frees its 733 unique chunks.
    expect(expectOk(await cli(store, ['rm', 'rnd']))).toMatch(/^removed rnd /);
    const gc = await cliJson(store, ['gc']);
    expect(Object.keys(gc).sort()).toEqual(['bytesReclaimed', 'chunksFreed', 'deadEntries', 'segmentsCompacted', 'segmentsDeleted']);
    expect(gc.chunksFreed).toBe(733);
    const after = await cliJson(store, ['stats']);
    expect(after.volumes).toBe(3);
    expect(after.storedBytes).toBeLessThan(stats.storedBytes);
  });

  it('a second `dormant serve` on the store exits 1 with one "locked" line, and the first keeps serving', async () => {
    const r = await cli(store, ['serve', '--no-tcp']);
    expectFailure(r, new RegExp(`store .* is locked by another process \\(pid ${d.child.pid}\\)`));
    expect(d.child.exitCode).toBeNull();
    // Its sockets were not disturbed.
    expect(expectOk(await cli(store, ['info', 'golden']))).toMatch(/^name: +golden/);
    expect((await ok('nbdinfo', ['--size', unixUri(store, 'golden')])).trim()).toBe(String(4 * MiB));
  });

  it('a branch created while serving is readable over NBD at once, with the golden data', async () => {
    expectOk(await cli(store, ['branch', 'vm2', '--from', 'golden@base']));
    const e = JSON.parse(await ok('nbdinfo', ['--json', unixUri(store, 'vm2')])).exports[0];
    expect(e).toMatchObject({ 'export-name': 'vm2', 'export-size': 4 * MiB, is_read_only: false, description: 'disk, 4 MiB, from golden@base' });
    const read = await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xab 0 1M', '-c', 'read -P 0xcd 1M 1M', '-c', 'read -P 0 2M 2M',
      unixUri(store, 'vm2')]);
    expect(read.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(3);
    // The check can fail: a wrong pattern is reported as a failure.
    const wrong = await fails('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xcd 0 4k', unixUri(store, 'vm2')]);
    expect(wrong).toMatch(/pattern verification failed/i);
    // And over TCP.
    const tcp = await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0xab 0 64k', `nbd://127.0.0.1:${d.port}/vm2`]);
    expect(tcp).toMatch(/^read 65536\/65536 bytes/m);
  });

  it('a new snapshot is listed by nbdinfo --list at once (Unix socket and TCP)', async () => {
    const names = async (uri: string): Promise<string[]> =>
      JSON.parse(await ok('nbdinfo', ['--list', '--json', uri])).exports.map((e: { 'export-name': string }) => e['export-name']);
    expect(await names(unixUri(store, ''))).not.toContain('vm2@s1');
    expectOk(await cli(store, ['snapshot', 'vm2', 's1']));
    expect(await names(unixUri(store, ''))).toContain('vm2@s1');
    expect(await names(`nbd://127.0.0.1:${d.port}/`)).toEqual(['empty', 'golden', 'golden@base', 'vm1', 'vm2', 'vm2@s1']);
    const e = JSON.parse(await ok('nbdinfo', ['--json', unixUri(store, 'vm2@s1')])).exports[0];
    expect(e.is_read_only).toBe(true);
  });

  it('rm of a volume a client has open is refused (exit 1, one line); after the client leaves it succeeds', async () => {
    expectOk(await cli(store, ['branch', 'held', '--from', 'golden@base']));
    const c = await RawClient.connect(path.join(store, 'nbd.sock'));
    try {
      const { size } = await c.go('held');
      expect(size).toBe(4 * MiB);
      expect((await cliJson(store, ['info', 'held'])).openHandles).toBe(1);
      expectFailure(await cli(store, ['rm', 'held']), /^dormant: 'held' is in use \(1 open handle\)$/);
      // Refused means nothing happened: the volume is listed and the client still reads it.
      const { volumes } = await cliJson<{ volumes: { name: string }[] }>(store, ['list']);
      expect(volumes.map((v) => v.name)).toContain('held');
      c.request(P.NBD_CMD_READ, 7n, 0, 4096);
      const r = await c.simpleReply(() => 4096);
      expect(r.error).toBe(0);
      expect(r.data.equals(Buffer.alloc(4096, 0xab))).toBe(true);
      await disconnect(c);
    } finally {
      c.destroy();
    }
    // The handle is released once the server has logged the disconnect.
    await d.waitForLine(/ disconnected export=held reason=disc /);
    expect(expectOk(await cli(store, ['rm', 'held']))).toMatch(/^removed held /);
    const gone = await fails('nbdinfo', [unixUri(store, 'held')]);
    expect(gone).toMatch(/held/);
  });

  it('errors through the daemon keep their exit codes and one-line messages', async () => {
    expectFailure(await cli(store, ['info', 'nope']), /^dormant: unknown volume 'nope'$/);
    expectFailure(await cli(store, ['export', 'nope', path.join(tmp.make('x'), 'o')]), /unknown volume 'nope'/);
    expectFailure(await cli(store, ['snapshot', 'nope', 's']), /unknown volume 'nope'/);
    expectFailure(await cli(store, ['create', 'golden', '--size', '1M']), /^dormant: volume 'golden' already exists$/);
    expectFailure(await cli(store, ['import', 'vm1', writeTemp('x.img', Buffer.alloc(4096, 1))]), /'vm1' already exists/);
    expectFailure(await cli(store, ['snapshot', 'golden', 'base']), /snapshot 'golden@base' already exists/);
    expectFailure(await cli(store, ['branch', 'vm9', '--from', 'golden']), /^dormant: 'golden' is not a snapshot: branch from volume@snap/);
    expectFailure(await cli(store, ['branch', 'vm9', '--from', 'golden@nope']), /unknown snapshot 'golden@nope'/);
    expectFailure(await cli(store, ['rm', 'golden@base']),
      /^dormant: cannot remove 'golden@base': branches vm1, vm2 depend on 'golden@base'$/);
    expectFailure(await cli(store, ['rm', 'golden']), /^dormant: cannot remove 'golden': branches vm1, vm2 depend on 'golden@base'$/);
    // None of them changed anything.
    const { volumes } = await cliJson<{ volumes: { name: string }[] }>(store, ['list']);
    expect(volumes.map((v) => v.name)).toEqual(['empty', 'golden', 'golden@base', 'vm1', 'vm2', 'vm2@s1']);
  });

  it('logged one "connected" and one "disconnected" line per NBD connection (and "opened" once it chose an export), and nothing else went wrong', async () => {
    const c = await waitAllDisconnected(d);
    expect(c.connected.length).toBeGreaterThanOrEqual(8);
    expect(new Set(c.connected).size).toBe(c.connected.length);
    expect([...c.disconnected].sort()).toEqual([...c.connected].sort());
    const unexpected = d.stderr().split('\n').filter(Boolean)
      .filter((l) => !/ (nbd: (conn#\d+ (connected from|opened|disconnected)|export=\S+ in the last)|dormant serve: store) /.test(l));
    expect(unexpected).toEqual([]);
    expect(d.stderr()).not.toMatch(/errors=[1-9]/);
    expect(d.stdout()).toBe('');
  });
});

/** What a write load saw of its requests. */
interface LoadRecord {
  /** Blocks whose WRITE was acknowledged, in acknowledgement order. */
  acked: number[];
  /** Blocks whose WRITE with FUA was acknowledged. */
  fuaAcked: Set<number>;
  /** `acked.slice(0, flushedPrefix)` was acknowledged before an acknowledged FLUSH was sent. */
  flushedPrefix: number;
  flushesAcked: number;
  /** Error replies per block. */
  failed: Map<number, number>;
  /** Writes never answered. */
  unanswered: number[];
  /** Requests outstanding when the signal was sent. */
  inFlightAtSignal: number;
}

const LOAD_BLOCKS = 8192; // a 32 MiB volume, each block written at most once
const LOAD_WINDOW = 32;
/** The distinct content of each block of the load. */
const loadPattern = (b: number): Buffer => randomBlock(1000 + b);

/** What request number k of a load is. */
type Plan = (k: number) => 'plain' | 'fua' | 'flush';

/**
 * Writes distinct 4 KiB patterns to scattered blocks of `volume` over a raw
 * NBD connection, LOAD_WINDOW requests in flight, request k being a plain
 * WRITE, a WRITE with FUA or a FLUSH as `plan(k)` says. Once `signalWhen`
 * holds after a reply it calls `signal()`, and keeps the window full until
 * the server goes away. Request `barrierAt` is sent only once every earlier
 * one is answered (so no flush started before it can cover later writes).
 *
 * The store's flush is global (a FUA write makes everything acknowledged
 * before it durable too), so each property is tested by a load that has no
 * other way to become durable: otherwise a broken FLUSH hides behind FUA.
 */
async function writeLoad(sock: string, volume: string, plan: Plan, signalWhen: (r: LoadRecord) => boolean,
  signal: () => void, barrierAt = -1): Promise<LoadRecord> {
  type Req = { flush: true; covers: number } | { flush: false; block: number; fua: boolean };
  const pending = new Map<bigint, Req>();
  const rec: LoadRecord = {
    acked: [], fuaAcked: new Set(), flushedPrefix: 0, flushesAcked: 0, failed: new Map(), unanswered: [], inFlightAtSignal: -1,
  };
  let nextBlock = 0;
  let sent = 0;
  let cookie = 1n;
  const c = await RawClient.connect(sock);
  try {
    const { flags } = await c.go(volume);
    expect(flags & P.NBD_FLAG_SEND_FUA).not.toBe(0);
    expect(flags & P.NBD_FLAG_SEND_FLUSH).not.toBe(0);
    const fill = (): void => {
      while (!c.ended && pending.size < LOAD_WINDOW && nextBlock < LOAD_BLOCKS) {
        if (sent === barrierAt && pending.size > 0) return; // request barrierAt waits for every earlier reply
        const k = sent++;
        const what = plan(k);
        if (what === 'flush') {
          pending.set(cookie, { flush: true, covers: rec.acked.length });
          c.request(P.NBD_CMD_FLUSH, cookie++, 0, 0);
        } else {
          const block = (nextBlock++ * 2741) % LOAD_BLOCKS; // scattered, each once
          const fua = what === 'fua';
          pending.set(cookie, { flush: false, block, fua });
          c.request(P.NBD_CMD_WRITE, cookie++, block * BLOCK_SIZE, BLOCK_SIZE, fua ? P.NBD_CMD_FLAG_FUA : 0, loadPattern(block));
        }
      }
    };
    fill();
    for (;;) {
      let h: Buffer;
      try {
        h = await c.read(P.SIMPLE_REPLY_SIZE, 15_000);
      } catch (e) {
        if (c.ended) break; // the server went away: the end of the load
        throw e;
      }
      expect(h.readUInt32BE(0)).toBe(P.NBD_SIMPLE_REPLY_MAGIC);
      const error = h.readUInt32BE(4);
      const id = h.readBigUInt64BE(8);
      const req = pending.get(id);
      if (req === undefined) throw new Error(`reply for unknown cookie ${id}`);
      pending.delete(id);
      if (req.flush) {
        if (error === 0) { rec.flushesAcked++; rec.flushedPrefix = Math.max(rec.flushedPrefix, req.covers); }
      } else if (error === 0) {
        rec.acked.push(req.block);
        if (req.fua) rec.fuaAcked.add(req.block);
      } else {
        rec.failed.set(req.block, error);
      }
      if (rec.inFlightAtSignal < 0 && signalWhen(rec)) {
        rec.inFlightAtSignal = pending.size;
        signal();
      }
      fill();
    }
  } finally {
    c.destroy();
  }
  for (const r of pending.values()) if (!r.flush) rec.unanswered.push(r.block);
  expect(rec.inFlightAtSignal, 'requests in flight when the signal was sent').toBeGreaterThan(0);
  expect(rec.failed.size + rec.unanswered.length, 'writes cut off by the signal').toBeGreaterThan(0);
  return rec;
}

/** Blocks of the load volume as the store holds them (opened directly: the daemon is gone). */
async function readLoad(store: string, volume: string): Promise<(b: number) => Buffer> {
  const s = await Store.open(store);
  try {
    const h = await s.openVolume(volume);
    const data = await h.read(0, LOAD_BLOCKS * BLOCK_SIZE);
    await h.close();
    return (b) => data.subarray(b * BLOCK_SIZE, (b + 1) * BLOCK_SIZE);
  } finally {
    await s.close();
  }
}

/** Blocks of `blocks` that do not hold their pattern, described. */
function notWritten(block: (b: number) => Buffer, blocks: Iterable<number>): string[] {
  return [...blocks].filter((b) => !block(b).equals(loadPattern(b)))
    .map((b) => `block ${b}: ${firstDiff(block(b), loadPattern(b))}`);
}

/** Blocks outside `written` that hold neither their whole pattern nor zeros. */
function tornBlocks(block: (b: number) => Buffer, written: Iterable<number>): string[] {
  const skip = new Set(written);
  const zero = Buffer.alloc(BLOCK_SIZE);
  const torn: string[] = [];
  for (let b = 0; b < LOAD_BLOCKS; b++) {
    if (!skip.has(b) && !block(b).equals(zero) && !block(b).equals(loadPattern(b))) torn.push(`block ${b}`);
  }
  return torn;
}

/** The writes the durability contract covers: acknowledged with FUA, or before an acknowledged FLUSH. */
const durable = (rec: LoadRecord): Set<number> => new Set([...rec.fuaAcked, ...rec.acked.slice(0, rec.flushedPrefix)]);

/** Starts a daemon on a fresh store with volume `load`, runs `plan` until `signal`, returns what happened. */
async function loadUntil(prefix: string, plan: Plan, signalWhen: (r: LoadRecord) => boolean, signal: (d: Daemon) => void,
  barrierAt?: number): Promise<{ store: string; d: Daemon; rec: LoadRecord }> {
  const store = await freshStore(prefix);
  expectOk(await cli(store, ['create', 'load', '--size', `${LOAD_BLOCKS * BLOCK_SIZE}`]));
  const d = await startDaemon(store);
  const rec = await writeLoad(path.join(store, 'nbd.sock'), 'load', plan, signalWhen, () => signal(d), barrierAt);
  return { store, d, rec };
}

describe('serve: signals during a write load', () => {
  afterEach(stopAll);

  it('SIGTERM: finishes in-flight writes, exits 0, and every acknowledged write reads back exactly', async () => {
    // FUA and FLUSH for the first 300 requests; then, once they are all answered, plain writes only.
    // SIGTERM comes after 500 acknowledged writes, so only the shutdown's own flush can make the
    // last 200 or so durable.
    const plan: Plan = (k) => (k >= 300 ? 'plain' : k % 25 === 24 ? 'flush' : k % 4 === 1 ? 'fua' : 'plain');
    const { store, d, rec } = await loadUntil('serve-term', plan, (r) => r.acked.length >= 500, (daemon) => daemon.term(), 300);

    const exit = await d.stop(15_000);
    expect(exit, d.stderr()).toEqual({ code: 0, signal: null });
    const log = d.stderr();
    expect(log).toMatch(/ dormant serve: SIGTERM: finishing in-flight requests, flushing\n/);
    expect(log).toMatch(/ dormant serve: stopped\n$/);
    expect(log).toMatch(/ nbd: conn#\d+ disconnected export=load reason=shutdown /);
    // Requests that reached the server after SIGTERM were refused with ESHUTDOWN.
    for (const errno of rec.failed.values()) expect(errno).toBe(P.NBD_ESHUTDOWN);
    expect(rec.fuaAcked.size).toBeGreaterThan(50);
    expect(rec.flushesAcked).toBeGreaterThan(5);
    expect(rec.acked.length - rec.flushedPrefix, 'plain writes only the shutdown flush covers').toBeGreaterThan(100);

    const block = await readLoad(store, 'load');
    expect(notWritten(block, durable(rec)), 'acknowledged FUA writes and writes covered by an acknowledged FLUSH').toEqual([]);
    // A clean shutdown flushes what it acknowledged, so every acknowledged write is there.
    expect(notWritten(block, rec.acked), 'every acknowledged write after a clean SIGTERM').toEqual([]);
    expect(tornBlocks(block, rec.acked), 'blocks neither written whole nor untouched').toEqual([]);

    // The daemon starts again on the same store (no stale lock or socket) and serves it.
    const again = await startDaemon(store);
    expect((await ok('nbdinfo', ['--size', unixUri(store, 'load')])).trim()).toBe(String(LOAD_BLOCKS * BLOCK_SIZE));
    expect(await again.stop()).toEqual({ code: 0, signal: null });
  }, 60_000);

  it('SIGKILL during writes with FUA (no FLUSH): every acknowledged FUA write survives', async () => {
    const { store, d, rec } = await loadUntil('serve-kill-fua', (k) => (k % 4 === 1 ? 'fua' : 'plain'),
      (r) => r.fuaAcked.size >= 60, (daemon) => daemon.child.kill('SIGKILL'));
    expect(await bounded(d.exited, 10_000, 'daemon exit after SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' });
    const block = await readLoad(store, 'load');
    expect(notWritten(block, rec.fuaAcked), 'acknowledged FUA writes').toEqual([]);
    expect(tornBlocks(block, []), 'blocks neither written whole nor untouched').toEqual([]);
  }, 60_000);

  it('SIGKILL during writes with FLUSH (no FUA): every write acknowledged before an acknowledged FLUSH survives', async () => {
    const { store, d, rec } = await loadUntil('serve-kill-flush', (k) => (k % 25 === 24 ? 'flush' : 'plain'),
      (r) => r.flushesAcked >= 8, (daemon) => daemon.child.kill('SIGKILL'));
    expect(await bounded(d.exited, 10_000, 'daemon exit after SIGKILL')).toEqual({ code: null, signal: 'SIGKILL' });
    expect(rec.fuaAcked.size).toBe(0);
    expect(rec.flushedPrefix).toBeGreaterThan(100);
    const block = await readLoad(store, 'load');
    expect(notWritten(block, rec.acked.slice(0, rec.flushedPrefix)), 'writes covered by an acknowledged FLUSH').toEqual([]);
    expect(tornBlocks(block, []), 'blocks neither written whole nor untouched').toEqual([]);
  }, 60_000);
});

describe('serve --read-only', () => {
  afterAll(stopAll);
  let store: string;
  let d: Daemon;
  let image: Buffer;

  beforeAll(async () => {
    store = await freshStore('serve-ro');
    image = Buffer.alloc(2 * MiB);
    image.fill(0x5a, 0, MiB);
    expectOk(await cli(store, ['import', 'ro', writeTemp('ro.img', image)]));
    expectOk(await cli(store, ['snapshot', 'ro', 'snap']));
    d = await startDaemon(store, ['--read-only']);
  });

  it('advertises every export read-only', async () => {
    expect(d.stderr()).toMatch(/dormant serve: store .*\(read-only\)/);
    const e = JSON.parse(await ok('nbdinfo', ['--json', unixUri(store, 'ro')])).exports[0];
    expect(e).toMatchObject({ 'export-name': 'ro', is_read_only: true, 'export-size': 2 * MiB });
    const all = JSON.parse(await ok('nbdinfo', ['--list', '--json', unixUri(store, '')])).exports;
    expect(all.map((x: { 'export-name': string; is_read_only: boolean }) => [x['export-name'], x.is_read_only]))
      .toEqual([['ro', true], ['ro@snap', true]]);
  });

  it('qemu-io writes fail, a raw client\'s WRITE gets EPERM, and the data is unchanged', async () => {
    const out = await fails('qemu-io', ['-f', 'raw', '-c', 'write -P 0x66 0 64k', unixUri(store, 'ro')]);
    expect(out).toMatch(/read-only|not permitted|permission/i);
    // A client that ignores the read-only flag is refused by the server.
    const c = await RawClient.connect(path.join(store, 'nbd.sock'));
    try {
      const { flags } = await c.go('ro');
      expect(flags & P.NBD_FLAG_READ_ONLY).not.toBe(0);
      c.request(P.NBD_CMD_WRITE, 1n, 0, 4096, 0, Buffer.alloc(4096, 0x66));
      expect((await c.simpleReply()).error).toBe(P.NBD_EPERM);
      c.request(P.NBD_CMD_WRITE_ZEROES, 2n, 0, 4096);
      expect((await c.simpleReply()).error).toBe(P.NBD_EPERM);
      await disconnect(c);
    } finally {
      c.destroy();
    }
    const read = await ok('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 1M', '-c', 'read -P 0 1M 1M', unixUri(store, 'ro')]);
    expect(read.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(2);
    // After the daemon stops, the offline export matches the image byte for byte.
    expect(await d.stop()).toEqual({ code: 0, signal: null });
    const back = path.join(tmp.make('ro-out'), 'ro.out');
    expectOk(await cli(store, ['export', 'ro', back]));
    expect(firstDiff(fs.readFileSync(back), image)).toBeNull();
  });
});

describe('serve --tls require', () => {
  let store: string;
  let pki: string;
  let d: Daemon;
  let image: Buffer;
  const tlsObject = (): string => `tls-creds-x509,id=tls0,endpoint=client,dir=${pki}`;

  beforeAll(async () => {
    store = await freshStore('serve-tls');
    image = Buffer.alloc(16 * MiB);
    image.fill(0x3c, 0, 4 * MiB);
    expectOk(await cli(store, ['import', 'vol', writeTemp('vol.img', image)]));
    // libnbd (tls-certificates=DIR) and qemu (tls-creds-x509 dir=DIR) both read DIR/ca-cert.pem.
    pki = tmp.make('pki');
    const key = path.join(pki, 'server-key.pem');
    const cert = path.join(pki, 'server-cert.pem');
    await ok('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost']);
    fs.copyFileSync(cert, path.join(pki, 'ca-cert.pem'));
    d = await startDaemon(store, ['--tls', 'require', '--tls-cert', cert, '--tls-key', key], true);
  });

  it('nbdinfo over nbds:// (TCP) and nbds+unix:// negotiates TLS', async () => {
    expect(d.stderr()).toMatch(/dormant serve: store .*\(TLS require\)/);
    const tcp = await ok('nbdinfo', [`nbds://127.0.0.1:${d.port}/vol?tls-certificates=${pki}`]);
    expect(tcp).toContain('with TLS');
    expect(tcp).toMatch(/export-size: 16777216/);
    const unix = await ok('nbdinfo', ['--size', `nbds+unix:///vol?socket=${path.join(store, 'nbd.sock')}&tls-certificates=${pki}`]);
    expect(unix.trim()).toBe(String(16 * MiB));
  });

  it('plaintext clients are refused (nbdinfo and qemu-img without TLS)', async () => {
    expect(await fails('nbdinfo', [`nbd://127.0.0.1:${d.port}/vol`])).toMatch(/TLS|not supported|permitted/i);
    expect(await fails('nbdinfo', [unixUri(store, 'vol')])).toMatch(/TLS|not supported|permitted/i);
    expect(await fails('qemu-img', ['info', '--image-opts', `driver=nbd,host=127.0.0.1,port=${d.port},export=vol`]))
      .toMatch(/TLS/);
  });

  it('qemu\'s TLS client works: qemu-img info and qemu-io read the data', async () => {
    const info = await ok('qemu-img', ['info', '--object', tlsObject(), '--image-opts',
      `driver=nbd,host=127.0.0.1,port=${d.port},export=vol,tls-creds=tls0`]);
    expect(info).toMatch(/virtual size: 16 MiB \(16777216 bytes\)/);
    const read = await ok('qemu-io', ['-r', '--object', tlsObject(), '--image-opts',
      '-c', 'read -P 0x3c 0 4M', '-c', 'read -P 0 4M 4M',
      `driver=nbd,host=127.0.0.1,port=${d.port},export=vol,tls-creds=tls0`]);
    expect(read.match(/^read \d+\/\d+ bytes/gm)).toHaveLength(2);
  });

  it('bad flag combinations and a busy port exit 1 with one line, leaving the store free', async () => {
    const other = await freshStore('serve-flags');
    expectFailure(await cli(other, ['serve', '--no-tcp', '--tls', 'require']), /^dormant: --tls require needs --tls-cert and --tls-key \(or --tls-psk\)$/);
    expectFailure(await cli(other, ['serve', '--no-tcp', '--tls', 'on', '--tls-cert', path.join(pki, 'server-cert.pem')]),
      /--tls on needs --tls-cert and --tls-key/);
    expectFailure(await cli(other, ['serve', '--no-tcp', '--tls', 'bogus']), /^dormant: bad --tls 'bogus': use off, on or require$/);
    expectFailure(await cli(other, ['serve', '--listen', 'nonsense']), /^dormant: bad --listen 'nonsense': use HOST:PORT/);
    expectFailure(await cli(other, ['serve', '--listen', '127.0.0.1:65536']), /bad --listen '127.0.0.1:65536'/);
    // A port in use (the running daemon's): one line, and the store is released again.
    expectFailure(await cli(other, ['serve', '--listen', `127.0.0.1:${d.port}`]), /^dormant: cannot listen: address in use/);
    expect(expectOk(await cli(other, ['list']))).toMatch(/^no volumes/);
  });

  afterAll(async () => {
    if (d) expect(await d.stop()).toEqual({ code: 0, signal: null });
  });
});

describe('serve: connection log lines', () => {
  afterEach(stopAll);
  it('logs exactly one "connected" and one "disconnected" line per client connection', async () => {
    const store = await freshStore('serve-log');
    expectOk(await cli(store, ['create', 'v', '--size', '1M']));
    const d = await startDaemon(store);
    const sock = path.join(store, 'nbd.sock');

    // 1: a full session ending with DISC.
    const a = await RawClient.connect(sock);
    await a.go('v');
    await disconnect(a);
    // 2: a client that aborts the handshake.
    const b = await RawClient.connect(sock);
    b.sendFlags();
    expect((await b.option(P.NBD_OPT_ABORT))[0].type).toBe(P.NBD_REP_ACK);
    expect(await b.closedWithin(5000)).toBe(true);
    b.destroy();
    // 3: a client that hangs up right after the greeting.
    const e = await RawClient.connect(sock);
    e.destroy();
    // 4: a client that asks for an unknown export, then hangs up.
    const f = await RawClient.connect(sock);
    f.sendFlags();
    const replies = await f.option(P.NBD_OPT_GO, Buffer.concat([Buffer.from([0, 0, 0, 4]), Buffer.from('nope'), Buffer.from([0, 0])]));
    expect(replies.at(-1)!.type).toBe(P.NBD_REP_ERR_UNKNOWN);
    f.destroy();

    let c = await waitAllDisconnected(d);
    expect(c.connected).toEqual(['conn#1', 'conn#2', 'conn#3', 'conn#4']);
    expect([...c.disconnected].sort()).toEqual(['conn#1', 'conn#2', 'conn#3', 'conn#4']);
    expect(d.stderr()).toMatch(/ nbd: conn#1 disconnected export=v reason=disc requests=1 /);

    // Real clients: however many connections they open, each gets exactly one pair of lines.
    await ok('qemu-io', ['-f', 'raw', '-c', 'write -P 0x42 0 64k', '-c', 'read -P 0x42 0 64k', unixUri(store, 'v')]);
    await ok('nbdinfo', ['--list', unixUri(store, '')]);
    c = await waitAllDisconnected(d);
    expect(c.connected.length).toBeGreaterThanOrEqual(6);
    expect(new Set(c.connected).size).toBe(c.connected.length);
    expect([...c.disconnected].sort()).toEqual([...c.connected].sort());

    expect(await d.stop()).toEqual({ code: 0, signal: null });
    // Nothing but the ready line, the connection lines and the two shutdown lines.
    const lines = d.stderr().split('\n').filter(Boolean);
    const other = lines.filter((l) => !/ nbd: (conn#\d+ (connected from|opened|disconnected)|export=\S+ in the last) /.test(l));
    expect(other.map((l) => l.replace(/^\S+ /, '').replace(/:.*/, ''))).toEqual(
      ['dormant serve', 'dormant serve', 'dormant serve']);
    expect(other[1]).toMatch(/SIGTERM: finishing in-flight requests, flushing$/);
    expect(other[2]).toMatch(/stopped$/);
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z /);
    // Each connection's "connected" comes before its "disconnected".
    for (const id of c.connected) {
      expect(lines.findIndex((l) => l.includes(` ${id} connected `)))
        .toBeLessThan(lines.findIndex((l) => l.includes(` ${id} disconnected `)));
    }
  });
});
