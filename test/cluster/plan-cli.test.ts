/**
 * `dormant plan --input FILE [--json]` through the real CLI: the seed's
 * worked example as text and as JSON (parsed and checked for consistency),
 * the warning when no migration order is safe, and every bad input the issue lists as one line on stderr and exit 1.
 * Needs no store.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, expectFailure, expectOk, REPO } from '../helpers/cli.js';
import { TempDirs } from '../helpers/tmp.js';

const SEED_FILE = path.join(REPO, 'test', 'fixtures', 'placement-seed.json');
const tmp = new TempDirs();
let dir: string;

beforeAll(() => { dir = tmp.make('plan'); });
afterAll(() => tmp.cleanup());

/** Writes `text` (or the seed's input changed by `change`) to a file; returns its path. */
function inputFile(name: string, change: ((x: any) => void) | string): string {
  const file = path.join(dir, name);
  if (typeof change === 'string') {
    fs.writeFileSync(file, change);
  } else {
    const x = JSON.parse(fs.readFileSync(SEED_FILE, 'utf8'));
    change(x);
    fs.writeFileSync(file, JSON.stringify(x));
  }
  return file;
}

describe('dormant plan', () => {
  it('prints the placement, the memory before and after, and the migrations', () => {
    const out = expectOk(dormant(['plan', '--input', SEED_FILE]));
    expect(out).toMatch(/^host\s+capacity\s+now\s+planned\s+VMs\n/);
    expect(out).toMatch(/^M0\s+3072 MB\s+2818 MB\s+2818 MB\s+VM0 VM1$/m);
    expect(out).toMatch(/^M2\s+3072 MB\s+1024 MB\s+1709 MB\s+VM2 VM4$/m);
    expect(out).toContain('now 6902 MB, planned 6575 MB, saved 327 MB');
    expect(out).toContain('1 migration, in this order:\n  1. VM2: M1 -> M2\n');
  });

  it('--json: parses, saved = before - after, migrations = the VMs whose host changed, capacities kept', () => {
    const r = JSON.parse(expectOk(dormant(['plan', '--input', SEED_FILE, '--json'])));
    const input = JSON.parse(fs.readFileSync(SEED_FILE, 'utf8'));
    expect(Object.keys(r).sort()).toEqual(['afterMB', 'beforeMB', 'hosts', 'migrations', 'placement', 'safeOrder', 'savedMB']);
    expect(r.savedMB).toBeGreaterThanOrEqual(327);
    expect(r.savedMB).toBe(r.beforeMB - r.afterMB);
    const changed = input.vms.filter((v: any) => r.placement[v.name] !== v.host);
    expect(r.migrations).toEqual(changed.map((v: any) => ({ vm: v.name, from: v.host, to: r.placement[v.name] })));
    expect(r.safeOrder).toBe(true);
    for (const h of r.hosts) expect(h.afterMB).toBeLessThanOrEqual(h.capacityMB);
    expect(r.hosts.reduce((s: number, h: any) => s + h.afterMB, 0)).toBe(r.afterMB);
  });

  it('an input that changes nothing: no migrations, saved 0', () => {
    const file = inputFile('kept.json', (x) => { x.sharingMB = []; });
    const out = expectOk(dormant(['plan', '--input', file]));
    expect(out).toContain('saved 0 MB');
    expect(out).toContain('no migrations: every VM stays where it is');
  });

  it('warns when no order of the migrations keeps every host within its capacity', () => {
    const file = inputFile('cycle.json', JSON.stringify({
      hosts: [{ name: 'A', capacityMB: 2048 }, { name: 'B', capacityMB: 2048 }],
      vms: [
        { name: 'a1', sizeMB: 1024, host: 'A' }, { name: 'a2', sizeMB: 1024, host: 'A' },
        { name: 'b1', sizeMB: 1024, host: 'B' }, { name: 'b2', sizeMB: 1024, host: 'B' },
      ],
      sharingMB: [['a1', 'b1', 500], ['a2', 'b2', 500]],
    }));
    const out = expectOk(dormant(['plan', '--input', file]));
    expect(out).toContain('saved 1000 MB');
    expect(out).toMatch(/2 migrations, in this order:\n {2}1\. \w+: [AB] -> [AB]\n {2}2\. \w+: [AB] -> [AB]\n/);
    expect(out).toMatch(/\nwarning: no order found that keeps every host within its capacity while the VMs move one at a time\n$/);
    expect(JSON.parse(expectOk(dormant(['plan', '--input', file, '--json']))).safeOrder).toBe(false);
  });

  const bad: [string, (x: any) => void, RegExp][] = [
    ['a VM larger than every host', (x) => { x.vms[3].sizeMB = 5000; }, /VM "VM3" \(5000 MB\) is larger than every host \(the largest, "M0", has 3072 MB\)$/],
    ['a sharing entry naming an unknown VM', (x) => { x.sharingMB.push(['VM7', 'VM0', 10]); }, /sharingMB\[10\] names unknown VM "VM7"$/],
    ['a negative size', (x) => { x.vms[2].sizeMB = -1024; }, /VM "VM2": "sizeMB" must be a number of MB greater than 0, not -1024$/],
    ['a non-numeric size', (x) => { x.vms[2].sizeMB = 'big'; }, /VM "VM2": "sizeMB" must be a number of MB greater than 0, not "big"$/],
    ['a duplicate VM name', (x) => { x.vms[4].name = 'VM1'; }, /duplicate VM name "VM1"$/],
    ['a duplicate host name', (x) => { x.hosts[2].name = 'M1'; }, /duplicate host name "M1"$/],
    ['a VM on an unknown host', (x) => { x.vms[0].host = 'M9'; }, /VM "VM0" is on unknown host "M9"$/],
  ];
  for (const [what, change, pattern] of bad) {
    it(`refuses ${what}: one line, exit 1`, () => {
      expectFailure(dormant(['plan', '--input', inputFile(`${what.replace(/\W+/g, '-')}.json`, change), '--json']), pattern, 1);
    });
  }

  it('refuses malformed JSON, a file that cannot be read, a directory, and no --input: one line, exit 1', () => {
    const broken = inputFile('broken.json', '{"hosts": [{"name": "M0", "capacityMB": 3072}');
    expectFailure(dormant(['plan', '--input', broken]), /--input '.*broken\.json' is not valid JSON: /, 1);
    expectFailure(dormant(['plan', '--input', path.join(dir, 'missing.json')]), /cannot read --input '.*missing\.json': no such file$/, 1);
    expectFailure(dormant(['plan', '--input', dir]), /cannot read --input '.*': it is a directory$/, 1);
    expectFailure(dormant(['plan'], { env: { DORMANT_ETCD: undefined } }), /nothing to plan: give --input FILE, or --etcd URL/, 1);
  });
});
