/**
 * Resident memory of a QEMU process from its smaps (src/pager/process-memory.ts).
 */
import { describe, expect, it } from 'vitest';
import { parseSmaps } from '../../src/pager/index.js';

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
