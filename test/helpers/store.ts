import fs from 'node:fs';
import path from 'node:path';
import type { Store } from '../../src/blockstore/index.js';

/** Runs `body` with the store `opening` resolves to, and closes it afterwards, whatever happens. */
export async function withStore(opening: Promise<Store>, body: (store: Store) => Promise<void>): Promise<void> {
  const store = await opening;
  try {
    await body(store);
  } finally {
    await store.close();
  }
}

/**
 * Flips (xor `mask`) the byte at `at` of the first stored copy of `block`
 * found in the segment files of the store at `dir`; false when none holds it.
 */
export function flipStoredByte(dir: string, block: Buffer, at: number, mask: number): boolean {
  const segs = path.join(dir, 'segments');
  for (const f of fs.readdirSync(segs)) {
    const file = path.join(segs, f);
    const bytes = fs.readFileSync(file);
    const start = bytes.indexOf(block);
    if (start < 0) continue;
    const fd = fs.openSync(file, 'r+');
    try { fs.writeSync(fd, Buffer.from([bytes[start + at] ^ mask]), 0, 1, start + at); } finally { fs.closeSync(fd); }
    return true;
  }
  return false;
}

