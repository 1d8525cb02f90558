/**
 * `dormant resize`: a volume grows to a size or by +SIZE, offline and
 * through the daemon; its data stays, the new part reads as zeroes, a new
 * NBD connection (nbdinfo, qemu-img) sees the new size; shrinking, a
 * snapshot and a bad size are refused in one line, exit 1, nothing changed.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantJson, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { pseudoRandom } from '../helpers/data.js';
import { cleanupMounts, startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const MiB = 2 ** 20;

describe('dormant resize', () => {
  let work: string;
  let store: string;
  let daemon: MountDaemon | undefined;
  const data = pseudoRandom(11, 2 * MiB);
  const size = (vol: string) => dormantJson<{ size: number }>(['info', vol], { store }).size;
  const exported = (vol: string) => {
    const out = path.join(work, `${vol}.out`);
    expectOk(dormant(['export', vol, out], { store }));
    return fs.readFileSync(out);
  };

  beforeAll(() => {
    ensureBuilt();
    work = tmp.make('resize');
    store = path.join(work, 'store');
    fs.writeFileSync(path.join(work, 'v.img'), data);
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'v', path.join(work, 'v.img')], { store }));
    expectOk(dormant(['snapshot', 'v', 's'], { store }));
  });

  afterAll(async () => {
    await daemon?.stop().catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  });

  it('grows offline to a size and by +SIZE; the data stays and the rest reads as zeroes', () => {
    expect(expectOk(dormant(['resize', 'v', '3M'], { store })))
      .toBe('resized v: 2.0 MiB -> 3.0 MiB (3145728 bytes); NBD clients see the new size when they connect again\n');
    expect(dormantJson(['resize', 'v', '+1M'], { store })).toEqual({ volume: 'v', oldSize: 3 * MiB, size: 4 * MiB });
    const out = exported('v');
    expect(out.length).toBe(4 * MiB);
    expect(out.subarray(0, 2 * MiB).equals(data)).toBe(true);
    expect(out.subarray(2 * MiB).every((b) => b === 0)).toBe(true);
    expect(size('v@s')).toBe(2 * MiB); // the snapshot keeps its size
    expect(expectOk(dormant(['resize', 'v', '4M'], { store }))).toBe('v is already 4.0 MiB (4194304 bytes)\n');
  });

  it('refuses to shrink, a snapshot, an unknown volume and a bad size, changing nothing', () => {
    expectFailure(dormant(['resize', 'v', '1M'], { store }), /^dormant: cannot shrink 'v' from 4194304 to 1048576 bytes: volumes only grow$/);
    expectFailure(dormant(['resize', 'v', '--', '-1M'], { store }), /^dormant: cannot shrink 'v': volumes only grow$/);
    expectFailure(dormant(['resize', 'v@s', '8M'], { store }), /'v@s' is a read-only snapshot/);
    expectFailure(dormant(['resize', 'nope', '8M'], { store }), /nope/);
    expectFailure(dormant(['resize', 'v', 'lots'], { store }), /^dormant: bad size 'lots'/);
    expectFailure(dormant(['resize', 'v', '+2P'], { store }), /^dormant: bad size '2P': more than/);
    expect(size('v')).toBe(4 * MiB);
  });

  it('through the daemon: a new NBD connection sees the new size', async () => {
    daemon = await startDaemon(store, path.join(work, 'mnt'), ['serve', '--no-tcp'], /dormant serve: store/);
    const uri = `nbd+unix:///v?socket=${path.join(store, 'nbd.sock')}`;
    expect((await tool('nbdinfo', ['--size', uri])).stdout.trim()).toBe(String(4 * MiB));
    expect(expectOk(dormant(['resize', 'v', '+4M'], { store }))).toMatch(/^resized v: 4\.0 MiB -> 8\.0 MiB/);
    expect((await tool('nbdinfo', ['--size', uri])).stdout.trim()).toBe(String(8 * MiB));
    const info = JSON.parse((await tool('qemu-img', ['info', '--output=json', uri])).stdout) as { 'virtual-size': number };
    expect(info['virtual-size']).toBe(8 * MiB);
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 7M 4k', uri]);
    expect((await daemon.stop()).code).toBe(0);
    daemon = undefined;
    const out = exported('v');
    expect(out.subarray(7 * MiB, 7 * MiB + 4096).every((b) => b === 0x5a)).toBe(true);
    expect(out.subarray(0, 2 * MiB).equals(data)).toBe(true);
    expect(expectOk(dormant(['check'], { store }))).toMatch(/consistent/);
  });
});
