/**
 * Public surface of the block store: open a store, open volumes, and the
 * shared error type. Everything else in this folder is internal.
 */
export { Store, type StoreOptions } from './store.js';
export { DormantError, isDormantError, USER_ERROR_CODES, type ErrorCode } from './errors.js';
export { BLOCK_SIZE, HASH_SIZE, MAX_VOLUME_SIZE, FORMAT_VERSION } from './constants.js';
export { xxh3, type HashFunction } from './hash.js';
export { checkName, splitName } from './catalog.js';
export type {
  VolumeKind, VolumeHandle, ReadOptions, WriteOptions, Extent, VolumeEntry, VolumeSummary, VolumeInfo, StoreStats, GcResult,
  FingerprintEntry, StoredRange, Locality, RelocatorStats, BlockHashes, StoredFile, ChunkUser, DamagedChunk, DataReport, VerifyOptions,
} from './types.js';
export type { RelocateResult } from './locality.js';
export { isHole, type BlockHashList } from './inventory.js';
export { importFile, exportFile, type ProgressFn, type RawImageResult } from './raw-image.js';
export { IMAGE_FORMATS, checkFormat, isNbdUri, probeFormat, type ImageFormat } from './image-format.js';
export { LOG_LEVELS, asWarn, asError, type LogLevel, type LogFields, type LogFn } from './log.js';
export { AbsentBlocks, MAX_FETCH, type ChunkSource, type FillKind, type AbsentStats } from './absent.js';
