/**
 * Store commands: init, import, export, create, branch, snapshot, list,
 * info, rm, gc, stats. Each parses, calls the store, prints; nothing more.
 */
import path from 'node:path';
import os from 'node:os';
import type { Command } from 'commander';
import {
  BLOCK_SIZE, DormantError, IMAGE_FORMATS, Store, checkFormat, isNbdUri, type VolumeKind, type VolumeSummary, type Locality,
} from '../blockstore/index.js';
import {
  CONTROL_SOCKET_NAME, LocalControl, RemoteControl, daemonAnswers, type StoreControl,
} from '../control/index.js';
import { formatBytes, formatRate, parseSize, table, VOLUME_SIZE_LIMIT } from './format.js';
import { Progress } from './progress.js';
import { stdioPath } from './stdio.js';

/** The store directory: --store, else $DORMANT_STORE, else $XDG_DATA_HOME/dormant. */
export function storeDir(cmd: Command): string {
  const opt = cmd.optsWithGlobals().store as string | undefined;
  if (opt) return path.resolve(opt);
  if (process.env.DORMANT_STORE) return path.resolve(process.env.DORMANT_STORE);
  const data = process.env.XDG_DATA_HOME || path.join(os.homedir(), '.local', 'share');
  return path.join(data, 'dormant');
}

/**
 * Runs `fn` against the store: through the daemon's control socket when a
 * `dormant serve` owns it, else by opening the store here (single-writer lock).
 */
export async function withStore<T>(cmd: Command, fn: (s: StoreControl) => Promise<T>): Promise<T> {
  const dir = storeDir(cmd);
  const socket = path.join(dir, CONTROL_SOCKET_NAME);
  const control: StoreControl = await daemonAnswers(socket)
    ? new RemoteControl(socket)
    : new LocalControl(await Store.open(dir), true);
  try {
    return await fn(control);
  } finally {
    await control.close();
  }
}

function parseKind(kind: string): VolumeKind {
  if (kind !== 'disk' && kind !== 'memory') throw new DormantError('EINVAL', `bad kind '${kind}': use disk or memory`);
  return kind;
}

const print = (s: string) => process.stdout.write(`${s}\n`);
const printJson = (v: unknown) => process.stdout.write(`${JSON.stringify(v, null, 2)}\n`);

/** Registers the store commands on `program`. */
export function addStoreCommands(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('init')
    .description('create the store (at --store, $DORMANT_STORE or ~/.local/share/dormant)')
    .action((_o, cmd: Command) => run(async () => {
      const store = await Store.init(storeDir(cmd));
      await store.close();
      print(`initialised store at ${store.dir}`);
    }));

  program.command('import <name> <file>')
    .description('copy an image file (or stdin with -) into a new volume (raw as it is; qcow2, vmdk, vdi, vhdx, vpc... converted by qemu-img); prints its size')
    .option('--kind <kind>', 'disk or memory', 'disk')
    .option('--format <format>', `image format: ${IMAGE_FORMATS.join(', ')} (auto: told by the file's header)`, 'auto')
    .option('--json', 'machine-readable output')
    .action((name: string, file: string, o: { kind: string; format: string; json?: boolean }, cmd: Command) => run(async () => {
      const kind = parseKind(o.kind);
      checkFormat(o.format);
      const progress = new Progress(`import ${name}`, 0);
      const source = isNbdUri(file) ? undefined : await stdioPath(file, 0);
      const r = await withStore(cmd, (c) => c.importFile(name, source?.file ?? file, kind, o.format, (d, t) => progress.update(d, t)))
        .finally(async () => { progress.done(); await source?.finish(); });
      if (o.json) { printJson(r); return; }
      const conv = r.format && r.format !== 'raw' ? ` (${r.format}, converted to raw by qemu-img)` : '';
      print(`imported ${name}${conv}: ${formatBytes(r.size)} (${r.size} bytes), ${formatBytes(r.allocated)} allocated, `
        + `in ${r.seconds.toFixed(2)} s (${formatRate(r.size, r.seconds)})`);
    }));

  program.command('export <volume> <file>')
    .description('copy a volume or snapshot (volume@snap) to a raw image file (sparse), or to stdout with -')
    .option('--json', 'machine-readable output (on stderr when the image goes to stdout)')
    .action((name: string, file: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      const progress = new Progress(`export ${name}`, 0);
      const target = isNbdUri(file) ? undefined : await stdioPath(file, 1);
      const r = await withStore(cmd, (c) => c.exportFile(name, target?.file ?? file, (d, t) => progress.update(d, t)))
        .finally(async () => { progress.done(); await target?.finish(); });
      if (o.json) { (target?.isStdout ? process.stderr : process.stdout).write(`${JSON.stringify(r, null, 2)}\n`); return; }
      if (target?.isStdout) return; // stdout holds the image
      print(`exported ${name} to ${file}: ${formatBytes(r.size)} (${r.size} bytes, ${formatBytes(r.allocated)} allocated) `
        + `in ${r.seconds.toFixed(2)} s`);
    }));

  program.command('create <name>')
    .description('create an empty volume')
    .requiredOption('--size <size>', 'size, e.g. 10G, 512M, 4096')
    .option('--kind <kind>', 'disk or memory', 'disk')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { size: string; kind: string; json?: boolean }, cmd: Command) => run(async () => {
      const size = parseSize(o.size, VOLUME_SIZE_LIMIT);
      const kind = parseKind(o.kind);
      await withStore(cmd, (store) => store.createVolume(name, size, kind));
      if (o.json) { printJson({ volume: name, size, kind }); return; }
      print(`created ${kind} volume ${name}: ${formatBytes(size)} (${size} bytes)`);
    }));

  program.command('branch <new>')
    .description('create a writable volume whose content is a snapshot (O(1))')
    .requiredOption('--from <volume@snap>', 'the snapshot to branch from')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { from: string; json?: boolean }, cmd: Command) => run(async () => {
      await withStore(cmd, (store) => store.branch(name, o.from));
      if (o.json) { printJson({ volume: name, from: o.from }); return; }
      print(`created branch ${name} from ${o.from}`);
    }));

  program.command('snapshot <volume> <snap>')
    .description('freeze a volume as volume@snap (O(1))')
    .option('--json', 'machine-readable output')
    .action((volume: string, snap: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      const full = await withStore(cmd, (store) => store.snapshot(volume, snap));
      if (o.json) { printJson({ snapshot: full }); return; }
      print(`created snapshot ${full}`);
    }));

  program.command('list')
    .description('volumes and snapshots: size, allocated, unique and shared bytes')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const rows = await withStore(cmd, (store) => store.list());
      if (o.json) { printJson({ volumes: rows }); return; }
      if (rows.length === 0) { print('no volumes (create one with: dormant create NAME --size 10G)'); return; }
      print(listTable(rows));
    }));

  program.command('info <name>')
    .description('details of a volume or snapshot: parent chain, sizes, block counts')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      const i = await withStore(cmd, (store) => store.info(name));
      if (o.json) { printJson(i); return; }
      print([
        `name:        ${i.name} (${i.type}, ${i.kind})`,
        `size:        ${formatBytes(i.size)} (${i.size} bytes, ${i.blocks.total} blocks of ${BLOCK_SIZE})`,
        `origin:      ${i.parentChain.length ? i.parentChain.join(' <- ') : '-'}`,
        `allocated:   ${formatBytes(i.allocated)} (${i.blocks.allocated} blocks: ${i.blocks.own} own, ${i.blocks.inherited} inherited)`,
        `holes:       ${i.blocks.holes} blocks`,
        `unique:      ${formatBytes(i.unique)}`,
        `shared:      ${formatBytes(i.shared)}`,
        `snapshots:   ${i.snapshots.length ? i.snapshots.join(', ') : '-'}`,
        `branches:    ${i.branches.length ? i.branches.join(', ') : '-'}`,
        `created:     ${i.created}`,
        `locality:    ${localityLine(i.locality)}`,
      ].join('\n'));
    }));

  program.command('rm <name>')
    .description('remove a volume (with its snapshots) or a snapshot; refused while branches depend on it')
    .option('--json', 'machine-readable output')
    .action((name: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      const removed = await withStore(cmd, (store) => store.remove(name));
      if (o.json) { printJson({ removed }); return; }
      print(`removed ${removed.join(', ')} (run dormant gc to reclaim the space)`);
    }));

  program.command('resize <volume> <size>')
    .description('grow a volume to SIZE, or by +SIZE (as qemu-img resize); shrinking is refused')
    .option('--json', 'machine-readable output')
    .action((name: string, sizeText: string, o: { json?: boolean }, cmd: Command) => run(async () => {
      if (sizeText.startsWith('-')) throw new DormantError('EINVAL', `cannot shrink '${name}': volumes only grow`);
      const by = sizeText.startsWith('+');
      const amount = parseSize(by ? sizeText.slice(1) : sizeText, VOLUME_SIZE_LIMIT);
      const r = await withStore(cmd, async (c) => {
        const oldSize = (await c.info(name)).size;
        const size = by ? oldSize + amount : amount;
        await c.resize(name, size);
        return { volume: name, oldSize, size };
      });
      if (o.json) { printJson(r); return; }
      print(r.size === r.oldSize ? `${name} is already ${formatBytes(r.size)} (${r.size} bytes)`
        : `resized ${name}: ${formatBytes(r.oldSize)} -> ${formatBytes(r.size)} (${r.size} bytes); `
          + 'NBD clients see the new size when they connect again');
    }));

  program.command('gc')
    .description('reclaim space no volume or snapshot uses; prints bytes reclaimed')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const r = await withStore(cmd, (store) => store.gc());
      if (o.json) { printJson(r); return; }
      print(`reclaimed ${formatBytes(r.bytesReclaimed)} (${r.bytesReclaimed} bytes): ${r.chunksFreed} chunks freed, `
        + `${r.deadEntries} dead map entries, ${r.segmentsCompacted} segments compacted, ${r.segmentsDeleted} deleted`);
    }));

  program.command('stats')
    .description('store totals: logical and stored bytes, dedup ratio, segments')
    .option('--json', 'machine-readable output')
    .action((o: { json?: boolean }, cmd: Command) => run(async () => {
      const s = await withStore(cmd, (store) => store.stats());
      if (o.json) { printJson(s); return; }
      print([
        `store:       ${s.path} (format ${s.formatVersion})`,
        `volumes:     ${s.volumes} (+ ${s.snapshots} snapshots)`,
        `logical:     ${formatBytes(s.logicalBytes)} (allocated bytes as volumes see them)`,
        `stored:      ${formatBytes(s.storedBytes)} in ${s.chunks} chunks`,
        `dedup ratio: ${s.dedupRatio.toFixed(2)}`,
        `segments:    ${s.segments} files, ${formatBytes(s.segmentBytes)} (${formatBytes(s.garbageBytes)} reclaimable by gc)`,
        `index:       ${formatBytes(s.indexBytes)}`,
        `locality:    ${localityLine(s.locality)}`,
        ...(s.relocation ? [`relocated:   ${s.relocation.chunksMoved} chunks in the background (${s.relocation.extents} extents looked at, `
          + `${s.relocation.queued} waiting)`] : []),
      ].join('\n'));
    }));
}

/** "12.5 % scattered (1,234 runs over 65,536 sampled blocks)". */
function localityLine(l: Locality): string {
  if (l.sampledBlocks === 0) return '- (no committed blocks)';
  return `${(l.fragmentation * 100).toFixed(1)} % scattered (${l.runs} runs over ${l.sampledBlocks} sampled blocks; `
    + `mean run ${formatBytes((l.sampledBlocks / l.runs) * BLOCK_SIZE)})`;
}

function listTable(rows: VolumeSummary[]): string {
  return table(
    ['NAME', 'TYPE', 'KIND', 'SIZE', 'ALLOCATED', 'UNIQUE', 'SHARED', 'ORIGIN'],
    rows.map((r) => [r.name, r.type, r.kind, formatBytes(r.size), formatBytes(r.allocated), formatBytes(r.unique),
      formatBytes(r.shared), r.origin ?? '-']),
  );
}
