/**
 * `dormant plan (--input FILE | --etcd URL) [--json] [--apply]`: a
 * placement of VMs on hosts that keeps the pages they have in common once
 * per host (src/cluster), with the memory needed before and after and the
 * migrations in a safe order. The input is a file, or the cluster as it
 * runs: the hosts up in etcd, their running VMs, and the sharing estimated
 * from the fingerprint sketches the hosts publish (live-input.ts). Calls
 * the planner, prints; touches no store. `--apply` carries the migrations
 * out one by one, in that order: each source host is asked over its API
 * (hosts found in etcd by name) to `vm migrate` its VM (mode auto: lazy
 * when the source's pager sees the VM idle, else copy), and the memory
 * the hosts use is read from etcd before and after.
 */
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import {
  listHosts, plan, readLiveInput, readPlanInput, type EtcdClient, type HostStatus, type PlanInput, type PlanResult,
} from '../cluster/index.js';
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
interface Applied { vm: string; from: string; to: string; mode: string; downtimeMs: number; bytesSent: number; seconds: number }

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
      Buffer.from(JSON.stringify({ to: hosts.get(m.to)!.url, mode: 'auto' })), { timeoutMs: 15 * 60_000 });
    applied.push({ vm: m.vm, from: m.from, to: m.to, mode: res.mode, downtimeMs: res.downtimeMs, bytesSent: res.bytesSent, seconds: res.seconds });
    say(`migrated ${m.vm} (${res.mode}): paused ${res.downtimeMs} ms, ${formatBytes(res.bytesSent)} sent, ${res.seconds} s`);
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

/**
 * The input: the file of --input, or the cluster on the etcd of --etcd
 * (else $DORMANT_ETCD) when there is no --input. --input and --etcd
 * together name two inputs, unless --apply (which finds the hosts there).
 */
async function planInput(o: { input?: string; etcd?: string; apply?: boolean }):
  Promise<{ input: PlanInput; live: boolean; notes: string[] }> {
  if (o.input !== undefined) {
    if (o.etcd !== undefined && !o.apply) {
      throw new DormantError('EINVAL', '--input and --etcd are two inputs: give one (--etcd goes with --input only for --apply)');
    }
    return { input: readPlanInput(o.input), live: false, notes: [] };
  }
  if (o.etcd === undefined && !process.env.DORMANT_ETCD?.trim()) {
    throw new DormantError('EINVAL', 'nothing to plan: give --input FILE, or --etcd URL[,URL...] (or set $DORMANT_ETCD) to plan the cluster\'s VMs');
  }
  const live = await readLiveInput(etcdClient(o.etcd));
  return { ...live, live: true };
}

/** Registers `plan` on `program`. */
export function addPlanCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('plan')
    .description('place VMs on hosts so that the memory they have in common is kept once per host; prints the placement, the memory before and after, and the migrations')
    .option('--input <file>', 'JSON file of hosts, VMs (with their current host) and pairwise sharing in MB')
    .option('--etcd <urls>', 'etcd client URLs, comma-separated (default: $DORMANT_ETCD): without --input, plan the running VMs of the hosts up there, sharing estimated from their memory fingerprints; with --apply, where the hosts are found')
    .option('--apply', 'carry the migrations out, in order, with vm migrate on each source host (needs --etcd and the hosts\' shared API token)')
    .option('--token-file <file>', 'with --apply: the hosts\' API token (default: $DORMANT_TOKEN_FILE)')
    .option('--json', 'machine-readable output')
    .action((o: { input?: string; json?: boolean; apply?: boolean; etcd?: string; tokenFile?: string }) => run(async () => {
      const { input, live, notes } = await planInput(o);
      const say = (line: string) => { if (!isQuiet() && !o.json) process.stderr.write(`dormant plan: ${line}\n`); };
      if (live) {
        say(`from etcd: ${input.hosts.length} host${input.hosts.length === 1 ? '' : 's'} up, ${input.vms.length} running VM${input.vms.length === 1 ? '' : 's'}, `
          + `${input.sharingMB.length} pair${input.sharingMB.length === 1 ? '' : 's'} sharing memory (estimated from fingerprints)`);
        for (const n of notes) say(`note: ${n}`);
      }
      const r = plan(input);
      // From etcd, the JSON carries the input it planned (a file for --input, to plan it again or edit it).
      const json = (x: object) => `${JSON.stringify(live ? { ...x, input } : x, null, 2)}\n`;
      if (!o.apply) {
        process.stdout.write(o.json ? json(r) : `${formatPlan(r)}\n`);
        return;
      }
      const client = etcdClient(o.etcd, '--apply finds the hosts in etcd');
      const token = apiToken(o.tokenFile, '--apply needs the hosts\' API token');
      if (!o.json) process.stdout.write(`${formatPlan(r)}\n`);
      const a = await applyPlan(r, client, token, say);
      if (o.json) { process.stdout.write(json({ ...r, ...a })); return; }
      process.stdout.write(`applied ${a.applied.length} migration${a.applied.length === 1 ? '' : 's'}; memory the hosts use (etcd): `
        + `${formatBytes(a.measured.beforeBytes)} before, ${formatBytes(a.measured.afterBytes)} after\n`);
    }));
}
