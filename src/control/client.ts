/**
 * StoreControl over the daemon's control socket (server.ts).
 * Errors come back as DormantError with the daemon's code and message, so
 * the CLI reports them exactly as if it had opened the store itself.
 */
import http from 'node:http';
import fs from 'node:fs';
import { DormantError, type ErrorCode } from '../blockstore/index.js';
import type { ProgressFn } from '../blockstore/index.js';
import type { PageoutReport, PrefetchReport, SharingReport } from '../pager/index.js';
import type { VmRecord, VmSpec, VmStatus } from '../vm/index.js';
import type { TransferResult, VmMoveResult } from '../migrate/index.js';
import type { ControlOp, StoreControl, VmStatusReport } from './operations.js';

/** Calls one operation; `progress` receives streamed progress lines. */
function call(socketPath: string, op: ControlOp, args: unknown[], progress?: ProgressFn): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: `/v1/${op}`, method: 'POST', headers: { 'content-type': 'application/json' } },
      (res) => {
        let buf = '';
        let settled = false;
        const line = (text: string) => {
          if (!text) return;
          const msg = JSON.parse(text) as { progress?: [number, number]; result?: unknown; error?: { code: ErrorCode; message: string } };
          if (msg.progress) progress?.(msg.progress[0], msg.progress[1]);
          else if (msg.error) { settled = true; reject(new DormantError(msg.error.code, msg.error.message)); }
          else if ('result' in msg) { settled = true; resolve(msg.result); }
        };
        res.setEncoding('utf8');
        res.on('data', (d: string) => {
          buf += d;
          let nl: number;
          while ((nl = buf.indexOf('\n')) >= 0) { line(buf.slice(0, nl)); buf = buf.slice(nl + 1); }
        });
        res.on('end', () => {
          line(buf.trim());
          if (!settled) reject(new DormantError('EINTERNAL', `the daemon ended control request ${op} without an answer`));
        });
        res.on('error', reject);
      });
    req.on('error', (err) => reject(new DormantError('EINTERNAL', `control socket ${socketPath}: ${err.message}`, { cause: err })));
    req.end(JSON.stringify(args));
  });
}

/**
 * True when a daemon answers on `socketPath`; false when none listens there.
 * A socket this user may not connect to is EACCES (not "locked": the
 * daemon's store is another user's).
 */
export async function daemonAnswers(socketPath: string): Promise<boolean> {
  if (!fs.existsSync(socketPath)) return false;
  return new Promise((resolve, reject) => {
    const req = http.request({ socketPath, path: '/v1/ping', method: 'POST' }, (res) => { res.resume(); resolve(true); });
    req.on('error', (err: NodeJS.ErrnoException) => {
      if (err.code !== 'EACCES' && err.code !== 'EPERM') { resolve(false); return; }
      let owner = '';
      try {
        const st = fs.statSync(socketPath);
        owner = ` (owned by uid ${st.uid}, mode ${(st.mode & 0o777).toString(8)})`;
      } catch { /* gone meanwhile */ }
      reject(new DormantError('EACCES', `permission denied on the daemon's control socket ${socketPath}${owner}: `
        + 'run dormant as the user the daemon runs as, or root', { path: socketPath, cause: err }));
    });
    req.setTimeout(2000, () => { req.destroy(); resolve(false); });
    req.end();
  });
}

/** StoreControl that forwards every call to the daemon. */
export class RemoteControl implements StoreControl {
  constructor(readonly socketPath: string) {}

  async createVolume(name: string, size: number, kind: string) { await call(this.socketPath, 'createVolume', [name, size, kind]); }
  async snapshot(volume: string, snap: string) { return call(this.socketPath, 'snapshot', [volume, snap]) as Promise<string>; }
  async branch(name: string, from: string) { await call(this.socketPath, 'branch', [name, from]); }
  async remove(name: string) { return call(this.socketPath, 'remove', [name]) as Promise<string[]>; }
  async resize(name: string, size: number) { await call(this.socketPath, 'resize', [name, size]); }
  async list() { return call(this.socketPath, 'list', []) as ReturnType<StoreControl['list']>; }
  async info(name: string) { return call(this.socketPath, 'info', [name]) as ReturnType<StoreControl['info']>; }
  async stats() { return call(this.socketPath, 'stats', []) as ReturnType<StoreControl['stats']>; }
  async gc() { return call(this.socketPath, 'gc', []) as ReturnType<StoreControl['gc']>; }
  async check() { return call(this.socketPath, 'check', []) as ReturnType<StoreControl['check']>; }
  async verifyData(repair: boolean, rate: number, progress?: ProgressFn) {
    return call(this.socketPath, 'verifyData', [repair, rate], progress) as ReturnType<StoreControl['verifyData']>;
  }
  async importFile(name: string, file: string, kind: string, format: string, progress?: ProgressFn) {
    return call(this.socketPath, 'importFile', [name, file, kind, format], progress) as ReturnType<StoreControl['importFile']>;
  }
  async exportFile(name: string, file: string, progress?: ProgressFn) {
    return call(this.socketPath, 'exportFile', [name, file], progress) as ReturnType<StoreControl['exportFile']>;
  }
  async pull(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn) {
    return call(this.socketPath, 'pull', [name, url, token, as, ca], progress) as Promise<TransferResult>;
  }
  async push(name: string, url: string, token: string, as: string, ca: string, progress?: ProgressFn) {
    return call(this.socketPath, 'push', [name, url, token, as, ca], progress) as Promise<TransferResult>;
  }
  async vmMigrate(name: string, url: string, token: string, mode: string, ca: string, progress?: ProgressFn) {
    return call(this.socketPath, 'vmMigrate', [name, url, token, mode, ca], progress) as Promise<VmMoveResult>;
  }
  async vmCreate(spec: VmSpec) { return call(this.socketPath, 'vmCreate', [spec]) as Promise<VmRecord>; }
  async vmStart(name: string, kvm: boolean, restart = '') { return call(this.socketPath, 'vmStart', [name, kvm, restart]) as Promise<VmStatus>; }
  async vmStop(name: string, timeoutMs: number) { return call(this.socketPath, 'vmStop', [name, timeoutMs]) as Promise<VmStatus>; }
  async vmPause(name: string) { return call(this.socketPath, 'vmPause', [name]) as Promise<VmStatus>; }
  async vmResume(name: string) { return call(this.socketPath, 'vmResume', [name]) as Promise<VmStatus>; }
  async vmRemove(name: string) { return call(this.socketPath, 'vmRemove', [name]) as Promise<string[]>; }
  async vmStatus(name: string) { return call(this.socketPath, 'vmStatus', [name]) as Promise<VmStatusReport>; }
  async vmList() { return call(this.socketPath, 'vmList', []) as Promise<VmStatus[]>; }
  async vmPageout(name: string, keepBytes: number) {
    return call(this.socketPath, 'vmPageout', [name, keepBytes]) as Promise<PageoutReport>;
  }
  async vmPrefetch(name: string) { return call(this.socketPath, 'vmPrefetch', [name]) as Promise<PrefetchReport>; }
  async vmSharing() { return call(this.socketPath, 'vmSharing', []) as Promise<SharingReport>; }
  async close() { /* nothing held between calls */ }
}
