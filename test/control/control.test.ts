/**
 * The control socket refuses malformed requests with a clear error and
 * keeps serving: unknown operations, bodies that are not a JSON array,
 * arguments of the wrong number or type, garbage bytes.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { Store } from '../../src/blockstore/index.js';
import { LocalControl, RemoteControl, serveControl, type ControlServer } from '../../src/control/index.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
let store: Store;
let server: ControlServer;
let socket: string;

beforeAll(async () => {
  const dir = tmp.make('control');
  store = await Store.init(path.join(dir, 'store'));
  await store.createVolume('v', 8192);
  socket = path.join(dir, 'control.sock');
  server = await serveControl(new LocalControl(store, false), socket);
});
afterAll(async () => {
  await server.close();
  await store.close();
  tmp.cleanup();
});

function post(pathname: string, body: string): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath: socket, path: pathname, method: 'POST' }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => { text += d; });
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

describe('control socket input', () => {
  test('unknown operation: 404 with EINVAL', async () => {
    const r = await post('/v1/format', '[]');
    expect(r.status).toBe(404);
    expect(JSON.parse(r.text).error.code).toBe('EINVAL');
  });

  test('a body that is not a JSON array: 400', async () => {
    for (const body of ['{', '{"a":1}', '"x"', 'null']) {
      const r = await post('/v1/list', body);
      expect(r.status, body).toBe(400);
      expect(JSON.parse(r.text).error.code).toBe('EINVAL');
    }
  });

  test('wrong number or type of arguments: 400, nothing created', async () => {
    for (const args of [[], ['x'], [1, 4096, 'disk'], ['x', '4096', 'disk'], ['x', 4096, 'disk', 'extra']]) {
      const r = await post('/v1/createVolume', JSON.stringify(args));
      expect(r.status, JSON.stringify(args)).toBe(400);
      expect(JSON.parse(r.text).error.message).toMatch(/createVolume takes \(string, number, string\)/);
    }
    expect(store.entries().map((e) => e.name)).toEqual(['v']);
  });

  test('garbage bytes close that connection only; the socket keeps answering', async () => {
    await new Promise<void>((resolve) => {
      const c = net.connect(socket, () => c.end(Buffer.from([0, 1, 2, 0xff, 0x0d, 0x0a, 0x0d, 0x0a])));
      c.on('close', () => resolve());
      c.on('error', () => resolve());
      c.resume();
    });
    const remote = new RemoteControl(socket);
    expect((await remote.list()).map((v) => v.name)).toEqual(['v']);
    await expect(remote.info('nope')).rejects.toMatchObject({ code: 'ENOENT' });
  });
});
