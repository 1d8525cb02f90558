/**
 * The kernel's modules.dep: which module files to put in the guest, in load
 * order (dependencies first), for the drivers the kernel has as modules.
 */
import path from 'node:path';
import { DormantError } from '../blockstore/index.js';

/** Parses modules.dep: module name -> { path, deps (paths) }. */
export function parseModulesDep(text: string): Map<string, { path: string; deps: string[] }> {
  const map = new Map<string, { path: string; deps: string[] }>();
  for (const line of text.split('\n')) {
    const i = line.indexOf(':');
    if (i < 0) continue;
    const p = line.slice(0, i).trim();
    const deps = line.slice(i + 1).trim().split(/\s+/).filter(Boolean);
    map.set(moduleName(p), { path: p, deps });
  }
  return map;
}

/** kernel/fs/ext4/ext4.ko(.xz) -> ext4 (dashes and underscores are the same to the kernel). */
export function moduleName(p: string): string {
  return path.basename(p).replace(/\.ko(\.[a-z]+)?$/, '').replace(/-/g, '_');
}

/** The modules to load, in load order (dependencies first), as paths relative to lib/modules/KVER. */
export function resolveModules(dep: Map<string, { path: string; deps: string[] }>, wanted: string[]): string[] {
  const byPath = new Map([...dep.values()].map((e) => [e.path, e]));
  const order: string[] = [];
  const seen = new Set<string>();
  const visit = (p: string) => {
    if (seen.has(p)) return;
    seen.add(p);
    const e = byPath.get(p);
    if (!e) throw new DormantError('EINTERNAL', `modules.dep names ${p} but has no entry for it`);
    for (const d of [...e.deps].reverse()) visit(d);
    order.push(p);
  };
  for (const m of wanted) {
    const e = dep.get(m);
    if (!e) throw new DormantError('EINTERNAL', `module ${m} is not in the kernel's modules.dep`);
    visit(e.path);
  }
  return order;
}
