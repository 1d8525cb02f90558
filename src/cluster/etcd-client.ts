/**
 * A small client of etcd's v3 API through its JSON gateway (`/v3/...` on
 * the client URL, etcd 3.4 and later), over Node's `fetch`: keys and
 * values are base64 in the JSON, 64-bit numbers are strings. Only what the
 * cluster needs: range, put, delete, txn, leases (grant, one keep-alive,
 * revoke), compaction, and watch streams.
 *
 * Endpoints: several client URLs of one cluster may be given; a request
 * that cannot reach one (connection refused, reset, timed out) tries the
 * next, and the one that answered is used first from then on. Every
 * unary request has a deadline. Errors are DormantErrors: `EREMOTE` when
 * no endpoint answers or etcd refuses (the message says which and why),
 * with `etcdCode` (the gRPC code etcd gave: 5 not found, 11 out of range
 * = compacted) on `EtcdError`.
 *
 * A watch is one streaming POST /v3/watch; its answer is one JSON object
 * per line. `watchStream` yields those objects until the stream ends or
 * fails (etcd restarting ends it); the caller (watch.ts) starts it again.
 */
import { DormantError } from '../blockstore/index.js';

/** gRPC codes etcd answers with that callers act on. */
export const GRPC_NOT_FOUND = 5;
export const GRPC_OUT_OF_RANGE = 11;

/** A failure that etcd reported (it was reached) or that no endpoint answered (`etcdCode` undefined). */
export class EtcdError extends DormantError {
  constructor(message: string, readonly etcdCode?: number, cause?: unknown) {
    super('EREMOTE', message, cause === undefined ? {} : { cause });
  }
}

/** One key as etcd keeps it, decoded. */
export interface KeyValue {
  key: string;
  value: string;
  createRevision: number;
  modRevision: number;
  lease: string;
}

/** A watch event, decoded. */
export interface WatchEvent {
  type: 'put' | 'delete';
  kv: KeyValue;
}

/** One message of a watch stream, decoded. */
export interface WatchMessage {
  /** The revision etcd was at when it sent this. */
  revision: number;
  created: boolean;
  canceled: boolean;
  /** Set when the requested start revision was compacted away: re-read, then watch again. */
  compactRevision: number;
  events: WatchEvent[];
}

/** An operation inside a transaction. */
export type TxnOp =
  | { put: { key: string; value: string; lease?: string } }
  | { delete: { key: string } }
  | { range: { key: string } };

/** A condition of a transaction. */
export type TxnCompare =
  | { key: string; value: string }
  | { key: string; absent: true };

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const unb64 = (s: string | undefined): string => Buffer.from(s ?? '', 'base64').toString('utf8');

/** The key just after every key starting with `prefix` (etcd's range_end for a prefix), base64. */
export function prefixEndB64(prefix: string): string {
  const b = Buffer.from(prefix, 'utf8');
  for (let i = b.length - 1; i >= 0; i--) {
    if (b[i] < 0xff) { const e = Buffer.from(b.subarray(0, i + 1)); e[i]++; return e.toString('base64'); }
  }
  return Buffer.from([0]).toString('base64');
}

/** Raw JSON of a kv from the gateway. */
interface RawKv { key?: string; value?: string; create_revision?: string; mod_revision?: string; lease?: string }

function decodeKv(kv: RawKv): KeyValue {
  return {
    key: unb64(kv.key),
    value: unb64(kv.value),
    createRevision: Number(kv.create_revision ?? 0),
    modRevision: Number(kv.mod_revision ?? 0),
    lease: kv.lease ?? '0',
  };
}

/** Parses `--etcd URL[,URL...]` (or $DORMANT_ETCD) into endpoints. */
export function parseEndpoints(text: string, flag = '--etcd'): string[] {
  const urls = text.split(',').map((s) => s.trim()).filter(Boolean);
  if (urls.length === 0) throw new DormantError('EINVAL', `bad ${flag} '${text}': give etcd client URLs, e.g. http://127.0.0.1:2379`);
  for (const u of urls) {
    let url: URL;
    try { url = new URL(u); } catch { throw new DormantError('EINVAL', `bad ${flag} URL '${u}': e.g. http://127.0.0.1:2379`); }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') {
      throw new DormantError('EINVAL', `bad ${flag} URL '${u}': http:// or https:// (etcd's client URL)`);
    }
  }
  return urls.map((u) => u.replace(/\/+$/, ''));
}

/** A client of one etcd cluster. */
export class EtcdClient {
  private current = 0;

  /** `endpoints`: client URLs; `timeoutMs`: deadline of each unary request. */
  constructor(readonly endpoints: string[], readonly timeoutMs = 3000) {
    if (endpoints.length === 0) throw new DormantError('EINVAL', 'no etcd endpoint given');
  }

  /** The endpoint requests go to first. */
  get endpoint(): string { return this.endpoints[this.current]; }

  /** POSTs `body` to `/v3/<path>` on the first endpoint that answers; returns the parsed JSON. */
  async call<T = any>(path: string, body: unknown, timeoutMs = this.timeoutMs): Promise<T> {
    let lastErr: unknown;
    for (let i = 0; i < this.endpoints.length; i++) {
      const at = (this.current + i) % this.endpoints.length;
      const url = `${this.endpoints[at]}/v3/${path}`;
      let res: Response;
      try {
        res = await fetch(url, { method: 'POST', body: JSON.stringify(body), signal: AbortSignal.timeout(timeoutMs) });
      } catch (err) {
        lastErr = err;
        continue;
      }
      this.current = at;
      const text = await res.text().catch(() => '');
      let parsed: any;
      try { parsed = JSON.parse(text); } catch { parsed = undefined; }
      if (!res.ok || parsed?.error) {
        const msg = parsed?.message ?? parsed?.error ?? (text.trim() || `HTTP ${res.status}`);
        throw new EtcdError(`etcd at ${this.endpoints[at]}: ${path}: ${msg}`, typeof parsed?.code === 'number' ? parsed.code : undefined);
      }
      if (parsed === undefined) throw new EtcdError(`etcd at ${this.endpoints[at]}: ${path}: not JSON (is this etcd's client URL?)`);
      // Streaming endpoints (keepalive) wrap their one answer in {"result": ...}.
      return (parsed.result ?? parsed) as T;
    }
    throw new EtcdError(`cannot reach etcd at ${this.endpoints.join(', ')}: ${reason(lastErr)}`, undefined, lastErr);
  }

  /** Every key starting with `prefix`, and the revision they were read at. */
  async rangePrefix(prefix: string): Promise<{ kvs: KeyValue[]; revision: number }> {
    const r = await this.call<{ header: { revision: string }; kvs?: RawKv[] }>('kv/range', { key: b64(prefix), range_end: prefixEndB64(prefix) });
    return { kvs: (r.kvs ?? []).map(decodeKv), revision: Number(r.header.revision) };
  }

  /** One key, or undefined. */
  async get(key: string): Promise<KeyValue | undefined> {
    const r = await this.call<{ kvs?: RawKv[] }>('kv/range', { key: b64(key) });
    return r.kvs?.[0] ? decodeKv(r.kvs[0]) : undefined;
  }

  /** Puts `value` at `key`, attached to `lease` when given (etcd refuses with code 5 when the lease is gone). */
  async put(key: string, value: string, lease?: string): Promise<number> {
    const r = await this.call<{ header: { revision: string } }>('kv/put', { key: b64(key), value: b64(value), ...(lease ? { lease } : {}) });
    return Number(r.header.revision);
  }

  /** Deletes `key`; resolves with how many keys went (0 or 1). */
  async delete(key: string): Promise<number> {
    const r = await this.call<{ deleted?: string }>('kv/deleterange', { key: b64(key) });
    return Number(r.deleted ?? 0);
  }

  /** If every compare holds, `success`, else `failure`; resolves with which, and the values any range ops read. */
  async txn(compare: TxnCompare[], success: TxnOp[], failure: TxnOp[] = []): Promise<{ succeeded: boolean; read: KeyValue[] }> {
    const op = (o: TxnOp) => ('put' in o
      ? { request_put: { key: b64(o.put.key), value: b64(o.put.value), ...(o.put.lease ? { lease: o.put.lease } : {}) } }
      : 'delete' in o ? { request_delete_range: { key: b64(o.delete.key) } }
        : { request_range: { key: b64(o.range.key) } });
    const cmp = (c: TxnCompare) => ('absent' in c
      ? { key: b64(c.key), result: 'EQUAL', target: 'CREATE', create_revision: '0' }
      : { key: b64(c.key), result: 'EQUAL', target: 'VALUE', value: b64(c.value) });
    const r = await this.call<{ succeeded?: boolean; responses?: { response_range?: { kvs?: RawKv[] } }[] }>('kv/txn', {
      compare: compare.map(cmp), success: success.map(op), failure: failure.map(op),
    });
    const read = (r.responses ?? []).flatMap((x) => (x.response_range?.kvs ?? []).map(decodeKv));
    return { succeeded: Boolean(r.succeeded), read };
  }

  /** A new lease of `ttlSeconds`; resolves with its id. */
  async grant(ttlSeconds: number): Promise<string> {
    const r = await this.call<{ ID: string }>('lease/grant', { TTL: ttlSeconds });
    return r.ID;
  }

  /** One keep-alive of `lease`: resolves with the TTL etcd gave it again, 0 when the lease no longer exists. */
  async keepAlive(lease: string): Promise<number> {
    const r = await this.call<{ TTL?: string }>('lease/keepalive', { ID: lease });
    return Number(r.TTL ?? 0);
  }

  /** Revokes `lease` (its keys go); a lease already gone is not an error. */
  async revoke(lease: string): Promise<void> {
    try {
      await this.call('lease/revoke', { ID: lease });
    } catch (err) {
      if (!(err instanceof EtcdError && err.etcdCode === GRPC_NOT_FOUND)) throw err;
    }
  }

  /** Compacts the history up to `revision` (tests and tools). */
  async compact(revision: number): Promise<void> {
    await this.call('kv/compaction', { revision: String(revision), physical: true });
  }

  /**
   * Opens a watch of every key under `prefix` from `startRevision` and
   * yields its messages until the stream ends or fails (then the iterator
   * ends or throws). `signal` ends it early. The connection to etcd is
   * made with the unary deadline; once open it has none.
   */
  async *watchStream(prefix: string, startRevision: number, signal: AbortSignal): AsyncGenerator<WatchMessage> {
    const ac = new AbortController();
    const onAbort = () => ac.abort();
    signal.addEventListener('abort', onAbort);
    const connect = setTimeout(() => ac.abort(), this.timeoutMs);
    try {
      let res: Response | undefined;
      let lastErr: unknown;
      for (let i = 0; i < this.endpoints.length && !res; i++) {
        const at = (this.current + i) % this.endpoints.length;
        try {
          res = await fetch(`${this.endpoints[at]}/v3/watch`, {
            method: 'POST',
            body: JSON.stringify({ create_request: { key: b64(prefix), range_end: prefixEndB64(prefix), start_revision: String(startRevision) } }),
            signal: ac.signal,
          });
          this.current = at;
        } catch (err) {
          lastErr = err;
          if (signal.aborted) return;
        }
      }
      clearTimeout(connect);
      if (!res) throw new EtcdError(`cannot reach etcd at ${this.endpoints.join(', ')} to watch: ${reason(lastErr)}`, undefined, lastErr);
      if (!res.ok || !res.body) throw new EtcdError(`etcd at ${this.endpoint}: watch: HTTP ${res.status}`);
      const decoder = new TextDecoder();
      let buffered = '';
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true });
        let nl: number;
        while ((nl = buffered.indexOf('\n')) >= 0) {
          const line = buffered.slice(0, nl).trim();
          buffered = buffered.slice(nl + 1);
          if (line) yield decodeWatchLine(line, this.endpoint);
        }
      }
    } catch (err) {
      if (signal.aborted) return;
      throw err;
    } finally {
      clearTimeout(connect);
      signal.removeEventListener('abort', onAbort);
      ac.abort();
    }
  }
}

/** One line of a watch stream. */
function decodeWatchLine(line: string, endpoint: string): WatchMessage {
  let parsed: any;
  try { parsed = JSON.parse(line); } catch { throw new EtcdError(`etcd at ${endpoint}: watch: not JSON: ${line.slice(0, 80)}`); }
  if (parsed.error) throw new EtcdError(`etcd at ${endpoint}: watch: ${parsed.error.message ?? parsed.error}`, parsed.error.grpc_code ?? parsed.error.http_code);
  const r = parsed.result ?? {};
  return {
    revision: Number(r.header?.revision ?? 0),
    created: Boolean(r.created),
    canceled: Boolean(r.canceled),
    compactRevision: Number(r.compact_revision ?? 0),
    events: ((r.events ?? []) as { type?: string; kv: RawKv }[]).map((e) => ({ type: e.type === 'DELETE' ? 'delete' : 'put', kv: decodeKv(e.kv) })),
  };
}

/** Why a fetch failed, in a few words (undici hides the errno in `cause`). */
function reason(err: unknown): string {
  const e = err as { name?: string; message?: string; cause?: { code?: string; message?: string } } | undefined;
  if (e?.name === 'TimeoutError' || e?.name === 'AbortError') return 'timed out';
  return e?.cause?.code ?? e?.cause?.message ?? e?.message ?? String(err);
}
