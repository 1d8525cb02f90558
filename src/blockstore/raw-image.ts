/**
 * Image files in and out of the store (import / export). Import reads raw
 * images, and the formats qemu-img knows through a conversion to raw first
 * (image-format.ts); it skips nothing but zero blocks (which become holes).
 * Export writes raw and walks the extent map so holes stay sparse in the
 * output file. A failed import removes the half-made volume.
 *
 * Files and block devices are first checked (host-paths.ts): nothing is
 * read from or written into the store directory or a FUSE view of the
 * store. Export to a regular file writes a temporary file beside it
 * (`.<name>.dormant-*`) and renames it over the target only once all of it
 * is written and synced, so a failed export leaves the old target as it
 * was and no temporary file; the new file keeps the old one's mode (else
 * the mode the user's umask gives). A block device is written in place.
 * Streams (a pipe, a socket, a character device; the CLI's `-` names its
 * stdin or stdout as /proc/PID/fd/N) are read and written in order:
 * export writes holes as zeroes, import grows the volume as data comes.
 */
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { MAX_VOLUME_SIZE } from './constants.js';
import { DormantError } from './errors.js';
import { checkHostPath } from './host-paths.js';
import { checkFormat, convertToRaw, exportToNbd, isNbdUri, probeFormat, probeHeader } from './image-format.js';
import { userUmask } from './permissions.js';
import type { Store } from './store.js';
import type { VolumeHandle, VolumeKind } from './types.js';

/** Bytes moved per read/write call. */
const COPY_CHUNK = 4 * 1024 * 1024;
/** Bytes a stream import reads per chunk (each grows the volume once). */
const STREAM_CHUNK = 16 * 1024 * 1024;
/** Chunks an import reads and writes at once. */
const IMPORT_DEPTH = 4;

/** Called with bytes done and total. */
export type ProgressFn = (done: number, total: number) => void;

/** What an import or export of a raw image file did; `format`: what an import read (qemu-img converted it unless raw). */
export interface RawImageResult { name: string; size: number; allocated: number; seconds: number; format?: string }

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

/**
 * Copies image `file` into a new volume `name` of the image's size.
 * `format`: `auto` (probe the header: image-format.ts), `raw`, or a format
 * qemu-img converts to raw first (into a temporary file, removed after).
 */
export async function importFile(store: Store, name: string, file: string, kind: VolumeKind,
  progress?: ProgressFn, format = 'auto'): Promise<RawImageResult> {
  const started = Date.now();
  checkFormat(format);
  if (isNbdUri(file)) {
    // An NBD export is a raw disk unless a format is named; qemu-img copies it into a temporary file first.
    const fmt = format === 'auto' ? 'raw' : format;
    const converted = await convertToRaw(file, fmt, file);
    try {
      return { ...await importFile(store, name, converted.raw, kind, progress, 'raw'), format: fmt, seconds: (Date.now() - started) / 1000 };
    } finally {
      await converted.remove();
    }
  }
  if (await isStream(file)) return importStream(store, name, file, kind, progress, format, started);
  const source = await checkHostPath(file, 'source', store.dir, store.views);
  let fh = await openFile(source.resolved, 'r');
  let converted: { raw: string; remove: () => Promise<void> } | undefined;
  try {
    let st = await fh.stat();
    if (!st.isFile()) throw new DormantError('EINVAL', `'${file}' is not a regular file`, { path: file });
    if (st.size === 0) throw new DormantError('EINVAL', `'${file}' is empty: a volume needs at least 1 byte`, { path: file });
    const fmt = format === 'auto' ? await probeFormat(fh, st.size) : format;
    if (fmt !== 'raw') {
      await fh.close();
      converted = await convertToRaw(source.resolved, fmt, file);
      fh = await openFile(converted.raw, 'r');
      st = await fh.stat();
    }
    const size = st.size;
    if (size === 0) throw new DormantError('EINVAL', `'${file}' is empty: a volume needs at least 1 byte`, { path: file });
    if (size > MAX_VOLUME_SIZE) {
      throw new DormantError('EINVAL', `'${file}' is ${size} bytes: larger than the 1 PiB limit of a volume`, { path: file });
    }
    const allocated = await intoNewVolume(store, name, size, kind, async (h) => {
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
    });
    return { name, size, allocated, seconds: (Date.now() - started) / 1000, format: fmt };
  } finally {
    await fh.close().catch(() => undefined);
    await converted?.remove();
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
  if (isNbdUri(file)) {
    await store.info(name); // ENOENT before anything is made
    return exportToNbd(file, async (raw) => ({ ...await exportFile(store, name, raw, progress), seconds: (Date.now() - started) / 1000 }));
  }
  const h = await store.openVolume(name);
  try {
    if (await isStream(file)) {
      const fh = await openFile(file, 'w');
      try {
        const allocated = await copySequential(h, fh, progress);
        return { name, size: h.size, allocated, seconds: (Date.now() - started) / 1000 };
      } finally {
        await fh.close();
      }
    }
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
        allocated = await copy(fh); // a block device (streams went above)
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

/**
 * True when `file` is a pipe, a socket or a character device (also through
 * /proc/PID/fd/N, as the CLI names its own stdin and stdout for `-`): read
 * or written in order, never positioned, and not a path into the store.
 */
async function isStream(file: string): Promise<boolean> {
  const st = await fs.promises.stat(file).catch(() => null);
  return st !== null && (st.isFIFO() || st.isSocket() || st.isCharacterDevice());
}

/** Writes all of `buf` at the current position of `fh` (a pipe may take less per call). */
async function writeAll(fh: fs.promises.FileHandle, buf: Buffer): Promise<void> {
  for (let off = 0; off < buf.length;) {
    try {
      off += (await fh.write(buf, off, buf.length - off, null)).bytesWritten;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EPIPE') throw err;
      throw new DormantError('EINVAL', 'the output stream was closed by its reader before the end of the image (EPIPE)', { cause: err });
    }
  }
}

/** Writes volume `h` to `fh` in order, holes as zeroes; returns the allocated bytes written. */
async function copySequential(h: VolumeHandle, fh: fs.promises.FileHandle, progress?: ProgressFn): Promise<number> {
  const size = h.size;
  const zeroes = Buffer.alloc(COPY_CHUNK);
  let allocated = 0;
  for (const ext of await h.extents(0, size)) {
    for (let off = ext.offset; off < ext.offset + ext.length; off += COPY_CHUNK) {
      const len = Math.min(COPY_CHUNK, ext.offset + ext.length - off);
      if (ext.hole) {
        await writeAll(fh, zeroes.subarray(0, len));
      } else {
        await writeAll(fh, await h.read(off, len));
        allocated += len;
      }
      progress?.(off + len, size);
    }
  }
  return allocated;
}

/** Reads from `fh` in order until `buf` is full or the stream ends; returns the bytes read. */
async function readFull(fh: fs.promises.FileHandle, buf: Buffer): Promise<number> {
  let got = 0;
  while (got < buf.length) {
    const { bytesRead } = await fh.read(buf, got, buf.length - got, null);
    if (bytesRead === 0) break;
    got += bytesRead;
  }
  return got;
}

/**
 * Import from a pipe (`dormant import NAME -`): the length is not known
 * ahead, so the volume is created with the first chunk's length and grows
 * with each chunk (grow-only resizes), ending at exactly the bytes read.
 * A stream is not converted: a header of another format is refused unless
 * `--format raw` (convert it to a file first).
 */
async function importStream(store: Store, name: string, file: string, kind: VolumeKind,
  progress: ProgressFn | undefined, format: string, started: number): Promise<RawImageResult> {
  const fh = await openFile(file, 'r');
  try {
    let buf = Buffer.allocUnsafe(STREAM_CHUNK);
    let next = Buffer.allocUnsafe(STREAM_CHUNK);
    let len = await readFull(fh, buf);
    if (len === 0) throw new DormantError('EINVAL', 'the input stream is empty: a volume needs at least 1 byte');
    if (format !== 'raw') {
      const fmt = format === 'auto' ? probeHeader(buf.subarray(0, len)) : format;
      if (fmt !== 'raw') {
        throw new DormantError('EFORMAT', `the input stream holds a ${fmt} image: save it to a file and import that `
          + '(converted by qemu-img), or pass --format raw to take its bytes as they are');
      }
    }
    let size = 0;
    const allocated = await intoNewVolume(store, name, len, kind, async (h) => {
      for (;;) {
        if (size + len > MAX_VOLUME_SIZE) throw new DormantError('EINVAL', 'the input stream is longer than the 1 PiB limit of a volume');
        if (size > 0) await store.resize(name, size + len);
        // The next chunk is read while this one is written.
        const [, got] = await Promise.all([h.write(size, buf.subarray(0, len)), readFull(fh, next)]);
        size += len;
        progress?.(size, 0);
        if (got === 0) break;
        [buf, next] = [next, buf];
        len = got;
      }
    });
    return { name, size, allocated, seconds: (Date.now() - started) / 1000, format: 'raw' };
  } finally {
    await fh.close();
  }
}

/**
 * Creates volume `name` of `size` bytes, lets `fill` write it (it may grow
 * it), flushes it and returns its allocated bytes. A failure removes the volume: no half-imported volume is left.
 */
async function intoNewVolume(store: Store, name: string, size: number, kind: VolumeKind,
  fill: (h: VolumeHandle) => Promise<void>): Promise<number> {
  await store.createVolume(name, size, kind);
  try {
    const h = await store.openVolume(name);
    try {
      await fill(h);
      await h.flush();
    } finally {
      await h.close();
    }
  } catch (err) {
    await store.remove(name).catch(() => undefined);
    throw err;
  }
  return (await store.info(name)).allocated;
}

