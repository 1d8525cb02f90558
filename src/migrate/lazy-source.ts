/**
 * The source's side of a lazy VM migration: after the hand-over the VM
 * runs on the destination, but its volumes stay here until the
 * destination has fetched every chunk it lacked. A lease per VM says so:
 * the volumes it keeps, the destination, and the SHA-256 of a token made
 * for this migration, which the destination uses for exactly two
 * requests: `POST /v1/chunks/fetch` and `POST /v1/vms/<vm>/lazy/done`
 * (then the volumes go, and the lease).
 *
 * On disk: `<store>/lazy/<vm>.lease` (JSON), written before the hand-over
 * and removed by `done` or by an abort before the commit point; loaded
 * when the daemon starts, so a restarted source goes on serving chunks.
 * The token itself is not kept here (only its hash).
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { DormantError, isDormantError, type Store } from '../blockstore/index.js';
import { LAZY_DIR } from './lazy.js';

/** A lease: what this host keeps for a VM moved lazily. */
interface Lease {
  vm: string;
  volumes: string[];
  /** The destination's API URL. */
  to: string;
  tokenSha256: string;
  since: string;
}

const sha256 = (s: string) => crypto.createHash('sha256').update(s).digest('hex');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** The leases of VMs this host moved lazily and still serves chunks for. */
export class LazyLeases {
  private readonly leases = new Map<string, Lease>();
  private readonly dir: string;
  /** This host's API URL as other hosts reach it (set once the API listens); lazy mode needs it. */
  selfUrl: string | undefined;
  /** This host's API certificate (PEM) when it serves HTTPS: the destination trusts it to fetch from here. */
  selfCa: string | undefined;

  constructor(private readonly store: Store, private readonly log: (line: string) => void = () => undefined) {
    this.dir = path.join(store.dir, LAZY_DIR);
    let files: string[] = [];
    try { files = fs.readdirSync(this.dir).filter((f) => f.endsWith('.lease')); } catch { /* none yet */ }
    for (const f of files) {
      try {
        const l = JSON.parse(fs.readFileSync(path.join(this.dir, f), 'utf8')) as Lease;
        if (typeof l.vm === 'string' && Array.isArray(l.volumes) && typeof l.tokenSha256 === 'string') this.leases.set(l.vm, l);
      } catch (err) {
        this.log(`lazy lease ${f}: unreadable (${(err as Error).message}): ignored`);
      }
    }
  }

  /** Makes a lease for VM `vm` moving to `to` with `volumes`; the token the destination will use. */
  grant(vm: string, volumes: string[], to: string): string {
    const token = crypto.randomBytes(32).toString('hex');
    const lease: Lease = { vm, volumes, to, tokenSha256: sha256(token), since: new Date().toISOString() };
    fs.mkdirSync(this.dir, { recursive: true, mode: 0o700 });
    const file = this.file(vm);
    fs.writeFileSync(`${file}.tmp`, `${JSON.stringify(lease)}\n`, { mode: 0o600 });
    fs.renameSync(`${file}.tmp`, file);
    this.leases.set(vm, lease);
    return token;
  }

  /** The migration failed before its commit point: the lease goes (the VM stays here). */
  revoke(vm: string): void {
    this.leases.delete(vm);
    fs.rmSync(this.file(vm), { force: true });
  }

  /** True when `token` is a lease's and the request is one it allows (`parts`: the path's parts after /v1/). */
  allows(token: string, method: string, parts: string[]): boolean {
    if (this.leases.size === 0) return false;
    const h = Buffer.from(sha256(token), 'hex');
    for (const l of this.leases.values()) {
      const want = Buffer.from(l.tokenSha256, 'hex');
      if (want.length !== h.length || !crypto.timingSafeEqual(h, want)) continue;
      if (method === 'POST' && parts.length === 2 && parts[0] === 'chunks' && parts[1] === 'fetch') return true;
      if (method === 'POST' && parts.length === 4 && parts[0] === 'vms' && parts[1] === l.vm && parts[2] === 'lazy' && parts[3] === 'done') return true;
    }
    return false;
  }

  /** Volumes kept for lazy copies (vm -> volumes). */
  list(): Array<{ vm: string; volumes: string[]; to: string; since: string }> {
    return [...this.leases.values()].map(({ vm, volumes, to, since }) => ({ vm, volumes, to, since }));
  }

  /** The destination has every chunk of VM `vm`: its volumes here go, and the lease. */
  async done(vm: string): Promise<{ released: string[] }> {
    const l = this.leases.get(vm);
    if (!l) throw new DormantError('ENOENT', `no lazy migration of VM '${vm}' here`);
    const released: string[] = [];
    for (const v of l.volumes) {
      for (let i = 0; this.store.describe(v); i++) {
        try {
          released.push(...await this.store.remove(v));
        } catch (err) {
          // The FUSE view may hold the memory file a moment after QEMU quit.
          if (!isDormantError(err, 'EBUSY') || i >= 200) throw err;
          await sleep(50);
        }
      }
    }
    this.revoke(vm);
    this.log(`vm ${vm}: ${l.to} has every chunk it lacked: released ${released.join(', ') || 'nothing'} here`);
    return { released };
  }

  private file(vm: string): string {
    return path.join(this.dir, `${vm}.lease`);
  }
}
