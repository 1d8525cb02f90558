/**
 * `dormant hosts [--etcd URL] [--json]`: the hosts of the cluster as etcd
 * has them (src/cluster/cluster-keys.ts): name, API URL, up or down (a
 * down host's lease ended: it stopped, was killed or cannot reach etcd),
 * memory capacity and use, VMs (a down host's as unavailable). Reads etcd
 * only; needs no store and no daemon.
 */
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import { EtcdClient, listHosts, parseEndpoints, type HostStatus } from '../cluster/index.js';
import { formatBytes, table } from './format.js';

/**
 * A client of the etcd that --etcd names, else $DORMANT_ETCD; `missing`
 * starts the one-line error when neither is given.
 */
export function etcdClient(flag: string | undefined, missing = 'no etcd named'): EtcdClient {
  const text = flag ?? process.env.DORMANT_ETCD;
  if (text === undefined || text.trim() === '') throw new DormantError('EINVAL', `${missing}: give --etcd URL[,URL...] or set $DORMANT_ETCD`);
  return new EtcdClient(parseEndpoints(text, flag === undefined ? '$DORMANT_ETCD' : '--etcd'));
}

/** The hosts as a table. */
export function formatHosts(hosts: HostStatus[]): string {
  if (hosts.length === 0) return 'no hosts registered in etcd';
  return table(['host', 'state', 'API', 'capacity', 'used', 'VMs'], hosts.map((h) => [
    h.name, h.state, h.url, formatBytes(h.capacityBytes), h.usedBytes === null ? '-' : formatBytes(h.usedBytes),
    h.vms.map((v) => `${v.name} (${v.state})`).join(' ') || '-',
  ]));
}

/** Registers `hosts` on `program`. */
export function addHostsCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('hosts')
    .description('list the hosts of the cluster on etcd: name, API URL, up or down, memory capacity and use, VMs')
    .option('--etcd <urls>', 'etcd client URLs, comma-separated (default: $DORMANT_ETCD)')
    .option('--json', 'machine-readable output')
    .action((o: { etcd?: string; json?: boolean }) => run(async () => {
      const hosts = await listHosts(etcdClient(o.etcd));
      process.stdout.write(o.json ? `${JSON.stringify({ hosts }, null, 2)}\n` : `${formatHosts(hosts)}\n`);
    }));
}
