/**
 * `npm run bench:nbd` (bench/nbd.mjs) end to end at a small size: it
 * starts dormant, qemu-nbd and nbdkit, runs fio's four workloads against
 * each, and prints its three tables (throughput with ratios, server CPU per
 * MiB, and server + fio CPU per MiB with the rate the cores allow). This
 * checks that the benchmark runs and that every cell it prints is a number
 * that makes sense; the numbers themselves are for the README, not for a
 * test (machines are noisy).
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { REPO } from '../helpers/cli.js';

const WORKLOADS = ['4k randread qd16', '1M seqread qd4', '4k randwrite qd16', '1M seqwrite qd4'];
const num = (s: string): number => Number(s.replace(/,/g, ''));

/**
 * The range a dormant/peer ratio printed with two decimals can take when
 * the IOPS it divides are printed rounded to whole numbers, as `a` and `b`:
 * each true value lies within 0.5 of its printed one, and the printed
 * ratio within 0.005 of the true ratio. (A fixed tolerance would not do:
 * against a peer at about a hundred IOPS the rounding alone moves the
 * ratio by about half a percent, more than 0.05 at a ratio of 20.)
 */
function ratioRange(a: number, b: number): [number, number] {
  const printing = 0.005 + 1e-9;
  return [(a - 0.5) / (b + 0.5) - printing, (a + 0.5) / (b - 0.5) + printing];
}

/** The first line after the line matching `heading` that starts with `workload`. */
function row(lines: string[], heading: RegExp, workload: string): string {
  const at = lines.findIndex((l) => heading.test(l));
  expect(at, `heading ${heading}`).toBeGreaterThanOrEqual(0);
  const line = lines.slice(at + 1).find((l) => l.startsWith(workload));
  expect(line, `${workload} under ${heading}`).toBeDefined();
  return line!;
}

describe('bench:nbd', () => {
  it('runs the four workloads against the three servers and prints every table with sane numbers', async () => {
    const { stdout } = await promisify(execFile)('node', ['bench/nbd.mjs'], {
      cwd: REPO,
      env: { ...process.env, BENCH_SIZE_MIB: '64', BENCH_RUNTIME: '1' },
      timeout: 150_000,
      maxBuffer: 4 << 20,
    });
    const lines = stdout.split('\n');
    const workDir = /work dir (\S+)/.exec(stdout)?.[1];
    expect(workDir).toBeDefined();
    expect(existsSync(workDir!), 'its work dir is removed').toBe(false);

    for (const w of WORKLOADS) {
      // "<workload>  <n> IOPS <n> MB/s  x3   <dormant/qemu-nbd>  <dormant/nbdkit>"
      const r = row(lines, /^workload\s+dormant\s+qemu-nbd\s+nbdkit-cow/, w);
      const cells = [...r.matchAll(/(\d+) IOPS (\d+) MB\/s/g)].map((m) => [num(m[1]), num(m[2])]);
      expect(cells, r).toHaveLength(3);
      for (const [iops, mbps] of cells) {
        expect(iops, r).toBeGreaterThan(0);
        expect(mbps, r).toBeGreaterThan(0);
      }
      // dormant/qemu-nbd, dormant/nbdkit: each the ratio of the IOPS printed, within their rounding.
      const ratios = r.trim().split(/\s+/).slice(-2).map(Number);
      ratios.forEach((ratio, i) => {
        const [low, high] = ratioRange(cells[0][0], cells[i + 1][0]);
        expect(ratio, r).toBeGreaterThanOrEqual(low);
        expect(ratio, r).toBeLessThanOrEqual(high);
      });

      const cpu = row(lines, /^server CPU per MiB moved/, w).slice(w.length).trim().split(/\s+/).map(Number);
      expect(cpu, w).toHaveLength(5);
      for (const c of cpu.slice(0, 3)) expect(c, w).toBeGreaterThan(0);

      // "<server + fio µs per MiB> / <MB/s the cores allow>" per server; the client's CPU only adds.
      const shared = [...row(lines, /^with the client \(fio\)/, w).matchAll(/(\d+) \/ (\d+)/g)].map((m) => [num(m[1]), num(m[2])]);
      expect(shared, w).toHaveLength(3);
      shared.forEach(([total, allowed], i) => {
        expect(total, w).toBeGreaterThanOrEqual(cpu[i] - 1); // (both rounded)
        expect(allowed, w).toBeGreaterThan(0);
      });
    }
  }, 180_000);
});
