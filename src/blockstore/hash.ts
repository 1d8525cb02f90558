/**
 * Chunk naming: xxh3-128 of the block's 4096 bytes. xxh3 is fast, not
 * collision resistant, so the store byte-compares before it shares a chunk.
 * Tests inject a deliberately colliding function through StoreOptions.hash.
 */
import { createRequire } from 'node:module';
import { HASH_SIZE } from './constants.js';

const require = createRequire(import.meta.url);
const { XXHash128 } = require('xxhash-addon') as { XXHash128: { hash(data: Buffer): Buffer } };

/** A chunk-naming function: 16 bytes out for one block in. */
export type HashFunction = (block: Buffer) => Buffer;

/** xxh3-128, the store's default chunk name. */
export const xxh3: HashFunction = (block) => {
  const h = XXHash128.hash(block);
  if (h.length !== HASH_SIZE) throw new Error(`xxh3-128 returned ${h.length} bytes`);
  return h;
};
