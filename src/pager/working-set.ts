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
 * Per event class (faults.ts: network connections, timer wake-ups of a
 * paged VM) the same fold keeps a working set of its own, folded only at
 * page-outs whose epoch had events of that class (a class with no event is
 * not forgotten for lack of one). The timer set is what an idle VM keeps
 * resident; the network set is what a connection prefetches.
 *
 * Stored in a file the caller names (the VM runner keeps it beside the VM
 * record, STORE/vms/<vm>.ws), JSON written atomically (temp file + rename):
 * page indices and heats, sorted, and the same per class (version 2;
 * version 1 files, without classes, are read as they are).
 */
import fs from 'node:fs';
import path from 'node:path';
import type { ClassEpoch, EventClass } from './faults.js';

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
  /** The working set of each event class seen so far. */
  classes?: Map<EventClass, WorkingSet>;
}

interface HeatFile {
  recordedAt: string;
  epochs: number;
  pages: number[];
  heat: number[];
}

interface WorkingSetFile extends HeatFile {
  version: 1 | 2;
  classes?: Partial<Record<EventClass, HeatFile>>;
}

const fromFile = (f: HeatFile): WorkingSet => {
  const heat = new Map<number, number>();
  for (let i = 0; i < f.pages.length; i++) heat.set(f.pages[i], f.heat[i]);
  return { recordedAt: f.recordedAt, epochs: f.epochs, heat };
};

const toFile = (ws: WorkingSet): HeatFile => {
  const pages = [...ws.heat.keys()].sort((a, b) => a - b);
  return {
    recordedAt: ws.recordedAt, epochs: ws.epochs, pages, heat: pages.map((p) => Math.round(ws.heat.get(p)! * 1e4) / 1e4),
  };
};

/** The working set recorded in `file`, or undefined before the VM's first page-out. */
export function readWorkingSet(file: string): WorkingSet | undefined {
  let f: WorkingSetFile;
  try {
    f = JSON.parse(fs.readFileSync(file, 'utf8')) as WorkingSetFile;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  const ws = fromFile(f);
  if (f.version === 2 && f.classes) {
    ws.classes = new Map();
    for (const [c, h] of Object.entries(f.classes) as Array<[EventClass, HeatFile]>) ws.classes.set(c, fromFile(h));
  }
  return ws;
}

/** Writes `ws` to `file` atomically. */
export function writeWorkingSet(file: string, ws: WorkingSet): void {
  const f: WorkingSetFile = { version: 2, ...toFile(ws) };
  if (ws.classes && ws.classes.size > 0) {
    f.classes = {};
    for (const [c, cw] of ws.classes) f.classes[c] = toFile(cw);
  }
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

/**
 * `ws` with each class epoch that had events folded into its class's
 * working set (classes without events keep theirs). `ws` is not modified.
 */
export function foldClasses(ws: WorkingSet, epochs: ReadonlyMap<EventClass, ClassEpoch>,
  prev: WorkingSet | undefined, now = new Date()): WorkingSet {
  const classes = new Map(prev?.classes ?? []);
  for (const [c, e] of epochs) if (e.events > 0) classes.set(c, foldEpoch(classes.get(c), e.touched, now));
  return classes.size > 0 ? { ...ws, classes } : ws;
}

/**
 * Pages of class `c`'s working set touched in one of its last four event
 * epochs (heat >= 1/8), sorted. Four, not one: a page kept resident or
 * prefetched is not faulted again, and the guest handles each event with
 * partly fresh pages (a new process), so one epoch sees only part of it.
 */
export function classPages(ws: WorkingSet | undefined, c: EventClass): number[] {
  const cw = ws?.classes?.get(c);
  if (!cw) return [];
  return [...cw.heat.entries()].filter(([, h]) => h >= 1 / 8).map(([p]) => p).sort((a, b) => a - b);
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

/** Bytes of the working set recorded in `file` (its last epoch), or undefined before the first page-out. */
export function recordedWorkingSetBytes(file: string): number | undefined {
  const ws = readWorkingSet(file);
  return ws ? recentPages(ws).length * 4096 : undefined;
}

/** The union of two sorted page lists, sorted. */
export function unionSorted(a: readonly number[], b: readonly number[]): number[] {
  const out: number[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length || j < b.length) {
    if (j >= b.length || (i < a.length && a[i] < b[j])) out.push(a[i++]);
    else if (i >= a.length || b[j] < a[i]) out.push(b[j++]);
    else { out.push(a[i++]); j++; }
  }
  return out;
}

/** Clears the counts of `touched` whose page is not set in `mapped`. */
export function keepOnly(touched: Uint8Array, mapped: Uint8Array): void {
  for (let p = 0; p < touched.length; p++) if (touched[p] !== 0 && !mapped[p]) touched[p] = 0;
}
