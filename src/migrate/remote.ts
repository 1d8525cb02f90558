/**
 * A client of another host's API (src/control/api-server.ts): one request
 * at a time per call, a bearer token on each, the answer as bytes. Any
 * failure is one EREMOTE line naming the host (a refused token, a host
 * that cannot be reached, a request it failed with its own message).
 */
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { DormantError, type ErrorCode } from '../blockstore/index.js';

/** Another host: its API URL (`http://host:port`, `https://...`) and the token it expects. */
export interface RemoteHost {
  url: string;
  token: string;
  /** CA certificate(s) to trust for an https URL (PEM), besides the system's. */
  ca?: Buffer;
}

/** An answer of a host. */
export interface RemoteAnswer { status: number; headers: http.IncomingHttpHeaders; body: Buffer }

/** Largest answer accepted (a manifest of a 64 GiB volume is 256 MiB; chunk batches are 1 MiB). */
const MAX_ANSWER = 512 * 1024 * 1024;

/** Reads a token file (one line; surrounding white space ignored). */
export function readTokenFile(file: string): string {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new DormantError('EINVAL', `cannot read token file ${file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`,
      { path: file });
  }
  const token = text.trim();
  if (token.length < 16 || /\s/.test(token)) {
    throw new DormantError('EINVAL', `token file ${file} must hold one token of at least 16 characters without spaces`, { path: file });
  }
  return token;
}

/** Checks and normalises a host URL (no trailing slash). */
export function checkHostUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new DormantError('EINVAL', `bad host URL '${url}': use http://HOST:PORT or https://HOST:PORT`);
  }
  if (u.protocol !== 'http:' && u.protocol !== 'https:') {
    throw new DormantError('EINVAL', `bad host URL '${url}': use http://HOST:PORT or https://HOST:PORT`);
  }
  return `${u.protocol}//${u.host}`;
}

/** Sends one request; resolves with any 2xx answer, rejects with EREMOTE otherwise. */
export function request(host: RemoteHost, method: string, path: string, body?: Buffer,
  opts: { timeoutMs?: number; signal?: AbortSignal } = {}): Promise<RemoteAnswer> {
  const url = new URL(path, `${host.url}/`);
  const mod = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = mod.request(url, {
      method,
      headers: {
        authorization: `Bearer ${host.token}`,
        ...(body ? { 'content-type': 'application/octet-stream', 'content-length': body.length } : {}),
      },
      ...(host.ca ? { ca: host.ca } : {}),
      signal: opts.signal,
    }, (res) => {
      const parts: Buffer[] = [];
      let size = 0;
      res.on('data', (d: Buffer) => {
        size += d.length;
        if (size > MAX_ANSWER) { req.destroy(new Error('answer too large')); return; }
        parts.push(d);
      });
      res.on('end', () => {
        const answer = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(parts) };
        if (answer.status >= 200 && answer.status < 300) resolve(answer);
        else reject(refusal(host, method, path, answer));
      });
      res.on('error', (err) => reject(unreachable(host, err)));
    });
    req.setTimeout(opts.timeoutMs ?? 60_000, () => req.destroy(new Error(`no answer within ${(opts.timeoutMs ?? 60_000) / 1000} s`)));
    req.on('error', (err) => reject(unreachable(host, err)));
    req.end(body);
  });
}

/** Sends one request and parses a JSON answer. */
export async function requestJson<T>(host: RemoteHost, method: string, path: string, body?: Buffer,
  opts: { timeoutMs?: number } = {}): Promise<T> {
  const a = await request(host, method, path, body, opts);
  try {
    return JSON.parse(a.body.toString('utf8')) as T;
  } catch {
    throw new DormantError('EREMOTE', `${host.url} answered ${method} ${path} with something that is not JSON`);
  }
}

function unreachable(host: RemoteHost, err: Error): DormantError {
  const code = (err as NodeJS.ErrnoException).code;
  return new DormantError('EREMOTE', `host ${host.url}: ${code ? `${code} ` : ''}${err.message.replace(/^\w+ /, '')}`.trim(), { cause: err });
}

function refusal(host: RemoteHost, method: string, path: string, a: RemoteAnswer): DormantError {
  if (a.status === 401) return new DormantError('EREMOTE', `host ${host.url} refused the token (401): check --token-file`);
  let code: ErrorCode = 'EREMOTE';
  let message = `${a.status} ${http.STATUS_CODES[a.status] ?? ''}`.trim();
  try {
    const e = (JSON.parse(a.body.toString('utf8')) as { error?: { code?: ErrorCode; message?: string } }).error;
    if (e?.message) message = e.message;
    // What the other host says is the user's to fix stays so here (an unknown volume there is ENOENT).
    if (e?.code === 'ENOENT' || e?.code === 'EEXIST' || e?.code === 'EINVAL' || e?.code === 'EBUSY') code = e.code;
  } catch { /* not JSON: keep the status line */ }
  return new DormantError(code, `host ${host.url}: ${message}`);
}
