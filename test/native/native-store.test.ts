/**
 * The native addon's block-store calls (src/native/index.ts) against real
 * files and system calls: mapFile / unmapFile read a file through a
 * read-only shared mapping and leave a detached, harmless ArrayBuffer
 * behind; preadCached reads cached bytes, stops at end of file, and returns
 * -1 once the file's pages were dropped from the page cache (fsync + fadvise
 * DONTNEED); hashBlocks / verifyBlocks agree byte for byte with
 * xxhash-addon (the store's hash). Bad arguments must throw NativeError
 * (EINVAL / EBADF / EACCES) or TypeError, never crash the process;
 * rehashRun (the write-back's run move, whose results the write-back's
 * model test checks) refuses tables and ranges it could overrun. Files
 * live on a real filesystem (a tmpfs file's pages can never be dropped).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NativeError, addRun, allocateRange, fileAdvise, fileCached, hashBlocks, mapFile, populateMapped, preadCached, rehashRun,
  sendFileRange, unmapFile, verifyBlocks, writableView, writeMapped,
} from '../../src/native/index.js';
import net from 'node:net';

const require = createRequire(import.meta.url);
const { XXHash128 } = require('xxhash-addon') as { XXHash128: { hash(data: Buffer): Buffer } };

const BLOCK = 4096;
const TMPFS_MAGIC = 0x01021994;
/** A descriptor number nothing has open. */
const BAD_FD = 2 ** 31 - 1;

// As in native.test.ts: the page cache of a tmpfs file is its storage, so
// files whose pages must be dropped live on a real filesystem.
function scratchDir(): string {
  let base = os.tmpdir();
  if (fs.statfsSync(base).type === TMPFS_MAGIC) base = path.resolve('node_modules/.cache');
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, 'dormant-native-store-'));
}

function expectNative(fn: () => unknown, code: string): NativeError {
  let error: unknown;
  try {
    fn();
  } catch (e) {
    error = e;
  }
  expect(error, `expected NativeError ${code}`).toBeInstanceOf(NativeError);
  expect((error as NativeError).code).toBe(code);
  return error as NativeError;
}

let dir: string;
beforeAll(() => { dir = scratchDir(); });
afterAll(() => { if (dir) fs.rmSync(dir, { recursive: true, force: true }); });

/** Writes `data` to a fresh file of the scratch dir; returns its path. */
function fileWith(name: string, data: Buffer): string {
  const file = path.join(dir, name);
  fs.writeFileSync(file, data);
  return file;
}

/** Opens `file` (flags as fs.openSync), runs `body`, closes it whatever happens. */
async function withFd<T>(file: string, flags: string, body: (fd: number) => T | Promise<T>): Promise<T> {
  const fd = fs.openSync(file, flags);
  try {
    return await body(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * Drops [offset, offset + length) of fd from the page cache: fsync (clean
 * pages), fadvise DONTNEED, until cachestat sees none of it. Dropping is
 * advice (pages under read-ahead I/O are skipped, another process may read
 * the file), so it retries, a bounded number of times; false if it never
 * took.
 */
async function dropPages(fd: number, offset: number, length: number): Promise<boolean> {
  for (let attempt = 0; attempt < 20; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, 50));
    fs.fsyncSync(fd);
    await fileAdvise(fd, offset, length, 'dontneed');
    if ((await fileCached(fd, offset, length)).present === 0) return true;
  }
  return false;
}

/**
 * Runs `prepare` (which makes some pages cold and says whether that took)
 * then `probe`, until the probe returns -1, at most 5 times; returns the
 * last probe's result. Retried because a probe that misses the cache starts
 * read-ahead, and reading cached pages can trigger read-ahead of the next
 * ones: either may bring the cold pages in before the probe reaches them.
 */
async function coldProbe(prepare: () => Promise<boolean>, probe: () => number): Promise<number | 'never cold'> {
  let got: number | 'never cold' = 'never cold';
  for (let attempt = 0; attempt < 5; attempt++) {
    if (!(await prepare())) continue;
    got = probe();
    if (got === -1) break;
  }
  return got;
}

describe('mapFile / unmapFile', () => {
  it('maps a file read-only and reads back its bytes', async () => {
    const data = crypto.randomBytes(8 * BLOCK);
    const file = fileWith('map-exact', data);
    await withFd(file, 'r', (fd) => {
      const ab = mapFile(fd, data.length);
      expect(ab).toBeInstanceOf(ArrayBuffer);
      expect(ab.byteLength).toBe(data.length);
      expect(Buffer.from(ab).equals(data)).toBe(true);
      unmapFile(ab);
    });
  });

  it('allows a mapping longer than the file: bytes below the end read fine, appends show through', async () => {
    const size = 3 * BLOCK + 100;  // the last page is partly past the end
    const data = crypto.randomBytes(size);
    const file = fileWith('map-long', data);
    await withFd(file, 'r+', (fd) => {
      const ab = mapFile(fd, 64 * BLOCK);
      expect(ab.byteLength).toBe(64 * BLOCK);
      const view = Buffer.from(ab);
      expect(view.subarray(0, size).equals(data)).toBe(true);
      // The rest of the last page is zero-filled by the kernel (mmap(2)).
      expect(view.subarray(size, 4 * BLOCK).every((b) => b === 0)).toBe(true);
      // MAP_SHARED: bytes appended after mapping (as a segment grows) are
      // readable through the same mapping once the file covers them.
      const more = crypto.randomBytes(2 * BLOCK);
      expect(fs.writeSync(fd, more, 0, more.length, 4 * BLOCK)).toBe(more.length);
      expect(view.subarray(4 * BLOCK, 6 * BLOCK).equals(more)).toBe(true);
      expect(view.subarray(0, size).equals(data)).toBe(true);
      unmapFile(ab);
    });
  });

  it('detaches the buffer on unmap: every view has length 0 and copying from it throws', async () => {
    const data = crypto.randomBytes(4 * BLOCK);
    const file = fileWith('map-detach', data);
    await withFd(file, 'r', (fd) => {
      const ab = mapFile(fd, data.length);
      const view = Buffer.from(ab);
      const middle = new Uint8Array(ab, BLOCK, BLOCK);
      expect(view.length).toBe(data.length);
      expect(Buffer.from(middle).equals(data.subarray(BLOCK, 2 * BLOCK))).toBe(true);

      unmapFile(ab);
      expect(ab.byteLength).toBe(0);
      expect(view.length).toBe(0);
      expect(middle.length).toBe(0);
      const target = Buffer.alloc(BLOCK, 0x5a);
      expect(() => view.copy(target, 0, 0, BLOCK)).toThrow(TypeError);
      expect(() => Buffer.from(ab)).toThrow(TypeError);
      expect(() => new Uint8Array(ab)).toThrow(TypeError);
      expect(() => ab.slice(0)).toThrow(TypeError);
      expect(target.every((b) => b === 0x5a)).toBe(true);  // nothing was copied

      // Idempotent, and the file itself is untouched.
      unmapFile(ab);
      unmapFile(ab);
      expect(ab.byteLength).toBe(0);
      expect(fs.readFileSync(file).equals(data)).toBe(true);
    });
  });

  it('leaves an ArrayBuffer it did not map alone', () => {
    const ab = new ArrayBuffer(BLOCK);
    new Uint8Array(ab).fill(7);
    unmapFile(ab);
    expect(ab.byteLength).toBe(BLOCK);
    expect(new Uint8Array(ab).every((b) => b === 7)).toBe(true);
  });

  it('maps many files one after another and unmaps each (no leak of live mappings)', async () => {
    const data = crypto.randomBytes(BLOCK);
    const file = fileWith('map-many', data);
    await withFd(file, 'r', (fd) => {
      for (let i = 0; i < 200; i++) {
        const ab = mapFile(fd, 16 * BLOCK);
        expect(Buffer.from(ab, 0, BLOCK).equals(data)).toBe(true);
        unmapFile(ab);
        expect(ab.byteLength).toBe(0);
      }
    });
  });

  it('refuses bad arguments with NativeError or TypeError', async () => {
    const file = fileWith('map-bad', crypto.randomBytes(BLOCK));
    await withFd(file, 'r', (fd) => {
      for (const length of [0, -1, 1.5, NaN, 2 ** 41]) expectNative(() => mapFile(fd, length), 'EINVAL');
      for (const badFd of [-1, 0.5, 2 ** 31]) expectNative(() => mapFile(badFd, BLOCK), 'EINVAL');
      const e = expectNative(() => mapFile(BAD_FD, BLOCK), 'EBADF');
      expect(e.syscall).toBe('mmap');
      expect(() => mapFile(String(fd) as unknown as number, BLOCK)).toThrow(TypeError);
      expect(() => mapFile(fd, '4096' as unknown as number)).toThrow(TypeError);
    });
    // A write-only descriptor cannot back a readable mapping.
    await withFd(file, 'w', (fd) => { expectNative(() => mapFile(fd, BLOCK), 'EACCES'); });
    expect(() => unmapFile(Buffer.alloc(BLOCK) as unknown as ArrayBuffer)).toThrow(TypeError);
    expect(() => unmapFile(undefined as unknown as ArrayBuffer)).toThrow(TypeError);
  });
});

describe('preadCached', () => {
  it('reads cached bytes into the asked part of the buffer only', async () => {
    const data = crypto.randomBytes(16 * BLOCK);
    const file = fileWith('pread-warm', data);
    await withFd(file, 'r', (fd) => {
      fs.readFileSync(file);  // just written and read: cached
      const buf = Buffer.alloc(data.length + 2 * BLOCK, 0xee);
      expect(preadCached(fd, buf, BLOCK, data.length, 0)).toBe(data.length);
      expect(buf.subarray(BLOCK, BLOCK + data.length).equals(data)).toBe(true);
      expect(buf.subarray(0, BLOCK).every((b) => b === 0xee)).toBe(true);
      expect(buf.subarray(BLOCK + data.length).every((b) => b === 0xee)).toBe(true);

      const part = Buffer.alloc(3 * BLOCK + 5);
      expect(preadCached(fd, part, 0, part.length, 5 * BLOCK + 7)).toBe(part.length);
      expect(part.equals(data.subarray(5 * BLOCK + 7, 8 * BLOCK + 12))).toBe(true);
      expect(preadCached(fd, part, 0, 0, 0)).toBe(0);
    });
  });

  it('returns fewer bytes at the end of the file, and 0 past it', async () => {
    const size = 2 * BLOCK + 300;
    const data = crypto.randomBytes(size);
    const file = fileWith('pread-eof', data);
    await withFd(file, 'r', (fd) => {
      fs.readFileSync(file);
      const buf = Buffer.alloc(4 * BLOCK, 0xee);
      expect(preadCached(fd, buf, 0, 4 * BLOCK, BLOCK)).toBe(size - BLOCK);
      expect(buf.subarray(0, size - BLOCK).equals(data.subarray(BLOCK))).toBe(true);
      expect(buf.subarray(size - BLOCK).every((b) => b === 0xee)).toBe(true);
      expect(preadCached(fd, buf, 0, BLOCK, size)).toBe(0);
      expect(preadCached(fd, buf, 0, BLOCK, 100 * BLOCK)).toBe(0);
    });
  });

  it('returns -1 once the pages were dropped from the page cache, and the bytes after a normal read', async () => {
    const size = 64 * BLOCK;
    const data = crypto.randomBytes(size);
    const file = fileWith('pread-cold', data);
    await withFd(file, 'r', async (fd) => {
      const buf = Buffer.alloc(size);
      expect(preadCached(fd, buf, 0, size, 0)).toBe(size);
      const drop = () => dropPages(fd, 0, size);
      expect(await coldProbe(drop, () => preadCached(fd, buf, 0, size, 0)), 'the whole file').toBe(-1);
      expect(await coldProbe(drop, () => preadCached(fd, buf, 0, BLOCK, size - BLOCK)), 'its last block').toBe(-1);
      expect(await coldProbe(drop, () => preadCached(fd, buf, 0, 3 * BLOCK, 20 * BLOCK + 1)), 'unaligned').toBe(-1);

      // The kernel reads it back for an ordinary read; then it is cached.
      expect(fs.readSync(fd, Buffer.alloc(size), 0, size, 0)).toBe(size);
      buf.fill(0);
      expect(preadCached(fd, buf, 0, size, 0)).toBe(size);
      expect(buf.equals(data)).toBe(true);
    });
  });

  it('returns -1 when only part of the range is cached', async () => {
    const size = 64 * BLOCK;
    const half = size / 2;
    const data = crypto.randomBytes(size);
    const file = fileWith('pread-half', data);
    await withFd(file, 'r', async (fd) => {
      const buf = Buffer.alloc(size);
      expect(preadCached(fd, buf, 0, size, 0)).toBe(size);  // all cached
      // Pages just written may sit in large folios that a partial DONTNEED
      // cannot split: drop the whole file, read the first half back (read-
      // ahead may bring more; let it finish), then drop the second half.
      const firstHalfOnly = async (): Promise<boolean> => {
        if (!(await dropPages(fd, 0, size))) return false;
        if (fs.readSync(fd, Buffer.alloc(half), 0, half, 0) !== half) return false;
        await new Promise((r) => setTimeout(r, 20));
        if (!(await dropPages(fd, half, half))) return false;
        return (await fileCached(fd, 0, half)).present === half / BLOCK;
      };
      expect(await coldProbe(firstHalfOnly, () => preadCached(fd, buf, 0, size, 0))).toBe(-1);
      // The cached half alone reads fine.
      fs.readSync(fd, Buffer.alloc(half), 0, half, 0);
      const first = Buffer.alloc(half);
      expect(preadCached(fd, first, 0, half, 0)).toBe(half);
      expect(first.equals(data.subarray(0, half))).toBe(true);
    });
  });

  it('refuses bad arguments with NativeError or TypeError', async () => {
    const file = fileWith('pread-bad', crypto.randomBytes(4 * BLOCK));
    await withFd(file, 'r', (fd) => {
      const buf = Buffer.alloc(2 * BLOCK, 0xee);
      expectNative(() => preadCached(fd, buf, 0, 2 * BLOCK + 1, 0), 'EINVAL');   // past the buffer
      expectNative(() => preadCached(fd, buf, BLOCK, BLOCK + 1, 0), 'EINVAL');   // offset + length past it
      expectNative(() => preadCached(fd, buf, 2 * BLOCK + 1, 0, 0), 'EINVAL');   // offset past it
      for (const bad of [-1, 0.5, NaN, Infinity]) {
        expectNative(() => preadCached(fd, buf, bad, 1, 0), 'EINVAL');
        expectNative(() => preadCached(fd, buf, 0, bad, 0), 'EINVAL');
        expectNative(() => preadCached(fd, buf, 0, 1, bad), 'EINVAL');
      }
      expectNative(() => preadCached(fd, buf, 0, 1, 2 ** 53 + 2), 'EINVAL');
      expectNative(() => preadCached(-1, buf, 0, 1, 0), 'EINVAL');
      expect(expectNative(() => preadCached(BAD_FD, buf, 0, 1, 0), 'EBADF').syscall).toBe('preadv2');
      expect(() => preadCached(fd, 'x' as unknown as Buffer, 0, 1, 0)).toThrow(TypeError);
      expect(() => preadCached(fd, new Uint16Array(16) as unknown as Buffer, 0, 1, 0)).toThrow(TypeError);
      expect(() => preadCached(fd, buf, '0' as unknown as number, 1, 0)).toThrow(TypeError);
      expect(buf.every((b) => b === 0xee)).toBe(true);  // no refused call wrote anything
    });
    await withFd(file, 'w', (fd) => { expectNative(() => preadCached(fd, Buffer.alloc(BLOCK), 0, BLOCK, 0), 'EBADF'); });
    await withFd(dir, 'r', (fd) => { expectNative(() => preadCached(fd, Buffer.alloc(BLOCK), 0, BLOCK, 0), 'EISDIR'); });
  });
});

describe('writable twins: writeMapped, writableView, allocateRange, populateMapped', () => {
  it('write through the twin into the file, fault in allocated pages ahead, and are detached with the mapping', async () => {
    const dir = scratchDir();
    const file = path.join(dir, 'f');
    const fd = fs.openSync(file, 'w+');
    try {
      fs.ftruncateSync(fd, 64 * BLOCK); // sparse, as a segment sized ahead
      const ab = mapFile(fd, 64 * BLOCK, true);
      const data = crypto.randomBytes(2 * BLOCK);
      writeMapped(ab, 3 * BLOCK, data, 0, data.length);
      expect(Buffer.from(ab, 3 * BLOCK, 2 * BLOCK).equals(data)).toBe(true); // the read-only mapping sees it
      const twin = writableView(ab);
      expect(writableView(ab)).toBe(twin); // the same ArrayBuffer while it lives
      Buffer.from(twin, 8 * BLOCK, BLOCK).fill(0x5a);
      allocateRange(fd, 16 * BLOCK, 16 * BLOCK);
      expect(fs.fstatSync(fd).blocks * 512).toBeGreaterThanOrEqual(16 * BLOCK);
      expect(await populateMapped(twin, 16 * BLOCK, 16 * BLOCK)).toBe(0);
      expect((await fileCached(fd, 16 * BLOCK, 16 * BLOCK)).present).toBe(16); // faulted in: in the page cache
      fs.fsyncSync(fd);
      const back = Buffer.alloc(9 * BLOCK);
      fs.readSync(fd, back, 0, back.length, 0);
      expect(back.subarray(3 * BLOCK, 5 * BLOCK).equals(data)).toBe(true);
      expect(back.subarray(8 * BLOCK).every((b) => b === 0x5a)).toBe(true);
      // Bounds and kinds are checked before any byte moves.
      expectNative(() => writeMapped(ab, 63 * BLOCK, data, 0, data.length), 'EINVAL');
      expectNative(() => writeMapped(mapFile(fd, BLOCK), 0, data, 0, 1), 'EINVAL'); // not writable
      await expect(populateMapped(twin, 1, BLOCK)).rejects.toMatchObject({ code: 'EINVAL' });
      unmapFile(ab);
      expect(twin.byteLength).toBe(0); // detached with the mapping: no view can touch it
      expectNative(() => writableView(ab), 'EINVAL');
    } finally {
      fs.closeSync(fd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('sendFileRange', () => {
  /** A connected pair of Unix sockets: [server side's fd, client socket], on a fresh path. */
  async function socketPair(dir: string): Promise<{ fd: number; server: net.Socket; client: net.Socket; close(): void }> {
    const p = path.join(dir, `s${Math.random().toString(16).slice(2)}.sock`);
    const srv = net.createServer();
    await new Promise<void>((r) => srv.listen(p, r));
    const accepted = new Promise<net.Socket>((r) => srv.once('connection', r));
    const client = net.connect(p);
    const server = await accepted;
    const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
    return { fd, server, client, close: () => { client.destroy(); server.destroy(); srv.close(); } };
  }

  it('sends the head, then the file range; stops where a full socket buffer stops it', async () => {
    const dir = scratchDir();
    const file = path.join(dir, 'f');
    const data = crypto.randomBytes(64 * BLOCK);
    fs.writeFileSync(file, data);
    const fileFd = fs.openSync(file, 'r');
    const pair = await socketPair(dir);
    try {
      const got: Buffer[] = [];
      pair.client.on('data', (c: Buffer) => got.push(c));
      const head = Buffer.from('HEAD');
      expect(sendFileRange(pair.fd, head, fileFd, 3 * BLOCK, 5 * BLOCK)).toBe(4 + 5 * BLOCK);
      // Past the end of the file: only what exists.
      expect(sendFileRange(pair.fd, Buffer.alloc(0), fileFd, 63 * BLOCK, 2 * BLOCK)).toBe(BLOCK);
      const want = Buffer.concat([head, data.subarray(3 * BLOCK, 8 * BLOCK), data.subarray(63 * BLOCK)]);
      const deadline = Date.now() + 5000;
      while (Buffer.concat(got).length < want.length && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      expect(Buffer.concat(got).equals(want)).toBe(true);
      // A reader that stops reading: the socket's buffer fills and the call returns what it took.
      pair.client.pause();
      let total = 0;
      for (let i = 0; i < 200; i++) {
        const n = sendFileRange(pair.fd, Buffer.alloc(0), fileFd, 0, data.length);
        total += n;
        if (n < data.length) break;
      }
      expect(total).toBeLessThan(200 * data.length);
      // Full: nothing more goes, and that is not an error.
      expect(sendFileRange(pair.fd, Buffer.from('x'), fileFd, 0, BLOCK)).toBe(0);
    } finally {
      pair.close();
      fs.closeSync(fileFd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it('refuses bad arguments with NativeError or TypeError', async () => {
    const dir = scratchDir();
    const file = path.join(dir, 'f');
    fs.writeFileSync(file, Buffer.alloc(BLOCK, 1));
    const fileFd = fs.openSync(file, 'r');
    try {
      expectNative(() => sendFileRange(BAD_FD, Buffer.alloc(1), fileFd, 0, 1), 'EBADF');
      expectNative(() => sendFileRange(fileFd, Buffer.alloc(1), fileFd, 0, 1), 'ENOTSOCK');
      expectNative(() => sendFileRange(-1, Buffer.alloc(1), fileFd, 0, 1), 'EINVAL');
      expectNative(() => sendFileRange(0, Buffer.alloc(1), fileFd, -1, 1), 'EINVAL');
      expectNative(() => sendFileRange(0, Buffer.alloc(1), fileFd, 0, 2 ** 32), 'EINVAL');
      expect(() => sendFileRange(0, 'head' as unknown as Buffer, fileFd, 0, 1)).toThrow(TypeError);
    } finally {
      fs.closeSync(fileFd);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('hashBlocks / verifyBlocks', () => {
  const N = 12;
  const ZERO = [0, 5, N - 1];

  /** N random blocks; ZERO are all zero; block 7 zero but for its last byte; block 8 zero but for its first. */
  function sample(): Buffer {
    const data = crypto.randomBytes(N * BLOCK);
    for (const z of ZERO) data.fill(0, z * BLOCK, (z + 1) * BLOCK);
    data.fill(0, 7 * BLOCK, 8 * BLOCK - 1);
    data[8 * BLOCK - 1] = 1;
    data.fill(0, 8 * BLOCK + 1, 9 * BLOCK);
    data[8 * BLOCK] = 0x80;
    return data;
  }

  const block = (data: Uint8Array, i: number) => Buffer.from(data.buffer, data.byteOffset + i * BLOCK, BLOCK);

  it('hashes each block as xxhash-addon does, flags and counts the zero blocks, leaves their hash slots alone', () => {
    const data = sample();
    const hashes = Buffer.alloc(N * 16, 0xcc);
    const zero = new Uint8Array(N).fill(9);
    expect(hashBlocks(data, hashes, zero)).toBe(ZERO.length);
    for (let i = 0; i < N; i++) {
      const slot = hashes.subarray(i * 16, (i + 1) * 16);
      if (ZERO.includes(i)) {
        expect(zero[i], `block ${i} is zero`).toBe(1);
        expect(slot.every((b) => b === 0xcc), `hash slot ${i} untouched`).toBe(true);
      } else {
        expect(zero[i], `block ${i} is not zero`).toBe(0);
        expect(slot.equals(XXHash128.hash(block(data, i))), `hash of block ${i}`).toBe(true);
      }
    }
  });

  it('accepts longer hash and flag buffers, an odd byte offset, and empty data', () => {
    const backing = new Uint8Array(4 * BLOCK + 3);
    crypto.randomFillSync(backing);
    const data = backing.subarray(3);
    data.fill(0, BLOCK, 2 * BLOCK);
    const hashes = Buffer.alloc(10 * 16);
    const zero = new Uint8Array(10).fill(9);
    expect(hashBlocks(data, hashes, zero)).toBe(1);
    expect(Array.from(zero)).toEqual([0, 1, 0, 0, 9, 9, 9, 9, 9, 9]);
    expect(hashes.subarray(48, 64).equals(XXHash128.hash(block(data, 3)))).toBe(true);
    expect(hashes.subarray(64).every((b) => b === 0)).toBe(true);
    expect(hashBlocks(Buffer.alloc(0), Buffer.alloc(0), new Uint8Array(0))).toBe(0);
  });

  it('verifies good data, finds the first damaged block, and honours `at`', () => {
    const data = sample();
    const hashes = Buffer.alloc(N * 16);
    for (let i = 0; i < N; i++) XXHash128.hash(block(data, i)).copy(hashes, i * 16);  // zero blocks too
    expect(verifyBlocks(data, hashes, 0)).toBe(-1);
    expect(verifyBlocks(Buffer.alloc(0), hashes, 0)).toBe(-1);

    for (const bad of [0, 3, 5, N - 1]) {
      const copy = Buffer.from(data);
      copy[bad * BLOCK + ((bad * 977) % BLOCK)] ^= 0x01;
      expect(verifyBlocks(copy, hashes, 0), `one bit flipped in block ${bad}`).toBe(bad);
      copy[(N - 1) * BLOCK + 17] ^= 0x40;  // a later block damaged too: the first one is reported
      expect(verifyBlocks(copy, hashes, 0)).toBe(bad);
    }

    // `at`: the hashes of a sub-run start at at = first * 16.
    for (const first of [1, 4, 9]) {
      const run = data.subarray(first * BLOCK);
      expect(verifyBlocks(run, hashes, first * 16), `run from block ${first}`).toBe(-1);
      expect(verifyBlocks(run, hashes, (first - 1) * 16)).toBe(0);  // one slot early: the first block mismatches
    }
    // Hashes stored behind a prefix (as the store's read plan lays them out).
    const prefixed = Buffer.concat([crypto.randomBytes(40), hashes]);
    expect(verifyBlocks(data, prefixed, 40)).toBe(-1);
    expect(verifyBlocks(data.subarray(BLOCK, (N - 1) * BLOCK), prefixed, 40 + 16)).toBe(-1);
    expect(verifyBlocks(data.subarray(BLOCK, (N - 1) * BLOCK), prefixed, 40 + 17)).toBe(0);  // misaligned by a byte
    const damaged = Buffer.from(prefixed);
    damaged[40 + 6 * 16 + 15] ^= 0xff;  // the stored hash of block 6 is wrong
    expect(verifyBlocks(data, damaged, 40)).toBe(6);
  });

  it('round-trips: what hashBlocks writes, verifyBlocks accepts for the non-zero blocks', () => {
    const data = crypto.randomBytes(32 * BLOCK);
    const hashes = Buffer.alloc(32 * 16);
    expect(hashBlocks(data, hashes, new Uint8Array(32))).toBe(0);
    expect(verifyBlocks(data, hashes, 0)).toBe(-1);
    expect(verifyBlocks(data.subarray(31 * BLOCK), hashes, 31 * 16)).toBe(-1);
  });

  it('refuses bad arguments with NativeError EINVAL or TypeError, writing nothing', () => {
    const data = crypto.randomBytes(4 * BLOCK);
    const hashes = Buffer.alloc(4 * 16, 0xcc);
    const zero = new Uint8Array(4).fill(9);
    expectNative(() => hashBlocks(data.subarray(0, 4 * BLOCK - 1), hashes, zero), 'EINVAL');
    expectNative(() => hashBlocks(data.subarray(0, 100), hashes, zero), 'EINVAL');
    expectNative(() => hashBlocks(data, hashes.subarray(0, 4 * 16 - 1), zero), 'EINVAL');
    expectNative(() => hashBlocks(data, hashes, zero.subarray(0, 3)), 'EINVAL');
    expect(() => hashBlocks('x' as unknown as Buffer, hashes, zero)).toThrow(TypeError);
    expect(() => hashBlocks(data, new Uint32Array(16) as unknown as Buffer, zero)).toThrow(TypeError);
    expect(() => hashBlocks(data, hashes, [0, 0, 0, 0] as unknown as Uint8Array)).toThrow(TypeError);
    expect(hashes.every((b) => b === 0xcc)).toBe(true);
    expect(zero.every((b) => b === 9)).toBe(true);

    hashBlocks(data, hashes, zero);
    expectNative(() => verifyBlocks(data.subarray(0, BLOCK + 1), hashes, 0), 'EINVAL');
    expectNative(() => verifyBlocks(data, hashes.subarray(0, 4 * 16 - 1), 0), 'EINVAL');
    expectNative(() => verifyBlocks(data, hashes, 1), 'EINVAL');               // at + n*16 past the end
    expectNative(() => verifyBlocks(data, hashes, 4 * 16 + 1), 'EINVAL');      // at past the end
    for (const at of [-1, 0.5, NaN, Infinity, 2 ** 60]) expectNative(() => verifyBlocks(data, hashes, at), 'EINVAL');
    expect(() => verifyBlocks(data, hashes, '0' as unknown as number)).toThrow(TypeError);
    expect(() => verifyBlocks(data, 'x' as unknown as Buffer, 0)).toThrow(TypeError);
    expect(() => verifyBlocks(new Float64Array(512) as unknown as Buffer, hashes, 0)).toThrow(TypeError);
    expect(verifyBlocks(data, hashes, 0)).toBe(-1);
  });
});

describe('addRun', () => {
  const slots = new Float64Array(2 * 1024);
  const words = new Uint32Array(1024);
  const pageHashes = Buffer.alloc(1024 * 16);
  const flags = new Uint8Array(1024);
  const segs = new Uint32Array(1024);
  const places = new Uint32Array(1024);
  const hashes = crypto.randomBytes(4 * 16);
  const run = (over: Partial<Record<string, unknown>> = {}): number => {
    const a = { slots, mask: 1023, words, fmask: 32767, pageHashes, flags, segs, places, j0: 8, id0: 9, count: 4, hashes, at: 0,
      segment: 7, slot0: 100, ...over };
    return addRun(a.slots as Float64Array, a.mask as number, a.words as Uint32Array | null, a.fmask as number,
      a.pageHashes as Uint8Array, a.flags as Uint8Array, a.segs as Uint32Array, a.places as Uint32Array, a.j0 as number,
      a.id0 as number, a.count as number, a.hashes as Uint8Array, a.at as number, a.segment as number, a.slot0 as number);
  };

  it('adds nothing while the filter is not built; a run with hashes, places and flags; never a prefix twice', () => {
    expect(run({ words: null })).toBe(0);
    expect(run()).toBe(4);
    expect(pageHashes.subarray(8 * 16, 12 * 16).equals(hashes)).toBe(true);
    expect([...flags.subarray(7, 13)]).toEqual([0, 3, 3, 3, 3, 0]);
    expect([...segs.subarray(8, 12)]).toEqual([7, 7, 7, 7]);
    expect([...places.subarray(8, 12)]).toEqual([100, 101, 102, 103]);
    let filed = 0;
    for (let i = 0; i < 1024; i++) if (slots[2 * i] !== 0) filed++;
    expect(filed).toBe(4);
    // The same hashes for other ids: their prefixes are filed, so nothing is added.
    expect(run({ j0: 20, id0: 21 })).toBe(0);
    expect(flags[20]).toBe(0);
  });

  it('refuses bad arguments with NativeError EINVAL or TypeError', () => {
    expectNative(() => run({ mask: 1000 }), 'EINVAL');
    expectNative(() => run({ segs: new Uint32Array(10) }), 'EINVAL'); // past the page's places
    expectNative(() => run({ j0: 1022 }), 'EINVAL');
    expectNative(() => run({ at: 32 }), 'EINVAL');
    expectNative(() => run({ slot0: 2 ** 32 - 2 }), 'EINVAL');
    expect(() => run({ places: new Int32Array(1024) })).toThrow(TypeError);
  });
});

describe('rehashRun', () => {
  const slots = new Float64Array(2 * 1024);
  const words = new Uint32Array(1024);
  const pageHashes = Buffer.alloc(1024 * 16);
  const flags = new Uint8Array(1024);
  const hashes = crypto.randomBytes(4 * 16);
  const run = (over: Partial<Record<string, unknown>> = {}): number => {
    const a = { slots, mask: 1023, words, fmask: 32767, pageHashes, flags, j0: 0, id0: 1, count: 4, hashes, at: 0, ...over };
    return rehashRun(a.slots as Float64Array, a.mask as number, a.words as Uint32Array | null, a.fmask as number,
      a.pageHashes as Uint8Array, a.flags as Uint8Array, a.j0 as number, a.id0 as number, a.count as number,
      a.hashes as Uint8Array, a.at as number);
  };

  it('moves nothing while the filter is not built, and a whole run when nothing is known', () => {
    expect(run({ words: null })).toBe(0);
    expect(flags.every((f) => f === 0)).toBe(true);
    expect(run()).toBe(4);
    expect(pageHashes.subarray(0, 64).equals(hashes)).toBe(true);
    expect([...flags.subarray(0, 5)]).toEqual([3, 3, 3, 3, 0]);
    // The same hashes again: each is now filed under its prefix, so nothing moves.
    expect(run()).toBe(0);
  });

  it('refuses bad arguments with NativeError EINVAL or TypeError, touching nothing', () => {
    const before = Buffer.from(slots.buffer).toString('hex');
    expectNative(() => run({ mask: 1000 }), 'EINVAL'); // not a power of two minus one
    expectNative(() => run({ mask: 2047 }), 'EINVAL'); // more slots than the table holds
    expectNative(() => run({ fmask: 65535 }), 'EINVAL'); // more bits than the filter holds
    expectNative(() => run({ j0: 1022 }), 'EINVAL'); // past the chunk page's flags
    expectNative(() => run({ pageHashes: Buffer.alloc(16) }), 'EINVAL');
    expectNative(() => run({ at: 32 }), 'EINVAL'); // past the new hashes
    expectNative(() => run({ id0: 0 }), 'EINVAL');
    expect(() => run({ slots: new Float32Array(2048) })).toThrow(TypeError);
    expect(() => run({ words: new Int32Array(1024) })).toThrow(TypeError);
    expect(() => run({ hashes: 'x' })).toThrow(TypeError);
    expect(Buffer.from(slots.buffer).toString('hex')).toBe(before);
  });
});
