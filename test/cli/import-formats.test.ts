/**
 * `dormant import` of images that are not raw: the format is told by the
 * file's header and qemu-img converts it first; the volume then exports
 * byte for byte what `qemu-img convert -O raw` makes of the same file
 * (qcow2, qed, vmdk, vdi, vhdx, vpc); an NBD URI (nbdkit) is read and
 * written as raw. `--format raw` forces a raw import of
 * a qcow2 file; a wrong `--format` is one line, exit 1, no volume left; the
 * temporary raw file is gone afterwards; `--json` reports the format.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, cliEnv, dormant, dormantJson, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

const MiB = 2 ** 20;
const qemuImg = (...args: string[]) => execFileSync('qemu-img', args, { stdio: ['ignore', 'pipe', 'pipe'] });

describe('import converts images qemu-img knows', () => {
  let work: string;
  let store: string;
  let tmpdir: string;
  let qcow2: string;
  const env = () => ({ TMPDIR: tmpdir });
  const run = (args: string[]) => dormant(args, { store, env: env() });
  const exported = (vol: string) => {
    const out = path.join(work, `${vol}.out`);
    expectOk(run(['export', vol, out]));
    return fs.readFileSync(out);
  };
  const raw = (image: string, format: string) => {
    const out = path.join(work, `${path.basename(image)}.ref`);
    qemuImg('convert', '-f', format, '-O', 'raw', image, out);
    return fs.readFileSync(out);
  };

  beforeAll(() => {
    ensureBuilt();
    work = tmp.make('import-formats');
    store = path.join(work, 'store');
    tmpdir = path.join(work, 'tmp');
    fs.mkdirSync(tmpdir);
    expectOk(dormant(['init'], { store }));
    qcow2 = path.join(work, 'disk.qcow2');
    qemuImg('create', '-q', '-f', 'qcow2', qcow2, '8M');
    // Data at the start, in the middle and in the last block; the rest stays unallocated.
    for (const [pattern, off, len] of [['0xab', '0', '64k'], ['0xcd', '3M', '1M'], ['0x11', String(8 * MiB - 4096), '4k']]) {
      execFileSync('qemu-io', ['-f', 'qcow2', '-c', `write -P ${pattern} ${off} ${len}`, qcow2], { stdio: 'ignore' });
    }
  });

  it('a qcow2 file: told by its header, converted, equal to qemu-img convert -O raw', () => {
    const out = expectOk(run(['import', 'q', qcow2]));
    expect(out).toMatch(/^imported q \(qcow2, converted to raw by qemu-img\): 8\.0 MiB \(8388608 bytes\), [\d.]+ MiB allocated/);
    const ref = raw(qcow2, 'qcow2');
    expect(ref.length).toBe(8 * MiB);
    expect(ref.subarray(3 * MiB, 4 * MiB).every((b) => b === 0xcd)).toBe(true);
    expect(exported('q').equals(ref)).toBe(true);
    expect(fs.readdirSync(tmpdir)).toEqual([]); // the temporary raw file is gone
  });

  it('qed, vmdk, vdi, vhdx and vpc files made from it', () => {
    for (const format of ['qed', 'vmdk', 'vdi', 'vhdx', 'vpc']) {
      const image = path.join(work, `disk.${format}`);
      qemuImg('convert', '-f', 'qcow2', '-O', format, qcow2, image);
      const r = dormantJson<{ name: string; size: number; format: string }>(['import', `i-${format}`, image], { store, env: env() });
      expect(r).toMatchObject({ name: `i-${format}`, format });
      const ref = raw(image, format);
      expect(r.size, format).toBe(ref.length); // vpc rounds the size up to its disk geometry
      expect(exported(`i-${format}`).equals(ref), format).toBe(true);
      expect(ref.subarray(0, 64 * 1024).every((b) => b === 0xab), format).toBe(true);
    }
  });

  it('--format raw takes the qcow2 file as it is; a raw file is imported without qemu-img', () => {
    const r = dormantJson<{ size: number; format: string }>(['import', 'asis', qcow2, '--format', 'raw'], { store, env: env() });
    expect(r.format).toBe('raw');
    expect(exported('asis').equals(fs.readFileSync(qcow2))).toBe(true);
    const plain = path.join(work, 'plain.img');
    fs.writeFileSync(plain, Buffer.alloc(64 * 1024, 7));
    expect(expectOk(run(['import', 'plain', plain]))).toMatch(/^imported plain: 64\.0 KiB \(65536 bytes\)/);
  });

  it('imports from and exports to NBD URIs (nbdkit), read and written as raw', () => {
    const ref = raw(qcow2, 'qcow2');
    const refFile = path.join(work, 'nbd-source.raw');
    fs.writeFileSync(refFile, ref);
    const D = `'${process.execPath}' '${BIN}' --store '${store}'`;
    const bash = (script: string) => execFileSync('bash', ['-c', script], {
      env: { ...cliEnv(), TMPDIR: tmpdir }, timeout: 60_000, stdio: ['ignore', 'pipe', 'pipe'],
    }).toString();
    // nbdkit --run serves the file on a private Unix socket for the one command, $uri names it.
    expect(bash(`nbdkit -U - file '${refFile}' --run '${D} import fromnbd "$uri"'`))
      .toMatch(/^imported fromnbd: 8\.0 MiB \(8388608 bytes\)/);
    expect(exported('fromnbd').equals(ref)).toBe(true);
    const copy = path.join(work, 'nbd-copy.raw');
    bash(`nbdkit -U - memory 8M --run '${D} export fromnbd "$uri" && nbdcopy "$uri" ${copy}'`);
    expect(fs.readFileSync(copy).equals(ref)).toBe(true);
    expect(fs.readdirSync(tmpdir)).toEqual([]);
    expect(() => bash(`nbdkit -U - memory 1M --run '${D} export fromnbd "$uri"'`)).toThrow(/dormant: cannot write to 'nbd\+unix:.*/);
    expect(() => bash(`${D} import gone 'nbd+unix:///x?socket=${work}/none.sock'`)).toThrow(/dormant: cannot read 'nbd\+unix:.*': /);
  });

  it('a wrong or unknown --format: one line, exit 1, no volume', () => {
    const plain = path.join(work, 'plain.img');
    expectFailure(run(['import', 'bad', plain, '--format', 'qcow2']), /^dormant: cannot convert '.*plain\.img' from qcow2 to raw: .+/);
    expectFailure(run(['import', 'bad', plain, '--format', 'iso']), /^dormant: bad --format 'iso': use auto, raw, qcow2, /);
    const names = dormantJson<{ volumes: Array<{ name: string }> }>(['list'], { store }).volumes.map((v) => v.name);
    expect(names).not.toContain('bad');
    expect(fs.readdirSync(tmpdir)).toEqual([]);
    expect(expectOk(dormant(['check', '--data'], { store }))).toMatch(/consistent/);
  });
});
