/**
 * A volume's manifest: what another host needs to rebuild a volume or
 * snapshot from chunks: its size and kind, the hash of every block, which
 * blocks are holes, and the snapshot it was branched from with that
 * snapshot's digest (so the receiver can branch from its own copy of it).
 *
 * Wire form (application/x-dormant-manifest): "DMNF", a u32 (big-endian)
 * length, that many bytes of JSON header (ManifestHeader), then 16 bytes of
 * hash per block, then one bit per block (LSB first), 1 = hole.
 * The digest is SHA-256 over the size, the hashes and the hole bits: two
 * volumes with equal digests read the same bytes.
 */
import crypto from 'node:crypto';
import {
  BLOCK_SIZE, DormantError, HASH_SIZE, isHole, splitName, type Store, type VolumeKind,
} from '../blockstore/index.js';

const MAGIC = Buffer.from('DMNF');
/** Largest header accepted (it is a few names and numbers). */
const MAX_HEADER = 64 * 1024;

/** The JSON part of a manifest. */
export interface ManifestHeader {
  version: 1;
  /** `vol` or `vol@snap` on the sending host. */
  name: string;
  kind: VolumeKind;
  size: number;
  blocks: number;
  /** The snapshot the volume was branched from (`golden@base`), or null. */
  origin: string | null;
  /** Digest of `origin` on the sending host (the receiver branches from its own copy only when the digests match). */
  originDigest: string | null;
  digest: string;
}

/** A decoded manifest. */
export interface Manifest {
  header: ManifestHeader;
  hashes: Buffer;
  holes: Uint8Array;
  /** On the sending host: the chunk id of each block it was built from (not sent). */
  ids?: Float64Array;
}

/** SHA-256 hex of a volume's content as size + hashes + hole bits. */
export function contentDigest(size: number, hashes: Buffer, holes: Uint8Array): string {
  const h = crypto.createHash('sha256');
  const sz = Buffer.alloc(8);
  sz.writeBigUInt64BE(BigInt(size));
  h.update(sz).update(hashes).update(holes);
  return h.digest('hex');
}

/** Snapshots are frozen: their digest is computed once per store and name (and creation time). */
const snapshotDigests = new WeakMap<Store, Map<string, string>>();

/** The digest of `name` in `store` (cached for snapshots). */
export async function digestOf(store: Store, name: string): Promise<string> {
  const entry = store.describe(name);
  if (!entry) throw new DormantError('ENOENT', `unknown volume '${name}'`, { volume: name });
  const frozen = splitName(name).snap !== null;
  let cache = snapshotDigests.get(store);
  if (!cache) snapshotDigests.set(store, cache = new Map());
  const key = `${name}\0${entry.created}`;
  if (frozen && cache.has(key)) return cache.get(key)!;
  const list = await store.blockHashes(name);
  const digest = contentDigest(entry.size, list.hashes, list.holes);
  if (frozen) cache.set(key, digest);
  return digest;
}

/** Builds the manifest of `name` (a volume or snapshot) of `store`. */
export async function buildManifest(store: Store, name: string): Promise<Manifest> {
  const entry = store.describe(name);
  if (!entry) throw new DormantError('ENOENT', `unknown volume '${name}'`, { volume: name });
  const list = await store.blockHashes(name);
  const origin = list.origin;
  const originDigest = origin !== null && store.describe(origin) ? await digestOf(store, origin) : null;
  return {
    header: {
      version: 1, name, kind: entry.kind, size: entry.size, blocks: list.blocks, origin, originDigest,
      digest: contentDigest(entry.size, list.hashes, list.holes),
    },
    hashes: list.hashes,
    holes: list.holes,
    ids: list.ids,
  };
}

/** The wire form of a manifest. */
export function encodeManifest(m: Manifest): Buffer {
  const header = Buffer.from(JSON.stringify(m.header));
  const len = Buffer.alloc(4);
  len.writeUInt32BE(header.length);
  return Buffer.concat([MAGIC, len, header, m.hashes, Buffer.from(m.holes.buffer, m.holes.byteOffset, m.holes.byteLength)]);
}

/** Decodes and checks a manifest (EINVAL on anything malformed, the digest included). */
export function decodeManifest(buf: Buffer): Manifest {
  const bad = (why: string) => new DormantError('EINVAL', `bad volume manifest: ${why}`);
  if (buf.length < 8 || !buf.subarray(0, 4).equals(MAGIC)) throw bad('not a dormant manifest');
  const len = buf.readUInt32BE(4);
  if (len > MAX_HEADER || 8 + len > buf.length) throw bad('header length out of range');
  let header: ManifestHeader;
  try {
    header = JSON.parse(buf.subarray(8, 8 + len).toString('utf8')) as ManifestHeader;
  } catch {
    throw bad('header is not JSON');
  }
  if (header?.version !== 1) throw bad(`unknown version ${String(header?.version)}`);
  const { size, blocks } = header;
  if (!Number.isSafeInteger(size) || size <= 0 || blocks !== Math.ceil(size / BLOCK_SIZE)) throw bad('size and block count disagree');
  if (header.kind !== 'disk' && header.kind !== 'memory') throw bad(`unknown kind ${String(header.kind)}`);
  if (typeof header.name !== 'string' || typeof header.digest !== 'string') throw bad('name or digest missing');
  if (header.origin !== null && typeof header.origin !== 'string') throw bad('origin is not a name');
  const hashBytes = blocks * HASH_SIZE;
  const holeBytes = Math.ceil(blocks / 8);
  if (buf.length !== 8 + len + hashBytes + holeBytes) throw bad(`${buf.length} bytes where ${8 + len + hashBytes + holeBytes} were expected`);
  const hashes = Buffer.from(buf.subarray(8 + len, 8 + len + hashBytes));
  const holes = new Uint8Array(buf.subarray(8 + len + hashBytes));
  if (contentDigest(size, hashes, holes) !== header.digest) throw bad('digest does not match its content');
  return { header, hashes, holes };
}

/** Blocks of a manifest that hold data (not holes). */
export function dataBlocks(m: Manifest): number {
  let n = 0;
  for (let b = 0; b < m.header.blocks; b++) if (!isHole(m.holes, b)) n++;
  return n;
}
