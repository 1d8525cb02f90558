/**
 * The handshake state machine, driven directly (no sockets) over an
 * in-memory backend: every transition of the state table in handshake.ts.
 */
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/nbd/backend.js';
import * as C from '../../src/nbd/codec.js';
import { BASE_ALLOCATION_ID, Handshake, type HandshakeStep, type TlsMode } from '../../src/nbd/handshake.js';
import * as P from '../../src/nbd/protocol.js';
import { MemoryBackend, MemoryVolume } from './memory-backend.js';

const FIXED = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES;

function machine(tlsMode: TlsMode = 'off', defaultExport?: string): { hs: Handshake; backend: MemoryBackend } {
  const backend = new MemoryBackend();
  backend.add(new MemoryVolume('vm', 1 << 20));
  backend.add(new MemoryVolume('vm@snap', 1 << 20, true));
  return { hs: new Handshake({ backend, tlsMode, defaultExport, logger: silentLogger }), backend };
}

/** Parses the replies of a step into (type, data) pairs. */
function replies(step: HandshakeStep): Array<{ option: number; type: number; data: Buffer }> {
  const b = Buffer.concat(step.replies);
  const out: Array<{ option: number; type: number; data: Buffer }> = [];
  let pos = 0;
  while (pos < b.length) {
    expect(b.readBigUInt64BE(pos)).toBe(P.NBD_REP_MAGIC);
    const len = b.readUInt32BE(pos + 16);
    out.push({ option: b.readUInt32BE(pos + 8), type: b.readUInt32BE(pos + 12), data: b.subarray(pos + 20, pos + 20 + len) });
    pos += 20 + len;
  }
  return out;
}

const types = (step: HandshakeStep): number[] => replies(step).map((r) => r.type);

describe('handshake state machine', () => {
  it('greets with FIXED_NEWSTYLE | NO_ZEROES and rejects unknown client flags', () => {
    const { hs } = machine();
    expect(hs.greeting().readUInt16BE(16)).toBe(3);
    expect(hs.clientFlags(FIXED | 4).next).toBe('close');
    expect(machine().hs.clientFlags(FIXED).next).toBe('continue');
  });

  it('LIST sends one SERVER per export then ACK; data is invalid', async () => {
    const { hs } = machine();
    hs.clientFlags(FIXED);
    const step = await hs.option(P.NBD_OPT_LIST, Buffer.alloc(0));
    expect(step.next).toBe('continue');
    const r = replies(step);
    expect(r.map((x) => x.type)).toEqual([P.NBD_REP_SERVER, P.NBD_REP_SERVER, P.NBD_REP_ACK]);
    expect(r[1].data.subarray(4, 4 + r[1].data.readUInt32BE(0)).toString()).toBe('vm@snap');
    expect(types(await hs.option(P.NBD_OPT_LIST, Buffer.from('x')))).toEqual([P.NBD_REP_ERR_INVALID]);
  });

  it('unknown options and EXTENDED_HEADERS get ERR_UNSUP and the session goes on', async () => {
    const { hs } = machine();
    hs.clientFlags(FIXED);
    const a = await hs.option(0x4242, Buffer.from('junk'));
    expect(a.next).toBe('continue');
    expect(types(a)).toEqual([P.NBD_REP_ERR_UNSUP]);
    expect(replies(a)[0].option).toBe(0x4242);
    expect(types(await hs.option(P.NBD_OPT_EXTENDED_HEADERS, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_UNSUP]);
    expect(types(await hs.option(P.NBD_OPT_PEEK_EXPORT, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_UNSUP]);
    expect((await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', []))).next).toBe('transmit');
  });

  it('INFO describes without entering transmission; unknown name is ERR_UNKNOWN', async () => {
    const { hs, backend } = machine();
    hs.clientFlags(FIXED);
    const step = await hs.option(P.NBD_OPT_INFO, C.encodeExportRequest('vm@snap', [P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE, 77]));
    expect(step.next).toBe('continue');
    const r = replies(step);
    expect(r.at(-1)?.type).toBe(P.NBD_REP_ACK);
    expect(r.slice(0, -1).map((x) => x.data.readUInt16BE(0))).toEqual([P.NBD_INFO_EXPORT, P.NBD_INFO_NAME, P.NBD_INFO_DESCRIPTION, P.NBD_INFO_BLOCK_SIZE]);
    expect(r[0].data.length).toBe(12);
    const flags = r[0].data.readUInt16BE(10);
    expect(flags & P.NBD_FLAG_READ_ONLY).toBeTruthy();
    expect(flags & P.NBD_FLAG_SEND_TRIM).toBe(0);
    expect(r[3].data.subarray(2).toString('hex')).toBe('00000001' + '00001000' + '02000000');
    expect(backend.opened).toBe(0);
    expect(types(await hs.option(P.NBD_OPT_INFO, C.encodeExportRequest('nope', [])))).toEqual([P.NBD_REP_ERR_UNKNOWN]);
    expect(types(await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('', [])))).toEqual([P.NBD_REP_ERR_UNKNOWN]);
    expect(types(await hs.option(P.NBD_OPT_GO, Buffer.from('00', 'hex')))).toEqual([P.NBD_REP_ERR_INVALID]);
  });

  it('GO enters transmission with the right flags; default export serves the empty name', async () => {
    const { hs } = machine('off', 'vm');
    hs.clientFlags(FIXED);
    const step = await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('', []));
    expect(step.next).toBe('transmit');
    if (step.next !== 'transmit') return;
    expect(step.export.name).toBe('vm');
    expect(step.export.structuredReplies).toBe(false);
    const f = step.export.flags;
    const want = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM |
      P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO | P.NBD_FLAG_SEND_CACHE | P.NBD_FLAG_CAN_MULTI_CONN;
    expect(f).toBe(want); // no DF without structured replies
    expect(types(step).at(-1)).toBe(P.NBD_REP_ACK);
  });

  it('meta contexts: SET needs SR, selects base:allocation for the GO export only', async () => {
    const { hs } = machine();
    hs.clientFlags(FIXED);
    const q = C.encodeMetaContextRequest('vm', [P.BASE_ALLOCATION, 'qemu:dirty-bitmap:x']);
    expect(types(await hs.option(P.NBD_OPT_SET_META_CONTEXT, q))).toEqual([P.NBD_REP_ERR_INVALID]);
    expect(types(await hs.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.from('x')))).toEqual([P.NBD_REP_ERR_INVALID]);
    expect(types(await hs.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)))).toEqual([P.NBD_REP_ACK]);
    const set = replies(await hs.option(P.NBD_OPT_SET_META_CONTEXT, q));
    expect(set.map((r) => r.type)).toEqual([P.NBD_REP_META_CONTEXT, P.NBD_REP_ACK]);
    expect(set[0].data.readUInt32BE(0)).toBe(BASE_ALLOCATION_ID);
    expect(set[0].data.subarray(4).toString()).toBe(P.BASE_ALLOCATION);
    const list = replies(await hs.option(P.NBD_OPT_LIST_META_CONTEXT, C.encodeMetaContextRequest('vm', ['base:'])));
    expect(list.map((r) => r.type)).toEqual([P.NBD_REP_META_CONTEXT, P.NBD_REP_ACK]);
    expect(list[0].data.readUInt32BE(0)).toBe(0);
    const none = await hs.option(P.NBD_OPT_LIST_META_CONTEXT, C.encodeMetaContextRequest('vm', ['x-other:']));
    expect(types(none)).toEqual([P.NBD_REP_ACK]);
    const go = await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', []));
    expect(go.next === 'transmit' && go.export.baseAllocation && go.export.structuredReplies).toBe(true);
    if (go.next === 'transmit') expect(go.export.flags & P.NBD_FLAG_SEND_DF).toBeTruthy();
  });

  it('meta context selected for another export does not carry over to GO', async () => {
    const { hs } = machine();
    hs.clientFlags(FIXED);
    await hs.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    await hs.option(P.NBD_OPT_SET_META_CONTEXT, C.encodeMetaContextRequest('vm@snap', [P.BASE_ALLOCATION]));
    const go = await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', []));
    expect(go.next === 'transmit' && go.export.baseAllocation).toBe(false);
  });

  it('EXPORT_NAME: padding unless NO_ZEROES; unknown name closes', async () => {
    const a = machine().hs;
    a.clientFlags(P.NBD_FLAG_C_FIXED_NEWSTYLE);
    const ok = await a.option(P.NBD_OPT_EXPORT_NAME, Buffer.from('vm'));
    expect(ok.next).toBe('transmit');
    expect(Buffer.concat(ok.replies).length).toBe(10 + 124);
    const b = machine().hs;
    b.clientFlags(FIXED);
    expect(Buffer.concat((await b.option(P.NBD_OPT_EXPORT_NAME, Buffer.from('vm'))).replies).length).toBe(10);
    const c = machine().hs;
    c.clientFlags(FIXED);
    expect((await c.option(P.NBD_OPT_EXPORT_NAME, Buffer.from('missing'))).next).toBe('close');
  });

  it('a non-fixed client may only send EXPORT_NAME; ABORT is ACKed then closed', async () => {
    const a = machine().hs;
    a.clientFlags(0);
    expect((await a.option(P.NBD_OPT_LIST, Buffer.alloc(0))).next).toBe('close');
    const b = machine().hs;
    b.clientFlags(FIXED);
    const abort = await b.option(P.NBD_OPT_ABORT, Buffer.from('ignored'));
    expect(abort.next).toBe('close');
    expect(types(abort)).toEqual([P.NBD_REP_ACK]);
  });

  it('TLS off: STARTTLS is ERR_UNSUP and nothing gets TLS_REQD', async () => {
    const { hs } = machine('off');
    hs.clientFlags(FIXED);
    expect(types(await hs.option(P.NBD_OPT_STARTTLS, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_UNSUP]);
    expect(types(await hs.option(P.NBD_OPT_LIST, Buffer.alloc(0))).at(-1)).toBe(P.NBD_REP_ACK);
  });

  it('TLS require: TLS_REQD before STARTTLS, EXPORT_NAME closes, state reset after upgrade', async () => {
    const { hs } = machine('require');
    expect(machine('require').hs.clientFlags(0).next).toBe('close');
    hs.clientFlags(FIXED);
    expect(types(await hs.option(P.NBD_OPT_LIST, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_TLS_REQD]);
    expect(types(await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', [])))).toEqual([P.NBD_REP_ERR_TLS_REQD]);
    expect(types(await hs.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_TLS_REQD]);
    expect(types(await hs.option(0x999, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_TLS_REQD]);
    expect(types(await hs.option(P.NBD_OPT_STARTTLS, Buffer.from('x')))).toEqual([P.NBD_REP_ERR_INVALID]);
    const st = await hs.option(P.NBD_OPT_STARTTLS, Buffer.alloc(0));
    expect(st.next).toBe('starttls');
    expect(types(st)).toEqual([P.NBD_REP_ACK]);
    hs.tlsStarted();
    expect(types(await hs.option(P.NBD_OPT_STARTTLS, Buffer.alloc(0)))).toEqual([P.NBD_REP_ERR_INVALID]);
    expect(types(await hs.option(P.NBD_OPT_LIST, Buffer.alloc(0))).at(-1)).toBe(P.NBD_REP_ACK);
    const go = await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', []));
    expect(go.next).toBe('transmit');
    const closed = machine('require').hs;
    closed.clientFlags(FIXED);
    expect((await closed.option(P.NBD_OPT_EXPORT_NAME, Buffer.from('vm'))).next).toBe('close');
  });

  it('STARTTLS discards structured replies negotiated before it', async () => {
    const { hs } = machine('on');
    hs.clientFlags(FIXED);
    await hs.option(P.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
    expect((await hs.option(P.NBD_OPT_STARTTLS, Buffer.alloc(0))).next).toBe('starttls');
    hs.tlsStarted();
    const go = await hs.option(P.NBD_OPT_GO, C.encodeExportRequest('vm', []));
    expect(go.next === 'transmit' && go.export.structuredReplies).toBe(false);
  });

  it('closes after too many options (DoS bound)', async () => {
    const { hs } = machine();
    hs.clientFlags(FIXED);
    let last: HandshakeStep | null = null;
    for (let i = 0; i < 2000 && last?.next !== 'close'; i++) last = await hs.option(0x77, Buffer.alloc(0));
    expect(last?.next).toBe('close');
  });
});
