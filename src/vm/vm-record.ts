/**
 * VM records: the configuration of each VM, one small JSON file per VM in
 * the store directory, STORE/vms/<vm>.json, written atomically (temp file,
 * fsync, rename). The store directory belongs to whoever holds the store's
 * lock, so records are written only by that process: the daemon (through its
 * control operations) or an offline CLI command that opened the store.
 *
 * A VM owns two volumes: its disk branch `<vm>` and its memory volume
 * `<vm>.mem` (RAM size). Next to the record the runner keeps the QMP socket
 * (<vm>.qmp), the serial log (<vm>.log) and the pager's working set
 * (<vm>.ws). Runtime state (running, crashed) is not recorded here: the
 * daemon's supervisor holds it.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DormantError, checkName, splitName, type Store } from '../blockstore/index.js';

/** Directory of VM records inside the store directory. */
export const VMS_DIR = 'vms';
/** Guest RAM must be a multiple of this (huge-page size; QEMU's file backend aligns to it). */
export const RAM_ALIGN = 2 * 1024 * 1024;

/** What `vm create` asks for (kernel files already resolved by the caller). */
export interface VmSpec {
  name: string;
  /** Snapshot the disk is branched from. */
  from: string;
  memoryBytes: number;
  cpus: number;
  /** Test-guest image the kernel comes from, and its files. */
  image: string;
  kernel: string;
  initrd: string;
  /** Base command line of the image (without dormant.hostname). */
  cmdline: string;
  /** Memory the test guest fills at boot (its ballast), and the percentage of it that is alike in every VM. */
  ballastBytes?: number;
  ballastSharedPercent?: number;
  /** When the daemon starts the VM again by itself (default `no`). */
  restart?: RestartPolicy;
}

/**
 * `no`: never by itself. `on-failure`: when QEMU dies (a crash, a signal,
 * a non-zero exit) and when the daemon starts again after the VM was
 * running. `always`: also when the guest powers itself off. A `vm stop`
 * is always respected: a stopped VM stays stopped.
 */
export type RestartPolicy = 'no' | 'on-failure' | 'always';
export const RESTART_POLICIES: readonly RestartPolicy[] = ['no', 'on-failure', 'always'];

/** Checks a `--restart` value. */
export function checkRestart(policy: string): RestartPolicy {
  if (!(RESTART_POLICIES as readonly string[]).includes(policy)) {
    throw new DormantError('EINVAL', `bad --restart '${policy}': use ${RESTART_POLICIES.join(', ')}`);
  }
  return policy as RestartPolicy;
}

/** A VM's configuration, as recorded in the store. */
export interface VmRecord extends VmSpec {
  /** Disk branch volume (= name). */
  disk: string;
  /** Memory volume (`<name>.mem`). */
  memory: string;
  /** Kernel command line, `dormant.hostname=<vm>` included. */
  cmdline: string;
  created: string;
  /** Set by `vm start`, cleared by `vm stop` (and by a power-off the policy does not restart): the daemon brings it back when it starts. */
  wanted?: boolean;
  /**
   * A migration under way (src/migrate): `to` on the source from before the
   * guest pauses until it is released (a daemon that starts again with it
   * set does not start the VM: it may run there), `from` on the destination
   * until the guest runs there (a daemon that starts again with it set
   * removes the VM: the source still has it).
   */
  migration?: { to?: string; from?: string; since: string };
}

/** Paths of a VM's files in the store directory: record, QMP socket, serial log, serial console socket, working set (src/pager). */
export function vmPaths(storeDir: string, name: string): { record: string; qmp: string; log: string; console: string; workingSet: string } {
  const dir = path.join(storeDir, VMS_DIR);
  return {
    record: path.join(dir, `${name}.json`), qmp: path.join(dir, `${name}.qmp`), log: path.join(dir, `${name}.log`),
    console: path.join(dir, `${name}.console`), workingSet: path.join(dir, `${name}.ws`),
  };
}

/** Throws EINVAL unless `name` is a valid VM name (a volume name leaving room for `.mem`). */
export function checkVmName(name: string): void {
  checkName(name, 'VM name');
  if (name.length > 120) throw new DormantError('EINVAL', `invalid VM name '${name}': at most 120 characters`);
}

/** Host RAM (MemTotal of /proc/meminfo) in bytes. */
export function hostMemTotal(): number {
  const m = /^MemTotal:\s+(\d+) kB/m.exec(fs.readFileSync('/proc/meminfo', 'utf8'));
  if (!m) throw new DormantError('EINTERNAL', 'cannot read MemTotal from /proc/meminfo');
  return Number(m[1]) * 1024;
}

/**
 * Guest RAM a ballast leaves at least to the guest's kernel and programs:
 * the test guest's Debian kernel keeps about 50 MiB to itself and its
 * programs need the rest (a 256 MiB VM takes a 160 MiB ballast).
 */
export const BALLAST_HEADROOM = 96 * 1024 * 1024;

/** Throws EINVAL unless the ballast fits guest RAM `memoryBytes` (and the shared percentage is 0-100). */
export function checkBallast(bytes: number, sharedPercent: number, memoryBytes: number): void {
  if (!Number.isSafeInteger(bytes) || bytes < 0 || bytes % 4096 !== 0) {
    throw new DormantError('EINVAL', `bad --ballast '${bytes}': a whole number of 4 KiB pages`);
  }
  if (bytes > memoryBytes - BALLAST_HEADROOM) {
    throw new DormantError('EINVAL', `bad --ballast: ${bytes / 2 ** 20} MiB leaves the guest less than `
      + `${BALLAST_HEADROOM / 2 ** 20} MiB of its ${memoryBytes / 2 ** 20} MiB`);
  }
  if (!Number.isInteger(sharedPercent) || sharedPercent < 0 || sharedPercent > 100) {
    throw new DormantError('EINVAL', `bad --ballast-shared '${sharedPercent}': use 0% to 100%`);
  }
}

/** Throws EINVAL unless `bytes` is a usable guest RAM size on this host. */
export function checkMemory(bytes: number, text = String(bytes)): void {
  if (!Number.isSafeInteger(bytes) || bytes <= 0 || bytes % RAM_ALIGN !== 0) {
    throw new DormantError('EINVAL', `bad memory '${text}': must be a multiple of 2 MiB`);
  }
  const total = hostMemTotal();
  if (bytes > total) {
    throw new DormantError('EINVAL', `bad memory '${text}': larger than this host's RAM (${Math.floor(total / 2 ** 20)} MiB)`);
  }
}

/** Reads a VM record; ENOENT when there is none. */
export function readVm(storeDir: string, name: string): VmRecord {
  checkVmName(name);
  try {
    return JSON.parse(fs.readFileSync(vmPaths(storeDir, name).record, 'utf8')) as VmRecord;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') throw new DormantError('ENOENT', `unknown VM '${name}'`);
    throw err;
  }
}

/** Every VM record, sorted by name. */
export function listVms(storeDir: string): VmRecord[] {
  const dir = path.join(storeDir, VMS_DIR);
  if (!fs.existsSync(dir)) return [];
  return fs.readdirSync(dir).filter((f) => f.endsWith('.json')).sort()
    .map((f) => JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8')) as VmRecord);
}

/** Writes `rec` atomically (temp file, fsync, rename, fsync of the directory). */
export function writeVm(storeDir: string, rec: VmRecord): void {
  const dir = path.join(storeDir, VMS_DIR);
  fs.mkdirSync(dir, { recursive: true });
  const file = vmPaths(storeDir, rec.name).record;
  const tmp = `${file}.tmp-${process.pid}`;
  const fd = fs.openSync(tmp, 'w', 0o600);
  try {
    fs.writeSync(fd, `${JSON.stringify(rec, null, 2)}\n`);
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
  fs.renameSync(tmp, file);
  const dfd = fs.openSync(dir, 'r');
  try { fs.fsyncSync(dfd); } finally { fs.closeSync(dfd); }
}

/**
 * Creates VM `spec.name` in `store` (whose directory this process owns):
 * disk branch, memory volume, record. Undoes what it made when a step fails.
 */
export async function createVm(store: Store, spec: VmSpec): Promise<VmRecord> {
  checkVmName(spec.name);
  checkMemory(spec.memoryBytes);
  if (!Number.isInteger(spec.cpus) || spec.cpus < 1 || spec.cpus > 64) {
    throw new DormantError('EINVAL', `bad --cpus '${spec.cpus}': use 1 to 64`);
  }
  if (splitName(spec.from).snap === null) {
    throw new DormantError('EINVAL', `bad --from '${spec.from}': name a snapshot, volume@snap`);
  }
  checkBallast(spec.ballastBytes ?? 0, spec.ballastSharedPercent ?? 0, spec.memoryBytes);
  await store.info(spec.from); // ENOENT: unknown snapshot
  if (fs.existsSync(vmPaths(store.dir, spec.name).record)) throw new DormantError('EEXIST', `VM '${spec.name}' exists`);
  const memory = `${spec.name}.mem`;
  await store.branch(spec.name, spec.from);
  try {
    await store.createVolume(memory, spec.memoryBytes, 'memory');
  } catch (err) {
    await store.remove(spec.name).catch(() => undefined);
    throw err;
  }
  const rec: VmRecord = {
    name: spec.name, disk: spec.name, memory, from: spec.from, memoryBytes: spec.memoryBytes, cpus: spec.cpus,
    image: spec.image, kernel: spec.kernel, initrd: spec.initrd,
    cmdline: `${spec.cmdline} dormant.hostname=${spec.name}`, created: new Date().toISOString(),
  };
  if (spec.restart && spec.restart !== 'no') rec.restart = checkRestart(spec.restart);
  if (spec.ballastBytes) {
    rec.ballastBytes = spec.ballastBytes;
    rec.ballastSharedPercent = spec.ballastSharedPercent ?? 0;
    rec.cmdline += ` dormant.ballast=${spec.ballastBytes} dormant.ballast_shared=${rec.ballastSharedPercent}`;
  }
  try {
    writeVm(store.dir, rec);
  } catch (err) {
    for (const v of [memory, spec.name]) await store.remove(v).catch(() => undefined);
    throw err;
  }
  return rec;
}

/**
 * What a VM uses of the store: `name` as the disk or memory volume of a VM
 * record, or undefined. Snapshots of a VM's disk are the user's own.
 */
export function vmUsing(storeDir: string, name: string): { vm: string; role: 'disk' | 'memory' } | undefined {
  for (const rec of listVms(storeDir)) {
    if (rec.disk === name) return { vm: rec.name, role: 'disk' };
    if (rec.memory === name) return { vm: rec.name, role: 'memory' };
  }
  return undefined;
}

/**
 * Removes VM `name` (not running: the caller checks): its memory volume,
 * its disk branch with the disk's snapshots, then its record, serial log
 * and working set. Refused (EBUSY) before anything is removed when a branch
 * depends on the disk or one of its snapshots. A volume already gone is
 * skipped; with `keepVolumes` the volumes stay (a VM moved lazily: its
 * destination still fetches chunks from them). Returns the volumes removed.
 */
export async function removeVm(store: Store, name: string, keepVolumes = false): Promise<string[]> {
  const rec = readVm(store.dir, name);
  const volumes = keepVolumes ? [] : [rec.memory, rec.disk].filter((v) => store.describe(v));
  for (const v of volumes) {
    const deps = (await store.info(v)).branches;
    if (deps.length > 0) {
      throw new DormantError('EBUSY', `cannot remove VM '${name}': ${deps.join(', ')} branch${deps.length > 1 ? 'es' : ''} `
        + `from its ${v === rec.disk ? 'disk' : 'memory'} '${v}' (remove ${deps.length > 1 ? 'them' : 'it'} first)`);
    }
  }
  const removed: string[] = [];
  for (const v of volumes) removed.push(...await store.remove(v));
  const p = vmPaths(store.dir, name);
  for (const f of [p.record, p.log, p.qmp, p.console, p.workingSet]) fs.rmSync(f, { force: true });
  return removed;
}

/** Records a migration under way in VM `name`'s record (VmRecord.migration), or clears it (undefined). */
export function setMigration(storeDir: string, name: string, migration: VmRecord['migration']): void {
  const { migration: _old, ...rec } = readVm(storeDir, name);
  writeVm(storeDir, migration ? { ...rec, migration } : rec);
}
