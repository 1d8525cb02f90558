/**
 * `dormant top`: a live view of the host's memory and every VM, refreshed
 * like top(1). On a terminal it redraws every --interval seconds until
 * interrupted (or --iterations); into a pipe, or with --json, it prints one
 * snapshot (or --iterations of them) and exits.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import type { VmStatus } from '../vm/index.js';
import { formatBytes, table } from './format.js';
import { withStore } from './store-commands.js';
import { activityText } from './vm.js';

/** The host's memory, from /proc/meminfo, in bytes. */
export interface HostMemory { total: number; available: number; swapTotal: number; swapFree: number }

/** Reads /proc/meminfo. */
export function hostMemory(): HostMemory {
  const text = fs.readFileSync('/proc/meminfo', 'utf8');
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm').exec(text)?.[1] ?? 0) * 1024;
  return { total: kb('MemTotal'), available: kb('MemAvailable'), swapTotal: kb('SwapTotal'), swapFree: kb('SwapFree') };
}

/** One screen of `dormant top`. */
export function renderTop(host: HostMemory, vms: VmStatus[], now = new Date()): string {
  const running = vms.filter((v) => v.state === 'running' || v.state === 'starting' || v.state === 'booting');
  const nominal = running.reduce((s, v) => s + v.memoryBytes, 0);
  const used = host.total - host.available;
  const idle = running.filter((v) => v.activity === 'idle').length;
  const paged = running.filter((v) => v.pagedOut).length;
  const lines = [
    `dormant top - ${now.toISOString().slice(11, 19)}  VMs: ${vms.length} (${running.length} running, ${idle} idle, ${paged} paged out)`,
    `host memory: ${formatBytes(used)} used of ${formatBytes(host.total)}, ${formatBytes(host.available)} available; `
      + `swap ${formatBytes(host.swapTotal - host.swapFree)} used of ${formatBytes(host.swapTotal)}`,
    `guest RAM: ${formatBytes(nominal)} nominal, ${formatBytes(running.reduce((s, v) => s + (v.residentGuestRam ?? 0), 0))} resident, `
      + `QEMU own ${formatBytes(running.reduce((s, v) => s + (v.qemuPss ?? 0), 0))} PSS`,
    '',
  ];
  if (vms.length === 0) return `${lines.join('\n')}no VMs\n`;
  lines.push(table(['VM', 'STATE', 'ACTIVITY', 'RAM', 'RESIDENT', 'CACHED', 'QEMU PSS', 'WSET', 'FAULTS/S', 'PORT'], vms.map((v) => [
    v.name, v.state, activityText(v), formatBytes(v.memoryBytes),
    v.residentGuestRam === undefined ? '-' : formatBytes(v.residentGuestRam),
    v.cachedGuestRam === undefined ? '-' : formatBytes(v.cachedGuestRam),
    v.qemuPss === undefined ? '-' : formatBytes(v.qemuPss),
    v.workingSetBytes === undefined ? '-' : formatBytes(v.workingSetBytes),
    v.faultsPerSecond === undefined ? '-' : String(v.faultsPerSecond),
    v.hostPort === undefined ? '-' : String(v.hostPort),
  ])));
  return `${lines.join('\n')}\n`;
}

/** Registers `top` on `program`. */
export function addTopCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('top')
    .description('live view of the host\'s memory and every VM (activity, resident and cached RAM, QEMU PSS, faults/s)')
    .option('--interval <seconds>', 'seconds between refreshes', '2')
    .option('-n, --iterations <count>', 'stop after this many screens (default: until interrupted on a terminal, 1 otherwise)')
    .option('--json', 'print {host, vms} snapshots as JSON lines instead of screens')
    .action((o: { interval: string; iterations?: string; json?: boolean }, cmd: Command) => run(async () => {
      const interval = Number(o.interval);
      if (!Number.isFinite(interval) || interval < 0.2 || interval > 3600) {
        throw new DormantError('EINVAL', `bad --interval '${o.interval}': seconds, 0.2 to 3600`);
      }
      const tty = process.stdout.isTTY === true && !o.json;
      let count = o.iterations === undefined ? (tty ? Infinity : 1) : Number(o.iterations);
      if (!Number.isInteger(count) && count !== Infinity || count < 1) {
        throw new DormantError('EINVAL', `bad --iterations '${o.iterations}': a whole number, at least 1`);
      }
      let stop = false;
      const onSignal = () => { stop = true; };
      process.once('SIGINT', onSignal);
      try {
        while (count-- > 0 && !stop) {
          const vms = await withStore(cmd, (c) => c.vmList());
          const host = hostMemory();
          if (o.json) process.stdout.write(`${JSON.stringify({ at: new Date().toISOString(), host, vms })}\n`);
          else process.stdout.write(`${tty ? '\x1b[H\x1b[2J' : ''}${renderTop(host, vms)}`);
          if (count > 0 && !stop) await new Promise((r) => setTimeout(r, interval * 1000));
        }
      } finally {
        process.off('SIGINT', onSignal);
      }
    }));
}
