// Block contents used by the crash test and its child: each value names
// itself, so a block read back after a crash says which write it came from.
// Values: Z (zeroes), S<k> (shared pattern k, deduplicated), G<b>.<g> (unique).
const BLOCK = 4096;

/** The 4096 bytes of a value. */
export function encode(value) {
  const b = Buffer.alloc(BLOCK);
  if (value === 'Z') return b;
  b.write(value.padEnd(24, '.'), 0, 'latin1');
  const fill = [...value].reduce((a, c) => (a * 31 + c.charCodeAt(0)) & 0xff, 7) || 1;
  b.fill(fill, 24);
  return b;
}

/** The value a block holds, or garbage(...) when it is no value at all. */
export function decode(b) {
  if (b.every((x) => x === 0)) return 'Z';
  const v = b.toString('latin1', 0, 24).replace(/\.+$/, '');
  return encode(v).equals(b) ? v : `garbage(${b.toString('hex', 0, 16)})`;
}
