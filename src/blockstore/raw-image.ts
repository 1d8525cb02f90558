/**
 * Raw image files in and out of the store (import / export). Import skips
 * nothing but zero blocks (which become holes); export walks the extent map
 * so holes stay sparse in the output file. A failed import removes the
 * half-made volume.
 *
 * Both first check the host path (host-paths.ts): nothing is read from or
 * written into the store directory or a FUSE view of the store. Export to
 * a regular file writes a temporary file beside it (`.<name>.dormant-*`)
 * and renames it over the target only once all of it is written and
 * synced, so a failed export leaves the old target as it was and no
 * temporary file; the new file keeps the old one's mode (else the mode the
 * user's umask gives). A device or FIFO target is written in place.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { MAX_VOLUME_SIZE } from './constants.js';
import { DormantError } from './errors.js';
import { checkHostPath } from './host-paths.js';
import { userUmask } from './permissions.js';
import type { Store } from './store.js';
import type { VolumeKind } from './types.js';

/** Bytes moved per read/write call. */
const COPY_CHUNK = 4 * 1024 * 1024;
/** Chunks an import reads and writes at once. */
const IMPORT_DEPTH = 4;

/** Called with bytes done and total. */
export type ProgressFn = (done: number, total: number) => void;

/** What an import or export of a raw image file did. */
export interface RawImageResult { name: string; size: number; allocated: number; seconds: number }

/** Opens a host file; failures become user errors naming the file. */
async function openFile(file: string, flags: 'r' | 'w'): Promise<fs.promises.FileHandle> {
  try {
    return await fs.promises.open(file, flags);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file or directory'
      : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'is a directory' : e.message;
    throw new DormantError(e.code === 'ENOENT' ? 'ENOENT' : 'EINVAL', `cannot open '${file}': ${why}`, { path: file, cause: err });
  }
}

/** Copies raw image `file` into a new volume `name` of the file's size. */
export async function importFile(store: Store, name: string, file: string, kind: VolumeKind,
  progress?: ProgressFn): Promise<RawImageResult> {
  const started = Date.now();
  const source = await checkHostPath(file, 'source', store.dir, store.views);
  const fh = await openFile(source.resolved, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new DormantError('EINVAL', `'${file}' is not a regular file`, { path: file });
    const size = st.size;
    if (size === 0) throw new DormantError('EINVAL', `'${file}' is empty: a volume needs at least 1 byte`, { path: file });
    if (size > MAX_VOLUME_SIZE) {
      throw new DormantError('EINVAL', `'${file}' is ${size} bytes: larger than the 1 PiB limit of a volume`, { path: file });
    }
    await store.createVolume(name, size, kind);
    try {
      const h = await store.openVolume(name);
      try {
        // IMPORT_DEPTH chunks in flight, each read then written with a buffer of its own: the
        // file's reads, the hashing and the segment writes (libuv's pool) overlap each other.
        const free = Array.from({ length: IMPORT_DEPTH }, () => Buffer.allocUnsafe(COPY_CHUNK));
        const inFlight = new Set<Promise<void>>();
        let failed = false;
        let failure: unknown;
        let done = 0;
        const copy = async (off: number, len: number, buf: Buffer): Promise<void> => {
          for (let got = 0; got < len;) {
            const { bytesRead } = await fh.read(buf, got, len - got, off + got);
            if (bytesRead === 0) throw new DormantError('EIO', `unexpected end of '${file}' at byte ${off + got}`);
            got += bytesRead;
          }
          await h.write(off, buf.subarray(0, len));
          done += len;
          progress?.(done, size);
        };
        for (let off = 0; off < size && !failed; off += COPY_CHUNK) {
          if (free.length === 0) await Promise.race(inFlight);
          if (failed) break;
          const buf = free.pop()!;
          const task: Promise<void> = copy(off, Math.min(COPY_CHUNK, size - off), buf)
            .then(() => { free.push(buf); }, (err: unknown) => { if (!failed) { failed = true; failure = err; } })
            .finally(() => inFlight.delete(task));
          inFlight.add(task);
        }
        await Promise.all(inFlight);
        if (failed) throw failure;
        await h.flush();
      } finally {
        await h.close();
      }
    } catch (err) {
      await store.remove(name).catch(() => undefined); // no half-imported volume
      throw err;
    }
    const info = await store.info(name);
    return { name, size, allocated: info.allocated, seconds: (Date.now() - started) / 1000 };
  } finally {
    await fh.close();
  }
}

/**
 * Copies volume or snapshot `name` to raw file `file` (holes stay sparse):
 * a regular file is replaced whole only on success, a device is written in
 * place (see the file's note).
 */
export async function exportFile(store: Store, name: string, file: string,
  progress?: ProgressFn): Promise<RawImageResult> {
  const started = Date.now();
  const h = await store.openVolume(name);
  try {
    const target = await checkHostPath(file, 'target', store.dir, store.views);
    const old = target.stat;
    if (old?.isDirectory()) throw new DormantError('EINVAL', `cannot open '${file}': is a directory`, { path: file });
    const size = h.size;
    const copy = async (fh: fs.promises.FileHandle): Promise<number> => {
      let allocated = 0;
      for (const ext of await h.extents(0, size)) {
        if (!ext.hole) {
          allocated += ext.length;
          for (let off = ext.offset; off < ext.offset + ext.length; off += COPY_CHUNK) {
            const len = Math.min(COPY_CHUNK, ext.offset + ext.length - off);
            await fh.write(await h.read(off, len), 0, len, off);
            progress?.(off + len, size);
          }
        }
        progress?.(ext.offset + ext.length, size);
      }
      return allocated;
    };
    let allocated: number;
    if (old && !old.isFile()) {
      const fh = await openFile(target.resolved, 'w');
      try {
        allocated = await copy(fh);
        await fh.sync().catch(() => undefined); // a character device or FIFO has nothing to sync
      } finally {
        await fh.close();
      }
    } else {
      allocated = await replaceFile(target.resolved, file, old, async (fh) => {
        const n = await copy(fh);
        await fh.truncate(size);
        return n;
      });
    }
    return { name, size, allocated, seconds: (Date.now() - started) / 1000 };
  } finally {
    await h.close();
  }
}

/**
 * Writes a temporary file beside `resolved` with `fill`, syncs it and
 * renames it over `resolved` (then syncs the directory); on any failure the
 * temporary file is removed and `resolved` is left as it was. `old`: the
 * file being replaced, whose mode (and owner, when allowed) the new one takes.
 */
async function replaceFile<T>(resolved: string, file: string, old: fs.Stats | null,
  fill: (fh: fs.promises.FileHandle) => Promise<T>): Promise<T> {
  const dir = path.dirname(resolved);
  const tmp = path.join(dir, `.${path.basename(resolved)}.dormant-${process.pid}-${crypto.randomBytes(4).toString('hex')}`);
  let fh: fs.promises.FileHandle;
  try {
    fh = await fs.promises.open(tmp, 'wx', 0o600);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'EACCES' ? 'permission denied' : e.code === 'EROFS' ? 'read-only file system' : e.message;
    throw new DormantError(e.code === 'ENOENT' ? 'ENOENT' : 'EINVAL', `cannot write '${file}': ${why}`, { path: file, cause: err });
  }
  try {
    let result: T;
    try {
      await fh.chmod(old ? old.mode & 0o7777 : 0o666 & ~userUmask());
      if (old) await fh.chown(old.uid, old.gid).catch(() => undefined); // only root may give it away
      result = await fill(fh);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await fs.promises.rename(tmp, resolved);
    const d = await fs.promises.open(dir, 'r');
    try { await d.sync(); } finally { await d.close(); }
    return result;
  } catch (err) {
    await fs.promises.rm(tmp, { force: true });
    throw err;
  }
}
