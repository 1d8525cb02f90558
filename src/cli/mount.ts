/**
 * `dormant mount DIR`: the FUSE view alone, in the foreground. Owns the
 * store like `serve` does (a second owner gets "locked"); `dormant serve
 * --mount DIR` gives the same view next to NBD. A stale mount left by a
 * killed daemon is cleaned first, with a line saying so. SIGTERM/SIGINT:
 * unmount, flush, release the store, exit 0.
 */
import type { Command } from 'commander';
import { Store } from '../blockstore/index.js';
import { mountStore } from '../fuse/index.js';
import { exitOnUnhandled } from './exit.js';
import { storeDir } from './store-commands.js';

const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);

/** Registers `mount` on `program`. */
export function addMountCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('mount')
    .description('show the store as files under DIR (volumes/<vol>, snapshots/<vol@snap>) until SIGTERM')
    .argument('<dir>', 'mount point (an existing directory)')
    .option('--allow-other', 'let other users read the view (only this user writes); by default only this user may use it')
    .action((dir: string, o: { allowOther?: boolean }, cmd: Command) => run(async () => {
      exitOnUnhandled('dormant mount', log);
      const store = await Store.open(storeDir(cmd), { log });
      let mount: Awaited<ReturnType<typeof mountStore>>;
      try {
        mount = await mountStore(store, dir, { log, allowOther: Boolean(o.allowOther) });
      } catch (err) {
        await store.close();
        throw err;
      }
      log(`dormant mount: store ${store.dir} on ${mount.dir} (volumes/, snapshots/)`);
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = (sig: string) => {
          if (stopping) { log(`dormant mount: ${sig} again: already stopping, still flushing`); return; }
          stopping = true;
          log(`dormant mount: ${sig}: unmounting ${mount.dir}, flushing`);
          void (async () => {
            await mount.unmount().catch((err: Error) => log(`dormant mount: ${err.message}`));
            // A final flush that fails (a broken disk) is one line and exit 2, not an unhandled rejection.
            const closed = await store.close().then(() => true, (err: Error) => {
              log(`dormant mount: closing the store: ${err.message}`);
              return false;
            });
            if (!closed) process.exitCode = 2;
            log(closed ? 'dormant mount: stopped' : 'dormant mount: stopped, with a problem above');
            resolve();
          })();
        };
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGINT', () => stop('SIGINT'));
      });
    }));
}
