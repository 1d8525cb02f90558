/**
 * `dormant serve`: the host daemon. Owns the store and serves it over NBD
 * (TCP and a Unix socket) and over the control socket, so every other CLI
 * command keeps working through it. Runs in the foreground, one log line per
 * connection on stderr. SIGTERM/SIGINT: stop accepting, finish in-flight
 * requests, flush, release the store, exit 0. With --mount, the daemon also
 * runs VMs (src/pager VmSupervisor, `dormant vm ...`); they are stopped first
 * on SIGTERM/SIGINT.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { Command } from 'commander';
import { DormantError, Store } from '../blockstore/index.js';
import { NbdServer, StoreBackend, type TlsMode } from '../nbd/index.js';
import { CONTROL_SOCKET_NAME, LocalControl, serveControl } from '../migrate/index.js';
import { mountStore, type FuseMount } from '../fuse/index.js';
import { MemoryIo, VmSupervisor } from '../pager/index.js';
import { storeDir } from './store-commands.js';

/** File name of the NBD Unix socket inside the store directory. */
export const NBD_SOCKET_NAME = 'nbd.sock';

interface ServeOptions {
  listen: string;
  tcp: boolean;
  socket?: string;
  tls: string;
  tlsCert?: string;
  tlsKey?: string;
  readOnly?: boolean;
  labelBy: string;
  foreground?: boolean;
  mount?: string;
}

function parseListen(text: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[2]) : NaN;
  if (!m || port > 65535) throw new DormantError('EINVAL', `bad --listen '${text}': use HOST:PORT, e.g. 127.0.0.1:10809`);
  return { host: m[1].replace(/^\[|\]$/g, ''), port };
}

const log = (line: string) => process.stderr.write(`${new Date().toISOString()} ${line}\n`);

/** Registers `serve` on `program`. */
export function addServeCommand(program: Command, run: (fn: () => Promise<void>) => Promise<void>): void {
  program.command('serve')
    .description('run the host daemon: serve every volume over NBD and take CLI commands on the control socket')
    .option('--listen <host:port>', 'NBD over TCP', '127.0.0.1:10809')
    .option('--no-tcp', 'no TCP listener (Unix socket only)')
    .option('--socket <path>', `NBD Unix socket (default: STORE/${NBD_SOCKET_NAME})`)
    .option('--tls <mode>', 'off, on (offered) or require', 'off')
    .option('--tls-cert <file>', 'x509 certificate (PEM) for --tls on|require')
    .option('--tls-key <file>', 'private key (PEM) for --tls on|require')
    .option('--read-only', 'export every volume read-only')
    .option('--label-by <what>', 'read fingerprints per export name or per client peer address: export|peer', 'export')
    .option('--foreground', 'run in the foreground (the default; accepted for scripts)')
    .option('--mount <dir>', 'also show the store as files under DIR (FUSE: volumes/<vol>, snapshots/<vol@snap>)')
    .action((o: ServeOptions, cmd: Command) => run(async () => {
      const tls = o.tls as TlsMode;
      if (!['off', 'on', 'require'].includes(tls)) throw new DormantError('EINVAL', `bad --tls '${o.tls}': use off, on or require`);
      if (tls !== 'off' && (!o.tlsCert || !o.tlsKey)) {
        throw new DormantError('EINVAL', `--tls ${tls} needs --tls-cert and --tls-key`);
      }
      if (o.labelBy !== 'export' && o.labelBy !== 'peer') {
        throw new DormantError('EINVAL', `bad --label-by '${o.labelBy}': use export or peer`);
      }
      const tcp = o.tcp ? parseListen(o.listen) : undefined;
      for (const [flag, file] of [['--tls-cert', o.tlsCert], ['--tls-key', o.tlsKey]] as const) {
        if (file === undefined) continue;
        try { fs.accessSync(file, fs.constants.R_OK); } catch {
          throw new DormantError('EINVAL', `cannot read ${flag} '${file}'`);
        }
      }
      const dir = storeDir(cmd);
      const store = await Store.open(dir);
      const socketPath = path.resolve(o.socket ?? path.join(dir, NBD_SOCKET_NAME));
      const labelBy = o.labelBy === 'peer' ? 'peer' : 'export';
      let nbd: NbdServer;
      try {
        nbd = new NbdServer({
          backend: new StoreBackend(store, { readOnly: Boolean(o.readOnly) }),
          tcp,
          socketPath,
          tls: { mode: tls, certFile: o.tlsCert, keyFile: o.tlsKey },
          labelBy,
          logger: { info: log, error: (msg: string, err?: unknown) => log(`${msg}${err ? `: ${(err as Error).message ?? err}` : ''}`) },
        });
      } catch (err) {
        await store.close();
        throw new DormantError('EINVAL', `cannot set up TLS: ${(err as Error).message}`, { cause: err });
      }
      let control: Awaited<ReturnType<typeof serveControl>> | undefined;
      let fuse: FuseMount | undefined;
      let vms: VmSupervisor | undefined;
      try {
        const addrs = await nbd.listen();
        // The FUSE reads and writes of memory volumes are the VMs' page faults and page-outs.
        const io = new MemoryIo();
        if (o.mount !== undefined) fuse = await mountStore(store, o.mount, { log, readOnly: Boolean(o.readOnly), observer: io });
        // VMs keep their RAM on the FUSE view: no mount, no VMs.
        if (fuse) vms = new VmSupervisor({ storeDir: dir, mountDir: fuse.dir, nbdSocket: socketPath, log, io });
        control = await serveControl(new LocalControl(store, false, vms), path.join(dir, CONTROL_SOCKET_NAME), log);
        const where = [
          addrs.tcp ? `nbd://${addrs.tcp.host.includes(':') ? `[${addrs.tcp.host}]` : addrs.tcp.host}:${addrs.tcp.port}/<volume>` : null,
          `nbd+unix:///<volume>?socket=${socketPath}`,
        ].filter(Boolean).join(' and ');
        log(`dormant serve: store ${dir}; NBD on ${where}${tls !== 'off' ? ` (TLS ${tls})` : ''}${o.readOnly ? ' (read-only)' : ''}; `
          + `control socket ${path.join(dir, CONTROL_SOCKET_NAME)}${fuse ? `; FUSE on ${fuse.dir}` : ''}`);
      } catch (err) {
        await fuse?.unmount().catch(() => undefined);
        await nbd.close().catch(() => undefined);
        await store.close();
        const e = err as NodeJS.ErrnoException;
        if (e.code === 'EADDRINUSE') throw new DormantError('EBUSY', `cannot listen: address in use (${e.message.replace(/^listen EADDRINUSE: address already in use /, '')})`);
        if (e.code === 'EACCES') throw new DormantError('EINVAL', `cannot listen: permission denied (${e.message})`);
        throw err;
      }
      await new Promise<void>((resolve) => {
        let stopping = false;
        const stop = (sig: string) => {
          if (stopping) { log(`dormant serve: ${sig} again: already stopping, still flushing`); return; }
          stopping = true;
          log(`dormant serve: ${sig}: finishing in-flight requests, flushing`);
          void (async () => {
            // QEMU maps its RAM through the FUSE view and reads its disk over NBD: VMs go first.
            await vms?.stopAll().catch((err: Error) => log(`dormant serve: stopping VMs: ${err.message}`));
            await control?.close();
            await fuse?.unmount().catch((err: Error) => log(`dormant serve: ${err.message}`));
            await nbd.close();
            await store.close();
            log('dormant serve: stopped');
            resolve();
          })();
        };
        // A repeated signal must not cut the final flush short.
        process.on('SIGTERM', () => stop('SIGTERM'));
        process.on('SIGINT', () => stop('SIGINT'));
      });
    }));
}
