/**
 * `dormant vm ...`: VMs whose disk is a branch and whose RAM is a memory
 * volume of the store (src/vm). create/list/status work offline or through
 * the daemon; start/stop/pause/resume/migrate need `dormant serve --mount DIR`,
 * whose supervisor runs QEMU (migrate: to another host's API); log and xen-config only read files of the store
 * directory; console (vm-console.ts) connects to the VM's serial socket there.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DormantError, isDormantError, splitName } from '../blockstore/index.js';
import { CONTROL_SOCKET_NAME, RemoteControl, daemonAnswers } from '../control/index.js';
import type { LazyCopyStatus } from '../migrate/index.js';
import { NBD_SOCKET_NAME } from '../daemon/index.js';
import { defaultCacheDir, metaPath, readImageMeta } from '../guest-image/index.js';
import { STOP_TIMEOUT_MS, checkBallast, checkMemory, checkRestart, checkVmName, readVm, vmPaths, type VmStatus } from '../vm/index.js';
import { formatBytes, parseSize, table } from './format.js';
import { Progress } from './progress.js';
import { storeDir, withStore } from './store-commands.js';
import { apiToken, caText } from './transfer.js';
import { attachConsole } from './vm-console.js';

const print = (s: string) => process.stdout.write(`${s}\n`);

/** `active`, `idle`, `idle, paged out` (or `-` when the VM does not run). */
export function activityText(s: VmStatus): string {
  if (!s.activity) return '-';
  return s.pagedOut ? `${s.activity}, paged out` : s.activity;
}
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

/** A lazy copy's progress in words (vm status). */
function lazyText(l: LazyCopyStatus): string {
  return `${l.state} from ${l.from}: ${l.blocksTotal - l.blocksLeft}/${l.blocksTotal} blocks here; `
    + `${l.demandChunks} chunks fetched on demand, ${l.backgroundChunks} in the background (${formatBytes(l.bytesFetched)}) `
    + `in ${l.seconds.toFixed(1)} s${l.failures ? `; ${l.failures} failed fetches${l.lastError ? ` (last: ${l.lastError})` : ''}` : ''}`;
}

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
    .option('--ballast <size>', 'test guest: memory it fills at boot and touches like an idle service (e.g. 160M of 256M)')
    .option('--ballast-shared <percent>', 'the part of the ballast alike in every VM (e.g. 50%)', '0%')
    .option('--restart <policy>', 'no (default), on-failure (QEMU died, or the daemon restarted while it ran) or always (also when the guest powers off)', 'no')
    .option('--json', 'machine-readable output: the VM record')
    .action((name: string, o: {
      from: string; memory: string; cpus: string; kernelFrom?: string; cacheDir?: string; ballast?: string; ballastShared: string;
      json?: boolean; restart: string;
    }, cmd: Command) => run(async () => {
      checkVmName(name);
      const memoryBytes = parseSize(o.memory);
      checkMemory(memoryBytes, o.memory);
      const ballastBytes = o.ballast === undefined ? 0 : parseSize(o.ballast);
      const pct = /^(\d{1,3})%?$/.exec(o.ballastShared);
      if (!pct) throw new DormantError('EINVAL', `bad --ballast-shared '${o.ballastShared}': a percentage, e.g. 50%`);
      const ballastSharedPercent = Number(pct[1]);
      checkBallast(ballastBytes, ballastSharedPercent, memoryBytes);
      const cpus = Number(o.cpus);
      if (!/^\d+$/.test(o.cpus) || cpus < 1 || cpus > 64) throw new DormantError('EINVAL', `bad --cpus '${o.cpus}': use 1 to 64`);
      const { volume, snap } = splitName(o.from);
      if (snap === null) throw new DormantError('EINVAL', `bad --from '${o.from}': name a snapshot, volume@snap`);
      const cacheDir = path.resolve(o.cacheDir ?? defaultCacheDir());
      const restart = checkRestart(o.restart);
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
          ...(ballastBytes ? { ballastBytes, ballastSharedPercent } : {}), restart,
        });
      });
      if (o.json) { printJson(rec); return; }
      print(`created VM ${rec.name}: disk ${rec.disk} from ${rec.from}, memory ${rec.memory} ${formatBytes(rec.memoryBytes)}, `
        + `${rec.cpus} CPU${rec.cpus > 1 ? 's' : ''}, kernel from image ${rec.image}`
        + `${rec.ballastBytes ? `, ballast ${formatBytes(rec.ballastBytes)} (${rec.ballastSharedPercent}% shared)` : ''}`);
    }));

  vm.command('start <vm>')
    .description('boot the VM under QEMU (needs dormant serve --mount DIR)')
    .option('--kvm', 'use KVM instead of TCG (the host must have /dev/kvm)')
    .option('--restart <policy>', 'record a restart policy: no, on-failure or always (see vm create)')
    .option('--json', 'machine-readable output: the status once QMP answers')
    .action((name: string, o: { kvm?: boolean; restart?: string; json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      if (o.restart !== undefined) checkRestart(o.restart);
      const s = await (await daemon(cmd, 'vm start')).vmStart(name, Boolean(o.kvm), o.restart ?? '');
      if (o.json) { printJson(s); return; }
      print(`started VM ${name}: pid ${s.pid}, http://127.0.0.1:${s.hostPort}/ -> guest port 80`);
    }));

  vm.command('stop <vm>')
    .description('power the VM off (ACPI power button, then QMP quit after the timeout, then SIGKILL)')
    .option('--timeout <seconds>', 'wait this long for the guest to power off', String(STOP_TIMEOUT_MS / 1000))
    .option('--json', 'machine-readable output: the status once stopped')
    .action((name: string, o: { timeout: string; json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const secs = Number(o.timeout);
      if (!Number.isFinite(secs) || secs < 0 || secs > 3600) throw new DormantError('EINVAL', `bad --timeout '${o.timeout}'`);
      const s = await (await daemon(cmd, 'vm stop')).vmStop(name, Math.round(secs * 1000));
      if (o.json) { printJson(s); return; }
      print(`VM ${name}: ${stateText(s)}`);
    }));

  vm.command('pause <vm>')
    .description('pause a running VM (QMP stop): its vCPUs stop until vm resume')
    .option('--json', 'machine-readable output: the status after stop')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const s = await (await daemon(cmd, 'vm pause')).vmPause(name);
      if (o.json) { printJson(s); return; }
      print(`VM ${name}: ${stateText(s)}`);
    }));

  vm.command('resume <vm>')
    .description('continue a paused VM: after vm pause, or after its disk got ENOSPC from a full store (free space first with rm and gc)')
    .option('--json', 'machine-readable output: the status after cont')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const s = await (await daemon(cmd, 'vm resume')).vmResume(name);
      if (o.json) { printJson(s); return; }
      print(`VM ${name}: ${stateText(s)}`);
    }));

  vm.command('migrate <vm>')
    .description('move a running VM, disk and memory, to another host; it keeps running there with its state '
      + '(only the chunks that host lacks and QEMU\'s device state travel)')
    .requiredOption('--to <url>', 'the destination host\'s API, e.g. http://10.0.0.2:7450')
    .option('--mode <mode>', 'copy: pause, send what is missing, resume there; lazy: resume there at once, '
      + 'what is missing is fetched from here when read and copied in the background (vm status there shows it)', 'copy')
    .option('--token-file <file>', 'file holding the destination\'s API token (default: $DORMANT_TOKEN_FILE)')
    .option('--tls-ca <file>', 'CA certificate (PEM) to trust for an https:// host')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { to: string; mode: string; tokenFile?: string; tlsCa?: string; json?: boolean }, cmd: Command) => run(async () => {
      if (o.mode !== 'copy' && o.mode !== 'lazy') throw new DormantError('EINVAL', `bad --mode '${o.mode}': use copy or lazy`);
      const token = apiToken(o.tokenFile);
      const ca = caText(o.tlsCa);
      const control = await daemon(cmd, 'vm migrate');
      const progress = new Progress(`migrate ${name}`, 0);
      const r = await control.vmMigrate(name, o.to, token, o.mode, ca, (d, n) => progress.update(d, n)).finally(() => progress.done());
      if (o.json) { printJson(r); return; }
      print(`migrated VM ${name} to ${r.to}: runs there${r.hostPort ? ` on port ${r.hostPort}` : ''}; `
        + `downtime ${r.downtimeMs} ms, ${formatBytes(r.bytesSent)} sent (memory ${formatBytes(r.memoryBytesSent)}, `
        + `disk ${formatBytes(r.diskBytesSent)}, device state ${formatBytes(r.deviceStateBytes)}), in ${r.seconds.toFixed(2)} s`
        + `${r.lazy ? `; it fetches ${formatBytes(r.lazy.memoryBytesToFetch + r.lazy.diskBytesToFetch)} more from here (dormant vm status there)` : ''}`);
    }));

  vm.command('rm <vm>')
    .description('remove a VM that is not running: its record, serial log, memory volume and disk branch (with its snapshots)')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const removed = await withStore(cmd, (c) => c.vmRemove(name));
      if (o.json) { printJson({ vm: name, volumesRemoved: removed }); return; }
      print(`removed VM ${name}${removed.length ? ` and ${removed.join(', ')}` : ''} (run dormant gc to reclaim the space)`);
    }));

  vm.command('list')
    .description('every VM: state, host port, pid, RAM, resident guest RAM, uptime')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const rows = await withStore(cmd, (c) => c.vmList());
      if (o.json) { printJson({ vms: rows }); return; }
      if (rows.length === 0) { print('no VMs (create one with: dormant vm create NAME --from VOLUME@SNAP --memory 256M)'); return; }
      print(table(['NAME', 'STATE', 'ACTIVITY', 'PORT', 'PID', 'RAM', 'RESIDENT', 'QEMU PSS', 'FAULTS/S', 'UPTIME'], rows.map((s) => [
        s.name, stateText(s), activityText(s), s.hostPort ? String(s.hostPort) : '-', s.pid ? String(s.pid) : '-',
        formatBytes(s.memoryBytes), resident(s), s.qemuPss === undefined ? '-' : formatBytes(s.qemuPss),
        s.faultsPerSecond === undefined ? '-' : String(s.faultsPerSecond), uptime(s.uptimeSeconds),
      ])));
    }));

  vm.command('status <vm>')
    .description('state, port, pid, RAM, resident memory, page cache, faults/s, working set, last page-out, memory in the store, disk, uptime')
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
        `activity:  ${activityText(s)}${s.pager ? `; idle after ${s.pager.idleTimeoutSeconds} s quiet (quiet for ${s.pager.quietSeconds} s)`
          + `${s.pager.schedIdle ? '; vCPUs under SCHED_IDLE' : ''}` : ''}`,
        `resident:  ${s.residentGuestRam === undefined ? '-'
          : `${formatBytes(s.residentGuestRam)} guest RAM + ${formatBytes(s.residentQemu ?? 0)} QEMU`}`,
        `last busy: ${s.pager?.lastBusy ? `${s.pager.lastBusy.at}: guest CPU ${(s.pager.lastBusy.cpuShare * 100).toFixed(1)}%, `
          + `${s.pager.lastBusy.diskRequests} disk requests, ${s.pager.lastBusy.connections} connections` : '-'}`,
        `qemu:      ${s.qemuPss === undefined || !s.qemuMemory ? '-'
          : `${formatBytes(s.qemuPss)} PSS: ${formatBytes(s.qemuMemory.translationPss)} TCG translations, `
          + `${formatBytes(s.qemuMemory.anonPss)} heap and other anonymous, ${formatBytes(s.qemuMemory.filesPss)} files; `
          + `${formatBytes(s.qemuMemory.swap)} in swap`}`,
        `cached:    ${s.cachedGuestRam === undefined ? '-' : `${formatBytes(s.cachedGuestRam)} of guest RAM in the host page cache`}`,
        `faults:    ${s.faults === undefined ? '-' : `${s.faultsPerSecond}/s (last 10 s), ${s.faults} since start; `
          + `${formatBytes((s.pagesIn ?? 0) * 4096)} faulted in, ${formatBytes((s.prefetchPages ?? 0) * 4096)} prefetched, `
          + `${formatBytes((s.pagesOut ?? 0) * 4096)} written back`}`,
        `working set: ${s.workingSetBytes === undefined ? '- (recorded at the first page-out)' : formatBytes(s.workingSetBytes)}`
          + `${s.touchedSinceLastPageoutBytes === undefined ? '' : `; ${formatBytes(s.touchedSinceLastPageoutBytes)} touched since the last page-out`}`
          + `${s.pager ? `; per event: timer ${formatBytes(s.pager.timerSetBytes)}, network ${formatBytes(s.pager.networkSetBytes)}`
            + `${s.pager.timerPeriodSeconds === undefined ? '' : `; timer wake-ups every ${s.pager.timerPeriodSeconds} s`}` : ''}`,
        `last page-out: ${s.lastPageout ? `${s.lastPageout.at}${s.lastPageout.automatic ? ' (automatic)' : ''}, resident ${formatBytes(s.lastPageout.residentBefore)} -> `
          + `${formatBytes(s.lastPageout.residentAfter)} in ${(s.lastPageout.durationMs / 1000).toFixed(1)} s` : '-'}`,
        `last wake: ${s.pager?.lastWake ? `${s.pager.lastWake.at} by a connection: `
          + `${s.pager.lastWake.answeredMs === undefined ? 'no answer' : `answered in ${s.pager.lastWake.answeredMs} ms`}, held ${s.pager.lastWake.heldMs} ms`
          + `${s.pager.lastWake.prefetchPages ? ` for ${formatBytes(s.pager.lastWake.prefetchPages * 4096)} of network set` : ''}` : '-'}`
          + `${s.pager?.connectionPeriodSeconds === undefined ? '' : `; connections every ${s.pager.connectionPeriodSeconds} s`}`,
        `last prefetch: ${s.lastPrefetch ? `${s.lastPrefetch.at} (${s.lastPrefetch.set === 'epoch' ? 'working' : s.lastPrefetch.set} set), `
          + `${s.lastPrefetch.cachedPages}/${s.lastPrefetch.pages} pages in ${(s.lastPrefetch.durationMs / 1000).toFixed(1)} s` : '-'}`,
        `memory in store: ${s.memoryStoredBytes === undefined ? '-'
          : `${formatBytes(s.memoryStoredBytes)} non-zero, ${formatBytes(s.memoryUniqueBytes ?? 0)} of it not shared`}`,
        `disk:      ${s.diskBlocksWritten === undefined ? '-' : `${s.diskBlocksWritten} blocks written (${formatBytes(s.diskBlocksWritten * 4096)}) on top of ${s.from}`}`,
        `uptime:    ${uptime(s.uptimeSeconds)}`,
        ...(s.lazyCopy ? [`lazy copy: ${lazyText(s.lazyCopy)}`] : []),
      ].join('\n'));
    }));

  vm.command('pageout <vm>')
    .description('push the running VM\'s guest RAM out to the store (written back durably, then released); it keeps running')
    .option('--keep <MiB>', 'spare the hottest pages of its working set, this many MiB (a number of MiB, or a size like 16M)', '0')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { keep: string; json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      // A bare number is MiB (as the option says); a size with a unit is taken as it is.
      const keep = /^\s*\d+\s*$/.test(o.keep) ? Number(o.keep) * 2 ** 20 : parseSize(o.keep);
      if (!Number.isSafeInteger(keep)) throw new DormantError('EINVAL', `bad --keep '${o.keep}': a number of MiB, e.g. 16`);
      const r = await (await daemon(cmd, 'vm pageout')).vmPageout(name, keep);
      if (o.json) { printJson(r); return; }
      print(`VM ${name}: paged out in ${(r.durationMs / 1000).toFixed(1)} s${r.stopped ? ' (stopped early: a connection woke it)' : ''}: resident guest RAM ${formatBytes(r.residentBefore)} -> `
        + `${formatBytes(r.residentAfter)}, page cache ${formatBytes(r.cachedBefore)} -> ${formatBytes(r.cachedAfter)}, `
        + `${formatBytes(r.pagesWritten * 4096)} written to the store, ${formatBytes(r.keptPages * 4096)} of the working set kept `
        + `(working set ${formatBytes(r.workingSetPages * 4096)})`);
    }));

  vm.command('prefetch <vm>')
    .description('bring the VM\'s recorded working set (pages it read since its page-out before last) back into memory')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      checkVmName(name);
      const r = await (await daemon(cmd, 'vm prefetch')).vmPrefetch(name);
      if (o.json) { printJson(r); return; }
      print(`VM ${name}: prefetched ${r.cachedPages} of ${r.pages} working-set pages (${formatBytes(r.pages * 4096)}) in `
        + `${(r.durationMs / 1000).toFixed(1)} s; page cache ${formatBytes(r.cachedBefore)} -> ${formatBytes(r.cachedAfter)}`);
    }));

  vm.command('sharing')
    .description('how much of the VMs\' memory the store keeps once: pages equal to disk chunks they read, across VMs, zero, unique')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const r = await withStore(cmd, (c) => c.vmSharing());
      if (o.json) { printJson(r); return; }
      if (r.vms.length === 0) { print('no VMs'); return; }
      const pct = (n: number, d: number) => (d > 0 ? `${((100 * n) / d).toFixed(1)}%` : '-');
      const cov = (c: number | null) => (c === null ? '-' : `${(100 * c).toFixed(1)}%`);
      print(table(['VM', 'PAGES', 'ZERO', 'NONZERO', 'DISK(READ)', 'DISK(FULL)', 'COVERAGE', 'ACROSS-VMS', 'UNIQUE'], r.vms.map((l) => [
        l.name, String(l.pages), String(l.zeroPages), String(l.nonZeroPages),
        `${l.sharedWithDiskPages} (${pct(l.sharedWithDiskPages, l.nonZeroPages)})`, String(l.sharedWithDiskFullScanPages),
        cov(l.coverage), `${l.sharedAcrossVmsPages} (${pct(l.sharedAcrossVmsPages, l.nonZeroPages)})`,
        `${l.uniquePages} (${pct(l.uniquePages, l.nonZeroPages)})`,
      ])));
      const t = r.totals;
      print(`memory: ${formatBytes(t.logicalBytes)} logical, ${formatBytes(t.nonZeroBytes)} non-zero; stored ${formatBytes(t.storedBytes)} `
        + `(${pct(t.storedBytes, t.nonZeroBytes)} of non-zero), of which ${formatBytes(t.storedBeyondDisksBytes)} not on any of their disks`);
      print(`disk-I/O candidates found ${t.sharedWithDiskPages} of the ${t.sharedWithDiskFullScanPages} pages a full scan finds `
        + `equal to disk blocks (coverage ${cov(t.coverage)}); candidates ${r.timings.candidatesMs} ms, full scan ${r.timings.fullScanMs} ms`);
    }));

  vm.command('log <vm>')
    .description('print the VM\'s serial console log')
    .option('-f, --follow', 'keep printing what the guest writes, as tail -f (a restart of the VM starts the log again); Ctrl-C ends')
    .action((name: string, o: { follow?: boolean }, cmd: Command) => run(async () => {
      const dir = storeDir(cmd);
      readVm(dir, name);
      const file = vmPaths(dir, name).log;
      if (!o.follow) {
        if (fs.existsSync(file)) process.stdout.write(fs.readFileSync(file));
        return;
      }
      await followLog(file);
    }));

  vm.command('console <vm>')
    .description('connect the terminal to the running VM\'s serial console (Ctrl-] detaches); without a terminal, stdin goes to the guest')
    .action((name: string, _o, cmd: Command) => run(async () => {
      checkVmName(name);
      const s = await withStore(cmd, (c) => c.vmStatus(name));
      if (!['booting', 'running', 'paused'].includes(s.state)) {
        throw new DormantError('EINVAL', `VM '${name}' is not running (state ${s.state}): start it with dormant vm start ${name}`);
      }
      await attachConsole(name, vmPaths(storeDir(cmd), name).console);
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

/** How often `vm log -f` looks for new output. */
const FOLLOW_POLL_MS = 200;

/**
 * Prints `file` and then what is appended to it, until SIGINT or SIGTERM
 * (resolves) or stdout is closed. A file that shrinks was started again
 * (the VM restarted): it is printed from its start.
 */
async function followLog(file: string): Promise<void> {
  let offset = 0;
  let stop = false;
  const end = () => { stop = true; };
  process.once('SIGINT', end);
  process.once('SIGTERM', end);
  process.stdout.once('error', end); // EPIPE: the reader went away
  const buf = Buffer.allocUnsafe(64 * 1024);
  try {
    while (!stop) {
      const size = await fs.promises.stat(file).then((st) => st.size, () => 0);
      if (size < offset) offset = 0;
      if (size > offset) {
        const fh = await fs.promises.open(file, 'r');
        try {
          while (offset < size && !stop) {
            const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - offset), offset);
            if (bytesRead === 0) break;
            offset += bytesRead;
            if (!process.stdout.write(Buffer.from(buf.subarray(0, bytesRead)))) await new Promise((r) => process.stdout.once('drain', r));
          }
        } finally {
          await fh.close();
        }
      }
      await new Promise((r) => setTimeout(r, FOLLOW_POLL_MS));
    }
  } finally {
    process.off('SIGINT', end);
    process.off('SIGTERM', end);
  }
}

