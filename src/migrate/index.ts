/**
 * Moving volumes and running VMs between hosts: a volume's
 * manifest (block hashes, holes, origin), the receiving side that rebuilds
 * a volume from the chunks it lacks and commits it atomically, pull and
 * push over another host's API, and the client of that API.
 */
export { buildManifest, decodeManifest, encodeManifest, contentDigest, type Manifest, type ManifestHeader } from './manifest.js';
export { IncomingVolume, STAGING_SUFFIX, type TransferResult } from './incoming.js';
export { pull, push, readChunks, Receiver } from './transfer.js';
export { request, requestJson, readTokenFile, checkHostUrl, type RemoteHost } from './remote.js';
export { migrateVm, type VmMoveResult } from './vm-move.js';
export { IncomingVms } from './vm-arrive.js';
export type { MovableVms, MovableRecord, MoveMode } from './movable.js';
export { LazyIncoming, LAZY_DIR, type LazyCopyStatus, type LazySource } from './lazy.js';
export { LazyLeases } from './lazy-source.js';
