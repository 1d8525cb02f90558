/**
 * `dormant vm ...`: VMs whose disk is a branch and whose RAM is a memory
 * volume of the store (src/pager). create/list/status work offline or through
 * the daemon; start/stop need `dormant serve --mount DIR`, whose supervisor
 * runs QEMU; log and xen-config only read files of the store directory.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DormantError, isDormantError, splitName } from '../blockstore/index.js';
import { CONTROL_SOCKET_NAME, RemoteControl, daemonAnswers } from '../migrate/index.js';
import {
  STOP_TIMEOUT_MS, checkMemory, checkVmName, defaultCacheDir, metaPath, readImageMeta, readVm, vmPaths,
  type VmStatus,
} from '../pager/index.js';
import { formatBytes, parseSize, table } from './format.js';
import { storeDir, withStore } from './store-commands.js';
import { NBD_SOCKET_NAME } from './serve.js';

const print = (s: string) => process.stdout.write(`${s}\n`);
const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** The daemon's control, or a one-line error saying a daemon is needed. */
async function daemon(cmd: Command, what: string): Promise<RemoteControl> {
  const socket = path.join(storeDir(cmd), CONTROL_SOCKET_NAME);
  if (!await daemonAnswers(socket)) {
    throw new DormantError('EINVAL', `${what} needs the daemon: start it with dormant serve --mount DIR (nothing answers on ${socket})`);
  }
  return new RemoteControl(socket);
}

function uptime(s?: number): string {
  if (s === undefined) return '-';
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}h${String(m).padStart(2, '0')}m` : m > 0 ? `${m}m${String(s % 60).padStart(2, '0')}s` : `${s}s`;
}

const resident = (s: VmStatus) => (s.residentGuestRam === undefined ? '-' : formatBytes(s.residentGuestRam));
const stateText = (s: VmStatus) => (s.reason ? `${s.state} (${s.reason})` : s.state);

/** Registers `vm` and its subcommands on `program`. */
export function addVmCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const vm = program.command('vm').description('VMs: a disk branch and a memory volume, run under QEMU by the daemon');

  vm.command('create <vm>')
    .description('make VM <vm>: disk branch <vm> of a snapshot, memory volume <vm>.mem, and its configuration')
    .requiredOption('--from <volume@snap>', 'snapshot the disk branches from')
    .requiredOption('--memory <size>', 'guest RAM, a multiple of 2 MiB (e.g. 256M, 1G)')
    .option('--cpus <n>', 'virtual CPUs', '1')
    .option('--kernel-from <image>', 'test-guest image whose kernel, initrd and command line boot the VM (default: the snapshot\'s volume)')
    .option('--cache-dir <dir>', 'image cache of dormant image build-test-guest (default: $XDG_CACHE_HOME/dormant/images)')
    .action((name: string, o: { from: string; memory: string; cpus: string; kernelFrom?: string; cacheDir?: string },
      cmd: Command) => run(async () => {
      checkVmName(name);
      const memoryBytes = parseSize(o.memory);
      checkMemory(memoryBytes, o.memory);
      const cpus = Number(o.cpus);
      if (!/^\d+$/.test(o.cpus) || cpus < 1 || cpus > 64) throw new DormantError('EINVAL', `bad --cpus '${o.cpus}': use 1 to 64`);
      const { volume, snap } = splitName(o.from);
      if (snap === null) throw new DormantError('EINVAL', `bad --from '${o.from}': name a snapshot, volume@snap`);
      const cacheDir = path.resolve(o.cacheDir ?? defaultCacheDir());
      const rec = await withStore(cmd, async (c) => {
        await c.info(o.from); // unknown snapshot first
        const exists = await c.vmStatus(name).then(() => true, (err) => {
          if (isDormantError(err, 'ENOENT')) return false;
          throw err;
        });
        if (exists) throw new DormantError('EEXIST', `VM '${name}' exists`);
        const image = o.kernelFrom ?? volume;
        const meta = await readImageMeta(cacheDir, image);
        if (!meta) {
          throw new DormantError('ENOENT', `no test-guest image '${image}' in ${cacheDir} (no ${metaPath(cacheDir, image)}; `
            + 'build it with dormant image build-test-guest, or name one with --kernel-from/--cache-dir)');
        }
        return c.vmCreate({
          name, from: o.from, memoryBytes, cpus, image, kernel: meta.kernel, initrd: meta.initrd, cmdline: meta.cmdline,
        });
      });
      print(`created VM ${rec.name}: disk ${rec.disk} from ${rec.from}, memory ${rec.memory} ${formatBytes(rec.memoryBytes)}, `
        + `${rec.cpus} CPU${rec.cpus > 1 ? 's' : ''}, kernel from image ${rec.image}`);
    }));

  vm.command('start <vm>')
    .description('boot the VM under QEMU (needs dormant serve --mount DIR)')
    .option('--kvm', 'use KVM instead of TCG (the host must have /dev/kvm)')
    .action((name: string, o: { kvm?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const s = await (await daemon(cmd, 'vm start')).vmStart(name, Boolean(o.kvm));
      print(`started VM ${name}: pid ${s.pid}, http://127.0.0.1:${s.hostPort}/ -> guest port 80`);
    }));

  vm.command('stop <vm>')
    .description('power the VM off (ACPI power button, then QMP quit after the timeout, then SIGKILL)')
    .option('--timeout <seconds>', 'wait this long for the guest to power off', String(STOP_TIMEOUT_MS / 1000))
    .action((name: string, o: { timeout: string }, cmd: Command) => run(async () => {
      checkVmName(name);
      const secs = Number(o.timeout);
      if (!Number.isFinite(secs) || secs < 0 || secs > 3600) throw new DormantError('EINVAL', `bad --timeout '${o.timeout}'`);
      const s = await (await daemon(cmd, 'vm stop')).vmStop(name, Math.round(secs * 1000));
      print(`VM ${name}: ${stateText(s)}`);
    }));

  vm.command('list')
    .description('every VM: state, host port, pid, RAM, resident guest RAM, uptime')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const rows = await withStore(cmd, (c) => c.vmList());
      if (o.json) { printJson({ vms: rows }); return; }
      if (rows.length === 0) { print('no VMs (create one with: dormant vm create NAME --from VOLUME@SNAP --memory 256M)'); return; }
      print(table(['NAME', 'STATE', 'PORT', 'PID', 'RAM', 'RESIDENT', 'UPTIME'], rows.map((s) => [
        s.name, stateText(s), s.hostPort ? String(s.hostPort) : '-', s.pid ? String(s.pid) : '-', formatBytes(s.memoryBytes),
        resident(s), uptime(s.uptimeSeconds),
      ])));
    }));

  vm.command('status <vm>')
    .description('state, host port, pid, RAM, resident memory (guest RAM and QEMU\'s own), disk blocks written, uptime')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const s = await withStore(cmd, (c) => c.vmStatus(name));
      if (o.json) { printJson(s); return; }
      print([
        `name:      ${s.name}`,
        `state:     ${stateText(s)}`,
        `host port: ${s.hostPort ? `${s.hostPort} (http://127.0.0.1:${s.hostPort}/ -> guest port 80)` : '-'}`,
        `pid:       ${s.pid ?? '-'}`,
        `ram:       ${formatBytes(s.memoryBytes)}, ${s.cpus} CPU${s.cpus > 1 ? 's' : ''}, disk from ${s.from}`,
        `resident:  ${s.residentGuestRam === undefined ? '-'
          : `${formatBytes(s.residentGuestRam)} guest RAM + ${formatBytes(s.residentQemu ?? 0)} QEMU`}`,
        `disk:      ${s.diskBlocksWritten === undefined ? '-' : `${s.diskBlocksWritten} blocks written (${formatBytes(s.diskBlocksWritten * 4096)}) on top of ${s.from}`}`,
        `uptime:    ${uptime(s.uptimeSeconds)}`,
      ].join('\n'));
    }));

  vm.command('log <vm>')
    .description('print the VM\'s serial console log')
    .action((name: string, _o, cmd: Command) => run(async () => {
      const dir = storeDir(cmd);
      readVm(dir, name);
      const file = vmPaths(dir, name).log;
      if (fs.existsSync(file)) process.stdout.write(fs.readFileSync(file));
    }));

  vm.command('xen-config <vm>')
    .description('the xl.cfg disk line for this VM\'s NBD export (qdisk), and the nbd-client command for blkback')
    .action((name: string, _o, cmd: Command) => run(async () => {
      const dir = storeDir(cmd);
      const rec = readVm(dir, name);
      const sock = path.join(dir, NBD_SOCKET_NAME);
      print(`disk = [ 'format=raw, vdev=xvda, access=rw, backendtype=qdisk, target=nbd:unix:${sock}:exportname=${rec.disk}' ]`);
      print(`# blkback instead: nbd-client -unix ${sock} -N ${rec.disk} /dev/nbd0   then   disk = [ 'phy:/dev/nbd0,xvda,w' ]`);
    }));
}
