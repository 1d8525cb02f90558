/**
 * `dormant plan --input FILE [--json]`: a placement of VMs on hosts that
 * keeps the pages they have in common once per host (src/cluster), with
 * the memory needed before and after and the migrations in a safe order.
 * Reads the file, calls the planner, prints; touches no store.
 */
import type { Command } from 'commander';
import { plan, readPlanInput, type PlanResult } from '../cluster/index.js';
import { table } from './format.js';

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

/** Registers `plan` on `program`. */
export function addPlanCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('plan')
    .description('place VMs on hosts so that the memory they have in common is kept once per host; prints the placement, the memory before and after, and the migrations')
    .requiredOption('--input <file>', 'JSON file of hosts, VMs (with their current host) and pairwise sharing in MB')
    .option('--json', 'machine-readable output')
    .action((o: { input: string; json?: boolean }) => run(async () => {
      const r = plan(readPlanInput(o.input));
      process.stdout.write(o.json ? `${JSON.stringify(r, null, 2)}\n` : `${formatPlan(r)}\n`);
    }));
}
