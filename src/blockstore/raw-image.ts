/**
 * Raw image files in and out of the store (import / export). Import skips
 * nothing but zero blocks (which become holes); export walks the extent map
 * so holes stay sparse in the output file. A failed import removes the
 * half-made volume.
 */
import fs from 'node:fs';
import { DormantError } from './errors.js';
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
  const fh = await openFile(file, 'r');
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new DormantError('EINVAL', `'${file}' is not a regular file`, { path: file });
    const size = st.size;
    if (size === 0) throw new DormantError('EINVAL', `'${file}' is empty: a volume needs at least 1 byte`, { path: file });
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

/** Copies volume or snapshot `name` to raw file `file` (created or truncated; holes stay sparse). */
export async function exportFile(store: Store, name: string, file: string,
  progress?: ProgressFn): Promise<RawImageResult> {
  const started = Date.now();
  const h = await store.openVolume(name);
  try {
    const size = h.size;
    const fh = await openFile(file, 'w');
    let allocated = 0;
    try {
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
      await fh.truncate(size);
      await fh.sync();
    } finally {
      await fh.close();
    }
    return { name, size, allocated, seconds: (Date.now() - started) / 1000 };
  } finally {
    await h.close();
  }
}
