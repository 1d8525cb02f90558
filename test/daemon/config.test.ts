/**
 * Running as a service: `serve --config FILE` (TOML) takes the store and
 * serve's options from the file, a flag on the command line wins, unknown
 * keys and wrong types are one line, exit 1; docs/dormant.toml parses with
 * only known keys; with NOTIFY_SOCKET set, the daemon sends READY=1 (with
 * its own pid) once it serves and STOPPING=1 at SIGTERM, received on a
 * real Unix datagram socket (python3).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, REPO, cliEnv, dormant, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { cleanupMounts, tool } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const children = new Set<ChildProcess>();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Starts `dormant ...args` with `env`; resolves with the child and its stderr once `ready` matches (bounded). */
async function serve(args: string[], env: Record<string, string> = {}, ready = /dormant serve: store/) {
  const child = spawn(process.execPath, [BIN, ...args], { env: cliEnv(env), stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(child);
  let err = '';
  child.stderr!.on('data', (d: Buffer) => { err += d.toString(); });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => { children.delete(child); resolve(code); }));
  for (let i = 0; i < 150 && !ready.test(err) && child.exitCode === null; i++) await sleep(100);
  expect(err).toMatch(ready);
  return { child, stderr: () => err, exited };
}

describe('serve as a service', () => {
  let work: string;
  let store: string;

  beforeAll(() => {
    ensureBuilt();
    work = tmp.make('config');
    store = path.join(work, 'store');
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['create', 'v', '--size', '1M'], { store }));
  });

  afterAll(async () => {
    for (const c of children) c.kill('SIGKILL');
    await cleanupMounts();
    tmp.cleanup();
  });

  it('takes the store and options from --config; a flag given on the command line wins', async () => {
    const file = path.join(work, 'dormant.toml');
    fs.writeFileSync(file, [
      `store = "${store}"`, 'tcp = false', `socket = "${path.join(work, 'from-file.sock')}"`,
      'metrics = "127.0.0.1:0"', 'handshake-timeout = 5', 'scrubEvery = "1d"', '',
    ].join('\n'));
    const d = await serve(['serve', '--config', file, '--socket', path.join(work, 'from-flag.sock')]);
    const ready = d.stderr().split('\n').find((l) => l.includes('dormant serve: store'))!;
    expect(ready).toContain(`store ${store};`);
    expect(ready).toContain(`nbd+unix:///<volume>?socket=${path.join(work, 'from-flag.sock')}`);
    expect(ready).not.toContain('nbd://'); // tcp = false
    expect(ready).toMatch(/metrics on http:\/\/127\.0\.0\.1:\d+\/metrics/);
    expect(ready).toContain('scrub every 86400 s');
    expect((await tool('nbdinfo', ['--size', `nbd+unix:///v?socket=${path.join(work, 'from-flag.sock')}`])).stdout.trim()).toBe(String(2 ** 20));
    d.child.kill('SIGTERM');
    expect(await d.exited).toBe(0);
  });

  it('refuses unknown settings, wrong types and a missing file in one line; the sample in docs/ is valid', () => {
    const bad = (name: string, text: string) => { const f = path.join(work, name); fs.writeFileSync(f, text); return f; };
    expectFailure(dormant(['serve', '--config', bad('u.toml', 'listne = "127.0.0.1:1"\n')], { store }),
      /^dormant: bad --config '.*u\.toml': unknown setting 'listne' \(settings: store, listen, tcp, socket, /);
    expectFailure(dormant(['serve', '--config', bad('t.toml', 'tcp = "no"\n')], { store }), /: tcp must be true or false$/);
    expectFailure(dormant(['serve', '--config', bad('s.toml', 'listen = [1]\n')], { store }), /: listen must be a string or a number$/);
    expectFailure(dormant(['serve', '--config', bad('x.toml', 'listen = \n')], { store }), /^dormant: bad --config '.*x\.toml': /);
    expectFailure(dormant(['serve', '--config', path.join(work, 'none.toml')], { store }), /^dormant: cannot read --config '.*none\.toml': ENOENT$/);
    // The sample: every key known (it fails later, on its store path, not on a setting).
    const sample = path.join(REPO, 'docs', 'dormant.toml');
    const r = dormant(['serve', '--config', sample, '--store', path.join(work, 'no-store')]);
    expect(r.stderr).not.toMatch(/--config/);
    expect(r.status).toBe(1);
  });

  it('tells systemd: READY=1 with its pid once serving, STOPPING=1 at SIGTERM', async () => {
    const sock = path.join(work, 'notify.sock');
    const receiver = spawn('python3', ['-c', [
      'import socket, sys',
      's = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)',
      's.bind(sys.argv[1])',
      's.settimeout(60)',
      'print("bound", flush=True)',
      'for _ in range(2): print(s.recv(4096).decode().replace("\\n", "|"), flush=True)',
    ].join('\n'), sock], { stdio: ['ignore', 'pipe', 'inherit'] });
    children.add(receiver);
    let got = '';
    receiver.stdout!.on('data', (d: Buffer) => { got += d.toString(); });
    for (let i = 0; i < 100 && !got.includes('bound'); i++) await sleep(50);
    const d = await serve(['--store', store, 'serve', '--no-tcp'], { NOTIFY_SOCKET: sock });
    for (let i = 0; i < 100 && !got.includes('READY=1'); i++) await sleep(50);
    expect(got).toContain(`READY=1|MAINPID=${d.child.pid}|STATUS=serving ${store}`);
    d.child.kill('SIGTERM');
    expect(await d.exited).toBe(0);
    for (let i = 0; i < 100 && !got.includes('STOPPING=1'); i++) await sleep(50);
    expect(got).toContain('STOPPING=1');
    receiver.kill();
  });
});
