/**
 * The public shapes of the block store: what the NBD server, the FUSE view,
 * the pager and the CLI see. Every method of `VolumeHandle` is required, so
 * a new view (snapshot, remote parent, read-only) has to decide each one.
 */

/** What a volume holds. `memory` volumes back VM RAM through the FUSE view. */
export type VolumeKind = 'disk' | 'memory';

/** Hashes (XXH3-128, 16 bytes per 4 KiB block) and zero flags (1 = all zeroes) of the blocks of a write. */
export interface BlockHashes { hashes: Buffer; zero: Uint8Array }

/** Options for a write-like call. `fua`: durable before the promise resolves. */
export interface WriteOptions {
  fua?: boolean;
  /**
   * The payload's block hashes, computed where it arrived (native
   * `recvStream`, as `hashBlocks` does): a write of a landing buffer
   * (`landing`) then skips hashing it. The store trusts them: a wrong hash
   * would file a block under another block's content.
   */
  hashed?: BlockHashes;
}

/** Options for a read. `label` attributes the read to a client (a VM) for read fingerprints. */
export interface ReadOptions {
  /** Client the read is attributed to (read fingerprints). */
  label?: string;
  /** Read into this buffer (exactly `length` bytes long) instead of a new one; it is also the result. */
  into?: Buffer;
  /**
   * The caller only reads the result and drops it soon (a reply being
   * sent): when the range is one run of stored chunks, the result may be a
   * read-only view of the store's file mapping instead of a copy. Writing
   * into such a view crashes the process.
   */
  view?: boolean;
  /**
   * With `view`: called synchronously, before `read` returns, when the
   * result is a view (checked against its hashes), with where its bytes lie
   * in a store file. A view holds committed chunks only (pending ones are
   * copied: their slots may be rewritten or reused), so it never holds an
   * all-zero block, and its bytes are never rewritten in place (GC only ever
   * deletes a whole file): they may be sent with sendfile. The descriptor
   * is valid only during the call.
   */
  stored?: (view: Buffer, file: StoredFile) => void;
}

/** Where a run of committed chunks lies in a store file (see ReadOptions.stored). */
export interface StoredFile {
  fd: number;
  position: number;
}

/** A run of blocks that are all data or all hole (for NBD BLOCK_STATUS, `info`). */
export interface Extent {
  offset: number;
  length: number;
  /** true: reads as zeroes and takes no space. */
  hole: boolean;
}

/**
 * An open volume or snapshot. Byte ranges need no alignment; the store does
 * read-modify-write on partial blocks. Ranges must lie inside `size`
 * (ERANGE otherwise). Snapshots are read-only (EROFS on writes).
 */
export interface VolumeHandle {
  /** `vol` or `vol@snap`. */
  readonly name: string;
  readonly kind: VolumeKind;
  readonly readOnly: boolean;
  /** Current size in bytes. */
  readonly size: number;
  read(offset: number, length: number, opts?: ReadOptions): Promise<Buffer>;
  /**
   * `read` with `view`, done at once when it can be: the range is whole
   * blocks of stored chunks in one run and the page cache is warm. Null
   * when it cannot (then use `read`). Throws what `read` would reject with.
   * For request handlers: no promise on the common path.
   */
  readView(offset: number, length: number, opts?: ReadOptions): Buffer | null;
  /**
   * The range as one run of committed chunks in one segment file, for a
   * reader that reads the bytes and checks them against `hashes` itself
   * (the FUSE view answers reads this way on libuv's pool); null when it is
   * not whole blocks in one such run (then use `read`). The file stays open
   * until `release()`, which must be called once.
   */
  readFile(offset: number, length: number, opts?: ReadOptions): StoredRange | null;
  /** Writes `data` at `offset`; the caller may reuse `data` once the promise settles. */
  write(offset: number, data: Buffer, opts?: WriteOptions): Promise<void>;
  /**
   * `write` (without FUA) done at once when it can be (a small write, no
   * earlier write of this handle still being hashed): true when it is
   * done, a promise when it is done but the writer must wait for it
   * (write-back backpressure), false when nothing was done (then use
   * `write`). Throws what `write` would reject with.
   */
  writeNow(offset: number, data: Buffer): boolean | Promise<void>;
  /**
   * A buffer in the store's own page cache for the payload of a coming
   * `write(offset, <length bytes>)`, so that the bytes, read into it from
   * a socket, are stored where they land (no copy, no file write after
   * them); null when the store cannot offer one (then write as usual).
   * Pass the buffer itself to `write` once it is full, or to `abandon` if
   * it never will be; nothing else may write into it, and nothing may be
   * kept of it afterwards.
   */
  landing(offset: number, length: number): Buffer | null;
  /** Gives back a `landing` buffer whose write never comes: call only once nothing can still write into it. */
  abandon(buffer: Buffer): void;
  /** Discard: the range reads as zeroes afterwards. */
  trim(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  /** Write zeroes (stored as holes: zero blocks are never stored). */
  zero(offset: number, length: number, opts?: WriteOptions): Promise<void>;
  /** Durability point: every write that resolved before this call survives a crash once it resolves. */
  flush(): Promise<void>;
  /** Hint that the range will be read soon (NBD CACHE). */
  cache(offset: number, length: number): Promise<void>;
  /** Data/hole map of a range, merged into maximal runs. */
  extents(offset: number, length: number): Promise<Extent[]>;
  /** Releases the handle; the volume can then be removed. */
  close(): Promise<void>;
}

/** A volume or snapshot as the catalog knows it (cheap: no space accounting). */
export interface VolumeEntry {
  name: string;
  type: 'volume' | 'snapshot';
  kind: VolumeKind;
  size: number;
  /** `vol@snap` this was branched from, or null. */
  origin: string | null;
  created: string;
}

/** One row of `dormant list`. Byte counts. */
export interface VolumeSummary extends VolumeEntry {
  /** Bytes of non-hole blocks visible in this volume (own + inherited). */
  allocated: number;
  /** Bytes of blocks no other volume or snapshot shares (freed by removing only this one). */
  unique: number;
  /** allocated - unique: shared with its origin, its snapshots or deduplicated with others. */
  shared: number;
}

/** `dormant info`. */
export interface VolumeInfo extends VolumeSummary {
  /** Origins up to the root: [`golden@base`, ...]. */
  parentChain: string[];
  blocks: {
    total: number;
    allocated: number;
    /** Blocks written in this volume's own lineage (not inherited). */
    own: number;
    /** Blocks visible through the origin chain. */
    inherited: number;
    holes: number;
  };
  /** For a volume: its snapshots. */
  snapshots: string[];
  /** Volumes branched from this snapshot (or from this volume's snapshots). */
  branches: string[];
  openHandles: number;
  /** How scattered its committed blocks lie (a sample). */
  locality: Locality;
}

/** How scattered a name's blocks lie: a sample of whole pages of its mapped blocks. */
export interface Locality {
  /** Mapped blocks looked at. */
  sampledBlocks: number;
  /** Runs of consecutive slots among them (one more at each hole, jump or page start). */
  runs: number;
  /** Of the pairs of neighbouring mapped blocks, the share whose chunks do not lie one after the other (0: in order). */
  fragmentation: number;
}

/** Counters of the background loop. */
export interface RelocatorStats {
  /** Extents waiting or being relocated (0: the loop is idle). */
  queued: number;
  /** Extents looked at, and chunks moved, since the store opened. */
  extents: number;
  chunksMoved: number;
}


/** VolumeHandle.readFile: where a range lies, and what its blocks must hash to. */
export interface StoredRange {
  fd: number;
  /** Byte position of the range in the file. */
  position: number;
  /** XXH3-128 of each 4096-byte block, 16 bytes each, in order. */
  hashes: Buffer;
  /** Where the range starts (for an error message). */
  segment: number;
  slot: number;
  release(): void;
}

/** `dormant stats`. */
export interface StoreStats {
  path: string;
  formatVersion: number;
  volumes: number;
  snapshots: number;
  /** Sum of allocated bytes of all volumes and snapshots, as their readers see them. */
  logicalBytes: number;
  /** Bytes of distinct chunks referenced by the index. */
  storedBytes: number;
  /** logicalBytes / storedBytes (1 when nothing is stored). */
  dedupRatio: number;
  chunks: number;
  segments: number;
  /** Sum of segment file sizes (including garbage GC has not reclaimed yet). */
  segmentBytes: number;
  /** segmentBytes - storedBytes, roughly what GC could reclaim. */
  garbageBytes: number;
  indexBytes: number;
  /** How scattered the volumes' committed blocks lie (a sample over all of them). */
  locality: Locality;
  /** The background relocation's counters, when it is on (the daemon). */
  relocation: RelocatorStats | null;
}

/** What `gc` did. */
export interface GcResult {
  deadEntries: number;
  chunksFreed: number;
  segmentsCompacted: number;
  segmentsDeleted: number;
  bytesReclaimed: number;
}

/** Per client label: which chunks it read and how often. */
export interface FingerprintEntry {
  /** xxh3-128 of the chunk, hex. */
  hash: string;
  count: number;
}

/** A volume or snapshot that reads a chunk, at byte `offset`. */
export interface ChunkUser { name: string; offset: number }

/** A committed chunk whose stored bytes do not match its hash, or cannot be read. */
export interface DamagedChunk {
  chunk: number;
  /** xxh3-128 of its content, hex. */
  hash: string;
  segment: number;
  slot: number;
  /** What is wrong, e.g. "does not match its checksum". */
  problem: string;
  /** Volumes and snapshots that read it, and where (the first few). */
  users: ChunkUser[];
  /** Users beyond those listed. */
  moreUsers: number;
  /** Rewritten from a good copy (`--repair`). */
  repaired: boolean;
  /** With repair: what was done, or why it could not be. */
  repair?: string;
}

/** What reading every chunk back found (`check --data`, `scrub`). */
export interface DataReport {
  /** Chunks read and checked, and their bytes. */
  chunks: number;
  bytes: number;
  seconds: number;
  damaged: DamagedChunk[];
  repaired: number;
  /** Segment files whose header fails its checks (the store cannot read any of their chunks). */
  badSegments: string[];
  /** False when the run stopped early (the store closed, or the caller went away). */
  complete: boolean;
}

/** Options of a data verification. */
export interface VerifyOptions {
  /** Rewrite each damaged chunk from another stored copy of its content that verifies. */
  repair?: boolean;
  /** Bytes read per second at most (0 or absent: no bound). */
  rate?: number;
  /** Bytes checked so far, of the total. */
  progress?: (done: number, total: number) => void;
  /** Stops the run (between batches) when aborted. */
  signal?: AbortSignal;
}
