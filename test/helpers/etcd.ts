/**
 * A real etcd for tests (Debian's etcd-server, /usr/bin/etcd, installed by
 * scripts/setup.sh): one member on loopback with free ports and a data
 * directory of the caller's, stopped and started again on the same ports
 * and data (an etcd restart) or with its data wiped, stopped for good by
 * `stop`. Every wait is
 * bounded; `stopAllEtcd` kills whatever is left (afterAll).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { EtcdClient } from '../../src/cluster/index.js';
import { freePort } from '../../src/vm/index.js';

export const ETCD_BIN = '/usr/bin/etcd';

const running = new Set<ChildProcess>();

/** One etcd member. */
export class TestEtcd {
  private child?: ChildProcess;
  readonly url: string;
  readonly client: EtcdClient;

  private constructor(readonly dataDir: string, readonly clientPort: number, readonly peerPort: number) {
    this.url = `http://127.0.0.1:${clientPort}`;
    this.client = new EtcdClient([this.url]);
  }

  /** Starts a new member whose data lives in `dir` (made if missing); resolves once it answers. */
  static async start(dir: string): Promise<TestEtcd> {
    if (!fs.existsSync(ETCD_BIN)) throw new Error(`${ETCD_BIN} is missing: run \`bash scripts/setup.sh\` (it installs etcd-server)`);
    const e = new TestEtcd(dir, await freePort(), await freePort());
    await e.run();
    return e;
  }

  /** The etcd process id while it runs. */
  get pid(): number | undefined { return this.child?.pid; }

  private async run(): Promise<void> {
    fs.mkdirSync(this.dataDir, { recursive: true });
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const log = fs.openSync(path.join(this.dataDir, 'etcd.log'), 'a');
    const child = spawn(ETCD_BIN, [
      '--name', 'dormant-test', '--data-dir', path.join(this.dataDir, 'data'),
      '--listen-client-urls', this.url, '--advertise-client-urls', this.url,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `dormant-test=${peer}`,
    ], { stdio: ['ignore', log, log] });
    fs.closeSync(log);
    running.add(child);
    child.once('exit', () => running.delete(child));
    this.child = child;
    const deadline = Date.now() + 30_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`etcd exited with ${child.exitCode} at start (see ${this.dataDir}/etcd.log)`);
      try {
        await this.client.call('maintenance/status', {}, 1000);
        return;
      } catch {
        if (Date.now() > deadline) throw new Error(`etcd did not answer on ${this.url} within 30 s`);
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }

  /** Stops it (SIGTERM, SIGKILL after 10 s); resolves once it exited. */
  async stop(): Promise<void> {
    const c = this.child;
    this.child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    c.kill('SIGTERM');
    const t = setTimeout(() => c.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(t);
  }

  /** Stops it and starts an empty one on the same ports (its data wiped: a new cluster). */
  async wipe(): Promise<void> {
    await this.stop();
    fs.rmSync(path.join(this.dataDir, 'data'), { recursive: true, force: true });
    await this.run();
  }

  /** Stops it, waits `downMs`, and starts it again on the same ports and data. */
  async restart(downMs = 0): Promise<void> {
    await this.stop();
    await new Promise((r) => setTimeout(r, downMs));
    await this.run();
  }
}

/** Kills every etcd a test started and did not stop. */
export async function stopAllEtcd(): Promise<void> {
  await Promise.all([...running].map((c) => new Promise<void>((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) { resolve(); return; }
    c.once('exit', () => resolve());
    c.kill('SIGKILL');
  })));
  running.clear();
}
