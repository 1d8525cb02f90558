/**
 * The memory agent: a small child process of the daemon that holds the
 * descriptors of the VMs' memory files (on the daemon's own FUSE view) and
 * makes the system calls on them: fdatasync (write-back), cachestat (page
 * cache residency), posix_fadvise (drop), reads that bring pages into the
 * page cache (prefetch: each read is a FUSE read the daemon serves, and its
 * answer is the moment the page is there); and reads which pages of a
 * memory file QEMU has mapped (/proc/PID/pagemap, which takes QEMU's
 * mmap_lock: a QEMU thread may hold it while it waits for a fault only the
 * daemon's JS thread can serve, so the daemon never reads it itself).
 *
 * Why a process of its own: closing a FUSE file writes its dirty pages back
 * first (fuse_flush), and only the daemon's JS thread can serve those
 * writes. A descriptor in the daemon would be inherited by every QEMU the
 * daemon forks, and closed by the kernel at exec while the daemon's JS
 * thread waits for that exec (libuv's spawn): a deadlock. The agent never
 * forks, and its blocking never blocks the daemon.
 *
 * Protocol: one JSON object per line on stdin, one answer per line on
 * stdout: {id, ok: true, result} or {id, ok: false, error: {message, code}}.
 * It exits when stdin closes (the daemon is gone).
 */
import fs from 'node:fs';
import readline from 'node:readline';
import { fileAdvise, fileCached, mappingResidency } from '../native/index.js';

const PAGE = 4096;
/** Bytes per prefetch read (the FUSE request size) and reads in flight. */
const READ_PIECE = 128 * 1024;
const READ_DEPTH = 8;

interface Request {
  id: number;
  op: 'writeBack' | 'cached' | 'drop' | 'forget' | 'mapped' | 'readIn';
  file: string;
  bytes?: number;
  bitmap?: boolean;
  runs?: Array<[number, number]>;
  /** drop: say which pages of the runs stayed cached. */
  check?: boolean;
  pid?: number;
  maps?: Array<{ start: number; end: number; offset: number }>;
}

const fds = new Map<string, Promise<fs.promises.FileHandle>>();

function handle(file: string): Promise<fs.promises.FileHandle> {
  let h = fds.get(file);
  if (!h) {
    h = fs.promises.open(file, 'r');
    h.catch(() => fds.delete(file));
    fds.set(file, h);
  }
  return h;
}

async function run(r: Request): Promise<unknown> {
  switch (r.op) {
    case 'writeBack':
      await (await handle(r.file)).datasync();
      return null;
    case 'cached': {
      const c = await fileCached((await handle(r.file)).fd, 0, r.bytes ?? 0);
      return { present: c.present, ...(r.bitmap ? { bitmap: Buffer.from(c.bitmap).toString('base64') } : {}) };
    }
    case 'drop': {
      const fd = (await handle(r.file)).fd;
      for (const [first, count] of r.runs ?? [[0, 0]]) await fileAdvise(fd, first * PAGE, count * PAGE, 'dontneed');
      if (!r.check) return null;
      // The pages of those runs still cached after it (mapped, dirty or being read): the first, and how many.
      let stillCached = 0;
      let first: number | undefined;
      for (const [from, count] of r.runs ?? []) {
        const c = await fileCached(fd, from * PAGE, count * PAGE);
        stillCached += c.present;
        for (let i = 0; first === undefined && c.present > 0 && i < c.bitmap.length; i++) if (c.bitmap[i]) first = from + i;
      }
      return { stillCached, ...(first !== undefined ? { first } : {}) };
    }
    case 'readIn': {
      // Reads the page runs into the page cache, READ_PIECE bytes a read, READ_DEPTH reads at once.
      const h = await handle(r.file);
      const pieces: Array<[number, number]> = [];
      for (const [first, count] of r.runs ?? []) {
        for (let off = first * PAGE, end = (first + count) * PAGE; off < end; off += READ_PIECE) {
          pieces.push([off, Math.min(READ_PIECE, end - off)]);
        }
      }
      let next = 0;
      const worker = async () => {
        const buf = Buffer.allocUnsafe(READ_PIECE);
        while (next < pieces.length) {
          const [off, len] = pieces[next++];
          await h.read(buf, 0, len, off);
        }
      };
      await Promise.all(Array.from({ length: Math.min(READ_DEPTH, pieces.length) }, worker));
      return pieces.length;
    }
    case 'mapped': {
      // Per file page: 1 when one of QEMU's mappings of the file has it present.
      const out = new Uint8Array(Math.ceil((r.bytes ?? 0) / PAGE));
      for (const m of r.maps ?? []) {
        const res = mappingResidency(r.pid ?? 0, m.start, m.end - m.start);
        const first = Math.floor(m.offset / PAGE);
        for (let i = 0; i < res.bitmap.length && first + i < out.length; i++) if (res.bitmap[i]) out[first + i] = 1;
      }
      return Buffer.from(out).toString('base64');
    }
    case 'forget': {
      const h = fds.get(r.file);
      fds.delete(r.file);
      if (h) await (await h).close();
      return null;
    }
    default:
      throw new Error(`unknown op ${String((r as { op: unknown }).op)}`);
  }
}

const rl = readline.createInterface({ input: process.stdin });
rl.on('line', (line) => {
  let r: Request;
  try { r = JSON.parse(line) as Request; } catch { return; }
  run(r).then(
    (result) => process.stdout.write(`${JSON.stringify({ id: r.id, ok: true, result })}\n`),
    (err: NodeJS.ErrnoException) => process.stdout.write(`${JSON.stringify({
      id: r.id, ok: false, error: { message: err.message, code: err.code ?? 'EIO' },
    })}\n`),
  );
});
rl.on('close', () => process.exit(0));
