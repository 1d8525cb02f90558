/**
 * A VM's memory fingerprint, read from the store: the set of chunk hashes
 * its memory volume (`<vm>.mem`) references, holes left out, as the store
 * holds it now, i.e. as of the VM's last write-back (a page-out, a
 * migration's pre-copy); summed up as a bottom-k sketch (sketch.ts).
 * Nothing is read or hashed again: the block map gives the chunk ids
 * (Store.chunkMap), the chunk table their hashes (Store.chunkHashes).
 *
 * `VmSketches` is what a host in the cluster publishes (membership.ts): the
 * sketch of each VM that holds memory (running or paused), made again
 * when the VM wrote pages back (its `pagesOut` moved, or it is another
 * QEMU process) and at least every REFRESH_MS otherwise, at most once per
 * MIN_GAP_MS per VM. One call makes sketches for at most BUDGET_MS (a
 * host with many VMs gets theirs over a few ticks; the membership loop's
 * keep-alives must not wait for them); the others keep their last sketch
 * until a later call. State: one entry per VM (the sketch, what it was
 * made from, when); entries of VMs gone or stopped are dropped.
 */
import { asWarn, type LogFn, type Store } from '../blockstore/index.js';
import type { VmEntry } from './cluster-keys.js';
import { FingerprintSketch, SKETCH_K } from './sketch.js';

/** A sketch older than this is made again, changed or not. */
export const REFRESH_MS = 5 * 60_000;
/** A VM's sketch is not made again sooner than this after the last. */
const MIN_GAP_MS = 10_000;
/** Time one publish may spend making sketches (docs/benchmarks.md: the time per GiB). */
const BUDGET_MS = 1000;
/** VM states whose memory the planner places. */
export const PLACED_STATES: readonly string[] = ['running', 'paused'];

/** The distinct chunk hashes of volume `name` (16 bytes each), holes left out. */
export async function chunkHashSet(store: Store, name: string): Promise<Buffer> {
  const ids = (await store.chunkMap(name)).sort();
  let n = 0;
  for (let i = 0; i < ids.length; i++) if (ids[i] !== 0 && (n === 0 || ids[i] !== ids[n - 1])) ids[n++] = ids[i];
  return (await store.chunkHashes(ids.subarray(0, n))).hashes;
}

/** The sketch of the memory fingerprint of volume `name`. */
export async function volumeSketch(store: Store, name: string, k = SKETCH_K): Promise<FingerprintSketch> {
  return FingerprintSketch.fromHashes(await chunkHashSet(store, name), k);
}

/** A VM as the host knows it (VmStatus's fields that matter here). */
export interface SketchedVm {
  name: string;
  state: string;
  memoryBytes: number;
  pid?: number;
  pagesOut?: number;
}

interface Entry { sketch: string; from: string; at: number }

/** The sketches a host publishes, kept between its ticks. */
export class VmSketches {
  private readonly entries = new Map<string, Entry>();
  private readonly failed = new Set<string>();

  constructor(private readonly store: Store, private readonly log: LogFn, private readonly k = SKETCH_K) {}

  /** `vms` as published: name, state, memory size, and the sketch of those that hold memory. */
  async publish(vms: readonly SketchedVm[]): Promise<VmEntry[]> {
    const now = Date.now();
    const out: VmEntry[] = [];
    const t0 = performance.now();
    const seen = new Set<string>();
    for (const v of vms) {
      const entry: VmEntry = { name: v.name, state: v.state, memoryBytes: v.memoryBytes };
      out.push(entry);
      if (!PLACED_STATES.includes(v.state)) continue;
      seen.add(v.name);
      const from = `${v.pid ?? ''}:${v.pagesOut ?? 0}`;
      let e = this.entries.get(v.name);
      const due = !e || ((e.from !== from || now - e.at >= REFRESH_MS) && now - e.at >= MIN_GAP_MS);
      if (due && performance.now() - t0 < BUDGET_MS) {
        try {
          e = { sketch: (await volumeSketch(this.store, `${v.name}.mem`, this.k)).toBase64(), from, at: now };
          this.entries.set(v.name, e);
          this.failed.delete(v.name);
        } catch (err) {
          // Removed or changed while read (a migration committing): tried again after MIN_GAP_MS; one line until it works.
          if (!this.failed.has(v.name)) {
            this.log(`cluster: warning: no fingerprint of VM ${v.name} for now: ${(err as Error).message}`, asWarn({ vm: v.name }));
          }
          this.failed.add(v.name);
          e = e && { ...e, from: 'failed', at: now };
          if (e) this.entries.set(v.name, e);
        }
      }
      if (e) entry.sketch = e.sketch;
    }
    for (const name of [...this.entries.keys()]) if (!seen.has(name)) this.entries.delete(name);
    for (const name of [...this.failed]) if (!seen.has(name)) this.failed.delete(name);
    return out;
  }
}
