/**
 * NbdBackend over the block store.
 *
 * Exports are the store's volumes (`vol`, writable) and snapshots
 * (`vol@snap`, read-only). Connections to the same export share one
 * VolumeHandle, reference-counted: a FLUSH on any connection then covers the
 * writes of all of them (what NBD_FLAG_CAN_MULTI_CONN promises), and the
 * store sees one open handle per export. The shared handle is closed when
 * the last connection releases it.
 *
 * Each export counts the requests it served (every read, write, trim,
 * zero, flush and cache through any of its connections): the pager reads a
 * VM's disk activity there (`requestsServed`).
 */
import { DormantError, isDormantError } from '../blockstore/index.js';
import type { VolumeEntry, VolumeHandle } from '../blockstore/index.js';
import type { ExportInfo, NbdBackend } from './backend.js';

/** The part of the store the NBD backend uses. */
export interface ExportableStore {
  entries(): VolumeEntry[];
  describe(name: string): VolumeEntry | null;
  openVolume(name: string): Promise<VolumeHandle>;
}

/** Options of the store backend. */
export interface StoreBackendOptions {
  /** Export every volume read-only (`dormant serve --read-only`). */
  readOnly?: boolean;
}

/** "1 GiB"-style size for descriptions. */
function formatSize(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let u = 0;
  while (v >= 1024 && u < units.length - 1 && v % 1024 === 0) {
    v /= 1024;
    u++;
  }
  return `${v} ${units[u]}`;
}

/** The description NBD clients see for a volume: kind, size, origin. */
export function describeVolume(v: VolumeEntry): string {
  const parts = [v.type === 'snapshot' ? `${v.kind} snapshot` : v.kind, formatSize(v.size)];
  if (v.origin !== null) parts.push(`from ${v.origin}`);
  return parts.join(', ');
}

interface Shared {
  handle: Promise<VolumeHandle>;
  refs: number;
}

/** Serves a store's volumes and snapshots as NBD exports. */
export class StoreBackend implements NbdBackend {
  private readonly open = new Map<string, Shared>();
  private readonly served = new Map<string, number>();
  private readonly readOnly: boolean;

  constructor(private readonly store: ExportableStore, opts: StoreBackendOptions = {}) {
    this.readOnly = opts.readOnly ?? false;
  }

  private toExport(v: VolumeEntry): ExportInfo {
    return { name: v.name, description: describeVolume(v), size: v.size, readOnly: this.readOnly || v.type === 'snapshot' };
  }

  /** Every volume and snapshot. */
  async listExports(): Promise<ExportInfo[]> {
    return this.store.entries().map((v) => this.toExport(v));
  }

  /** One volume or snapshot by name; null when unknown. */
  async describeExport(name: string): Promise<ExportInfo | null> {
    const v = this.store.describe(name);
    return v === null ? null : this.toExport(v);
  }

  /** Requests served on export `name` since the server started (0 when none). */
  requestsServed(name: string): number {
    return this.served.get(name) ?? 0;
  }

  /** A reference to the shared handle of `name`; null when unknown. */
  async openExport(name: string): Promise<VolumeHandle | null> {
    let shared = this.open.get(name);
    if (shared === undefined) {
      shared = { handle: this.store.openVolume(name), refs: 0 };
      this.open.set(name, shared);
    }
    shared.refs++;
    let handle: VolumeHandle;
    try {
      handle = await shared.handle;
    } catch (err) {
      if (--shared.refs === 0 && this.open.get(name) === shared) this.open.delete(name);
      if (isDormantError(err, 'ENOENT', 'EINVAL')) return null;
      throw err;
    }
    return this.reference(name, shared, handle);
  }

  private reference(name: string, shared: Shared, h: VolumeHandle): VolumeHandle {
    let released = false;
    const release = async (): Promise<void> => {
      if (released) return;
      released = true;
      if (--shared.refs > 0) return;
      if (this.open.get(name) === shared) this.open.delete(name);
      await h.close();
    };
    const readOnly = this.readOnly || h.readOnly;
    const refuse = async (): Promise<never> => {
      throw new DormantError('EROFS', `'${name}' is exported read-only`, { volume: name });
    };
    const served = this.served;
    const count = () => { served.set(name, (served.get(name) ?? 0) + 1); };
    return {
      name: h.name,
      kind: h.kind,
      readOnly,
      get size() {
        return h.size;
      },
      read: (offset, length, opts) => { count(); return h.read(offset, length, opts); },
      readView: (offset, length, opts) => { count(); return h.readView(offset, length, opts); },
      readFile: (offset, length, opts) => { count(); return h.readFile(offset, length, opts); },
      write: (offset, data, opts) => { count(); return readOnly ? refuse() : h.write(offset, data, opts); },
      writeNow: (offset, data) => { count(); return readOnly ? false : h.writeNow(offset, data); },
      landing: (offset, length) => { count(); return readOnly ? null : h.landing(offset, length); },
      abandon: (buffer) => h.abandon(buffer),
      trim: (offset, length, opts) => { count(); return readOnly ? refuse() : h.trim(offset, length, opts); },
      zero: (offset, length, opts) => { count(); return readOnly ? refuse() : h.zero(offset, length, opts); },
      flush: () => { count(); return h.flush(); },
      cache: (offset, length) => { count(); return h.cache(offset, length); },
      extents: (offset, length) => h.extents(offset, length),
      close: release,
    };
  }
}
