/**
 * What moving a running VM between hosts asks of each side, shared by the
 * source (vm-move.ts) and the destination (vm-arrive.ts): the VM runner's
 * operations (the daemon's supervisor implements them, src/vm), the VM
 * record's fields that travel, and the host API's request and answer
 * bodies of the incoming VM routes.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import type { LazySource } from './lazy.js';

/** How a VM moves: copy (every chunk before it continues there) or lazy (chunks fetched there after). */
export type MoveMode = 'copy' | 'lazy';

/** What a VM migration needs of the VM runner (the daemon's supervisor implements it). */
export interface MovableVms {
  /** The VM's record (ENOENT when there is none). */
  record(name: string): MovableRecord;
  /** True when QEMU runs for the VM (running or paused). */
  isRunning(name: string): boolean;
  /** Records in the VM's record that it is being migrated to `to` (undefined: clears it); see src/vm's VmRecord.migration. */
  markMigrating(name: string, to: string | undefined): void;
  /** QMP stop: the vCPUs stop, QEMU flushes the disk. */
  pause(name: string): Promise<void>;
  /** QMP cont (after a pause or a failed migration). */
  cont(name: string): Promise<void>;
  /** Guest pages faulted in through the FUSE view since QEMU started (reads of its memory file). */
  pagesIn(name: string): number;
  /** Writes the guest's dirty RAM back into its memory volume. */
  writeBack(name: string): Promise<void>;
  /** Runs ([first, count]) of the guest pages the VM touched since its last page-out, at most `max` pages. */
  touchedRuns(name: string, max: number): Promise<Array<[number, number]>>;
  /** Reads page runs `runs` of the VM's memory into the page cache (a VM arriving here); pages read. */
  readInArrival(name: string, runs: Array<[number, number]>): Promise<number>;
  /**
   * Sends QEMU's device state to `uri` (x-ignore-shared set first);
   * resolves once QEMU completed, with the stream's bytes to come once the
   * destination has read it all.
   */
  migrateOut(name: string, uri: string, timeoutMs: number): Promise<{ bytes: Promise<number> }>;
  /** Writes a record received from another host (its volumes are here), marked as arriving from `from` until it runs. */
  adopt(rec: MovableRecord, from: string): void;
  /** Starts QEMU for a VM with `-incoming defer`, x-ignore-shared, listening on `uri` (tcp:HOST:PORT). */
  startIncoming(name: string, uri: string): Promise<void>;
  /** Waits until the incoming migration completed, resumes the guest, and confirms it runs; its status. */
  finishIncoming(name: string, timeoutMs: number): Promise<{ hostPort?: number; state: string }>;
  /** Stops QEMU at once (SIGKILL) if it runs; `reason` is shown in its status. */
  kill(name: string, reason: string): Promise<void>;
  /** After the destination took over: QEMU quits, and the VM, its record and (unless `keepVolumes`) its volumes go. */
  release(name: string, reason: string, keepVolumes?: boolean): Promise<void>;
  /** Removes a VM that does not run, with its record and volumes (an aborted incoming one). */
  remove(name: string): Promise<void>;
  /** The VM whose disk or memory volume `volume` is, if any. */
  usedBy(volume: string): string | undefined;
}

/** The fields of a VM record a move needs (src/vm's VmRecord has them all). */
export interface MovableRecord {
  name: string;
  disk: string;
  memory: string;
  kernel: string;
  initrd: string;
  image: string;
}

/** The answer to POST /v1/vms/<vm>/incoming/finish. */
export interface FinishAnswer {
  hostPort?: number;
  state: string;
  /** Lazy mode: blocks still absent there per volume when the guest continued. */
  lazyBlocks?: Record<string, number>;
}

/** Body of POST /v1/vms/<vm>/incoming. */
export interface IncomingRequest {
  record: MovableRecord;
  kernelSha256: string;
  initrdSha256: string;
  /** The source's name in the cluster on etcd, if it is in one (the VM's location moves from it at the commit point). */
  fromHost?: string;
  /** Lazy mode: where the absent chunks of the VM's volumes are (this request's sender, with a token for them). */
  lazy?: LazySource;
}

/** The longest QEMU's device-state stream may take. */
export const STREAM_TIMEOUT_MS = 120_000;

export function sha256File(file: string): string {
  return crypto.createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}
