/**
 * Restart policies (`vm create|start --restart`): whether a VM should run
 * is kept in its record (`wanted`: set by `vm start`, cleared by `vm stop`),
 * so a daemon that starts again (also after `kill -9`) brings back the VMs
 * that were running and whose policy says so. While the daemon runs, a VM
 * whose QEMU dies is started again after a back-off (1, 2, 4 ... 30 s), at
 * most RESTART_LIMIT times within RESTART_WINDOW_MS; then it stays down
 * with a log line.
 */
import { asError, asWarn, type LogFn } from '../blockstore/index.js';
import { listVms, readVm, writeVm, type RestartPolicy, type VmRecord } from './vm-record.js';

/** Restarts allowed within RESTART_WINDOW_MS before the keeper gives up on a VM. */
export const RESTART_LIMIT = 5;
const RESTART_WINDOW_MS = 10 * 60_000;
const MAX_BACKOFF_MS = 30_000;

/**
 * How a VM's QEMU ended when nobody asked it to stop: `powered-off` (the
 * guest powered off or rebooted: SHUTDOWN guest-shutdown or guest-reset),
 * `panicked` (the guest's kernel panicked: SHUTDOWN guest-panic, or a panic
 * on its serial line), `crashed` (anything else: QEMU died, or got a signal
 * on the host). `on-failure` restarts the last two.
 */
export type ExitKind = 'crashed' | 'panicked' | 'powered-off';

/** Restarts of one store's VMs; `start` is the supervisor's. */
export class RestartKeeper {
  private closing = false;
  private readonly tries = new Map<string, { count: number; since: number; timer?: NodeJS.Timeout }>();

  constructor(private readonly storeDir: string, private readonly start: (name: string) => Promise<unknown>,
    private readonly log: LogFn) {}

  /** Records whether VM `name` should run (its record is rewritten only when that changes). */
  setWanted(name: string, wanted: boolean, policy?: RestartPolicy): void {
    try {
      const rec = readVm(this.storeDir, name);
      const next: VmRecord = { ...rec, wanted, ...(policy ? { restart: policy } : {}) };
      if (rec.wanted !== next.wanted || rec.restart !== next.restart) writeVm(this.storeDir, next);
    } catch (err) {
      this.log(`vm ${name}: cannot record its run state: ${(err as Error).message}`, asError(err, { vm: name }));
    }
  }

  /** A `vm stop` or `vm rm`: no restart pending for `name` any more. */
  cancel(name: string): void {
    clearTimeout(this.tries.get(name)?.timer);
    this.tries.delete(name);
  }

  /**
   * QEMU of VM `name` ended by itself (`reason`: in words, with QEMU's
   * SHUTDOWN reason when it gave one): start it again if its policy says
   * so, else record it as not wanted.
   */
  exited(name: string, how: ExitKind, reason: string): void {
    let policy: RestartPolicy = 'no';
    try { policy = readVm(this.storeDir, name).restart ?? 'no'; } catch { return; } // removed meanwhile
    const again = !this.closing && (policy === 'always' || (policy === 'on-failure' && how !== 'powered-off'));
    if (!again) {
      if (how === 'powered-off') this.setWanted(name, false);
      return;
    }
    const now = Date.now();
    let t = this.tries.get(name);
    if (!t || now - t.since > RESTART_WINDOW_MS) t = { count: 0, since: now };
    this.tries.set(name, t);
    t.count++;
    if (t.count > RESTART_LIMIT) {
      this.log(`vm ${name}: ${how} (${reason}); restarted ${RESTART_LIMIT} times in ${RESTART_WINDOW_MS / 60_000} min, giving up (dormant vm start ${name} tries again)`);
      this.tries.delete(name);
      return;
    }
    const delay = Math.min(MAX_BACKOFF_MS, 1000 * 2 ** (t.count - 1));
    this.log(`vm ${name}: ${how} (${reason}); restart policy ${policy}: starting it again in ${delay / 1000} s (${t.count} of ${RESTART_LIMIT})`);
    t.timer = setTimeout(() => {
      if (this.closing) return;
      this.start(name).catch((err: Error) => this.log(`vm ${name}: restart failed: ${err.message}`, asError(err, { vm: name })));
    }, delay);
  }

  /** At daemon start: starts, one after another, the VMs that were running and whose policy brings them back. */
  async startWanted(): Promise<void> {
    for (const rec of listVms(this.storeDir)) {
      if (this.closing) return;
      if (!rec.wanted || !rec.restart || rec.restart === 'no') continue;
      if (rec.migration?.to) {
        // It may run on the other host now: starting it here could run it twice.
        this.log(`vm ${rec.name}: was being migrated to ${rec.migration.to} when the daemon stopped: not started here `
          + `(see whether it runs there, then dormant vm start ${rec.name} or vm rm ${rec.name})`, asWarn({ vm: rec.name }));
        continue;
      }
      this.log(`vm ${rec.name}: was running, restart policy ${rec.restart}: starting it`, { vm: rec.name, policy: rec.restart });
      await this.start(rec.name).catch((err: Error) => this.log(`vm ${rec.name}: start failed: ${err.message}`, asError(err, { vm: rec.name })));
    }
  }

  /** The daemon stops: no more restarts. */
  close(): void {
    this.closing = true;
    for (const name of [...this.tries.keys()]) this.cancel(name);
  }
}
