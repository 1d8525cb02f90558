/**
 * The host agent's control operations: what the CLI asks of a store, whether
 * it opens the store itself (LocalControl) or talks to the daemon that owns
 * it (RemoteControl over the control socket, control-client.ts). Both
 * implement every method, so a command never knows which one it has.
 */
import {
  Store, type GcResult, type StoreStats, type VolumeInfo, type VolumeKind, type VolumeSummary,
} from '../blockstore/index.js';
import { exportFile, importFile, type ProgressFn, type TransferResult } from '../blockstore/transfer.js';

/** File name of the daemon's control socket inside the store directory. */
export const CONTROL_SOCKET_NAME = 'control.sock';

/** Store operations offered by a host. */
export interface StoreControl {
  createVolume(name: string, size: number, kind: VolumeKind): Promise<void>;
  snapshot(volume: string, snap: string): Promise<string>;
  branch(name: string, from: string): Promise<void>;
  remove(name: string): Promise<string[]>;
  list(): Promise<VolumeSummary[]>;
  info(name: string): Promise<VolumeInfo>;
  stats(): Promise<StoreStats>;
  gc(): Promise<GcResult>;
  /** Consistency check of the store; one line per problem, [] when consistent. */
  check(): Promise<string[]>;
  /** `file` is a path on the host that owns the store. */
  importFile(name: string, file: string, kind: VolumeKind, progress?: ProgressFn): Promise<TransferResult>;
  exportFile(name: string, file: string, progress?: ProgressFn): Promise<TransferResult>;
  /** Releases the store (local) or the connection (remote). */
  close(): Promise<void>;
}

/** Names of the operations, as used on the wire. */
export const CONTROL_OPS = [
  'createVolume', 'snapshot', 'branch', 'remove', 'list', 'info', 'stats', 'gc', 'check', 'importFile', 'exportFile',
] as const;

/** One control operation name. */
export type ControlOp = typeof CONTROL_OPS[number];

/** StoreControl over a Store this process owns. `own`: close the store on close(). */
export class LocalControl implements StoreControl {
  constructor(readonly store: Store, private readonly own: boolean) {}

  createVolume(name: string, size: number, kind: VolumeKind) { return this.store.createVolume(name, size, kind); }
  snapshot(volume: string, snap: string) { return this.store.snapshot(volume, snap); }
  branch(name: string, from: string) { return this.store.branch(name, from); }
  remove(name: string) { return this.store.remove(name); }
  list() { return this.store.list(); }
  info(name: string) { return this.store.info(name); }
  stats() { return this.store.stats(); }
  gc() { return this.store.gc(); }
  check() { return this.store.check(); }
  importFile(name: string, file: string, kind: VolumeKind, progress?: ProgressFn) {
    return importFile(this.store, name, file, kind, progress);
  }
  exportFile(name: string, file: string, progress?: ProgressFn) {
    return exportFile(this.store, name, file, progress);
  }
  async close() { if (this.own) await this.store.close(); }
}
