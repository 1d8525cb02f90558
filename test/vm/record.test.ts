/**
 * The VM runner's pure parts: QEMU's command line and the VM record (name
 * and memory checks, atomic write, listing).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  checkMemory, checkVmName, hostMemTotal, listVms, qemuArgs, readVm, writeVm, type VmRecord,
} from '../../src/vm/index.js';

const dirs: string[] = [];
afterAll(() => { for (const d of dirs) fs.rmSync(d, { recursive: true, force: true }); });

const rec: VmRecord = {
  name: 'vm1', disk: 'vm1', memory: 'vm1.mem', from: 'golden@base', memoryBytes: 256 * 2 ** 20, cpus: 2, image: 'golden',
  kernel: '/c/vmlinuz', initrd: '/c/initrd.img', cmdline: 'console=ttyS0 root=/dev/vda rw dormant.hostname=vm1',
  created: '2026-01-01T00:00:00.000Z',
};

describe('qemuArgs', () => {
  const paths = { memFile: '/m/volumes/vm1.mem', nbdSocket: '/s/nbd.sock', qmpSocket: '/s/vms/vm1.qmp', serialLog: '/s/vms/vm1.log',
    consoleSocket: '/s/vms/vm1.console' };
  it('uses TCG, the memory volume as shared RAM, NBD disk (pausing on ENOSPC), port forward, QMP, serial socket logged to a file, pvpanic', () => {
    const a = qemuArgs(rec, paths, { hostPort: 4567 }).join(' ');
    expect(a).toContain('-machine q35,memory-backend=mem0 -accel tcg,tb-size=16 -m 256M -smp 2');
    expect(a).toContain('-object memory-backend-file,id=mem0,size=256M,mem-path=/m/volumes/vm1.mem,share=on');
    // A write that gets ENOSPC (a full store) pauses the guest instead of failing in it.
    expect(a).toContain('-drive file=nbd+unix:///vm1?socket=/s/nbd.sock,format=raw,if=virtio,werror=enospc,rerror=report ');
    expect(a).toContain('hostfwd=tcp:127.0.0.1:4567-:80');
    expect(a).toContain('-qmp unix:/s/vms/vm1.qmp,server=on,wait=off');
    expect(a).toContain('-chardev socket,id=serial0,path=/s/vms/vm1.console,server=on,wait=off,logfile=/s/vms/vm1.log,logappend=on '
      + '-serial chardev:serial0');
    expect(a).toContain('-device pvpanic');
    expect(a).toContain(`-append ${rec.cmdline}`);
  });
  it('uses KVM only when asked', () => {
    expect(qemuArgs(rec, paths, { hostPort: 1, kvm: true })).toContain('kvm');
  });
});

describe('VM records', () => {
  it('checks names and memory sizes', () => {
    expect(() => checkVmName('a/b')).toThrow(/invalid VM name/);
    expect(() => checkVmName('x'.repeat(121))).toThrow(/at most 120/);
    checkVmName('web-1.prod');
    checkMemory(256 * 2 ** 20);
    checkMemory(100 * 2 ** 20); // 50 x 2 MiB
    expect(() => checkMemory(101 * 2 ** 20, '101M')).toThrow(/multiple of 2 MiB/);
    expect(() => checkMemory((Math.floor(hostMemTotal() / 2 ** 21) + 1) * 2 ** 21)).toThrow(/larger than this host's RAM/);
  });
  it('writes atomically, reads back, lists sorted; unknown VM is ENOENT', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'dormant-vmrec-'));
    dirs.push(dir);
    writeVm(dir, { ...rec, name: 'zz' });
    writeVm(dir, rec);
    expect(readVm(dir, 'vm1')).toEqual(rec);
    expect(listVms(dir).map((r) => r.name)).toEqual(['vm1', 'zz']);
    expect(fs.readdirSync(path.join(dir, 'vms')).sort()).toEqual(['vm1.json', 'zz.json']);
    expect(() => readVm(dir, 'nope')).toThrow(expect.objectContaining({ code: 'ENOENT', message: "unknown VM 'nope'" }));
  });
});
