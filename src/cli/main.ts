/**
 * The dormant command line: a commander program over the modules.
 * Exit codes: 0 success, 1 user error, 2 internal error, 3 problems found
 * by check or scrub (exit.ts).
 */
import { Command, CommanderError } from 'commander';
import { addStoreCommands } from './store-commands.js';
import { addCheckCommands } from './check.js';
import { addServeCommand } from './serve.js';
import { addMountCommand } from './mount.js';
import { addImageCommands } from './image.js';
import { addVmCommands } from './vm.js';
import { addTopCommand } from './top.js';
import { addTransferCommands } from './transfer.js';
import { addPlanCommand } from './plan.js';
import { addHostsCommand } from './hosts.js';
import { EXIT_USER, reportError } from './exit.js';
import { setQuiet } from './quiet.js';

/** Builds the program; `run` wraps each action so errors become exit codes. */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('dormant')
    .description('versioned copy-on-write block store for mostly idle VMs')
    .version('0.1.0')
    .option('--store <dir>', 'store directory (default: $DORMANT_STORE, else $XDG_DATA_HOME/dormant)')
    .option('-q, --quiet', 'no progress and no informational lines on stderr (errors and warnings still print)')
    .hook('preAction', (_root, action) => { setQuiet(Boolean(action.optsWithGlobals().quiet)); })
    .exitOverride();
  oneLineErrors(program, 'dormant');
  const run = async (fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      process.exitCode = reportError(err);
    }
  };
  addStoreCommands(program, run);
  addCheckCommands(program, run);
  addServeCommand(program, run);
  addMountCommand(program, run);
  addImageCommands(program, run);
  addVmCommands(program, run);
  addTopCommand(program, run);
  addTransferCommands(program, run);
  addPlanCommand(program, run);
  addHostsCommand(program, run);
  for (const c of program.commands) c.exitOverride();
  // Each (sub)command's usage errors point to its own --help.
  const walk = (c: Command, name: string): void => {
    for (const sub of c.commands) {
      const full = `${name} ${sub.name()}`;
      oneLineErrors(sub, full);
      walk(sub, full);
    }
  };
  walk(program, 'dormant');
  return program;
}

/** Usage errors of `cmd` as one line: "dormant: unknown option '--x' (see dormant vm start --help)". */
function oneLineErrors(cmd: Command, name: string): void {
  cmd.configureOutput({
    outputError: (str, write) => write(`dormant: ${str.trim().replace(/^error: /, '').replace(/\s*\n\s*/g, ' ')} (see ${name} --help)\n`),
  });
}

/** Runs the CLI with `argv` (process.argv layout). */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) {
      process.exitCode = err.exitCode === 0 ? 0 : EXIT_USER;
      return;
    }
    process.exitCode = reportError(err);
  }
}
