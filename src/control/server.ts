/**
 * The control socket: HTTP/JSON on a Unix socket in the store directory,
 * served by `dormant serve`, so CLI commands work while the daemon owns the
 * store.
 *
 * Protocol: `POST /v1/<op>` with a JSON array of arguments. The answer is
 * NDJSON: zero or more `{"progress":[done,total]}` lines, then exactly one
 * `{"result":...}` or `{"error":{"code","message"}}` line. HTTP status is
 * 200 unless the request itself is malformed (400: not JSON, or arguments
 * that do not match the operation's schema, schema.ts) or unknown (404);
 * either way the answer is one `{"error"}` line with code EINVAL.
 * The socket is created with mode 0600: only the daemon's user may use it.
 */
import http from 'node:http';
import fs from 'node:fs';
import { DormantError, type LogFn } from '../blockstore/index.js';
import { CONTROL_OPS, type ControlOp, type StoreControl } from './operations.js';
import { checkArgs } from './schema.js';

/** Largest request body accepted (arguments are small). */
const MAX_BODY = 64 * 1024;

/** Operations whose last argument is a progress callback, streamed as `{"progress"}` lines. */
const PROGRESS_OPS: ReadonlySet<ControlOp> = new Set<ControlOp>(['importFile', 'exportFile', 'pull', 'push', 'vmMigrate']);

/** A running control server. */
export interface ControlServer { close(): Promise<void> }

/** Serves `control` on Unix socket `socketPath` (a stale socket file is replaced). */
export async function serveControl(control: StoreControl, socketPath: string,
  log: LogFn = () => undefined): Promise<ControlServer> {
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
  log: LogFn): Promise<void> {
  const m = /^\/v1\/([A-Za-z]+)$/.exec(req.url ?? '');
  const op = m?.[1] as ControlOp | undefined;
  if (req.method !== 'POST' || !op || !CONTROL_OPS.includes(op)) {
    res.writeHead(404, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ error: { code: 'EINVAL', message: `unknown control request ${req.method} ${req.url}` } })}\n`);
    return;
  }
  let args: unknown[];
  try {
    args = checkArgs(op, await readBody(req));
  } catch (err) {
    const message = (err as Error).message;
    log(`control: refused a request: ${message}`, { level: 'warn', op, err: message });
    res.writeHead(400, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify({ error: { code: 'EINVAL', message } })}\n`);
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
    const callArgs = PROGRESS_OPS.has(op) ? [...args, progress] : op === 'verifyData' ? [...args, progress, gone.signal] : args;
    const result = await fn.apply(control, callArgs);
    send({ result: result ?? null });
  } catch (err) {
    const e = err instanceof DormantError ? err : new DormantError('EINTERNAL', (err as Error)?.message ?? String(err));
    if (!(err instanceof DormantError)) log(`control ${op} failed: ${(err as Error)?.stack ?? err}`, { level: 'error', op, err: e.message });
    send({ error: { code: e.code, message: e.message } });
  }
  res.end();
}

/** The request body as parsed JSON (an empty body is no arguments); EINVAL when too large or not JSON. */
async function readBody(req: http.IncomingMessage): Promise<unknown> {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > MAX_BODY) throw new DormantError('EINVAL', `bad control request: larger than ${MAX_BODY} bytes`);
  }
  if (body.length === 0) return [];
  try {
    return JSON.parse(body);
  } catch (err) {
    throw new DormantError('EINVAL', `bad control request: the body is not JSON (${(err as Error).message})`);
  }
}
