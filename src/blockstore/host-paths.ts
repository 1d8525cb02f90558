/**
 * Host paths that import reads and export writes, checked before use: a
 * path that resolves into the store directory or into a FUSE view of the
 * store this process serves is refused (EINVAL, one line). Writing there
 * would overwrite the store's own files (a segment, the index) or, through
 * the view, a volume while it is being read; the daemon would read garbage
 * or die of SIGBUS under a mapping.
 *
 * A path is compared after resolving it: symbolic links (also a dangling
 * one, whose target would be created), `..`, bind mounts of the store (the
 * device and inode of the directory it lands in), and hard links (the
 * device and inode of an existing file against every file of the store).
 * A view is recognised by its mount point and by its device (the FUSE file
 * system's own). Every file system call here is asynchronous: in the
 * daemon, a path in its own view is answered by its own JS thread.
 */
import fs from 'node:fs';
import path from 'node:path';
import { DormantError } from './errors.js';

/** Symbolic links followed at most (the kernel's own limit). */
const MAX_LINKS = 40;

/** What a checked path is. */
export interface HostPath {
  /** Absolute path with every symbolic link resolved (the file itself may not exist). */
  resolved: string;
  /** Its status when it exists. */
  stat: fs.Stats | null;
}

const inside = (p: string, dir: string) => p === dir || p.startsWith(dir.endsWith('/') ? dir : `${dir}/`);

/** Resolves `file` through every symbolic link, also when the last one dangles. */
async function resolvePath(file: string): Promise<string> {
  let p = path.resolve(file);
  for (let hops = 0; hops <= MAX_LINKS; hops++) {
    try {
      return await fs.promises.realpath(p);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    let st: fs.Stats | null = null;
    try { st = await fs.promises.lstat(p); } catch { /* not there at all */ }
    if (st?.isSymbolicLink()) {
      p = path.resolve(path.dirname(p), await fs.promises.readlink(p));
      continue;
    }
    // A new file: its directory must exist.
    return path.join(await fs.promises.realpath(path.dirname(p)), path.basename(p));
  }
  throw new DormantError('EINVAL', `'${file}': too many levels of symbolic links`, { path: file });
}

/** Device and inode of every file and directory in the store, as "dev:ino". */
async function storeInodes(dir: string): Promise<Set<string>> {
  const out = new Set<string>();
  const walk = async (p: string): Promise<void> => {
    let st: fs.Stats;
    try { st = await fs.promises.lstat(p); } catch { return; }
    out.add(`${st.dev}:${st.ino}`);
    if (!st.isDirectory()) return;
    let names: string[] = [];
    try { names = await fs.promises.readdir(p); } catch { return; }
    for (const n of names) await walk(path.join(p, n));
  };
  await walk(dir);
  return out;
}

/** Status of `p`, or null when it does not exist. */
async function statOrNull(p: string): Promise<fs.Stats | null> {
  try { return await fs.promises.stat(p); } catch { return null; }
}

/**
 * Checks that `file` (`role`: what import reads or export writes) lies
 * outside store directory `storeDir` and outside each FUSE view in `views`;
 * returns it resolved. EINVAL names the file and where it points.
 */
export async function checkHostPath(file: string, role: 'source' | 'target', storeDir: string,
  views: Iterable<string>): Promise<HostPath> {
  let resolved: string;
  try {
    resolved = await resolvePath(file);
  } catch (err) {
    if (err instanceof DormantError) throw err;
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file or directory' : e.code === 'EACCES' ? 'permission denied' : e.message;
    throw new DormantError(e.code === 'ENOENT' ? 'ENOENT' : 'EINVAL', `cannot open '${file}': ${why}`, { path: file, cause: err });
  }
  const what = role === 'target' ? 'export into' : 'import from';
  const shown = resolved === path.resolve(file) ? `'${file}'` : `'${file}' (${resolved})`;
  const refuse = (where: string) => new DormantError('EINVAL', `refusing to ${what} ${shown}: ${where}`, { path: file });

  const store = await fs.promises.realpath(storeDir);
  if (inside(resolved, store)) throw refuse(`it is inside the store directory ${store}`);
  for (const v of views) {
    const view = await fs.promises.realpath(v).catch(() => v);
    if (inside(resolved, view)) throw refuse(`it is inside the FUSE view of this store on ${view}`);
  }

  // Bind mounts and hard links: the directory it lands in, and the file itself, by device and inode.
  const inodes = await storeInodes(store);
  const dirSt = await statOrNull(path.dirname(resolved));
  const st = await statOrNull(resolved);
  for (const v of views) {
    const viewSt = await statOrNull(v);
    if (viewSt && ((dirSt && dirSt.dev === viewSt.dev) || (st && st.dev === viewSt.dev))) {
      throw refuse(`it is on the FUSE view of this store on ${v}`);
    }
  }
  if (dirSt && inodes.has(`${dirSt.dev}:${dirSt.ino}`)) throw refuse(`its directory is a directory of the store ${store}`);
  if (st && inodes.has(`${st.dev}:${st.ino}`)) throw refuse(`it is a hard link to a file of the store ${store}`);
  if (st && st.isBlockDevice()) {
    const storeSt = await fs.promises.stat(store);
    if (st.rdev === storeSt.dev) throw refuse(`it is the device the store ${store} lives on`);
  }
  return { resolved, stat: st };
}
