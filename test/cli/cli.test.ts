/**
 * The dormant CLI, driven as a user drives it: `node bin/dormant ...` in a
 * child process against a real store in a temp dir. Each group has its own
 * store; the environment never carries DORMANT_STORE unless a test sets it.
 *
 * Every command is checked for its output and its effect on the store, and
 * every user error for exit code 1, empty stdout and one clear stderr line.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, Store } from '../../src/blockstore/index.js';
import { dormant, dormantJson, expectFailure, expectOk } from '../helpers/cli.js';
import { blocksOf, firstDiff, nonZeroBlocks, pseudoRandom, randomBlock } from '../helpers/data.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** A fresh initialised store; returns its directory. */
function freshStore(prefix: string): string {
  const dir = path.join(tmp.make(prefix), 'store');
  expectOk(dormant(['init'], { store: dir }));
  return dir;
}

/**
 * A 1,000,001-byte image (not a whole number of blocks): random data with
 * zero runs, some covering whole blocks (holes), some not block-aligned.
 */
function makeImage(seed: number): Buffer {
  const img = pseudoRandom(seed, 1_000_001);
  img.fill(0, 100_000, 300_000); // covers blocks 25..72 whole: holes
  img.fill(0, 700_000, 712_288); // unaligned: 2 whole blocks inside
  img.fill(0, 999_000, 1_000_001); // tail of the last, partial block
  return img;
}

/** Writes `data` into a file in a temp dir; returns its path. */
function writeFile(name: string, data: Buffer): string {
  const file = path.join(tmp.make('file'), name);
  fs.writeFileSync(file, data);
  return file;
}

/** The keys every row of `list --json` has, and nothing else. */
const LIST_KEYS = ['allocated', 'created', 'kind', 'name', 'origin', 'shared', 'size', 'type', 'unique'];

interface ListRow {
  name: string; type: string; kind: string; size: number; allocated: number;
  unique: number; shared: number; origin: string | null; created: string;
}

function listRows(store: string): ListRow[] {
  const out = dormantJson<{ volumes: ListRow[] }>(['list'], { store });
  expect(Object.keys(out)).toEqual(['volumes']);
  return out.volumes;
}

function row(store: string, name: string): ListRow {
  const r = listRows(store).find((v) => v.name === name);
  expect(r, `list has ${name}`).toBeDefined();
  return r!;
}

/** Writes through the API while no CLI process holds the store. */
async function withApi(store: string, fn: (s: Store) => Promise<void>): Promise<void> {
  const s = await Store.open(store);
  try { await fn(s); } finally { await s.close(); }
}

describe('init and where the store lives', () => {
  it('init creates a store at --store and says where', () => {
    const dir = path.join(tmp.make('init'), 'nested', 'store');
    const out = expectOk(dormant(['init'], { store: dir }));
    expect(out).toBe(`initialised store at ${dir}\n`);
    expect(fs.existsSync(path.join(dir, 'index', 'data.mdb'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'segments'))).toBe(true);
    expect(fs.existsSync(path.join(dir, 'lock.pid')), 'lock released on exit').toBe(false);
    expect(expectOk(dormant(['list'], { store: dir }))).toMatch(/^no volumes/);
  });

  it('--store wins over DORMANT_STORE', () => {
    const base = tmp.make('where');
    const opt = path.join(base, 'opt');
    const env = path.join(base, 'env');
    expectOk(dormant(['init'], { store: opt, env: { DORMANT_STORE: env } }));
    expect(fs.existsSync(path.join(opt, 'index'))).toBe(true);
    expect(fs.existsSync(env)).toBe(false);
  });

  it('DORMANT_STORE wins over XDG_DATA_HOME', () => {
    const base = tmp.make('where');
    const env = path.join(base, 'env');
    const xdg = path.join(base, 'xdg');
    expect(expectOk(dormant(['init'], { env: { DORMANT_STORE: env, XDG_DATA_HOME: xdg } })))
      .toBe(`initialised store at ${env}\n`);
    expect(fs.existsSync(xdg)).toBe(false);
    // Later commands find it through the variable alone.
    expectOk(dormant(['create', 'v', '--size', '1M'], { env: { DORMANT_STORE: env, XDG_DATA_HOME: xdg } }));
    expect(row(env, 'v').size).toBe(2 ** 20);
  });

  it('defaults to $XDG_DATA_HOME/dormant', () => {
    const xdg = tmp.make('xdg');
    expect(expectOk(dormant(['init'], { env: { XDG_DATA_HOME: xdg } })))
      .toBe(`initialised store at ${path.join(xdg, 'dormant')}\n`);
    expectOk(dormant(['create', 'v', '--size', '4096'], { env: { XDG_DATA_HOME: xdg } }));
    expect(row(path.join(xdg, 'dormant'), 'v').size).toBe(4096);
  });

  it('without XDG_DATA_HOME, defaults to ~/.local/share/dormant', () => {
    const home = tmp.make('home');
    const out = expectOk(dormant(['init'], { env: { HOME: home, XDG_DATA_HOME: undefined } }));
    expect(out).toBe(`initialised store at ${path.join(home, '.local', 'share', 'dormant')}\n`);
  });
});

describe('import and export', () => {
  let store: string;
  const image = makeImage(1);
  beforeAll(() => { store = freshStore('io'); });

  it('imports an unaligned file with zero regions and exports it byte for byte', () => {
    const file = writeFile('disk.img', image);
    const out = expectOk(dormant(['import', 'disk1', file], { store }));
    expect(out).toMatch(/^imported disk1: 977 KiB \(1000001 bytes\), [\d.]+ KiB allocated, in [\d.]+ s \(.*\)\n$/);

    const r = row(store, 'disk1');
    expect(r).toMatchObject({ type: 'volume', kind: 'disk', size: 1_000_001, origin: null });
    // Zero blocks are holes: only blocks with data take space.
    expect(r.allocated).toBe(nonZeroBlocks(image) * BLOCK_SIZE);
    expect(r.allocated).toBeLessThan(image.length - 200_000);

    const target = path.join(tmp.make('export'), 'out.img');
    const exported = expectOk(dormant(['export', 'disk1', target], { store }));
    expect(exported).toMatch(new RegExp(`^exported disk1 to ${target.replace(/[.]/g, '\\.')}: 977 KiB \\(1000001 bytes`));
    const back = fs.readFileSync(target);
    expect(back.length).toBe(image.length);
    expect(firstDiff(back, image)).toBeNull();
  });

  it('import --kind memory makes a memory volume', () => {
    const data = Buffer.concat([randomBlock(7), Buffer.alloc(BLOCK_SIZE), randomBlock(8)]);
    expectOk(dormant(['import', '--kind', 'memory', 'ram1', writeFile('ram.img', data)], { store }));
    expect(row(store, 'ram1')).toMatchObject({ kind: 'memory', size: 3 * BLOCK_SIZE, allocated: 2 * BLOCK_SIZE });
    const target = path.join(tmp.make('export'), 'ram.out');
    expectOk(dormant(['export', 'ram1', target], { store }));
    expect(firstDiff(fs.readFileSync(target), data)).toBeNull();
  });

  it('exports a snapshot as it was, and the volume as it is now', async () => {
    const file = writeFile('g.img', image);
    expectOk(dormant(['import', 'gold', file], { store }));
    expect(expectOk(dormant(['snapshot', 'gold', 'base'], { store }))).toBe('created snapshot gold@base\n');
    const changed = Buffer.from(image);
    await withApi(store, async (s) => {
      const h = await s.openVolume('gold');
      const patch = randomBlock(99).subarray(0, 5000);
      await h.write(12_345, patch);
      patch.copy(changed, 12_345);
      await h.zero(0, BLOCK_SIZE);
      changed.fill(0, 0, BLOCK_SIZE);
      await h.close();
    });
    const dir = tmp.make('export');
    expectOk(dormant(['export', 'gold@base', path.join(dir, 'base.img')], { store }));
    expectOk(dormant(['export', 'gold', path.join(dir, 'head.img')], { store }));
    expect(firstDiff(fs.readFileSync(path.join(dir, 'base.img')), image)).toBeNull();
    expect(firstDiff(fs.readFileSync(path.join(dir, 'head.img')), changed)).toBeNull();
  });

  it('export of an empty volume is a file of zeroes of the volume size', () => {
    expect(expectOk(dormant(['create', 'empty', '--size', '10000'], { store })))
      .toBe('created disk volume empty: 9.8 KiB (10000 bytes)\n');
    const target = path.join(tmp.make('export'), 'empty.img');
    expectOk(dormant(['export', 'empty', target], { store }));
    const back = fs.readFileSync(target);
    expect(back.length).toBe(10_000);
    expect(back.every((b) => b === 0)).toBe(true);
  });
});

describe('branches, list and info', () => {
  let store: string;
  const image = makeImage(2);
  const goldenBlocks = nonZeroBlocks(image);
  const holeBlock = 30; // a hole in the image (bytes 100000..300000 are zero)
  const dataBlock = 3;

  beforeAll(async () => {
    store = freshStore('share');
    expectOk(dormant(['import', 'golden', writeFile('golden.img', image)], { store }));
    expectOk(dormant(['snapshot', 'golden', 'base'], { store }));
    for (const vm of ['vm1', 'vm2', 'vm3']) {
      expect(expectOk(dormant(['branch', vm, '--from', 'golden@base'], { store })))
        .toBe(`created branch ${vm} from golden@base\n`);
    }
    // vm3 writes: one block over golden data, one into a golden hole.
    await withApi(store, async (s) => {
      const h = await s.openVolume('vm3');
      await h.write(dataBlock * BLOCK_SIZE, randomBlock(1001));
      await h.write(holeBlock * BLOCK_SIZE, randomBlock(1002));
      await h.close();
    });
  });

  it('list --json has the documented shape, volumes each followed by their snapshots', () => {
    const rows = listRows(store);
    expect(rows.map((r) => r.name)).toEqual(['golden', 'golden@base', 'vm1', 'vm2', 'vm3']);
    for (const r of rows) {
      expect(Object.keys(r).sort()).toEqual(LIST_KEYS);
      expect(r.shared).toBe(r.allocated - r.unique);
      expect(Number.isNaN(Date.parse(r.created))).toBe(false);
      expect(r.size).toBe(image.length);
      expect(r.kind).toBe('disk');
    }
    expect(rows[1]).toMatchObject({ type: 'snapshot', origin: null, allocated: goldenBlocks * BLOCK_SIZE });
    expect(rows[0]).toMatchObject({ type: 'volume', origin: null, allocated: goldenBlocks * BLOCK_SIZE });
  });

  it('untouched branches share all of the golden image and own nothing', () => {
    const golden = row(store, 'golden@base');
    for (const vm of ['vm1', 'vm2']) {
      const r = row(store, vm);
      expect(r).toMatchObject({ type: 'volume', origin: 'golden@base', unique: 0 });
      expect(r.allocated).toBe(golden.allocated);
      expect(r.shared).toBe(golden.allocated);
    }
  });

  it('a branch that wrote has unique bytes for what it wrote', () => {
    const r = row(store, 'vm3');
    expect(r.unique).toBe(2 * BLOCK_SIZE);
    expect(r.allocated).toBe((goldenBlocks + 1) * BLOCK_SIZE); // the hole it filled is new
    expect(r.shared).toBe((goldenBlocks - 1) * BLOCK_SIZE);
  });

  it('list without --json prints a table', () => {
    const lines = expectOk(dormant(['list'], { store })).trimEnd().split('\n');
    expect(lines[0]).toMatch(/^NAME\s+TYPE\s+KIND\s+SIZE\s+ALLOCATED\s+UNIQUE\s+SHARED\s+ORIGIN$/);
    expect(lines).toHaveLength(6);
    expect(lines[5]).toMatch(/^vm3\s+volume\s+disk\s+977 KiB\s.*golden@base$/);
  });

  it('info --json of a branch: parent chain and block counts', () => {
    const i = dormantJson(['info', 'vm3'], { store });
    const total = blocksOf(image.length);
    expect(i).toMatchObject({
      name: 'vm3', type: 'volume', origin: 'golden@base', parentChain: ['golden@base'],
      snapshots: [], branches: [], openHandles: 0,
    });
    expect(i.blocks).toEqual({
      total,
      allocated: goldenBlocks + 1,
      own: 2,
      inherited: goldenBlocks - 1,
      holes: total - goldenBlocks - 1,
    });
    expect(i.allocated).toBe(i.blocks.allocated * BLOCK_SIZE);
  });

  it('info --json of the golden volume and of its snapshot list the dependants', () => {
    const g = dormantJson(['info', 'golden'], { store });
    expect(g).toMatchObject({
      type: 'volume', parentChain: [], snapshots: ['golden@base'], branches: ['vm1', 'vm2', 'vm3'],
    });
    expect(g.blocks).toMatchObject({ own: goldenBlocks, inherited: 0, allocated: goldenBlocks });
    const s = dormantJson(['info', 'golden@base'], { store });
    expect(s).toMatchObject({ type: 'snapshot', snapshots: [], branches: ['vm1', 'vm2', 'vm3'] });
  });

  it('a branch of a branch has the whole chain', () => {
    expectOk(dormant(['snapshot', 'vm3', 's1'], { store }));
    expectOk(dormant(['branch', 'vm4', '--from', 'vm3@s1'], { store }));
    const i = dormantJson(['info', 'vm4'], { store });
    expect(i.parentChain).toEqual(['vm3@s1', 'golden@base']);
    expect(i.blocks).toMatchObject({ own: 0, inherited: goldenBlocks + 1 });
    const text = expectOk(dormant(['info', 'vm4'], { store }));
    expect(text).toMatch(/^origin:\s+vm3@s1 <- golden@base$/m);
    expect(i.locality.sampledBlocks).toBe(goldenBlocks + 1);
    expect(text).toMatch(/^locality:\s+\d+\.\d % scattered/m);
    expect(text).toMatch(/^name:\s+vm4 \(volume, disk\)$/m);
  });
});

describe('rm, gc and stats', () => {
  let store: string;
  const keep = makeImage(3);
  const scrap = pseudoRandom(4, 300 * BLOCK_SIZE); // more data than `keep`: its segment becomes sparse

  beforeAll(() => {
    store = freshStore('gc');
    expectOk(dormant(['import', 'keep', writeFile('keep.img', keep)], { store }));
    expectOk(dormant(['import', 'scrap', writeFile('scrap.img', scrap)], { store }));
    expectOk(dormant(['snapshot', 'scrap', 'old'], { store }));
  });

  it('rm removes a volume with its snapshots; gc --json reclaims its bytes', () => {
    expect(expectOk(dormant(['rm', 'scrap'], { store })))
      .toBe('removed scrap, scrap@old (run dormant gc to reclaim the space)\n');
    expect(listRows(store).map((r) => r.name)).toEqual(['keep']);
    const r = dormantJson(['gc'], { store });
    expect(Object.keys(r).sort()).toEqual(['bytesReclaimed', 'chunksFreed', 'deadEntries', 'segmentsCompacted',
      'segmentsDeleted']);
    expect(r.chunksFreed).toBe(300);
    expect(r.bytesReclaimed).toBeGreaterThan(0);
    // What is left still reads back exactly.
    const target = path.join(tmp.make('export'), 'keep.img');
    expectOk(dormant(['export', 'keep', target], { store }));
    expect(firstDiff(fs.readFileSync(target), keep)).toBeNull();
    const s = dormantJson(['stats'], { store });
    expect(s.chunks).toBe(nonZeroBlocks(keep));
  });

  it('gc prints the bytes it reclaimed', () => {
    expectOk(dormant(['rm', 'keep'], { store }));
    const out = expectOk(dormant(['gc'], { store }));
    const m = /^reclaimed .* \((\d+) bytes\): (\d+) chunks freed, \d+ dead map entries, \d+ segments compacted, \d+ deleted\n$/
      .exec(out);
    expect(m, out).not.toBeNull();
    expect(Number(m![1])).toBeGreaterThan(0);
    expect(Number(m![2])).toBe(nonZeroBlocks(keep));
    expect(dormantJson(['stats'], { store })).toMatchObject({ chunks: 0, segments: 0, storedBytes: 0 });
  });

  it('stats reports dedup across volumes', () => {
    const dir = freshStore('stats');
    const img = makeImage(5);
    const file = writeFile('twice.img', img);
    expectOk(dormant(['import', 'a', file], { store: dir }));
    expectOk(dormant(['import', 'b', file], { store: dir }));
    const s = dormantJson(['stats'], { store: dir });
    const blocks = nonZeroBlocks(img);
    expect(s).toMatchObject({
      path: dir, formatVersion: 1, volumes: 2, snapshots: 0, chunks: blocks,
      storedBytes: blocks * BLOCK_SIZE, logicalBytes: 2 * blocks * BLOCK_SIZE, dedupRatio: 2,
    });
    const text = expectOk(dormant(['stats'], { store: dir }));
    expect(text).toMatch(/^dedup ratio: 2\.00$/m);
    expect(text).toMatch(/^volumes:\s+2 \(\+ 0 snapshots\)$/m);
    // Imported in order: nothing scattered; offline, no background relocation.
    expect(s.locality).toMatchObject({ sampledBlocks: 2 * blocks, fragmentation: 0 });
    expect(s.relocation).toBeNull();
    expect(text).toMatch(/^locality:\s+0\.0 % scattered \(\d+ runs over \d+ sampled blocks; mean run .*\)$/m);
  });
});

describe('--json on the commands that make or change', () => {
  it('import, create, snapshot, branch, resize, export, rm: each prints one JSON object with what it did', () => {
    const store = freshStore('json');
    const file = writeFile('json.img', makeImage(9));
    expect(dormantJson(['import', 'g', file], { store })).toMatchObject({ name: 'g', size: 1_000_001, format: 'raw' });
    expect(dormantJson(['create', 'm', '--size', '2M', '--kind', 'memory'], { store })).toEqual({ volume: 'm', size: 2 * 2 ** 20, kind: 'memory' });
    expect(dormantJson(['snapshot', 'g', 'base'], { store })).toEqual({ snapshot: 'g@base' });
    expect(dormantJson(['branch', 'b', '--from', 'g@base'], { store })).toEqual({ volume: 'b', from: 'g@base' });
    expect(dormantJson(['resize', 'b', '+3M'], { store })).toEqual({ volume: 'b', oldSize: 1_000_001, size: 1_000_001 + 3 * 2 ** 20 });
    const out = path.join(path.dirname(file), 'json.out');
    expect(dormantJson(['export', 'g@base', out], { store })).toMatchObject({ name: 'g@base', size: 1_000_001 });
    expect(fs.readFileSync(out).equals(makeImage(9))).toBe(true);
    expect(dormantJson(['rm', 'b'], { store })).toEqual({ removed: ['b'] });
    expect(dormantJson(['rm', 'g'], { store })).toEqual({ removed: ['g', 'g@base'] });
  });
});

describe('user errors: exit 1, nothing on stdout, one line on stderr', () => {
  let store: string;
  let file: string;
  beforeAll(() => {
    store = freshStore('err');
    file = writeFile('small.img', pseudoRandom(6, 3 * BLOCK_SIZE));
    expectOk(dormant(['create', 'a', '--size', '1M'], { store }));
    expectOk(dormant(['snapshot', 'a', 's'], { store }));
    expectOk(dormant(['branch', 'b', '--from', 'a@s'], { store }));
  });

  const cases: Array<[string, string[], RegExp]> = [
    ['unknown volume (info)', ['info', 'nope'], /unknown volume 'nope'/],
    ['unknown volume (export)', ['export', 'nope', '/tmp/never-written'], /unknown volume 'nope'/],
    ['unknown volume (snapshot)', ['snapshot', 'nope', 's'], /unknown volume 'nope'/],
    ['unknown volume (rm)', ['rm', 'nope'], /unknown volume 'nope'/],
    ['unknown snapshot (branch)', ['branch', 'c', '--from', 'a@nope'], /unknown snapshot 'a@nope'/],
    ['name taken (create)', ['create', 'a', '--size', '1M'], /volume 'a' already exists/],
    ['name taken (branch)', ['branch', 'a', '--from', 'a@s'], /volume 'a' already exists/],
    ['snapshot name taken', ['snapshot', 'a', 's'], /snapshot 'a@s' already exists/],
    ['bad size suffix', ['create', 'c', '--size', '10Q'], /bad size '10Q'/],
    ['zero size', ['create', 'c', '--size', '0'], /bad size '0'.*at least 1/],
    ['fractional bytes', ['create', 'c', '--size', '0.5'], /bad size '0\.5'/],
    ['size over 1 PiB', ['create', 'c', '--size', '2P'], /bad size .*1 PiB/],
    ['bad volume name', ['create', 'a/b', '--size', '1M'], /invalid volume name 'a\/b'/],
    ['bad snapshot name', ['snapshot', 'a', 'x y'], /invalid snapshot name 'x y'/],
    ['branch from a volume', ['branch', 'c', '--from', 'a'], /'a' is not a snapshot/],
    ['snapshot of a snapshot', ['snapshot', 'a@s', 't'], /cannot snapshot a snapshot/],
    ['rm of a snapshot with branches', ['rm', 'a@s'], /cannot remove 'a@s': branch b depends on 'a@s'/],
    ['rm of a volume whose snapshot has branches', ['rm', 'a'], /cannot remove 'a': branch b depends on 'a@s'/],
    ['unknown command', ['frobnicate'], /unknown command 'frobnicate' \(see dormant --help\)$/],
    ['unknown command close to a real one', ['lsit'], /unknown command 'lsit'.*list/],
    ['unknown option', ['list', '--bogus'], /unknown option '--bogus' \(see dormant list --help\)$/],
    ['unknown option of a subcommand', ['vm', 'start', 'x', '--bogus'], /unknown option '--bogus' \(see dormant vm start --help\)$/],
    ['unknown option close to a real one', ['list', '--jsn'], /unknown option '--jsn'.*--json/],
    ['missing --size', ['create', 'c'], /required option '--size <size>' not specified/],
    ['bad --kind (create)', ['create', 'c', '--size', '1M', '--kind', 'floppy'], /bad kind 'floppy'/],
    ['volume name too long', ['create', 'x'.repeat(129), '--size', '1M'], /invalid volume name 'x{129}'/],
    ['volume name with @', ['create', 'a@t', '--size', '1M'], /invalid volume name 'a@t'/],
    ['snapshot name with @', ['snapshot', 'a', 'b@c'], /invalid snapshot name 'b@c'/],
    ['export into a missing directory', ['export', 'a', '/nonexistent/dir/out.img'], /\/nonexistent\/dir\/out\.img/],
    ['import of a directory', ['import', 'c', '/tmp'], /'\/tmp' is not a regular file/],
    ['import of a missing file', ['import', 'c', '/nonexistent/dir/disk.img'], /^(?=.*\/nonexistent\/dir\/disk\.img)(?=.*no such file)/i],
  ];

  it.each(cases)('%s', (_what, args, pattern) => {
    expectFailure(dormant(args, { store }), pattern);
  });

  it('bad --kind on import, and name taken on import, leave the store as it was', () => {
    expectFailure(dormant(['import', '--kind', 'swap', 'c', file], { store }), /bad kind 'swap'/);
    expectFailure(dormant(['import', 'a', file], { store }), /volume 'a' already exists/);
    expectFailure(dormant(['import', 'c', path.join(path.dirname(file), 'missing.img')], { store }),
      /no such file/);
    expect(listRows(store).map((r) => r.name)).toEqual(['a', 'a@s', 'b']);
    expect(row(store, 'a').size).toBe(2 ** 20);
  });

  it('import of an empty file', () => {
    expectFailure(dormant(['import', 'c', writeFile('empty.img', Buffer.alloc(0))], { store }), /is empty/);
  });

  it('init twice', () => {
    expectFailure(dormant(['init'], { store }), new RegExp(`a store already exists at ${store}`));
  });

  it('store not initialised (empty dir, missing dir)', () => {
    const empty = tmp.make('noinit');
    expectFailure(dormant(['list'], { store: empty }), /store not initialised at .*\(run: dormant init\)/);
    const missing = path.join(empty, 'missing');
    expectFailure(dormant(['create', 'v', '--size', '1M'], { store: missing }), /store not initialised/);
    expect(fs.existsSync(missing), 'a failed command creates nothing').toBe(false);
  });

  it('store locked by another process names its pid', async () => {
    const s = await Store.open(store);
    try {
      const line = expectFailure(dormant(['list'], { store }), /is locked by another process/);
      expect(line).toContain(`(pid ${process.pid})`);
      expectFailure(dormant(['create', 'c', '--size', '1M'], { store }), /locked/);
    } finally {
      await s.close();
    }
    expect(listRows(store).map((r) => r.name)).toEqual(['a', 'a@s', 'b']);
  });
});
