/**
 * The daemon's log as an operator reads it, with a real `dormant serve`
 * in a child process and real NBD clients (qemu-io, nbdinfo) over TCP:
 * `--log-format json` lines parse with time, level, msg and fields; an NBD
 * connection gives an "open" and a "close" event naming its export and
 * client (the close one with its counters); `--log-stats-every 1s` gives
 * one counters line per export after I/O and none while it is idle;
 * `--log-level warn` and the global `-q` hide info events but not the
 * warning of a malformed control request; malformed control requests
 * (garbage bytes, bodies that are not JSON, arguments that do not fit the
 * schema) get one EINVAL error each and the daemon keeps answering; the
 * TOML config sets the log flags; `-q` hides import's progress bar on a
 * terminal (script(1) provides one); `dormant mount` logs JSON too when
 * its own --config file says so.
 *
 * Every daemon is stopped with SIGTERM (SIGKILL after 10 s) in afterEach,
 * every wait is bounded, every temp dir removed.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { BIN, cliEnv, dormant, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, startDaemon as startMount } from '../helpers/mount-daemon.js';
import { freePort } from '../../src/vm/index.js';

const tmp = new TempDirs();
const MiB = 2 ** 20;

/** A running `dormant serve`. */
interface Serve {
  child: ChildProcess;
  store: string;
  port: number;
  stderr(): string;
  stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

const running = new Set<Serve>();

afterEach(async () => {
  await Promise.all([...running].map((d) => d.stop()));
});
afterAll(async () => {
  await cleanupMounts();
  tmp.cleanup();
});

/** A fresh store with an 8 MiB volume `v`. */
function freshStore(name: string): string {
  ensureBuilt();
  const store = path.join(tmp.make(name), 'store');
  expectOk(dormant(['init'], { store }));
  expectOk(dormant(['create', 'v', '--size', '8M'], { store }));
  return store;
}

/** Waits (at most `ms`) until `cond` holds; fails with `what` and the daemon's stderr otherwise. */
async function until(cond: () => boolean | Promise<boolean>, ms: number, what: string, d?: Serve): Promise<void> {
  const deadline = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`not within ${ms} ms: ${what}${d ? `\nstderr:\n${d.stderr()}` : ''}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Starts `dormant [global] --store STORE serve --listen 127.0.0.1:PORT ...args`; ready once NBD answers. */
async function serve(store: string, args: string[], global: string[] = []): Promise<Serve> {
  const port = await freePort();
  const child = spawn(process.execPath, [BIN, ...global, '--store', store, 'serve', '--listen', `127.0.0.1:${port}`, ...args],
    { env: cliEnv(), stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (s: string) => { err += s; });
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => resolve({ code, signal }));
  });
  let stopping: Promise<{ code: number | null; signal: NodeJS.Signals | null }> | undefined;
  const d: Serve = {
    child, store, port, stderr: () => err,
    stop: () => {
      stopping ??= (async () => {
        running.delete(d);
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
        const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
        try { return await exited; } finally { clearTimeout(t); }
      })();
      return stopping;
    },
  };
  running.add(d);
  let gone = false;
  void exited.then(() => { gone = true; });
  // Ready once the control socket answers (it starts after NBD listens; the ready line may be below the level).
  await until(async () => {
    if (gone) throw new Error(`dormant serve exited early:\n${err}`);
    if (!fs.existsSync(path.join(store, 'control.sock'))) return false;
    return post(store, 'list', '[]').then((r) => r.status === 200, () => false);
  }, 15_000, 'dormant serve answering', d);
  return d;
}

/** Runs a program (bounded); rejects when it cannot start, fails or times out. */
function tool(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, { timeout: 60_000, killSignal: 'SIGKILL', encoding: 'utf8', env }, (err, stdout, stderr) => {
      if (err) reject(new Error(`${cmd} ${args.join(' ')}: ${err.message}\n${stderr}`));
      else resolve({ stdout, stderr });
    });
  });
}

/** Every stderr line parsed as JSON (each must be one object). */
function jsonLines(d: Serve): Array<Record<string, any>> {
  return d.stderr().split('\n').filter(Boolean).map((l) => {
    let v: unknown;
    expect(() => { v = JSON.parse(l); }, `a JSON line: ${l}`).not.toThrow();
    expect(typeof v).toBe('object');
    return v as Record<string, any>;
  });
}

/** POST /v1/<op> with `body` on the control socket; the status and the parsed answer lines. */
function post(store: string, op: string, body: string): Promise<{ status: number; lines: any[] }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: path.join(store, 'control.sock'), path: `/v1/${op}`, method: 'POST' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (s: string) => { text += s; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, lines: text.split('\n').filter(Boolean).map((l) => JSON.parse(l)) }));
    });
    req.setTimeout(10_000, () => req.destroy(new Error('control request timed out')));
    req.on('error', reject);
    req.end(body);
  });
}

const uri = (d: Serve) => `nbd://127.0.0.1:${d.port}/v`;

describe('serve --log-format json', () => {
  it('every line is a JSON object with time, level and msg; NBD open and close events name export and client; counters every second', async () => {
    const d = await serve(freshStore('log-json'), ['--log-format', 'json', '--log-stats-every', '1s']);
    await until(() => d.stderr().includes('dormant serve: store'), 10_000, 'ready line', d);
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x61 0 1M', '-c', 'read -P 0x61 0 64k', uri(d)]);
    const isStats = (e: Record<string, any>) => e.event === 'stats' && e.export === 'v' && typeof e.periodSeconds === 'number';
    await until(() => jsonLines(d).some(isStats), 5000, 'a per-export counters line', d);

    const events = jsonLines(d);
    for (const e of events) {
      expect(e.time, JSON.stringify(e)).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
      expect(['trace', 'debug', 'info', 'warn', 'error']).toContain(e.level);
      expect(typeof e.msg).toBe('string');
    }
    const ready = events.find((e) => e.msg.startsWith('dormant serve: store'))!;
    expect(ready).toMatchObject({ level: 'info', store: d.store, nbdTcp: `127.0.0.1:${d.port}`, control: path.join(d.store, 'control.sock') });

    // Each connection: one open and one close event with the same conn, export and client; the close one has its counters.
    await until(() => {
      const e = jsonLines(d);
      return e.filter((x) => x.event === 'open').every((o) => e.some((c) => c.event === 'close' && c.conn === o.conn));
    }, 5000, 'a close event for every open one', d);
    const open = jsonLines(d).filter((e) => e.event === 'open');
    const close = jsonLines(d).filter((e) => e.event === 'close' && open.some((o) => o.conn === e.conn));
    expect(open.length).toBeGreaterThanOrEqual(1);
    for (const o of open) {
      expect(o).toMatchObject({ level: 'info', export: 'v', client: expect.stringMatching(/^127\.0\.0\.1:\d+$/), readOnly: false });
      expect(close.filter((c) => c.conn === o.conn)).toEqual([
        expect.objectContaining({ level: 'info', export: 'v', client: o.client, reason: 'disc', errors: 0 })]);
    }
    const total = (list: Array<Record<string, any>>, k: string) => list.reduce((n, e) => n + e[k], 0);
    expect(total(close, 'bytesWritten')).toBe(MiB);
    expect(total(close, 'bytesRead')).toBeGreaterThanOrEqual(64 * 1024);

    // Once the period of the last close has been logged, the counters lines add up to what the connections did.
    await until(() => total(jsonLines(d).filter(isStats), 'bytesWritten') >= MiB, 5000, 'counters lines up to the last close', d);
    const stats = jsonLines(d).filter(isStats);
    for (const k of ['requests', 'reads', 'writes', 'bytesRead', 'bytesWritten', 'errors']) expect(total(stats, k), k).toBe(total(close, k));
    for (const e of stats) expect(e.requests).toBeGreaterThan(0);
    // Idle: no more counters lines for the export.
    await new Promise((r) => setTimeout(r, 2500));
    expect(jsonLines(d).filter(isStats)).toHaveLength(stats.length);

    expect(await d.stop()).toEqual({ code: 0, signal: null });
    expect(jsonLines(d).at(-1)).toMatchObject({ level: 'info', msg: 'dormant serve: stopped' });
  });
});

describe('serve, text log (the default)', () => {
  it('keeps "<time> <line>" lines: open and close name export and client; a counters line after I/O', async () => {
    const d = await serve(freshStore('log-text'), ['--log-stats-every', '1s']);
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x62 0 128k', uri(d)]);
    await until(() => / nbd: export=v in the last \d+ s: /.test(d.stderr()), 5000, 'a counters line', d);
    const lines = d.stderr().split('\n').filter(Boolean);
    for (const l of lines) expect(l).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z [a-z]/);
    expect(lines.join('\n')).toMatch(/ nbd: conn#\d+ opened export=v client=127\.0\.0\.1:\d+\n/);
    expect(lines.join('\n')).toMatch(/ nbd: conn#\d+ disconnected export=v reason=disc requests=\d+ .*bytesWritten=131072 .*errors=0 client=127\.0\.0\.1:\d+\n/);
    expect(lines.join('\n')).toMatch(/ nbd: export=v in the last \d+ s: requests=\d+ reads=\d+ writes=\d+ bytesRead=\d+ bytesWritten=131072 errors=0 connections=\d/);
    expect(await d.stop()).toEqual({ code: 0, signal: null });
  });

  it('--log-stats-every off: no counters lines (the flag wins over the config file\'s 1s)', async () => {
    const store = freshStore('log-off');
    const conf = path.join(path.dirname(store), 'dormant.toml');
    fs.writeFileSync(conf, 'log-stats-every = "1s"\n');
    const d = await serve(store, ['--config', conf, '--log-stats-every', 'off']);
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x63 0 64k', uri(d)]);
    await until(() => / disconnected export=v /.test(d.stderr()), 5000, 'disconnect line', d);
    await new Promise((r) => setTimeout(r, 2500));
    expect(await d.stop()).toEqual({ code: 0, signal: null });
    expect(d.stderr()).not.toMatch(/ nbd: export=/);
  });
});

describe('log levels and -q', () => {
  it('--log-level warn hides info events; a malformed control request is a warning, answered EINVAL; the daemon keeps answering', async () => {
    const d = await serve(freshStore('log-warn'), ['--log-level', 'warn', '--log-format', 'json', '--log-stats-every', '1s']);
    await tool('nbdinfo', ['--size', uri(d)]);
    // Garbage bytes (not HTTP): that connection is closed, nothing else.
    await new Promise<void>((resolve) => {
      const c = net.connect(path.join(d.store, 'control.sock'), () => c.end(Buffer.from('\x00\x01garbage\xff\r\n\r\n', 'latin1')));
      c.on('close', () => resolve());
      c.on('error', () => resolve());
      c.resume();
      c.setTimeout(5000, () => c.destroy());
    });
    // Not JSON, not an array, wrong count, wrong type, out of range, not in the enum, extra VmSpec property.
    const bad: Array<[string, string, RegExp]> = [
      ['list', '{"a":', /^bad control request: the body is not JSON/],
      ['list', '{"a":1}', /^bad control request: list takes \(\), a JSON array, not an object$/],
      ['createVolume', '["x", 4096]', /^bad control request: createVolume takes \(name: string, size: integer, kind: "disk"\|"memory"\), got 2 arguments$/],
      ['createVolume', '["x", "4096", "disk"]', /: size must be integer$/],
      ['createVolume', '["x", -1, "disk"]', /: size must be >= 0$/],
      ['createVolume', '["x", 4096, "tape"]', /: kind must be equal to one of the allowed values: "disk", "memory"$/],
      ['vmStart', '["x", true, "sometimes"]', /: restart must be equal to one of the allowed values/],
      ['vmCreate', JSON.stringify([{ name: 'x', from: 'v', memoryBytes: 1, cpus: 1, image: 'i', kernel: 'k', initrd: 'r', cmdline: '', evil: 1 }]),
        /: spec must NOT have additional properties \(evil\)$/],
    ];
    for (const [op, body, message] of bad) {
      const r = await post(d.store, op, body);
      expect(r.status, body).toBe(400);
      expect(r.lines).toHaveLength(1);
      expect(r.lines[0].error.code, body).toBe('EINVAL');
      expect(r.lines[0].error.message, body).toMatch(message);
    }
    // Nothing was created, and the daemon answers good requests, raw and through the CLI (exit 1 for the user error).
    const good = await post(d.store, 'list', '[]');
    expect(good.status).toBe(200);
    expect(good.lines.at(-1).result.map((v: { name: string }) => v.name)).toEqual(['v']);
    expectFailure(dormant(['create', 'v', '--size', '1M'], { store: d.store }), /^dormant: volume 'v' already exists$/);
    expect(d.child.exitCode).toBeNull();

    expect(await d.stop()).toEqual({ code: 0, signal: null });
    const events = jsonLines(d);
    expect(events.filter((e) => e.level === 'info' || e.level === 'debug' || e.level === 'trace')).toEqual([]);
    const refused = events.filter((e) => e.msg.startsWith('control: refused a request'));
    expect(refused).toHaveLength(bad.length);
    for (const e of refused) expect(e.level).toBe('warn');
    expect(refused[2]).toMatchObject({ op: 'createVolume', err: expect.stringMatching(/got 2 arguments/) });
  });

  it('-q: serve logs warnings only (no ready, connection or stop lines); --log-level info wins over it', async () => {
    const store = freshStore('log-quiet');
    const q = await serve(store, [], ['-q']);
    await tool('nbdinfo', ['--size', uri(q)]);
    await post(store, 'list', 'nope');
    expect(await q.stop()).toEqual({ code: 0, signal: null });
    const lines = q.stderr().split('\n').filter(Boolean);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/ control: refused a request: bad control request: the body is not JSON/);

    const loud = await serve(store, ['--log-level', 'info'], ['-q']);
    await tool('nbdinfo', ['--size', uri(loud)]);
    expect(await loud.stop()).toEqual({ code: 0, signal: null });
    expect(loud.stderr()).toMatch(/^\S+ dormant serve: store /);
    expect(loud.stderr()).toMatch(/\n\S+ nbd: conn#\d+ opened export=v client=/);
    expect(loud.stderr()).toMatch(/\n\S+ dormant serve: stopped\n$/);
  });

  it('-q hides import\'s progress bar on a terminal; the result line on stdout stays', async () => {
    const work = tmp.make('log-progress');
    const store = path.join(work, 'store');
    expectOk(dormant(['init'], { store }));
    const img = path.join(work, 'img.raw');
    fs.writeFileSync(img, Buffer.alloc(16 * MiB, 0x7a));
    const env = cliEnv();
    // script(1) gives the CLI a terminal on stdin, stdout and stderr, and copies what it writes.
    const onTty = async (args: string[]) => (await tool('script', ['-qec',
      [process.execPath, BIN, ...args].map((a) => `'${a}'`).join(' '), '/dev/null'], env)).stdout;
    const loud = await onTty(['--store', store, 'import', 'a', img]);
    expect(loud).toMatch(/import a \[[#-]+\]/);
    expect(loud).toMatch(/imported a: 16\.0 MiB/);
    const quiet = await onTty(['-q', '--store', store, 'import', 'b', img]);
    expect(quiet).not.toMatch(/import b \[/);
    expect(quiet).toMatch(/imported b: 16\.0 MiB/);
  });
});

describe('log flags: errors and the config file', () => {
  it('bad values are one line, exit 1', () => {
    const store = freshStore('log-bad');
    expectFailure(dormant(['serve', '--no-tcp', '--log-level', 'loud'], { store }), /^dormant: bad --log-level 'loud': use trace, debug, info, warn, error$/);
    expectFailure(dormant(['serve', '--no-tcp', '--log-format', 'xml'], { store }), /^dormant: bad --log-format 'xml': use text or json$/);
    expectFailure(dormant(['serve', '--no-tcp', '--log-stats-every', 'often'], { store }), /^dormant: bad --log-stats-every 'often': /);
    expectFailure(dormant(['mount', tmp.make('log-bad-mnt'), '--log-level', 'loud'], { store }), /^dormant: bad --log-level 'loud'/);
  });

  it('log-format, log-level and log-stats-every from the TOML config; a flag wins', async () => {
    const store = freshStore('log-config');
    const conf = path.join(path.dirname(store), 'dormant.toml');
    fs.writeFileSync(conf, 'log-format = "json"\nlog-level = "error"\nlog-stats-every = "1s"\n');
    const d = await serve(store, ['--config', conf, '--log-level', 'info']);
    await tool('qemu-io', ['-f', 'raw', '-c', 'write 0 64k', uri(d)]);
    await until(() => d.stderr().includes('"periodSeconds"'), 5000, 'a JSON counters line', d);
    expect(await d.stop()).toEqual({ code: 0, signal: null });
    const events = jsonLines(d);
    expect(events.find((e) => e.msg.startsWith('dormant serve: store'))).toMatchObject({ level: 'info' });

    // Without the flag, the file's level holds: nothing below error.
    const quiet = await serve(store, ['--config', conf]);
    await tool('nbdinfo', ['--size', uri(quiet)]);
    expect(await quiet.stop()).toEqual({ code: 0, signal: null });
    expect(quiet.stderr()).toBe('');
  });
});

describe('mount: log-format json from its --config file', () => {
  it('the view\'s ready and stop lines are JSON events; exit 0', async () => {
    const store = freshStore('log-mount');
    const mnt = tmp.make('log-mount-dir');
    const conf = path.join(path.dirname(store), 'mount.toml');
    fs.writeFileSync(conf, 'log-format = "json"\n');
    const m = await startMount(store, mnt, ['mount', mnt, '--config', conf], /"msg":"dormant mount: store /);
    expect(fs.statSync(path.join(mnt, 'volumes', 'v')).size).toBe(8 * MiB);
    expect(await m.stop()).toEqual({ code: 0, signal: null });
    const events = m.stderr().split('\n').filter(Boolean).map((l) => JSON.parse(l) as Record<string, unknown>);
    expect(events[0]).toMatchObject({ level: 'info', store, mount: mnt, msg: expect.stringMatching(/^dormant mount: store /) });
    expect(events.at(-1)).toMatchObject({ level: 'info', msg: 'dormant mount: stopped' });
  });
});
