// Block contents of the slice crash test: block b of generation g.
export const BLOCKS = 36_000; // three commit slices of at most 16384 entries
export const HALF = 18_000;

/** 4096 bytes naming (b mod HALF, g), the rest a pattern of both. */
export function block(b, g) {
  const buf = Buffer.alloc(4096, ((b % HALF) * 31 + g * 7) & 0xff);
  buf.writeUInt32LE(b % HALF, 0);
  buf.writeUInt32LE(g, 4);
  return buf;
}
