/**
 * `dormant plan --input FILE [--json] [--apply --etcd URL]`: a placement
 * of VMs on hosts that keeps the pages they have in common once per host
 * (src/cluster), with the memory needed before and after and the
 * migrations in a safe order. Reads the file, calls the planner, prints;
 * touches no store. `--apply` carries the migrations out one by one, in
 * that order: each source host is asked over its API (hosts found in
 * etcd by name) to `vm migrate` its VM, and the memory the hosts use is
 * read from etcd before and after.
 */
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import { listHosts, plan, readPlanInput, type EtcdClient, type HostStatus, type PlanResult } from '../cluster/index.js';
import { checkHostUrl, requestJson, type VmMoveResult } from '../migrate/index.js';
import { formatBytes, table } from './format.js';
import { etcdClient } from './hosts.js';
import { isQuiet } from './quiet.js';
import { apiToken } from './transfer.js';

const mb = (x: number): string => `${x} MB`;

/** The plan as text: a table per host, the totals, the migrations. */
export function formatPlan(r: PlanResult): string {
  const lines = [
    table(['host', 'capacity', 'now', 'planned', 'VMs'],
      r.hosts.map((h) => [h.name, mb(h.capacityMB), mb(h.beforeMB), mb(h.afterMB), h.vms.join(' ') || '-'])),
    '',
    `memory needed, common pages once per host: now ${mb(r.beforeMB)}, planned ${mb(r.afterMB)}, saved ${mb(r.savedMB)}`,
  ];
  if (r.migrations.length === 0) {
    lines.push('no migrations: every VM stays where it is');
  } else {
    lines.push(`${r.migrations.length} migration${r.migrations.length === 1 ? '' : 's'}, in this order:`);
    r.migrations.forEach((m, i) => lines.push(`  ${i + 1}. ${m.vm}: ${m.from} -> ${m.to}`));
  }
  if (!r.safeOrder) {
    lines.push('warning: no order found that keeps every host within its capacity while the VMs move one at a time');
  }
  return lines.join('\n');
}

/** One migration carried out by --apply. */
interface Applied { vm: string; from: string; to: string; downtimeMs: number; bytesSent: number; seconds: number }

/** What the hosts use now, all together, as etcd has it (their records refresh every TTL/3). */
const usedBytes = (hosts: HostStatus[]): number => hosts.reduce((s, h) => s + (h.usedBytes ?? 0), 0);

/**
 * Carries out `r`'s migrations in their order (refused before the first
 * when there is no safe order or a host is not up); `say` gets a line per
 * step. Returns what each did and the hosts' memory before and after.
 */
async function applyPlan(r: PlanResult, client: EtcdClient, token: string, say: (line: string) => void):
  Promise<{ applied: Applied[]; measured: { beforeBytes: number; afterBytes: number } }> {
  if (!r.safeOrder) throw new DormantError('EINVAL', 'not applied: no order keeps every host within its capacity while the VMs move one at a time');
  const hosts = new Map((await listHosts(client)).map((h) => [h.name, h]));
  for (const m of r.migrations) {
    for (const name of [m.from, m.to]) {
      const h = hosts.get(name);
      if (!h || h.state !== 'up') throw new DormantError('EINVAL', `not applied: host ${name} is ${h ? 'down' : 'not in etcd'}`);
    }
  }
  const beforeBytes = usedBytes([...hosts.values()]);
  const applied: Applied[] = [];
  for (const m of r.migrations) {
    const from = hosts.get(m.from)!;
    say(`migrating ${m.vm}: ${m.from} -> ${m.to}`);
    const res = await requestJson<VmMoveResult>({ url: checkHostUrl(from.url), token }, 'POST', `/v1/vms/${encodeURIComponent(m.vm)}/migrate`,
      Buffer.from(JSON.stringify({ to: hosts.get(m.to)!.url })), { timeoutMs: 15 * 60_000 });
    applied.push({ vm: m.vm, from: m.from, to: m.to, downtimeMs: res.downtimeMs, bytesSent: res.bytesSent, seconds: res.seconds });
  }
  // The hosts publish their memory every TTL/3: wait until every moved VM shows on its new host (at most 30 s).
  let after = await listHosts(client);
  for (let i = 0; i < 60; i++) {
    const on = new Map(after.flatMap((h) => h.vms.map((v) => [v.name, h.name] as const)));
    if (r.migrations.every((m) => on.get(m.vm) === m.to)) break;
    await new Promise((res) => setTimeout(res, 500));
    after = await listHosts(client);
  }
  return { applied, measured: { beforeBytes, afterBytes: usedBytes(after) } };
}

/** Registers `plan` on `program`. */
export function addPlanCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('plan')
    .description('place VMs on hosts so that the memory they have in common is kept once per host; prints the placement, the memory before and after, and the migrations')
    .requiredOption('--input <file>', 'JSON file of hosts, VMs (with their current host) and pairwise sharing in MB')
    .option('--apply', 'carry the migrations out, in order, with vm migrate on each source host (needs --etcd and the hosts\' shared API token)')
    .option('--etcd <urls>', 'with --apply: etcd client URLs, comma-separated (default: $DORMANT_ETCD), where the hosts are found by name')
    .option('--token-file <file>', 'with --apply: the hosts\' API token (default: $DORMANT_TOKEN_FILE)')
    .option('--json', 'machine-readable output')
    .action((o: { input: string; json?: boolean; apply?: boolean; etcd?: string; tokenFile?: string }) => run(async () => {
      const r = plan(readPlanInput(o.input));
      if (!o.apply) {
        process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatPlan(r)}\n`);
        return;
      }
      const client = etcdClient(o.etcd, '--apply finds the hosts in etcd');
      const token = apiToken(o.tokenFile, '--apply needs the hosts\' API token');
      if (!o.json) process.stdout.write(`${formatPlan(r)}\n`);
      const a = await applyPlan(r, client, token, (line) => { if (!isQuiet() && !o.json) process.stderr.write(`dormant plan: ${line}\n`); });
      if (o.json) { process.stdout.write(`${JSON.stringify({ ...r, ...a }, null, 2)}\n`); return; }
      process.stdout.write(`applied ${a.applied.length} migration${a.applied.length === 1 ? '' : 's'}; memory the hosts use (etcd): `
        + `${formatBytes(a.measured.beforeBytes)} before, ${formatBytes(a.measured.afterBytes)} after\n`);
    }));
}
