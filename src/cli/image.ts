/**
 * `dormant image build-test-guest <name>`: builds the test guest (src/guest-image)
 * into the image cache, then imports it as volume <name> with snapshot
 * <name>@base (through the daemon when one owns the store). A marker snapshot
 * <name>@input-<hash> records the inputs, so a rerun skips the import.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { DormantError, isDormantError, type VolumeInfo } from '../blockstore/index.js';
import { buildTestGuest, DEFAULT_IMAGE_SIZE, defaultCacheDir, inputSnapshotName, metaPath } from '../guest-image/index.js';
import { formatBytes, parseSize, VOLUME_SIZE_LIMIT } from './format.js';
import { withStore } from './store-commands.js';
import { isQuiet } from './quiet.js';

const print = (s: string) => process.stdout.write(`${s}\n`);
const log = (s: string) => process.stderr.write(`${s}\n`);

/** Registers `image` and its subcommands on `program`. */
export function addImageCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const image = program.command('image').description('golden images for VMs');
  image.command('build-test-guest <name>')
    .description('build a small bootable Debian-kernel + busybox guest (httpd on port 80) and import it as <name>@base')
    .exitOverride()
    .option('--size <size>', 'root disk size', String(DEFAULT_IMAGE_SIZE))
    .option('--cache-dir <dir>', 'where kernel, initramfs and image are kept (default: $XDG_CACHE_HOME/dormant/images)')
    .option('-v, --verbose', 'build steps on stderr (the default when stderr is a terminal, unless -q)')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { size: string; cacheDir?: string; verbose?: boolean; json?: boolean }, cmd: Command) => run(async () => {
      const started = Date.now();
      const size = parseSize(o.size, VOLUME_SIZE_LIMIT);
      const cacheDir = path.resolve(o.cacheDir ?? defaultCacheDir());
      const steps = o.verbose || (process.stderr.isTTY && !isQuiet());
      const { meta, cached } = await buildTestGuest(name, { size, cacheDir, log: steps ? log : undefined });
      const marker = inputSnapshotName(meta.inputHash);
      const imported = await withStore(cmd, async (c) => {
        let info: VolumeInfo | undefined;
        try {
          info = await c.info(name);
        } catch (err) {
          if (!isDormantError(err) || err.code !== 'ENOENT') throw err;
        }
        if (info) {
          if (info.type === 'volume' && info.snapshots.some((s) => s === `${name}@${marker}` || s === marker)) return false;
          throw new DormantError('EEXIST',
            `volume ${name} exists and was not imported from these inputs (remove it first: dormant rm ${name})`);
        }
        await c.importFile(name, meta.image, 'disk', 'raw');
        await c.snapshot(name, 'base');
        await c.snapshot(name, marker);
        return true;
      });
      if (o.json) {
        process.stdout.write(`${JSON.stringify({
          name: meta.name, volume: name, snapshot: `${name}@base`, size: meta.size, kernelRelease: meta.kernelRelease, cached, imported,
          kernel: meta.kernel, initrd: meta.initrd, cmdline: meta.cmdline, meta: metaPath(cacheDir, name),
          seconds: (Date.now() - started) / 1000,
        }, null, 2)}\n`);
        return;
      }
      print(`${cached ? 'image up to date (cached)' : 'image built'}: ${meta.name} ${formatBytes(meta.size)}, kernel ${meta.kernelRelease}; `
        + `${imported ? `imported as ${name}@base` : `${name}@base already imported from the same inputs, import skipped`}`
        + ` (${((Date.now() - started) / 1000).toFixed(1)} s)`);
      print(`  kernel:  ${meta.kernel}`);
      print(`  initrd:  ${meta.initrd}`);
      print(`  cmdline: ${meta.cmdline} dormant.hostname=<name>`);
      print(`  meta:    ${metaPath(cacheDir, name)}`);
    }));
}
