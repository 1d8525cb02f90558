/**
 * The placement planner's functions (src/cluster), in the test process:
 * the estimator against exact set sizes, the seed's greedy and the
 * planner on the seed's worked example (test/fixtures/placement-seed.json),
 * random small instances against the brute-force optimum, a large one
 * against the greedy, the migration order (a cycle broken through a third
 * host, or reported), the host relabelling, and the input checks.
 */
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  checkPlanInput, describePlan, expectedSharingMB, feasible, greedyPlacement, hungarian, mulberry32, needMB,
  optimalPlacement, orderMigrations, parsePlanInput, placeVms, plan, savedMB, syntheticInput, toInstance,
  totalSavedMB, type Instance, type PlanInput, type PlanResult,
} from '../../src/cluster/index.js';
import { REPO } from '../helpers/cli.js';

const SEED_FILE = path.join(REPO, 'test', 'fixtures', 'placement-seed.json');
const seedInput = (): PlanInput => parsePlanInput(fs.readFileSync(SEED_FILE, 'utf8'));

/** Host name -> sorted VM names, from a plan's placement. */
function byHost(r: PlanResult): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const [vm, host] of Object.entries(r.placement)) (out[host] ??= []).push(vm);
  for (const vms of Object.values(out)) vms.sort();
  return out;
}

/**
 * The checks every plan must pass: every VM placed, no host over its
 * capacity, saved = before - after, the migrations carried out in order
 * from the current placement end at the plan, and (when safeOrder) no step
 * overfills a host that was within its capacity.
 */
function expectConsistent(input: PlanInput, r: PlanResult): void {
  const inst = toInstance(input);
  expect(Object.keys(r.placement).sort()).toEqual(input.vms.map((v) => v.name).sort());
  for (const h of r.hosts) expect(h.afterMB).toBeLessThanOrEqual(h.capacityMB + 1e-6);
  expect(r.savedMB).toBeCloseTo(r.beforeMB - r.afterMB, 6);
  const hostIdx = new Map(inst.hostNames.map((n, i) => [n, i]));
  const cur = [...inst.initial];
  const members = (h: number) => cur.map((x, v) => (x === h ? v : -1)).filter((v) => v >= 0);
  for (const m of r.migrations) {
    const v = inst.vmNames.indexOf(m.vm);
    expect(inst.hostNames[cur[v]], `${m.vm} leaves the host it is on`).toBe(m.from);
    cur[v] = hostIdx.get(m.to)!;
    if (r.safeOrder) expect(needMB(inst, members(cur[v]))).toBeLessThanOrEqual(inst.capacity[cur[v]] + 1e-6);
  }
  expect(cur.map((h) => inst.hostNames[h])).toEqual(inst.vmNames.map((n) => r.placement[n]));
  const changed = input.vms.filter((v) => r.placement[v.name] !== v.host).map((v) => v.name).sort();
  expect([...new Set(r.migrations.map((m) => m.vm))].sort()).toEqual(changed);
}

describe('the estimator', () => {
  it('is the pair\'s sharing for two VMs and a maximum spanning tree for more, whatever the order', () => {
    const inst = toInstance(seedInput());
    expect(savedMB(inst, [2, 4])).toBe(339);
    expect(needMB(inst, [0, 1])).toBe(1024 + 2048 - 254);
    // VM0, VM2, VM4: edges 235, 207, 339 -> tree 339 + 235
    expect(savedMB(inst, [0, 2, 4])).toBe(574);
    expect(savedMB(inst, [4, 0, 2])).toBe(574);
    expect(savedMB(inst, [0, 2], 4)).toBe(574);
    expect(savedMB(inst, [0, 2, 4, 1], -1, 1)).toBe(574);
    expect(savedMB(inst, [3])).toBe(0);
    expect(savedMB(inst, [])).toBe(0);
  });

  it('never needs less than the exact union of the VMs\' pages (random page sets)', () => {
    const rand = mulberry32(7);
    for (let trial = 0; trial < 200; trial++) {
      const k = 2 + Math.floor(rand() * 5);
      const pool = 50 + Math.floor(rand() * 200);
      const sets = Array.from({ length: k }, () => {
        const s = new Set<number>();
        const size = 10 + Math.floor(rand() * 60);
        while (s.size < Math.min(size, pool)) s.add(Math.floor(rand() * pool));
        return s;
      });
      const share = new Float64Array(k * k);
      for (let i = 0; i < k; i++) {
        for (let j = 0; j < k; j++) if (i !== j) share[i * k + j] = [...sets[i]].filter((p) => sets[j].has(p)).length;
      }
      const inst: Instance = {
        hostNames: ['H'], capacity: [1e9], vmNames: sets.map((_, i) => `V${i}`),
        size: sets.map((s) => s.size), initial: sets.map(() => 0), share,
      };
      const union = new Set(sets.flatMap((s) => [...s])).size;
      const members = sets.map((_, i) => i);
      expect(needMB(inst, members)).toBeGreaterThanOrEqual(union);
      // and saves at least the best single pair
      expect(savedMB(inst, members)).toBeGreaterThanOrEqual(Math.max(...share));
    }
  });
});

describe('the seed\'s worked example', () => {
  it('the greedy: expected sharing as the seed defines it, VM2+VM4 then VM0 on the first host', () => {
    const inst = toInstance(seedInput());
    expect(expectedSharingMB(inst, [2, 4], 0)).toBe(235 + 207 / 2);
    const g = greedyPlacement(inst)!;
    expect(g).toEqual([0, 1, 0, 2, 0]);
    expect(totalSavedMB(inst, g)).toBe(574);
    expect(feasible(inst, g)).toBe(true);
    const r = plan(seedInput(), { method: 'greedy' });
    expect(r.savedMB).toBe(308); // below the prototype's 327: the local search is what reaches it
    expectConsistent(seedInput(), r);
  });

  it('the planner saves at least the prototype\'s 327 MB within capacities, with one migration', () => {
    const r = plan(seedInput());
    expectConsistent(seedInput(), r);
    expect(r.savedMB).toBeGreaterThanOrEqual(327);
    expect(r.beforeMB).toBe(7168 - 254 - 12);
    expect(r.afterMB).toBe(7168 - 254 - 339);
    expect(Object.values(byHost(r)).sort()).toEqual([['VM0', 'VM1'], ['VM2', 'VM4'], ['VM3']]);
    expect(r.migrations).toEqual([{ vm: 'VM2', from: 'M1', to: 'M2' }]);
    expect(r.safeOrder).toBe(true);
    expect(plan(seedInput(), { method: 'exhaustive' }).savedMB).toBe(r.savedMB);
  });

  it('keeps the current placement when it is already the best (fewer migrations on a tie)', () => {
    const input = seedInput();
    const where: Record<string, string> = { VM0: 'M2', VM1: 'M2', VM2: 'M0', VM3: 'M1', VM4: 'M0' };
    input.vms = input.vms.map((v) => ({ ...v, host: where[v.name] }));
    const r = plan(input);
    expect(r.migrations).toEqual([]);
    expect(r.savedMB).toBe(0);
    expect(r.placement).toEqual(where);
  });

  it('moves one VM off an overfull host when one is enough (VMs that share nothing: fewer migrations on a tie)', () => {
    const input: PlanInput = {
      hosts: [{ name: 'M0', capacityMB: 1000 }, { name: 'M1', capacityMB: 4000 }],
      vms: [{ name: 'A', sizeMB: 600, host: 'M0' }, { name: 'B', sizeMB: 600, host: 'M0' }],
      sharingMB: [],
    };
    const r = plan(input);
    expect(r.migrations).toHaveLength(1);
    expect(Object.values(r.placement).sort()).toEqual(['M0', 'M1']);
    expectConsistent(input, r);
  });
});

describe('quality', () => {
  it('reaches at least 95% of the brute-force optimum\'s colocated sharing on random small instances', () => {
    const rand = mulberry32(2024);
    let checked = 0;
    let worst = 1;
    for (let seed = 1; checked < 80; seed++) {
      const input = syntheticInput({
        vms: 6 + Math.floor(rand() * 3),
        hosts: 2 + Math.floor(rand() * 2),
        families: 2 + Math.floor(rand() * 2),
        seed,
        slack: 1.05 + rand() * 0.45,
      });
      if (!input) continue;
      checked++;
      const inst = toInstance(input);
      const best = optimalPlacement(inst)!;
      const ours = placeVms(inst);
      expect(feasible(inst, ours), `seed ${seed}: within capacities`).toBe(true);
      const saved = totalSavedMB(inst, ours);
      const ratio = best.score.saved === 0 ? 1 : saved / best.score.saved;
      worst = Math.min(worst, ratio);
      expect(ratio, `seed ${seed}: ${saved} MB of the optimum's ${best.score.saved} MB`).toBeGreaterThanOrEqual(0.95);
      expectConsistent(input, describePlan(inst, ours));
    }
    expect(worst).toBeGreaterThan(0.95);
  });

  it('does at least as well as the greedy on 100 VMs in 10 families on 10 hosts, within capacities', () => {
    const input = syntheticInput({ vms: 100, hosts: 10, families: 10, seed: 5, slack: 1.2 })!;
    const inst = toInstance(input);
    const greedy = totalSavedMB(inst, greedyPlacement(inst)!);
    const r = plan(input, { rounds: 10 });
    expectConsistent(input, r);
    const ours = totalSavedMB(inst, Object.values(r.placement).map((h) => inst.hostNames.indexOf(h)));
    expect(ours).toBeGreaterThanOrEqual(greedy);
    expect(r.savedMB).toBeGreaterThan(0);
  });
});

describe('migrations', () => {
  // A and B are full and trade VMs: a1+b1 and a2+b2 share 500 MB each.
  const swapInput = (third: boolean): PlanInput => ({
    hosts: [{ name: 'A', capacityMB: 2048 }, { name: 'B', capacityMB: 2048 }, ...(third ? [{ name: 'C', capacityMB: 1024 }] : [])],
    vms: [
      { name: 'a1', sizeMB: 1024, host: 'A' }, { name: 'a2', sizeMB: 1024, host: 'A' },
      { name: 'b1', sizeMB: 1024, host: 'B' }, { name: 'b2', sizeMB: 1024, host: 'B' },
    ],
    sharingMB: [['a1', 'b1', 500], ['a2', 'b2', 500]],
  });

  it('a cycle goes through a third host with room: one VM moves twice, never overfilling a host', () => {
    const r = plan(swapInput(true));
    expect(r.savedMB).toBe(1000);
    expect(r.safeOrder).toBe(true);
    expect(r.migrations).toHaveLength(3);
    expect(r.migrations[0].to).toBe('C');
    expectConsistent(swapInput(true), r);
  });

  it('a cycle with nowhere to go is reported: safeOrder false, the moves still listed', () => {
    const r = plan(swapInput(false));
    expect(r.savedMB).toBe(1000);
    expect(r.safeOrder).toBe(false);
    expect(r.migrations).toHaveLength(2);
    expectConsistent(swapInput(false), r);
  });

  it('orders moves so that a host is emptied before it is filled', () => {
    const input: PlanInput = {
      hosts: [{ name: 'A', capacityMB: 2048 }, { name: 'B', capacityMB: 2048 }, { name: 'C', capacityMB: 2048 }],
      vms: [
        { name: 'x', sizeMB: 2048, host: 'A' }, { name: 'y', sizeMB: 1024, host: 'B' },
        { name: 'z', sizeMB: 1024, host: 'C' },
      ],
      sharingMB: [['y', 'z', 1]],
    };
    const inst = toInstance(input);
    // y goes to A (full until x leaves), x to C (free once z leaves), z to B
    const { steps, safe } = orderMigrations(inst, [2, 0, 1]);
    expect(safe).toBe(true);
    expect(steps.map((s) => inst.vmNames[s.vm])).toEqual(['z', 'x', 'y']);
  });

  it('the Hungarian method finds the cheapest assignment', () => {
    const cost = [[4, 1, 3], [2, 0, 5], [3, 2, 2]];
    const col = hungarian(cost);
    expect(col.reduce((s, c, r) => s + cost[r][c], 0)).toBe(5);
    expect(new Set(col).size).toBe(3);
  });
});

describe('input checks', () => {
  const base = (): any => JSON.parse(JSON.stringify(seedInput()));
  const cases: [string, (x: any) => unknown, RegExp][] = [
    ['a VM larger than every host', (x) => { x.vms[1].sizeMB = 4096; }, /VM "VM1" \(4096 MB\) is larger than every host/],
    ['a sharing entry naming an unknown VM', (x) => { x.sharingMB.push(['VM0', 'VM9', 1]); }, /names unknown VM "VM9"/],
    ['a negative size', (x) => { x.vms[0].sizeMB = -1; }, /VM "VM0": "sizeMB" must be a number of MB greater than 0, not -1/],
    ['a non-numeric size', (x) => { x.vms[0].sizeMB = '1024'; }, /"sizeMB" must be a number .* not "1024"/],
    ['a duplicate VM name', (x) => { x.vms[1].name = 'VM0'; }, /duplicate VM name "VM0"/],
    ['a duplicate host name', (x) => { x.hosts[1].name = 'M0'; }, /duplicate host name "M0"/],
    ['a VM on an unknown host', (x) => { x.vms[0].host = 'M7'; }, /VM "VM0" is on unknown host "M7"/],
    ['a negative capacity', (x) => { x.hosts[0].capacityMB = -5; }, /host "M0": "capacityMB" must be/],
    ['a negative sharing', (x) => { x.sharingMB[0][2] = -3; }, /sharingMB\[0\]: the common MB must be a number, at least 0/],
    ['sharing more than the smaller VM', (x) => { x.sharingMB[0][2] = 2000; }, /cannot have 2000 MB in common: the smaller is 1024 MB/],
    ['a pair listed twice', (x) => { x.sharingMB.push(['VM1', 'VM0', 3]); }, /duplicate entry for "VM1" and "VM0"/],
    ['a VM paired with itself', (x) => { x.sharingMB.push(['VM2', 'VM2', 3]); }, /pairs VM "VM2" with itself/],
    ['an unknown field', (x) => { x.sharingMb = []; }, /unknown field "sharingMb"/],
    ['no hosts', (x) => { x.hosts = []; }, /"hosts" must be a non-empty array/],
    ['a sharing entry of the wrong shape', (x) => { x.sharingMB[0] = ['VM0', 'VM1']; }, /sharingMB\[0\] must be \["VM", "VM", MB\]/],
    ['not an object', () => [], /the input must be an object/],
  ];
  for (const [what, change, pattern] of cases) {
    it(`refuses ${what}`, () => {
      const x = base();
      const replaced = change(x);
      expect(() => checkPlanInput(replaced ?? x)).toThrow(pattern);
    });
  }

  it('refuses malformed JSON, naming the source', () => {
    expect(() => parsePlanInput('{"hosts": [', 'in.json')).toThrow(/^in\.json is not valid JSON: /);
  });

  it('a missing sharingMB is no sharing; every error is EINVAL', () => {
    const x = base();
    delete x.sharingMB;
    expect(plan(checkPlanInput(x)).savedMB).toBe(0);
    try { checkPlanInput({}); } catch (err) { expect((err as { code: string }).code).toBe('EINVAL'); }
  });

  it('finds a placement by packing when the greedy fails and the current placement overfills a host', () => {
    const input: PlanInput = {
      hosts: [{ name: 'A', capacityMB: 1000 }, { name: 'B', capacityMB: 600 }],
      vms: [
        { name: 'p', sizeMB: 600, host: 'A' }, { name: 'q', sizeMB: 400, host: 'A' },
        { name: 'r', sizeMB: 400, host: 'A' }, { name: 's', sizeMB: 200, host: 'A' },
      ],
      sharingMB: [['p', 's', 1]],
    };
    expect(greedyPlacement(toInstance(input))).toBeNull(); // p+s first, then q and r fit nowhere together
    const r = plan(input);
    expect(byHost(r)).toEqual({ A: ['q', 'r', 's'], B: ['p'] });
    expectConsistent(input, r);
  });

    it('says so when no placement fits', () => {
    const input: PlanInput = {
      hosts: [{ name: 'A', capacityMB: 1024 }],
      vms: [{ name: 'x', sizeMB: 1024, host: 'A' }, { name: 'y', sizeMB: 512, host: 'A' }],
      sharingMB: [],
    };
    expect(() => plan(input)).toThrow(/no placement found that fits every VM in the hosts' capacities \(the current one overfills A\)/);
  });
});
