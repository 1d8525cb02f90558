/**
 * The LMDB index of a store: one environment (`index/`) with named databases.
 *
 *   meta      string -> value       formatVersion, created
 *   catalog   string -> record      'v:<name>' volumes, 's:<name>@<snap>' snapshots,
 *                                   'l:<id>' lineages (msgpack records, see catalog.ts)
 *   map       binary -> binary      block map entries (keys.ts)
 *   chunks    binary -> binary      chunk id -> record (keys.ts)
 *   hashes    binary -> empty       hash + chunk id, the dedup index
 *   segments  uint32 -> number      segment id -> live chunk count
 *   prints    [label, id] -> number read fingerprints: chunk reads per client label
 *
 * Every write goes through `commit()`, which serialises transactions so the
 * store's ordering rules hold (segment data synced before a commit that
 * points at it; a snapshot's version bump before later block entries).
 * A commit resolves once LMDB reports the transaction flushed to disk; a
 * failed one rejects with a DormantError (ENOSPC when the disk is full,
 * so the store can release its space reserve and try again).
 */
import fs from 'node:fs';
import path from 'node:path';
import { open, type Database, type Key, type RootDatabase } from 'lmdb';
import { FORMAT_VERSION } from './constants.js';
import { DormantError } from './errors.js';

/** The named databases of the index. */
export interface IndexDbs {
  env: RootDatabase;
  meta: Database<unknown, string>;
  catalog: Database<unknown, string>;
  map: Database<Buffer, Buffer>;
  chunks: Database<Buffer, Buffer>;
  hashes: Database<Buffer, Buffer>;
  segments: Database<number, number>;
  prints: Database<number, [string, number]>;
}

/** Directory of the LMDB environment inside a store. */
export function indexDir(storeDir: string): string {
  return path.join(storeDir, 'index');
}

/** True when `storeDir` holds an index. */
export function indexExists(storeDir: string): boolean {
  return fs.existsSync(path.join(indexDir(storeDir), 'data.mdb'));
}

/** Opens (or, with create, makes) the index; checks the format version. */
export async function openIndexChecked(storeDir: string, create: boolean): Promise<IndexDbs> {
  const dbs = openIndex(storeDir, create);
  const version = dbs.meta.get('formatVersion');
  if ((version === undefined && !create) || (version !== undefined && version !== FORMAT_VERSION)) {
    await dbs.env.close();
    throw new DormantError('EFORMAT', version === undefined
      ? `store at ${storeDir} has an index without a format version`
      : `store at ${storeDir} has format version ${String(version)}; this dormant reads version ${FORMAT_VERSION}`,
    { path: storeDir });
  }
  return dbs;
}

/** Opens (or makes) the LMDB environment and its databases, unchecked. */
function openIndex(storeDir: string, create: boolean): IndexDbs {
  const dir = indexDir(storeDir);
  if (!create && !indexExists(storeDir)) {
    throw new DormantError('ENOTINIT', `store not initialised at ${storeDir} (run: dormant init)`, { path: storeDir });
  }
  fs.mkdirSync(dir, { recursive: true });
  // overlappingSync off: with it, a process killed between commit and sync
  // left a transaction that one later opener ignored and the next one used,
  // so data could reappear after the store had been read without it (found
  // by test/blockstore/crash.test.ts). Off, a commit is synced before it
  // resolves and every opener sees the same last transaction.
  const env = open({ path: dir, maxDbs: 16, pageSize: 4096, overlappingSync: false });
  const binary = { keyEncoding: 'binary', encoding: 'binary' } as const;
  const dbs: IndexDbs = {
    env,
    meta: env.openDB<unknown, string>('meta', {}),
    catalog: env.openDB<unknown, string>('catalog', {}),
    map: env.openDB<Buffer, Buffer>('map', binary),
    chunks: env.openDB<Buffer, Buffer>('chunks', binary),
    hashes: env.openDB<Buffer, Buffer>('hashes', binary),
    segments: env.openDB<number, number>('segments', { keyEncoding: 'uint32' }),
    prints: env.openDB<number, [string, number]>('prints', {}),
  };
  return dbs;
}

/** Index writes recorded by a commit plan, applied in order. */
export class IndexWrites {
  private readonly dbs: Array<Database<any, any>> = [];
  private readonly keys: unknown[] = [];
  private readonly values: unknown[] = []; // undefined: remove

  put<K extends Key, V>(db: Database<V, K>, key: K, value: V): void {
    this.dbs.push(db);
    this.keys.push(key);
    this.values.push(value);
  }

  remove<K extends Key, V>(db: Database<V, K>, key: K): void {
    this.dbs.push(db);
    this.keys.push(key);
    this.values.push(undefined);
  }

  /** Issues every write (inside a transaction or batch). */
  apply(): void {
    for (let i = 0; i < this.dbs.length; i++) {
      const v = this.values[i];
      if (v === undefined) void this.dbs[i].remove(this.keys[i]);
      else void this.dbs[i].put(this.keys[i], v);
    }
  }
}

/** Serialises write transactions and waits for each to be durable. */
export class Committer {
  private tail: Promise<unknown> = Promise.resolve();

  constructor(private readonly dbs: IndexDbs) {}

  /**
   * Queues `body` to run inside a write transaction after every earlier
   * commit; resolves with its result once the transaction is on disk.
   * `before` runs first, outside the transaction (e.g. syncing segments).
   */
  commit<T>(body: () => T, before?: () => Promise<void>): Promise<T> {
    const run = async (): Promise<T> => {
      if (before) await before();
      try {
        const result = await this.dbs.env.transaction(body);
        await this.dbs.env.flushed;
        return result as T;
      } catch (err) {
        throw await indexError(err);
      }
    };
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /**
   * `commit` in two steps: `plan` reads the index and records its writes
   * (nothing is written if it throws; it may yield to the event loop, no
   * other commit runs until this one is done); they are then queued as one batch
   * (`env.batch`) that LMDB's write thread applies in one transaction, so
   * the B-tree work leaves the JS thread. Afterwards the JS thread's read
   * snapshot is renewed, so its next read sees the commit.
   */
  commitPlanned<T>(plan: (w: IndexWrites) => T | Promise<T>, before?: () => Promise<void>): Promise<T> {
    const run = async (): Promise<T> => {
      if (before) await before();
      const w = new IndexWrites();
      const result = await plan(w);
      try {
        await this.dbs.env.batch(() => w.apply());
        await this.dbs.env.flushed;
      } catch (err) {
        throw await indexError(err);
      }
      this.dbs.env.resetReadTxn();
      return result;
    };
    const p = this.tail.then(run, run);
    this.tail = p.catch(() => undefined);
    return p;
  }

  /** Resolves when every queued commit has finished. */
  idle(): Promise<void> {
    return this.tail.then(() => undefined);
  }
}

/** How long a failed commit's cause is waited for (lmdb-js gives it on a promise of its own, usually at once). */
const COMMIT_ERROR_WAIT_MS = 1000;

/**
 * A failed LMDB commit as a DormantError. lmdb-js rejects the transaction
 * with a generic "Commit failed" whose `commitError` is a promise of the
 * cause (with an errno in `code`); that promise is handled here, or it
 * would be an unhandled rejection.
 */
async function indexError(err: unknown): Promise<DormantError> {
  if (err instanceof DormantError) return err;
  let cause: unknown = err;
  const pending = (err as { commitError?: Promise<unknown> } | null)?.commitError;
  if (pending !== undefined && typeof pending.then === 'function') {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<null>((resolve) => { timer = setTimeout(() => resolve(null), COMMIT_ERROR_WAIT_MS); });
    const got = await Promise.race([pending.then(() => null, (e: unknown) => e), timeout]);
    clearTimeout(timer);
    if (got !== null) cause = got;
  }
  const code = (cause as { code?: unknown } | null)?.code;
  const noSpace = code === 28 || code === 'ENOSPC' || code === 122 || code === 'EDQUOT';
  const message = (cause as Error | null)?.message ?? String(cause);
  return new DormantError(noSpace ? 'ENOSPC' : 'EIO', `index commit failed: ${noSpace ? 'no space left on device' : message}`,
    { cause });
}
