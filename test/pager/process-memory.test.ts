/**
 * Resident memory of a QEMU process, and its own memory split as PSS, from
 * its smaps (src/pager/process-memory.ts).
 */
import { describe, expect, it } from 'vitest';
import { parseQemuMemory, parseSmaps } from '../../src/pager/index.js';

describe('parseSmaps', () => {
  it('splits Rss between the guest RAM mapping and the rest', () => {
    const text = [
      '55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234    /usr/bin/qemu-system-x86_64',
      'Size:               1024 kB', 'Rss:                 512 kB', 'Pss:                 512 kB',
      '7f0000000000-7f0010000000 rw-s 00000000 00:2c 7       /m/volumes/vm1.mem',
      'Size:             262144 kB', 'Rss:               10240 kB', 'VmFlags: rd wr sh mr mw me ms sd',
      '7f1000000000-7f1000100000 rw-p 00000000 00:00 0 ',
      'Rss:                 100 kB',
    ].join('\n');
    expect(parseSmaps(text, '/m/volumes/vm1.mem')).toEqual({ guestRam: 10240 * 1024, qemuOwn: 612 * 1024 });
  });
});

describe('parseQemuMemory', () => {
  it('splits QEMU\'s own memory into translations, anonymous and files (PSS), swap, and the guest mapping apart', () => {
    const text = [
      '55d0c0000000-55d0c0100000 r-xp 00000000 08:01 1234    /usr/bin/qemu-system-x86_64',
      'Rss:                 800 kB', 'Pss:                 400 kB', 'Swap:                  0 kB',
      '7f0000000000-7f0010000000 rw-s 00000000 00:2c 7       /m/volumes/vm1.mem',
      'Rss:               10240 kB', 'Pss:               10240 kB',
      '7f1000000000-7f1001000000 rwxp 00000000 00:00 0 ',
      'Rss:               16384 kB', 'Pss:               16384 kB', 'Swap:               1024 kB',
      '7f2000000000-7f2000100000 rw-p 00000000 00:00 0 ',
      'Rss:                 900 kB', 'Pss:                 900 kB', 'Swap:                100 kB',
      '55d0c1000000-55d0c2000000 rw-p 00000000 00:00 0       [heap]',
      'Rss:                4096 kB', 'Pss:                4096 kB', 'Swap:                  0 kB',
    ].join('\n');
    const m = parseQemuMemory(text, '/m/volumes/vm1.mem');
    expect(m).toEqual({
      guestRam: 10240 * 1024, rss: (800 + 16384 + 900 + 4096) * 1024, pss: (400 + 16384 + 900 + 4096) * 1024,
      translationPss: 16384 * 1024, anonPss: (900 + 4096) * 1024, filesPss: 400 * 1024, swap: 1124 * 1024,
    });
  });
});
