/**
 * The FUSE view under concurrent readers and writers, with real tools:
 * four fio jobs write and read back (verify=crc32c) their own quarters of a
 * volume file at random while a fifth reads the whole file sequentially in
 * 1 MiB requests, through the page cache and with O_DIRECT (so reads of
 * stored runs are answered on libuv's pool while writes land); then the
 * store holds what fio's verify pass read, checked over NBD. And a block
 * whose bytes on disk no longer match its hash reads as EIO through the
 * view (never wrong data; a read across it stops short before it), named
 * in the daemon's log.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';
import { cleanupMounts, startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';

const MiB = 1024 * 1024;
const tmp = new TempDirs();
let store: string;
let mnt: string;
let daemon: MountDaemon;

beforeAll(async () => {
  const dir = tmp.make('fuse-conc');
  store = path.join(dir, 'store');
  mnt = path.join(dir, 'mnt');
  fs.mkdirSync(mnt);
  expectOk(dormant(['--store', store, 'init']));
  expectOk(dormant(['--store', store, 'create', 'conc', '--size', '64M']));
  expectOk(dormant(['--store', store, 'create', 'rot', '--size', '4M']));
  daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt], /FUSE on /);
});

afterAll(async () => {
  await daemon?.stop().catch(() => undefined);
  await cleanupMounts();
  tmp.cleanup();
});

/** One fio run of `jobs` (each a list of --options after --name) on `file`; the parsed JSON. */
async function fio(file: string, jobs: string[][]): Promise<{ jobs: Array<{ jobname: string; error: number; read: { io_bytes: number }; write: { io_bytes: number } }> }> {
  const args = ['--output-format=json', `--filename=${file}`, '--ioengine=psync'];
  for (const j of jobs) args.push(...j);
  const { stdout } = await tool('fio', args, 300_000);
  return JSON.parse(stdout.slice(stdout.indexOf('{')));
}

describe('FUSE view under concurrent readers and writers', () => {
  for (const direct of [0, 1]) {
    it(`fio verify: four random writers on their own quarters and a sequential reader (direct=${direct})`, async () => {
      const file = path.join(mnt, 'volumes', 'conc');
      const writer = (k: number) => [`--name=w${k}`, '--rw=randwrite', '--bs=4k,64k', `--offset=${k * 16}M`, '--size=16M',
        '--verify=crc32c', '--do_verify=1', '--verify_fatal=1', `--randseed=${k + 10 * direct}`, `--direct=${direct}`, '--fsync_on_close=1'];
      const r = await fio(file, [writer(0), writer(1), writer(2), writer(3),
        ['--name=seq', '--rw=read', '--bs=1M', '--size=64M', '--loops=3', `--direct=${direct}`]]);
      for (const j of r.jobs) expect(j.error, `fio job ${j.jobname}`).toBe(0);
      expect(r.jobs.find((j) => j.jobname === 'seq')!.read.io_bytes).toBe(3 * 64 * MiB);
      // What the view holds, the store holds: the same bytes over NBD.
      const out = path.join(store, '..', 'conc.raw');
      await tool('nbdcopy', [`nbd+unix:///conc?socket=${path.join(store, 'nbd.sock')}`, out]);
      const viaNbd = fs.readFileSync(out);
      const viaFuse = fs.readFileSync(file);
      expect(viaNbd.equals(viaFuse)).toBe(true);
      // A second verify-only pass reads back what the writers wrote, through the view.
      const again = await fio(file, [0, 1, 2, 3].map((k) => [...writer(k).filter((o) => !o.startsWith('--do_verify')),
        '--verify_only=1']));
      for (const j of again.jobs) expect(j.error, `verify-only job ${j.jobname}`).toBe(0);
    }, 300_000);
  }

  it('a block whose stored bytes no longer match its hash reads as EIO through the view, and is logged', async () => {
    const file = path.join(mnt, 'volumes', 'rot');
    const data = Buffer.alloc(4 * MiB, 0x5a);
    for (let i = 0; i < data.length; i += 4096) data.writeUInt32LE(i, i); // every block its own chunk
    fs.writeFileSync(file, data, { flag: 'r+' });
    const fd = fs.openSync(file, 'r+');
    fs.fsyncSync(fd);
    fs.closeSync(fd);
    // Find block 100's bytes in a segment file and flip one of them (the page cache of the segment too: pwrite).
    const needle = data.subarray(100 * 4096, 101 * 4096);
    const segDir = path.join(store, 'segments');
    let hit: { seg: string; at: number } | null = null;
    for (const seg of fs.readdirSync(segDir)) {
      const bytes = fs.readFileSync(path.join(segDir, seg));
      const at = bytes.indexOf(needle);
      if (at >= 0) { hit = { seg, at }; break; }
    }
    expect(hit).not.toBeNull();
    const sfd = fs.openSync(path.join(segDir, hit!.seg), 'r+');
    fs.writeSync(sfd, Buffer.from([0xa5]), 0, 1, hit!.at + 17);
    fs.closeSync(sfd);
    // A new open drops the view's cached pages. A read across the block stops short before it (POSIX:
    // the bytes read so far), a read of it fails with EIO, the rest reads right.
    const rfd = fs.openSync(file, 'r');
    try {
      const buf = Buffer.alloc(MiB);
      expect(fs.readSync(rfd, buf, 0, MiB, 0)).toBe(100 * 4096);
      expect(buf.subarray(0, 100 * 4096).equals(data.subarray(0, 100 * 4096))).toBe(true);
      expect(() => fs.readSync(rfd, buf, 0, 4096, 100 * 4096)).toThrow(/EIO/);
      expect(fs.readSync(rfd, buf, 0, MiB, 2 * MiB)).toBe(MiB);
      expect(buf.equals(data.subarray(2 * MiB, 3 * MiB))).toBe(true);
    } finally {
      fs.closeSync(rfd);
    }
    const deadline = Date.now() + 5000;
    while (!/does not match its checksum/.test(daemon.stderr()) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    expect(daemon.stderr()).toMatch(/fuse: read rot: data in segment \d+ slot \d+ does not match its checksum/);
  }, 60_000);
});
