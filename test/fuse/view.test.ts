/**
 * The FUSE view served by `dormant serve --mount DIR`, driven by real tools:
 * dd and cmp through the mount, nbdcopy over NBD on the same daemon, a
 * python3 child writing through a shared mapping, and plain syscalls for the
 * refusals. The store itself is read after the daemon stops (SIGTERM).
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../src/blockstore/index.js';
import { dormant, expectOk } from '../helpers/cli.js';
import { firstDiff, pseudoRandom } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, isMounted, MMAP_WRITER, mmapPattern, startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';

const MiB = 1024 * 1024;
const tmp = new TempDirs();
let store: string;
let mnt: string;
let work: string;
let daemon: MountDaemon;
let socket: string;
const data = pseudoRandom(42, 64 * MiB);

/** Reads a whole export over NBD (nbdcopy) into a buffer. */
async function readNbd(name: string): Promise<Buffer> {
  const out = path.join(work, `${name.replace('@', '_')}.nbd`);
  await tool('nbdcopy', [`nbd+unix:///${name}?socket=${socket}`, out]);
  return fs.readFileSync(out);
}

beforeAll(async () => {
  const dir = tmp.make('fuse');
  store = path.join(dir, 'store');
  mnt = path.join(dir, 'mnt');
  work = path.join(dir, 'work');
  socket = path.join(store, 'nbd.sock');
  fs.mkdirSync(mnt);
  fs.mkdirSync(work);
  expectOk(dormant(['--store', store, 'init']));
  expectOk(dormant(['--store', store, 'create', 'big', '--size', '64M']));
  expectOk(dormant(['--store', store, 'create', 'mem', '--size', '16M', '--kind', 'memory']));
  expectOk(dormant(['--store', store, 'create', 'fp', '--size', '1M']));
  expectOk(dormant(['--store', store, 'snapshot', 'mem', 'frozen']));
  daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt], /FUSE on /);
});

afterAll(async () => {
  await daemon?.stop().catch(() => undefined);
  await cleanupMounts();
  tmp.cleanup();
});

describe('FUSE view (serve --mount)', () => {
  it('lists volumes and snapshots, with their sizes', () => {
    expect(fs.readdirSync(mnt).sort()).toEqual(['snapshots', 'volumes']);
    expect(fs.readdirSync(path.join(mnt, 'volumes')).sort()).toEqual(['big', 'fp', 'mem']);
    expect(fs.readdirSync(path.join(mnt, 'snapshots'))).toEqual(['mem@frozen']);
    expect(fs.statSync(path.join(mnt, 'volumes', 'big')).size).toBe(64 * MiB);
    expect(fs.statSync(path.join(mnt, 'snapshots', 'mem@frozen')).size).toBe(16 * MiB);
  });

  it('dd 64 MiB in, cmp it out, and NBD reads the same bytes', async () => {
    const src = path.join(work, 'random.img');
    fs.writeFileSync(src, data);
    const file = path.join(mnt, 'volumes', 'big');
    await tool('dd', [`if=${src}`, `of=${file}`, 'bs=1M', 'conv=notrunc,fsync', 'status=none']);
    await tool('cmp', [src, file]);
    expect(firstDiff(await readNbd('big'), data)).toBeNull();
  });

  it('a shared mapping written by a child reaches the store (msync)', async () => {
    const file = path.join(mnt, 'volumes', 'mem');
    const script = path.join(work, 'mmap-writer.py');
    fs.writeFileSync(script, MMAP_WRITER);
    const { stdout } = await tool('python3', [script, file, '97', 'once'], 60_000);
    expect(stdout).toContain('done');
    const got = await readNbd('mem');
    for (let i = 0; i < 16 * MiB / 4096; i += 97) {
      expect(got.subarray(i * 4096, i * 4096 + 16).toString()).toBe(mmapPattern(i).toString());
    }
    // The snapshot taken before stays frozen.
    const frozen = fs.readFileSync(path.join(mnt, 'snapshots', 'mem@frozen'));
    expect(frozen.equals(Buffer.alloc(16 * MiB))).toBe(true);
  });

  it('a snapshot file refuses writes with EROFS', () => {
    const file = path.join(mnt, 'snapshots', 'mem@frozen');
    expect(() => fs.openSync(file, 'r+')).toThrow(expect.objectContaining({ code: 'EROFS' }));
    expect(() => fs.truncateSync(file, 32 * MiB)).toThrow(expect.objectContaining({ code: 'EROFS' }));
    expect(() => fs.writeFileSync(path.join(mnt, 'snapshots', 'x@y'), 'x')).toThrow(expect.objectContaining({ code: 'EROFS' }));
  });

  it('creating, removing and renaming files fail with EPERM', () => {
    const vols = path.join(mnt, 'volumes');
    expect(() => fs.writeFileSync(path.join(vols, 'new'), 'x')).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(() => fs.mkdirSync(path.join(vols, 'dir'))).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(() => fs.unlinkSync(path.join(vols, 'fp'))).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(() => fs.renameSync(path.join(vols, 'fp'), path.join(vols, 'fp2'))).toThrow(expect.objectContaining({ code: 'EPERM' }));
    expect(fs.readdirSync(vols).sort()).toEqual(['big', 'fp', 'mem']);
  });

  it('truncate grows a volume and refuses to shrink it', async () => {
    const file = path.join(mnt, 'volumes', 'fp');
    expect(() => fs.truncateSync(file, 4096)).toThrow(expect.objectContaining({ code: 'EINVAL' }));
    fs.truncateSync(file, 2 * MiB);
    expect(fs.statSync(file).size).toBe(2 * MiB);
    const { stdout } = await tool('nbdinfo', ['--size', `nbd+unix:///fp?socket=${socket}`]);
    expect(Number(stdout.trim())).toBe(2 * MiB);
  });

  it('volumes created with the CLI appear without a remount', async () => {
    expectOk(dormant(['--store', store, 'create', 'late', '--size', '1M']));
    expectOk(dormant(['--store', store, 'snapshot', 'late', 's1']));
    await new Promise((r) => setTimeout(r, 1100)); // directory entries are cached for ATTR_TIMEOUT_S
    expect(fs.readdirSync(path.join(mnt, 'volumes'))).toContain('late');
    expect(fs.readdirSync(path.join(mnt, 'snapshots'))).toContain('late@s1');
    expect(fs.statSync(path.join(mnt, 'volumes', 'late')).size).toBe(MiB);
  });

  it('statfs reports the numbers of the store filesystem', () => {
    const st = fs.statfsSync(mnt);
    const real = fs.statfsSync(store);
    expect(st.blocks).toBeGreaterThan(0);
    expect(st.bsize).toBe(real.bsize);
    expect(Math.abs(st.bavail - real.bavail) / real.blocks).toBeLessThan(0.01);
  });

  it('fsync through the mount and reads labelled with the file name', () => {
    const file = path.join(mnt, 'volumes', 'fp');
    const fd = fs.openSync(file, 'r+');
    try {
      fs.writeSync(fd, Buffer.alloc(8192, 0x5a), 0, 8192, 4096);
      fs.fdatasyncSync(fd);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
    // A fresh open drops the cached pages, so this read reaches the store.
    const back = fs.readFileSync(file);
    expect(back.subarray(4096, 4096 + 8192).equals(Buffer.alloc(8192, 0x5a))).toBe(true);
  });

  it('SIGTERM unmounts, and the store holds what went through the mount', async () => {
    const exit = await daemon.stop();
    expect(exit).toEqual({ code: 0, signal: null });
    expect(isMounted(mnt)).toBe(false);
    const s = await Store.open(store);
    try {
      const big = await s.openVolume('big');
      expect(firstDiff(await big.read(0, 64 * MiB), data)).toBeNull();
      await big.close();
      const mem = await s.openVolume('mem');
      const got = await mem.read(0, 16 * MiB);
      await mem.close();
      for (let i = 0; i < 16 * MiB / 4096; i += 97) {
        expect(got.subarray(i * 4096, i * 4096 + 16).toString()).toBe(mmapPattern(i).toString());
      }
      expect(s.fingerprintLabels()).toContain('fp');
      expect(s.fingerprints('fp').length).toBeGreaterThan(0);
      expect(await s.check()).toEqual([]);
    } finally {
      await s.close();
    }
  });
});
