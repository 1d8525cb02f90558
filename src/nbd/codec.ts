/**
 * Pure NBD codec: typed messages <-> bytes over Buffer. No I/O, no state.
 *
 * Decoders never throw on hostile input: they return `null` (not enough or
 * malformed bytes) or a string describing what was wrong, so the caller can
 * pick the protocol reaction (error reply or close). u64 fields that the
 * peer controls (cookie, offset) are decoded as bigint; the transmission
 * layer bounds-checks them before converting to number.
 */
import { isUtf8 } from 'node:buffer';
import * as P from './protocol.js';

const TWO_32 = 0x1_0000_0000;

/** Writes a non-negative safe integer as a big-endian u64. */
export function writeU64(buf: Buffer, off: number, n: number): void {
  buf.writeUInt32BE(Math.floor(n / TWO_32), off);
  buf.writeUInt32BE(n >>> 0, off + 4);
}

/** Validates a wire string (UTF-8, no NUL, at most 4096 bytes); returns it or null. */
export function decodeString(bytes: Buffer): string | null {
  if (bytes.length > P.MAX_STRING_SIZE || bytes.includes(0) || !isUtf8(bytes)) return null;
  return bytes.toString('utf8');
}

// ---- Handshake ------------------------------------------------------------

/** The 18-byte newstyle greeting. */
export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.alloc(P.GREETING_SIZE);
  b.writeBigUInt64BE(P.NBDMAGIC, 0);
  b.writeBigUInt64BE(P.IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

/** A decoded option request header. */
export interface OptionHeader {
  option: number;
  length: number;
}

/** Decodes a 16-byte option header at `off`; null when the magic is wrong. */
export function decodeOptionHeader(buf: Buffer, off = 0): OptionHeader | null {
  if (buf.length - off < P.OPTION_HEADER_SIZE) return null;
  if (buf.readBigUInt64BE(off) !== P.IHAVEOPT) return null;
  return { option: buf.readUInt32BE(off + 8), length: buf.readUInt32BE(off + 12) };
}

/** Encodes an option request (client side; used by tests and tools). */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(P.OPTION_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(P.IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(data.length, 12);
  data.copy(b, P.OPTION_HEADER_SIZE);
  return b;
}

/** Encodes one option reply: header plus data. */
export function encodeOptionReply(option: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const b = Buffer.alloc(P.OPTION_REPLY_HEADER_SIZE + data.length);
  b.writeBigUInt64BE(P.NBD_REP_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(data.length, 16);
  data.copy(b, P.OPTION_REPLY_HEADER_SIZE);
  return b;
}

/** An error option reply with a short human-readable message. */
export function encodeOptionError(option: number, type: number, message = ''): Buffer {
  return encodeOptionReply(option, type, Buffer.from(message.slice(0, 200), 'utf8'));
}

/** NBD_REP_SERVER: u32 name length, name, description. */
export function encodeRepServer(option: number, name: string, description: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const d = Buffer.from(description, 'utf8');
  const data = Buffer.alloc(4 + n.length + d.length);
  data.writeUInt32BE(n.length, 0);
  n.copy(data, 4);
  d.copy(data, 4 + n.length);
  return encodeOptionReply(option, P.NBD_REP_SERVER, data);
}

/** NBD_REP_INFO / NBD_INFO_EXPORT: u64 size, u16 transmission flags. */
export function encodeInfoExport(option: number, size: number, flags: number): Buffer {
  const data = Buffer.alloc(12);
  data.writeUInt16BE(P.NBD_INFO_EXPORT, 0);
  writeU64(data, 2, size);
  data.writeUInt16BE(flags, 10);
  return encodeOptionReply(option, P.NBD_REP_INFO, data);
}

/** NBD_REP_INFO carrying a string (NBD_INFO_NAME or NBD_INFO_DESCRIPTION). */
export function encodeInfoString(option: number, infoType: number, text: string): Buffer {
  const s = Buffer.from(text, 'utf8');
  const data = Buffer.alloc(2 + s.length);
  data.writeUInt16BE(infoType, 0);
  s.copy(data, 2);
  return encodeOptionReply(option, P.NBD_REP_INFO, data);
}

/** NBD_REP_INFO / NBD_INFO_BLOCK_SIZE: minimum, preferred, maximum payload. */
export function encodeInfoBlockSize(option: number, min: number, preferred: number, max: number): Buffer {
  const data = Buffer.alloc(14);
  data.writeUInt16BE(P.NBD_INFO_BLOCK_SIZE, 0);
  data.writeUInt32BE(min, 2);
  data.writeUInt32BE(preferred, 6);
  data.writeUInt32BE(max, 10);
  return encodeOptionReply(option, P.NBD_REP_INFO, data);
}

/** NBD_REP_META_CONTEXT: u32 context id, name. */
export function encodeRepMetaContext(option: number, id: number, name: string): Buffer {
  const s = Buffer.from(name, 'utf8');
  const data = Buffer.alloc(4 + s.length);
  data.writeUInt32BE(id, 0);
  s.copy(data, 4);
  return encodeOptionReply(option, P.NBD_REP_META_CONTEXT, data);
}

/** Reply to a successful NBD_OPT_EXPORT_NAME: size, flags, optional padding. */
export function encodeExportNameReply(size: number, flags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : P.EXPORT_NAME_PADDING));
  writeU64(b, 0, size);
  b.writeUInt16BE(flags, 8);
  return b;
}

/** Data of NBD_OPT_INFO / NBD_OPT_GO. */
export interface ExportRequest {
  name: string;
  infos: number[];
}

/** Decodes INFO/GO data; a string explains why it is invalid. */
export function decodeExportRequest(data: Buffer): ExportRequest | string {
  if (data.length < 6) return 'option data too short';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return 'name length exceeds option length';
  const name = decodeString(data.subarray(4, 4 + nameLen));
  if (name === null) return 'export name is not a valid string';
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + 2 * count) return 'information request count does not match length';
  const infos: number[] = [];
  for (let i = 0; i < count; i++) infos.push(data.readUInt16BE(6 + nameLen + 2 * i));
  return { name, infos };
}

/** Encodes INFO/GO data (client side; tests). */
export function encodeExportRequest(name: string, infos: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.alloc(6 + n.length + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => b.writeUInt16BE(t, 6 + n.length + 2 * i));
  return b;
}

/** Data of NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export interface MetaContextRequest {
  name: string;
  queries: string[];
}

/** Decodes LIST/SET_META_CONTEXT data; a string explains why it is invalid. */
export function decodeMetaContextRequest(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return 'option data too short';
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 8) return 'name length exceeds option length';
  const name = decodeString(data.subarray(4, 4 + nameLen));
  if (name === null) return 'export name is not a valid string';
  let pos = 4 + nameLen;
  const count = data.readUInt32BE(pos);
  pos += 4;
  if (count > (data.length - pos) / 4) return 'query count exceeds option length';
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - pos < 4) return 'truncated query';
    const len = data.readUInt32BE(pos);
    pos += 4;
    if (len > data.length - pos) return 'query length exceeds option length';
    const q = decodeString(data.subarray(pos, pos + len));
    if (q === null) return 'query is not a valid string';
    queries.push(q);
    pos += len;
  }
  if (pos !== data.length) return 'trailing bytes after queries';
  return { name, queries };
}

/** Encodes LIST/SET_META_CONTEXT data (client side; tests). */
export function encodeMetaContextRequest(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const n = Buffer.from(name, 'utf8');
  const head = Buffer.alloc(4);
  head.writeUInt32BE(n.length, 0);
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(head, n, count);
  for (const q of queries) {
    const s = Buffer.from(q, 'utf8');
    const l = Buffer.alloc(4);
    l.writeUInt32BE(s.length, 0);
    parts.push(l, s);
  }
  return Buffer.concat(parts);
}

// ---- Transmission ---------------------------------------------------------

/** A decoded transmission request header. */
export interface RequestHeader {
  flags: number;
  type: number;
  cookie: bigint;
  offset: bigint;
  length: number;
}

/** Decodes a 28-byte request header at `off`; null when the magic is wrong. */
export function decodeRequest(buf: Buffer, off = 0): RequestHeader | null {
  if (buf.length - off < P.REQUEST_SIZE || buf.readUInt32BE(off) !== P.NBD_REQUEST_MAGIC) return null;
  return {
    flags: buf.readUInt16BE(off + 4),
    type: buf.readUInt16BE(off + 6),
    cookie: buf.readBigUInt64BE(off + 8),
    offset: buf.readBigUInt64BE(off + 16),
    length: buf.readUInt32BE(off + 24),
  };
}

/** Encodes a request header (client side; tests). */
export function encodeRequest(r: RequestHeader): Buffer {
  const b = Buffer.alloc(P.REQUEST_SIZE);
  b.writeUInt32BE(P.NBD_REQUEST_MAGIC, 0);
  b.writeUInt16BE(r.flags, 4);
  b.writeUInt16BE(r.type, 6);
  b.writeBigUInt64BE(r.cookie, 8);
  b.writeBigUInt64BE(r.offset, 16);
  b.writeUInt32BE(r.length, 24);
  return b;
}

/** A 16-byte simple reply header (data, if any, follows separately). */
export function encodeSimpleReply(cookie: bigint, error: number): Buffer {
  const b = Buffer.allocUnsafe(P.SIMPLE_REPLY_SIZE);
  b.writeUInt32BE(P.NBD_SIMPLE_REPLY_MAGIC, 0);
  b.writeUInt32BE(error, 4);
  b.writeBigUInt64BE(cookie, 8);
  return b;
}

function writeChunkHeader(b: Buffer, cookie: bigint, flags: number, type: number, length: number): void {
  b.writeUInt32BE(P.NBD_STRUCTURED_REPLY_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeBigUInt64BE(cookie, 8);
  b.writeUInt32BE(length, 16);
}

/** Header of an OFFSET_DATA chunk (28 bytes); `dataLength` bytes of data follow. */
export function encodeOffsetDataHeader(cookie: bigint, flags: number, offset: number, dataLength: number): Buffer {
  const b = Buffer.allocUnsafe(P.STRUCTURED_REPLY_SIZE + 8);
  writeChunkHeader(b, cookie, flags, P.NBD_REPLY_TYPE_OFFSET_DATA, 8 + dataLength);
  writeU64(b, P.STRUCTURED_REPLY_SIZE, offset);
  return b;
}

/** A complete OFFSET_HOLE chunk (32 bytes). */
export function encodeOffsetHole(cookie: bigint, flags: number, offset: number, size: number): Buffer {
  const b = Buffer.allocUnsafe(P.STRUCTURED_REPLY_SIZE + 12);
  writeChunkHeader(b, cookie, flags, P.NBD_REPLY_TYPE_OFFSET_HOLE, 12);
  writeU64(b, P.STRUCTURED_REPLY_SIZE, offset);
  b.writeUInt32BE(size, P.STRUCTURED_REPLY_SIZE + 8);
  return b;
}

/** One block status descriptor. */
export interface BlockDescriptor {
  length: number;
  status: number;
}

/** A complete BLOCK_STATUS chunk for one context. */
export function encodeBlockStatus(cookie: bigint, flags: number, contextId: number, extents: BlockDescriptor[]): Buffer {
  const len = 4 + 8 * extents.length;
  const b = Buffer.allocUnsafe(P.STRUCTURED_REPLY_SIZE + len);
  writeChunkHeader(b, cookie, flags, P.NBD_REPLY_TYPE_BLOCK_STATUS, len);
  b.writeUInt32BE(contextId, P.STRUCTURED_REPLY_SIZE);
  let pos = P.STRUCTURED_REPLY_SIZE + 4;
  for (const e of extents) {
    b.writeUInt32BE(e.length, pos);
    b.writeUInt32BE(e.status, pos + 4);
    pos += 8;
  }
  return b;
}

/** A complete ERROR chunk; the message is kept short (qemu rejects > 1000 bytes). */
export function encodeErrorChunk(cookie: bigint, flags: number, error: number, message = ''): Buffer {
  const m = Buffer.from(message.slice(0, 200), 'utf8');
  const b = Buffer.allocUnsafe(P.STRUCTURED_REPLY_SIZE + 6 + m.length);
  writeChunkHeader(b, cookie, flags, P.NBD_REPLY_TYPE_ERROR, 6 + m.length);
  b.writeUInt32BE(error, P.STRUCTURED_REPLY_SIZE);
  b.writeUInt16BE(m.length, P.STRUCTURED_REPLY_SIZE + 4);
  m.copy(b, P.STRUCTURED_REPLY_SIZE + 6);
  return b;
}

/** A NONE chunk with DONE set: the empty end of a structured reply. */
export function encodeNoneChunk(cookie: bigint): Buffer {
  const b = Buffer.allocUnsafe(P.STRUCTURED_REPLY_SIZE);
  writeChunkHeader(b, cookie, P.NBD_REPLY_FLAG_DONE, P.NBD_REPLY_TYPE_NONE, 0);
  return b;
}

/** A decoded reply header: simple (16 bytes) or structured chunk (20 bytes). */
export type ReplyHeader =
  | { kind: 'simple'; error: number; cookie: bigint }
  | { kind: 'chunk'; flags: number; type: number; cookie: bigint; length: number };

/** Decodes a reply header at `off` (client side; tests). null: too short or bad magic. */
export function decodeReplyHeader(buf: Buffer, off = 0): ReplyHeader | null {
  if (buf.length - off < 4) return null;
  const magic = buf.readUInt32BE(off);
  if (magic === P.NBD_SIMPLE_REPLY_MAGIC && buf.length - off >= P.SIMPLE_REPLY_SIZE) {
    return { kind: 'simple', error: buf.readUInt32BE(off + 4), cookie: buf.readBigUInt64BE(off + 8) };
  }
  if (magic === P.NBD_STRUCTURED_REPLY_MAGIC && buf.length - off >= P.STRUCTURED_REPLY_SIZE) {
    return {
      kind: 'chunk',
      flags: buf.readUInt16BE(off + 4),
      type: buf.readUInt16BE(off + 6),
      cookie: buf.readBigUInt64BE(off + 8),
      length: buf.readUInt32BE(off + 16),
    };
  }
  return null;
}
