/**
 * XXH3 is compiled once per instruction set (native/src/xxh3_isa.cc) and the
 * addon picks the widest this machine runs. Every variant must name chunks
 * exactly as xxhash-addon (the store's hash) does, or a store written on one
 * machine would read as damaged on another: each variant is forced in a
 * child process (DORMANT_XXH3) and its hashes of blocks and of pages of
 * other sizes compared with xxhash-addon's. A variant the CPU cannot run
 * falls back to a narrower one, never crashes.
 */
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import { XXH3_ISA } from '../../src/native/index.js';

const require = createRequire(import.meta.url);
const { XXHash128 } = require('xxhash-addon') as { XXHash128: { hash(data: Buffer): Buffer } };

const cpuFlags = new Set((fs.readFileSync('/proc/cpuinfo', 'utf8').match(/^flags\s*:(.*)$/m)?.[1] ?? '').trim().split(/\s+/));
const ADDON = new URL('../../native/build/Release/dormant_native.node', import.meta.url).pathname;

/** Runs the addon in a child with DORMANT_XXH3=isa: hashes `data` per 4096-byte block and per 512 and 65536 bytes. */
function hashInChild(isa: string, data: Buffer): { isa: string; blocks: string; small: string; big: string } {
  const script = `
    const a = require(${JSON.stringify(ADDON)});
    const data = Buffer.from(require('fs').readFileSync(0));
    const h = Buffer.alloc(data.length / 4096 * 16), z = new Uint8Array(data.length / 4096);
    a.hashBlocks(data, h, z);
    process.stdout.write(JSON.stringify({ isa: a.XXH3_ISA, blocks: h.toString('hex'),
      small: a.hashPages(data, 512).hashes.toString('hex'), big: a.hashPages(data, 65536).hashes.toString('hex') }));`;
  const out = execFileSync(process.execPath, ['-e', script], { input: data, env: { ...process.env, DORMANT_XXH3: isa } });
  return JSON.parse(out.toString()) as { isa: string; blocks: string; small: string; big: string };
}

const expected = (data: Buffer, size: number): string => {
  const out: Buffer[] = [];
  for (let at = 0; at < data.length; at += size) out.push(XXHash128.hash(data.subarray(at, at + size)));
  return Buffer.concat(out).toString('hex');
};

describe('XXH3 per instruction set', () => {
  it('uses the widest instruction set the CPU has', () => {
    const widest = cpuFlags.has('avx512f') ? 'avx512' : cpuFlags.has('avx2') ? 'avx2' : 'sse2';
    expect(XXH3_ISA).toBe(widest);
  });

  for (const isa of ['sse2', 'avx2', 'avx512']) {
    it(`${isa}: the same names as xxhash-addon`, () => {
      const data = crypto.randomBytes(64 * 4096);
      data.fill(0, 4096, 8192); // a zero block: flagged, its hash slot left alone by hashBlocks
      const got = hashInChild(isa, data);
      const runs = isa === 'sse2' || cpuFlags.has(isa === 'avx512' ? 'avx512f' : 'avx2');
      if (runs) expect(got.isa).toBe(isa);
      else expect(['sse2', 'avx2']).toContain(got.isa);
      const blocks = expected(data, 4096);
      expect(got.blocks.slice(0, 32)).toBe(blocks.slice(0, 32));
      expect(got.blocks.slice(64)).toBe(blocks.slice(64));
      expect(got.blocks.slice(32, 64)).toBe('0'.repeat(32));
      expect(got.small).toBe(expected(data, 512));
      expect(got.big).toBe(expected(data, 65536));
    });
  }
});
