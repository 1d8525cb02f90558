/**
 * What a migration between hosts asks of the VM runner (src/migrate's
 * MovableVms), over the supervisor's persistent QMP connection:
 *
 *   source       pause, write the guest's RAM back, send QEMU's device
 *                state (`x-ignore-shared`: the RAM is the shared file on
 *                the FUSE view, which the volumes carry), continue after a
 *                failure, release after success (QEMU quits; the VM and
 *                its volumes go);
 *   destination  adopt the record, start QEMU with `-incoming defer`
 *                listening where the source will send, wait for the
 *                stream, continue the guest, confirm it runs; or kill and
 *                remove on abort.
 *
 * QEMU's stream goes through a relay in this process (`StreamRelay`),
 * which counts its bytes: QEMU's own counters leave the device state out.
 */
import net from 'node:net';
import { DormantError, isDormantError, type Store } from '../blockstore/index.js';
import { pageRuns } from '../pager/index.js';
import type { VmSupervisor } from './supervisor.js';
import { listVms, readVm, removeVm, setMigration, vmUsing, writeVm, type VmRecord } from './vm-record.js';

/** QEMU's answer to query-migrate (the fields used). */
interface MigrateInfo { status?: string; 'error-desc'?: string }

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The VM runner's side of migrations (it implements src/migrate's MovableVms). */
export class VmMoves {
  constructor(private readonly store: Store, private readonly vms: VmSupervisor, private readonly log: (line: string) => void) {}

  record(name: string): VmRecord {
    return readVm(this.store.dir, name);
  }

  isRunning(name: string): boolean {
    return this.vms.isRunning(name);
  }

  markMigrating(name: string, to: string | undefined): void {
    setMigration(this.store.dir, name, to ? { to, since: new Date().toISOString() } : undefined);
  }

  async pause(name: string): Promise<void> {
    await this.vms.pause(name);
  }

  async cont(name: string): Promise<void> {
    await this.vms.resume(name);
  }

  pagesIn(name: string): number {
    return this.vms.pagesIn(name);
  }

  writeBack(name: string): Promise<void> {
    return this.vms.writeBack(name);
  }

  async touchedRuns(name: string, max: number): Promise<Array<[number, number]>> {
    return pageRuns(await this.vms.touchedPages(name, max));
  }

  async readInArrival(name: string, runs: Array<[number, number]>): Promise<number> {
    return this.vms.readInArrival(name, runs.flatMap(([first, count]) => Array.from({ length: count }, (_, i) => first + i)));
  }

  async migrateOut(name: string, uri: string, timeoutMs: number): Promise<{ bytes: Promise<number> }> {
    const qmp = this.vms.qmpOf(name, 'migrate');
    const relay = await StreamRelay.to(uri);
    try {
      await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
      await qmp.execute('migrate', { uri: `tcp:127.0.0.1:${relay.port}` });
      await waitMigration(() => qmp.execute('query-migrate') as Promise<MigrateInfo>, timeoutMs, `VM '${name}': sending its state`);
    } catch (err) {
      await qmp.execute('migrate_cancel').catch(() => undefined);
      relay.close();
      throw err;
    }
    // The destination is still loading what QEMU sent: the caller asks it to go on meanwhile.
    return { bytes: relay.done(5_000).then(() => { relay.close(); return relay.bytes; }) };
  }

  adopt(rec: { name: string }, from: string): void {
    const { migration: _m, ...clean } = rec as VmRecord;
    writeVm(this.store.dir, { ...clean, migration: { from, since: new Date().toISOString() } } as VmRecord);
  }

  /**
   * At daemon start: VMs that were arriving from another host when the
   * daemon stopped never ran here (the source still has them): they go,
   * with their volumes. Returns their names.
   */
  async recover(): Promise<string[]> {
    const gone: string[] = [];
    for (const rec of listVms(this.store.dir)) {
      if (!rec.migration?.from) continue;
      this.log(`vm ${rec.name}: was arriving from ${rec.migration.from} when the daemon stopped; it never ran here: removing it`);
      await removeVm(this.store, rec.name).then(() => gone.push(rec.name),
        (err: Error) => this.log(`vm ${rec.name}: cannot remove it: ${err.message}`));
    }
    return gone;
  }

  async startIncoming(name: string, uri: string): Promise<void> {
    await this.vms.start(name, { incoming: true });
    const qmp = this.vms.qmpOf(name, 'receive');
    await qmp.execute('migrate-set-capabilities', { capabilities: [{ capability: 'x-ignore-shared', state: true }] });
    await qmp.execute('migrate-incoming', { uri });
  }

  async finishIncoming(name: string, timeoutMs: number): Promise<{ hostPort?: number; state: string }> {
    const qmp = this.vms.qmpOf(name, 'receive');
    await waitMigration(() => qmp.execute('query-migrate') as Promise<MigrateInfo>, timeoutMs, `VM '${name}': receiving its state`);
    // The source paused the guest before it sent its state: it continues here.
    let st = { running: false, status: '' };
    for (let i = 0; i < 500 && !st.running; i++) {
      st = await qmp.execute('query-status') as { running: boolean; status: string };
      if (st.running) break;
      if (st.status !== 'inmigrate') await qmp.execute('cont');
      else await sleep(POLL_MS);
    }
    if (!st.running || !this.vms.isRunning(name)) {
      throw new DormantError('EINTERNAL', `VM '${name}' does not run after its state arrived (QEMU status ${st.status})`);
    }
    setMigration(this.store.dir, name, undefined); // it runs here now: this host's VM
    return { hostPort: this.vms.hostPort(name), state: 'running' };
  }

  async kill(name: string, reason: string): Promise<void> {
    if (!this.vms.isRunning(name)) return;
    this.log(`vm ${name}: ${reason}: stopping QEMU`);
    await this.vms.stop(name, 0);
  }

  async release(name: string, reason: string, keepVolumes = false): Promise<void> {
    this.log(`vm ${name}: ${reason}: QEMU quits here, the VM${keepVolumes ? ' goes (its volumes stay for the lazy copy)' : ' and its volumes go'}`);
    await this.vms.stop(name, 0);
    await this.remove(name, keepVolumes);
  }

  async remove(name: string, keepVolumes = false): Promise<void> {
    await this.vms.forget(name);
    // QEMU is gone, but the FUSE view may hold its memory file a moment longer (the memory agent closes it, writing back).
    for (let i = 0; ; i++) {
      try {
        await removeVm(this.store, name, keepVolumes);
        return;
      } catch (err) {
        if (!isDormantError(err, 'EBUSY') || i >= 200) throw err;
        await sleep(50);
      }
    }
  }

  usedBy(volume: string): string | undefined {
    return vmUsing(this.store.dir, volume)?.vm;
  }
}

/** How often QEMU is asked about a migration: a query costs it next to nothing, and each ms of lag here is downtime. */
const POLL_MS = 2;

/** Polls query-migrate until `completed` (EREMOTE on `failed` or `cancelled`, or after `timeoutMs`). */
async function waitMigration(query: () => Promise<MigrateInfo>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const info = await query();
    if (info.status === 'completed') return;
    if (info.status === 'failed' || info.status === 'cancelled') {
      throw new DormantError('EREMOTE', `${what}: QEMU's migration ${info.status}${info['error-desc'] ? `: ${info['error-desc']}` : ''}`);
    }
    if (Date.now() > deadline) throw new DormantError('EREMOTE', `${what}: QEMU's migration not done after ${timeoutMs / 1000} s`);
    await sleep(POLL_MS);
  }
}

/** A one-connection TCP relay on loopback to `tcp:HOST:PORT`, counting the bytes QEMU sends through it. */
class StreamRelay {
  bytes = 0;
  private finished: Promise<void>;
  private constructor(private readonly server: net.Server, readonly port: number, target: { host: string; port: number }) {
    this.finished = new Promise<void>((resolve) => {
      server.once('connection', (from) => {
        server.close();
        const to = net.connect(target.port, target.host);
        from.on('data', (d: Buffer) => { this.bytes += d.length; });
        from.pipe(to);
        to.pipe(from);
        // Each side's end is passed on (pipe); done once both sockets closed, so no byte in flight is cut.
        let closed = 0;
        const one = () => { if (++closed === 2) resolve(); };
        from.on('close', one);
        to.on('close', one);
        from.on('error', () => to.destroy());
        to.on('error', () => from.destroy());
      });
    });
  }

  static async to(uri: string): Promise<StreamRelay> {
    const m = /^tcp:(\[[^\]]+\]|[^:]+):(\d+)$/.exec(uri);
    if (!m) throw new DormantError('EREMOTE', `the destination gave a migration address QEMU cannot use: ${uri}`);
    const server = net.createServer();
    await new Promise<void>((resolve, reject) => { server.once('error', reject); server.listen(0, '127.0.0.1', () => resolve()); });
    return new StreamRelay(server, (server.address() as net.AddressInfo).port, { host: m[1].replace(/^\[|\]$/g, ''), port: Number(m[2]) });
  }

  /** Resolves once the stream ended (or after `ms`). */
  done(ms: number): Promise<void> {
    return Promise.race([this.finished, sleep(ms).then(() => undefined)]);
  }

  close(): void {
    this.server.close();
  }
}
