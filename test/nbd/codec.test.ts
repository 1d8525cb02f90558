/**
 * Codec, receive queue and reply builders against hand-written byte fixtures.
 */
import { describe, expect, it } from 'vitest';
import { ByteQueue } from '../../src/nbd/bytequeue.js';
import * as C from '../../src/nbd/codec.js';
import * as P from '../../src/nbd/protocol.js';
import { blockStatusDescriptors, readReplyChunks } from '../../src/nbd/replies.js';

const hex = (s: string): Buffer => Buffer.from(s.replace(/\s+/g, ''), 'hex');

describe('codec: handshake', () => {
  it('encodes the greeting', () => {
    expect(C.encodeGreeting(3).toString('hex')).toBe('4e42444d41474943' + '49484156454f5054' + '0003');
  });

  it('decodes an option header and rejects a bad magic', () => {
    const b = hex('49484156454f5054 00000007 0000000a');
    expect(C.decodeOptionHeader(b)).toEqual({ option: 7, length: 10 });
    expect(C.decodeOptionHeader(hex('49484156454f5055 00000007 0000000a'))).toBeNull();
    expect(C.decodeOptionHeader(b.subarray(0, 15))).toBeNull();
  });

  it('encodes ACK, error and SERVER replies', () => {
    expect(C.encodeOptionReply(8, P.NBD_REP_ACK).toString('hex')).toBe('0003e889045565a9 00000008 00000001 00000000'.replace(/ /g, ''));
    expect(C.encodeOptionError(99, P.NBD_REP_ERR_UNSUP, 'no').toString('hex')).toBe(
      '0003e889045565a9' + '00000063' + '80000001' + '00000002' + '6e6f',
    );
    expect(C.encodeRepServer(3, 'vm', 'd').toString('hex')).toBe(
      '0003e889045565a9' + '00000003' + '00000002' + '00000007' + '00000002' + '766d' + '64',
    );
  });

  it('encodes INFO replies with the lengths clients check (12 and 14)', () => {
    const e = C.encodeInfoExport(7, 0x1_0000_1000, 0x0d6d);
    expect(e.readUInt32BE(16)).toBe(12);
    expect(e.subarray(20).toString('hex')).toBe('0000' + '0000000100001000' + '0d6d');
    const b = C.encodeInfoBlockSize(7, 1, 4096, 32 * 1024 * 1024);
    expect(b.readUInt32BE(16)).toBe(14);
    expect(b.subarray(20).toString('hex')).toBe('0003' + '00000001' + '00001000' + '02000000');
    expect(C.encodeInfoString(6, P.NBD_INFO_NAME, 'a').subarray(16).toString('hex')).toBe('00000003' + '0001' + '61');
  });

  it('encodes META_CONTEXT and the EXPORT_NAME reply with and without padding', () => {
    expect(C.encodeRepMetaContext(10, 1, 'base:allocation').subarray(12).toString('hex')).toBe(
      '00000004' + '00000013' + '00000001' + Buffer.from('base:allocation').toString('hex'),
    );
    expect(C.encodeExportNameReply(4096, 3, true).toString('hex')).toBe('0000000000001000' + '0003');
    const padded = C.encodeExportNameReply(4096, 3, false);
    expect(padded.length).toBe(134);
    expect(padded.subarray(10).every((x) => x === 0)).toBe(true);
  });

  it('decodes INFO/GO data and rejects inconsistent lengths', () => {
    expect(C.decodeExportRequest(hex('00000002 766d 0002 0003 0001'))).toEqual({ name: 'vm', infos: [3, 1] });
    expect(C.decodeExportRequest(hex('00000000 0000'))).toEqual({ name: '', infos: [] });
    expect(typeof C.decodeExportRequest(hex('00000009 766d 0000'))).toBe('string');
    expect(typeof C.decodeExportRequest(hex('00000002 766d 0002 0003'))).toBe('string');
    expect(typeof C.decodeExportRequest(hex('00000002 7600 0000'))).toBe('string'); // NUL in name
    expect(typeof C.decodeExportRequest(hex('00000002 c328 0000'))).toBe('string'); // invalid UTF-8
    expect(C.decodeExportRequest(C.encodeExportRequest('vm@s', [0, 2]))).toEqual({ name: 'vm@s', infos: [0, 2] });
  });

  it('decodes meta-context requests', () => {
    const q = Buffer.from('base:allocation');
    const data = Buffer.concat([hex('00000002 766d 00000001'), hex('0000000f'), q]);
    expect(C.decodeMetaContextRequest(data)).toEqual({ name: 'vm', queries: ['base:allocation'] });
    expect(C.decodeMetaContextRequest(hex('00000002 766d 00000000'))).toEqual({ name: 'vm', queries: [] });
    expect(typeof C.decodeMetaContextRequest(hex('00000002 766d 00000001 00000009 6161'))).toBe('string');
    expect(typeof C.decodeMetaContextRequest(hex('00000002 766d 7fffffff'))).toBe('string');
    expect(typeof C.decodeMetaContextRequest(Buffer.concat([data, hex('00')]))).toBe('string');
    expect(C.decodeMetaContextRequest(C.encodeMetaContextRequest('x', ['base:', 'qemu:dirty']))).toEqual({
      name: 'x',
      queries: ['base:', 'qemu:dirty'],
    });
  });
});

describe('codec: transmission', () => {
  const req = hex('25609513 0001 0001 0102030405060708 0000000000100000 00001000');

  it('decodes a request header with u64 fields as bigint', () => {
    expect(C.decodeRequest(req)).toEqual({
      flags: 1,
      type: P.NBD_CMD_WRITE,
      cookie: 0x0102030405060708n,
      offset: 0x100000n,
      length: 4096,
    });
    const huge = hex('25609513 0000 0000 ffffffffffffffff ffffffffffffffff ffffffff');
    expect(C.decodeRequest(huge)?.offset).toBe(0xffffffffffffffffn);
    expect(C.decodeRequest(hex('25609514' + '00'.repeat(24)))).toBeNull();
    expect(C.encodeRequest(C.decodeRequest(req)!).equals(req)).toBe(true);
  });

  it('encodes simple replies', () => {
    expect(C.encodeSimpleReply(0xabn, 22).toString('hex')).toBe('67446698' + '00000016' + '00000000000000ab');
  });

  it('encodes structured chunks: data header, hole, block status, error, none', () => {
    expect(C.encodeOffsetDataHeader(7n, 1, 8192, 512).toString('hex')).toBe(
      '668e33ef' + '0001' + '0001' + '0000000000000007' + '00000208' + '0000000000002000',
    );
    expect(C.encodeOffsetHole(7n, 0, 4096, 4096).toString('hex')).toBe(
      '668e33ef' + '0000' + '0002' + '0000000000000007' + '0000000c' + '0000000000001000' + '00001000',
    );
    expect(C.encodeBlockStatus(9n, 1, 1, [{ length: 4096, status: 3 }, { length: 512, status: 0 }]).toString('hex')).toBe(
      '668e33ef' + '0001' + '0005' + '0000000000000009' + '00000014' + '00000001' + '00001000' + '00000003' + '00000200' + '00000000',
    );
    expect(C.encodeErrorChunk(9n, 1, 1, 'ro').toString('hex')).toBe(
      '668e33ef' + '0001' + '8001' + '0000000000000009' + '00000008' + '00000001' + '0002' + '726f',
    );
    expect(C.encodeNoneChunk(5n).toString('hex')).toBe('668e33ef' + '0001' + '0000' + '0000000000000005' + '00000000');
  });

  it('decodes reply headers', () => {
    expect(C.decodeReplyHeader(C.encodeSimpleReply(3n, 5))).toEqual({ kind: 'simple', error: 5, cookie: 3n });
    expect(C.decodeReplyHeader(C.encodeNoneChunk(4n))).toEqual({ kind: 'chunk', flags: 1, type: 0, cookie: 4n, length: 0 });
    expect(C.decodeReplyHeader(hex('12345678' + '00'.repeat(16)))).toBeNull();
  });
});

describe('ByteQueue', () => {
  it('peeks headers across chunk boundaries and takes payloads with one copy at most', () => {
    const q = new ByteQueue();
    const all = Buffer.from(Array.from({ length: 100 }, (_, i) => i));
    q.push(all.subarray(0, 10));
    q.push(all.subarray(10, 13));
    q.push(all.subarray(13, 60));
    q.push(all.subarray(60));
    expect(q.length).toBe(100);
    const p = q.peek(20);
    expect(p.subarray(q.peekOffset(), q.peekOffset() + 20).equals(all.subarray(0, 20))).toBe(true);
    q.skip(5);
    expect(q.take(10).equals(all.subarray(5, 15))).toBe(true);
    expect(q.take(40).equals(all.subarray(15, 55))).toBe(true);
    const p2 = q.peek(10);
    expect(p2.subarray(q.peekOffset(), q.peekOffset() + 10).equals(all.subarray(55, 65))).toBe(true);
    expect(q.takeAll().equals(all.subarray(55))).toBe(true);
    expect(q.length).toBe(0);
  });

  it('returns a view (no copy) when the bytes lie in one chunk', () => {
    const q = new ByteQueue();
    const chunk = Buffer.alloc(64, 1);
    q.push(chunk);
    const v = q.take(32);
    expect(v.buffer).toBe(chunk.buffer);
  });

  it('in transient mode: merges chunks that continue each other, always copies out, tells what it holds', () => {
    const q = new ByteQueue();
    q.transient = true;
    const slab = Buffer.alloc(256); // memory of its own (small Buffer.from/allocUnsafe share Node's pool)
    for (let i = 0; i < 256; i++) slab[i] = i;
    q.push(slab.subarray(0, 10));
    q.push(slab.subarray(10, 50)); // continues the last chunk in memory: one chunk
    q.push(Buffer.from(slab.subarray(50, 60))); // elsewhere in memory: a chunk of its own
    expect(q.peekOffset()).toBe(0);
    expect(q.peek(50).byteOffset).toBe(slab.byteOffset); // the merged chunk itself, no copy for a header
    expect(q.holds(slab.buffer)).toBe(true);
    const taken = q.take(30);
    expect(taken.equals(slab.subarray(0, 30))).toBe(true);
    expect(taken.buffer).not.toBe(slab.buffer); // a copy: the slab will be read into again
    const into = Buffer.alloc(25);
    expect(q.take(25, into)).toBe(into);
    expect(into.equals(slab.subarray(30, 55))).toBe(true);
    expect(q.holds(slab.buffer)).toBe(false);
    expect(q.takeAll().equals(slab.subarray(55, 60))).toBe(true);
  });

  it('agrees with a plain Buffer model under random pushes and reads', () => {
    let seed = 42;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const q = new ByteQueue();
    let model = Buffer.alloc(0);
    let counter = 0;
    for (let step = 0; step < 2000; step++) {
      if (rnd(2) === 0) {
        const c = Buffer.from(Array.from({ length: rnd(40) }, () => counter++ & 0xff));
        q.push(c);
        model = Buffer.concat([model, c]);
      } else if (model.length > 0) {
        const n = 1 + rnd(model.length);
        const op = rnd(3);
        if (op === 0) {
          const b = q.peek(n);
          expect(b.subarray(q.peekOffset(), q.peekOffset() + n).equals(model.subarray(0, n))).toBe(true);
        } else if (op === 1) {
          expect(q.take(n).equals(model.subarray(0, n))).toBe(true);
          model = model.subarray(n);
        } else {
          q.skip(n);
          model = model.subarray(n);
        }
      }
      expect(q.length).toBe(model.length);
    }
  });
});

describe('reply builders', () => {
  it('splits a READ into data and hole chunks on 4 KiB granules, DONE on the last', () => {
    const data = Buffer.alloc(3 * 4096);
    data.fill(7, 4096, 8192);
    const chunks = readReplyChunks(1n, 8192, data, false);
    // hole [8192, 12288), data [12288, 16384) + payload, hole [16384, 20480)
    expect(chunks.length).toBe(4);
    expect(chunks[0].readUInt16BE(6)).toBe(P.NBD_REPLY_TYPE_OFFSET_HOLE);
    expect(chunks[0].readUInt16BE(4)).toBe(0);
    expect(chunks[1].readUInt16BE(6)).toBe(P.NBD_REPLY_TYPE_OFFSET_DATA);
    expect(Number(chunks[1].readBigUInt64BE(20))).toBe(12288);
    expect(chunks[2].length).toBe(4096);
    expect(chunks[3].readUInt16BE(4)).toBe(P.NBD_REPLY_FLAG_DONE);
    expect(Number(chunks[3].readBigUInt64BE(20))).toBe(16384);
    expect(chunks[3].readUInt32BE(28)).toBe(4096);
  });

  it('uses export-aligned granules for unaligned reads and one chunk under DF', () => {
    const data = Buffer.alloc(5000);
    data[4999] = 1; // last granule [4096-100+... ) is data
    const chunks = readReplyChunks(2n, 100, data, false);
    // granules: [100,4096) zero -> hole 3996; [4096,5100) data
    expect(chunks[0].readUInt32BE(28)).toBe(3996);
    expect(chunks[1].readUInt32BE(16)).toBe(8 + 1004);
    const df = readReplyChunks(2n, 100, data, true);
    expect(df.length).toBe(2);
    expect(df[0].readUInt16BE(4)).toBe(P.NBD_REPLY_FLAG_DONE);
    expect(readReplyChunks(3n, 0, Buffer.alloc(0), false)[0].equals(C.encodeNoneChunk(3n))).toBe(true);
  });

  it('builds block status descriptors: clipped, merged, gaps as data, REQ_ONE', () => {
    const ext = [
      { offset: 0, length: 8192, hole: true },
      { offset: 8192, length: 4096, hole: false },
      { offset: 12288, length: 4096, hole: false },
      { offset: 20480, length: 4096, hole: true },
    ];
    expect(blockStatusDescriptors(ext, 4096, 20480, false)).toEqual([
      { length: 4096, status: 3 },
      { length: 12288, status: 0 }, // data, data, gap merged
      { length: 4096, status: 3 },
    ]);
    expect(blockStatusDescriptors(ext, 4096, 20480, true)).toEqual([{ length: 4096, status: 3 }]);
    expect(blockStatusDescriptors([], 0, 100, false)).toEqual([{ length: 100, status: 0 }]);
  });
});
