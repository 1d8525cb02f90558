/**
 * Moving things between hosts: `dormant push` and `dormant pull` (volumes)
 * and `dormant vm migrate` (a running VM). The other host is named by its
 * API URL (`dormant serve --api`); the token comes from --token-file or
 * $DORMANT_TOKEN_FILE. The local side of push and pull is the daemon when
 * one runs (it owns the store), else this process; vm migrate needs the
 * daemon that runs the VM.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import { readTokenFile, type TransferResult } from '../migrate/index.js';
import { formatBytes } from './format.js';
import { Progress } from './progress.js';
import { storeDir, withStore } from './store-commands.js';
import path from 'node:path';
import { CONTROL_SOCKET_NAME, RemoteControl, daemonAnswers } from '../control/index.js';
import type { VmMoveResult } from '../migrate/index.js';

interface TransferOptions { to?: string; from?: string; as?: string; tokenFile?: string; tlsCa?: string; json?: boolean; mode?: string }

/** The token for the other host: --token-file, else $DORMANT_TOKEN_FILE. */
function token(o: TransferOptions): string {
  const file = o.tokenFile ?? process.env.DORMANT_TOKEN_FILE;
  if (!file) throw new DormantError('EINVAL', 'the other host needs its API token: --token-file FILE or $DORMANT_TOKEN_FILE');
  return readTokenFile(file);
}

function caText(o: TransferOptions): string {
  if (o.tlsCa === undefined) return '';
  try {
    return fs.readFileSync(o.tlsCa, 'utf8');
  } catch {
    throw new DormantError('EINVAL', `cannot read --tls-ca '${o.tlsCa}'`);
  }
}

function report(verb: string, name: string, url: string, r: TransferResult, json?: boolean): void {
  if (json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
  if (r.alreadyPresent) {
    process.stdout.write(`${r.volume} is already on ${verb === 'pushed' ? url : 'this host'} with the same content: nothing sent\n`);
    return;
  }
  const share = r.logicalBytes > 0 ? ` (${((100 * r.bytesSent) / r.logicalBytes).toFixed(1)} % of its size)` : '';
  process.stdout.write(`${verb} ${name} ${verb === 'pushed' ? 'to' : 'from'} ${url} as ${r.volume}: ${formatBytes(r.logicalBytes)}, `
    + `${formatBytes(r.bytesSent)} sent${share}, ${r.chunksSent} chunks sent, ${r.chunksPresent} already there`
    + `${r.origin ? `, branched from ${r.origin}` : ''}, in ${r.seconds.toFixed(2)} s\n`);
}

/** Registers push and pull on `program`. */
export function addTransferCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const common = (c: Command) => c
    .option('--as <name>', 'name of the volume on the receiving host (default: the same; a snapshot keeps its @snap)')
    .option('--token-file <file>', 'file holding the other host\'s API token (default: $DORMANT_TOKEN_FILE)')
    .option('--tls-ca <file>', 'CA certificate (PEM) to trust for an https:// host')
    .option('--json', 'machine-readable output');

  common(program.command('push <volume>')
    .description('send a volume or snapshot (volume@snap) to another host: only the chunks it lacks cross the network')
    .requiredOption('--to <url>', 'the receiving host\'s API, e.g. http://10.0.0.2:7450'))
    .action((name: string, o: TransferOptions, cmd: Command) => run(async () => {
      const t = token(o);
      const progress = new Progress(`push ${name}`, 0);
      const r = await withStore(cmd, (c) => c.push(name, o.to!, t, o.as ?? '', caText(o), (d, n) => progress.update(d, n)))
        .finally(() => progress.done());
      report('pushed', name, o.to!, r, o.json);
    }));

  common(program.command('pull <volume>')
    .description('fetch a volume or snapshot (volume@snap) from another host: only the chunks this host lacks cross the network')
    .requiredOption('--from <url>', 'the sending host\'s API, e.g. http://10.0.0.1:7450'))
    .action((name: string, o: TransferOptions, cmd: Command) => run(async () => {
      const t = token(o);
      const progress = new Progress(`pull ${name}`, 0);
      const r = await withStore(cmd, (c) => c.pull(name, o.from!, t, o.as ?? '', caText(o), (d, n) => progress.update(d, n)))
        .finally(() => progress.done());
      report('pulled', name, o.from!, r, o.json);
    }));
}

/** Registers `vm migrate` under the `vm` command of `program` (addVmCommands runs first). */
export function addMigrateCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const vm = program.commands.find((c) => c.name() === 'vm');
  if (!vm) throw new Error('the vm command must be registered before vm migrate');
  vm.command('migrate <vm>')
    .description('move a running VM, disk and memory, to another host; it keeps running there with its state '
      + '(only the chunks that host lacks and QEMU\'s device state travel)')
    .requiredOption('--to <url>', 'the destination host\'s API, e.g. http://10.0.0.2:7450')
    .option('--mode <mode>', 'copy: pause, send what is missing, resume there (lazy is not built yet)', 'copy')
    .option('--token-file <file>', 'file holding the destination\'s API token (default: $DORMANT_TOKEN_FILE)')
    .option('--tls-ca <file>', 'CA certificate (PEM) to trust for an https:// host')
    .option('--json', 'machine-readable output')
    .action((name: string, o: TransferOptions, cmd: Command) => run(async () => {
      if (o.mode !== 'copy') {
        throw new DormantError('EINVAL', o.mode === 'lazy' ? '--mode lazy is not built yet: use --mode copy'
          : `bad --mode '${o.mode}': use copy`);
      }
      const t = token(o);
      const socket = path.join(storeDir(cmd), CONTROL_SOCKET_NAME);
      if (!await daemonAnswers(socket)) {
        throw new DormantError('EINVAL', `vm migrate needs the daemon that runs the VM (nothing answers on ${socket})`);
      }
      const progress = new Progress(`migrate ${name}`, 0);
      const r: VmMoveResult = await new RemoteControl(socket).vmMigrate(name, o.to!, t, o.mode, caText(o), (d, n) => progress.update(d, n))
        .finally(() => progress.done());
      if (o.json) { process.stdout.write(`${JSON.stringify(r, null, 2)}\n`); return; }
      process.stdout.write(`migrated VM ${name} to ${r.to}: runs there${r.hostPort ? ` on port ${r.hostPort}` : ''}; `
        + `downtime ${r.downtimeMs} ms, ${formatBytes(r.bytesSent)} sent (memory ${formatBytes(r.memoryBytesSent)}, `
        + `disk ${formatBytes(r.diskBytesSent)}, device state ${formatBytes(r.deviceStateBytes)}), in ${r.seconds.toFixed(2)} s\n`);
    }));
}
