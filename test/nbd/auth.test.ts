/**
 * Client authentication over TLS, driven by the real clients (qemu-img,
 * qemu-io, nbdinfo, nbdcopy; GnuTLS inside all of them):
 *   - client certificates (verifyPeer + caFile, qemu-nbd's verify-peer):
 *     a certificate signed by the CA gets in; none, or one from another
 *     CA, ends the connection, and the server logs why;
 *   - TLS-PSK (pskFile in GnuTLS psktool format, `username:hexkey`):
 *     the right key reads and writes data; a wrong key or an unknown
 *     username ends the connection, logged.
 * Keys and certificates are made by openssl in a temp dir. Servers listen
 * on TCP 127.0.0.1 (where authentication matters), one port each.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import * as tls from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, StoreBackend, parsePskFile } from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';
import { MiB, RawClient, memoryLogger, run, runFailing, seededBytes, serveStore, type Served } from './helpers.js';

let s: Served;
let pki: string;
let x509: NbdServer;
let x509Port: number;
let x509Log: ReturnType<typeof memoryLogger>;
let psk: NbdServer;
let pskPort: number;
let pskLog: ReturnType<typeof memoryLogger>;

const ALICE_KEY = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08';
const WRONG_KEY = '60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752';

/** Makes a key and a certificate signed by `ca` (or self-signed when `ca` is null). */
async function makeCert(dir: string, name: string, subject: string, ca: string | null, ext: string): Promise<void> {
  const key = path.join(dir, `${name}-key.pem`);
  const cert = path.join(dir, `${name}-cert.pem`);
  const extFile = path.join(dir, `${name}.ext`);
  writeFileSync(extFile, ext);
  if (ca === null) {
    await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1',
      '-subj', subject, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
    return;
  }
  const csr = path.join(dir, `${name}.csr`);
  await run('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', subject]);
  await run('openssl', ['x509', '-req', '-in', csr, '-CA', path.join(dir, `${ca}-cert.pem`), '-CAkey', path.join(dir, `${ca}-key.pem`),
    '-CAcreateserial', '-out', cert, '-days', '1', '-extfile', extFile]);
}

/** A client certificate directory as qemu's tls-creds-x509 and libnbd's tls-certificates read it. */
function clientDir(name: string, clientCert: string | null): string {
  const dir = path.join(pki, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'ca-cert.pem'), readFileSync(path.join(pki, 'ca-cert.pem')));
  if (clientCert !== null) {
    writeFileSync(path.join(dir, 'client-cert.pem'), readFileSync(path.join(pki, `${clientCert}-cert.pem`)));
    writeFileSync(path.join(dir, 'client-key.pem'), readFileSync(path.join(pki, `${clientCert}-key.pem`)));
  }
  return dir;
}

/** A directory holding keys.psk with one line, as qemu's tls-creds-psk reads it. */
function pskDir(name: string, user: string, key: string): string {
  const dir = path.join(pki, name);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 'keys.psk'), `${user}:${key}\n`);
  return dir;
}

/** qemu's arguments for export `vol` over TCP with the given TLS credentials object. */
function qemuArgs(port: number, object: string): string[] {
  return ['--object', object, '--image-opts',
    `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${port},export=vol,tls-creds=tls0`];
}
const x509Object = (dir: string): string => `tls-creds-x509,id=tls0,endpoint=client,dir=${dir}`;
const pskObject = (dir: string, user: string): string => `tls-creds-psk,id=tls0,endpoint=client,dir=${dir},username=${user}`;
const x509Uri = (dir: string): string => `nbds://127.0.0.1:${x509Port}/vol?tls-certificates=${dir}`;
const pskUri = (user: string, dir: string): string => `nbds://${user}@127.0.0.1:${pskPort}/vol?tls-psk-file=${path.join(dir, 'keys.psk')}`;

/** Waits (bounded) until `log` has `n` lines matching `re` (a client's exit may come before the server logs its end); returns the first. */
async function logged(log: ReturnType<typeof memoryLogger>, re: RegExp, n = 1, timeoutMs = 5000): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const lines = [...log.lines, ...log.errors].filter((l) => re.test(l));
    if (lines.length >= n) return lines[0];
    if (Date.now() > deadline) throw new Error(`not ${n} log lines matching ${re}:\n${[...log.lines, ...log.errors].join('\n')}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Drops the log lines so far, so a test sees only its own. */
function clear(log: ReturnType<typeof memoryLogger>): void {
  log.lines.length = 0;
  log.errors.length = 0;
}

beforeAll(async () => {
  s = await serveStore('auth', async (store) => {
    await store.createVolume('vol', 16 * MiB);
  });
  pki = path.join(s.dir, 'pki');
  mkdirSync(pki);
  await makeCert(pki, 'ca', '/CN=dormant test CA', null, '');
  await makeCert(pki, 'other-ca', '/CN=some other CA', null, '');
  await makeCert(pki, 'server', '/CN=localhost', 'ca',
    'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n');
  const clientExt = 'extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n';
  await makeCert(pki, 'client', '/CN=good client', 'ca', clientExt);
  await makeCert(pki, 'stranger', '/CN=stranger', 'other-ca', clientExt);

  x509Log = memoryLogger();
  x509 = new NbdServer({
    backend: new StoreBackend(s.store), tcp: { host: '127.0.0.1', port: 0 }, logger: x509Log,
    tls: {
      mode: 'require', certFile: path.join(pki, 'server-cert.pem'), keyFile: path.join(pki, 'server-key.pem'),
      verifyPeer: true, caFile: path.join(pki, 'ca-cert.pem'),
    },
  });
  x509Port = (await x509.listen()).tcp!.port;

  const pskFile = path.join(pki, 'server.psk');
  writeFileSync(pskFile, `alice:${ALICE_KEY}\nbob:${WRONG_KEY.split('').reverse().join('')}\n`);
  pskLog = memoryLogger();
  psk = new NbdServer({
    backend: new StoreBackend(s.store), tcp: { host: '127.0.0.1', port: 0 }, logger: pskLog,
    tls: { mode: 'require', pskFile },
  });
  pskPort = (await psk.listen()).tcp!.port;
}, 120_000);

afterAll(async () => {
  await x509?.close();
  await psk?.close();
  await s?.close();
});

describe('client certificates (verifyPeer)', () => {
  it('qemu-img info and nbdinfo with a certificate signed by the CA connect', async () => {
    clear(x509Log);
    const good = clientDir('good', 'client');
    const info = await run('qemu-img', ['info', ...qemuArgs(x509Port, x509Object(good))]);
    expect(info).toMatch(/virtual size: 16 MiB/);
    const out = await run('nbdinfo', [x509Uri(good)]);
    expect(out).toContain('with TLS');
    expect(out).toMatch(/export-size: 16777216/);
    // The server says who came in.
    expect(await logged(x509Log, /TLS.*client certificate.*good client/)).toMatch(/conn#\d+/);
  }, 60_000);

  it('without a client certificate: refused, and logged', async () => {
    clear(x509Log);
    const none = clientDir('none', null);
    const out = await runFailing('qemu-img', ['info', ...qemuArgs(x509Port, x509Object(none))]);
    expect(out).not.toMatch(/virtual size/);
    await runFailing('nbdinfo', [x509Uri(none)]);
    await logged(x509Log, /disconnected .*reason=TLS handshake failed.*certificate/i, 2);
  }, 60_000);

  it('with a certificate from another CA: refused, and logged', async () => {
    clear(x509Log);
    // qemu checks its own certificate against its CA file first, so that file holds both CAs here.
    // GnuTLS then offers only a certificate issued by a CA the server names in its request: both send none.
    const stranger = clientDir('stranger', 'stranger');
    writeFileSync(path.join(stranger, 'ca-cert.pem'), Buffer.concat([
      readFileSync(path.join(pki, 'ca-cert.pem')), readFileSync(path.join(pki, 'other-ca-cert.pem'))]));
    const out = await runFailing('qemu-img', ['info', ...qemuArgs(x509Port, x509Object(stranger))]);
    expect(out).not.toMatch(/virtual size/);
    await runFailing('nbdinfo', [x509Uri(stranger)]);
    await logged(x509Log, /reason=TLS handshake failed \(ERR_SSL_PEER_DID_NOT_RETURN_A_CERTIFICATE\)/, 2);
    // A client that presents it anyway completes the TLS handshake, and is cut then.
    const c = await RawClient.connectTcp('127.0.0.1', x509Port);
    c.sendFlags();
    expect((await c.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ACK);
    const secure = tls.connect({
      socket: c.socket, servername: 'localhost', ca: readFileSync(path.join(pki, 'ca-cert.pem')),
      cert: readFileSync(path.join(pki, 'stranger-cert.pem')), key: readFileSync(path.join(pki, 'stranger-key.pem')),
    });
    secure.on('error', () => {});
    await new Promise<void>((resolve) => secure.once('close', () => resolve()));
    const line = await logged(x509Log, /reason=client certificate rejected/);
    expect(line).toMatch(/UNABLE_TO_VERIFY_LEAF_SIGNATURE, "CN=stranger" \(issuer "CN=some other CA"\)/);
    // Nobody got through TLS.
    expect(x509Log.lines.filter((l) => /conn#\d+ TLS TLSv/.test(l))).toEqual([]);
  }, 60_000);

  it('no session is resumed: a client offering its last session shows its certificate again', async () => {
    const clientOpts = {
      servername: 'localhost', ca: readFileSync(path.join(pki, 'ca-cert.pem')),
      cert: readFileSync(path.join(pki, 'client-cert.pem')), key: readFileSync(path.join(pki, 'client-key.pem')),
    };
    /** STARTTLS, then a TLS handshake offering `session`; resolves with the session the server gave, and whether it was resumed. */
    const connect = async (session?: Buffer): Promise<{ session?: Buffer; reused: boolean }> => {
      const c = await RawClient.connectTcp('127.0.0.1', x509Port);
      c.sendFlags();
      expect((await c.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ACK);
      const secure = tls.connect({ socket: c.socket, ...clientOpts, session });
      let got: Buffer | undefined;
      secure.on('session', (sess: Buffer) => { got = sess; });
      await new Promise<void>((resolve, reject) => { secure.once('secureConnect', resolve); secure.once('error', reject); });
      await new Promise((r) => setTimeout(r, 100)); // TLS 1.3 tickets come after the handshake
      const reused = secure.isSessionReused();
      secure.destroy();
      return { session: got, reused };
    };
    const first = await connect();
    expect(first.reused).toBe(false);
    // The client keeps what the server sent after the handshake and offers it again: a full handshake follows, not an error.
    expect(first.session).toBeDefined();
    const second = await connect(first.session);
    expect(second.reused).toBe(false);
  });
});

describe('TLS-PSK (pskFile)', () => {
  it('qemu-io and nbdcopy with the right key write data the other reads back', async () => {
    clear(pskLog);
    const dir = pskDir('alice', 'alice', ALICE_KEY);
    // qemu writes a pattern, libnbd reads it.
    await run('qemu-io', [...qemuArgs(pskPort, pskObject(dir, 'alice')), '-c', 'write -P 0x5a 1M 1M']);
    const dst = path.join(s.dir, 'psk-out.raw');
    await run('nbdcopy', [pskUri('alice', dir), dst]);
    const got = readFileSync(dst);
    expect(got.subarray(MiB, 2 * MiB).equals(Buffer.alloc(MiB, 0x5a))).toBe(true);
    // libnbd writes data, qemu reads it.
    const data = seededBytes(2 * MiB, 19);
    const src = path.join(s.dir, 'psk-in.raw');
    writeFileSync(src, Buffer.concat([data, Buffer.alloc(14 * MiB)]));
    await run('nbdcopy', [src, pskUri('alice', dir)]);
    const back = path.join(s.dir, 'psk-back.raw');
    await run('qemu-img', ['convert', '-O', 'raw', ...qemuArgs(pskPort, pskObject(dir, 'alice')), back]);
    expect(readFileSync(back).subarray(0, data.length).equals(data)).toBe(true);
    const info = await run('nbdinfo', [pskUri('alice', dir)]);
    expect(info).toContain('with TLS');
    expect(await logged(pskLog, /TLS.*PSK identity "alice"/)).toMatch(/conn#\d+/);
  }, 120_000);

  it('a client limited to TLS 1.2 gets a PSK suite (Node leaves them out by default)', async () => {
    clear(pskLog);
    const dir = pskDir('alice12', 'alice', ALICE_KEY);
    const object = `${pskObject(dir, 'alice')},priority=NORMAL:-VERS-TLS1.3:+ECDHE-PSK:+DHE-PSK:+PSK`;
    expect(await run('qemu-img', ['info', ...qemuArgs(pskPort, object)])).toMatch(/virtual size: 16 MiB/);
    expect(await logged(pskLog, /TLS TLSv1\.2 \S*PSK\S*, PSK identity "alice"/)).toMatch(/conn#\d+/);
  }, 60_000);

  it('a wrong key: refused, and logged', async () => {
    clear(pskLog);
    const dir = pskDir('alice-wrong', 'alice', WRONG_KEY);
    const out = await runFailing('qemu-img', ['info', ...qemuArgs(pskPort, pskObject(dir, 'alice'))]);
    expect(out).not.toMatch(/virtual size/);
    await runFailing('nbdinfo', [pskUri('alice', dir)]);
    await logged(pskLog, /reason=TLS handshake failed.*PSK identity "alice"/, 2);
    expect(pskLog.lines.filter((l) => /conn#\d+ TLS TLSv/.test(l))).toEqual([]);
  }, 60_000);

  it('an unknown username: refused, and logged', async () => {
    clear(pskLog);
    const dir = pskDir('mallory', 'mallory', ALICE_KEY);
    const out = await runFailing('qemu-img', ['info', ...qemuArgs(pskPort, pskObject(dir, 'mallory'))]);
    expect(out).not.toMatch(/virtual size/);
    await runFailing('nbdinfo', [pskUri('mallory', dir)]);
    await logged(pskLog, /reason=TLS handshake failed.*unknown PSK identity "mallory"/, 2);
    expect(pskLog.lines.filter((l) => /conn#\d+ TLS TLSv/.test(l))).toEqual([]);
  }, 60_000);

  it('the PSK file is read again at each connection: a key added later lets its user in', async () => {
    const pskFile = path.join(pki, 'server.psk');
    const dir = pskDir('carol', 'carol', WRONG_KEY);
    await runFailing('nbdinfo', [pskUri('carol', dir)]);
    writeFileSync(pskFile, `${readFileSync(pskFile, 'latin1')}carol:${WRONG_KEY}\n`);
    expect(await run('nbdinfo', [pskUri('carol', dir)])).toContain('with TLS');
  }, 60_000);
});

describe('parsePskFile', () => {
  it('reads psktool lines, skips blanks and comments, keeps the first line of a name, refuses bad keys', () => {
    const keys = parsePskFile('# keys\r\nalice:00ff\r\n\nbob:0A0b0C\nalice:1234\n');
    expect(typeof keys).not.toBe('string');
    const m = keys as Map<string, Buffer>;
    expect([...m.keys()]).toEqual(['alice', 'bob']);
    expect(m.get('alice')!.toString('hex')).toBe('00ff');
    expect(m.get('bob')!.toString('hex')).toBe('0a0b0c');
    expect(parsePskFile('alice:abc\n')).toMatch(/line 1: .*hex digits/);
    expect(parsePskFile('alice\n')).toMatch(/line 1: expected username:hexkey/);
    expect(parsePskFile(':00\n')).toMatch(/line 1: expected username:hexkey/);
    expect(parsePskFile(`a:${'00'.repeat(513)}`)).toMatch(/longer than 512 bytes/);
    expect(parsePskFile('\n# nothing\n')).toBe('no keys');
  });
});
