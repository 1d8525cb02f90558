/**
 * The QEMU adapter: the command line of a VM (the flags test/vm/boot.test.ts
 * proved: q35 with the RAM in a shared file backend on the FUSE view, TCG
 * unless KVM is asked for, disk over NBD on the Unix socket, user networking
 * with one host port forwarded to guest port 80, the serial line on a Unix
 * socket that `vm console` connects to and logged to a file whether anyone
 * is connected or not, QMP on a Unix socket, a pvpanic device so a guest
 * with its driver reports a panic as a QMP event, `-incoming defer` for a
 * VM arriving from another host), a free host port to forward, and keeping
 * the daemon's FUSE device out of QEMU's hands.
 *
 * The disk's error policy is spelled out: `werror=enospc` pauses the guest
 * when a write gets ENOSPC (the store below its free-space floor answers
 * NBD_ENOSPC, which QEMU's NBD client turns into ENOSPC) and reports any
 * other write error to the guest; `rerror=report` reports read errors.
 * Both are QEMU's defaults for -drive; written out so that they stay so
 * (the supervisor shows the pause and `vm resume` continues the guest).
 */
import fs from 'node:fs';
import net from 'node:net';
import { setCloexec } from '../native/index.js';
import type { VmRecord } from './vm-record.js';

/** Where a VM's pieces live when it runs. */
export interface LaunchPaths {
  /** The memory volume as a file: MOUNT/volumes/<vm>.mem. */
  memFile: string;
  /** The daemon's NBD Unix socket. */
  nbdSocket: string;
  qmpSocket: string;
  serialLog: string;
  /** The serial line's Unix socket (QEMU serves one client at a time; the store's umask makes it 0600). */
  consoleSocket: string;
}

/** Options of a launch. */
export interface LaunchOptions {
  hostPort: number;
  /** Hardware acceleration (only when asked for); TCG otherwise. */
  kvm?: boolean;
  /** Wait for the VM's state from another host (`-incoming defer`; QMP migrate-incoming says where). */
  incoming?: boolean;
}

/**
 * TCG's translation buffer, in MiB. QEMU keeps it resident and per VM; an
 * idle test guest's code fits 16 MiB with no flush, while a buffer half that
 * size keeps flushing and retranslating (docs/benchmarks.md, density).
 */
export const TCG_TB_SIZE_MIB = 16;

/** The QEMU binary. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** Arguments of qemu-system-x86_64 for `vm`. */
export function qemuArgs(vm: VmRecord, p: LaunchPaths, o: LaunchOptions): string[] {
  const mib = `${vm.memoryBytes / 2 ** 20}M`;
  return [
    '-name', vm.name,
    '-machine', 'q35,memory-backend=mem0',
    '-accel', o.kvm ? 'kvm' : `tcg,tb-size=${TCG_TB_SIZE_MIB}`,
    '-m', mib, '-smp', String(vm.cpus),
    '-object', `memory-backend-file,id=mem0,size=${mib},mem-path=${p.memFile},share=on`,
    '-kernel', vm.kernel, '-initrd', vm.initrd,
    '-append', vm.cmdline,
    '-drive', `file=nbd+unix:///${vm.disk}?socket=${p.nbdSocket},format=raw,if=virtio,werror=enospc,rerror=report`,
    '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${o.hostPort}-:80`, '-device', 'virtio-net-pci,netdev=n0',
    '-chardev', `socket,id=serial0,path=${p.consoleSocket},server=on,wait=off,logfile=${p.serialLog},logappend=on`,
    '-serial', 'chardev:serial0',
    '-device', 'pvpanic',
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
    '-display', 'none', '-nodefaults', '-no-reboot',
    ...(o.incoming ? ['-incoming', 'defer'] : []),
  ];
}

/** A TCP port on `address` (default 127.0.0.1) free right now. */
export function freePort(address = '127.0.0.1'): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, address, () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/**
 * Marks this process's /dev/fuse descriptors close-on-exec. A descriptor
 * inherited by every QEMU (and the memory agent) kept a dead daemon's FUSE
 * connection open: QEMU and the agent then hung in their own exit writing
 * back to it, and the next daemon's probe of the mount point hung too
 * instead of seeing a stale mount. The view's own session sets it already
 * (native/src/fuse.cc; libfuse2 through fusermount did not); this stays as
 * the check for any other. Returns how many were marked.
 */
export function keepFuseDeviceFromChildren(): number {
  let n = 0;
  for (const fd of fs.readdirSync('/proc/self/fd')) {
    let target = '';
    try { target = fs.readlinkSync(`/proc/self/fd/${fd}`); } catch { continue; }
    if (target === '/dev/fuse') { setCloexec(Number(fd)); n++; }
  }
  return n;
}
