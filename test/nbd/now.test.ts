/**
 * The transmission loop's at-once paths (VolumeHandle.readView and
 * writeNow): a READ answered from a view without a promise, a small WRITE
 * applied straight from the receive queue, and the cases the loop must
 * still get right there: a store that says "not now" (the ordinary path
 * runs), a write applied but held back by backpressure (replied only once
 * it lets go, and the connection waits for it at DISC), a write whose
 * backpressure fails (an error reply), and a store that throws (the
 * ordinary path reports it). A handle over memory plays the store, so
 * each case is forced.
 */
import path from 'node:path';
import { rmSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DormantError } from '../../src/blockstore/errors.js';
import { NbdServer } from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';
import { MemoryBackend, MemoryVolume } from './memory-backend.js';
import { RawClient, memoryLogger, seededBytes, tempDir } from './helpers.js';

/** What the next writeNow does: apply and return true, a held promise, a failing promise, false, or throw. */
type Mode = 'true' | 'hold' | 'fail' | 'false' | 'throw';

class NowVolume extends MemoryVolume {
  mode: Mode = 'true';
  nowWrites = 0;
  nowReads = 0;
  release: (() => void) | null = null;
  override readView(offset: number, length: number): Buffer | null {
    if (length % 4096 !== 0) return null;
    this.nowReads++;
    return this.data.subarray(offset, offset + length);
  }
  override writeNow(offset: number, data: Buffer): boolean | Promise<void> {
    if (this.mode === 'false') return false;
    if (this.mode === 'throw') throw new DormantError('EIO', 'broken');
    this.nowWrites++;
    data.copy(this.data, offset); // the queue's bytes are valid only now
    if (this.mode === 'true') return true;
    if (this.mode === 'fail') return Promise.reject(new DormantError('EIO', 'write-back failed'));
    return new Promise((resolve) => (this.release = resolve));
  }
  override async write(offset: number, data: Buffer): Promise<void> {
    if (this.mode === 'throw') throw new DormantError('EIO', 'broken');
    return super.write(offset, data);
  }
}

const dir = tempDir('now');
const socketPath = path.join(dir, 'nbd.sock');
const vol = new NowVolume('mem', 1 << 20);
const backend = new MemoryBackend();
backend.add(vol);
let server: NbdServer;

beforeAll(async () => {
  server = new NbdServer({ backend, socketPath, logger: memoryLogger() });
  await server.listen();
});

afterAll(async () => {
  await server.close();
  rmSync(dir, { recursive: true, force: true });
});

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(socketPath);
  await c.go('mem');
  return c;
}

describe('requests done at once', () => {
  it('reads from a view and writes from the queue, in order, without the ordinary path', async () => {
    vol.mode = 'true';
    const c = await client();
    const a = seededBytes(4096, 1);
    const reads0 = vol.reads.length;
    c.request(P.NBD_CMD_WRITE, 1n, 8192, a.length, 0, a);
    c.request(P.NBD_CMD_READ, 2n, 8192, 4096);
    expect(await c.simpleReply()).toMatchObject({ cookie: 1n, error: 0 });
    const r = await c.simpleReply(() => 4096);
    expect([r.cookie, r.error, r.data.equals(a)]).toEqual([2n, 0, true]);
    expect(vol.nowWrites).toBe(1);
    expect(vol.nowReads).toBeGreaterThan(0);
    expect(vol.reads.length).toBe(reads0); // read() never ran
    // Not a whole block: the ordinary read path.
    c.request(P.NBD_CMD_READ, 3n, 8192, 100);
    expect((await c.simpleReply(() => 100)).data.equals(a.subarray(0, 100))).toBe(true);
    expect(vol.reads.length).toBe(reads0 + 1);
    c.destroy();
  });

  it('replies to a write held by backpressure only once it lets go, and DISC waits for it', async () => {
    vol.mode = 'hold';
    const c = await client();
    const b = seededBytes(4096, 2);
    vol.release = null;
    c.request(P.NBD_CMD_WRITE, 7n, 0, b.length, 0, b);
    for (let i = 0; i < 200 && vol.release === null; i++) await new Promise((r) => setTimeout(r, 5));
    expect(vol.release).not.toBeNull();
    vol.mode = 'true';
    c.request(P.NBD_CMD_READ, 8n, 0, 4096);
    // The read overtakes the held write's reply, and already sees its bytes.
    const r = await c.simpleReply(() => 4096);
    expect([r.cookie, r.data.equals(b)]).toEqual([8n, true]);
    c.request(P.NBD_CMD_DISC, 9n, 0, 0);
    expect(await c.closedWithin(200)).toBe(false);
    vol.release!();
    expect(await c.simpleReply()).toMatchObject({ cookie: 7n, error: 0 });
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('answers EIO when the held write fails, and goes the ordinary way when the store says not now or throws', async () => {
    const c = await client();
    vol.mode = 'fail';
    c.request(P.NBD_CMD_WRITE, 1n, 0, 4096, 0, seededBytes(4096, 3));
    expect(await c.simpleReply()).toMatchObject({ cookie: 1n, error: P.NBD_EIO });
    vol.mode = 'false';
    const now = vol.nowWrites;
    const d = seededBytes(4096, 4);
    c.request(P.NBD_CMD_WRITE, 2n, 4096, 4096, 0, d);
    expect(await c.simpleReply()).toMatchObject({ cookie: 2n, error: 0 });
    expect(vol.nowWrites).toBe(now);
    expect(vol.data.subarray(4096, 8192).equals(d)).toBe(true);
    vol.mode = 'throw';
    c.request(P.NBD_CMD_WRITE, 3n, 4096, 4096, 0, d);
    expect(await c.simpleReply()).toMatchObject({ cookie: 3n, error: P.NBD_EIO });
    vol.mode = 'true';
    c.request(P.NBD_CMD_READ, 4n, 4096, 4096);
    expect((await c.simpleReply(() => 4096)).data.equals(d)).toBe(true);
    c.destroy();
  });
});
