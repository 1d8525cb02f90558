/**
 * The safety flags of `dormant serve` reach the NBD server: the real
 * daemon (`node bin/dormant --store DIR serve ...`) in a child process with
 * `--tls require --tls-psk`, `--handshake-timeout` and `--max-connections`,
 * driven by nbdinfo and raw sockets over its Unix socket; and flags that
 * do not go together refused in one line, exit 1.
 * Every daemon is stopped with SIGTERM (SIGKILL as a last resort) whatever
 * the outcome, and every wait is bounded.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { rmSync, writeFileSync } from 'node:fs';
import * as net from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cliEnv, ensureBuilt } from '../helpers/cli.js';
import { RawClient, run, runFailing, tempDir } from './helpers.js';

const KEY = 'b5bb9d8014a0f9b1d61e21e796d78dccdf1352f23cd32812f4850b878ae4944c';

let dir: string;
let store: string;
let pskFile: string;
let child: ChildProcess | undefined;
let stderr = '';

/** Runs `dormant --store STORE ...args` to completion. */
function dormant(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, '--store', store, ...args], { env: cliEnv(), encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Waits (bounded) until the daemon's stderr has `n` lines matching `re`; returns them. */
async function lines(re: RegExp, n = 1, timeoutMs = 10_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = stderr.split('\n').filter((l) => re.test(l));
    if (found.length >= n) return found;
    if (Date.now() > deadline) throw new Error(`not ${n} lines matching ${re}:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

const sock = (): string => path.join(store, 'nbd.sock');
const pskUri = (user: string, file: string): string => `nbds+unix://${user}@/vol?socket=${sock()}&tls-psk-file=${file}`;

beforeAll(async () => {
  ensureBuilt();
  dir = tempDir('serve-flags');
  store = path.join(dir, 'store');
  expect(dormant(['init']).status).toBe(0);
  expect(dormant(['create', 'vol', '--size', '4M']).status).toBe(0);
  pskFile = path.join(dir, 'server.psk');
  writeFileSync(pskFile, `alice:${KEY}\n`, { mode: 0o600 });
  child = spawn(process.execPath, [BIN, '--store', store, 'serve', '--no-tcp', '--tls', 'require', '--tls-psk', pskFile,
    '--handshake-timeout', '0.5', '--max-connections', '2'], { env: cliEnv(), stdio: ['ignore', 'ignore', 'pipe'] });
  child.stderr!.setEncoding('utf8');
  child.stderr!.on('data', (d: string) => { stderr += d; });
  await lines(/ dormant serve: store .*\(TLS require, PSK\)/, 1, 15_000);
}, 60_000);

afterAll(async () => {
  if (child !== undefined && child.exitCode === null) {
    const exited = new Promise((resolve) => child!.once('exit', resolve));
    child.kill('SIGTERM');
    const t = setTimeout(() => child!.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

describe('dormant serve with --tls-psk, --handshake-timeout and --max-connections', () => {
  it('nbdinfo with the key from the PSK file connects; with another key it is refused', async () => {
    expect(await run('nbdinfo', ['--size', pskUri('alice', pskFile)])).toBe(`${4 * 1024 * 1024}\n`);
    const wrong = path.join(dir, 'wrong.psk');
    writeFileSync(wrong, `alice:${KEY.replace(/^b5/, 'c6')}\n`);
    await runFailing('nbdinfo', ['--size', pskUri('alice', wrong)]);
    await lines(/reason=TLS handshake failed .*PSK identity "alice"/);
  }, 30_000);

  it('a client that says nothing is cut after --handshake-timeout, logged', async () => {
    const start = Date.now();
    const c = await RawClient.connect(sock());
    expect(await c.closedWithin(5000)).toBe(true);
    expect(Date.now() - start).toBeGreaterThanOrEqual(450);
    await lines(/handshake not finished within 0\.5 s/);
    await lines(/reason=handshake timeout/);
  }, 30_000);

  it('a connection beyond --max-connections is closed at once, logged', async () => {
    const held = [await RawClient.connect(sock()), await RawClient.connect(sock())];
    const extra = net.connect(sock());
    extra.on('error', () => {});
    let got = 0;
    extra.on('data', (d: Buffer) => { got += d.length; });
    await new Promise<void>((resolve) => extra.once('close', () => resolve()));
    expect(got).toBe(0);
    await lines(/nbd: refused a connection from unix: 2 connections open, the limit \(max connections 2\)/);
    for (const c of held) c.destroy();
  }, 30_000);

  it('flags that do not go together are refused in one line, exit 1', () => {
    const cases: [string[], RegExp][] = [
      [['--tls-psk', pskFile], /--tls-psk needs --tls on or --tls require/],
      [['--tls', 'require', '--tls-psk', pskFile, '--tls-verify-peer'], /--tls-psk replaces certificates/],
      [['--tls', 'require', '--tls-cert', pskFile, '--tls-key', pskFile, '--tls-verify-peer'], /--tls-verify-peer needs --tls-ca/],
      [['--handshake-timeout', '0'], /bad --handshake-timeout '0'/],
      [['--max-connections', '-3'], /bad --max-connections/],
    ];
    for (const [args, re] of cases) {
      const r = dormant(['serve', '--no-tcp', '--socket', path.join(dir, 'other.sock'), ...args]);
      expect(r.status, `${args.join(' ')}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toMatch(re);
      expect(r.stderr.trim().split('\n').length).toBe(1);
    }
  });
});
