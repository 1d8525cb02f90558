/**
 * The planner's input: reading and checking the stable file format of
 * `dormant plan --input FILE`, and its indexed form (`Instance`) that the
 * rest of the planner works on.
 *
 *   {"hosts":[{"name":"M0","capacityMB":3072},...],
 *    "vms":[{"name":"VM0","sizeMB":1024,"host":"M0"},...],
 *    "sharingMB":[["VM0","VM1",254],...]}
 *
 * `sharingMB` is optional; a pair it does not name shares 0 MB. Every
 * problem is one DormantError('EINVAL') line naming the field at fault;
 * unknown fields are refused (a misspelt "sharingMb" would otherwise plan
 * with no sharing at all).
 */
import fs from 'node:fs';
import { DormantError } from '../blockstore/index.js';

/** A host as the file gives it. */
export interface HostSpec { name: string; capacityMB: number }
/** A VM as the file gives it: its size and the host it is on now. */
export interface VmSpec { name: string; sizeMB: number; host: string }
/** The planner's input, as the file gives it. */
export interface PlanInput {
  hosts: HostSpec[];
  vms: VmSpec[];
  /** [vmA, vmB, common MB]; a pair not listed shares 0. */
  sharingMB: [string, string, number][];
}

/**
 * The input by index: host i, VM v, `share[v * n + u]` the MB that VMs v
 * and u have in common (symmetric, 0 on the diagonal), `initial[v]` the
 * host VM v is on now.
 */
export interface Instance {
  hostNames: string[];
  capacity: number[];
  vmNames: string[];
  size: number[];
  initial: number[];
  share: Float64Array;
}

const bad = (message: string): DormantError => new DormantError('EINVAL', message);

const isNumber = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x);

/** `x` as shown in a message: short and on one line. */
function show(x: unknown): string {
  const s = JSON.stringify(x) ?? String(x);
  return s.length > 40 ? `${s.slice(0, 37)}...` : s;
}

function checkFields(obj: Record<string, unknown>, allowed: string[], where: string): void {
  for (const k of Object.keys(obj)) {
    if (!allowed.includes(k)) throw bad(`${where}: unknown field "${k}" (expected ${allowed.map((a) => `"${a}"`).join(', ')})`);
  }
}

function object(x: unknown, where: string): Record<string, unknown> {
  if (typeof x !== 'object' || x === null || Array.isArray(x)) throw bad(`${where} must be an object, not ${show(x)}`);
  return x as Record<string, unknown>;
}

function name(x: unknown, where: string): string {
  if (typeof x !== 'string' || x === '') throw bad(`${where}: "name" must be a non-empty string, not ${show(x)}`);
  return x;
}

function positive(x: unknown, what: string): number {
  if (!isNumber(x) || x <= 0) throw bad(`${what} must be a number of MB greater than 0, not ${show(x)}`);
  return x;
}

/** Checks parsed JSON against the format; returns it typed. */
export function checkPlanInput(raw: unknown): PlanInput {
  const top = object(raw, 'the input');
  checkFields(top, ['hosts', 'vms', 'sharingMB'], 'the input');
  if (!Array.isArray(top.hosts) || top.hosts.length === 0) throw bad('"hosts" must be a non-empty array of {"name", "capacityMB"}');
  if (!Array.isArray(top.vms)) throw bad('"vms" must be an array of {"name", "sizeMB", "host"}');
  const sharing = top.sharingMB ?? [];
  if (!Array.isArray(sharing)) throw bad('"sharingMB" must be an array of ["VM", "VM", MB] entries');

  const hosts: HostSpec[] = [];
  const hostSeen = new Set<string>();
  top.hosts.forEach((h, i) => {
    const o = object(h, `hosts[${i}]`);
    checkFields(o, ['name', 'capacityMB'], `hosts[${i}]`);
    const n = name(o.name, `hosts[${i}]`);
    if (hostSeen.has(n)) throw bad(`duplicate host name "${n}"`);
    hostSeen.add(n);
    hosts.push({ name: n, capacityMB: positive(o.capacityMB, `host "${n}": "capacityMB"`) });
  });
  const largest = hosts.reduce((a, b) => (b.capacityMB > a.capacityMB ? b : a));

  const vms: VmSpec[] = [];
  const vmSize = new Map<string, number>();
  top.vms.forEach((v, i) => {
    const o = object(v, `vms[${i}]`);
    checkFields(o, ['name', 'sizeMB', 'host'], `vms[${i}]`);
    const n = name(o.name, `vms[${i}]`);
    if (vmSize.has(n)) throw bad(`duplicate VM name "${n}"`);
    const sizeMB = positive(o.sizeMB, `VM "${n}": "sizeMB"`);
    if (typeof o.host !== 'string') throw bad(`VM "${n}": "host" must be the name of the host it is on, not ${show(o.host)}`);
    if (!hostSeen.has(o.host)) throw bad(`VM "${n}" is on unknown host "${o.host}"`);
    if (sizeMB > largest.capacityMB) {
      throw bad(`VM "${n}" (${sizeMB} MB) is larger than every host (the largest, "${largest.name}", has ${largest.capacityMB} MB)`);
    }
    vmSize.set(n, sizeMB);
    vms.push({ name: n, sizeMB, host: o.host });
  });

  const pairs = new Set<string>();
  const entries: [string, string, number][] = [];
  sharing.forEach((e, i) => {
    const where = `sharingMB[${i}]`;
    if (!Array.isArray(e) || e.length !== 3) throw bad(`${where} must be ["VM", "VM", MB], not ${show(e)}`);
    const [a, b, mb] = e as unknown[];
    for (const x of [a, b]) {
      if (typeof x !== 'string') throw bad(`${where}: a VM name must be a string, not ${show(x)}`);
      if (!vmSize.has(x)) throw bad(`${where} names unknown VM "${x}"`);
    }
    const va = a as string;
    const vb = b as string;
    if (va === vb) throw bad(`${where} pairs VM "${va}" with itself`);
    if (!isNumber(mb) || mb < 0) throw bad(`${where}: the common MB must be a number, at least 0, not ${show(mb)}`);
    const smaller = Math.min(vmSize.get(va)!, vmSize.get(vb)!);
    if (mb > smaller) throw bad(`${where}: "${va}" and "${vb}" cannot have ${mb} MB in common: the smaller is ${smaller} MB`);
    const key = va < vb ? `${va}\n${vb}` : `${vb}\n${va}`;
    if (pairs.has(key)) throw bad(`${where}: duplicate entry for "${va}" and "${vb}"`);
    pairs.add(key);
    entries.push([va, vb, mb]);
  });
  return { hosts, vms, sharingMB: entries };
}

/** Parses and checks the text of an input file; `source` names it in messages. */
export function parsePlanInput(text: string, source = 'the input'): PlanInput {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (err) {
    throw bad(`${source} is not valid JSON: ${(err as Error).message.split('\n')[0]}`);
  }
  return checkPlanInput(raw);
}

/** Reads, parses and checks an input file. */
export function readPlanInput(file: string): PlanInput {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied'
      : code === 'EISDIR' ? 'it is a directory' : (err as Error).message;
    throw bad(`cannot read --input '${file}': ${why}`);
  }
  return parsePlanInput(text, `--input '${file}'`);
}

/** The indexed form of a checked input. */
export function toInstance(input: PlanInput): Instance {
  const hostIndex = new Map(input.hosts.map((h, i) => [h.name, i]));
  const vmIndex = new Map(input.vms.map((v, i) => [v.name, i]));
  const n = input.vms.length;
  const share = new Float64Array(n * n);
  for (const [a, b, mb] of input.sharingMB) {
    const i = vmIndex.get(a)!;
    const j = vmIndex.get(b)!;
    share[i * n + j] = mb;
    share[j * n + i] = mb;
  }
  return {
    hostNames: input.hosts.map((h) => h.name),
    capacity: input.hosts.map((h) => h.capacityMB),
    vmNames: input.vms.map((v) => v.name),
    size: input.vms.map((v) => v.sizeMB),
    initial: input.vms.map((v) => hostIndex.get(v.host)!),
    share,
  };
}
