/**
 * The catalog: volumes, snapshots and lineages, held in memory and written
 * through to the index (`catalog` database) by the store's commits.
 *
 * A **lineage** is the block map of one writable volume and all its
 * snapshots. Entries carry the version they were written at; the volume
 * (the head) writes at `headVersion`, and a snapshot freezes a version:
 * taking one records `headVersion` and increments it, which is O(1).
 * A **branch** is a new lineage whose parent is a frozen point
 * (lineage, version) of another. Reading a block of point (L, v) looks up
 * the newest entry of L at version <= v, then the parent point, and so on:
 * the cost grows with branch depth, never with the number of snapshots.
 *
 * Names: volumes `[A-Za-z0-9][A-Za-z0-9._-]*`, snapshots `<volume>@<snap>`.
 */
import { DormantError } from './errors.js';
import type { VolumeKind } from './types.js';

/** A frozen or live point of a lineage. */
export interface Point { lineage: number; version: number }

/** A lineage record. */
export interface LineageRec {
  id: number;
  parent: Point | null;
  /** `vol@snap` the lineage was branched from. */
  origin: string | null;
  headVersion: number;
}

/** A writable volume. */
export interface VolumeRec { name: string; kind: VolumeKind; size: number; lineage: number; created: string }

/** A snapshot `volume@snap`. */
export interface SnapshotRec {
  name: string;
  volume: string;
  kind: VolumeKind;
  size: number;
  lineage: number;
  version: number;
  created: string;
}

/** What a name resolves to for reading and writing. */
export interface ResolvedName {
  name: string;
  kind: VolumeKind;
  size: number;
  lineage: number;
  /** Snapshots are read-only. */
  readOnly: boolean;
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/;

/** Throws EINVAL unless `name` is a valid volume or snapshot label. */
export function checkName(name: string, what = 'volume name'): void {
  if (!NAME_RE.test(name)) {
    throw new DormantError('EINVAL',
      `invalid ${what} '${name}': use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit`);
  }
}

/** Splits `vol@snap`; snap is null for a plain volume name. */
export function splitName(full: string): { volume: string; snap: string | null } {
  const at = full.indexOf('@');
  if (at < 0) return { volume: full, snap: null };
  return { volume: full.slice(0, at), snap: full.slice(at + 1) };
}

/** The in-memory catalog. Mutations return the keys/records to persist. */
export class Catalog {
  readonly volumes = new Map<string, VolumeRec>();
  readonly snapshots = new Map<string, SnapshotRec>();
  readonly lineages = new Map<number, LineageRec>();
  private nextLineage = 1;
  /** Counts changes: what was derived from the catalog (a handle's point, its size) is stale once it moves. */
  epoch = 0;

  /** Loads the catalog from (key, record) pairs of the index. */
  load(entries: Iterable<{ key: string; value: unknown }>): void {
    this.epoch++;
    for (const { key, value } of entries) {
      if (key.startsWith('v:')) this.volumes.set(key.slice(2), value as VolumeRec);
      else if (key.startsWith('s:')) this.snapshots.set(key.slice(2), value as SnapshotRec);
      else if (key.startsWith('l:')) {
        const l = value as LineageRec;
        this.lineages.set(l.id, l);
        this.nextLineage = Math.max(this.nextLineage, l.id + 1);
      } else if (key === 'n:nextLineage') {
        this.nextLineage = Math.max(this.nextLineage, value as number);
      }
    }
  }

  /** Volume or snapshot by full name, or ENOENT. */
  resolve(full: string): ResolvedName {
    const { snap } = splitName(full);
    if (snap === null) {
      const v = this.volumes.get(full);
      if (!v) throw new DormantError('ENOENT', `unknown volume '${full}'`, { volume: full });
      return { name: full, kind: v.kind, size: v.size, lineage: v.lineage, readOnly: false };
    }
    const s = this.snapshots.get(full);
    if (!s) throw new DormantError('ENOENT', `unknown snapshot '${full}'`, { volume: full });
    return { name: full, kind: s.kind, size: s.size, lineage: s.lineage, readOnly: true };
  }

  /** The point a name reads at now. */
  pointOf(full: string): Point {
    const { snap } = splitName(full);
    if (snap === null) {
      const v = this.resolve(full);
      return { lineage: v.lineage, version: this.lineage(v.lineage).headVersion };
    }
    const s = this.snapshots.get(full);
    if (!s) throw new DormantError('ENOENT', `unknown snapshot '${full}'`, { volume: full });
    return { lineage: s.lineage, version: s.version };
  }

  /** Lineage record (must exist). */
  lineage(id: number): LineageRec {
    const l = this.lineages.get(id);
    if (!l) throw new DormantError('EINTERNAL', `lineage ${id} is missing from the catalog`);
    return l;
  }

  /** The points to search for a block of `p`: p, its parent point, and so on. */
  chain(p: Point): Point[] {
    const out: Point[] = [p];
    let l = this.lineage(p.lineage);
    while (l.parent) {
      out.push(l.parent);
      l = this.lineage(l.parent.lineage);
    }
    return out;
  }

  /** Origins of a name up to the root: ['golden@base', ...]. */
  originChain(full: string): string[] {
    const out: string[] = [];
    let l: LineageRec | undefined = this.lineage(this.resolve(full).lineage);
    while (l?.origin) {
      out.push(l.origin);
      l = l.parent ? this.lineages.get(l.parent.lineage) : undefined;
    }
    return out;
  }

  /** Names of volumes branched from snapshot `full`. */
  branchesOf(full: string): string[] {
    const out: string[] = [];
    for (const v of this.volumes.values()) {
      if (this.lineage(v.lineage).origin === full) out.push(v.name);
    }
    return out.sort();
  }

  /** Snapshot names of a volume. */
  snapshotsOf(volume: string): string[] {
    return [...this.snapshots.values()].filter((s) => s.volume === volume).map((s) => s.name).sort();
  }

  /** Versions of lineage `id` that something can still read (snapshots and the head). */
  retainedVersions(id: number): number[] {
    const out: number[] = [];
    for (const s of this.snapshots.values()) if (s.lineage === id) out.push(s.version);
    for (const v of this.volumes.values()) if (v.lineage === id) out.push(this.lineage(id).headVersion);
    return [...new Set(out)].sort((a, b) => a - b);
  }

  /** True when `name` (volume or snapshot) is taken. */
  exists(full: string): boolean {
    return this.volumes.has(full) || this.snapshots.has(full);
  }

  /** Adds a new root volume; returns records to persist. */
  addVolume(name: string, size: number, kind: VolumeKind, parent: Point | null, origin: string | null): PersistOps {
    this.epoch++;
    checkName(name);
    if (this.exists(name)) throw new DormantError('EEXIST', `volume '${name}' already exists`, { volume: name });
    const lineage: LineageRec = { id: this.nextLineage++, parent, origin, headVersion: 1 };
    const vol: VolumeRec = { name, kind, size, lineage: lineage.id, created: new Date().toISOString() };
    this.lineages.set(lineage.id, lineage);
    this.volumes.set(name, vol);
    // Lineage ids are never reused: a removed lineage's entries wait for GC.
    return { put: [[`l:${lineage.id}`, lineage], [`v:${name}`, vol], ['n:nextLineage', this.nextLineage]], remove: [] };
  }

  /** Freezes the head of `volume` as `volume@snap`; returns records to persist. */
  addSnapshot(volume: string, snap: string): PersistOps {
    this.epoch++;
    checkName(snap, 'snapshot name');
    const v = this.volumes.get(volume);
    if (!v) throw new DormantError('ENOENT', `unknown volume '${volume}'`, { volume });
    const full = `${volume}@${snap}`;
    if (this.snapshots.has(full)) throw new DormantError('EEXIST', `snapshot '${full}' already exists`, { volume: full });
    const l = this.lineage(v.lineage);
    const rec: SnapshotRec = {
      name: full, volume, kind: v.kind, size: v.size, lineage: l.id, version: l.headVersion,
      created: new Date().toISOString(),
    };
    this.snapshots.set(full, rec);
    l.headVersion++;
    return { put: [[`s:${full}`, rec], [`l:${l.id}`, { ...l }]], remove: [] };
  }

  /** Removes a snapshot; the caller has checked it has no branches. */
  removeSnapshot(full: string): PersistOps {
    this.epoch++;
    this.snapshots.delete(full);
    return { put: [], remove: [`s:${full}`] };
  }

  /** Removes a volume, its snapshots and its lineage; the caller checked dependents. */
  removeVolume(name: string): PersistOps {
    this.epoch++;
    const v = this.volumes.get(name);
    if (!v) throw new DormantError('ENOENT', `unknown volume '${name}'`, { volume: name });
    const remove = [`v:${name}`, `l:${v.lineage}`];
    for (const s of this.snapshotsOf(name)) {
      this.snapshots.delete(s);
      remove.push(`s:${s}`);
    }
    this.volumes.delete(name);
    this.lineages.delete(v.lineage);
    return { put: [], remove };
  }

  /** Renames a volume without snapshots (so nothing names it in an origin); returns the records to persist. */
  renameVolume(from: string, to: string): PersistOps {
    const v = this.volumes.get(from);
    if (!v) throw new DormantError('ENOENT', `unknown volume '${from}'`, { volume: from });
    checkName(to);
    if (this.exists(to)) throw new DormantError('EEXIST', `volume '${to}' already exists`, { volume: to });
    if (this.snapshotsOf(from).length > 0) throw new DormantError('EBUSY', `cannot rename '${from}': it has snapshots`, { volume: from });
    this.epoch++;
    const rec = { ...v, name: to };
    this.volumes.delete(from);
    this.volumes.set(to, rec);
    return { put: [[`v:${to}`, rec]], remove: [`v:${from}`] };
  }

  /** Changes a volume's size; returns the record to persist. */
  setSize(name: string, size: number): PersistOps {
    this.epoch++;
    const v = this.volumes.get(name);
    if (!v) throw new DormantError('ENOENT', `unknown volume '${name}'`, { volume: name });
    v.size = size;
    return { put: [[`v:${name}`, { ...v }]], remove: [] };
  }
}

/** Catalog keys to write and delete in one commit. */
export interface PersistOps { put: Array<[string, unknown]>; remove: string[] }
