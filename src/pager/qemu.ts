/**
 * The QEMU adapter: the command line of a VM (the flags test/e2e/boot.test.ts
 * proved: q35 with the RAM in a shared file backend on the FUSE view, TCG
 * unless KVM is asked for, disk over NBD on the Unix socket, user networking
 * with one host port forwarded to guest port 80, serial to a file, QMP on a
 * Unix socket), and what /proc says about a running QEMU's memory.
 */
import fs from 'node:fs';
import net from 'node:net';
import type { VmRecord } from './vm-record.js';

/** Where a VM's pieces live when it runs. */
export interface LaunchPaths {
  /** The memory volume as a file: MOUNT/volumes/<vm>.mem. */
  memFile: string;
  /** The daemon's NBD Unix socket. */
  nbdSocket: string;
  qmpSocket: string;
  serialLog: string;
}

/** Options of a launch. */
export interface LaunchOptions {
  hostPort: number;
  /** Hardware acceleration (only when asked for); TCG otherwise. */
  kvm?: boolean;
}

/** The QEMU binary. */
export const QEMU_BINARY = 'qemu-system-x86_64';

/** Arguments of qemu-system-x86_64 for `vm`. */
export function qemuArgs(vm: VmRecord, p: LaunchPaths, o: LaunchOptions): string[] {
  const mib = `${vm.memoryBytes / 2 ** 20}M`;
  return [
    '-name', vm.name,
    '-machine', 'q35,memory-backend=mem0',
    '-accel', o.kvm ? 'kvm' : 'tcg,tb-size=64',
    '-m', mib, '-smp', String(vm.cpus),
    '-object', `memory-backend-file,id=mem0,size=${mib},mem-path=${p.memFile},share=on`,
    '-kernel', vm.kernel, '-initrd', vm.initrd,
    '-append', vm.cmdline,
    '-drive', `file=nbd+unix:///${vm.disk}?socket=${p.nbdSocket},format=raw,if=virtio`,
    '-netdev', `user,id=n0,hostfwd=tcp:127.0.0.1:${o.hostPort}-:80`, '-device', 'virtio-net-pci,netdev=n0',
    '-serial', `file:${p.serialLog}`,
    '-qmp', `unix:${p.qmpSocket},server=on,wait=off`,
    '-display', 'none', '-nodefaults', '-no-reboot',
  ];
}

/** A TCP port on 127.0.0.1 free right now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as net.AddressInfo;
      s.close(() => resolve(port));
    });
  });
}

/** Resident memory of a QEMU process: the guest RAM mapping of `memFile`, and everything else. */
export interface Resident {
  guestRam: number;
  qemuOwn: number;
}

/**
 * Reads /proc/PID/smaps; undefined when the process is gone. On the libuv
 * pool: reading smaps takes QEMU's mmap_lock, which can wait for a guest
 * fault that only this process's JS thread can serve (the FUSE view).
 */
export async function residentMemory(pid: number, memFile: string): Promise<Resident | undefined> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/smaps`, 'utf8'); } catch { return undefined; }
  return parseSmaps(text, memFile);
}

/** Sums Rss in smaps `text`: of the mappings of `memFile`, and of everything else. */
export function parseSmaps(text: string, memFile: string): Resident {
  let guestRam = 0;
  let total = 0;
  let inGuest = false;
  for (const line of text.split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) { inGuest = header[1] === memFile || header[1] === `${memFile} (deleted)`; continue; }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      const bytes = Number(rss[1]) * 1024;
      total += bytes;
      if (inGuest) guestRam += bytes;
    }
  }
  return { guestRam, qemuOwn: total - guestRam };
}
