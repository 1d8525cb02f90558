/**
 * The receiving side of a volume transfer: rebuilds a volume from its
 * manifest with the chunks this store lacks, whoever brings them (a pull
 * fetches them from the source's host API, a push has the source send
 * them).
 *
 * The volume is built under a staging name, `<name>.partial`, and renamed
 * to its name only once every block reads as the manifest says (checked by
 * digest), so an interrupted transfer leaves no half volume under the
 * name. The staging volume stays: the next transfer of the same volume
 * compares it with the manifest and asks only for what is still missing.
 * When the manifest's origin snapshot (`golden@base`) is here with the same
 * digest, the staging volume is a branch of it and inherits its blocks.
 */
import { DormantError, HASH_SIZE, isHole, splitName, type Store, type VolumeHandle } from '../blockstore/index.js';
import { ChunkPlacer } from './placer.js';
import { contentDigest, digestOf, type Manifest } from './manifest.js';

/** Suffix of the staging volume of a transfer. */
export const STAGING_SUFFIX = '.partial';

/** What a finished transfer reports (the `--json` of push and pull). */
export interface TransferResult {
  /** The volume made here (with `@snap` when a snapshot was sent). */
  volume: string;
  logicalBytes: number;
  /** Bytes that crossed the network (manifest, hash lists, chunks). */
  bytesSent: number;
  /** Chunks that crossed the network. */
  chunksSent: number;
  /** Distinct chunks the receiver already held (or inherited from its origin). */
  chunksPresent: number;
  /** The snapshot the volume was branched from here, or null. */
  origin: string | null;
  seconds: number;
  /** True when the volume was already here with the same content. */
  alreadyPresent?: boolean;
}

/** Names of a transfer's result on the receiving host. */
export function targetNames(m: Manifest, as?: string): { volume: string; full: string; snap: string | null } {
  const { volume, snap } = splitName(m.header.name);
  const target = as ?? volume;
  if (target.includes('@')) throw new DormantError('EINVAL', `--as names a volume, not a snapshot ('${target}')`);
  return { volume: target, full: snap === null ? target : `${target}@${snap}`, snap };
}

/** What a receiving host keeps per transfer (a whole volume here, or a patch: patch.ts). */
export interface ReceiveSession {
  /** The volume it writes (by its final name). */
  readonly target: string;
  /** What the sender called it (for log lines). */
  readonly label: string;
  /** Hashes (16 bytes each) of the chunks to be sent. */
  readonly needed: Buffer;
  readonly chunksPresent: number;
  readonly remaining: number;
  readonly chunksReceived: number;
  accept(hashes: Buffer, at: number, data: Buffer, dataAt: number): Promise<void>;
  /**
   * `partial`: commit although chunks are missing (a pre-copy round; their blocks are fixed by a patch).
   * `lazy`: the chunks missing are not coming: their blocks become holes and are returned (`deferred`, by hash) to be marked absent.
   */
  finish(partial?: boolean, lazy?: boolean): Promise<{
    volume: string; origin: string | null; missing?: number; deferred?: Map<string, number[]>;
    /** A patch: the blocks it rewrote in place. */
    patched?: number[];
  }>;
  close(): Promise<void>;
}

/** A volume being received. */
export class IncomingVolume implements ReceiveSession {
  private closed = false;

  private constructor(
    private readonly store: Store,
    readonly manifest: Manifest,
    readonly names: { volume: string; full: string; snap: string | null },
    readonly staging: string,
    readonly origin: string | null,
    private readonly handle: VolumeHandle,
    private readonly placer: ChunkPlacer,
    /** Hashes (16 bytes each) of the chunks to be sent, in order of first use. */
    readonly needed: Buffer,
    /** Distinct data chunks already held here. */
    readonly chunksPresent: number,
  ) {}

  get target(): string { return this.names.volume; }
  get label(): string { return this.manifest.header.name; }
  get chunksReceived(): number { return this.placer.chunksReceived; }

  /** True when the transfer's result is already here with the manifest's content (nothing to do). */
  static async alreadyHere(store: Store, m: Manifest, as?: string): Promise<boolean> {
    const names = targetNames(m, as);
    if (!store.describe(names.full)) {
      if (store.describe(names.volume)) {
        throw new DormantError('EEXIST', `volume '${names.volume}' already exists here with other content (choose another name with --as)`,
          { volume: names.volume });
      }
      return false;
    }
    if (await digestOf(store, names.full) === m.header.digest) return true;
    throw new DormantError('EEXIST', `'${names.full}' already exists here with other content (choose another name with --as)`,
      { volume: names.full });
  }

  /**
   * Prepares the staging volume (made, or resumed from an earlier
   * transfer), writes every block whose chunk is already here, and lists
   * the chunks still needed.
   */
  static async open(store: Store, m: Manifest, as?: string): Promise<IncomingVolume> {
    const names = targetNames(m, as);
    const staging = `${names.volume}${STAGING_SUFFIX}`;
    const { header } = m;
    let origin: string | null = null;
    if (header.origin !== null && header.originDigest !== null && store.describe(header.origin)?.type === 'snapshot') {
      const o = store.describe(header.origin)!;
      if (o.kind === header.kind && o.size <= header.size && await digestOf(store, header.origin) === header.originDigest) {
        origin = header.origin;
      }
    }
    const existing = store.describe(staging);
    if (existing && (existing.kind !== header.kind || existing.size > header.size || existing.origin !== origin)) {
      await store.remove(staging); // another transfer's leftovers: start again
    }
    if (!store.describe(staging)) {
      if (origin !== null) await store.branch(staging, origin);
      else await store.createVolume(staging, header.size, header.kind);
    }
    if (store.describe(staging)!.size < header.size) await store.resize(staging, header.size);

    const cur = await store.blockHashes(staging);
    const handle = await store.openVolume(staging);
    try {
      // Blocks already right (inherited or written by an earlier attempt) stay; holes are zeroed;
      // the rest wait for their chunk, grouped by hash.
      const placer = new ChunkPlacer(handle, header.size);
      const wanted = new Map<string, number[]>();
      for (let b = 0; b < header.blocks; b++) {
        const wantHole = isHole(m.holes, b);
        const curHole = isHole(cur.holes, b);
        if (wantHole) {
          if (!curHole) await placer.zero(b);
          continue;
        }
        const at = b * HASH_SIZE;
        if (!curHole && m.hashes.compare(cur.hashes, at, at + HASH_SIZE, at, at + HASH_SIZE) === 0) continue;
        const key = m.hashes.toString('hex', at, at + HASH_SIZE);
        const list = wanted.get(key);
        if (list) list.push(b); else wanted.set(key, [b]);
      }
      const { needed, present } = await placer.fill(store, wanted);
      return new IncomingVolume(store, m, names, staging, origin, handle, placer, needed,
        countDistinctData(m) - wanted.size + present);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  /** Chunks still to come. */
  get remaining(): number {
    return this.placer.remaining;
  }

  /** See ChunkPlacer.accept. */
  async accept(hashes: Buffer, at: number, data: Buffer, dataAt: number): Promise<void> {
    if (this.closed) throw new DormantError('ECLOSED', 'transfer is closed');
    await this.placer.accept(hashes, at, data, dataAt);
  }

  /**
   * Commits: checks the staging volume reads as the manifest says, makes it
   * durable, renames it to its name (and freezes the snapshot sent, if
   * one was). EINVAL while chunks are missing, unless `partial` (a VM
   * migration's pre-copy: the blocks still missing are sent as a patch once
   * the guest has paused; no digest check then).
   */
  async finish(partial = false, lazy = false): Promise<{ volume: string; origin: string | null; missing?: number; deferred?: Map<string, number[]> }> {
    const missing = this.placer.remaining;
    if (missing > 0 && !partial) {
      throw new DormantError('EINVAL', `transfer of '${this.manifest.header.name}' is incomplete: ${missing} chunks missing`);
    }
    const deferred = lazy ? await this.placer.defer() : undefined;
    await this.close();
    await this.store.flush();
    if (!partial) {
      const got = await this.store.blockHashes(this.staging);
      if (contentDigest(this.manifest.header.size, got.hashes, got.holes) !== this.manifest.header.digest) {
        throw new DormantError('EIO', `'${this.staging}' does not read as '${this.manifest.header.name}' did on the sender after the transfer`);
      }
    }
    await this.store.rename(this.staging, this.names.volume);
    if (this.names.snap !== null) await this.store.snapshot(this.names.volume, this.names.snap);
    return { volume: this.names.full, origin: this.origin, ...(partial ? { missing } : {}), ...(deferred ? { deferred } : {}) };
  }

  /** Releases the staging volume's handle (the staging volume stays for a later attempt). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** Distinct hashes of a manifest's data blocks. */
function countDistinctData(m: Manifest): number {
  const seen = new Set<string>();
  for (let b = 0; b < m.header.blocks; b++) {
    if (!isHole(m.holes, b)) seen.add(m.hashes.toString('hex', b * HASH_SIZE, (b + 1) * HASH_SIZE));
  }
  return seen.size;
}
