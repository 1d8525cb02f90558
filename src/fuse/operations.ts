/**
 * The FUSE operations over a Store: what each inode is, and how each
 * request (native/src/fuse.cc, libfuse3's low-level API) maps onto the
 * store.
 *
 *   /                     dir  (volumes, snapshots)     inode 1
 *   /volumes              dir                           inode 2
 *   /snapshots            dir                           inode 3
 *   /volumes/<vol>        file, read-write, size = volume size
 *   /snapshots/<vol@snap> file, read-only
 *
 * A file's inode is given to its name the first time it is looked up and
 * stays that name's for the life of the mount (the kernel's FORGET is
 * answered natively; nothing is freed: names are few). Listings and
 * attributes come from store.entries()/describe() at each request, so
 * volumes created through the CLI or the control socket appear without a
 * remount; a name removed since answers ENOENT. Files cannot be created,
 * removed or renamed (EPERM; EROFS under /snapshots or with readOnly);
 * chmod and chown are EPERM; truncate grows a volume (store.resize) and
 * shrinking is refused with EINVAL, because it would drop data. fsync is
 * the store's durability point (store flush). There is no fallocate
 * (punching a hole gets EOPNOTSUPP from the kernel).
 *
 * Every request is answered exactly once (reply*), also when the store
 * throws; errors go through errors.ts.
 */
import fs from 'node:fs';
import { DormantError, type LogFn, type Store, type VolumeEntry } from '../blockstore/index.js';
import {
  FUSE_OP, fuseReplyAttr, fuseReplyBuf, fuseReplyDir, fuseReplyEntry, fuseReplyErr, fuseReplyOpen, fuseReplyStatfs,
  fuseReplyWrite,
} from '../native/index.js';
import { FUSE_ERRNO, mapStoreError } from './errors.js';
import type { HandlePool } from './handles.js';

/** Top-level directory names. */
export const VOLUMES_DIR = 'volumes';
export const SNAPSHOTS_DIR = 'snapshots';

const ROOT_INO = 1;
const VOLUMES_INO = 2;
const SNAPSHOTS_INO = 3;
const FIRST_FILE_INO = 4;

const O_ACCMODE = 3;
const O_RDONLY = 0;
const DIR_MODE = 0o040755;
const RO_DIR_MODE = 0o040555;
const FILE_MODE = 0o100644;
const RO_FILE_MODE = 0o100444;
/** FUSE_SET_ATTR_* bits of a SETATTR. */
const SET_MODE = 1 << 0;
const SET_UID = 1 << 1;
const SET_GID = 1 << 2;
const SET_SIZE = 1 << 3;

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

/** The answers to a request (mount.ts: the native replies, ignoring a request no longer held). */
export interface FuseReply {
  err(req: number, errno: number): void;
  buf(req: number, data: Uint8Array, length: number): void;
  write(req: number, count: number): void;
  open(req: number, fh: number): void;
  attr(req: number, attr: Float64Array, timeout: number): void;
  entry(req: number, attr: Float64Array, attrTimeout: number, entryTimeout: number): void;
  statfs(req: number, values: Float64Array): void;
  dir(req: number, size: number, offset: number, names: string[], inos: number[], modes: number[]): void;
  /** A READ answered from a file range on libuv's pool (fuseReplyFile); `done` as there. */
  file(req: number, fd: number, position: number, length: number, hashes: Uint8Array, done: (r: number) => void): void;
}

/** What an inode is right now. */
type Node =
  | { type: 'dir'; ino: number }
  | { type: 'file'; ino: number; entry: VolumeEntry };

/** Answers the requests of one mount. */
export class FuseOperations {
  private readonly started = Date.now();
  private readonly mtimes = new Map<string, number>();
  private readonly inoOf = new Map<string, number>();
  private readonly nameOf = new Map<number, string>();
  private readonly attr = new Float64Array(11);
  private readonly uid = process.getuid?.() ?? 0;
  private readonly gid = process.getgid?.() ?? 0;

  constructor(
    private readonly reply: FuseReply,
    private readonly store: Store,
    private readonly handles: HandlePool,
    private readonly log: FuseLog,
    private readonly readOnly: boolean,
    private readonly observer: IoObserver | undefined,
    /** Seconds the kernel caches attributes and names. */
    private readonly timeout: number,
  ) {}

  /** The native handler (FuseHandler): one request; never throws. */
  handle(op: number, req: number, ino: number, a: number, b: number, extra: string | Buffer | undefined): void {
    try {
      switch (op) {
        case FUSE_OP.LOOKUP: this.lookup(req, ino, extra as string); return;
        case FUSE_OP.GETATTR: this.getattr(req, ino); return;
        case FUSE_OP.SETATTR: this.setattr(req, ino, a, b); return;
        case FUSE_OP.OPEN: this.open(req, ino, a); return;
        case FUSE_OP.READ: this.read(req, ino, a, b); return;
        case FUSE_OP.WRITE: this.write(req, ino, a, extra as Buffer); return;
        case FUSE_OP.RELEASE: this.release(req, ino); return;
        case FUSE_OP.FSYNC: this.fsync(req, ino); return;
        case FUSE_OP.READDIR: this.readdir(req, ino, a, b); return;
        case FUSE_OP.STATFS: this.statfs(req); return;
        case FUSE_OP.REFUSE: this.reply.err(req, this.readOnly || ino === SNAPSHOTS_INO || a === SNAPSHOTS_INO ? FUSE_ERRNO.EROFS : FUSE_ERRNO.EPERM); return;
        default: this.reply.err(req, FUSE_ERRNO.ENOSYS);
      }
    } catch (err) {
      this.fail(req, `op ${op}`, ino, err);
    }
  }

  /** Tells the observer; a throw there must not leave the request unanswered. */
  private observe(what: 'read' | 'write', name: string, pos: number, len: number): void {
    if (this.observer === undefined) return;
    try {
      this.observer[what](name, pos, len);
    } catch (err) {
      this.log(`fuse: the ${what} observer failed: ${(err as Error).message}`, { level: 'error' });
    }
  }

  private fail(req: number, what: string, ino: number, err: unknown, write = false): void {
    const m = mapStoreError(err, write);
    const name = this.nameOf.get(ino) ?? `inode ${ino}`;
    if (m.unexpected) {
      this.log(`fuse: ${what} ${name}: ${(err as Error)?.message ?? err}`,
        { level: 'error', op: what, path: name, err: (err as Error)?.message ?? String(err) });
    }
    try { this.reply.err(req, m.errno); } catch { /* answered already */ }
  }

  /** The node of `ino` now, or null (a name removed since). */
  private node(ino: number): Node | null {
    if (ino === ROOT_INO || ino === VOLUMES_INO || ino === SNAPSHOTS_INO) return { type: 'dir', ino };
    const name = this.nameOf.get(ino);
    const entry = name === undefined ? null : this.store.describe(name);
    return entry ? { type: 'file', ino, entry } : null;
  }

  private fileInode(name: string): number {
    let ino = this.inoOf.get(name);
    if (ino === undefined) {
      ino = FIRST_FILE_INO + this.inoOf.size;
      this.inoOf.set(name, ino);
      this.nameOf.set(ino, name);
    }
    return ino;
  }

  /** Fills this.attr for `node`. */
  private statOf(node: Node): Float64Array {
    const a = this.attr;
    a[0] = node.ino;
    if (node.type === 'dir') {
      a[1] = node.ino === SNAPSHOTS_INO || this.readOnly ? RO_DIR_MODE : DIR_MODE;
      a[2] = node.ino === ROOT_INO ? 4 : 2;
      a[5] = 4096; a[6] = 8; a[7] = 4096;
      a[8] = a[9] = a[10] = this.started;
    } else {
      const e = node.entry;
      a[1] = e.type === 'snapshot' || this.readOnly ? RO_FILE_MODE : FILE_MODE;
      a[2] = 1;
      a[5] = e.size; a[6] = Math.ceil(e.size / 512); a[7] = 4096;
      a[8] = a[9] = a[10] = this.mtimes.get(e.name) ?? Date.parse(e.created);
    }
    a[3] = this.uid;
    a[4] = this.gid;
    return a;
  }

  private lookup(req: number, parent: number, name: string): void {
    let node: Node | null = null;
    if (parent === ROOT_INO) {
      if (name === VOLUMES_DIR) node = { type: 'dir', ino: VOLUMES_INO };
      else if (name === SNAPSHOTS_DIR) node = { type: 'dir', ino: SNAPSHOTS_INO };
    } else if (parent === VOLUMES_INO || parent === SNAPSHOTS_INO) {
      const entry = this.store.describe(name);
      if (entry && entry.type === (parent === VOLUMES_INO ? 'volume' : 'snapshot')) {
        node = { type: 'file', ino: this.fileInode(entry.name), entry };
      }
    } else {
      this.reply.err(req, this.node(parent) ? FUSE_ERRNO.ENOTDIR : FUSE_ERRNO.ENOENT);
      return;
    }
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    this.reply.entry(req, this.statOf(node), this.timeout, this.timeout);
  }

  private getattr(req: number, ino: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    this.reply.attr(req, this.statOf(node), this.timeout);
  }

  private setattr(req: number, ino: number, toSet: number, size: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (toSet & (SET_MODE | SET_UID | SET_GID)) { this.reply.err(req, FUSE_ERRNO.EPERM); return; }
    if (!(toSet & SET_SIZE)) { this.reply.attr(req, this.statOf(node), this.timeout); return; } // times: accepted, not kept
    if (node.type === 'dir') { this.reply.err(req, FUSE_ERRNO.EISDIR); return; }
    const e = node.entry;
    if (e.type === 'snapshot' || this.readOnly) { this.reply.err(req, FUSE_ERRNO.EROFS); return; }
    if (size === e.size) { this.reply.attr(req, this.statOf(node), this.timeout); return; }
    if (size < e.size) { this.reply.err(req, FUSE_ERRNO.EINVAL); return; }
    this.store.resize(e.name, size).then(() => {
      this.mtimes.set(e.name, Date.now());
      const now = this.node(ino);
      if (now) this.reply.attr(req, this.statOf(now), this.timeout); else this.reply.err(req, FUSE_ERRNO.ENOENT);
    }, (err) => this.fail(req, 'truncate', ino, err, true));
  }

  private open(req: number, ino: number, flags: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (node.type === 'dir') { this.reply.err(req, FUSE_ERRNO.EISDIR); return; }
    const e = node.entry;
    if ((e.type === 'snapshot' || this.readOnly) && (flags & O_ACCMODE) !== O_RDONLY) { this.reply.err(req, FUSE_ERRNO.EROFS); return; }
    this.handles.acquire(e.name).then(() => this.reply.open(req, 0), (err) => this.fail(req, 'open', ino, err));
  }

  private release(req: number, ino: number): void {
    const name = this.nameOf.get(ino);
    if (name === undefined) { this.reply.err(req, 0); return; }
    this.handles.release(name).then(() => this.reply.err(req, 0), (err) => this.fail(req, 'release', ino, err));
  }

  private read(req: number, ino: number, pos: number, len: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (node.type === 'dir') { this.reply.err(req, FUSE_ERRNO.EISDIR); return; }
    const e = node.entry;
    const n = Math.max(0, Math.min(len, e.size - pos));
    if (n === 0) { this.reply.buf(req, EMPTY, 0); return; }
    this.handles.withHandle(e.name, async (h) => {
      // One run of committed chunks: read, checked and answered on libuv's pool, not on this thread.
      const file = h.readFile(pos, n, { label: e.name });
      if (file === null) return h.read(pos, n, { label: e.name });
      let r: number;
      try {
        r = await new Promise<number>((resolve) => this.reply.file(req, file.fd, file.position, n, file.hashes, resolve));
      } finally {
        file.release();
      }
      if (r === -1) return null;
      const what = r >= 0 ? `data in segment ${file.segment} slot ${file.slot + r} does not match its checksum`
        : r === -2 ? `segment ${file.segment} is truncated near slot ${file.slot}` : `cannot read segment ${file.segment}: errno ${-3 - r}`;
      throw new DormantError('EIO', `${what} (${e.name} at byte ${pos})`, { volume: e.name, offset: pos, length: n });
    }).then((data) => {
      this.observe('read', e.name, pos, n);
      if (data !== null) this.reply.buf(req, data, n);
    }, (err) => this.fail(req, 'read', ino, err));
  }

  private write(req: number, ino: number, pos: number, data: Buffer): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (node.type === 'dir') { this.reply.err(req, FUSE_ERRNO.EISDIR); return; }
    const e = node.entry;
    if (e.type === 'snapshot' || this.readOnly) { this.reply.err(req, FUSE_ERRNO.EROFS); return; }
    const len = data.length;
    if (pos + len > e.size) { this.reply.err(req, pos >= e.size ? FUSE_ERRNO.EFBIG : FUSE_ERRNO.ENOSPC); return; }
    // data is the store's to keep: native code copied it out of libfuse's buffer.
    this.handles.withHandle(e.name, (h) => h.write(pos, data))
      .then(() => { this.mtimes.set(e.name, Date.now()); this.observe('write', e.name, pos, len); this.reply.write(req, len); },
        (err) => this.fail(req, 'write', ino, err, true));
  }

  private fsync(req: number, ino: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (node.type === 'dir') { this.reply.err(req, 0); return; }
    this.handles.withHandle(node.entry.name, (h) => h.flush()).then(() => this.reply.err(req, 0), (err) => this.fail(req, 'fsync', ino, err));
  }

  private readdir(req: number, ino: number, offset: number, size: number): void {
    const node = this.node(ino);
    if (!node) { this.reply.err(req, FUSE_ERRNO.ENOENT); return; }
    if (node.type === 'file') { this.reply.err(req, FUSE_ERRNO.ENOTDIR); return; }
    const names = ['.', '..'];
    const inos = [ino, ROOT_INO]; // '..' of the root is the root; of volumes/ and snapshots/ too
    const modes = [DIR_MODE, DIR_MODE];
    if (ino === ROOT_INO) {
      names.push(VOLUMES_DIR, SNAPSHOTS_DIR);
      inos.push(VOLUMES_INO, SNAPSHOTS_INO);
      modes.push(DIR_MODE, DIR_MODE);
    } else {
      const type = ino === VOLUMES_INO ? 'volume' : 'snapshot';
      for (const e of this.store.entries()) {
        if (e.type !== type) continue;
        names.push(e.name);
        inos.push(this.fileInode(e.name));
        modes.push(FILE_MODE);
      }
    }
    this.reply.dir(req, size, offset, names, inos, modes);
  }

  private statfs(req: number): void {
    fs.statfs(this.store.dir, { bigint: false }, (err, st) => {
      if (err) {
        this.log(`fuse: statfs ${this.store.dir}: ${err.message}`, { level: 'error', op: 'statfs', err: err.message });
        this.reply.err(req, FUSE_ERRNO.EIO);
        return;
      }
      const files = this.store.entries().length;
      this.reply.statfs(req, Float64Array.of(st.bsize, st.bsize, st.blocks, st.bfree, st.bavail, files, 0, 0, 255));
    });
  }
}

const EMPTY = Buffer.alloc(0);
