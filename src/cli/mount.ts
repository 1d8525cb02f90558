/**
 * `dormant mount DIR`: the FUSE view alone, in the foreground. Owns the
 * store like `serve` does (a second owner gets "locked"); `dormant serve
 * --mount DIR` gives the same view next to NBD. A stale mount left by a
 * killed daemon is cleaned first, with a line saying so. SIGTERM/SIGINT:
 * unmount, flush, release the store, exit 0. `--config FILE` as serve's
 * (config.ts), with mount's own options.
 */
import type { Command } from 'commander';
import { Store, asError } from '../blockstore/index.js';
import { mountStore } from '../fuse/index.js';
import { exitOnUnhandled } from './exit.js';
import { storeDir } from './store-commands.js';
import { addLogOptions, logFromOptions } from './log-options.js';
import { applyConfig } from './config.js';

/** Registers `mount` on `program`. */
export function addMountCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const mount = program.command('mount')
    .description('show the store as files under DIR (volumes/<vol>, snapshots/<vol@snap>) until SIGTERM')
    .argument('<dir>', 'mount point (an existing directory)')
    .option('--allow-other', 'let other users read the view (only this user writes); by default only this user may use it')
    .option('--config <file>', 'read settings from a TOML file: mount\'s long options (and store); flags given here win')
    .hook('preAction', (cmd) => {
      const file = cmd.opts().config as string | undefined;
      if (file !== undefined) applyConfig(cmd, file);
    });
  addLogOptions(mount)
    .action((dir: string, o: { allowOther?: boolean }, cmd: Command) => run(async () => {
      const log = logFromOptions(cmd);
      exitOnUnhandled('dormant mount', log);
      const store = await Store.open(storeDir(cmd), { log, relocate: true });
      let view: Awaited<ReturnType<typeof mountStore>>;
      try {
        view = await mountStore(store, dir, { log, allowOther: Boolean(o.allowOther) });
      } catch (err) {
        await store.close();
        throw err;
      }
      log(`dormant mount: store ${store.dir} on ${view.dir} (volumes/, snapshots/)`, { store: store.dir, mount: view.dir });
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = (sig: string) => {
          if (stopping) { log(`dormant mount: ${sig} again: already stopping, still flushing`, { signal: sig }); return; }
          stopping = true;
          log(`dormant mount: ${sig}: unmounting ${view.dir}, flushing`, { signal: sig });
          void (async () => {
            await view.unmount().catch((err: Error) => log(`dormant mount: ${err.message}`, asError(err, { step: 'unmount' })));
            // A final flush that fails (a broken disk) is one line and exit 2, not an unhandled rejection.
            const closed = await store.close().then(() => true, (err: Error) => {
              log(`dormant mount: closing the store: ${err.message}`, asError(err, { step: 'closing the store' }));
              return false;
            });
            if (!closed) process.exitCode = 2;
            log(closed ? 'dormant mount: stopped' : 'dormant mount: stopped, with a problem above', closed ? {} : { level: 'warn' });
            resolve();
          })();
        };
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGINT', () => stop('SIGINT'));
      });
    }));
}
