/**
 * `serve --metrics 127.0.0.1:0`: the ready line names the endpoint; a
 * scrape with a real HTTP client parses as Prometheus text; store totals
 * match `dormant stats`; per-export NBD counters rise after qemu-io reads
 * and writes (and keep what a closed connection did); other paths are 404;
 * a bad address is one line, exit 1.
 */
import { spawn } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { dormant, dormantJson, ensureBuilt, expectFailure, expectOk } from '../helpers/cli.js';
import { cleanupMounts, startDaemon, tool, type MountDaemon } from '../helpers/mount-daemon.js';
import { TempDirs } from '../helpers/tmp.js';

const tmp = new TempDirs();
const MiB = 2 ** 20;

/** Prometheus text format: `name{labels} value` lines, comments skipped. */
function parse(text: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?) (\S+)$/.exec(line);
    expect(m, `a metrics line: ${line}`).not.toBeNull();
    out.set(m![1], Number(m![2]));
  }
  return out;
}

describe('serve --metrics', () => {
  let store: string;
  let daemon: MountDaemon | undefined;
  let url = '';
  const scrape = async () => {
    const r = await fetch(url, { signal: AbortSignal.timeout(10_000) });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    return parse(await r.text());
  };

  beforeAll(async () => {
    ensureBuilt();
    const work = tmp.make('metrics');
    store = path.join(work, 'store');
    expectOk(dormant(['init'], { store }));
    expectOk(dormant(['create', 'v', '--size', '8M'], { store }));
    daemon = await startDaemon(store, path.join(work, 'mnt'), ['serve', '--no-tcp', '--metrics', '127.0.0.1:0'], /dormant serve: store/);
    url = /metrics on (http:\/\/127\.0\.0\.1:\d+\/metrics)/.exec(daemon.stderr())![1];
  });

  afterAll(async () => {
    await daemon?.stop().catch(() => undefined);
    await cleanupMounts();
    tmp.cleanup();
  });

  it('store totals as dormant stats reports them, and the process metrics', async () => {
    const m = await scrape();
    expect(m.get('dormant_store_volumes')).toBe(1);
    expect(m.get('dormant_store_snapshots')).toBe(0);
    expect(m.get('dormant_process_resident_memory_bytes')).toBeGreaterThan(0);
    expect(m.has('dormant_nbd_read_bytes_total{export="v"}')).toBe(false); // nobody connected yet
  });

  it('per-export NBD counters rise with qemu-io reads and writes and keep a closed connection\'s', async () => {
    const uri = `nbd+unix:///v?socket=${path.join(store, 'nbd.sock')}`;
    await tool('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5a 0 2M', '-c', 'read 0 1M', uri]);
    const a = await scrape();
    expect(a.get('dormant_nbd_written_bytes_total{export="v"}')).toBe(2 * MiB);
    expect(a.get('dormant_nbd_read_bytes_total{export="v"}')).toBeGreaterThanOrEqual(MiB);
    expect(a.get('dormant_nbd_writes_total{export="v"}')).toBeGreaterThanOrEqual(1);
    expect(a.get('dormant_nbd_errors_total{export="v"}')).toBe(0);
    expect(a.get('dormant_nbd_connections{export="v"}')).toBe(0);
    await tool('qemu-io', ['-f', 'raw', '-c', 'read 0 4M', uri]);
    const b = await scrape();
    expect(b.get('dormant_nbd_read_bytes_total{export="v"}')).toBeGreaterThanOrEqual(a.get('dormant_nbd_read_bytes_total{export="v"}')! + 4 * MiB);
    expect(b.get('dormant_nbd_written_bytes_total{export="v"}')).toBe(2 * MiB);
    // A connection that stays open counts as one, and adds its counters to the closed ones' (a number, not NaN).
    const held = spawn('qemu-io', ['-f', 'raw', uri], { stdio: ['pipe', 'ignore', 'ignore'] });
    try {
      let live = await scrape();
      for (let i = 0; i < 100 && live.get('dormant_nbd_connections{export="v"}') !== 1; i++) {
        await new Promise((r) => setTimeout(r, 100));
        live = await scrape();
      }
      expect(live.get('dormant_nbd_connections{export="v"}')).toBe(1);
      expect(live.get('dormant_nbd_written_bytes_total{export="v"}')).toBe(2 * MiB);
      expect(live.get('dormant_nbd_read_bytes_total{export="v"}')).toBeGreaterThanOrEqual(b.get('dormant_nbd_read_bytes_total{export="v"}')!);
    } finally {
      held.stdin.end();
      held.kill();
    }
    expectOk(dormant(['snapshot', 'v', 's'], { store }));
    const stats = dormantJson<{ logicalBytes: number; storedBytes: number }>(['stats'], { store });
    const c = await scrape();
    expect(c.get('dormant_store_snapshots')).toBe(1);
    expect(c.get('dormant_store_logical_bytes')).toBe(stats.logicalBytes);
    expect(c.get('dormant_store_stored_bytes')).toBe(stats.storedBytes);
  });

  it('answers 404 beside /metrics; a bad --metrics is one line, exit 1', async () => {
    const r = await fetch(url.replace(/\/metrics$/, '/other'), { signal: AbortSignal.timeout(10_000) });
    expect(r.status).toBe(404);
    await r.text();
    expectFailure(dormant(['serve', '--no-tcp', '--metrics', 'nowhere'], { store }), /^dormant: bad --metrics 'nowhere': use HOST:PORT, e\.g\. 127\.0\.0\.1:9464$/);
  });
});
