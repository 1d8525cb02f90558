/**
 * Big WRITEs received on libuv's pool (pool-receive.ts PoolReceiver,
 * native recvStream) through a real store: a pipelined stream of 1 MiB
 * writes (FUA among them), broken by writes of other sizes, a FLUSH and a
 * write that fails, reads back byte for byte, before and after a flush and
 * a restart, and the disconnect line shows the pool took the payloads; a
 * client that stalls in the middle of a payload has the rest read the
 * ordinary way, and its data is right; a client that vanishes in the
 * middle of a stream leaves the server serving, the writes it was answered
 * in place, nothing of the write it left unfinished, and its landings
 * reusable; the server shuts down while a stream is in flight without
 * hanging.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../src/blockstore/index.js';
import { NbdServer, StoreBackend } from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';
import { MiB, RawClient, memoryLogger, seededBytes, serveStore, type Served } from './helpers.js';

const SIZE = 32 * MiB;
let s: Served;

beforeAll(async () => {
  s = await serveStore('pool-recv', async (store) => {
    await store.createVolume('v', SIZE);
  });
});

afterAll(async () => {
  await s.close();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(s.socketPath);
  await c.go('v');
  return c;
}

/** The volume's bytes [offset, offset + length) over NBD, 1 MiB at a time. */
async function readBack(c: RawClient, offset: number, length: number): Promise<Buffer> {
  const parts: Buffer[] = [];
  for (let at = 0; at < length; at += MiB) {
    const n = Math.min(MiB, length - at);
    c.request(P.NBD_CMD_READ, 900n, offset + at, n);
    const r = await c.simpleReply(() => n);
    expect(r.error).toBe(0);
    parts.push(r.data);
  }
  return Buffer.concat(parts);
}

/** The number in `key=N` of the first disconnect line logged after line `from`. */
async function disconnectStat(from: number, key: string): Promise<number> {
  const deadline = Date.now() + 5000;
  for (;;) {
    const line = s.logger.lines.slice(from).find((l) => l.includes('disconnected export=v'));
    if (line !== undefined) return Number(new RegExp(`${key}=(\\d+)`).exec(line)![1]);
    if (Date.now() > deadline) throw new Error('no disconnect line');
    await sleep(20);
  }
}

/** Waits until the server holds no connection: each one's disconnect line is logged by then. */
async function serverIdle(): Promise<void> {
  const deadline = Date.now() + 5000;
  while (s.server.connectionCount > 0) {
    if (Date.now() > deadline) throw new Error(`${s.server.connectionCount} connections still open`);
    await sleep(20);
  }
}

describe('WRITE payloads received on the pool', () => {
  it('applies a pipelined stream of big writes, broken by other requests, byte for byte', async () => {
    const want = Buffer.alloc(SIZE);
    const c = await client();
    const mark = s.logger.lines.length;
    // Requests in order; all sent before any reply is read (the client pipelines), in two rounds.
    type Req = { type: number; offset: number; length: number; flags?: number; data?: Buffer; error?: number };
    const rounds: Req[][] = [];
    for (let round = 0; round < 2; round++) {
      const reqs: Req[] = [];
      for (let i = 0; i < 12; i++) {
        const offset = ((i * 5 + round * 3) % 24) * MiB;
        reqs.push({ type: P.NBD_CMD_WRITE, offset, length: MiB, flags: i % 4 === 3 ? P.NBD_CMD_FLAG_FUA : 0, data: seededBytes(MiB, 100 * round + i) });
        if (i === 4) reqs.push({ type: P.NBD_CMD_WRITE, offset: 24 * MiB, length: 512 * 1024, data: seededBytes(512 * 1024, 7 + round) });
        if (i === 6) reqs.push({ type: P.NBD_CMD_WRITE, offset: 26 * MiB + 4096, length: 4096, data: seededBytes(4096, 9 + round) });
        if (i === 7) reqs.push({ type: P.NBD_CMD_FLUSH, offset: 0, length: 0 });
        if (i === 8) reqs.push({ type: P.NBD_CMD_WRITE, offset: SIZE - MiB / 2, length: MiB, data: seededBytes(MiB, 1), error: P.NBD_ENOSPC });
        if (i === 9) reqs.push({ type: P.NBD_CMD_WRITE, offset: 27 * MiB + 512, length: MiB, data: seededBytes(MiB, 11 + round) });
      }
      rounds.push(reqs);
    }
    for (const reqs of rounds) {
      reqs.forEach((r, k) => c.request(r.type, BigInt(k), r.offset, r.length, r.flags ?? 0, r.data));
      const errors = new Map<bigint, number>();
      for (let k = 0; k < reqs.length; k++) {
        const r = await c.simpleReply();
        errors.set(r.cookie, r.error);
      }
      reqs.forEach((r, k) => {
        expect(errors.get(BigInt(k)), `request ${k}`).toBe(r.error ?? 0);
        if ((r.error ?? 0) === 0 && r.data !== undefined) r.data.copy(want, r.offset);
      });
    }
    expect((await readBack(c, 0, SIZE)).equals(want)).toBe(true);
    c.request(P.NBD_CMD_DISC, 0n, 0, 0);
    // Payloads came through the pool. (Typically nearly all of them; but a pause of this
    // process's thread longer than the pool's stall limit sends the rest the ordinary way.)
    expect(await disconnectStat(mark, 'bytesOnPool')).toBeGreaterThanOrEqual(MiB);
    await s.store.flush();
    const d = await client();
    expect((await readBack(d, 0, SIZE)).equals(want)).toBe(true);
    d.destroy();
  });

  it('reads the rest of a stalled payload the ordinary way, and later ones too', async () => {
    const c = await client();
    const a = seededBytes(MiB, 21);
    const b = seededBytes(MiB, 22);
    const head = (cookie: bigint, offset: number): Buffer => {
      const h = Buffer.alloc(P.REQUEST_SIZE);
      h.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
      h.writeUInt16BE(P.NBD_CMD_WRITE, 6);
      h.writeBigUInt64BE(cookie, 8);
      h.writeBigUInt64BE(BigInt(offset), 16);
      h.writeUInt32BE(MiB, 24);
      return h;
    };
    c.write(Buffer.concat([head(1n, 2 * MiB), a.subarray(0, 300 * 1024)]));
    await sleep(150); // well past the pool's stall limit
    c.write(a.subarray(300 * 1024));
    c.write(Buffer.concat([head(2n, 3 * MiB), b]));
    for (let i = 0; i < 2; i++) expect((await c.simpleReply()).error).toBe(0);
    expect((await readBack(c, 2 * MiB, 2 * MiB)).equals(Buffer.concat([a, b]))).toBe(true);
    c.destroy();
  });

  it('keeps serving after a client vanishes mid-stream, and reuses what it left', async () => {
    const written = Array.from({ length: 6 }, (_, i) => seededBytes(MiB, 50 + i));
    await serverIdle();
    const probe = await client();
    const untouched = await readBack(probe, 8 * MiB, MiB); // where the unfinished write was headed
    probe.destroy();
    await serverIdle();
    const before = (await s.store.stats()).segmentBytes;
    let onPool = 0;
    for (let round = 0; round < 3; round++) {
      const mark = s.logger.lines.length;
      const c = await client();
      written.forEach((data, i) => c.request(P.NBD_CMD_WRITE, BigInt(i), i * MiB, MiB, 0, data));
      c.request(P.NBD_CMD_WRITE, 9n, 8 * MiB, MiB); // header only,
      c.write(seededBytes(200 * 1024, 3)); // a fifth of the payload,
      // The stream is in: the six writes before it are answered, and the server is holding a payload
      // that can never be whole (on the pool, or read the ordinary way once the pool's wait for
      // more bytes ran out: the vanishing must be survived either way).
      for (let i = 0; i < 6; i++) {
        const r = await c.simpleReply();
        expect(r.error, `round ${round}, write ${r.cookie}`).toBe(0);
      }
      c.destroy(); // and gone
      await serverIdle();
      onPool += await disconnectStat(mark, 'bytesOnPool');
    }
    const d = await client();
    // What was answered is there; the unfinished write left nothing.
    expect((await readBack(d, 0, 6 * MiB)).equals(Buffer.concat(written))).toBe(true);
    expect((await readBack(d, 8 * MiB, MiB)).equals(untouched)).toBe(true);
    d.destroy();
    // Payloads came through the pool (typically all six of each round; a pause of this process's
    // thread longer than the pool's stall limit sends the rest the ordinary way).
    expect(onPool).toBeGreaterThanOrEqual(MiB);
    await s.store.flush();
    // Abandoned landings go back to the store: three rounds did not take three rounds of new space.
    expect((await s.store.stats()).segmentBytes - before).toBeLessThan(3 * 7 * MiB);
  });

  it('shuts down with a stream in flight', async () => {
    const dir = path.join(s.dir, 'shutdown');
    const store = await Store.init(dir);
    await store.createVolume('w', 16 * MiB);
    const socketPath = path.join(s.dir, 'shutdown.sock');
    const server = new NbdServer({ backend: new StoreBackend(store), socketPath, logger: memoryLogger() });
    await server.listen();
    const c = await RawClient.connect(socketPath);
    await c.go('w');
    for (let i = 0; i < 16; i++) c.request(P.NBD_CMD_WRITE, BigInt(i), i * MiB, MiB, 0, seededBytes(MiB, i));
    await sleep(10);
    const t0 = Date.now();
    await server.close();
    expect(Date.now() - t0).toBeLessThan(10_000);
    await store.close();
    c.destroy();
  });
});
