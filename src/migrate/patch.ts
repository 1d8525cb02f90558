/**
 * A patch: the blocks of a volume that changed since it was sent, applied
 * in place on the receiving host. A VM migration sends its volumes while
 * the guest runs (a pre-copy), then, paused, only the blocks written since
 * (the store records them: Store.watchWrites), with their hashes: the
 * downtime then grows with what the guest changed, not with its size.
 *
 * Wire form (application/x-dormant-patch, framed as frame.ts says): "DPCH",
 * the JSON header (PatchHeader), then per changed block 25 bytes: its index (u64 big-endian), a flag byte (1 = hole) and
 * the 16-byte hash of its new content (zeroes for a hole); then, when the
 * header says `inline: N`, N chunks (16-byte hash, 4 KiB), so the patch
 * needs no second round trip for the chunks the receiver lacks (a
 * migration's patches carry their chunks: what a guest just wrote is
 * rarely anywhere else).
 */
import { BLOCK_SIZE, DormantError, HASH_SIZE, isHole, type BlockHashList, type Store, type VolumeHandle } from '../blockstore/index.js';
import type { ReceiveSession } from './incoming.js';
import { frame, unframe } from './frame.js';
import { ChunkPlacer } from './placer.js';

const MAGIC = 'DPCH';
const RECORD = 8 + 1 + HASH_SIZE;

/** The JSON part of a patch. */
export interface PatchHeader {
  version: 1;
  /** The volume patched (its name on the receiving host). */
  volume: string;
  /** Its size (the same on both sides). */
  size: number;
  /** Changed blocks. */
  count: number;
  /** Chunks carried after the block records. */
  inline?: number;
}

/** A chunk carried in a patch: its hash, then its bytes. */
const CHUNK_RECORD = HASH_SIZE + BLOCK_SIZE;

/** A decoded patch. */
export interface Patch {
  header: PatchHeader;
  blocks: number[];
  list: BlockHashList;
  /** The chunks carried (CHUNK_RECORD each), if any. */
  chunks?: Buffer;
}

/**
 * The wire form of a patch of `volume` (`size` bytes) whose blocks
 * `blocks` now read as `list` says, carrying `chunks` (CHUNK_RECORD each).
 */
export function encodePatch(volume: string, size: number, blocks: readonly number[], list: BlockHashList, chunks?: Buffer): Buffer {
  const inline = chunks ? chunks.length / CHUNK_RECORD : 0;
  const header: PatchHeader = { version: 1, volume, size, count: blocks.length, ...(inline ? { inline } : {}) };
  const { out, body } = frame(MAGIC, header, blocks.length * RECORD + inline * CHUNK_RECORD);
  let at = body;
  for (let i = 0; i < blocks.length; i++, at += RECORD) {
    out.writeBigUInt64BE(BigInt(blocks[i]), at);
    if (isHole(list.holes, i)) out[at + 8] = 1;
    else list.hashes.copy(out, at + 9, i * HASH_SIZE, (i + 1) * HASH_SIZE);
  }
  if (inline) chunks!.copy(out, at);
  return out;
}

/** Decodes and checks a patch (EINVAL on anything malformed). */
export function decodePatch(buf: Buffer): Patch {
  const f = unframe(buf, MAGIC, 'patch');
  const { bad } = f;
  const header = f.header as PatchHeader;
  if (header?.version !== 1 || typeof header.volume !== 'string' || !Number.isSafeInteger(header.size) || header.size <= 0
    || !Number.isSafeInteger(header.count) || header.count < 0
    || (header.inline !== undefined && (!Number.isSafeInteger(header.inline) || header.inline < 0))) {
    throw bad('header fields missing or out of range');
  }
  const inline = header.inline ?? 0;
  if (f.body.length !== header.count * RECORD + inline * CHUNK_RECORD) {
    throw bad(`${f.body.length} bytes of body for ${header.count} blocks and ${inline} chunks`);
  }
  const blocksInVolume = Math.ceil(header.size / BLOCK_SIZE);
  const blocks: number[] = [];
  const hashes = Buffer.alloc(header.count * HASH_SIZE);
  const holes = new Uint8Array(Math.ceil(header.count / 8));
  for (let i = 0, at = 0; i < header.count; i++, at += RECORD) {
    const b = Number(f.body.readBigUInt64BE(at));
    if (b >= blocksInVolume) throw bad(`block ${b} outside the volume`);
    blocks.push(b);
    if (f.body[at + 8] === 1) holes[i >> 3] |= 1 << (i & 7);
    else f.body.copy(hashes, i * HASH_SIZE, at + 9, at + RECORD);
  }
  const chunks = inline ? f.body.subarray(header.count * RECORD) : undefined;
  return { header, blocks, list: { hashes, holes, blocks: header.count }, ...(chunks ? { chunks } : {}) };
}

/**
 * Blocks `blocks` (sorted) of `name`, as it reads now, as a patch; with
 * `inline`, carrying the chunks (each distinct one once), but those
 * `held` says the receiver holds (one byte per 16-byte hash, 1 = held).
 * A chunk this store no longer holds under its hash (rewritten in place
 * since its id was read: the block was written again) is left out.
 */
export async function buildPatch(store: Store, name: string, blocks: readonly number[], inline = false,
  held?: (hashes: Buffer) => Promise<Uint8Array>): Promise<{ wire: Buffer; count: number }> {
  const size = store.describe(name)!.size;
  const list = await store.chunkHashes(store.chunkIdsOf(name, blocks));
  let chunks: Buffer | undefined;
  if (inline) {
    // Each distinct hash once: the index of its first block.
    const seen = new Set<string>();
    const firsts: number[] = [];
    for (let i = 0; i < blocks.length; i++) {
      if (isHole(list.holes, i)) continue;
      const key = list.hashes.toString('latin1', i * HASH_SIZE, (i + 1) * HASH_SIZE);
      if (!seen.has(key)) { seen.add(key); firsts.push(i); }
    }
    let there: Uint8Array | undefined;
    if (held && firsts.length > 0) {
      const asked = Buffer.allocUnsafe(firsts.length * HASH_SIZE);
      firsts.forEach((i, k) => list.hashes.copy(asked, k * HASH_SIZE, i * HASH_SIZE, (i + 1) * HASH_SIZE));
      there = await held(asked);
    }
    const out = Buffer.allocUnsafe(firsts.length * CHUNK_RECORD);
    let n = 0;
    for (let k = 0; k < firsts.length; k++) {
      if (there?.[k]) continue;
      const i = firsts[k];
      const at = n * CHUNK_RECORD;
      list.hashes.copy(out, at, i * HASH_SIZE, (i + 1) * HASH_SIZE);
      if (store.readChunkByHash(list.hashes, i * HASH_SIZE, out, at + HASH_SIZE)) n++;
    }
    chunks = out.subarray(0, n * CHUNK_RECORD);
  }
  return { wire: encodePatch(name, size, blocks, list, chunks), count: blocks.length };
}

/** A patch being applied to a volume here. */
export class PatchVolume implements ReceiveSession {
  private closed = false;

  private constructor(
    private readonly store: Store,
    readonly target: string,
    private readonly handle: VolumeHandle,
    private readonly placer: ChunkPlacer,
    readonly needed: Buffer,
    readonly chunksPresent: number,
    /** The blocks the patch rewrites, sorted. */
    readonly blocks: number[],
  ) {}

  get label(): string { return `${this.target} (patch)`; }
  get remaining(): number { return this.placer.remaining; }
  get chunksReceived(): number { return this.placer.chunksReceived; }

  /** Applies what it can of patch `wire` at once (holes, chunks held here); the rest waits for chunks. */
  static async open(store: Store, wire: Buffer): Promise<PatchVolume> {
    const p = decodePatch(wire);
    const entry = store.describe(p.header.volume);
    if (!entry || entry.type !== 'volume') throw new DormantError('ENOENT', `unknown volume '${p.header.volume}' (a patch needs it here)`);
    if (entry.size !== p.header.size) {
      throw new DormantError('EINVAL', `volume '${p.header.volume}' is ${entry.size} bytes here, the patch is for ${p.header.size}`);
    }
    const handle = await store.openVolume(p.header.volume);
    try {
      const placer = new ChunkPlacer(handle, p.header.size);
      const wanted = new Map<string, number[]>();
      for (let i = 0; i < p.blocks.length; i++) {
        if (isHole(p.list.holes, i)) { await placer.zero(p.blocks[i]); continue; }
        const key = p.list.hashes.toString('hex', i * HASH_SIZE, (i + 1) * HASH_SIZE);
        const list = wanted.get(key);
        if (list) list.push(p.blocks[i]); else wanted.set(key, [p.blocks[i]]);
      }
      const { needed, present } = await placer.fill(store, wanted);
      for (let at = 0; p.chunks && at < p.chunks.length; at += CHUNK_RECORD) await placer.accept(p.chunks, at, p.chunks, at + HASH_SIZE);
      return new PatchVolume(store, p.header.volume, handle, placer, p.chunks ? placer.stillNeeded() : needed, present, [...p.blocks].sort((a, b) => a - b));
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  accept(hashes: Buffer, at: number, data: Buffer, dataAt: number): Promise<void> {
    if (this.closed) throw new DormantError('ECLOSED', 'patch is closed');
    return this.placer.accept(hashes, at, data, dataAt);
  }

  /**
   * Every changed block written: durable once this resolves. EINVAL while
   * chunks are missing, unless `lazy`: their blocks become holes and are
   * returned (`deferred`) to be marked absent; or `partial`: their blocks
   * keep what they held (the sender patches them again later).
   */
  async finish(partial = false, lazy = false): Promise<{ volume: string; origin: null; deferred?: Map<string, number[]>; patched: number[] }> {
    if (this.placer.remaining > 0 && !lazy && !partial) {
      throw new DormantError('EINVAL', `patch of '${this.target}' is incomplete: ${this.placer.remaining} chunks missing`);
    }
    const deferred = lazy ? await this.placer.defer() : undefined;
    await this.close();
    await this.store.flush();
    return { volume: this.target, origin: null, ...(deferred ? { deferred } : {}), patched: this.blocks };
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}
