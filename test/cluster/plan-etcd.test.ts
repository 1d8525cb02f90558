/**
 * `dormant plan --etcd URL`: the plan's input from the cluster as it runs.
 * A real store (through the store API) holds the memory volumes of six
 * VMs in two content families, shaped like the ballast guests' memory: a
 * part alike in every VM, a part per family, a part of each VM's own. Their
 * sketches (VmSketches, the code a daemon publishes with) are checked
 * against the exact sets of chunk hashes; three hosts on a real etcd
 * (test/helpers/etcd.ts), in this process (Membership, with a stand-in
 * memory size), publish them in their live records, the families spread
 * over the hosts; then the real CLI plans from etcd: the input it shows has
 * the hosts, the VMs where they run and the pairs' sharing close to the
 * exact figures, and the plan puts each family on one host. `dormant
 * hosts --json` reports each live record's bytes. Bad input: --input with
 * --etcd, nothing named, an etcd that does not answer. No daemon, no QEMU.
 */
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Store } from '../../src/blockstore/index.js';
import {
  EtcdClient, FingerprintSketch, Membership, SKETCH_K, VmSketches, chunkHashSet, commonCount, liveInput,
  type HostStatus, type LiveRecord, type PlanInput,
} from '../../src/cluster/index.js';
import { freePort } from '../../src/vm/index.js';
import { dormantAsync, expectFailure, expectOk } from '../helpers/cli.js';
import { TestEtcd, stopAllEtcd } from '../helpers/etcd.js';
import { TempDirs } from '../helpers/tmp.js';

const MiB = 1024 * 1024;
const PAGE = 4096;
/** Pages per memory volume (16 MiB), far more than a sketch keeps. */
const PAGES = 4096;
const FAMILIES: Record<string, string[]> = { a: ['a1', 'a2', 'a3'], b: ['b1', 'b2', 'b3'] };
/** Where each VM runs: the families spread over the hosts. */
const PLACED: Record<string, string[]> = { h1: ['a1', 'b1'], h2: ['a2', 'b2'], h3: ['a3', 'b3'] };

const tmp = new TempDirs();
let etcd: TestEtcd;
let store: Store;
const members: Membership[] = [];
const exact = new Map<string, Set<string>>();

/** A page of content `tag` (non-zero, distinct per tag). */
function page(tag: string): Buffer {
  const b = Buffer.alloc(PAGE, tag.length + 1);
  b.write(`${tag}\n`);
  return b;
}

/**
 * VM `vm` of family `fam`: pages 0-9 % alike in every VM, 10-59 % its
 * family's (each VM of the family holds a different 80 % of that part),
 * the rest its own; the last pages zero (holes).
 */
async function writeMemory(vm: string, fam: string, nth: number): Promise<void> {
  await store.createVolume(`${vm}.mem`, PAGES * PAGE, 'memory');
  const h = await store.openVolume(`${vm}.mem`);
  const pages: Buffer[] = [];
  for (let p = 0; p < PAGES - 64; p++) {
    if (p < PAGES * 0.1) pages.push(page(`all-${p}`));
    else if (p < PAGES * 0.6) pages.push(page((p + nth) % 5 === 0 ? `${vm}-${p}` : `${fam}-${p}`));
    else pages.push(page(`${vm}-${p}`));
  }
  await h.write(0, Buffer.concat(pages));
  await h.flush();
  await h.close();
}

const hex = (hashes: Buffer): Set<string> => {
  const out = new Set<string>();
  for (let i = 0; i < hashes.length; i += 16) out.add(hashes.toString('hex', i, i + 16));
  return out;
};
const intersection = (a: Set<string>, b: Set<string>) => { let n = 0; for (const x of a) if (b.has(x)) n++; return n; };

beforeAll(async () => {
  const dir = tmp.make('plan-etcd');
  etcd = await TestEtcd.start(path.join(dir, 'etcd'));
  store = await Store.init(path.join(dir, 'store'));
  for (const [fam, vms] of Object.entries(FAMILIES)) for (const [i, vm] of vms.entries()) await writeMemory(vm, fam, i);
  for (const vm of Object.values(FAMILIES).flat()) exact.set(vm, hex(await chunkHashSet(store, `${vm}.mem`)));
  const sketches = new VmSketches(store, () => undefined);
  for (const [host, vms] of Object.entries(PLACED)) {
    members.push(await Membership.join({
      client: new EtcdClient([etcd.url]), name: host, url: `http://127.0.0.1:${await freePort()}`, ttlSeconds: 3, log: () => undefined,
      // 40 MiB for VMs: two of 16 MiB fit, or a family of three (it shares more than 8 MiB).
      memory: () => ({ capacityBytes: 40 * MiB, freeBytes: 20 * MiB }),
      vms: () => sketches.publish(vms.map((name) => ({ name, state: 'running', memoryBytes: PAGES * PAGE, pid: 1, pagesOut: 0 }))),
    }));
  }
}, 120_000);

afterAll(async () => {
  for (const m of members) await m.stop();
  await store?.close();
  await etcd?.stop();
  await stopAllEtcd();
  tmp.cleanup();
});

describe('memory fingerprints from the store', () => {
  it('a volume\'s fingerprint is its distinct non-zero chunks; the sketch estimates pairs within 8 % of a VM, 3 % on average', async () => {
    // Distinct pages: each VM's non-zero pages, none repeated.
    for (const s of exact.values()) expect(s.size).toBe(PAGES - 64);
    const vms = [...exact.keys()];
    const errors: number[] = [];
    for (let i = 0; i < vms.length; i++) {
      const a = FingerprintSketch.fromHashes(Buffer.from([...exact.get(vms[i])!].join(''), 'hex'));
      expect(a.count).toBe(PAGES - 64);
      expect(a.values.length).toBe(SKETCH_K);
      for (let j = i + 1; j < vms.length; j++) {
        const b = FingerprintSketch.fromHashes(Buffer.from([...exact.get(vms[j])!].join(''), 'hex'));
        const truth = intersection(exact.get(vms[i])!, exact.get(vms[j])!);
        errors.push(Math.abs(commonCount(a, b) - truth) / (PAGES - 64));
        expect(errors.at(-1), `${vms[i]} ${vms[j]}`).toBeLessThan(0.08);
      }
    }
    expect(errors.reduce((x, y) => x + y, 0) / errors.length).toBeLessThan(0.03);
  });
});

describe('dormant plan --etcd', () => {
  it('hosts publish each running VM\'s size and sketch; hosts --json reports the record\'s bytes', async () => {
    const { kvs } = await etcd.client.rangePrefix('/dormant/hosts/');
    expect(kvs.map((kv) => kv.key)).toEqual(['/dormant/hosts/h1', '/dormant/hosts/h2', '/dormant/hosts/h3']);
    for (const kv of kvs) {
      const r = JSON.parse(kv.value);
      for (const v of r.vms) {
        expect(v.memoryBytes).toBe(PAGES * PAGE);
        expect(FingerprintSketch.fromBase64(v.sketch).count).toBe(PAGES - 64);
      }
    }
    const listed = JSON.parse(expectOk(await dormantAsync(['hosts', '--etcd', etcd.url, '--json']))).hosts as HostStatus[];
    for (const h of listed) {
      // Two sketches of 1545 bytes in base64 and the rest of the record.
      expect(h.recordBytes).toBeGreaterThan(2 * 2060);
      expect(h.recordBytes).toBeLessThan(2 * 2060 + 600);
    }
  });

  it('plans from the live records: the input shows the VMs where they run and their sharing; each family goes to one host', async () => {
    const r = JSON.parse(expectOk(await dormantAsync(['plan', '--etcd', etcd.url, '--json'])));
    const input = r.input as PlanInput;
    expect(input.hosts).toEqual(['h1', 'h2', 'h3'].map((name) => ({ name, capacityMB: 40 })));
    expect(input.vms).toEqual(Object.entries(PLACED).flatMap(([host, vms]) => vms.map((name) => ({ name, sizeMB: 16, host }))));
    for (const [a, b, mb] of input.sharingMB) {
      const truth = intersection(exact.get(a)!, exact.get(b)!) * PAGE / MiB;
      // 8 % of a VM, as above (a sketch's error is a share of the sets, whatever their size).
      expect(Math.abs(mb - truth), `${a} ${b}: ${mb} MB, exact ${truth}`).toBeLessThan(0.08 * 16);
    }
    // Every pair shares the part alike in all: 15 pairs.
    expect(input.sharingMB).toHaveLength(15);
    const groups = Object.values(FAMILIES).map((vms) => new Set(vms.map((v) => r.placement[v])));
    expect(groups.map((g) => g.size)).toEqual([1, 1]);
    expect(r.savedMB).toBeGreaterThan(10);
    expect(r.safeOrder).toBe(true);
    // The text form says where the input came from.
    const text = await dormantAsync(['plan', '--etcd', etcd.url]);
    expect(text.status).toBe(0);
    expect(text.stdout).toContain('saved');
    expect(text.stderr).toMatch(/from etcd: 3 hosts up, 6 running VMs, 15 pairs sharing memory/);
  });

  it('a VM with no sketch yet counts as sharing nothing, a booting one is left out, and the plan says so', async () => {
    await etcd.client.put('/dormant/hosts/h9', JSON.stringify({
      name: 'h9', url: 'http://127.0.0.1:1', capacityBytes: 40 * MiB, freeBytes: 0, usedBytes: 40 * MiB,
      vms: [{ name: 'new1', state: 'running', memoryBytes: 8 * MiB }, { name: 'off1', state: 'stopped', memoryBytes: 8 * MiB },
        { name: 'boot1', state: 'booting', memoryBytes: 8 * MiB }],
      pid: 1, updatedAt: new Date().toISOString(),
    }));
    try {
      const res = await dormantAsync(['plan', '--etcd', etcd.url, '--json']);
      const r = JSON.parse(expectOk(res));
      expect(r.input.vms.map((v: { name: string }) => v.name)).toContain('new1');
      expect(r.input.vms.map((v: { name: string }) => v.name)).not.toContain('off1');
      expect(r.input.sharingMB.some((e: [string, string, number]) => e.includes('new1'))).toBe(false);
      const text = await dormantAsync(['plan', '--etcd', etcd.url]);
      expect(text.stderr).toMatch(/note: 1 VM has no fingerprint published yet \(new1\)/);
      // A booting VM is left out, and said to be (a plan made while guests boot would look like one of an empty cluster).
      expect(r.input.vms.map((v: { name: string }) => v.name)).not.toContain('boot1');
      expect(text.stderr).toMatch(/note: 1 VM is still booting \(boot1\): left out until it runs/);
    } finally {
      await etcd.client.delete('/dormant/hosts/h9');
    }
  });

  it('a VM listed by a host its location record does not name, or by two hosts, is planned once', () => {
    const rec = (name: string, vms: string[]): LiveRecord => ({
      name, url: 'http://x', capacityBytes: 40 * MiB, freeBytes: 0, usedBytes: 0, pid: 1, updatedAt: '',
      vms: vms.map((v) => ({ name: v, state: 'running', memoryBytes: 8 * MiB })),
    });
    const { input, notes } = liveInput([rec('h2', ['m', 'twice']), rec('h1', ['m', 'twice'])], new Map([['m', 'h2']]));
    expect(input.vms).toEqual([{ name: 'twice', sizeMB: 8, host: 'h1' }, { name: 'm', sizeMB: 8, host: 'h2' }]);
    expect(notes).toContain('VM m listed by host h1 is recorded on host h2: left out there');
    expect(notes).toContain('VM twice listed by host h2 is also on host h1: left out there');
    expect(() => liveInput([], new Map())).toThrow(/no host is up in etcd/);
  });

  it('bad input: one line, exit 1', async () => {
    expectFailure(await dormantAsync(['plan', '--etcd', etcd.url, '--input', '/nonexistent.json']), /--input and --etcd are two inputs: give one/);
    expectFailure(await dormantAsync(['plan'], { env: { DORMANT_ETCD: undefined } }), /nothing to plan: give --input FILE, or --etcd URL/);
    expectFailure(await dormantAsync(['plan', '--etcd', `http://127.0.0.1:${await freePort()}`]), /cannot reach etcd at http:\/\/127\.0\.0\.1:\d+: ECONNREFUSED/);
  });
});
