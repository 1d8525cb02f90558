/**
 * The control socket refuses malformed requests with a clear error and
 * keeps serving: unknown operations, bodies that are not a JSON array,
 * arguments of the wrong number or type, garbage bytes. A data check
 * through it streams progress, and stops when its client goes away.
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
  const h = await store.openVolume('v');
  await h.write(0, Buffer.alloc(8192, 0x5a).fill(0x33, 4096));
  await h.close();
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
      expect(JSON.parse(r.text).error.message).toMatch(/^bad control request: createVolume takes \(name: string, size: integer, kind: "disk"\|"memory"\)/);
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

describe('data verification through the socket', () => {
  test('verifyData takes (repair, rate) and streams progress up to the total', async () => {
    const bad = await post('/v1/verifyData', JSON.stringify([true]));
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.text).error.message).toMatch(/verifyData takes \(repair: boolean, rate: number\), got 1 argument$/);
    const seen: Array<[number, number]> = [];
    const r = await new RemoteControl(socket).verifyData(false, 0, (d, t) => seen.push([d, t]));
    expect(r).toMatchObject({ chunks: 2, bytes: 8192, damaged: [], repaired: 0, complete: true });
    expect(seen.at(-1)).toEqual([8192, 8192]);
  });

  test('a slow data check stops when its client goes away; the next one runs', async () => {
    await new Promise<void>((resolve) => {
      const req = http.request({ socketPath: socket, path: '/v1/verifyData', method: 'POST' }, (res) => {
        res.once('data', () => { req.destroy(); resolve(); }); // the first progress line: it is running
      });
      req.on('error', () => resolve());
      req.end(JSON.stringify([false, 1024])); // 1 KiB/s: 8 s for two chunks
    });
    const started = Date.now();
    for (;;) {
      try {
        const r = await new RemoteControl(socket).verifyData(false, 0);
        expect(r.complete).toBe(true);
        break;
      } catch (err) {
        expect((err as Error).message).toMatch(/already running/);
        expect(Date.now() - started).toBeLessThan(3000);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  });
});
