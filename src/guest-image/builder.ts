/**
 * The test guest: a real bootable golden image built from Debian packages,
 * with no installation on the host beyond the packages scripts/setup.sh adds.
 *
 *   kernel     Debian's current linux-image-*-amd64, `apt-get download`ed into
 *              the cache and unpacked with `dpkg -x` (never installed);
 *   initramfs  cpio newc + gzip: busybox-static, the modular virtio/ext4
 *              drivers (dependencies resolved from modules.dep), an /init that
 *              loads them, mounts the root disk and switch_roots;
 *   root disk  ext4 made with `mke2fs -d`: busybox-static with its applet
 *              symlinks, the same modules, and an /sbin/init that mounts
 *              proc/sys/dev, sets the hostname from `dormant.hostname=` on
 *              the kernel command line, brings eth0 up at 10.0.2.15, serves
 *              a status page with `busybox httpd` on port 80 and logs a
 *              heartbeat on the serial console.
 *
 * The counter /var/counter lives on the root disk: +1 at each boot and +1 at
 * each request to /cgi-bin/status. The page / (a CGI, nothing is rewritten
 * while the guest idles) shows hostname, uptime and the counter. With
 * `dormant.ballast=BYTES` on the command line the guest fills that much
 * memory at boot and touches it like an idle service (ballast.ts, a static
 * binary gcc builds here).
 *
 * Everything lands in a cache directory ($XDG_CACHE_HOME/dormant/images or
 * ~/.cache/dormant/images): NAME/disk.img, NAME/vmlinuz, NAME/initrd.img and
 * NAME.json (paths, default command line, input hash). A second build with the
 * same inputs (package versions, image size, builder version) does nothing.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { DormantError } from '../blockstore/index.js';
import { withCacheLock } from './cache-lock.js';
import { BALLAST_C } from './ballast.js';
import { DEFAULT_HOSTNAME, INDEX_CGI, STATUS_CGI, initramfsInit, rootInit } from './guest-scripts.js';
import { moduleName, parseModulesDep, resolveModules } from './kernel-modules.js';

export { DEFAULT_HOSTNAME } from './guest-scripts.js';

/** Bump when the image layout or the guest's scripts change: invalidates caches. */
export const BUILDER_VERSION = 3;

/** Default size of the root disk. */
export const DEFAULT_IMAGE_SIZE = 256 * 1024 * 1024;

/**
 * Kernel command line the guest expects (add `dormant.hostname=NAME`). An
 * idle guest under TCG pays for every kernel entry and timer: no CPU
 * vulnerability mitigations (page-table isolation switches address spaces
 * at each entry), no clocksource watchdog (tsc=reliable), no soft-lockup
 * watchdog. No check of the IO-APIC timer at boot (no_timer_check): it
 * counts ticks over a calibrated delay, which a TCG vCPU starved of CPU
 * fails, and the kernel then panics ("IO-APIC + timer doesn't work"),
 * seen once with load 8 on 2 cores. This is a test guest for density, not
 * a hardened one.
 */
export const DEFAULT_CMDLINE = 'console=ttyS0 root=/dev/vda rw mitigations=off tsc=reliable nowatchdog no_timer_check';


/** Modules the guest needs if they are not built into the kernel (CONFIG_* name, module name). */
const WANTED_MODULES: ReadonlyArray<[config: string, module: string]> = [
  ['CONFIG_VIRTIO_PCI', 'virtio_pci'],
  ['CONFIG_VIRTIO_BLK', 'virtio_blk'],
  ['CONFIG_VIRTIO_NET', 'virtio_net'],
  ['CONFIG_CRYPTO_CRC32C', 'crc32c_generic'], // ext4 asks for crc32c by name; no modprobe in the initramfs
  ['CONFIG_EXT4_FS', 'ext4'],
];

/** What `<cache>/<name>.json` records. */
export interface ImageMeta {
  name: string;
  builderVersion: number;
  inputHash: string;
  inputs: Record<string, string>;
  size: number;
  image: string;
  kernel: string;
  initrd: string;
  cmdline: string;
  kernelRelease: string;
  modules: string[];
  builtAt: string;
  buildSeconds: number;
}

/** Options of buildTestGuest. */
export interface BuildOptions {
  /** Root disk size in bytes (default 256 MiB). */
  size?: number;
  /** Cache directory (default defaultCacheDir()). */
  cacheDir?: string;
  /** Progress lines (default: none). */
  log?: (line: string) => void;
}

/** Result of buildTestGuest: the artefacts and whether they came from the cache. */
export interface BuildResult {
  meta: ImageMeta;
  cached: boolean;
}

/** $XDG_CACHE_HOME/dormant/images, else ~/.cache/dormant/images. */
export function defaultCacheDir(): string {
  const base = process.env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache');
  return path.join(base, 'dormant', 'images');
}

/** Path of the metadata file of image `name` in `cacheDir`. */
export function metaPath(cacheDir: string, name: string): string {
  return path.join(cacheDir, `${name}.json`);
}

/** Reads `<cache>/<name>.json`, or undefined when absent or unreadable. */
export async function readImageMeta(cacheDir: string, name: string): Promise<ImageMeta | undefined> {
  try {
    return JSON.parse(await fs.readFile(metaPath(cacheDir, name), 'utf8')) as ImageMeta;
  } catch {
    return undefined;
  }
}

interface RunResult { stdout: string; stderr: string }

/** Runs a tool to completion (bounded); rejects with a one-line DormantError. */
function run(cmd: string, args: string[], opts: { cwd?: string; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    execFile(cmd, args, {
      cwd: opts.cwd, timeout: opts.timeoutMs ?? 600_000, maxBuffer: 64 * 1024 * 1024, killSignal: 'SIGKILL',
      env: { ...process.env, LC_ALL: 'C', PATH: `${process.env.PATH ?? '/usr/bin:/bin'}:/usr/sbin:/sbin` },
    }, (err, stdout, stderr) => {
      if (!err) { resolve({ stdout, stderr }); return; }
      const e = err as NodeJS.ErrnoException;
      const why = e.code === 'ENOENT'
        ? `${cmd} is not installed (run: bash scripts/setup.sh)`
        : `${cmd} ${args.join(' ')} failed: ${(stderr || e.message).trim().split('\n').slice(-3).join(' / ')}`;
      reject(new DormantError(e.code === 'ENOENT' ? 'EINVAL' : 'EINTERNAL', why, { cause: err }));
    });
  });
}

/** Runs `sh -c script` with positional arguments, like run(). */
function sh(script: string, args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  return run('sh', ['-c', script, 'sh', ...args], opts);
}

let aptUpdated = false;

/** Runs an apt command; on "Unable to locate package"/no lists, runs `apt-get update` once and retries. */
async function apt(cmd: string, args: string[], opts: { cwd?: string } = {}): Promise<RunResult> {
  try {
    const r = await run(cmd, args, opts);
    // apt-cache exits 0 with nothing useful when its lists are missing.
    if (cmd === 'apt-cache' && !r.stdout.trim()) throw new DormantError('ENOENT', 'Unable to locate package');
    return r;
  } catch (err) {
    const msg = (err as Error).message;
    if (aptUpdated || !/Unable to locate package|No packages found|Can't select|has no installation candidate/i.test(msg)) {
      throw err;
    }
    aptUpdated = true;
    await run('apt-get', ['update', '-qq'], { timeoutMs: 600_000 });
    return run(cmd, args, opts);
  }
}

/** The current Debian kernel package (what linux-image-amd64 depends on) and its version. */
async function kernelPackage(): Promise<{ pkg: string; version: string }> {
  const dep = await apt('apt-cache', ['depends', 'linux-image-amd64']);
  const m = /Depends:\s*(linux-image-[^\s]+-amd64)\b/.exec(dep.stdout);
  if (!m) throw new DormantError('EINTERNAL', `cannot tell the current kernel package from: apt-cache depends linux-image-amd64`);
  const show = await apt('apt-cache', ['show', '--no-all-versions', m[1]]);
  const v = /^Version:\s*(\S+)/m.exec(show.stdout);
  if (!v) throw new DormantError('EINTERNAL', `apt-cache show ${m[1]} names no version`);
  return { pkg: m[1], version: v[1] };
}

/** Version of an installed Debian package. */
async function installedVersion(pkg: string): Promise<string> {
  try {
    const r = await run('dpkg-query', ['-W', '-f=${Version}', pkg]);
    if (r.stdout.trim()) return r.stdout.trim();
  } catch { /* below */ }
  throw new DormantError('EINVAL', `the Debian package ${pkg} is not installed (run: bash scripts/setup.sh)`);
}

const exists = (p: string) => fs.access(p).then(() => true, () => false);

/** Downloads `pkg=version` into `dir` (once) and returns the .deb's path. */
async function downloadDeb(dir: string, pkg: string, version: string): Promise<string> {
  await fs.mkdir(dir, { recursive: true });
  const want = (f: string) => f.startsWith(`${pkg}_`) && f.endsWith('.deb')
    && f.includes(`_${version.replace(/^\d+:/, '')}_`);
  let found = (await fs.readdir(dir)).find(want);
  if (!found) {
    await apt('apt-get', ['download', '-q', `${pkg}=${version}`], { cwd: dir });
    found = (await fs.readdir(dir)).find(want);
    if (!found) throw new DormantError('EINTERNAL', `apt-get download ${pkg}=${version} left no .deb in ${dir}`);
  }
  return path.join(dir, found);
}

/** Creates the busybox applet symlinks under `root` (bin/sh -> /bin/busybox, ...), except `skip`. */
async function installBusybox(root: string, busybox: string, skip: ReadonlySet<string>): Promise<void> {
  for (const d of ['bin', 'sbin', 'usr/bin', 'usr/sbin']) await fs.mkdir(path.join(root, d), { recursive: true });
  await fs.copyFile(busybox, path.join(root, 'bin', 'busybox'));
  await fs.chmod(path.join(root, 'bin', 'busybox'), 0o755);
  const list = (await run(busybox, ['--list-full'])).stdout.split('\n').map((l) => l.trim()).filter(Boolean);
  for (const applet of list) {
    if (applet === 'bin/busybox' || skip.has(applet)) continue;
    const link = path.join(root, applet);
    await fs.mkdir(path.dirname(link), { recursive: true });
    await fs.rm(link, { force: true });
    await fs.symlink('/bin/busybox', link);
  }
}

async function writeExec(file: string, text: string): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true });
  await fs.writeFile(file, text, { mode: 0o755 });
  await fs.chmod(file, 0o755);
}

/**
 * Builds (or finds in the cache) the test guest `name`: kernel, initramfs and
 * ext4 root disk of `size` bytes. Needs apt-get/dpkg, busybox-static, cpio,
 * gzip, e2fsprogs and gcc (with libc6-dev's static libc) on the host.
 */
export async function buildTestGuest(name: string, opts: BuildOptions = {}): Promise<BuildResult> {
  const size = opts.size ?? DEFAULT_IMAGE_SIZE;
  if (size < 32 * 1024 * 1024 || size % 4096 !== 0) {
    throw new DormantError('EINVAL', `bad image size ${size}: at least 32M, a multiple of 4096`);
  }
  const cacheDir = path.resolve(opts.cacheDir ?? defaultCacheDir());
  await fs.mkdir(cacheDir, { recursive: true });
  // Concurrent builders (two test files, two users) share downloads and
  // outputs: one builds, the others wait and then find it cached.
  return withCacheLock(cacheDir, () => buildLocked(name, size, cacheDir, opts), opts.log);
}

async function buildLocked(name: string, size: number, cacheDir: string, opts: BuildOptions): Promise<BuildResult> {
  const started = Date.now();
  const log = opts.log ?? (() => undefined);

  const kernel = await kernelPackage();
  const busyboxVersion = await installedVersion('busybox-static');
  const e2fsVersion = await installedVersion('e2fsprogs');
  const gccVersion = (await run('gcc', ['-dumpfullversion'])).stdout.trim();
  const inputs: Record<string, string> = {
    builder: String(BUILDER_VERSION),
    name,
    size: String(size),
    kernel: `${kernel.pkg}=${kernel.version}`,
    busybox: `busybox-static=${busyboxVersion}`,
    e2fsprogs: `e2fsprogs=${e2fsVersion}`,
    gcc: gccVersion,
    // The guest's scripts: editing them invalidates the cache even without a version bump.
    scripts: createHash('sha256')
      .update([initramfsInit('KVER'), rootInit(), STATUS_CGI, INDEX_CGI, BALLAST_C, JSON.stringify(WANTED_MODULES)]
        .join('\0'))
      .digest('hex').slice(0, 16),
  };
  const inputHash = createHash('sha256').update(JSON.stringify(inputs)).digest('hex');

  const outDir = path.join(cacheDir, name);
  const old = await readImageMeta(cacheDir, name);
  if (old && old.inputHash === inputHash
    && await exists(old.image) && await exists(old.kernel) && await exists(old.initrd)) {
    log(`image ${name}: up to date in ${cacheDir} (inputs unchanged), nothing to build`);
    return { meta: old, cached: true };
  }

  log(`image ${name}: building from ${kernel.pkg} ${kernel.version}, busybox-static ${busyboxVersion}`);
  const deb = await downloadDeb(path.join(cacheDir, 'debs'), kernel.pkg, kernel.version);
  const work = await fs.mkdtemp(path.join(cacheDir, `.build-${name}-`));
  try {
    // Kernel: unpack (no install), then modules.dep with depmod -b.
    const kroot = path.join(work, 'kernel');
    log(`image ${name}: unpacking ${path.basename(deb)}`);
    await run('dpkg', ['-x', deb, kroot]);
    const kvers = await fs.readdir(path.join(kroot, 'lib', 'modules'));
    if (kvers.length !== 1) throw new DormantError('EINTERNAL', `${path.basename(deb)} holds ${kvers.length} kernels`);
    const kver = kvers[0];
    const modDir = path.join(kroot, 'lib', 'modules', kver);
    if (!await exists(path.join(modDir, 'modules.dep'))) await run('depmod', ['-b', kroot, kver]);
    const config = await fs.readFile(path.join(kroot, 'boot', `config-${kver}`), 'utf8');
    const modular = WANTED_MODULES.filter(([c]) => new RegExp(`^${c}=m$`, 'm').test(config)).map(([, m]) => m);
    const modules = resolveModules(parseModulesDep(await fs.readFile(path.join(modDir, 'modules.dep'), 'utf8')), modular);
    log(`image ${name}: kernel ${kver}; modules: ${modules.map(moduleName).join(' ') || '(all built in)'}`);

    const busybox = (await run('dpkg-query', ['-L', 'busybox-static'])).stdout.split('\n')
      .find((l) => /\/bin\/busybox$/.test(l.trim()))?.trim() ?? '/bin/busybox';

    // A tree gets the modules (same relative paths) and their load order.
    const addModules = async (root: string) => {
      const dst = path.join(root, 'lib', 'modules', kver);
      for (const m of modules) {
        await fs.mkdir(path.dirname(path.join(dst, m)), { recursive: true });
        await fs.copyFile(path.join(modDir, m), path.join(dst, m));
      }
      await fs.mkdir(path.join(root, 'etc'), { recursive: true });
      await fs.writeFile(path.join(root, 'etc', 'dormant-modules'), modules.map((m) => `${m}\n`).join(''));
    };

    // Initramfs.
    const iroot = path.join(work, 'initramfs');
    for (const d of ['dev', 'proc', 'sys', 'newroot', 'etc']) await fs.mkdir(path.join(iroot, d), { recursive: true });
    await installBusybox(iroot, busybox, new Set(['linuxrc']));
    await addModules(iroot);
    await writeExec(path.join(iroot, 'init'), initramfsInit(kver));
    const initrdTmp = path.join(work, 'initrd.img');
    await sh('cd "$1" && find . -print0 | cpio --null -o -H newc --quiet -R 0:0 | gzip -9 > "$2"',
      [iroot, initrdTmp]);

    // Root disk.
    const rroot = path.join(work, 'root');
    for (const d of ['dev', 'proc', 'sys', 'run', 'tmp', 'var', 'www', 'root', 'etc', 'usr/share/dormant']) {
      await fs.mkdir(path.join(rroot, d), { recursive: true });
    }
    await fs.chmod(path.join(rroot, 'tmp'), 0o1777);
    await installBusybox(rroot, busybox, new Set(['sbin/init', 'linuxrc']));
    await addModules(rroot);
    await writeExec(path.join(rroot, 'sbin', 'init'), rootInit());
    await writeExec(path.join(rroot, 'usr', 'share', 'dormant', 'status.cgi'), STATUS_CGI);
    await writeExec(path.join(rroot, 'usr', 'share', 'dormant', 'index.cgi'), INDEX_CGI);
    // The memory ballast (ballast.ts), a static binary: the guest has no libc of its own.
    await fs.writeFile(path.join(work, 'ballast.c'), BALLAST_C);
    await run('gcc', ['-static', '-O2', '-o', path.join(rroot, 'usr', 'sbin', 'dormant-ballast'), path.join(work, 'ballast.c')]);
    await fs.writeFile(path.join(rroot, 'var', 'counter'), '0\n');
    await fs.writeFile(path.join(rroot, 'etc', 'hostname'), `${DEFAULT_HOSTNAME}\n`);
    await fs.writeFile(path.join(rroot, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
    await fs.writeFile(path.join(rroot, 'etc', 'group'), 'root:x:0:\n');
    await fs.writeFile(path.join(rroot, 'etc', 'dormant-image'), `${JSON.stringify({ name, inputHash, inputs })}\n`);
    const imageTmp = path.join(work, 'disk.img');
    log(`image ${name}: mke2fs -t ext4 -d (${size} bytes)`);
    await run('mke2fs', ['-q', '-F', '-t', 'ext4', '-L', name.slice(0, 16), '-E', 'root_owner=0:0',
      '-d', rroot, imageTmp, `${size / 1024}k`]);

    // Publish: files first, the metadata last (it is what says "built").
    await fs.mkdir(outDir, { recursive: true });
    const meta: ImageMeta = {
      name,
      builderVersion: BUILDER_VERSION,
      inputHash,
      inputs,
      size,
      image: path.join(outDir, 'disk.img'),
      kernel: path.join(outDir, 'vmlinuz'),
      initrd: path.join(outDir, 'initrd.img'),
      cmdline: DEFAULT_CMDLINE,
      kernelRelease: kver,
      modules: modules.map(moduleName),
      builtAt: new Date().toISOString(),
      buildSeconds: 0,
    };
    await fs.rm(metaPath(cacheDir, name), { force: true });
    await fs.rename(imageTmp, meta.image);
    await fs.copyFile(path.join(kroot, 'boot', `vmlinuz-${kver}`), meta.kernel);
    await fs.rename(initrdTmp, meta.initrd);
    meta.buildSeconds = (Date.now() - started) / 1000;
    await fs.writeFile(`${metaPath(cacheDir, name)}.tmp`, `${JSON.stringify(meta, null, 2)}\n`);
    await fs.rename(`${metaPath(cacheDir, name)}.tmp`, metaPath(cacheDir, name));
    log(`image ${name}: built in ${meta.buildSeconds.toFixed(1)} s`);
    return { meta, cached: false };
  } finally {
    await fs.rm(work, { recursive: true, force: true });
  }
}

/** Marker snapshot recording which inputs a golden volume was imported from. */
export function inputSnapshotName(inputHash: string): string {
  return `input-${inputHash.slice(0, 16)}`;
}
