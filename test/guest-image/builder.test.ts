/**
 * The test guest builder's pure parts: modules.dep parsing and load order.
 */
import { describe, expect, it } from 'vitest';
import { inputSnapshotName } from '../../src/guest-image/index.js';
import { parseModulesDep, resolveModules } from '../../src/guest-image/kernel-modules.js';

const DEP = `kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko
kernel/lib/crc16.ko:
kernel/fs/mbcache.ko:
kernel/fs/jbd2/jbd2.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/virtio/virtio.ko:
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/arch/x86/crypto/crc32c-intel.ko:
`;

describe('test guest modules', () => {
  it('resolves dependencies first, each module once, in a loadable order', () => {
    const dep = parseModulesDep(DEP);
    expect(dep.get('crc32c_intel')?.path).toBe('kernel/arch/x86/crypto/crc32c-intel.ko');
    const order = resolveModules(dep, ['virtio_pci', 'virtio_blk', 'ext4']);
    expect(new Set(order).size).toBe(order.length);
    expect(order).toEqual([
      'kernel/drivers/virtio/virtio_ring.ko',
      'kernel/drivers/virtio/virtio.ko',
      'kernel/drivers/virtio/virtio_pci_modern_dev.ko',
      'kernel/drivers/virtio/virtio_pci.ko',
      'kernel/drivers/block/virtio_blk.ko',
      'kernel/fs/jbd2/jbd2.ko',
      'kernel/fs/mbcache.ko',
      'kernel/lib/crc16.ko',
      'kernel/fs/ext4/ext4.ko',
    ]);
    // Every module comes after everything it depends on.
    for (const [, e] of dep) {
      if (!order.includes(e.path)) continue;
      for (const d of e.deps) expect(order.indexOf(d)).toBeLessThan(order.indexOf(e.path));
    }
  });

  it('names a module missing from modules.dep', () => {
    expect(() => resolveModules(parseModulesDep(DEP), ['virtio_net'])).toThrow(/module virtio_net is not in the kernel's modules.dep/);
  });

  it('marks an import with a short hash of its inputs', () => {
    expect(inputSnapshotName('9adb13509ae5030cf1cd6cb63c0f2abc')).toBe('input-9adb13509ae5030c');
  });
});
