/**
 * recvStream (native/src/recv.cc) over a real Unix socket: a run of WRITE
 * payloads lands in the landings offered, in order, byte for byte, each
 * block hashed as hashBlocks hashes it (zero blocks flagged); the job takes
 * on a next request only when it is a WRITE (FUA allowed) of the offered
 * landing's length, block-aligned and within the size, and otherwise hands
 * its header bytes back as `leftover`; it stops on a stall (a partly filled
 * slot, whose rest the socket still holds for an ordinary read), at the end
 * of the stream, and at stop(); a payload still trickling in after the
 * job's second is handed back too; an offer after the end is refused; bad
 * arguments throw instead of reaching the pool.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { NativeError, hashBlocks, recvStream, type RecvStreamEnd } from '../../src/native/index.js';
import * as P from '../../src/nbd/protocol.js';

const BLOCK = 4096;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-recv-'));
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

/** A connected pair: the accepted side paused (nothing read by Node) and its descriptor, and the client. */
async function socketPair(): Promise<{ fd: number; server: net.Socket; client: net.Socket; close(): void }> {
  const p = path.join(dir, `s${crypto.randomBytes(4).toString('hex')}.sock`);
  const srv = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((r) => srv.listen(p, r));
  const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
  const client = net.connect(p);
  await new Promise<void>((r) => client.once('connect', r));
  const server = await accepted;
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  return { fd, server, client, close: () => { client.destroy(); server.destroy(); srv.close(); } };
}

type Pair = Awaited<ReturnType<typeof socketPair>>;

/** Runs `fn` on a fresh pair, closed afterwards. */
async function withPair(fn: (pair: Pair) => Promise<void>): Promise<void> {
  const pair = await socketPair();
  try {
    await fn(pair);
  } finally {
    pair.close();
  }
}

/** The next `n` bytes the socket gives Node's own reads (after `first`, bytes the job handed back). */
async function ordinaryReads(pair: Pair, n: number, first: Buffer = Buffer.alloc(0)): Promise<Buffer> {
  const got: Buffer[] = [first];
  pair.server.on('data', (d: Buffer) => got.push(d));
  pair.server.resume();
  await expect.poll(() => Buffer.concat(got).length).toBe(n);
  return Buffer.concat(got);
}

function header(type: number, offset: number, length: number, flags = 0, magic = P.NBD_REQUEST_MAGIC): Buffer {
  const h = Buffer.alloc(P.REQUEST_SIZE);
  h.writeUInt32BE(magic, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(7n, 8);
  h.writeBigUInt64BE(BigInt(offset), 16);
  h.writeUInt32BE(length, 24);
  return h;
}

interface Slot { dest: Buffer; hashes: Buffer; zero: Uint8Array }
function slot(bytes: number): Slot {
  return { dest: Buffer.alloc(bytes, 0xee), hashes: Buffer.alloc((bytes / BLOCK) * 16), zero: new Uint8Array(bytes / BLOCK) };
}

/** What hashBlocks makes of `data`. */
function expected(data: Buffer): { hashes: Buffer; zero: Uint8Array } {
  const hashes = Buffer.alloc((data.length / BLOCK) * 16);
  const zero = new Uint8Array(data.length / BLOCK);
  hashBlocks(data, hashes, zero);
  return { hashes, zero };
}

function expectHashed(s: Slot, data: Buffer): void {
  const e = expected(data);
  expect(s.dest.equals(data)).toBe(true);
  expect(Buffer.from(s.zero).equals(Buffer.from(e.zero))).toBe(true);
  for (let i = 0; i < e.zero.length; i++) {
    if (e.zero[i] === 0) expect(s.hashes.subarray(i * 16, i * 16 + 16).equals(e.hashes.subarray(i * 16, i * 16 + 16))).toBe(true);
  }
}

/** Starts a stream on slot 0 and records its events. */
function start(fd: number, size: number, first: Slot, from: number) {
  const events: string[] = [];
  let resolveEnd!: (e: RecvStreamEnd) => void;
  let rejectEnd!: (e: Error) => void;
  const ended = new Promise<RecvStreamEnd>((res, rej) => { resolveEnd = res; rejectEnd = rej; });
  const stream = recvStream(fd, size, first.dest, first.hashes, first.zero, from,
    (k, h) => {
      events.push(h === null ? `done ${k}` : `next ${k} ${h.readUInt32BE(24)}`);
    },
    (err, end) => (err !== null ? rejectEnd(err) : resolveEnd(end!)));
  return { stream, events, ended };
}

describe('recvStream', () => {
  it('receives a run of payloads into the landings offered, hashed, and hands back a header it does not take', async () => {
    await withPair(async (pair) => {
      // (All of it fits the socket's buffer at once: no pause the job could take for a stall.)
      const a = crypto.randomBytes(8 * BLOCK);
      a.fill(0, 4 * BLOCK, 5 * BLOCK); // a zero block
      const b = crypto.randomBytes(8 * BLOCK);
      const c = crypto.randomBytes(8 * BLOCK);
      const s0 = slot(a.length);
      a.copy(s0.dest, 0, 0, 100); // 100 bytes were in the receive queue already
      const s1 = slot(b.length);
      const s2 = slot(c.length);
      const { stream, events, ended } = start(pair.fd, 1 << 20, s0, 100);
      // Both offered before any byte comes (the job may run ahead of this thread's events).
      expect(stream.offer(s1.dest, s1.hashes, s1.zero)).toBe(true);
      expect(stream.offer(s2.dest, s2.hashes, s2.zero)).toBe(true);
      const tail = header(P.NBD_CMD_WRITE, 0, 8 * BLOCK); // another length: not taken on
      pair.client.write(Buffer.concat([
        a.subarray(100),
        header(P.NBD_CMD_WRITE, 64 * BLOCK, b.length, P.NBD_CMD_FLAG_FUA), b,
        header(P.NBD_CMD_WRITE, 0, c.length), c,
        tail,
      ]));
      const end = await ended;
      expect(events).toEqual([`done 0`, `next 1 ${b.length}`, `done 1`, `next 2 ${c.length}`, `done 2`]);
      expect(end.stalledSlot).toBe(-1);
      expect(end.leftover.equals(tail)).toBe(true);
      expectHashed(s0, a);
      expectHashed(s1, b);
      expectHashed(s2, c);
      expect(s0.zero[4]).toBe(1);
      expect(stream.offer(slot(BLOCK).dest, Buffer.alloc(16), new Uint8Array(1))).toBe(false); // over
    });
  });

  it.each([
    ['a READ', header(P.NBD_CMD_READ, 0, 4 * BLOCK)],
    ['a bad magic', header(P.NBD_CMD_WRITE, 0, 4 * BLOCK, 0, 0x12345678)],
    ['an unaligned offset', header(P.NBD_CMD_WRITE, 512, 4 * BLOCK)],
    ['a range past the size', header(P.NBD_CMD_WRITE, 62 * BLOCK, 4 * BLOCK)],
    ['a flag other than FUA', header(P.NBD_CMD_WRITE, 0, 4 * BLOCK, P.NBD_CMD_FLAG_NO_HOLE)],
  ])('does not take on %s: its header comes back and its payload stays in the socket', async (_what, next) => {
    await withPair(async (pair) => {
      const a = crypto.randomBytes(4 * BLOCK);
      const s0 = slot(a.length);
      const s1 = slot(4 * BLOCK);
      const { stream, events, ended } = start(pair.fd, 64 * BLOCK, s0, 0);
      stream.offer(s1.dest, s1.hashes, s1.zero);
      const rest = crypto.randomBytes(4 * BLOCK);
      pair.client.write(Buffer.concat([a, next, rest]));
      const end = await ended;
      expect(events).toEqual(['done 0']);
      expect(end.leftover.equals(next)).toBe(true);
      expect(s1.dest.every((x) => x === 0xee)).toBe(true);
      // What follows is still the socket's, for the ordinary reads.
      expect((await ordinaryReads(pair, rest.length)).equals(rest)).toBe(true);
    });
  });

  it('takes on nothing without an offer, nor after stop()', async () => {
    for (const stop of [false, true]) {
      await withPair(async (pair) => {
        const a = crypto.randomBytes(4 * BLOCK);
        const s0 = slot(a.length);
        const { stream, events, ended } = start(pair.fd, 64 * BLOCK, s0, 0);
        if (stop) {
          stream.offer(slot(4 * BLOCK).dest, Buffer.alloc(64), new Uint8Array(4));
          stream.stop();
        }
        const next = header(P.NBD_CMD_WRITE, 0, a.length);
        pair.client.write(Buffer.concat([a, next]));
        const end = await ended;
        expect(events).toEqual(['done 0']);
        expectHashed(s0, a);
        // The header came back, or is still in the socket: either way nothing of it was lost.
        expect((await ordinaryReads(pair, P.REQUEST_SIZE, end.leftover)).equals(next)).toBe(true);
      });
    }
  });

  it('hands a stalled payload back partly filled; the rest is read the ordinary way', async () => {
    await withPair(async (pair) => {
      const a = crypto.randomBytes(8 * BLOCK);
      const s0 = slot(a.length);
      const { ended } = start(pair.fd, 64 * BLOCK, s0, 0);
      pair.client.write(a.subarray(0, 3 * BLOCK + 5));
      const end = await ended; // after ~20 ms with no byte
      expect(end.stalledSlot).toBe(0);
      expect(end.filled).toBe(3 * BLOCK + 5);
      expect(s0.dest.subarray(0, end.filled).equals(a.subarray(0, end.filled))).toBe(true);
      pair.client.write(a.subarray(end.filled));
      expect((await ordinaryReads(pair, a.length - end.filled)).equals(a.subarray(end.filled))).toBe(true);
    });
  });

  it('hands back a payload still trickling in when the job has run its second', async () => {
    await withPair(async (pair) => {
      const a = crypto.randomBytes(8 * BLOCK);
      const s0 = slot(a.length);
      const { ended } = start(pair.fd, 64 * BLOCK, s0, 0);
      let sent = 0;
      const t0 = Date.now();
      // 64 bytes every 5 ms: never a stall, never the whole payload (it would take ~2.5 s).
      const timer = setInterval(() => {
        pair.client.write(a.subarray(sent, sent + 64));
        sent += 64;
      }, 5);
      const end = await ended.finally(() => clearInterval(timer));
      expect(Date.now() - t0).toBeLessThan(2000);
      expect(end.stalledSlot).toBe(0);
      expect(end.filled).toBeGreaterThan(0);
      expect(end.filled).toBeLessThan(a.length);
      expect(s0.dest.subarray(0, end.filled).equals(a.subarray(0, end.filled))).toBe(true);
    });
  });

  it('ends when the peer closes mid-payload, and keeps reading its duplicate after the socket is destroyed', async () => {
    const pair = await socketPair();
    const a = crypto.randomBytes(8 * BLOCK);
    const s0 = slot(a.length);
    const { ended } = start(pair.fd, 64 * BLOCK, s0, 0);
    pair.server.destroy(); // closes the original descriptor: the job reads its duplicate
    pair.client.end(a.subarray(0, 2 * BLOCK));
    const end = await ended;
    expect(end.stalledSlot).toBe(0);
    expect(end.filled).toBe(2 * BLOCK);
    expect(s0.dest.subarray(0, end.filled).equals(a.subarray(0, end.filled))).toBe(true);
    pair.close();
  });

  it('refuses bad arguments before anything reaches the pool', async () => {
    await withPair(async (pair) => {
      const noop = (): void => {};
      const s = slot(4 * BLOCK);
      const call = (dest: Buffer, hashes: Buffer, zero: Uint8Array, from = 0) =>
        () => recvStream(pair.fd, 64 * BLOCK, dest, hashes, zero, from, noop, noop);
      const catchNative = (fn: () => unknown): string => {
        try {
          fn();
        } catch (e) {
          expect(e).toBeInstanceOf(NativeError);
          return (e as NativeError).code;
        }
        return 'no error';
      };
      expect(catchNative(call(Buffer.alloc(BLOCK + 1), Buffer.alloc(32), new Uint8Array(2)))).toBe('EINVAL');
      expect(catchNative(call(s.dest, Buffer.alloc(16), s.zero))).toBe('EINVAL');
      expect(catchNative(call(s.dest, s.hashes, new Uint8Array(1)))).toBe('EINVAL');
      expect(catchNative(call(s.dest, s.hashes, s.zero, s.dest.length + 1))).toBe('EINVAL');
      expect(catchNative(() => recvStream(2 ** 31 - 1, 64 * BLOCK, s.dest, s.hashes, s.zero, 0, noop, noop))).toBe('EBADF');
      expect(() => recvStream(pair.fd, 64 * BLOCK, s.dest, s.hashes, s.zero, 0, 'x' as never, noop)).toThrow(TypeError);
    });
  });
});
