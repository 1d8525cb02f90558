/**
 * The sharing report (`dormant vm sharing`): how much of the VMs' memory is
 * stored once because it equals a disk block or another VM's page.
 *
 * Two ways to find pages equal to disk blocks, both reported:
 *   - candidates (the cheap way, the one the pager relies on): the chunks
 *     each VM read from its disk (read fingerprints of its NBD export). A
 *     memory page is in the store as a chunk too, and equal bytes are one
 *     chunk (writes are deduplicated by hash and byte comparison), so a page
 *     whose chunk is among its VM's candidates equals a block it read; no
 *     page is hashed.
 *   - full scan (the reference): every page of each memory volume and of its
 *     disk is read and hashed (native batch xxh3 + zero test); a memory page
 *     whose hash is among the disk's is identical to a disk block.
 * coverage = pages found by candidates / pages found by the full scan.
 *
 * Page classes per VM (non-zero pages; a page may be in more than one of the
 * first two): sharedWithDisk (candidates), sharedAcrossVms (its chunk is in
 * another VM's memory), unique (neither, and not repeated in its own memory).
 * Stored bytes: distinct chunks of all the memory volumes; of those, the ones
 * no disk of these VMs holds are what the memory really adds to the store.
 *
 * The report reads the store as it is: the daemon writes running VMs' dirty
 * pages back first (VmSupervisor.writeBackAll).
 */
import type { Store } from '../blockstore/index.js';
import { hashPagesAsync } from '../native/index.js';

const PAGE = 4096;
/** Bytes read and hashed per step of the full scan. */
const SCAN_STEP = 8 * 2 ** 20;

/** A VM as the report needs it: its name, memory volume and disk volume. */
export interface SharedVm { name: string; memory: string; disk: string }

/** One VM's line of the report (page counts). */
export interface VmSharing {
  name: string;
  memory: string;
  disk: string;
  pages: number;
  zeroPages: number;
  nonZeroPages: number;
  /** Distinct chunks its disk I/O read (the candidates). */
  diskCandidates: number;
  sharedWithDiskPages: number;
  sharedAcrossVmsPages: number;
  uniquePages: number;
  /** Pages identical to some block of its disk, by a full hash of every page. */
  sharedWithDiskFullScanPages: number;
  /** sharedWithDiskPages / sharedWithDiskFullScanPages (null when the full scan found none). */
  coverage: number | null;
}

/** The whole report. */
export interface SharingReport {
  vms: VmSharing[];
  totals: {
    logicalBytes: number;
    nonZeroBytes: number;
    zeroBytes: number;
    /** Distinct chunks of all the memory volumes. */
    storedBytes: number;
    /** Of those, chunks no disk of these VMs holds. */
    storedBeyondDisksBytes: number;
    sharedWithDiskPages: number;
    sharedWithDiskFullScanPages: number;
    sharedAcrossVmsPages: number;
    uniquePages: number;
    coverage: number | null;
  };
  /** Milliseconds: the candidate method (chunk maps and fingerprints) and the full scan (read and hash every page). */
  timings: { candidatesMs: number; fullScanMs: number };
}

/** Hex hashes of the non-zero pages of `name`, read from the store. */
async function pageHashes(store: Store, name: string): Promise<string[]> {
  const h = await store.openVolume(name);
  try {
    const out: string[] = [];
    for (let pos = 0; pos < h.size; pos += SCAN_STEP) {
      const n = Math.min(SCAN_STEP, h.size - pos);
      const r = await hashPagesAsync(await h.read(pos, n));
      for (let i = 0; i < r.pages; i++) {
        out.push(r.zero[i] ? '' : r.hashes.toString('hex', i * 16, i * 16 + 16));
      }
    }
    return out;
  } finally {
    await h.close();
  }
}

/** The sharing report over the memory volumes of `vms`. */
export async function sharingReport(store: Store, vms: readonly SharedVm[]): Promise<SharingReport> {
  const t0 = performance.now();
  const maps = await Promise.all(vms.map((v) => store.chunkMap(v.memory)));
  const occurrences = new Map<number, number>();
  const vmsOf = new Map<number, Set<number>>();
  maps.forEach((ids, v) => {
    for (const id of ids) {
      if (id === 0) continue;
      occurrences.set(id, (occurrences.get(id) ?? 0) + 1);
      let s = vmsOf.get(id);
      if (!s) { s = new Set(); vmsOf.set(id, s); }
      s.add(v);
    }
  });
  const diskIds = new Set<number>();
  for (const v of vms) for (const id of await store.chunkMap(v.disk)) if (id !== 0) diskIds.add(id);
  const lines: VmSharing[] = vms.map((v, i) => {
    const candidates = store.fingerprintIds(v.disk);
    let zero = 0; let disk = 0; let across = 0; let unique = 0;
    for (const id of maps[i]) {
      if (id === 0) { zero++; continue; }
      const inDisk = candidates.has(id);
      const inOthers = vmsOf.get(id)!.size > 1;
      if (inDisk) disk++;
      if (inOthers) across++;
      if (!inDisk && !inOthers && occurrences.get(id) === 1) unique++;
    }
    return {
      name: v.name, memory: v.memory, disk: v.disk, pages: maps[i].length, zeroPages: zero, nonZeroPages: maps[i].length - zero,
      diskCandidates: candidates.size, sharedWithDiskPages: disk, sharedAcrossVmsPages: across, uniquePages: unique,
      sharedWithDiskFullScanPages: 0, coverage: null,
    };
  });
  const candidatesMs = performance.now() - t0;

  const t1 = performance.now();
  for (let i = 0; i < vms.length; i++) {
    const diskHashes = new Set((await pageHashes(store, vms[i].disk)).filter((x) => x !== ''));
    let found = 0;
    for (const x of await pageHashes(store, vms[i].memory)) if (x !== '' && diskHashes.has(x)) found++;
    lines[i].sharedWithDiskFullScanPages = found;
    lines[i].coverage = found > 0 ? lines[i].sharedWithDiskPages / found : null;
  }
  const fullScanMs = performance.now() - t1;

  const sum = (f: (l: VmSharing) => number) => lines.reduce((s, l) => s + f(l), 0);
  let beyond = 0;
  for (const id of occurrences.keys()) if (!diskIds.has(id)) beyond++;
  const found = sum((l) => l.sharedWithDiskPages);
  const full = sum((l) => l.sharedWithDiskFullScanPages);
  return {
    vms: lines,
    totals: {
      logicalBytes: sum((l) => l.pages) * PAGE,
      nonZeroBytes: sum((l) => l.nonZeroPages) * PAGE,
      zeroBytes: sum((l) => l.zeroPages) * PAGE,
      storedBytes: occurrences.size * PAGE,
      storedBeyondDisksBytes: beyond * PAGE,
      sharedWithDiskPages: found,
      sharedWithDiskFullScanPages: full,
      sharedAcrossVmsPages: sum((l) => l.sharedAcrossVmsPages),
      uniquePages: sum((l) => l.uniquePages),
      coverage: full > 0 ? found / full : null,
    },
    timings: { candidatesMs: Math.round(candidatesMs), fullScanMs: Math.round(fullScanMs) },
  };
}
