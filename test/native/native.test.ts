/**
 * The native addon (src/native/index.ts) against real system calls: hashes
 * byte-compared with xxhash-addon (the store's hash), pidfds of live and dead
 * processes, and process_madvise on a python3 child that maps a clean file
 * MAP_SHARED and reads every page, observed both from the child's pagemap and
 * from the page cache (mincore).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  NativeError, PAGE_SIZE, fileAdvise, fileCached, fileResidency, hashPages, hashPagesAsync, mappingResidency, pidfdOpen, processMadvise,
} from '../../src/native/index.js';

const require = createRequire(import.meta.url);
const { XXHash128 } = require('xxhash-addon') as { XXHash128: { hash(data: Buffer): Buffer } };

const TMPFS_MAGIC = 0x01021994;
// Larger than a device's readahead cap (8 MiB here), so that willneed only
// brings it all back because the addon splits willneed ranges.
const FILE_SIZE = 32 * 1024 * 1024;

// The page cache of a tmpfs file is its storage and cannot be paged out to
// disk, so the mapped file must live on a real filesystem.
function scratchDir(): string {
  let base = os.tmpdir();
  if (fs.statfsSync(base).type === TMPFS_MAGIC) base = path.resolve('node_modules/.cache');
  fs.mkdirSync(base, { recursive: true });
  return fs.mkdtempSync(path.join(base, 'dormant-native-'));
}

// Maps argv[1] read-only MAP_SHARED, reads one byte of every page, prints the
// mapping's start address, then waits for stdin to close.
const MAPPER = `
import mmap, os, sys
path, size = sys.argv[1], int(sys.argv[2])
f = open(path, 'rb')
m = mmap.mmap(f.fileno(), size, mmap.MAP_SHARED, mmap.PROT_READ)
s = 0
for i in range(0, size, mmap.PAGESIZE):
    s += m[i]
real = os.path.realpath(path)
addr = next(l.split('-')[0] for l in open('/proc/self/maps') if l.rstrip().endswith(' ' + real))
print(hex(int(addr, 16)), flush=True)
sys.stdin.read()
`;

async function expectNative(p: Promise<unknown> | (() => unknown), code: string): Promise<NativeError> {
  let error: unknown;
  try {
    if (typeof p === 'function') await p();
    else await p;
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(NativeError);
  expect((error as NativeError).code).toBe(code);
  return error as NativeError;
}

async function deadPid(): Promise<number> {
  const child = spawn('true');
  await once(child, 'exit');
  return child.pid!;
}

async function waitFor(check: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return true;
    await new Promise((r) => setTimeout(r, 50));
  }
  return check();
}

describe('hashPages', () => {
  function sample(pages: number, pageSize: number): Buffer {
    const data = crypto.randomBytes(pages * pageSize);
    for (const z of [0, 3, pages - 1]) data.fill(0, z * pageSize, (z + 1) * pageSize);
    data.fill(0, 6 * pageSize, 7 * pageSize - 1);  // page 6: zero but for its last byte
    data[7 * pageSize - 1] = 1;
    return data;
  }

  function check(data: Buffer, pageSize: number, result: { hashes: Buffer; zero: Uint8Array; pages: number }): void {
    const pages = data.length / pageSize;
    expect(result.pages).toBe(pages);
    expect(result.hashes.length).toBe(pages * 16);
    expect(result.zero.length).toBe(pages);
    for (let i = 0; i < pages; i++) {
      const page = data.subarray(i * pageSize, (i + 1) * pageSize);
      expect(result.hashes.subarray(i * 16, (i + 1) * 16).equals(XXHash128.hash(page))).toBe(true);
      expect(result.zero[i]).toBe(page.every((b) => b === 0) ? 1 : 0);
    }
    expect(Array.from(result.zero).filter((z) => z).length).toBe(3);
  }

  for (const pageSize of [4096, 512, 65536]) {
    it(`matches xxhash-addon per ${pageSize}-byte page, sync and async`, async () => {
      const data = sample(16, pageSize);
      check(data, pageSize, hashPages(data, pageSize === 4096 ? undefined : pageSize));
      check(data, pageSize, await hashPagesAsync(data, pageSize));
    });
  }

  it('reads a Uint8Array at an odd byte offset', () => {
    const backing = new Uint8Array(8 * 4096 + 1);
    crypto.randomFillSync(backing);
    const view = backing.subarray(1);
    view.fill(0, 4096, 8192);
    const result = hashPages(view);
    expect(Array.from(result.zero)).toEqual([0, 1, 0, 0, 0, 0, 0, 0]);
    expect(result.hashes.subarray(0, 16).equals(XXHash128.hash(Buffer.from(view.subarray(0, 4096))))).toBe(true);
  });

  it('hashes an empty buffer to nothing', async () => {
    expect(hashPages(Buffer.alloc(0)).pages).toBe(0);
    expect((await hashPagesAsync(Buffer.alloc(0))).hashes.length).toBe(0);
  });

  it('refuses a length that is not a multiple of the page size', async () => {
    await expectNative(() => hashPages(Buffer.alloc(4097)), 'EINVAL');
    await expectNative(() => hashPages(Buffer.alloc(4096), 8192), 'EINVAL');
    await expectNative(hashPagesAsync(Buffer.alloc(1000)), 'EINVAL');
  });

  it('refuses a page size that is not a power of two >= 512', async () => {
    for (const bad of [0, 256, 1000, 4096.5, -4096, NaN, 2 ** 40]) {
      await expectNative(() => hashPages(Buffer.alloc(8192), bad), 'EINVAL');
    }
    await expectNative(hashPagesAsync(Buffer.alloc(8192), 3000), 'EINVAL');
  });

  it('throws TypeError for wrong argument types', () => {
    expect(() => hashPages('abc' as unknown as Buffer)).toThrow(TypeError);
    expect(() => hashPages(new Uint16Array(2048) as unknown as Buffer)).toThrow(TypeError);
    expect(() => hashPages(Buffer.alloc(4096), '4096' as unknown as number)).toThrow(TypeError);
  });
});

describe('pidfdOpen', () => {
  it('opens a live process and refuses a dead one with ESRCH', async () => {
    const fd = pidfdOpen(process.pid);
    expect(fd).toBeGreaterThan(2);
    fs.closeSync(fd);
    const e = await expectNative(async () => pidfdOpen(await deadPid()), 'ESRCH');
    expect(e.syscall).toBe('pidfd_open');
    expect(e.message).toMatch(/^pidfd_open: ESRCH \(No such process\)/);
  });

  it('refuses pids that are not positive integers with EINVAL', async () => {
    for (const bad of [-1, 0, 1.5, NaN, 2 ** 32]) await expectNative(() => pidfdOpen(bad), 'EINVAL');
    expect(() => pidfdOpen('1' as unknown as number)).toThrow(TypeError);
  });
});

describe('process memory', () => {
  let dir: string;
  let file: string;
  let fileFd: number;
  let child: ChildProcess | undefined;
  let pidfd = -1;
  let addr = 0;

  beforeAll(async () => {
    dir = scratchDir();
    file = path.join(dir, 'mapped');
    fs.writeFileSync(file, crypto.randomBytes(FILE_SIZE));
    fileFd = fs.openSync(file, 'r');
    fs.fsyncSync(fileFd);  // clean pages: reclaimable without writeback
    child = spawn('python3', ['-c', MAPPER, file, String(FILE_SIZE)], { stdio: ['pipe', 'pipe', 'inherit'] });
    const [line] = (await Promise.race([
      once(child.stdout!, 'data'),
      new Promise((_, reject) => setTimeout(() => reject(new Error('mapper did not start')), 20_000)),
    ])) as [Buffer];
    addr = Number.parseInt(line.toString().trim(), 16);
    pidfd = pidfdOpen(child.pid!);
  }, 30_000);

  afterAll(() => {
    if (pidfd >= 0) fs.closeSync(pidfd);
    if (child?.pid !== undefined && child.exitCode === null) process.kill(child.pid, 'SIGKILL');
    if (fileFd !== undefined) fs.closeSync(fileFd);
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('sees the touched mapping resident, pages it out, and reads it back with willneed', async () => {
    const before = mappingResidency(child!.pid!, addr, FILE_SIZE);
    expect(before.total).toBe(FILE_SIZE / PAGE_SIZE);
    expect(before.bitmap.length).toBe(before.total);
    expect(before.present).toBe(before.total);
    expect((await fileResidency(fileFd, 0, FILE_SIZE)).present).toBe(FILE_SIZE / PAGE_SIZE);

    expect(await processMadvise(pidfd, [{ addr, length: FILE_SIZE }], 'pageout')).toBe(FILE_SIZE);
    const after = mappingResidency(child!.pid!, addr, FILE_SIZE);
    expect(after.present).toBeLessThan(after.total / 10);
    const cached = await fileResidency(fileFd, 0, FILE_SIZE);
    expect(cached.present).toBeLessThan(cached.total / 10);
    expect(await fileCached(fileFd, 0, FILE_SIZE)).toEqual(cached);

    expect(await processMadvise(pidfd, [{ addr, length: FILE_SIZE }], 'willneed')).toBe(FILE_SIZE);
    const all = async (): Promise<boolean> => (await fileResidency(fileFd, 0, FILE_SIZE)).present === cached.total;
    expect(await waitFor(all, 10_000)).toBe(true);
    expect((await fileCached(fileFd, 0, FILE_SIZE)).present).toBe(cached.total);
    expect(mappingResidency(child!.pid!, addr, FILE_SIZE).present).toBeLessThan(after.total / 10);  // cached, not mapped
    expect(await processMadvise(pidfd, [{ addr, length: FILE_SIZE }], 'cold')).toBe(FILE_SIZE);
    // Cached but unmapped: posix_fadvise DONTNEED drops them, WILLNEED reads them again.
    await fileAdvise(fileFd, 0, 0, 'dontneed');
    expect((await fileCached(fileFd, 0, FILE_SIZE)).present).toBeLessThan(cached.total / 10);
    await fileAdvise(fileFd, 0, 128 * 1024, 'willneed'); // one read-ahead window: the kernel reads no more a call
    const head = async (): Promise<boolean> => (await fileCached(fileFd, 0, 128 * 1024)).present === 128 * 1024 / PAGE_SIZE;
    expect(await waitFor(head, 10_000)).toBe(true);
  });

  it('batches more than IOV_MAX ranges and adds up the bytes', async () => {
    const ranges = [];
    for (let i = 0; i < FILE_SIZE / PAGE_SIZE; i++) ranges.push({ addr: addr + i * PAGE_SIZE, length: PAGE_SIZE });
    expect(ranges.length).toBeGreaterThan(1024);
    expect(await processMadvise(pidfd, ranges, 'cold')).toBe(FILE_SIZE);
    expect(await processMadvise(pidfd, [], 'pageout')).toBe(0);
    expect(await processMadvise(pidfd, [{ addr, length: 0 }], 'pageout')).toBe(0);
  });

  it('reports a residency bitmap per page', async () => {
    const r = mappingResidency(child!.pid!, addr + PAGE_SIZE, 4 * PAGE_SIZE);
    expect(r.total).toBe(4);
    expect(r.bitmap.length).toBe(4);
    const f = await fileResidency(fileFd, PAGE_SIZE, 3 * PAGE_SIZE + 1);
    expect(f.total).toBe(4);
    expect(await fileCached(fileFd, PAGE_SIZE, 3 * PAGE_SIZE + 1)).toEqual(f);
    expect(await fileCached(fileFd, 0, 0)).toEqual({ present: 0, total: 0, bitmap: new Uint8Array(0) });
    expect(await fileResidency(fileFd, 0, 0)).toEqual({ present: 0, total: 0, bitmap: new Uint8Array(0) });
  });

  it('refuses unaligned and invalid arguments with EINVAL', async () => {
    await expectNative(processMadvise(pidfd, [{ addr: addr + 1, length: PAGE_SIZE }], 'pageout'), 'EINVAL');
    await expectNative(processMadvise(pidfd, [{ addr: -4096, length: PAGE_SIZE }], 'pageout'), 'EINVAL');
    await expectNative(processMadvise(pidfd, [{ addr, length: PAGE_SIZE }], 'free' as 'cold'), 'EINVAL');
    await expectNative(() => mappingResidency(child!.pid!, addr + 1, PAGE_SIZE), 'EINVAL');
    await expectNative(() => mappingResidency(child!.pid!, addr, PAGE_SIZE + 1), 'EINVAL');
    await expectNative(fileResidency(fileFd, 1, PAGE_SIZE), 'EINVAL');
    await expectNative(() => mappingResidency(child!.pid!, 0, 2 ** 41), 'EINVAL');  // bitmap size cap
    await expectNative(fileResidency(fileFd, 0, 2 ** 41), 'EINVAL');
    await expectNative(fileResidency(2 ** 31 - 1, 0, PAGE_SIZE), 'EBADF');
    await expectNative(fileCached(fileFd, 1, PAGE_SIZE), 'EINVAL');
    await expectNative(fileAdvise(fileFd, 0, PAGE_SIZE, 'free' as 'dontneed'), 'EINVAL');
    await expectNative(fileAdvise(2 ** 31 - 1, 0, PAGE_SIZE, 'dontneed'), 'EBADF');
    await expectNative(fileCached(2 ** 31 - 1, 0, PAGE_SIZE), 'EBADF');
    await expect(processMadvise(pidfd, 'x' as unknown as [], 'cold')).rejects.toThrow(TypeError);
  });

  it('refuses dead processes with ESRCH', async () => {
    await expectNative(async () => mappingResidency(await deadPid(), 0, PAGE_SIZE), 'ESRCH');
    const sleeper = spawn('sleep', ['60']);
    const fd = pidfdOpen(sleeper.pid!);
    try {
      sleeper.kill('SIGKILL');
      await once(sleeper, 'exit');
      await expectNative(processMadvise(fd, [{ addr, length: PAGE_SIZE }], 'pageout'), 'ESRCH');
    } finally {
      fs.closeSync(fd);
      if (sleeper.exitCode === null && sleeper.signalCode === null) process.kill(sleeper.pid!, 'SIGKILL');
    }
  });
});
