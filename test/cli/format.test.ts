/**
 * CLI size parsing and byte formatting (src/cli/format.ts): binary units,
 * whole bytes only, a clear EINVAL for anything else (naming the 1 PiB
 * limit for a volume's size), and sizes printed
 * with the largest unit that keeps the number under 1024.
 */
import { describe, expect, it } from 'vitest';
import { formatBytes, parseSize, VOLUME_SIZE_LIMIT } from '../../src/cli/format.js';
import { DormantError } from '../../src/blockstore/index.js';

const KiB = 2 ** 10, MiB = 2 ** 20, GiB = 2 ** 30, TiB = 2 ** 40, PiB = 2 ** 50;

describe('parseSize', () => {
  it.each([
    ['4096', 4096],
    ['1', 1],
    ['1K', KiB], ['1k', KiB], ['1KB', KiB], ['1KiB', KiB], ['1kib', KiB], ['1 K', KiB],
    ['64M', 64 * MiB], ['64MiB', 64 * MiB], ['512m', 512 * MiB],
    ['1.5G', 1.5 * GiB], ['10G', 10 * GiB],
    ['2T', 2 * TiB], ['2TiB', 2 * TiB],
    ['1P', PiB],
    ['0.5K', 512],
    ['  8M  ', 8 * MiB],
    ['0001', 1],
    [String(Number.MAX_SAFE_INTEGER), Number.MAX_SAFE_INTEGER],
  ])('%j -> %d bytes', (text, bytes) => {
    expect(parseSize(text)).toBe(bytes);
  });

  it.each([
    ['', /bad size ''/],
    ['   ', /bad size/],
    ['10Q', /bad size '10Q': use a number with an optional K, M, G, T or P suffix/],
    ['M', /bad size 'M'/],
    ['-1', /bad size '-1'/],
    ['+1', /bad size/],
    ['1e3', /bad size '1e3'/],
    ['0x10', /bad size/],
    ['1,5G', /bad size/],
    ['1.', /bad size/],
    ['.5K', /bad size/],
    ['1 2', /bad size/],
    ['1E', /bad size/],
    ['0', /bad size '0': must be a whole number of bytes, at least 1/],
    ['0K', /at least 1/],
    ['0.5', /whole number of bytes/],
    ['1.3K', /whole number of bytes/], // 1331.2 bytes
    ['9999999999P', /whole number of bytes/], // beyond exact integers
  ])('%j is refused with EINVAL', (text, message) => {
    let err: unknown;
    try { parseSize(text); } catch (e) { err = e; }
    expect(err).toBeInstanceOf(DormantError);
    expect((err as DormantError).code).toBe('EINVAL');
    expect((err as DormantError).message).toMatch(message);
    expect((err as DormantError).message).not.toContain('\n');
  });

  it('a volume size beyond 1 PiB names the limit, however far beyond', () => {
    expect(parseSize('1P', VOLUME_SIZE_LIMIT)).toBe(PiB);
    for (const text of ['1025T', '2P', '99999P', '9999999999P']) {
      expect(() => parseSize(text, VOLUME_SIZE_LIMIT)).toThrow(`bad size '${text}': more than the 1 PiB limit of a volume`);
    }
  });
});

describe('formatBytes', () => {
  it.each([
    [0, '0 B'],
    [1, '1 B'],
    [1023, '1023 B'],
    [1024, '1.0 KiB'],
    [1536, '1.5 KiB'],
    [10_000, '9.8 KiB'],
    [100 * KiB, '100 KiB'],
    [1_000_001, '977 KiB'],
    [MiB, '1.0 MiB'],
    [64 * MiB, '64.0 MiB'],
    [1.5 * GiB, '1.5 GiB'],
    [TiB, '1.0 TiB'],
    [PiB, '1.0 PiB'],
    [2048 * PiB, '2048 PiB'], // no unit past PiB
    [-1536, '-1.5 KiB'],
  ])('%d -> %s', (n, text) => {
    expect(formatBytes(n)).toBe(text);
  });

  it('never rounds up to 1024 of a unit: that is 1.0 of the next', () => {
    // Just under 1 MiB and 1 GiB: the rounded figure must not read "1024 KiB".
    expect(formatBytes(MiB - 1)).toBe('1.0 MiB');
    expect(formatBytes(GiB - 100)).toBe('1.0 GiB');
    expect(formatBytes(1023.99 * KiB)).toBe('1.0 MiB');
  });

  it('uses one decimal below 100 of a unit and none from 100 up, without "100.0"', () => {
    expect(formatBytes(99.9 * KiB)).toBe('99.9 KiB');
    expect(formatBytes(99.96 * KiB)).toBe('100 KiB');
    expect(formatBytes(100 * KiB)).toBe('100 KiB');
  });

  it('parseSize reads back what formatBytes prints for whole units', () => {
    for (const n of [KiB, 3 * MiB, 5 * GiB, 7 * TiB, PiB]) {
      expect(parseSize(formatBytes(n).replace(' ', ''))).toBe(n);
    }
  });
});
