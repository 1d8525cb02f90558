/**
 * A volume's manifest: what another host needs to rebuild a volume or
 * snapshot from chunks: its size and kind, the hash of every block, which
 * blocks are holes, and the snapshot it was branched from with that
 * snapshot's digest (so the receiver can branch from its own copy of it).
 *
 * Wire form (application/x-dormant-manifest, framed as frame.ts says):
 * "DMNF", the JSON header (ManifestHeader), then 16 bytes of hash per
 * block, then one bit per block (LSB first), 1 = hole.
 * The digest is SHA-256 over the size, the hashes and the hole bits: two
 * volumes with equal digests read the same bytes.
 */
import crypto from 'node:crypto';
import { BLOCK_SIZE, DormantError, HASH_SIZE, splitName, type Store, type VolumeKind } from '../blockstore/index.js';
import { frame, unframe } from './frame.js';

const MAGIC = 'DMNF';

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
  const { out, body } = frame(MAGIC, m.header, m.hashes.length + m.holes.byteLength);
  m.hashes.copy(out, body);
  out.set(m.holes, body + m.hashes.length);
  return out;
}

/** Decodes and checks a manifest (EINVAL on anything malformed, the digest included). */
export function decodeManifest(buf: Buffer): Manifest {
  const f = unframe(buf, MAGIC, 'manifest');
  const { bad } = f;
  const header = f.header as ManifestHeader;
  if (header?.version !== 1) throw bad(`unknown version ${String(header?.version)}`);
  const { size, blocks } = header;
  if (!Number.isSafeInteger(size) || size <= 0 || blocks !== Math.ceil(size / BLOCK_SIZE)) throw bad('size and block count disagree');
  if (header.kind !== 'disk' && header.kind !== 'memory') throw bad(`unknown kind ${String(header.kind)}`);
  if (typeof header.name !== 'string' || typeof header.digest !== 'string') throw bad('name or digest missing');
  if (header.origin !== null && typeof header.origin !== 'string') throw bad('origin is not a name');
  const hashBytes = blocks * HASH_SIZE;
  const holeBytes = Math.ceil(blocks / 8);
  if (f.body.length !== hashBytes + holeBytes) throw bad(`${f.body.length} bytes of body where ${hashBytes + holeBytes} were expected`);
  const hashes = Buffer.from(f.body.subarray(0, hashBytes));
  const holes = new Uint8Array(f.body.subarray(hashBytes));
  if (contentDigest(size, hashes, holes) !== header.digest) throw bad('digest does not match its content');
  return { header, hashes, holes };
}
