/**
 * What a host image file holds, told by its magic bytes (as qemu-img
 * probes), and its conversion to raw with qemu-img for import. A file
 * with no known header is raw. `--format raw` forces raw (a raw disk that
 * happens to start like a qcow2 header); any other format name is passed
 * to `qemu-img convert -f` as given. NBD URIs go through qemu-img both
 * ways, as raw unless a format is named.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { DormantError } from './errors.js';

/** Formats told apart by their header; anything else reads as raw. */
export type ImageFormat = 'raw' | 'qcow2' | 'qcow' | 'qed' | 'vmdk' | 'vdi' | 'vhdx' | 'vpc' | 'luks' | 'parallels';

/** Formats `--format` accepts: the probed ones and `auto`. */
export const IMAGE_FORMATS: readonly string[] = ['auto', 'raw', 'qcow2', 'qcow', 'qed', 'vmdk', 'vdi', 'vhdx', 'vpc', 'luks', 'parallels'];

const QEMU_IMG = 'qemu-img';

/** True for an NBD URI (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`): import reads and export writes it with qemu-img. */
export function isNbdUri(file: string): boolean {
  return /^nbds?(\+unix)?:\/\//.test(file);
}

/** Runs qemu-img; one clear line (EFORMAT) naming `what` when it is missing or fails. */
function qemuImg(args: string[], what: string, file: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    execFile(QEMU_IMG, args, { maxBuffer: 1 << 20 }, (err, _stdout, stderr) => {
      if (!err) { resolve(); return; }
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT' ? 'qemu-img is not installed (Debian: apt-get install qemu-utils)'
        : (stderr.trim().split('\n').pop() ?? e.message).replace(/^qemu-img: /, '');
      reject(new DormantError('EFORMAT', `cannot ${what}: ${why}`, { path: file }));
    });
  });
}

/** A private temporary directory and a function that removes it. */
async function tempDir(): Promise<{ dir: string; remove: () => Promise<void> }> {
  const dir = await fs.promises.mkdtemp(path.join(os.tmpdir(), 'dormant-image-'));
  return { dir, remove: () => fs.promises.rm(dir, { recursive: true, force: true }) };
}

/** The format a header (the first sector or more of an image) announces; 'raw' when none. */
export function probeHeader(head: Buffer): ImageFormat {
  const ascii = (off: number, text: string) => head.length >= off + text.length && head.toString('latin1', off, off + text.length) === text;
  const u32be = (off: number) => (head.length >= off + 4 ? head.readUInt32BE(off) : -1);
  if (u32be(0) === 0x514649fb) return u32be(4) === 1 ? 'qcow' : 'qcow2'; // "QFI\xfb"
  if (ascii(0, 'QED\0')) return 'qed';
  if (ascii(0, 'KDMV') || ascii(0, '# Disk DescriptorFile')) return 'vmdk';
  if (head.length >= 0x44 && head.readUInt32LE(0x40) === 0xbeda107f) return 'vdi';
  if (ascii(0, 'vhdxfile')) return 'vhdx';
  if (ascii(0, 'conectix')) return 'vpc';
  if (ascii(0, 'LUKS\xba\xbe')) return 'luks';
  if (ascii(0, 'WithoutFreeSpace') || ascii(0, 'WithouFreSpacExt')) return 'parallels';
  return 'raw';
}

/** The format of the open file `fh` of `size` bytes, from its first (and, for a fixed VHD, last) sector. */
export async function probeFormat(fh: fs.promises.FileHandle, size: number): Promise<ImageFormat> {
  const head = Buffer.alloc(Math.min(512, size));
  await fh.read(head, 0, head.length, 0);
  const fmt = probeHeader(head);
  if (fmt !== 'raw' || size < 1024) return fmt;
  // A fixed VHD is raw data with a 512-byte footer.
  const foot = Buffer.alloc(8);
  await fh.read(foot, 0, 8, size - 512);
  return foot.toString('latin1') === 'conectix' ? 'vpc' : 'raw';
}

/** Checks a `--format` value; EINVAL names the accepted ones. */
export function checkFormat(format: string): void {
  if (!IMAGE_FORMATS.includes(format)) {
    throw new DormantError('EINVAL', `bad --format '${format}': use ${IMAGE_FORMATS.join(', ')}`);
  }
}

/**
 * Converts image `source` (a file, or an NBD URI read as `format`) to a
 * sparse raw file in a private temporary directory with `qemu-img
 * convert`; returns its path and a function that removes it.
 */
export async function convertToRaw(source: string, format: string, file: string): Promise<{ raw: string; remove: () => Promise<void> }> {
  const { dir, remove } = await tempDir();
  const raw = path.join(dir, 'image.raw');
  try {
    await qemuImg(['convert', '-q', '-f', format, '-O', 'raw', '-S', '4k', source, raw], isNbdUri(source) && format === 'raw' ? `read '${file}'` : `convert '${file}' from ${format} to raw`, file);
  } catch (err) {
    await remove();
    throw err;
  }
  return { raw, remove };
}

/**
 * Export to an NBD URI: `write` fills a sparse raw temporary file, which
 * `qemu-img convert -n` then copies onto the export (it must exist and be
 * at least as large; zero ranges are written as zeroes or trimmed as the
 * server allows).
 */
export async function exportToNbd<T>(uri: string, write: (raw: string) => Promise<T>): Promise<T> {
  const { dir, remove } = await tempDir();
  try {
    const raw = path.join(dir, 'image.raw');
    const result = await write(raw);
    await qemuImg(['convert', '-q', '-n', '-f', 'raw', '-O', 'raw', raw, uri], `write to '${uri}'`, uri);
    return result;
  } finally {
    await remove();
  }
}
