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
