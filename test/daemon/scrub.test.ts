/**
 * `dormant serve --scrub-every`: the daemon reads every chunk back on a
 * schedule and logs one line per run: clean, then, after a byte of a
 * segment file is flipped under it, the damaged chunk with the volumes and
 * offsets that use it. A bad duration is one line and exit 1.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE } from '../../src/blockstore/index.js';
import { dormant, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { flipStoredByte } from '../helpers/store.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
let store = '';
let img: Buffer;
let daemon: MountDaemon | undefined;
const BAD = 7;

/** Waits (bounded) until the daemon's log matches `re`. */
async function waitLog(re: RegExp, timeoutMs = 30_000): Promise<string> {
  const started = Date.now();
  while (Date.now() - started < timeoutMs) {
    const m = re.exec(daemon!.stderr());
    if (m) return m[0];
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`no log line ${re} within ${timeoutMs} ms:\n${daemon!.stderr()}`);
}

describe('serve --scrub-every', () => {
  beforeAll(async () => {
    ensureBuilt();
    const work = tmp.make('scrub');
    store = path.join(work, 'store');
    img = crypto.randomBytes(32 * BLOCK_SIZE);
    fs.writeFileSync(path.join(work, 'img'), img);
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'disk', path.join(work, 'img')], { store }));
    daemon = await startDaemon(store, path.join(work, 'unused-mnt'),
      ['serve', '--no-tcp', '--scrub-every', '2s', '--scrub-rate', '0'], /dormant serve: store .*scrub every 2 s/);
  }, 60_000);

  afterAll(async () => {
    await daemon?.stop(30_000).catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  }, 60_000);

  it('logs a clean run, then the damaged chunk with its volume and offset once a stored byte flips', async () => {
    expect(await waitLog(/scrub: 32 chunks \([\d.]+ GiB\) read in [\d.]+ s: clean/)).toBeTruthy();
    const want = img.subarray(BAD * BLOCK_SIZE, (BAD + 1) * BLOCK_SIZE);
    expect(flipStoredByte(store, want, 9, 0x01)).toBe(true);
    await waitLog(/scrub: 32 chunks .*: 1 damaged chunks/);
    expect(await waitLog(new RegExp(`scrub: chunk \\d+ \\(segment \\d+ slot \\d+\\) does not match its checksum; used by disk at ${BAD * BLOCK_SIZE}`)))
      .toBeTruthy();
    const exit = await daemon!.stop(30_000);
    expect(exit.code).toBe(0);
  }, 90_000);

  it('refuses a duration it cannot read, in one line', () => {
    expectFailure(dormant(['serve', '--no-tcp', '--scrub-every', 'often'], { store }), /bad --scrub-every 'often'/);
    expectFailure(dormant(['serve', '--no-tcp', '--scrub-every', '1h', '--scrub-rate', 'fast'], { store }), /bad --scrub-rate 'fast'/);
  });
});
