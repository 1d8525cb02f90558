/**
 * Limits a hostile or broken client meets before it is served:
 *   - the handshake timeout: a client that has not finished option
 *     haggling in time (silent, a few bytes, or options without end) is
 *     cut and logged; one that finished in time may then idle;
 *   - the connection limit: connections beyond it are closed at once
 *     (before the greeting) and logged, without flooding the log, while
 *     the others keep being served;
 *   - a warning when NBD is on TCP beyond loopback without TLS.
 * Servers here use short limits set by the test.
 */
import * as net from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  DEFAULT_HANDSHAKE_TIMEOUT_MS, DEFAULT_MAX_CONNECTIONS, NbdServer, StoreBackend,
} from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';
import { MiB, RawClient, memoryLogger, run, serveStore, type Served } from './helpers.js';

const TIMEOUT_MS = 400;
const LIMIT = 3;

let s: Served;
let limited: NbdServer;
let limitedSock: string;
let limitedLog: ReturnType<typeof memoryLogger>;

beforeAll(async () => {
  s = await serveStore('limits', async (store) => {
    await store.createVolume('vol', 4 * MiB);
  }, { handshakeTimeoutMs: TIMEOUT_MS });
  limitedSock = `${s.dir}/limited.sock`;
  limitedLog = memoryLogger();
  limited = new NbdServer({ backend: new StoreBackend(s.store), socketPath: limitedSock, logger: limitedLog, maxConnections: LIMIT });
  await limited.listen();
}, 30_000);

afterAll(async () => {
  await limited?.close();
  await s?.close();
});

/** Milliseconds until `c` is closed by the server (bounded by `maxMs`, then -1). */
async function closedAfter(c: RawClient, start: number, maxMs: number): Promise<number> {
  return (await c.closedWithin(maxMs)) ? Date.now() - start : -1;
}

/** A raw socket that counts what it receives and notes when it closes. */
function bareSocket(path: string): { socket: net.Socket; received: () => number; closed: Promise<void> } {
  const socket = net.connect(path);
  let n = 0;
  socket.on('data', (d: Buffer) => { n += d.length; });
  socket.on('error', () => {});
  const closed = new Promise<void>((resolve) => socket.once('close', () => resolve()));
  return { socket, received: () => n, closed };
}

/** Disconnect lines with reason=handshake timeout in the main server's log, once its lines settled. */
async function timeoutLines(): Promise<number> {
  await new Promise((r) => setTimeout(r, 50));
  return s.logger.lines.filter((l) => /disconnected export=- reason=handshake timeout/.test(l)).length;
}

function within<T>(p: Promise<T>, ms: number): Promise<T | 'timeout'> {
  return Promise.race([p, new Promise<'timeout'>((r) => setTimeout(() => r('timeout'), ms))]);
}

describe('handshake timeout', () => {
  it('defaults to 10 s', () => {
    expect(DEFAULT_HANDSHAKE_TIMEOUT_MS).toBe(10_000);
  });

  it('a client that sends nothing after the greeting is cut after the timeout, and logged', async () => {
    s.logger.lines.length = 0;
    const start = Date.now();
    const c = await RawClient.connect(s.socketPath);
    const ms = await closedAfter(c, start, 5000);
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(TIMEOUT_MS + 2000);
    await new Promise((r) => setTimeout(r, 50));
    expect(s.logger.lines.filter((l) => /conn#\d+ handshake not finished within 0\.4 s/.test(l)).length).toBe(1);
    expect(await timeoutLines()).toBe(1);
  });

  it('a client that sends only the first bytes of its flags is cut too', async () => {
    s.logger.lines.length = 0;
    const start = Date.now();
    const c = await RawClient.connect(s.socketPath);
    c.write(Buffer.from([0, 0]));
    const ms = await closedAfter(c, start, 5000);
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(TIMEOUT_MS + 2000);
    expect(await timeoutLines()).toBe(1);
  });

  it('a client that keeps sending options but never picks an export is cut; one that finished in time may idle', async () => {
    s.logger.lines.length = 0;
    const start = Date.now();
    const done = await RawClient.connect(s.socketPath);
    await done.go('vol');
    const c = await RawClient.connect(s.socketPath);
    c.sendFlags();
    let answered = 0;
    const haggle = (async () => {
      for (;;) {
        const r = await c.option(P.NBD_OPT_LIST).catch(() => null);
        if (r === null) return;
        answered++;
        await new Promise((res) => setTimeout(res, 50));
      }
    })();
    const ms = await closedAfter(c, start, 5000);
    await haggle;
    expect(answered).toBeGreaterThan(2);
    expect(ms).toBeGreaterThanOrEqual(TIMEOUT_MS - 50);
    expect(ms).toBeLessThan(TIMEOUT_MS + 2000);
    expect(await timeoutLines()).toBe(1);
    // The client that reached transmission in time outlived the timeout and is still served.
    await new Promise((r) => setTimeout(r, TIMEOUT_MS));
    expect(done.ended).toBe(false);
    done.request(P.NBD_CMD_READ, 7n, 0, 4096);
    const r = await done.simpleReply(() => 4096);
    expect(r.error).toBe(0);
    expect(r.cookie).toBe(7n);
    done.request(P.NBD_CMD_DISC, 8n, 0, 0);
    expect(await done.closedWithin(5000)).toBe(true);
  });
});

describe('connection limit', () => {
  it('defaults to 1000 (less when the open-file limit is low)', () => {
    expect(DEFAULT_MAX_CONNECTIONS).toBe(1000);
  });

  it('connections beyond the limit are closed at once and logged; the others keep being served', async () => {
    const held = await Promise.all(Array.from({ length: LIMIT }, () => RawClient.connect(limitedSock)));
    expect(limited.connectionCount).toBe(LIMIT);
    const extra = [bareSocket(limitedSock), bareSocket(limitedSock)];
    for (const e of extra) {
      expect(await within(e.closed, 2000)).not.toBe('timeout');
      expect(e.received()).toBe(0); // not even the greeting
    }
    const refusals = limitedLog.lines.filter((l) => /refused/.test(l));
    // The first refusal is logged at once; the next ones within the interval are only counted.
    expect(refusals.length).toBe(1);
    expect(refusals[0]).toMatch(new RegExp(`nbd: refused a connection from unix: ${LIMIT} connections open, the limit`));
    // The held connections are served.
    for (const [i, c] of held.entries()) {
      await c.go('vol');
      c.request(P.NBD_CMD_READ, BigInt(i), 0, 512);
      expect((await c.simpleReply(() => 512)).error).toBe(0);
    }
    // A freed slot takes a new client.
    held[0].request(P.NBD_CMD_DISC, 99n, 0, 0);
    expect(await held[0].closedWithin(5000)).toBe(true);
    for (let i = 0; i < 100 && limited.connectionCount >= LIMIT; i++) await new Promise((r) => setTimeout(r, 10));
    const out = await run('nbdinfo', ['--size', `nbd+unix:///vol?socket=${limitedSock}`]);
    expect(out.trim()).toBe(String(4 * MiB));
    for (const c of held.slice(1)) c.destroy();
    // The refusals not logged yet are summed up at the latest when the server closes.
    await limited.close();
    expect(limitedLog.lines.some((l) => /nbd: refused 1 more connection /.test(l))).toBe(true);
  }, 30_000);
});

describe('TCP beyond loopback', () => {
  async function warnings(host: string): Promise<string[]> {
    const log = memoryLogger();
    const server = new NbdServer({ backend: new StoreBackend(s.store), tcp: { host, port: 0 }, logger: log });
    await server.listen();
    await server.close();
    return log.lines.filter((l) => /warning/.test(l));
  }

  it('without TLS on 0.0.0.0: one warning line; on 127.0.0.1: none', async () => {
    const wide = await warnings('0.0.0.0');
    expect(wide.length).toBe(1);
    expect(wide[0]).toMatch(/nbd: warning: NBD on TCP 0\.0\.0\.0:\d+ without TLS/);
    expect(await warnings('127.0.0.1')).toEqual([]);
  });
});
