/**
 * The FUSE operations over a Store: what each path is, and how each call
 * maps onto the store.
 *
 *   /                     dir  (volumes, snapshots)
 *   /volumes/<vol>        file, read-write, size = volume size
 *   /snapshots/<vol@snap> file, read-only
 *
 * Listings and attributes come from store.entries()/describe() at each
 * call, so volumes created through the CLI or the control socket appear
 * without a remount. Files cannot be created, removed or renamed (EPERM;
 * EROFS under /snapshots). truncate grows a volume (store.resize); shrinking
 * is refused with EINVAL, because it would drop data. fsync and fdatasync
 * are the store's durability point (store flush). fuse-native has no
 * fallocate, so punching a hole gets EOPNOTSUPP from the kernel.
 *
 * Every callback answers exactly once; errors go through errors.ts.
 */
import fs from 'node:fs';
import path from 'node:path';
import type { LogFn, Store, VolumeEntry } from '../blockstore/index.js';
import { FUSE_ERRNO, mapStoreError } from './errors.js';
import type { HandlePool } from './handles.js';

/** Top-level directory names. */
export const VOLUMES_DIR = 'volumes';
export const SNAPSHOTS_DIR = 'snapshots';

const O_ACCMODE = 3;
const O_RDONLY = 0;
const DIR_MODE = 0o040755;
const RO_DIR_MODE = 0o040555;
const FILE_MODE = 0o100644;
const RO_FILE_MODE = 0o100444;

type Callback = (errno: number, ...rest: unknown[]) => void;

/** What a path names. */
type Node =
  | { type: 'dir'; dir: '' | typeof VOLUMES_DIR | typeof SNAPSHOTS_DIR }
  | { type: 'file'; entry: VolumeEntry };

/** Logger for unexpected failures. */
export type FuseLog = LogFn;

/**
 * Told of every read and write answered successfully, after the store
 * answered and before the kernel gets the reply: for a memory volume mapped
 * by QEMU, reads are the guest's page faults and writes its page-out. Must
 * be cheap and must not throw.
 */
export interface IoObserver {
  read(name: string, pos: number, len: number): void;
  write(name: string, pos: number, len: number): void;
}

/** Builds the fuse-native operations table over `store`; `readOnly` makes volumes read-only too. */
export function buildOperations(store: Store, handles: HandlePool, log: FuseLog, readOnly = false,
  observer?: IoObserver): Record<string, unknown> {
  const started = new Date();
  const mtimes = new Map<string, Date>();

  const lookup = (p: string): Node | null => {
    if (p === '/') return { type: 'dir', dir: '' };
    const parts = p.split('/').slice(1);
    const top = parts[0];
    if (top !== VOLUMES_DIR && top !== SNAPSHOTS_DIR) return null;
    if (parts.length === 1) return { type: 'dir', dir: top };
    if (parts.length !== 2) return null;
    const entry = store.describe(parts[1]);
    if (!entry || entry.type !== (top === VOLUMES_DIR ? 'volume' : 'snapshot')) return null;
    return { type: 'file', entry };
  };

  /** The parent dir of `p` refuses new names with this errno. */
  const refuseIn = (p: string): number =>
    (readOnly || p.startsWith(`/${SNAPSHOTS_DIR}/`) || p === `/${SNAPSHOTS_DIR}` ? FUSE_ERRNO.EROFS : FUSE_ERRNO.EPERM);

  const fail = (cb: Callback, what: string, p: string, err: unknown, write = false) => {
    const m = mapStoreError(err, write);
    if (m.unexpected) log(`fuse: ${what} ${p}: ${(err as Error)?.message ?? err}`,
      { level: 'error', op: what, path: p, err: (err as Error)?.message ?? String(err) });
    cb(m.errno);
  };

  const statOf = (node: Node) => {
    if (node.type === 'dir') {
      return {
        mode: node.dir === SNAPSHOTS_DIR || readOnly ? RO_DIR_MODE : DIR_MODE, size: 4096, nlink: node.dir === '' ? 4 : 2,
        mtime: started, atime: started, ctime: started, uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0,
      };
    }
    const e = node.entry;
    const created = new Date(e.created);
    const mtime = mtimes.get(e.name) ?? created;
    return {
      mode: e.type === 'snapshot' || readOnly ? RO_FILE_MODE : FILE_MODE, size: e.size, nlink: 1, blksize: 4096,
      blocks: Math.ceil(e.size / 512), mtime, atime: mtime, ctime: mtime,
      uid: process.getuid?.() ?? 0, gid: process.getgid?.() ?? 0,
    };
  };

  /** An operation that is always refused; the errno depends on the paths it names. */
  const refuse = (errnoFor: (p: string) => number) => (...args: unknown[]) => {
    const paths = args.filter((a): a is string => typeof a === 'string');
    const errnos = paths.map(errnoFor);
    (args[args.length - 1] as Callback)(errnos.includes(FUSE_ERRNO.EROFS) ? FUSE_ERRNO.EROFS : FUSE_ERRNO.EPERM);
  };

  const fileOrFail = (p: string, cb: Callback): VolumeEntry | null => {
    const node = lookup(p);
    if (!node) { cb(FUSE_ERRNO.ENOENT); return null; }
    if (node.type === 'dir') { cb(FUSE_ERRNO.EISDIR); return null; }
    return node.entry;
  };

  const resizeTo = (p: string, size: number, cb: Callback) => {
    const entry = fileOrFail(p, cb);
    if (!entry) return;
    if (entry.type === 'snapshot' || readOnly) { cb(FUSE_ERRNO.EROFS); return; }
    if (size === entry.size) { cb(0); return; }
    if (size < entry.size) { cb(FUSE_ERRNO.EINVAL); return; }
    store.resize(entry.name, size).then(() => { mtimes.set(entry.name, new Date()); cb(0); },
      (err) => fail(cb, 'truncate', p, err, true));
  };

  return {
    getattr(p: string, cb: Callback) {
      const node = lookup(p);
      if (!node) { cb(FUSE_ERRNO.ENOENT); return; }
      cb(0, statOf(node));
    },
    readdir(p: string, cb: Callback) {
      const node = lookup(p);
      if (!node) { cb(FUSE_ERRNO.ENOENT); return; }
      if (node.type === 'file') { cb(FUSE_ERRNO.ENOTDIR); return; }
      if (node.dir === '') { cb(0, [VOLUMES_DIR, SNAPSHOTS_DIR]); return; }
      const type = node.dir === VOLUMES_DIR ? 'volume' : 'snapshot';
      cb(0, store.entries().filter((e) => e.type === type).map((e) => e.name));
    },
    statfs(_p: string, cb: Callback) {
      fs.statfs(store.dir, (err, st) => {
        if (err) { log(`fuse: statfs ${store.dir}: ${err.message}`, { level: 'error', op: 'statfs', err: err.message }); cb(FUSE_ERRNO.EIO); return; }
        const files = store.entries().length;
        // fuse-native passes 32-bit block counts: report in the store's
        // filesystem block size, capped so huge filesystems do not wrap.
        const cap = (n: number) => Math.min(n, 0xffffffff);
        cb(0, {
          bsize: st.bsize, frsize: st.bsize, blocks: cap(st.blocks), bfree: cap(st.bfree), bavail: cap(st.bavail),
          files, ffree: 0, favail: 0, fsid: 0, flag: 0, namemax: 255,
        });
      });
    },
    open(p: string, flags: number, cb: Callback) {
      const entry = fileOrFail(p, cb);
      if (!entry) return;
      if ((entry.type === 'snapshot' || readOnly) && (flags & O_ACCMODE) !== O_RDONLY) { cb(FUSE_ERRNO.EROFS); return; }
      handles.acquire(entry.name).then(() => cb(0, 0), (err) => fail(cb, 'open', p, err));
    },
    release(p: string, _fd: number, cb: Callback) {
      const name = path.posix.basename(p);
      handles.release(name).then(() => cb(0), (err) => fail(cb, 'release', p, err));
    },
    read(p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Callback) {
      const entry = fileOrFail(p, cb);
      if (!entry) return;
      const n = Math.max(0, Math.min(len, entry.size - pos));
      if (n === 0) { cb(0); return; }
      handles.withHandle(entry.name, (h) => h.read(pos, n, { label: entry.name }))
        .then((data) => { data.copy(buf, 0, 0, n); observer?.read(entry.name, pos, n); cb(n); }, (err) => fail(cb, 'read', p, err));
    },
    write(p: string, _fd: number, buf: Buffer, len: number, pos: number, cb: Callback) {
      const entry = fileOrFail(p, cb);
      if (!entry) return;
      if (entry.type === 'snapshot' || readOnly) { cb(FUSE_ERRNO.EROFS); return; }
      if (pos + len > entry.size) { cb(pos >= entry.size ? FUSE_ERRNO.EFBIG : FUSE_ERRNO.ENOSPC); return; }
      // buf is libfuse's buffer, freed once we answer: the store gets a copy.
      const data = Buffer.from(buf.subarray(0, len));
      handles.withHandle(entry.name, (h) => h.write(pos, data))
        .then(() => { mtimes.set(entry.name, new Date()); observer?.write(entry.name, pos, len); cb(len); },
          (err) => fail(cb, 'write', p, err, true));
    },
    fsync(p: string, _datasync: boolean, _fd: number, cb: Callback) {
      const entry = fileOrFail(p, cb);
      if (!entry) return;
      handles.withHandle(entry.name, (h) => h.flush()).then(() => cb(0), (err) => fail(cb, 'fsync', p, err));
    },
    flush(_p: string, _fd: number, cb: Callback) { cb(0); },
    truncate(p: string, size: number, cb: Callback) { resizeTo(p, size, cb); },
    ftruncate(p: string, _fd: number, size: number, cb: Callback) { resizeTo(p, size, cb); },
    utimens(p: string, _atime: unknown, _mtime: unknown, cb: Callback) {
      cb(lookup(p) ? 0 : FUSE_ERRNO.ENOENT);
    },
    chmod: refuse(() => FUSE_ERRNO.EPERM),
    chown: refuse(() => FUSE_ERRNO.EPERM),
    create: refuse(refuseIn),
    mknod: refuse(refuseIn),
    mkdir: refuse(refuseIn),
    unlink: refuse(refuseIn),
    rmdir: refuse(refuseIn),
    rename: refuse(refuseIn),
    link: refuse(refuseIn),
    symlink: refuse(refuseIn),
  };
}
