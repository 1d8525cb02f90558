/**
 * The framing of what hosts send each other in binary (a manifest, a
 * patch): four magic bytes, a u32 (big-endian) length, that many bytes of
 * JSON header, then a body whose layout the header describes.
 */
import { DormantError } from '../blockstore/index.js';

/** Largest header accepted (it is a few names and numbers). */
const MAX_HEADER = 64 * 1024;

/** A buffer with `magic` and `header` written and room for `bodyLength` bytes after them, and where the body starts. */
export function frame(magic: string, header: unknown, bodyLength: number): { out: Buffer; body: number } {
  const json = Buffer.from(JSON.stringify(header));
  const out = Buffer.alloc(8 + json.length + bodyLength);
  out.write(magic, 0, 'latin1');
  out.writeUInt32BE(json.length, 4);
  json.copy(out, 8);
  return { out, body: 8 + json.length };
}

/**
 * The header (parsed JSON, to be checked by the caller) and body of a
 * frame; `bad(why)` is the EINVAL a caller throws about what it holds ("bad
 * volume <what>: why"), thrown here for a wrong magic, length or JSON.
 */
export function unframe(buf: Buffer, magic: string, what: string): { header: unknown; body: Buffer; bad: (why: string) => DormantError } {
  const bad = (why: string) => new DormantError('EINVAL', `bad volume ${what}: ${why}`);
  if (buf.length < 8 || buf.toString('latin1', 0, 4) !== magic) throw bad(`not a dormant ${what}`);
  const len = buf.readUInt32BE(4);
  if (len > MAX_HEADER || 8 + len > buf.length) throw bad('header length out of range');
  try {
    return { header: JSON.parse(buf.subarray(8, 8 + len).toString('utf8')), body: buf.subarray(8 + len), bad };
  } catch {
    throw bad('header is not JSON');
  }
}
