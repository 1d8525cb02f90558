/**
 * The host daemon (`dormant serve`): owns the store and composes what serves
 * it: the NBD server (TCP and a Unix socket), the control socket through
 * which every other CLI command keeps working, and with a mount point the
 * FUSE view and the VM runner with its pager (VMs keep their RAM on that
 * view, so no mount means no VMs; idle VMs are paged out automatically
 * unless autoPage is off), and an optional swap file of its own.
 *
 * Life:
 *   startDaemon   open the store, listen for NBD, enable the swap file,
 *                 mount, start the VM runner, serve the control socket (and the host
 *                 API for other hosts, with a token), join the cluster on
 *                 etcd (with --etcd: src/cluster's Membership, publishing
 *                 its VMs' fingerprint sketches, VmSketches), log one
 *                 line saying where everything is; on a failure undo what
 *                 was started and throw (a DormantError the CLI prints in
 *                 one line);
 *   stop          the cluster membership first (its lease is revoked, so
 *                 other hosts see this one down at once), then VMs (QEMU maps its RAM through the FUSE view and
 *                 reads its disk over NBD), then the control socket, the
 *                 mount, the NBD server (finishing in-flight requests), the
 *                 store (flushed; on a full disk with its space reserve
 *                 released) and the swap file; resolves once all is
 *                 released. It never rejects: a step that fails is logged
 *                 in one line and the next steps run all the same; it
 *                 resolves with the number of such problems.
 *   untilSignal   stop at the first SIGTERM or SIGINT; a repeated signal
 *                 does not cut the final flush short. Resolves with the
 *                 exit code: 0 when every step went well, EXIT_STOP_FAILED
 *                 when one failed (e.g. the final flush: its line says what
 *                 was lost).
 */
import { sdNotify } from './systemd.js';
import { metricsRegistry, serveMetrics, type MetricsServer } from './metrics.js';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DormantError, Store, asError, asWarn, type LogFn } from '../blockstore/index.js';
import { EtcdClient, Membership, VmSketches } from '../cluster/index.js';
import { CONTROL_SOCKET_NAME, LocalControl, serveApi, serveControl, type ApiServer, type ControlServer } from '../control/index.js';
import { IncomingVms, LazyIncoming, LazyLeases, Receiver } from '../migrate/index.js';
import { mountStore, type FuseMount } from '../fuse/index.js';
import { NbdServer, StoreBackend, isLoopback, type NbdAddresses, type NbdTlsOptions } from '../nbd/index.js';
import { MemoryIo, SwapFile } from '../pager/index.js';
import { ScrubSchedule } from './scrub-schedule.js';
import { StatsLog } from './stats-log.js';
import { VmMoves, VmSupervisor } from '../vm/index.js';

/** Exit code of `dormant serve` when a step of stopping failed (each logged in one line). */
export const EXIT_STOP_FAILED = 2;

/** File name of the NBD Unix socket inside the store directory. */
export const NBD_SOCKET_NAME = 'nbd.sock';

/** What the daemon serves, as `dormant serve` parsed it. */
export interface DaemonOptions {
  /** Store directory. */
  storeDir: string;
  /** NBD over TCP, or none. */
  tcp?: { host: string; port: number };
  /** NBD Unix socket (default: STORE/nbd.sock). */
  socketPath?: string;
  /** TLS: mode, and a certificate and key (optionally verifying client certificates against a CA) or a PSK file. */
  tls: NbdTlsOptions;
  /** Time a client has to finish the NBD handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** NBD connections open at once; more are closed at once (default 1000, less under a low open-file limit). */
  maxConnections?: number;
  readOnly: boolean;
  /** Read fingerprints per export name or per client peer address. */
  labelBy: 'export' | 'peer';
  /** FUSE mount point: the store as files, and VMs. */
  mountDir?: string;
  /** Other users may use the FUSE view (read only, unless they are the daemon's user). */
  allowOther?: boolean;
  /** Page out VMs that turn idle (default true); initial idle timeout in seconds. */
  autoPage?: boolean;
  idleTimeoutSeconds?: number;
  /** Relocate scattered ranges of disk volumes in the background as reads find them (default true). */
  relocate?: boolean;
  /** A swap file to make, enable, and remove at stop. */
  swap?: { path: string; bytes: number };
  /** Scrub the store every `everyMs`, reading at most `rate` bytes a second (scrub-schedule.ts). */
  scrub?: { everyMs: number; rate: number };
  /** Serve Prometheus metrics on `host`:`port` (metrics.ts). */
  metrics?: { host: string; port: number };
  /** Serve the host API (HTTP/JSON for other hosts) on `host`:`port` with this bearer token; HTTPS with `tls`. */
  api?: { host: string; port: number; token: string; tls?: { certFile: string; keyFile: string } };
  /** Join the cluster on etcd (needs `api`): its client URLs, this host's name, the lease TTL in seconds. */
  cluster?: { endpoints: string[]; hostName: string; ttlSeconds: number };
  /** Every `logStatsEveryMs`, one line per NBD export that had traffic (stats-log.ts); absent: none. */
  logStatsEveryMs?: number;
  /** One log event: a line and its fields (log.ts turns them into text or JSON lines). */
  log: LogFn;
}

/** A running daemon. */
export interface Daemon {
  readonly store: Store;
  readonly nbdAddresses: NbdAddresses;
  readonly socketPath: string;
  /** Stops everything in order (idempotent: a second call waits for the first); resolves with the number of steps that failed. */
  stop(): Promise<number>;
  /** Resolves once a SIGTERM or SIGINT has stopped the daemon, with the exit code (0, or EXIT_STOP_FAILED). */
  untilSignal(): Promise<number>;
}

/** Opens the store and starts everything `o` asks for. */
export async function startDaemon(o: DaemonOptions): Promise<Daemon> {
  const { log } = o;
  raisePriority(log);
  const dir = o.storeDir;
  const store = await Store.open(dir, { log, relocate: o.relocate !== false });
  const socketPath = path.resolve(o.socketPath ?? path.join(dir, NBD_SOCKET_NAME));
  let nbd: NbdServer;
  const backend = new StoreBackend(store, { readOnly: o.readOnly });
  try {
    nbd = new NbdServer({
      backend,
      tcp: o.tcp,
      socketPath,
      tls: o.tls,
      handshakeTimeoutMs: o.handshakeTimeoutMs,
      maxConnections: o.maxConnections,
      labelBy: o.labelBy,
      logger: {
        info: log,
        error: (msg, err, fields) => log(`${msg}${err ? `: ${(err as Error).message ?? err}` : ''}`,
          err ? asError(err, fields) : { ...fields, level: 'error' }),
      },
    });
  } catch (err) {
    await store.close();
    throw new DormantError('EINVAL', `cannot set up TLS: ${(err as Error).message}`, { cause: err });
  }
  let control: ControlServer | undefined;
  let fuse: FuseMount | undefined;
  let vms: VmSupervisor | undefined;
  let swap: SwapFile | undefined;
  let scrub: ScrubSchedule | undefined;
  let metrics: MetricsServer | undefined;
  let api: ApiServer | undefined;
  // Lazy migrations: VMs arriving with absent blocks (fetched from their source), and VMs gone whose volumes stay here.
  const lazyIn = new LazyIncoming(store, log);
  const leases = new LazyLeases(store, log);
  const receiver = new Receiver(store, log, lazyIn);
  let incoming: IncomingVms | undefined;
  let statsLog: StatsLog | undefined;
  let membership: Membership | undefined;
  let nbdAddresses: NbdAddresses;
  try {
    nbdAddresses = await nbd.listen();
    if (o.swap) swap = await SwapFile.create(o.swap.path, o.swap.bytes);
    // The FUSE reads and writes of memory volumes are the VMs' page faults and page-outs.
    const io = new MemoryIo();
    if (o.mountDir !== undefined) {
      fuse = await mountStore(store, o.mountDir, { log, readOnly: o.readOnly, observer: io, allowOther: o.allowOther });
    }
    // VMs keep their RAM on the FUSE view: no mount, no VMs.
    if (fuse) {
      vms = new VmSupervisor({
        storeDir: dir, mountDir: fuse.dir, nbdSocket: socketPath, log, io,
        autoPage: o.autoPage, idleTimeoutSeconds: o.idleTimeoutSeconds, diskOps: (v) => backend.requestsServed(v),
      });
    }
    const local = new LocalControl(store, false, vms, log, o.cluster?.hostName);
    local.lazy = { incoming: lazyIn, leases };
    const moves = vms ? new VmMoves(store, vms, log) : undefined;
    // A patch rewrote a VM's memory in the store: the pages read in ahead there leave the page cache.
    if (vms) receiver.onPatched = (volume, blocks) => vms!.dropPatched(volume, blocks);
    control = await serveControl(local, path.join(dir, CONTROL_SOCKET_NAME), log);
    if (o.api) {
      incoming = new IncomingVms(store, moves, log, (v) => receiver.forget(v), lazyIn);
      api = await serveApi(store, local, receiver, incoming, { ...o.api, log }, leases);
      leases.selfUrl = advertisedUrl(api.url);
      // A destination must trust this host's certificate to fetch from it: a self-signed one is its own CA.
      if (o.api.tls) leases.selfCa = fs.readFileSync(o.api.tls.certFile, 'utf8');
      if (!isLoopback(o.api.host) && !o.api.tls) {
        log(`dormant serve: warning: the host API on ${api.url} is plain HTTP: its token and data cross the network in the clear (add --tls-cert and --tls-key)`,
          asWarn({ url: api.url }));
      }
    }
    if (o.cluster && api) {
      const sketches = new VmSketches(store, log);
      membership = await Membership.join({
        // A request's deadline is under the TTL, so a hung one cannot outlast the lease.
        client: new EtcdClient(o.cluster.endpoints, Math.min(3000, o.cluster.ttlSeconds * 750)),
        name: o.cluster.hostName, url: advertisedUrl(api.url), ttlSeconds: o.cluster.ttlSeconds,
        vms: async () => sketches.publish(await local.vmList()), log,
      });
      const joined = membership;
      if (incoming) incoming.onArrived = (vm, fromHost) => joined.arrived(vm, fromHost);
    }
    // VMs that were running when the last daemon stopped or died come back when their restart policy says so.
    if (vms) {
      // An incoming migration cut by the last daemon's end never ran here (its source has the VM): it goes first.
      await moves!.recover();
      // Lazy copies cut by the last daemon's end go on (before a VM using their volumes starts again).
      await lazyIn.load();
      void vms.startWanted();
    }
    if (o.scrub) scrub = new ScrubSchedule(store, o.scrub.everyMs, o.scrub.rate, log);
    if (o.metrics) {
      metrics = await serveMetrics(metricsRegistry({ store, nbd: () => nbd.exportStats(), vms }), o.metrics.host, o.metrics.port);
      if (!isLoopback(o.metrics.host)) {
        log(`dormant serve: warning: metrics on ${metrics.url} answer anyone who can reach it (no authentication)`, asWarn({ url: metrics.url }));
      }
    }
    const tcp = nbdAddresses.tcp;
    const where = [
      tcp ? `nbd://${tcp.host.includes(':') ? `[${tcp.host}]` : tcp.host}:${tcp.port}/<volume>` : null,
      `nbd+unix:///<volume>?socket=${socketPath}`,
    ].filter(Boolean).join(' and ');
    log(`dormant serve: store ${dir}; NBD on ${where}${o.tls.mode !== 'off' ? ` (TLS ${o.tls.mode}${o.tls.pskFile ? ', PSK' : o.tls.verifyPeer ? ', client certificates' : ''})` : ''}${o.readOnly ? ' (read-only)' : ''}; `
      + `control socket ${path.join(dir, CONTROL_SOCKET_NAME)}${fuse ? `; FUSE on ${fuse.dir}` : ''}`
      + `${fuse ? `; automatic paging ${o.autoPage === false ? 'off' : 'on'}` : ''}${swap ? `; swap file ${swap.path}` : ''}`
      + `${o.scrub ? `; scrub every ${Math.round(o.scrub.everyMs / 1000)} s` : ''}${metrics ? `; metrics on ${metrics.url}` : ''}${api ? `; host API on ${api.url}` : ''}`
      + `${membership ? `; host ${o.cluster!.hostName} in the cluster on etcd` : ''}`,
    {
      store: dir, nbdTcp: tcp ? `${tcp.host}:${tcp.port}` : undefined, nbdSocket: socketPath, tls: o.tls.mode, readOnly: o.readOnly,
      control: path.join(dir, CONTROL_SOCKET_NAME), mount: fuse?.dir, swapFile: swap?.path, metrics: metrics?.url, api: api?.url,
      host: membership ? o.cluster!.hostName : undefined,
    });
    if (o.logStatsEveryMs) statsLog = new StatsLog(() => nbd.exportStats(), o.logStatsEveryMs, log);
    sdNotify(`READY=1\nMAINPID=${process.pid}\nSTATUS=serving ${dir}`, log);
  } catch (err) {
    statsLog?.stop();
    await membership?.stop().catch(() => undefined);
    await metrics?.close().catch(() => undefined);
    await api?.close().catch(() => undefined);
    await incoming?.close().catch(() => undefined);
    await receiver.close().catch(() => undefined);
    await control?.close().catch(() => undefined);
    await fuse?.unmount().catch(() => undefined);
    await nbd.close().catch(() => undefined);
    await store.close();
    await swap?.remove().catch(() => undefined);
    const e = err as NodeJS.ErrnoException;
    if (e.code === 'EADDRINUSE') {
      // The NBD port is the one two daemons on a machine meet on unless told otherwise: say how to give each its own.
      const addr = e.message.replace(/^listen EADDRINUSE: address already in use /, '');
      const hint = o.tcp && addr === `${o.tcp.host}:${o.tcp.port}` ? ': NBD\'s port, maybe another daemon\'s: give this one --listen HOST:PORT or --no-tcp' : '';
      throw new DormantError('EBUSY', `cannot listen: address in use (${addr}${hint})`);
    }
    if (e.code === 'EACCES') throw new DormantError('EINVAL', `cannot listen: permission denied (${e.message})`);
    throw err;
  }

  let stopped: Promise<number> | undefined;
  const stop = (): Promise<number> => {
    stopped ??= (async () => {
      sdNotify('STOPPING=1', log);
      let problems = 0;
      // One line per step that fails; the next steps run all the same.
      const step = async (what: string, fn: () => Promise<unknown> | undefined) => {
        try {
          await fn();
        } catch (err) {
          problems++;
          log(`dormant serve: ${what}: ${(err as Error)?.message ?? String(err)}`, asError(err, { step: what }));
        }
      };
      statsLog?.stop();
      await step('cluster membership', () => membership?.stop());
      await step('metrics', () => metrics?.close());
      await step('host API', () => api?.close());
      await step('transfers', () => receiver.close());
      await step('incoming VMs', () => incoming?.close());
      await step('lazy copies', () => lazyIn.close());
      await step('scrub', () => scrub?.stop());
      // QEMU maps its RAM through the FUSE view and reads its disk over NBD: VMs go first.
      await step('stopping VMs', () => vms?.stopAll());
      await step('control socket', () => control?.close());
      await step('FUSE view', () => fuse?.unmount());
      await step('NBD server', () => nbd.close());
      await step('closing the store', () => store.close());
      await step('swap file', () => swap?.remove());
      log(problems === 0 ? 'dormant serve: stopped' : `dormant serve: stopped, with ${problems} problem${problems > 1 ? 's' : ''} above`,
        problems === 0 ? {} : asWarn({ problems }));
      return problems;
    })();
    return stopped;
  };
  const untilSignal = () => new Promise<number>((resolve) => {
    const onSignal = (sig: string) => {
      if (stopped) { log(`dormant serve: ${sig} again: already stopping, still flushing`, { signal: sig }); return; }
      log(`dormant serve: ${sig}: finishing in-flight requests, flushing`, { signal: sig });
      void stop().then((problems) => resolve(problems === 0 ? 0 : EXIT_STOP_FAILED));
    };
    process.on('SIGTERM', () => onSignal('SIGTERM'));
    process.on('SIGINT', () => onSignal('SIGINT'));
  });
  return { store, nbdAddresses, socketPath, stop, untilSignal };
}

/** The API URL other hosts are told: a wildcard address (0.0.0.0, ::) becomes this host's name. */
function advertisedUrl(url: string): string {
  const u = new URL(url);
  if (u.hostname === '0.0.0.0' || u.hostname === '[::]') u.hostname = os.hostname();
  return u.toString().replace(/\/$/, '');
}

/** Niceness the daemon asks for: it serves every VM's page faults and disk, so it should win the CPU from the guests it serves. */
export const DAEMON_NICE = -5;

/** Raises the daemon's CPU priority to DAEMON_NICE when allowed (root or CAP_SYS_NICE); says so when not. */
function raisePriority(log: LogFn): void {
  try {
    if (os.getPriority() > DAEMON_NICE) os.setPriority(DAEMON_NICE);
  } catch (err) {
    log(`dormant serve: cannot raise its priority (${(err as Error).message}); page faults wait behind busy guests`, asWarn({ err: (err as Error).message }));
  }
}
