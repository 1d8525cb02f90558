/**
 * `dormant serve`: parses the daemon's flags and runs it (src/daemon) in the
 * foreground until SIGTERM or SIGINT, one log line per event on stderr
 * (--log-level, --log-format: log-options.ts; --log-stats-every: one line
 * per busy NBD export each period; --etcd: the host joins the cluster,
 * src/cluster/membership.ts).
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { Command } from 'commander';
import { DormantError } from '../blockstore/index.js';
import { DEFAULT_ETCD_TTL_S, checkHostName, parseEndpoints } from '../cluster/index.js';
import { NBD_SOCKET_NAME, parseDuration, startDaemon, type DaemonOptions } from '../daemon/index.js';
import { readTokenFile } from '../migrate/index.js';
import type { TlsMode } from '../nbd/index.js';
import { DEFAULT_IDLE_TIMEOUT_S } from '../pager/index.js';
import { exitOnUnhandled } from './exit.js';
import { parseSize } from './format.js';
import { parseRate } from './check.js';
import { storeDir } from './store-commands.js';
import { applyConfig } from './config.js';
import { addLogOptions, logFromOptions } from './log-options.js';

interface ServeOptions {
  listen: string;
  tcp: boolean;
  socket?: string;
  tls: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsVerifyPeer?: boolean;
  tlsCa?: string;
  tlsPsk?: string;
  handshakeTimeout: string;
  maxConnections?: string;
  readOnly?: boolean;
  labelBy: string;
  foreground?: boolean;
  mount?: string;
  allowOther?: boolean;
  autoPage: boolean;
  relocate: boolean;
  idleTimeout: string;
  swapFile?: string;
  swapSize: string;
  scrubEvery?: string;
  scrubRate: string;
  metrics?: string;
  api?: string;
  apiTokenFile?: string;
  etcd?: string;
  hostName?: string;
  etcdTtl: string;
  logStatsEvery: string;
  config?: string;
}

function parseListen(text: string, flag = '--listen', example = '127.0.0.1:10809'): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new DormantError('EINVAL', `bad ${flag} '${text}': use HOST:PORT, e.g. ${example}`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

/** The TLS flags that go together: a certificate and key (with or without client certificates), or a PSK file. */
function checkTlsFlags(tls: TlsMode, o: ServeOptions): void {
  const auth = [o.tlsVerifyPeer ? '--tls-verify-peer' : null, o.tlsCa ? '--tls-ca' : null, o.tlsPsk ? '--tls-psk' : null].filter(Boolean);
  if (tls === 'off') {
    if (auth.length > 0) throw new DormantError('EINVAL', `${auth[0]} needs --tls on or --tls require`);
    return;
  }
  if (o.tlsPsk !== undefined) {
    if (o.tlsCert || o.tlsKey || o.tlsVerifyPeer || o.tlsCa) {
      throw new DormantError('EINVAL', '--tls-psk replaces certificates: drop --tls-cert, --tls-key, --tls-verify-peer and --tls-ca');
    }
    return;
  }
  if (!o.tlsCert || !o.tlsKey) throw new DormantError('EINVAL', `--tls ${tls} needs --tls-cert and --tls-key (or --tls-psk)`);
  if (o.tlsVerifyPeer && !o.tlsCa) throw new DormantError('EINVAL', '--tls-verify-peer needs --tls-ca (the CA that signs client certificates)');
  if (o.tlsCa && !o.tlsVerifyPeer) throw new DormantError('EINVAL', '--tls-ca is for verifying client certificates: add --tls-verify-peer');
}

/** --api and its token file (and the TLS certificate, when given, for HTTPS). */
function parseApi(o: ServeOptions): DaemonOptions['api'] {
  if (o.api === undefined) {
    if (o.apiTokenFile !== undefined) throw new DormantError('EINVAL', '--api-token-file is for the host API: add --api HOST:PORT');
    return undefined;
  }
  const where = parseListen(o.api, '--api', '127.0.0.1:7450');
  if (o.apiTokenFile === undefined) throw new DormantError('EINVAL', '--api needs --api-token-file FILE (the token other hosts present)');
  const token = readTokenFile(o.apiTokenFile);
  const tls = o.tlsCert && o.tlsKey ? { certFile: o.tlsCert, keyFile: o.tlsKey } : undefined;
  return { ...where, token, ...(tls ? { tls } : {}) };
}

/** --etcd, --host-name and --etcd-ttl: joining the cluster needs the host API (other hosts reach this one there). */
function parseCluster(o: ServeOptions, cmd: Command): DaemonOptions['cluster'] {
  if (o.etcd === undefined) {
    for (const [flag, name] of [['--host-name', 'hostName'], ['--etcd-ttl', 'etcdTtl']] as const) {
      const source = cmd.getOptionValueSource(name);
      if (source === 'cli' || source === 'config') throw new DormantError('EINVAL', `${flag} is for the cluster: add --etcd URL`);
    }
    return undefined;
  }
  if (o.api === undefined) throw new DormantError('EINVAL', '--etcd needs --api HOST:PORT (other hosts reach this one through its host API)');
  const ttl = Number(o.etcdTtl);
  if (!/^\d+$/.test(o.etcdTtl) || ttl < 2 || ttl > 3600) throw new DormantError('EINVAL', `bad --etcd-ttl '${o.etcdTtl}': whole seconds, 2 to 3600`);
  return { endpoints: parseEndpoints(o.etcd), hostName: checkHostName(o.hostName ?? os.hostname()), ttlSeconds: ttl };
}

function parseHandshakeTimeout(text: string): number {
  const seconds = Number(text);
  if (!/^\d+(\.\d+)?$/.test(text) || seconds < 0.1 || seconds > 3600) {
    throw new DormantError('EINVAL', `bad --handshake-timeout '${text}': seconds, 0.1 to 3600`);
  }
  return Math.round(seconds * 1000);
}

function parseMaxConnections(text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || n < 1 || n > 1_000_000) throw new DormantError('EINVAL', `bad --max-connections '${text}': a whole number, 1 to 1000000`);
  return n;
}

/** Default of --log-stats-every. */
const LOG_STATS_EVERY = '60s';

/** --log-stats-every: a duration, or 0 / off for none. */
function parseStatsEvery(text: string): number | undefined {
  if (text === '0' || text === 'off') return undefined;
  if (!/^\d+(\.\d+)?[smhd]$/.test(text)) {
    throw new DormantError('EINVAL', `bad --log-stats-every '${text}': a duration such as 10s, 5m or 1h, or off`);
  }
  return parseDuration(text, '--log-stats-every');
}

/** Registers `serve` on `program`. */
export function addServeCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  const serve = program.command('serve')
    .description('run the host daemon: serve every volume over NBD and take CLI commands on the control socket')
    .option('--config <file>', 'read settings from a TOML file: serve\'s long options (and store); flags given here win')
    .hook('preAction', (cmd) => {
      const file = cmd.opts().config as string | undefined;
      if (file !== undefined) applyConfig(cmd, file);
    })
    .option('--listen <host:port>', 'NBD over TCP', '127.0.0.1:10809')
    .option('--no-tcp', 'no TCP listener (Unix socket only)')
    .option('--socket <path>', `NBD Unix socket (default: STORE/${NBD_SOCKET_NAME})`)
    .option('--tls <mode>', 'off, on (offered) or require', 'off')
    .option('--tls-cert <file>', 'x509 certificate (PEM) for --tls on|require')
    .option('--tls-key <file>', 'private key (PEM) for --tls on|require')
    .option('--tls-verify-peer', 'require a client certificate signed by --tls-ca (else the TLS handshake fails)')
    .option('--tls-ca <file>', 'CA certificates (PEM) that client certificates must chain to, for --tls-verify-peer')
    .option('--tls-psk <file>', 'authenticate clients with pre-shared keys instead of certificates: '
      + 'a psktool file of username:hexkey lines (read again at each connection)')
    .option('--handshake-timeout <seconds>', 'disconnect a client that has not finished the NBD handshake (TLS included) by then', '10')
    .option('--max-connections <n>', 'NBD connections open at once; more are closed at once '
      + '(default 1000, or half the open-file limit when lower)')
    .option('--read-only', 'export every volume read-only')
    .option('--no-relocate', 'do not copy the scattered ranges reads find in disk volumes to consecutive places in the background')
    .option('--label-by <what>', 'read fingerprints per export name or per client peer address: export|peer', 'export')
    .option('--foreground', 'run in the foreground (the default; accepted for scripts)')
    .option('--mount <dir>', 'also show the store as files under DIR (FUSE: volumes/<vol>, snapshots/<vol@snap>); needed to run VMs')
    .option('--allow-other', 'with --mount: let other users read the view (only this user writes); '
      + 'by default only this user may use it')
    .option('--no-auto-page', 'do not page out VMs that turn idle (nor put their vCPUs under SCHED_IDLE)')
    .option('--auto-page', 'page out VMs that turn idle, keeping their timer working set (the default)')
    .option('--idle-timeout <seconds>', 'quiet time after which a VM without a history of its own counts as idle; '
      + 'each VM then learns its own from its past quiet spells', String(DEFAULT_IDLE_TIMEOUT_S))
    .option('--swap-file <path>', 'make and enable a swap file at PATH (removed on exit): idle VMs\' QEMU memory is paged out to it too')
    .option('--swap-size <size>', 'size of --swap-file (e.g. 4G)', '4G')
    .option('--scrub-every <duration>', 'read every chunk back and check it against its hash this often (e.g. 6h, 1d); '
      + 'one log line per run, damage named with its volumes and offsets')
    .option('--scrub-rate <MB/s>', 'with --scrub-every: read at most this many MB per second', '50')
    .option('--metrics <host:port>', 'serve Prometheus metrics at http://HOST:PORT/metrics (port 0: any free port, named in the log); '
      + 'no authentication: keep it on loopback')
    .option('--api <host:port>', 'serve the host API (HTTP/JSON for other hosts: push, pull, status) on HOST:PORT; '
      + 'HTTPS with --tls-cert and --tls-key; needs --api-token-file')
    .option('--api-token-file <file>', 'the bearer token every host API request must carry (one line, at least 16 characters)')
    .option('--etcd <urls>', 'join the cluster kept in etcd (its client URLs, comma-separated): register under a lease, publish '
      + 'memory and VMs, watch the other hosts; needs --api')
    .option('--host-name <name>', 'this host\'s name in the cluster (default: the machine\'s host name)')
    .option('--etcd-ttl <seconds>', 'TTL of the host\'s lease: a host that stops renewing it is down after this long', String(DEFAULT_ETCD_TTL_S))
    .option('--log-stats-every <duration>', 'log one line of NBD counters per export that had traffic, this often (e.g. 10s, 5m; 0 or off: never)',
      LOG_STATS_EVERY);
  addLogOptions(serve)
    .action((o: ServeOptions, cmd: Command) => run(async () => {
      const tls = o.tls as TlsMode;
      if (!['off', 'on', 'require'].includes(tls)) throw new DormantError('EINVAL', `bad --tls '${o.tls}': use off, on or require`);
      checkTlsFlags(tls, o);
      if (o.labelBy !== 'export' && o.labelBy !== 'peer') {
        throw new DormantError('EINVAL', `bad --label-by '${o.labelBy}': use export or peer`);
      }
      const tcp = o.tcp ? parseListen(o.listen) : undefined;
      for (const [flag, file] of [['--tls-cert', o.tlsCert], ['--tls-key', o.tlsKey], ['--tls-ca', o.tlsCa], ['--tls-psk', o.tlsPsk]] as const) {
        if (file === undefined) continue;
        try { fs.accessSync(file, fs.constants.R_OK); } catch {
          throw new DormantError('EINVAL', `cannot read ${flag} '${file}'`);
        }
      }
      const idleTimeoutSeconds = Number(o.idleTimeout);
      if (!/^\d+(\.\d+)?$/.test(o.idleTimeout) || idleTimeoutSeconds < 1 || idleTimeoutSeconds > 86_400) {
        throw new DormantError('EINVAL', `bad --idle-timeout '${o.idleTimeout}': seconds, 1 to 86400`);
      }
      if (o.allowOther && o.mount === undefined) {
        throw new DormantError('EINVAL', '--allow-other is about the FUSE view: it needs --mount DIR');
      }
      if (o.swapFile !== undefined && o.mount === undefined) {
        throw new DormantError('EINVAL', '--swap-file is for the QEMU memory of idle VMs, which run only with --mount DIR');
      }
      const swap = o.swapFile === undefined ? undefined : { path: path.resolve(o.swapFile), bytes: parseSize(o.swapSize) };
      const scrub = o.scrubEvery === undefined ? undefined
        : { everyMs: parseDuration(o.scrubEvery, '--scrub-every'), rate: parseRate(o.scrubRate, '--scrub-rate') };
      const logStatsEveryMs = parseStatsEvery(o.logStatsEvery);
      const log = logFromOptions(cmd);
      const api = parseApi(o);
      const cluster = parseCluster(o, cmd);
      exitOnUnhandled('dormant serve', log);
      const daemon = await startDaemon({
        storeDir: storeDir(cmd),
        tcp,
        socketPath: o.socket,
        tls: { mode: tls, certFile: o.tlsCert, keyFile: o.tlsKey, verifyPeer: Boolean(o.tlsVerifyPeer), caFile: o.tlsCa, pskFile: o.tlsPsk },
        handshakeTimeoutMs: parseHandshakeTimeout(o.handshakeTimeout),
        maxConnections: o.maxConnections === undefined ? undefined : parseMaxConnections(o.maxConnections),
        readOnly: Boolean(o.readOnly),
        labelBy: o.labelBy === 'peer' ? 'peer' : 'export',
        mountDir: o.mount,
        allowOther: Boolean(o.allowOther),
        autoPage: o.autoPage,
        relocate: o.relocate,
        idleTimeoutSeconds,
        swap,
        scrub,
        ...(o.metrics === undefined ? {} : { metrics: parseListen(o.metrics, '--metrics', '127.0.0.1:9464') }),
        ...(api ? { api } : {}),
        ...(cluster ? { cluster } : {}),
        logStatsEveryMs,
        log,
      });
      // 0, or 2 when a step of stopping failed (each logged in one line: e.g. the final flush on a broken disk).
      process.exitCode = await daemon.untilSignal();
    }));
}
