/**
 * Sizes and format numbers of the store, each derived from the ones above it.
 */

/** One block = one guest page, so disk blocks and memory pages can share chunks. */
export const BLOCK_SIZE = 4096;
/** log2(BLOCK_SIZE), for shifts. */
export const BLOCK_SHIFT = 12;
/** Blocks stored in one segment file before a new one is started. */
export const BLOCKS_PER_SEGMENT = 16384;
/** Bytes of the header at the start of every segment file (one block, so data stays aligned). */
export const SEGMENT_HEADER_SIZE = BLOCK_SIZE;
/** Largest segment file: header + BLOCKS_PER_SEGMENT chunks (64 MiB of data). */
export const SEGMENT_MAX_BYTES = SEGMENT_HEADER_SIZE + BLOCKS_PER_SEGMENT * BLOCK_SIZE;
/** Bytes of a chunk name (xxh3-128). */
export const HASH_SIZE = 16;
/** Version of the on-disk format (index layout + segment header). */
export const FORMAT_VERSION = 1;
/** Magic at the start of every segment file. */
export const SEGMENT_MAGIC = 'DORMSEG\n';
/** Largest volume: 2^50 bytes (1 PiB); keeps byte offsets exact in a JS number. */
export const MAX_VOLUME_SIZE = 2 ** 50;
/**
 * Pending (acknowledged, not yet flushed) blocks that trigger a background
 * flush: 2 GiB of writes. A block rewritten while pending overwrites its own
 * slot, so a working set up to this size rewritten between flushes costs
 * page cache, not disk.
 */
export const WRITEBACK_MAX_BLOCKS = 524288;
/**
 * ...or pages of the pending-entry table (512 bytes per 32 consecutive
 * blocks: 64 MiB), which scattered writes fill before the block count.
 */
export const WRITEBACK_MAX_PAGES = 131072;
/**
 * Pending writes are flushed in the background when the oldest is this old
 * (as the kernel writes back dirty pages after 30 s), or earlier when writes
 * pause (WRITEBACK_IDLE_MS): syncing is then not in any writer's way. Clients
 * that need durability ask for it (FLUSH, FUA, fsync).
 */
export const WRITEBACK_INTERVAL_MS = 30000;
/** Pending writes are flushed once no write came for this long. */
export const WRITEBACK_IDLE_MS = 1000;
/** Pending entries a flush commits per LMDB transaction (bounds the synchronous part of each, during which no request is served). */
export const COMMIT_SLICE_ENTRIES = 16384;
/** Read fingerprints are written to the index at most this often (and at close). */
export const PRINTS_INTERVAL_MS = 30000;
/** A segment whose live fraction falls below this is compacted by GC. */
export const COMPACT_LIVE_FRACTION = 0.5;
/** A block of zeroes, for comparisons and hole reads. Never write into it. */
export const ZERO_BLOCK: Buffer = Buffer.alloc(BLOCK_SIZE);
