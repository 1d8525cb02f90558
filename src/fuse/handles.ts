/**
 * Store handles behind the FUSE files: one VolumeHandle per volume or
 * snapshot name, shared by every open file descriptor of that name.
 *
 * State per name: `opens` (FUSE opens not yet released) and the handle
 * promise. The handle is opened on the first open(2) and closed when the
 * last file descriptor is released, so `dormant rm` works again once no one
 * has the file open. The kernel may still write back dirty pages of a shared
 * mapping after the last release: a read or write with no open file takes a
 * transient handle (`withHandle`), closed as soon as the call is done.
 *
 * Ordering rule: a close waits for calls in flight on that handle (`busy`),
 * so a handle is never closed under a read or write.
 */
import type { Store, VolumeHandle } from '../blockstore/index.js';

interface Slot {
  opens: number;
  busy: number;
  handle: Promise<VolumeHandle>;
  idle: (() => void)[];
}

/** Reference-counted VolumeHandles keyed by store name (`vol` or `vol@snap`). */
export class HandlePool {
  private readonly slots = new Map<string, Slot>();

  constructor(private readonly store: Store) {}

  /** Counts one more open of `name`, opening its handle if it is the first. */
  async acquire(name: string): Promise<void> {
    const slot = this.slot(name);
    slot.opens++;
    try {
      await slot.handle;
    } catch (err) {
      slot.opens--;
      this.dropIfUnused(name, slot);
      throw err;
    }
  }

  /** Releases one open of `name`; the last one closes the handle. */
  async release(name: string): Promise<void> {
    const slot = this.slots.get(name);
    if (!slot || slot.opens === 0) return;
    slot.opens--;
    await this.dropIfUnused(name, slot);
  }

  /** Runs `fn` on the handle of `name`, opening a transient one if no file is open. */
  async withHandle<T>(name: string, fn: (h: VolumeHandle) => Promise<T>): Promise<T> {
    const slot = this.slot(name);
    slot.busy++;
    try {
      return await fn(await slot.handle);
    } finally {
      slot.busy--;
      if (slot.busy === 0) for (const wake of slot.idle.splice(0)) wake();
      await this.dropIfUnused(name, slot);
    }
  }

  /** Closes every handle (unmount). */
  async closeAll(): Promise<void> {
    const slots = [...this.slots.entries()];
    this.slots.clear();
    await Promise.all(slots.map(async ([, slot]) => {
      if (slot.busy > 0) await new Promise<void>((resolve) => slot.idle.push(resolve));
      const h = await slot.handle.catch(() => null);
      await h?.close().catch(() => undefined);
    }));
  }

  private slot(name: string): Slot {
    let slot = this.slots.get(name);
    if (!slot) {
      const handle = this.store.openVolume(name);
      handle.catch(() => undefined); // observed by acquire/withHandle
      slot = { opens: 0, busy: 0, handle, idle: [] };
      this.slots.set(name, slot);
    }
    return slot;
  }

  private async dropIfUnused(name: string, slot: Slot): Promise<void> {
    if (slot.opens > 0 || slot.busy > 0 || this.slots.get(name) !== slot) return;
    this.slots.delete(name);
    const h = await slot.handle.catch(() => null);
    await h?.close().catch(() => undefined);
  }
}
