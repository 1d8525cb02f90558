/**
 * A watch of every key under a prefix that keeps a copy of them up to date
 * whatever etcd does, and says what changed (`onChange(key, before, after)`).
 *
 *   start     reads the prefix (a range), then watches from the revision
 *             after it;
 *   stream    each event is applied to the copy; `revision` follows the
 *             last event's revision, so a new stream starts just after it;
 *   ends      etcd restarting, a dropped connection or a failed request
 *             ends the stream: one warning line, then a new stream from
 *             `revision + 1` after a pause (0.5 s, doubling to 5 s),
 *             repeated until it is created (one line says so);
 *   compacted etcd cancels a stream whose start revision it compacted
 *             away (`compact_revision`): the prefix is read again, every
 *             difference from the copy reported, and the watch starts
 *             after that read (one line);
 *   went back a new stream created at a revision below the copy's (etcd's
 *             data was wiped or restored from a backup) would wait for a
 *             revision that may never come: the prefix is read again;
 *   restart   drops the stream at once and starts a new one (the host's
 *             loop calls it when etcd answers again after failing, since a
 *             half-open connection may never end by itself).
 *   stop      aborts the stream; no callback after it resolves.
 */
import { asWarn, type LogFn } from '../blockstore/index.js';
import { EtcdError, type EtcdClient, type KeyValue } from './etcd-client.js';

/** Called for each key that appeared, changed or went (`after` undefined). */
export type ChangeFn = (key: string, before: KeyValue | undefined, after: KeyValue | undefined) => void;

const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 5000;

/** A prefix of etcd, mirrored. */
export class PrefixWatch {
  readonly view = new Map<string, KeyValue>();
  /** The last revision applied to the view. */
  revision = 0;
  private stopped = false;
  private current?: AbortController;
  private loop?: Promise<void>;
  private wake?: () => void;

  constructor(private readonly client: EtcdClient, readonly prefix: string, private readonly onChange: ChangeFn,
    private readonly log: LogFn) {}

  /** Reads the prefix (rejects when etcd cannot be reached) and starts watching. */
  async start(): Promise<void> {
    await this.resync();
    this.loop = this.run();
  }

  /** Drops the current stream and watches again from the next revision. */
  restart(): void {
    this.current?.abort();
    this.wake?.();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.current?.abort();
    this.wake?.();
    await this.loop;
  }

  /** Reads the prefix again and reports every difference from the view. */
  private async resync(): Promise<void> {
    const { kvs, revision } = await this.client.rangePrefix(this.prefix);
    const fresh = new Map(kvs.map((kv) => [kv.key, kv]));
    for (const [key, old] of [...this.view]) {
      if (!fresh.has(key)) { this.view.delete(key); this.onChange(key, old, undefined); }
    }
    for (const [key, kv] of fresh) {
      const old = this.view.get(key);
      if (old?.modRevision === kv.modRevision) continue;
      this.view.set(key, kv);
      this.onChange(key, old, kv);
    }
    this.revision = revision;
  }

  private async run(): Promise<void> {
    let delay = RETRY_FIRST_MS;
    let failing = false;
    while (!this.stopped) {
      const ac = new AbortController();
      this.current = ac;
      let ended = 'the stream ended';
      try {
        for await (const m of this.client.watchStream(this.prefix, this.revision + 1, ac.signal)) {
          if (m.compactRevision > 0 || m.canceled) {
            this.log(`cluster: watch of ${this.prefix}: revision ${this.revision + 1} was compacted (to ${m.compactRevision}); reading the keys again`,
              asWarn({ prefix: this.prefix, compactRevision: m.compactRevision }));
            await this.resync();
            ended = '';
            break;
          }
          if (m.created && m.revision < this.revision) {
            // etcd's history went back (its data was wiped or restored): the next revision may never come.
            this.log(`cluster: etcd is at revision ${m.revision}, before this watch's ${this.revision} (its data was replaced); reading the keys again`,
              asWarn({ prefix: this.prefix, revision: m.revision }));
            this.revision = 0;
            await this.resync();
            ended = '';
            break;
          }
          if (m.created) {
            if (failing) this.log(`cluster: watching ${this.prefix} again from revision ${this.revision + 1}`, { prefix: this.prefix, revision: this.revision + 1 });
            failing = false;
            delay = RETRY_FIRST_MS;
          }
          for (const e of m.events) {
            if (e.kv.modRevision <= this.revision) continue;
            const before = this.view.get(e.kv.key);
            if (e.type === 'delete') this.view.delete(e.kv.key); else this.view.set(e.kv.key, e.kv);
            this.revision = e.kv.modRevision;
            this.onChange(e.kv.key, before, e.type === 'delete' ? undefined : e.kv);
          }
        }
        if (ac.signal.aborted) ended = '';
      } catch (err) {
        ended = (err as Error).message;
        if (err instanceof EtcdError && err.etcdCode !== undefined) ended = `etcd refused: ${ended}`;
      }
      if (this.stopped || ended === '') continue;
      if (!failing) {
        this.log(`cluster: watch of ${this.prefix} lost (${ended}); watching again`, asWarn({ prefix: this.prefix, err: ended }));
        failing = true;
      }
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, delay);
        this.wake = () => { clearTimeout(t); resolve(); };
      });
      this.wake = undefined;
      delay = Math.min(RETRY_MAX_MS, delay * 2);
    }
  }
}
