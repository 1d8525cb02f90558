/**
 * Damaged data on disk must be loud and contained: a chunk whose bytes no
 * longer match its hash reads as EIO (never wrong data), every other block
 * still reads exactly, dedup never shares a damaged chunk, and a damaged
 * segment header makes reads from that segment EIO instead of a crash.
 *
 * The damage is done the way a disk does it: one byte flipped in a segment
 * file (segments/*.seg: a 4096-byte header, then one 4096-byte slot per
 * chunk), found by searching the file for the block's known bytes.
 */
import fs from 'node:fs';
import path from 'node:path';
import { afterEach, beforeAll, afterAll, describe, expect, it } from 'vitest';
import { BLOCK_SIZE, DormantError, Store } from '../../src/blockstore/index.js';
import { dormant, expectFailure, expectOk } from '../helpers/cli.js';
import { firstDiff, randomBlock } from '../helpers/data.js';
import { copyTree, TempDirs } from '../helpers/tmp.js';

const SEGMENT_HEADER = BLOCK_SIZE;
const tmp = new TempDirs();
afterAll(() => tmp.cleanup());

/** Distinct content of block `i` of the test volume. */
const blockOf = (i: number) => randomBlock(5000 + i);

function segmentFiles(dir: string): string[] {
  const segDir = path.join(dir, 'segments');
  return fs.readdirSync(segDir).filter((f) => f.endsWith('.seg')).sort().map((f) => path.join(segDir, f));
}

/** Segment file and byte offset of the slot holding `content`; fails unless exactly one slot holds it. */
function findSlot(dir: string, content: Buffer): { file: string; offset: number } {
  const hits: Array<{ file: string; offset: number }> = [];
  for (const file of segmentFiles(dir)) {
    const bytes = fs.readFileSync(file);
    for (let at = bytes.indexOf(content); at >= 0; at = bytes.indexOf(content, at + 1)) {
      expect((at - SEGMENT_HEADER) % BLOCK_SIZE, 'chunks sit in whole slots after the header').toBe(0);
      hits.push({ file, offset: at });
    }
  }
  expect(hits, 'the block is stored in exactly one slot').toHaveLength(1);
  return hits[0];
}

/** Flips every bit of the byte at `offset` of `file`. */
function flipByte(file: string, offset: number): void {
  const fd = fs.openSync(file, 'r+');
  try {
    const b = Buffer.alloc(1);
    expect(fs.readSync(fd, b, 0, 1, offset)).toBe(1);
    b[0] ^= 0xff;
    fs.writeSync(fd, b, 0, 1, offset);
  } finally {
    fs.closeSync(fd);
  }
}

/** Awaits `p`, which must fail with a DormantError of `code`; returns it. */
async function rejection(p: Promise<unknown>, code: string): Promise<DormantError> {
  const err = await p.then(() => null, (e: unknown) => e);
  expect(err, `expected a DormantError ${code}`).toBeInstanceOf(DormantError);
  expect((err as DormantError).code).toBe(code);
  return err as DormantError;
}

describe('a chunk whose data was damaged', () => {
  const N = 24; // blocks of `vol`
  const BAD = 7; // the block whose chunk gets damaged
  let dir: string;
  let store: Store | null = null;

  afterEach(async () => { await store?.close(); store = null; });

  /** A store with `vol` (N distinct blocks) and `twin` (sharing BAD's chunk), block BAD damaged on disk. */
  async function damagedStore(): Promise<string> {
    const d = path.join(tmp.make('corrupt'), 'store');
    const s = await Store.init(d);
    await s.createVolume('vol', N * BLOCK_SIZE);
    await s.createVolume('twin', 4 * BLOCK_SIZE);
    const v = await s.openVolume('vol');
    for (let i = 0; i < N; i++) await v.write(i * BLOCK_SIZE, blockOf(i));
    const t = await s.openVolume('twin');
    await t.write(BLOCK_SIZE, blockOf(BAD)); // deduplicated onto vol's chunk
    await t.write(2 * BLOCK_SIZE, blockOf(100));
    await v.close();
    await t.close();
    expect((await s.stats()).chunks).toBe(N + 1);
    await s.close();
    const { file, offset } = findSlot(d, blockOf(BAD));
    flipByte(file, offset + 1234);
    return d;
  }

  beforeAll(async () => { dir = await damagedStore(); });

  it('reads of that block fail with EIO; every other block reads back exactly', async () => {
    store = await Store.open(dir);
    const v = await store.openVolume('vol');
    const err = await rejection(v.read(BAD * BLOCK_SIZE, BLOCK_SIZE), 'EIO');
    expect(err.message).toMatch(/does not match its checksum \(block 7 of vol\)/);
    expect(err.volume).toBe('vol');
    expect(err.offset).toBe(BAD * BLOCK_SIZE);
    // A partial read inside the block, and a range across it, fail too: no wrong bytes ever.
    await rejection(v.read(BAD * BLOCK_SIZE + 100, 10), 'EIO');
    await rejection(v.read(0, N * BLOCK_SIZE), 'EIO');
    for (let i = 0; i < N; i++) {
      if (i === BAD) continue;
      expect(firstDiff(await v.read(i * BLOCK_SIZE, BLOCK_SIZE), blockOf(i)), `block ${i}`).toBeNull();
    }
    expect(firstDiff(await v.read(0, BAD * BLOCK_SIZE), Buffer.concat([...Array(BAD).keys()].map(blockOf))))
      .toBeNull();
    // The other volume sharing the chunk sees the damage too; its other blocks are fine.
    const t = await store.openVolume('twin');
    await rejection(t.read(BLOCK_SIZE, BLOCK_SIZE), 'EIO');
    expect(firstDiff(await t.read(2 * BLOCK_SIZE, 2 * BLOCK_SIZE), Buffer.concat([blockOf(100), Buffer.alloc(BLOCK_SIZE)])))
      .toBeNull();
    // A failed read does not poison the store: it still writes and flushes.
    await v.write(0, blockOf(200));
    await v.flush();
    expect(firstDiff(await v.read(0, BLOCK_SIZE), blockOf(200))).toBeNull();
    await v.write(0, blockOf(0));
    await v.close();
    await t.close();
  });

  it('dormant export of that volume exits 2 with one line naming the checksum', () => {
    const out = path.join(tmp.make('export'), 'vol.img');
    // EIO is data damage, not a user error: exit.ts maps it to 2 (internal).
    const line = expectFailure(dormant(['export', 'vol', out], { store: dir }), /checksum/, 2);
    expect(line).toMatch(/segment \d+ slot \d+ does not match its checksum \(block 7 of vol\)/);
    // The store is left closed and unlocked.
    expectOk(dormant(['list'], { store: dir }));
  });

  it('a write of the damaged block\'s original content is not deduplicated onto the damaged chunk', async () => {
    const d = await damagedStore();
    store = await Store.open(d);
    const chunksBefore = (await store.stats()).chunks;
    await store.createVolume('fresh', 2 * BLOCK_SIZE);
    const f = await store.openVolume('fresh');
    await f.write(0, blockOf(BAD));
    expect(firstDiff(await f.read(0, BLOCK_SIZE), blockOf(BAD)), 'before flush').toBeNull();
    await f.flush();
    expect(firstDiff(await f.read(0, BLOCK_SIZE), blockOf(BAD)), 'after flush').toBeNull();
    expect((await store.stats()).chunks, 'stored as a new chunk').toBe(chunksBefore + 1);
    // The same content written again shares the new, good chunk.
    await f.write(BLOCK_SIZE, blockOf(BAD));
    // And rewriting it into the damaged volume repairs that volume.
    const v = await store.openVolume('vol');
    await v.write(BAD * BLOCK_SIZE, blockOf(BAD));
    await v.close();
    await f.close();
    expect((await store.stats()).chunks).toBe(chunksBefore + 1);
    await store.close();

    store = await Store.open(d);
    const f2 = await store.openVolume('fresh');
    expect(firstDiff(await f2.read(0, 2 * BLOCK_SIZE), Buffer.concat([blockOf(BAD), blockOf(BAD)])), 'after reopen')
      .toBeNull();
    await f2.close();
    const v2 = await store.openVolume('vol');
    expect(firstDiff(await v2.read(0, N * BLOCK_SIZE), Buffer.concat([...Array(N).keys()].map(blockOf)))).toBeNull();
    await v2.close();
    // The twin still points at the damaged chunk.
    const t = await store.openVolume('twin');
    await rejection(t.read(BLOCK_SIZE, BLOCK_SIZE), 'EIO');
    await t.close();
  });

  /** Opens a damaged store whose segment is then made mostly garbage, so gc wants to compact it. */
  async function openWithGarbage(d: string): Promise<Store> {
    const s = await Store.open(d);
    await s.createVolume('junk', 64 * BLOCK_SIZE);
    const j = await s.openVolume('junk');
    for (let i = 0; i < 64; i++) await j.write(i * BLOCK_SIZE, randomBlock(9000 + i));
    await j.close();
    await s.flush();
    await s.remove('junk');
    return s;
  }

  it('gc keeps a damaged segment it cannot compact, and every good block stays readable', async () => {
    const d = await damagedStore();
    store = await openWithGarbage(d);
    const r = await store.gc();
    expect(r.chunksFreed).toBe(64);
    const v = await store.openVolume('vol');
    for (let i = 0; i < N; i++) {
      if (i === BAD) await rejection(v.read(i * BLOCK_SIZE, BLOCK_SIZE), 'EIO');
      else expect(firstDiff(await v.read(i * BLOCK_SIZE, BLOCK_SIZE), blockOf(i)), `block ${i}`).toBeNull();
    }
    await v.close();
    expect(segmentFiles(d).map((f) => path.basename(f)), 'the damaged segment is kept').toContain('00000001.seg');
    await store.close();
    store = await Store.open(d);
    const v2 = await store.openVolume('vol');
    expect(firstDiff(await v2.read(0, BAD * BLOCK_SIZE), Buffer.concat([...Array(BAD).keys()].map(blockOf))))
      .toBeNull();
    await rejection(v2.read(BAD * BLOCK_SIZE, BLOCK_SIZE), 'EIO');
    await v2.close();
  });

  it('gc converges with a damaged segment: a second run has nothing to do', async () => {
    store = await openWithGarbage(await damagedStore());
    await store.gc();
    const segmentBytes = (await store.stats()).segmentBytes;
    // Nothing changed since: no copying the damaged segment's good chunks
    // out again, and no "reclaimed" bytes that were only that copy.
    const again = await store.gc();
    expect(again).toEqual({ deadEntries: 0, chunksFreed: 0, segmentsCompacted: 0, segmentsDeleted: 0, bytesReclaimed: 0 });
    expect((await store.stats()).segmentBytes).toBe(segmentBytes);
  });
});

describe('a damaged segment header', () => {
  // Two segments: 'big' fills segment 1 (16384 slots) and spills into
  // segment 2, where 'small' lives too. Built once, copied per test.
  const SEG_SLOTS = 16384;
  const BIG = SEG_SLOTS + 8;
  let pristine: string;
  let store: Store | null = null;

  /** Block `i` of 'big': distinct, cheap to make (a counter in a zero block). */
  const bigBlock = (i: number) => { const b = Buffer.alloc(BLOCK_SIZE); b.writeUInt32BE(i + 1, 0); b.writeUInt32BE(i * 7 + 3, 2000); return b; };
  const bigContent = () => Buffer.concat(Array.from({ length: BIG }, (_, i) => bigBlock(i)));

  beforeAll(async () => {
    pristine = path.join(tmp.make('seg-pristine'), 'store');
    const s = await Store.init(pristine);
    await s.createVolume('big', BIG * BLOCK_SIZE);
    await s.createVolume('small', 4 * BLOCK_SIZE);
    const b = await s.openVolume('big');
    await b.write(0, bigContent());
    await b.close();
    const sm = await s.openVolume('small');
    await sm.write(0, Buffer.concat([randomBlock(1), randomBlock(2)]));
    await sm.close();
    await s.close();
    expect(segmentFiles(pristine).map((f) => path.basename(f))).toEqual(['00000001.seg', '00000002.seg']);
  });

  afterEach(async () => { await store?.close(); store = null; });

  /** A copy of the pristine store with byte `offset` of segment `seg` flipped. */
  function damagedCopy(seg: number, offset: number): string {
    const d = path.join(tmp.make('seg'), 'store');
    copyTree(pristine, d);
    flipByte(segmentFiles(d)[seg - 1], offset);
    return d;
  }

  it.each([
    ['magic', 0, /segment 1 has a bad header: wrong magic/],
    ['creation time (caught by the header checksum)', 20, /segment 1 has a bad header: checksum mismatch/],
  ])('%s of a sealed segment: its reads are EIO, the rest of the store works', async (_what, offset, message) => {
    const d = damagedCopy(1, offset);
    store = await Store.open(d);
    const b = await store.openVolume('big');
    const err = await rejection(b.read(0, BLOCK_SIZE), 'EIO');
    expect(err.message).toMatch(message);
    await rejection(b.read(100 * BLOCK_SIZE, BLOCK_SIZE), 'EIO'); // and again: no header cached as good
    // Blocks in segment 2 read exactly.
    expect(firstDiff(await b.read(SEG_SLOTS * BLOCK_SIZE, 8 * BLOCK_SIZE),
      Buffer.concat(Array.from({ length: 8 }, (_, i) => bigBlock(SEG_SLOTS + i))))).toBeNull();
    const sm = await store.openVolume('small');
    expect(firstDiff(await sm.read(0, 2 * BLOCK_SIZE), Buffer.concat([randomBlock(1), randomBlock(2)]))).toBeNull();
    // Writes still work and survive a reopen.
    await sm.write(2 * BLOCK_SIZE, randomBlock(3));
    await sm.close();
    await b.close();
    await store.close();
    store = await Store.open(d);
    const sm2 = await store.openVolume('small');
    expect(firstDiff(await sm2.read(2 * BLOCK_SIZE, BLOCK_SIZE), randomBlock(3))).toBeNull();
    await sm2.close();
    // The CLI reports it in one line, as data damage (exit 2).
    await store.close();
    store = null;
    expectFailure(dormant(['export', 'big', path.join(tmp.make('export'), 'big.img')], { store: d }), message, 2);
  });

  it('magic of the segment appends resume into: the store still opens, reads from it are EIO', async () => {
    const d = damagedCopy(2, 0);
    store = await Store.open(d);
    const sm = await store.openVolume('small');
    const err = await rejection(sm.read(0, BLOCK_SIZE), 'EIO');
    expect(err.message).toMatch(/segment 2 has a bad header: wrong magic/);
    const b = await store.openVolume('big');
    expect(firstDiff(await b.read(0, 16 * BLOCK_SIZE), Buffer.concat(Array.from({ length: 16 }, (_, i) => bigBlock(i)))))
      .toBeNull();
    // New data goes to a new segment, never into the damaged one.
    await sm.write(3 * BLOCK_SIZE, randomBlock(4));
    await sm.close();
    await b.close();
    await store.close();
    store = await Store.open(d);
    const sm2 = await store.openVolume('small');
    expect(firstDiff(await sm2.read(3 * BLOCK_SIZE, BLOCK_SIZE), randomBlock(4))).toBeNull();
    await rejection(sm2.read(0, BLOCK_SIZE), 'EIO');
    await sm2.close();
    expect(segmentFiles(d)).toHaveLength(3);
  });
});
