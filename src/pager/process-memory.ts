/**
 * What /proc says about a running QEMU's memory: resident bytes of its
 * guest RAM mapping (the memory volume's file) and of everything else.
 * Read on the libuv pool (see residentMemory).
 */
import fs from 'node:fs';

/** Resident memory of a QEMU process: the guest RAM mapping of `memFile`, and everything else. */
export interface Resident {
  guestRam: number;
  qemuOwn: number;
}

/**
 * Reads /proc/PID/smaps; undefined when the process is gone. On the libuv
 * pool: reading smaps takes QEMU's mmap_lock, which can wait for a guest
 * fault that only this process's JS thread can serve (the FUSE view).
 */
export async function residentMemory(pid: number, memFile: string): Promise<Resident | undefined> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/smaps`, 'utf8'); } catch { return undefined; }
  return parseSmaps(text, memFile);
}

/** Sums Rss in smaps `text`: of the mappings of `memFile`, and of everything else. */
export function parseSmaps(text: string, memFile: string): Resident {
  let guestRam = 0;
  let total = 0;
  let inGuest = false;
  for (const line of text.split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$/.exec(line);
    if (header) { inGuest = header[1] === memFile || header[1] === `${memFile} (deleted)`; continue; }
    const rss = /^Rss:\s+(\d+) kB/.exec(line);
    if (rss) {
      const bytes = Number(rss[1]) * 1024;
      total += bytes;
      if (inGuest) guestRam += bytes;
    }
  }
  return { guestRam, qemuOwn: total - guestRam };
}

/**
 * QEMU's own memory (everything but the guest RAM mapping) as PSS, split
 * the way it can be cut: the TCG translation buffer (its one private
 * mapping that is executable and anonymous), the rest of its anonymous
 * memory (heap, thread arenas, the kernel image it keeps for the firmware),
 * its files (binary and libraries, shared between QEMUs so PSS divides
 * them), and what of it is in swap.
 */
export interface QemuMemory {
  /** Guest RAM resident in QEMU (Rss of the guest mapping). */
  guestRam: number;
  /** QEMU's own resident memory (Rss of everything but the guest mapping). */
  rss: number;
  /** Sum of the three below. */
  pss: number;
  translationPss: number;
  anonPss: number;
  filesPss: number;
  /** QEMU's own pages in swap. */
  swap: number;
}

/** Splits smaps `text` of a QEMU whose guest RAM is `memFile` into QemuMemory. */
export function parseQemuMemory(text: string, memFile: string): QemuMemory {
  const m: QemuMemory = { guestRam: 0, rss: 0, pss: 0, translationPss: 0, anonPss: 0, filesPss: 0, swap: 0 };
  let kind: 'guest' | 'translation' | 'anon' | 'files' = 'anon';
  for (const line of text.split('\n')) {
    const header = /^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ (\S+)\s*(.*)$/.exec(line);
    if (header) {
      const [, perms, inode, name] = header;
      if (name === memFile || name === `${memFile} (deleted)`) kind = 'guest';
      else if (inode !== '0' && !name.startsWith('[')) kind = 'files';
      else if (perms.startsWith('rwx') && name === '') kind = 'translation';
      else kind = 'anon';
      continue;
    }
    const f = /^(Rss|Pss|Swap):\s+(\d+) kB/.exec(line);
    if (!f) continue;
    const bytes = Number(f[2]) * 1024;
    if (kind === 'guest') { if (f[1] === 'Rss') m.guestRam += bytes; continue; }
    if (f[1] === 'Swap') { m.swap += bytes; continue; }
    if (f[1] === 'Rss') { m.rss += bytes; continue; }
    if (f[1] !== 'Pss') continue;
    if (kind === 'translation') m.translationPss += bytes;
    else if (kind === 'files') m.filesPss += bytes;
    else m.anonPss += bytes;
  }
  m.pss = m.translationPss + m.anonPss + m.filesPss;
  return m;
}

/** QemuMemory of `pid` (undefined when it is gone); smaps read on the libuv pool (see residentMemory). */
export async function qemuMemory(pid: number, memFile: string): Promise<QemuMemory | undefined> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/smaps`, 'utf8'); } catch { return undefined; }
  return parseQemuMemory(text, memFile);
}

/** Private writable ranges of `pid` other than `memFile`'s mapping: QEMU's own memory that swap can take. */
export async function ownPrivateRanges(pid: number, memFile: string): Promise<Array<{ addr: number; length: number }>> {
  let text: string;
  try { text = await fs.promises.readFile(`/proc/${pid}/maps`, 'utf8'); } catch { return []; }
  const out: Array<{ addr: number; length: number }> = [];
  for (const line of text.split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S+) \S+ \S+ (\S+)\s*(.*)$/.exec(line);
    if (!m || m[3][1] !== 'w' || m[3][3] !== 'p' || m[4] !== '0' || m[5] === memFile || m[5] === '[vsyscall]' || m[5] === '[vdso]'
      || m[5] === '[vvar]' || m[5].startsWith('[vvar')) continue;
    const start = parseInt(m[1], 16);
    out.push({ addr: start, length: parseInt(m[2], 16) - start });
  }
  return out;
}

/** Bytes of active swap on this host (/proc/swaps); 0 when there is none. */
export function swapBytes(): number {
  let text = '';
  try { text = fs.readFileSync('/proc/swaps', 'utf8'); } catch { return 0; }
  let kb = 0;
  for (const line of text.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length >= 3) kb += Number(f[2]) || 0;
  }
  return kb * 1024;
}
