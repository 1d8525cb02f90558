/**
 * `dormant check [--data [--repair]]` and `dormant scrub`: verify the store
 * (offline, or through the daemon's control socket) and print what is
 * wrong, one line each. Exit 0 when nothing is wrong (or all of it was
 * repaired), 3 when problems remain (exit.ts).
 */
import type { Command } from 'commander';
import { DormantError, type DamagedChunk, type DataReport } from '../blockstore/index.js';
import { EXIT_PROBLEMS } from './exit.js';
import { formatBytes, formatRate } from './format.js';
import { Progress } from './progress.js';
import { withStore } from './store-commands.js';

const print = (s: string) => process.stdout.write(`${s}\n`);
const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** Default bound of `scrub --rate`, in MB (10^6 bytes) per second. */
const DEFAULT_SCRUB_RATE = '100';

/** One line for a damaged chunk: where it is, what is wrong, who reads it, what repair did. */
export function damagedLine(d: DamagedChunk): string {
  const users = d.users.map((u) => `${u.name} at byte ${u.offset}`).join(', ');
  const used = users ? `used by ${users}${d.moreUsers > 0 ? ` and ${d.moreUsers} more` : ''}` : 'used by no volume or snapshot';
  return `chunk ${d.chunk} (segment ${d.segment}, slot ${d.slot}) ${d.problem}; ${used}${d.repair ? `; ${d.repair}` : ''}`;
}

/** Lines for what a data check left wrong (damaged chunks not repaired, bad segment headers). */
function dataProblems(r: DataReport): string[] {
  return [...r.badSegments, ...r.damaged.filter((d) => !d.repaired).map(damagedLine)];
}

function summary(what: string, r: DataReport): string {
  const damage = r.damaged.length === 0 ? 'no damage found'
    : `${r.damaged.length} damaged chunk${r.damaged.length === 1 ? '' : 's'}, ${r.repaired} repaired`;
  return `${what}: ${r.chunks} chunks (${formatBytes(r.bytes)}) read back in ${r.seconds.toFixed(2)} s `
    + `(${formatRate(r.bytes, r.seconds)}): ${damage}`;
}

function incomplete(r: DataReport): void {
  if (!r.complete) throw new DormantError('ECLOSED', 'the store was closed before every chunk was read back (the daemon stopped?)');
}

/** Parses a rate flag (MB/s, 0 = no bound) into bytes per second. */
export function parseRate(text: string, flag = '--rate'): number {
  if (!/^\d+(\.\d+)?$/.test(text)) throw new DormantError('EINVAL', `bad ${flag} '${text}': MB per second, e.g. 50 (0: no bound)`);
  return Math.round(Number(text) * 1e6);
}

/** Registers `check` and `scrub` on `program`. */
export function addCheckCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('check')
    .description('verify the store\'s consistency (reference counts, chunks, segments, catalog); '
      + 'with --data also every chunk against its hash; exit 3 when a problem is found')
    .option('--data', 'also read every chunk back and check it against its hash')
    .option('--repair', 'with --data (implied): rewrite each damaged chunk from another stored copy of its content')
    .option('--json', 'machine-readable output')
    .action((o: { data?: boolean; repair?: boolean; json?: boolean }, cmd: Command) => run(async () => {
      const data = Boolean(o.data || o.repair);
      const progress = new Progress('check --data', 0);
      const { problems, report } = await withStore(cmd, async (c) => ({
        problems: await c.check(),
        report: data ? await c.verifyData(Boolean(o.repair), 0, (d, t) => progress.update(d, t)) : undefined,
      })).finally(() => progress.done());
      if (report) incomplete(report);
      const left = [...problems, ...(report ? dataProblems(report) : [])];
      if (o.json) {
        printJson({ consistent: left.length === 0, problems: left, ...(report ? { data: report } : {}) });
      } else {
        if (problems.length > 0) print(problems.join('\n'));
        if (report) {
          for (const line of [...report.badSegments, ...report.damaged.map(damagedLine)]) print(line);
          print(summary('data', report));
        }
        if (left.length === 0) print('store is consistent');
      }
      if (left.length > 0) {
        process.stderr.write(`dormant: the store has ${left.length} problem${left.length === 1 ? '' : 's'}\n`);
        process.exitCode = EXIT_PROBLEMS;
      }
    }));

  program.command('scrub')
    .description('read every chunk back at a bounded rate and check it against its hash (through the daemon when one runs); '
      + 'exit 3 when damage is found')
    .option('--rate <MB/s>', 'read at most this many MB (10^6 bytes) per second; 0: no bound', DEFAULT_SCRUB_RATE)
    .option('--repair', 'rewrite each damaged chunk from another stored copy of its content')
    .option('--json', 'machine-readable output')
    .action((o: { rate: string; repair?: boolean; json?: boolean }, cmd: Command) => run(async () => {
      const rate = parseRate(o.rate);
      const progress = new Progress('scrub', 0);
      const report = await withStore(cmd, (c) => c.verifyData(Boolean(o.repair), rate, (d, t) => progress.update(d, t)))
        .finally(() => progress.done());
      incomplete(report);
      const left = dataProblems(report);
      if (o.json) {
        printJson(report);
      } else {
        for (const line of [...report.badSegments, ...report.damaged.map(damagedLine)]) print(line);
        print(summary('scrub', report));
      }
      if (left.length > 0) {
        process.stderr.write(`dormant: scrub found ${left.length} problem${left.length === 1 ? '' : 's'} it did not repair\n`);
        process.exitCode = EXIT_PROBLEMS;
      }
    }));
}
