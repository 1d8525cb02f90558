/**
 * In-band TLS (STARTTLS) with a self-signed certificate made by openssl:
 * libnbd clients over nbds+unix URIs, a plaintext client refused under
 * 'require', and a broken TLS handshake that must only end its connection.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { NbdServer, StoreBackend } from '../../src/nbd/index.js';
import * as P from '../../src/nbd/protocol.js';
import { MiB, RawClient, memoryLogger, run, runFailing, seededBytes, serveStore, type Served } from './helpers.js';

let s: Served;
let pki: string;
let optional: NbdServer;
let optionalSock: string;

const tlsUri = (sock: string, name: string): string => `nbds+unix:///${name}?socket=${sock}&tls-certificates=${pki}`;

beforeAll(async () => {
  let certFile = '';
  let keyFile = '';
  s = await serveStore(
    'tls',
    async (store) => {
      await store.createVolume('vol', 16 * MiB);
    },
    {},
  );
  // serveStore started a plaintext server; restart it with TLS required using a fresh certificate.
  await s.server.close();
  pki = path.join(s.dir, 'pki');
  mkdirSync(pki);
  keyFile = path.join(pki, 'server-key.pem');
  certFile = path.join(pki, 'server-cert.pem');
  await run('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
  ]);
  copyFileSync(certFile, path.join(pki, 'ca-cert.pem'));
  const required = new NbdServer({
    backend: new StoreBackend(s.store), socketPath: s.socketPath, logger: s.logger,
    tls: { mode: 'require', certFile, keyFile },
  });
  await required.listen();
  s.server = required;
  optionalSock = path.join(s.dir, 'optional.sock');
  optional = new NbdServer({
    backend: new StoreBackend(s.store), socketPath: optionalSock, logger: memoryLogger(),
    tls: { mode: 'on', certFile, keyFile },
  });
  await optional.listen();
}, 60_000);

afterAll(async () => {
  await optional?.close();
  await s?.close();
});

describe('TLS', () => {
  it('require: nbdinfo over nbds+unix negotiates TLS and lists exports', async () => {
    const out = await run('nbdinfo', ['--list', tlsUri(s.socketPath, '')]);
    expect(out).toContain('with TLS');
    expect(out).toContain('export="vol"');
  });

  it('require: a plaintext client is refused (TLS_REQD; EXPORT_NAME closes)', async () => {
    const out = await runFailing('nbdinfo', [`nbd+unix:///vol?socket=${s.socketPath}`]);
    expect(out).toMatch(/TLS|not supported|permitted/i);
    const c = await RawClient.connect(s.socketPath);
    c.sendFlags();
    expect((await c.option(P.NBD_OPT_LIST))[0].type).toBe(P.NBD_REP_ERR_TLS_REQD);
    expect((await c.option(P.NBD_OPT_STRUCTURED_REPLY))[0].type).toBe(P.NBD_REP_ERR_TLS_REQD);
    c.write(Buffer.concat([Buffer.from('49484156454f5054', 'hex'), Buffer.from([0, 0, 0, 1, 0, 0, 0, 3]), Buffer.from('vol')]));
    expect(await c.closedWithin(5000)).toBe(true);
  });

  it('require: nbdcopy writes and reads back data through TLS', async () => {
    const data = seededBytes(4 * MiB, 5);
    const src = path.join(s.dir, 'in.raw');
    const dst = path.join(s.dir, 'out.raw');
    writeFileSync(src, data);
    await run('nbdcopy', [src, tlsUri(s.socketPath, 'vol')]);
    await run('nbdcopy', [tlsUri(s.socketPath, 'vol'), dst]);
    expect(readFileSync(dst).subarray(0, data.length).equals(data)).toBe(true);
  }, 60_000);

  it('a failed TLS handshake after the STARTTLS ACK ends only that connection', async () => {
    const c = await RawClient.connect(s.socketPath);
    c.sendFlags();
    expect((await c.option(P.NBD_OPT_STARTTLS))[0].type).toBe(P.NBD_REP_ACK);
    c.write(Buffer.from('this is not a TLS ClientHello at all, not even close\r\n'.repeat(8)));
    expect(await c.closedWithin(5000)).toBe(true);
    const out = await run('nbdinfo', ['--size', tlsUri(s.socketPath, 'vol')]);
    expect(out.trim()).toBe(String(16 * MiB));
  });

  it('on: TLS is optional — plaintext and TLS clients both work', async () => {
    const plain = await run('nbdinfo', [`nbd+unix:///vol?socket=${optionalSock}`]);
    expect(plain).toContain('without TLS');
    const secure = await run('nbdinfo', [tlsUri(optionalSock, 'vol')]);
    expect(secure).toContain('with TLS');
  });
});
