/**
 * The control socket: HTTP/JSON on a Unix socket in the store directory,
 * served by `dormant serve`, so CLI commands work while the daemon owns the
 * store.
 *
 * Protocol: `POST /v1/<op>` with a JSON array of arguments. The answer is
 * NDJSON: zero or more `{"progress":[done,total]}` lines, then exactly one
 * `{"result":...}` or `{"error":{"code","message"}}` line. HTTP status is
 * 200 unless the request itself is malformed (400) or unknown (404).
 * The socket is created with mode 0600: only the daemon's user may use it.
 */
import http from 'node:http';
import fs from 'node:fs';
import { DormantError } from '../blockstore/index.js';
import { CONTROL_OPS, type ControlOp, type StoreControl } from './operations.js';

/** Largest request body accepted (arguments are small). */
const MAX_BODY = 64 * 1024;

/** Argument types of each operation, checked before the call. */
const ARG_TYPES: Record<ControlOp, ReadonlyArray<'string' | 'number' | 'boolean' | 'object'>> = {
  createVolume: ['string', 'number', 'string'],
  snapshot: ['string', 'string'],
  branch: ['string', 'string'],
  remove: ['string'],
  resize: ['string', 'number'],
  list: [],
  info: ['string'],
  stats: [],
  gc: [],
  check: [],
  verifyData: ['boolean', 'number'],
  importFile: ['string', 'string', 'string', 'string'],
  exportFile: ['string', 'string'],
  pull: ['string', 'string', 'string', 'string', 'string'],
  push: ['string', 'string', 'string', 'string', 'string'],
  vmMigrate: ['string', 'string', 'string', 'string', 'string'],
  vmCreate: ['object'],
  vmStart: ['string', 'boolean', 'string'],
  vmStop: ['string', 'number'],
  vmPause: ['string'],
  vmResume: ['string'],
  vmRemove: ['string'],
  vmStatus: ['string'],
  vmList: [],
  vmPageout: ['string', 'number'],
  vmPrefetch: ['string'],
  vmSharing: [],
};

/** A running control server. */
export interface ControlServer { close(): Promise<void> }

/** Serves `control` on Unix socket `socketPath` (a stale socket file is replaced). */
export async function serveControl(control: StoreControl, socketPath: string,
  log: (line: string) => void = () => undefined): Promise<ControlServer> {
  const server = http.createServer((req, res) => {
    void handle(control, req, res, log);
  });
  fs.rmSync(socketPath, { force: true });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(socketPath, () => resolve());
  });
  fs.chmodSync(socketPath, 0o600);
  return {
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      fs.rmSync(socketPath, { force: true });
    }),
  };
}

async function handle(control: StoreControl, req: http.IncomingMessage, res: http.ServerResponse,
  log: (line: string) => void): Promise<void> {
  const m = /^\/v1\/([A-Za-z]+)$/.exec(req.url ?? '');
  const op = m?.[1] as ControlOp | undefined;
  if (req.method !== 'POST' || !op || !CONTROL_OPS.includes(op)) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ error: { code: 'EINVAL', message: `unknown control request ${req.method} ${req.url}` } })}\n`);
    return;
  }
  let args: unknown[];
  try {
    args = await readArgs(req);
  } catch (err) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ error: { code: 'EINVAL', message: (err as Error).message } })}\n`);
    return;
  }
  const want = ARG_TYPES[op];
  if (args.length !== want.length || args.some((a, i) => typeof a !== want[i] || a === null)) {
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ error: { code: 'EINVAL', message: `${op} takes (${want.join(', ')})` } })}\n`);
    return;
  }
  res.writeHead(200, { 'content-type': 'application/x-ndjson' });
  const send = (v: unknown) => res.write(`${JSON.stringify(v)}\n`);
  let lastProgress = 0;
  const progress = (done: number, total: number) => {
    const now = Date.now();
    if (now - lastProgress >= 100 || done === total) { lastProgress = now; send({ progress: [done, total] }); }
  };
  // A data check stops when its client goes away (the CLI was interrupted).
  const gone = new AbortController();
  res.on('close', () => gone.abort());
  try {
    const fn = control[op] as (...a: unknown[]) => Promise<unknown>;
    const callArgs = op === 'importFile' || op === 'exportFile' || op === 'pull' || op === 'push' || op === 'vmMigrate' ? [...args, progress]
      : op === 'verifyData' ? [...args, progress, gone.signal] : args;
    const result = await fn.apply(control, callArgs);
    send({ result: result ?? null });
  } catch (err) {
    const e = err instanceof DormantError ? err : new DormantError('EINTERNAL', (err as Error)?.message ?? String(err));
    if (!(err instanceof DormantError)) log(`control ${op} failed: ${(err as Error)?.stack ?? err}`);
    send({ error: { code: e.code, message: e.message } });
  }
  res.end();
}

async function readArgs(req: http.IncomingMessage): Promise<unknown[]> {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > MAX_BODY) throw new Error('control request too large');
  }
  const args: unknown = body.length === 0 ? [] : JSON.parse(body);
  if (!Array.isArray(args)) throw new Error('control request body must be a JSON array of arguments');
  return args;
}
