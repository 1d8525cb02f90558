/**
 * Chunk pages: what the write-back knows of new (not yet committed)
 * chunks, in columns of typed arrays, CHUNK_PAGE consecutive ids per page,
 * so that no JavaScript object exists per chunk.
 *
 * This header is the one description of a page's layout. The write-back
 * (writeback.ts) reads and writes every column; the native run calls
 * (native/src/rehash.cc rehashRun, addRun, through PrefixTable) write the
 * `hashes`, `flags`, `segment` and `slot` of a run of entries in place.
 *
 * Layout: chunk id = page number * CHUNK_PAGE + j, for entry j in
 * [0, CHUNK_PAGE) of its page.
 *  - segment[j], slot[j] (Uint32Array): where the chunk's bytes are.
 *  - refs[j] (Int32Array): pending entries, of any generation, that point
 *    at the chunk.
 *  - flags[j] (Uint8Array): LIVE (1) the entry is a new chunk; UNIQUE (2)
 *    see Writeback.isUnique. 0: no chunk (never stored, or committed or
 *    dropped since).
 *  - hashes (Buffer): the chunk's name at [16j, 16j + 16).
 *  - live: entries with LIVE set; a page with none is dropped.
 */
import { HASH_SIZE } from './constants.js';

/** Chunk ids per page (29 KiB of columns). */
export const CHUNK_PAGE = 1024;
/** flags: the entry is a new chunk. */
export const LIVE = 1;
/** flags: no other chunk had the hash when it was stored (see Writeback.isUnique). */
export const UNIQUE = 2;

/** New chunks with ids [page * CHUNK_PAGE, + CHUNK_PAGE), in the layout above. */
export interface ChunkPage {
  segment: Uint32Array;
  slot: Uint32Array;
  refs: Int32Array;
  flags: Uint8Array;
  hashes: Buffer;
  live: number;
}

/** An empty page: no entry LIVE. */
export function newChunkPage(): ChunkPage {
  return {
    segment: new Uint32Array(CHUNK_PAGE), slot: new Uint32Array(CHUNK_PAGE), refs: new Int32Array(CHUNK_PAGE),
    flags: new Uint8Array(CHUNK_PAGE), hashes: Buffer.alloc(CHUNK_PAGE * HASH_SIZE), live: 0,
  };
}

/** Copies a 16-byte hash (a JS loop: Buffer.copy's native call costs more than the bytes). */
export function copyHash(from: Buffer, fromAt: number, to: Buffer, toAt: number): void {
  for (let k = 0; k < HASH_SIZE; k++) to[toAt + k] = from[fromAt + k];
}
