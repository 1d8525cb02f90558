/**
 * `serve --metrics HOST:PORT`: a Prometheus endpoint (GET /metrics, the
 * text format of prom-client). Every value is read when scraped: NBD
 * counters per export (the server's totals of ended and live connections),
 * store totals (`dormant stats`), and per VM its state and memory (what
 * `vm list` shows). No authentication: bound to loopback unless told
 * otherwise, with a warning then.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import client from 'prom-client';
import type { Store } from '../blockstore/index.js';
import type { ExportStats } from '../nbd/index.js';
import type { VmStatus, VmSupervisor } from '../vm/index.js';

/** What the endpoint reads at each scrape. */
export interface MetricsSources {
  store: Store;
  nbd: () => Map<string, ExportStats>;
  vms?: VmSupervisor;
}

/** A listening metrics endpoint. */
export interface MetricsServer {
  url: string;
  close(): Promise<void>;
}

/** The registry with every dormant metric, collected from `src` at each scrape. */
export function metricsRegistry(src: MetricsSources): client.Registry {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'dormant_' }); // dormant_process_*, dormant_nodejs_*

  const perExport: Array<[string, string, keyof ExportStats]> = [
    ['dormant_nbd_requests_total', 'NBD requests served, per export', 'requests'],
    ['dormant_nbd_reads_total', 'NBD READ requests, per export', 'reads'],
    ['dormant_nbd_writes_total', 'NBD WRITE requests, per export', 'writes'],
    ['dormant_nbd_read_bytes_total', 'bytes sent for NBD READs, per export', 'bytesRead'],
    ['dormant_nbd_written_bytes_total', 'bytes received in NBD WRITEs, per export', 'bytesWritten'],
    ['dormant_nbd_errors_total', 'NBD requests answered with an error, per export', 'errors'],
  ];
  for (const [name, help, key] of perExport) {
    new client.Counter({
      name, help, labelNames: ['export'], registers: [registry],
      collect() {
        this.reset();
        for (const [exp, s] of src.nbd()) this.inc({ export: exp }, s[key]);
      },
    });
  }
  new client.Gauge({
    name: 'dormant_nbd_connections', help: 'NBD connections transmitting, per export', labelNames: ['export'], registers: [registry],
    collect() {
      this.reset();
      for (const [exp, s] of src.nbd()) this.set({ export: exp }, s.connections);
    },
  });

  const storeGauges: Array<[string, string, (s: Awaited<ReturnType<Store['stats']>>) => number]> = [
    ['dormant_store_volumes', 'volumes in the store (snapshots not counted)', (s) => s.volumes],
    ['dormant_store_snapshots', 'snapshots in the store', (s) => s.snapshots],
    ['dormant_store_logical_bytes', 'allocated bytes as volumes see them', (s) => s.logicalBytes],
    ['dormant_store_stored_bytes', 'bytes of the chunks stored', (s) => s.storedBytes],
    ['dormant_store_dedup_ratio', 'logical bytes / stored bytes', (s) => s.dedupRatio],
    ['dormant_store_segment_bytes', 'bytes of the segment files', (s) => s.segmentBytes],
    ['dormant_store_garbage_bytes', 'bytes gc would reclaim', (s) => s.garbageBytes],
    ['dormant_store_segments', 'segment files', (s) => s.segments],
  ];
  // One stats() per scrape, shared by the store gauges.
  const storeStats = oncePerScrape(() => src.store.stats());
  for (const [name, help, pick] of storeGauges) {
    new client.Gauge({ name, help, registers: [registry], async collect() { this.set(pick(await storeStats())); } });
  }

  if (src.vms) {
    const vms = src.vms;
    const vmList = oncePerScrape(() => vms.list());
    const perVm: Array<[string, string, (v: VmStatus) => number | undefined]> = [
      ['dormant_vm_up', '1 when QEMU runs (booting, running or paused)', (v) => (['booting', 'running', 'paused', 'starting'].includes(v.state) ? 1 : 0)],
      ['dormant_vm_memory_bytes', 'nominal guest RAM', (v) => v.memoryBytes],
      ['dormant_vm_guest_resident_bytes', 'guest RAM resident in QEMU', (v) => v.residentGuestRam],
      ['dormant_vm_guest_cached_bytes', 'guest RAM in the host page cache', (v) => v.cachedGuestRam],
      ['dormant_vm_qemu_pss_bytes', "QEMU's own memory (PSS)", (v) => v.qemuPss],
      ['dormant_vm_paged_out', '1 when the pager paged the VM out', (v) => (v.pagedOut === undefined ? undefined : Number(v.pagedOut))],
      ['dormant_vm_idle', '1 when the VM is idle', (v) => (v.activity === undefined ? undefined : Number(v.activity === 'idle'))],
      ['dormant_vm_faults_per_second', 'guest page faults served per second', (v) => v.faultsPerSecond],
      ['dormant_vm_working_set_bytes', 'working set of the last epoch', (v) => v.workingSetBytes],
    ];
    for (const [name, help, pick] of perVm) {
      new client.Gauge({
        name, help, labelNames: ['vm'], registers: [registry],
        async collect() {
          this.reset();
          for (const v of await vmList()) {
            const value = pick(v);
            if (value !== undefined) this.set({ vm: v.name }, value);
          }
        },
      });
    }
  }
  return registry;
}

/** `read` at most once a second: the gauges of one scrape share one call. */
function oncePerScrape<T>(read: () => Promise<T>): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | undefined;
  return () => {
    if (!last || Date.now() - last.at > 1000) last = { at: Date.now(), value: read() };
    return last.value;
  };
}

/** Serves `registry` on `host`:`port` (0: any free port) at /metrics. */
export function serveMetrics(registry: client.Registry, host: string, port: number): Promise<MetricsServer> {
  const server = http.createServer((req, res) => {
    if (req.method !== 'GET' || (req.url ?? '').split('?')[0] !== '/metrics') {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: GET /metrics\n');
      return;
    }
    registry.metrics().then((text) => {
      res.writeHead(200, { 'content-type': registry.contentType }).end(text);
    }, (err: Error) => {
      res.writeHead(500, { 'content-type': 'text/plain' }).end(`metrics failed: ${err.message}\n`);
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      const a = server.address() as AddressInfo;
      resolve({
        url: `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}/metrics`,
        close: () => new Promise<void>((r) => { server.closeAllConnections(); server.close(() => r()); }),
      });
    });
  });
}
