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
import { storeDir } from './store-commands.js';

const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);

/** Registers `mount` on `program`. */
export function addMountCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('mount')
    .description('show the store as files under DIR (volumes/<vol>, snapshots/<vol@snap>) until SIGTERM')
    .argument('<dir>', 'mount point (an existing directory)')
    .action((dir: string, _o: unknown, cmd: Command) => run(async () => {
      const store = await Store.open(storeDir(cmd));
      let mount: Awaited<ReturnType<typeof mountStore>>;
      try {
        mount = await mountStore(store, dir, { log });
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
            await store.close();
            log('dormant mount: stopped');
            resolve();
          })();
        };
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGINT', () => stop('SIGINT'));
      });
    }));
}
