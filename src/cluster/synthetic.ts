/**
 * Synthetic planner inputs for tests and the placement benchmark, and the
 * seeded PRNG the planner's kicks use. VMs come in families (VMs of one
 * image and application): two VMs of a family have much in common, VMs of
 * different families little, as cluster studies of memory sharing report.
 * Everything is drawn from a seeded mulberry32, so a seed is an instance.
 */
import type { PlanInput } from './plan-input.js';

/** Seeded 32-bit PRNG (mulberry32): numbers in [0, 1). */
export function mulberry32(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** Shape of a synthetic instance. */
export interface SyntheticOptions {
  vms: number;
  hosts: number;
  /** Number of VM families. */
  families: number;
  seed: number;
  /** Total capacity / total VM size (default 1.25). */
  slack?: number;
  /** VM sizes to draw from, MB (default 512, 1024, 1536, 2048). */
  sizes?: number[];
  /** Fraction of the smaller VM two VMs of one family share (default 0.15-0.6, one per family). */
  familyShare?: [number, number];
  /** Fraction two VMs of different families share (default 0-0.03). */
  crossShare?: [number, number];
}

/**
 * An input in the file format: hosts M0.. of capacities within 0.75-1.25
 * of the mean, VMs VM0.. of random families and sizes, every pair's
 * sharing (whole MB), and an initial placement that ignores families
 * (random order, a random host with room by raw size), as VMs land where
 * there was room when they were started. Returns null when that first-fit
 * fails (too little slack).
 */
export function syntheticInput(o: SyntheticOptions): PlanInput | null {
  const rand = mulberry32(o.seed);
  const between = (lo: number, hi: number) => lo + (hi - lo) * rand();
  const sizes = o.sizes ?? [512, 1024, 1536, 2048];
  const [famLo, famHi] = o.familyShare ?? [0.15, 0.6];
  const [crossLo, crossHi] = o.crossShare ?? [0, 0.03];
  const familyFraction = Array.from({ length: o.families }, () => between(famLo, famHi));
  const vms = Array.from({ length: o.vms }, (_, i) => ({
    name: `VM${i}`,
    sizeMB: sizes[Math.floor(rand() * sizes.length)],
    family: Math.floor(rand() * o.families),
  }));
  const total = vms.reduce((s, v) => s + v.sizeMB, 0);
  const largest = Math.max(...vms.map((v) => v.sizeMB));
  const weights = Array.from({ length: o.hosts }, () => between(0.75, 1.25));
  const wsum = weights.reduce((a, b) => a + b, 0);
  const hosts = weights.map((w, i) => ({
    name: `M${i}`,
    capacityMB: Math.max(largest, Math.round((total * (o.slack ?? 1.25) * w) / wsum)),
  }));

  const sharingMB: [string, string, number][] = [];
  for (let i = 0; i < vms.length; i++) {
    for (let j = i + 1; j < vms.length; j++) {
      const a = vms[i];
      const b = vms[j];
      const f = a.family === b.family ? familyFraction[a.family] * between(0.8, 1) : between(crossLo, crossHi);
      const mb = Math.floor(Math.min(a.sizeMB, b.sizeMB) * f);
      if (mb > 0) sharingMB.push([a.name, b.name, mb]);
    }
  }

  const order = vms.map((_, i) => i);
  for (let i = order.length - 1; i > 0; i--) {
    const j = Math.floor(rand() * (i + 1));
    [order[i], order[j]] = [order[j], order[i]];
  }
  const free = hosts.map((h) => h.capacityMB);
  const host = new Array<string>(vms.length);
  for (const v of order) {
    const room = free.map((f, h) => (f >= vms[v].sizeMB ? h : -1)).filter((h) => h >= 0);
    if (room.length === 0) return null;
    const h = room[Math.floor(rand() * room.length)];
    free[h] -= vms[v].sizeMB;
    host[v] = hosts[h].name;
  }
  return {
    hosts,
    vms: vms.map((v, i) => ({ name: v.name, sizeMB: v.sizeMB, host: host[i] })),
    sharingMB,
  };
}
