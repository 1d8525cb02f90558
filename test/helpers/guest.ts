/**
 * Shared pieces of the end-to-end tests with real VMs: the image cache they
 * share (so the test guest is built once), the CLI run asynchronously (long
 * commands must not block the event loop of the test), and bounded waits
 * for a VM's HTTP page and its disk counter.
 */
import { execFile } from 'node:child_process';
import os from 'node:os';
import path from 'node:path';
import { expect } from 'vitest';
import fs from 'node:fs';
import { BIN, cliEnv, dormant, dormantJson, ensureBuilt, expectOk } from './cli.js';
import type { TempDirs } from './tmp.js';
import { freePort } from '../../src/vm/index.js';
import { cleanupMounts, startDaemon, type MountDaemon } from './mount-daemon.js';

/** The test-guest image cache shared by every e2e test. */
export const CACHE = path.join(os.tmpdir(), 'dormant-test-images');
/** Longest wait for a TCG guest to answer HTTP. */
export const BOOT_TIMEOUT_MS = 120_000;

/** What `vm status --json` prints (the fields the tests read). */
export interface Status {
  name: string; state: string; reason?: string; pid?: number; hostPort?: number; memoryBytes: number;
  residentGuestRam?: number; residentQemu?: number; cachedGuestRam?: number; uptimeSeconds?: number; diskBlocksWritten?: number;
  faults?: number; faultsPerSecond?: number; pagesIn?: number; prefetchPages?: number; pagesOut?: number;
  workingSetBytes?: number; memoryStoredBytes?: number; memoryUniqueBytes?: number;
  lastPageout?: { residentBefore: number; residentAfter: number };
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs the CLI without blocking the test's event loop; rejects on a non-zero exit or the timeout. */
export function dormantAsync(args: string[], timeoutMs: number): Promise<{ stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    execFile(process.execPath, [BIN, ...args], { env: cliEnv(), timeout: timeoutMs, killSignal: 'SIGKILL', maxBuffer: 16 * 2 ** 20 },
      (err, stdout, stderr) => (err ? reject(new Error(`dormant ${args.join(' ')}: ${err.message}\n${stderr}`)) : resolve({ stdout, stderr })));
  });
}

/** `vm status --json` of `vm`. */
export const vmStatus = (store: string, vm: string) => dormantJson<Status>(['vm', 'status', vm], { store });

/** Polls http://127.0.0.1:PORT/ until the page names `vm` (bounded). */
export async function waitHttp(store: string, vm: string, port: number, timeoutMs = BOOT_TIMEOUT_MS): Promise<string> {
  const started = Date.now();
  let page = '';
  while (Date.now() - started < timeoutMs) {
    try {
      const r = await fetch(`http://127.0.0.1:${port}/`, { signal: AbortSignal.timeout(3_000) });
      page = await r.text();
      if (r.ok && page.includes(`<h1>${vm}</h1>`)) return page;
    } catch { /* not up yet */ }
    await sleep(1_000);
  }
  // The guest's own lines (boot, eth0, httpd) and the last heartbeats.
  const lines = dormant(['vm', 'log', vm], { store }).stdout.split('\n');
  const log = [...lines.filter((l) => l.startsWith('dormant-guest')), ...lines.slice(-5)].join('\n');
  throw new Error(`VM ${vm} did not answer HTTP on port ${port} within ${timeoutMs / 1000} s; last page: ${page}\nserial:\n${log}`);
}

/** The disk counter of `vm` (each request to /cgi-bin/status adds one). */
export async function diskCounter(store: string, vm: string, timeoutMs = 30_000): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${vmStatus(store, vm).hostPort}/cgi-bin/status`,
    { signal: AbortSignal.timeout(timeoutMs) })).text();
  const m = /^counter: (\d+)$/m.exec(text);
  expect(m, `${vm}: ${text}`).not.toBeNull();
  return Number(m![1]);
}

/**
 * A fresh store (in a temp dir of `tmp`) with the test guest imported as
 * golden@base, served by `serve --mount` with `serveArgs` (default: no
 * automatic paging, so tests of other things see no page-out they did not ask for).
 */
export async function startVmDaemon(tmp: TempDirs, prefix: string, serveArgs: string[] = ['--no-auto-page']):
  Promise<{ store: string; mnt: string; daemon: MountDaemon }> {
  ensureBuilt();
  const work = tmp.make(prefix);
  const store = path.join(work, 'store');
  const mnt = path.join(work, 'mnt');
  fs.mkdirSync(mnt);
  expectOk(dormant(['init'], { store }));
  await dormantAsync(['--store', store, 'image', 'build-test-guest', 'golden', '--cache-dir', CACHE], 200_000);
  const daemon = await startDaemon(store, mnt, ['serve', '--no-tcp', '--mount', mnt, ...serveArgs], /FUSE on /);
  return { store, mnt, daemon };
}

/** A host of a cluster: a VM daemon with the host API, a member on etcd. */
export interface ClusterHost { name: string; store: string; mnt: string; url: string; daemon: MountDaemon; args: string[] }

/**
 * `startVmDaemon` as host `name` of the cluster on `etcdUrl`: `--api` on a
 * free loopback port with the token of `tokenFile`, `--etcd`, `--host-name
 * name`, a 3 s lease, no automatic paging; `extra` goes last.
 */
export async function startClusterHost(tmp: TempDirs, name: string, etcdUrl: string, tokenFile: string, extra: string[] = []):
  Promise<ClusterHost> {
  const port = await freePort();
  const args = ['--no-auto-page', '--api', `127.0.0.1:${port}`, '--api-token-file', tokenFile,
    '--etcd', etcdUrl, '--host-name', name, '--etcd-ttl', '3', ...extra];
  const { store, daemon, mnt } = await startVmDaemon(tmp, name, args);
  return { name, store, mnt, url: `http://127.0.0.1:${port}`, daemon, args };
}

/** Pages `vm` faulted in through FUSE while `fn` ran (prefetch reads are counted apart). */
export async function faultedDuring(store: string, vm: string, fn: () => Promise<unknown>): Promise<number> {
  const before = vmStatus(store, vm).pagesIn!;
  await fn();
  return vmStatus(store, vm).pagesIn! - before;
}

/** After a file of VM tests: SIGKILL every QEMU seen, stop the daemon, unmount, remove temp dirs. */
export async function tearDownVms(qemuPids: Iterable<number>, daemon: MountDaemon | undefined, tmp: TempDirs): Promise<void> {
  for (const pid of qemuPids) { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
  await daemon?.stop(60_000).catch(() => undefined);
  await cleanupMounts();
  tmp.cleanup();
}
