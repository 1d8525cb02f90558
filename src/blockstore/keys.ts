/**
 * Binary keys and values of the index (LMDB, keyEncoding 'binary').
 *
 * Block map entry key (16 bytes, big-endian so LMDB's byte order is the
 * numeric order):  [0] u32 lineage  [4] u64 block  [12] u32 version
 * Its value is a u64 chunk id (8 bytes), or 0 for a tombstone: "this block
 * reads as zeroes here even if the origin has data".
 *
 * Chunk record (chunk id -> 28 bytes): [0] hash(16) [16] u32 segment
 * [20] u32 slot (block index inside the segment) [24] u32 refs.
 * Hash index: hash(16) -> n x u64 chunk ids; several ids under one hash are
 * contents that collide (a point look-up per written block, no cursor).
 */
import { HASH_SIZE } from './constants.js';

/** Key of a block map entry. */
export function mapKey(lineage: number, block: number, version: number): Buffer {
  const k = Buffer.allocUnsafe(16);
  k.writeUInt32BE(lineage, 0);
  k.writeUInt32BE(Math.floor(block / 2 ** 32), 4);
  k.writeUInt32BE(block >>> 0, 8);
  k.writeUInt32BE(version, 12);
  return k;
}

/** Decoded block map key. */
export interface MapKey { lineage: number; block: number; version: number }

/** Decodes a block map key. */
export function parseMapKey(k: Buffer): MapKey {
  return {
    lineage: k.readUInt32BE(0),
    block: k.readUInt32BE(4) * 2 ** 32 + k.readUInt32BE(8),
    version: k.readUInt32BE(12),
  };
}

/** The id stored in a map value (0 = tombstone). */
export function mapValue(chunkId: number): Buffer {
  const v = Buffer.allocUnsafe(8);
  v.writeUInt32BE(Math.floor(chunkId / 2 ** 32), 0);
  v.writeUInt32BE(chunkId >>> 0, 4);
  return v;
}

/** Decodes a map value into a chunk id (0 = tombstone). */
export function parseMapValue(v: Buffer): number {
  return v.readUInt32BE(0) * 2 ** 32 + v.readUInt32BE(4);
}

/** Key of a chunk record. */
export const chunkKey = mapValue;
/** Decodes a chunk key. */
export const parseChunkKey = parseMapValue;

/** A chunk's location and reference count. */
export interface ChunkRecord { hash: Buffer; segment: number; slot: number; refs: number }

/** Encodes a chunk record. */
export function encodeChunk(c: ChunkRecord): Buffer {
  const b = Buffer.allocUnsafe(HASH_SIZE + 12);
  c.hash.copy(b, 0);
  b.writeUInt32BE(c.segment, 16);
  b.writeUInt32BE(c.slot, 20);
  b.writeUInt32BE(c.refs, 24);
  return b;
}

/** Decodes a chunk record (copies the hash out of LMDB's buffer). */
export function decodeChunk(b: Buffer): ChunkRecord {
  return {
    hash: Buffer.from(b.subarray(0, HASH_SIZE)),
    segment: b.readUInt32BE(16),
    slot: b.readUInt32BE(20),
    refs: b.readUInt32BE(24),
  };
}

/** Chunk ids stored under one hash in the hash index. */
export function decodeIds(v: Buffer | undefined): number[] {
  const out: number[] = [];
  if (v) for (let i = 0; i + 8 <= v.length; i += 8) out.push(v.readUInt32BE(i) * 2 ** 32 + v.readUInt32BE(i + 4));
  return out;
}

/** Encodes the chunk ids of one hash. */
export function encodeIds(ids: readonly number[]): Buffer {
  return Buffer.concat(ids.map(mapValue));
}
