/**
 * Volume transfer between hosts: `dormant push` and `dormant pull`, and
 * what every command that talks to another host's API takes (its token
 * from --token-file or $DORMANT_TOKEN_FILE, --tls-ca). The other host is
 * named by its API URL (`dormant serve --api`); the local side is the
 * daemon when one runs (it owns the store), else this process.
 */
import fs from 'node:fs';
import type { Command } from 'commander';
import { DormantError, type ProgressFn } from '../blockstore/index.js';
import type { StoreControl } from '../control/index.js';
import { readTokenFile, type TransferResult } from '../migrate/index.js';
import { formatBytes } from './format.js';
import { Progress } from './progress.js';
import { withStore } from './store-commands.js';

/**
 * The other host's API token: the file `tokenFile` names, else
 * $DORMANT_TOKEN_FILE's; `missing` starts the one-line error when neither is given.
 */
export function apiToken(tokenFile: string | undefined, missing = 'the other host needs its API token'): string {
  const file = tokenFile ?? process.env.DORMANT_TOKEN_FILE;
  if (!file) throw new DormantError('EINVAL', `${missing}: --token-file FILE or $DORMANT_TOKEN_FILE`);
  return readTokenFile(file);
}

/** The text of the --tls-ca file ('' without one). */
export function caText(tlsCa: string | undefined): string {
  if (tlsCa === undefined) return '';
  try {
    return fs.readFileSync(tlsCa, 'utf8');
  } catch {
    throw new DormantError('EINVAL', `cannot read --tls-ca '${tlsCa}'`);
  }
}

interface TransferOptions { to?: string; from?: string; as?: string; tokenFile?: string; tlsCa?: string; json?: boolean }

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

/** The two directions: the flag naming the other host, and the control operation that moves the volume. */
const DIRECTIONS = [
  { verb: 'push', done: 'pushed', flag: 'to', what: 'send a volume or snapshot (volume@snap) to another host: only the chunks it lacks cross the network',
    host: 'the receiving host\'s API, e.g. http://10.0.0.2:7450' },
  { verb: 'pull', done: 'pulled', flag: 'from', what: 'fetch a volume or snapshot (volume@snap) from another host: only the chunks this host lacks cross the network',
    host: 'the sending host\'s API, e.g. http://10.0.0.1:7450' },
] as const;

/** Registers push and pull on `program`. */
export function addTransferCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  for (const d of DIRECTIONS) {
    program.command(`${d.verb} <volume>`)
      .description(d.what)
      .requiredOption(`--${d.flag} <url>`, d.host)
      .option('--as <name>', 'name of the volume on the receiving host (default: the same; a snapshot keeps its @snap)')
      .option('--token-file <file>', 'file holding the other host\'s API token (default: $DORMANT_TOKEN_FILE)')
      .option('--tls-ca <file>', 'CA certificate (PEM) to trust for an https:// host')
      .option('--json', 'machine-readable output')
      .action((name: string, o: TransferOptions, cmd: Command) => run(async () => {
        const url = o[d.flag]!;
        const token = apiToken(o.tokenFile);
        const ca = caText(o.tlsCa);
        const progress = new Progress(`${d.verb} ${name}`, 0);
        const move = (c: StoreControl, p: ProgressFn) => c[d.verb](name, url, token, o.as ?? '', ca, p);
        const r = await withStore(cmd, (c) => move(c, (done, total) => progress.update(done, total))).finally(() => progress.done());
        report(d.done, name, url, r, o.json);
      }));
  }
}
