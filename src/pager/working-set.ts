/**
 * A VM's working set: which guest pages it touches between page-outs, and
 * how hot each is. Recorded from the FUSE read stream of its memory volume
 * (faults.ts): at each page-out, the pages read since the previous one
 * (the epoch) fold into a per-page heat,
 *     heat' = heat / 2 + (read in the epoch ? 1 : 0)
 * so a page touched in every epoch tends to 2, one touched once fades by
 * half per page-out and is forgotten below 1/64. The hottest pages are what
 * `pageout --keep` spares; pages read in the last epoch (heat >= 1) are
 * what `prefetch` brings back.
 *
 * Stored in a file the caller names (the VM runner keeps it beside the VM
 * record, STORE/vms/<vm>.ws), JSON written atomically (temp file + rename):
 * page indices and heats, sorted.
 */
import fs from 'node:fs';
import path from 'node:path';

/** Heat below which a page is forgotten. */
const FORGET = 1 / 64;

/** Per-page heat of one VM's memory. */
export interface WorkingSet {
  /** When it was last folded (page-out time). */
  recordedAt: string;
  /** Epochs folded in. */
  epochs: number;
  /** Page index -> heat. */
  heat: Map<number, number>;
}

interface WorkingSetFile {
  version: 1;
  recordedAt: string;
  epochs: number;
  pages: number[];
  heat: number[];
}

/** The working set recorded in `file`, or undefined before the VM's first page-out. */
export function readWorkingSet(file: string): WorkingSet | undefined {
  let f: WorkingSetFile;
  try {
    f = JSON.parse(fs.readFileSync(file, 'utf8')) as WorkingSetFile;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const heat = new Map<number, number>();
  for (let i = 0; i < f.pages.length; i++) heat.set(f.pages[i], f.heat[i]);
  return { recordedAt: f.recordedAt, epochs: f.epochs, heat };
}

/** Writes `ws` to `file` atomically. */
export function writeWorkingSet(file: string, ws: WorkingSet): void {
  const pages = [...ws.heat.keys()].sort((a, b) => a - b);
  const f: WorkingSetFile = {
    version: 1, recordedAt: ws.recordedAt, epochs: ws.epochs, pages,
    heat: pages.map((p) => Math.round(ws.heat.get(p)! * 1e4) / 1e4),
  };
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, JSON.stringify(f));
  fs.renameSync(tmp, file);
}

/** Folds an epoch's per-page read counts into `prev` (not modified). */
export function foldEpoch(prev: WorkingSet | undefined, touched: Uint8Array, now = new Date()): WorkingSet {
  const heat = new Map<number, number>();
  if (prev) {
    for (const [p, h] of prev.heat) if (h / 2 >= FORGET) heat.set(p, h / 2);
  }
  for (let p = 0; p < touched.length; p++) if (touched[p] !== 0) heat.set(p, (heat.get(p) ?? 0) + 1);
  return { recordedAt: now.toISOString(), epochs: (prev?.epochs ?? 0) + 1, heat };
}

/** The `n` hottest pages (ties: lower page first), sorted by page index. */
export function hottest(ws: WorkingSet | undefined, n: number): number[] {
  if (!ws || n <= 0) return [];
  return [...ws.heat.entries()].sort((a, b) => b[1] - a[1] || a[0] - b[0]).slice(0, n).map(([p]) => p).sort((a, b) => a - b);
}

/** Pages read in the last recorded epoch (heat >= 1), sorted: what prefetch brings back. */
export function recentPages(ws: WorkingSet | undefined): number[] {
  if (!ws) return [];
  return [...ws.heat.entries()].filter(([, h]) => h >= 1).map(([p]) => p).sort((a, b) => a - b);
}

/** Sorted page indices -> [first, count] runs. */
export function pageRuns(pages: readonly number[]): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  for (const p of pages) {
    const last = runs[runs.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else runs.push([p, 1]);
  }
  return runs;
}

/** Runs of [0, total) not in the sorted `pages`. */
export function complementRuns(pages: readonly number[], total: number): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let next = 0;
  for (const [first, count] of pageRuns(pages)) {
    if (first > next) runs.push([next, first - next]);
    next = first + count;
  }
  if (next < total) runs.push([next, total - next]);
  return runs;
}
