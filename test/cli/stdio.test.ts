/**
 * `-` for stdin and stdout, offline and through the daemon: `export v - |`
 * streams the image in order (holes as zeroes) and equals the file it came
 * from; `export v /dev/stdout | wc -c` counts the whole volume; a regular
 * file as stdout (`> f`) is written too; `cat img | import w -` makes a
 * volume of exactly the bytes sent, spanning several chunks; a qcow2 stream
 * and an empty stream are refused in one line with no volume left; `--json`
 * of an export to stdout goes to stderr.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cliEnv, dormant, dormantJson, ensureBuilt, expectOk } from '../helpers/cli.js';
import { pseudoRandom } from '../helpers/data.js';
import { cleanupMounts, startDaemon, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const MiB = 2 ** 20;
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

/** Runs a bash pipeline with `D` set to the dormant command line for `store`; returns status, stdout (raw), stderr. */
function sh(store: string, script: string, input?: Buffer) {
  const r = spawnSync('bash', ['-o', 'pipefail', '-c', script], {
    env: cliEnv({ D: `${process.execPath} ${BIN} --store ${store}` }), input, timeout: 60_000, killSignal: 'SIGKILL',
    maxBuffer: 256 * MiB,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr.toString() };
}

describe.each([['offline', false], ['through the daemon', true]])('import and export with -, %s', (_label, withDaemon) => {
  let work: string;
  let store: string;
  let daemon: MountDaemon | undefined;
  // 40 MiB with a hole in the middle: more than two stream chunks of 16 MiB.
  const image = Buffer.concat([pseudoRandom(3, 12 * MiB), Buffer.alloc(8 * MiB), pseudoRandom(4, 20 * MiB)]);

  beforeAll(async () => {
    ensureBuilt();
    work = tmp.make(`stdio-${withDaemon ? 'daemon' : 'offline'}`);
    store = path.join(work, 'store');
    fs.writeFileSync(path.join(work, 'img'), image);
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['import', 'v', path.join(work, 'img')], { store }));
    if (withDaemon) daemon = await startDaemon(store, path.join(work, 'mnt'), ['serve', '--no-tcp'], /dormant serve: store/);
  });

  afterAll(async () => {
    await daemon?.stop().catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  });

  it('export v - streams the image to a pipe; /dev/stdout and a redirected file too', () => {
    const r = sh(store, '$D export v - | cat');
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(r.stdout.length).toBe(image.length);
    expect(sha(r.stdout)).toBe(sha(image));
    const wc = sh(store, '$D export v /dev/stdout | wc -c');
    expect(wc.status).toBe(0);
    expect(wc.stdout.toString().trim()).toBe(String(image.length));
    const out = path.join(work, 'redirected');
    expect(sh(store, `$D export v - > ${out}`).status).toBe(0);
    expect(sha(fs.readFileSync(out))).toBe(sha(image));
    const j = sh(store, '$D export v - --json | sha256sum');
    expect(j.status).toBe(0);
    expect(j.stdout.toString().split(' ')[0]).toBe(sha(image));
    expect(JSON.parse(j.stderr)).toMatchObject({ name: 'v', size: image.length, allocated: 32 * MiB });
  });

  it('cat img | import w - makes a volume of exactly those bytes; the hole stays a hole', () => {
    const r = sh(store, `cat ${path.join(work, 'img')} | $D import w - --json`);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout.toString())).toMatchObject({ name: 'w', size: image.length, allocated: 32 * MiB, format: 'raw' });
    const odd = pseudoRandom(5, 5000); // not a whole block
    expect(sh(store, '$D import odd -', odd).status).toBe(0);
    const back = sh(store, '$D export odd -');
    expect(back.stdout.equals(odd)).toBe(true);
    expect(sha(sh(store, '$D export w -').stdout)).toBe(sha(image));
  });

  it('a qcow2 stream and an empty stream are refused in one line, no volume left', () => {
    const q = path.join(work, 'q.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q, '1M']);
    const a = sh(store, `cat ${q} | $D import q -`);
    expect(a.status).toBe(1);
    expect(a.stderr).toMatch(/^dormant: the input stream holds a qcow2 image: save it to a file and import that .*--format raw.*\n$/);
    const b = sh(store, '$D import e - < /dev/null');
    expect(b.status).toBe(1);
    expect(b.stderr).toBe('dormant: the input stream is empty: a volume needs at least 1 byte\n');
    const c = sh(store, 'true | $D import e2 -');
    expect(c.status).toBe(1);
    expect(c.stderr).toBe('dormant: the input stream is empty: a volume needs at least 1 byte\n');
    const names = dormantJson<{ volumes: Array<{ name: string }> }>(['list'], { store }).volumes.map((v) => v.name).sort();
    expect(names).toEqual(['odd', 'v', 'w']);
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/consistent/);
  });
});
