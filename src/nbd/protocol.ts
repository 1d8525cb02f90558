/**
 * NBD wire constants, spelled as in the protocol spec (doc/proto.md of the
 * NetworkBlockDevice project, fixed newstyle). Values only: no logic here.
 * Internal limits derived from them live at the bottom, apart from the wire.
 */

// ---- Magic numbers -------------------------------------------------------

/** "NBDMAGIC", first 8 bytes of every greeting. */
export const NBDMAGIC = 0x4e42444d41474943n;
/** "IHAVEOPT": newstyle greeting and every option request. */
export const IHAVEOPT = 0x49484156454f5054n;
/** Magic of every option reply. */
export const NBD_REP_MAGIC = 0x0003e889045565a9n;
/** Magic of every transmission request. */
export const NBD_REQUEST_MAGIC = 0x25609513;
/** Magic of a simple reply. */
export const NBD_SIMPLE_REPLY_MAGIC = 0x67446698;
/** Magic of a structured reply chunk. */
export const NBD_STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// ---- Handshake flags (server, u16) ----------------------------------------

/** Server speaks fixed newstyle. */
export const NBD_FLAG_FIXED_NEWSTYLE = 1 << 0;
/** Server can omit the 124 zero bytes after EXPORT_NAME. */
export const NBD_FLAG_NO_ZEROES = 1 << 1;

// ---- Client flags (u32) ----------------------------------------------------

/** Client speaks fixed newstyle. */
export const NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0;
/** Client wants no zero padding after EXPORT_NAME. */
export const NBD_FLAG_C_NO_ZEROES = 1 << 1;

// ---- Transmission flags (u16) ----------------------------------------------

/** Always set: the other flags are meaningful. */
export const NBD_FLAG_HAS_FLAGS = 1 << 0;
/** Export is read-only. */
export const NBD_FLAG_READ_ONLY = 1 << 1;
/** Server supports NBD_CMD_FLUSH. */
export const NBD_FLAG_SEND_FLUSH = 1 << 2;
/** Server supports NBD_CMD_FLAG_FUA. */
export const NBD_FLAG_SEND_FUA = 1 << 3;
/** Export behaves like a rotational medium. */
export const NBD_FLAG_ROTATIONAL = 1 << 4;
/** Server supports NBD_CMD_TRIM. */
export const NBD_FLAG_SEND_TRIM = 1 << 5;
/** Server supports NBD_CMD_WRITE_ZEROES. */
export const NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6;
/** Server supports NBD_CMD_FLAG_DF (only with structured replies). */
export const NBD_FLAG_SEND_DF = 1 << 7;
/** FLUSH/FUA on one connection covers all connections to the export. */
export const NBD_FLAG_CAN_MULTI_CONN = 1 << 8;
/** Server supports NBD_CMD_RESIZE (extension; not advertised). */
export const NBD_FLAG_SEND_RESIZE = 1 << 9;
/** Server supports NBD_CMD_CACHE. */
export const NBD_FLAG_SEND_CACHE = 1 << 10;
/** Server supports NBD_CMD_FLAG_FAST_ZERO. */
export const NBD_FLAG_SEND_FAST_ZERO = 1 << 11;

// ---- Option types ---------------------------------------------------------

/** Choose an export and enter transmission (no error reply possible). */
export const NBD_OPT_EXPORT_NAME = 1;
/** Abort the negotiation. */
export const NBD_OPT_ABORT = 2;
/** List the exports. */
export const NBD_OPT_LIST = 3;
/** Withdrawn. */
export const NBD_OPT_PEEK_EXPORT = 4;
/** Upgrade the connection to TLS in-band. */
export const NBD_OPT_STARTTLS = 5;
/** Describe an export. */
export const NBD_OPT_INFO = 6;
/** Describe an export and enter transmission. */
export const NBD_OPT_GO = 7;
/** Use structured replies in transmission. */
export const NBD_OPT_STRUCTURED_REPLY = 8;
/** List metadata contexts. */
export const NBD_OPT_LIST_META_CONTEXT = 9;
/** Select metadata contexts for BLOCK_STATUS. */
export const NBD_OPT_SET_META_CONTEXT = 10;
/** 32-byte headers (experimental; answered with ERR_UNSUP). */
export const NBD_OPT_EXTENDED_HEADERS = 11;

// ---- Option reply types ---------------------------------------------------

/** Success; ends a reply list. */
export const NBD_REP_ACK = 1;
/** One export in a LIST reply. */
export const NBD_REP_SERVER = 2;
/** One information item in an INFO/GO reply. */
export const NBD_REP_INFO = 3;
/** One metadata context. */
export const NBD_REP_META_CONTEXT = 4;
/** Bit 31 marks an error reply. */
export const NBD_REP_FLAG_ERROR = 0x80000000;
/** Option not supported. */
export const NBD_REP_ERR_UNSUP = 0x80000001;
/** Forbidden by policy. */
export const NBD_REP_ERR_POLICY = 0x80000002;
/** Syntactically or semantically invalid option. */
export const NBD_REP_ERR_INVALID = 0x80000003;
/** Not supported on this platform. */
export const NBD_REP_ERR_PLATFORM = 0x80000004;
/** TLS must be negotiated first. */
export const NBD_REP_ERR_TLS_REQD = 0x80000005;
/** No such export. */
export const NBD_REP_ERR_UNKNOWN = 0x80000006;
/** Server shutting down. */
export const NBD_REP_ERR_SHUTDOWN = 0x80000007;
/** Client must ask for NBD_INFO_BLOCK_SIZE. */
export const NBD_REP_ERR_BLOCK_SIZE_REQD = 0x80000008;
/** Request too big. */
export const NBD_REP_ERR_TOO_BIG = 0x80000009;

// ---- Info types -----------------------------------------------------------

/** u64 size, u16 transmission flags. */
export const NBD_INFO_EXPORT = 0;
/** Canonical export name. */
export const NBD_INFO_NAME = 1;
/** Human-readable description. */
export const NBD_INFO_DESCRIPTION = 2;
/** u32 minimum, preferred, maximum payload block sizes. */
export const NBD_INFO_BLOCK_SIZE = 3;

// ---- Commands -------------------------------------------------------------

/** Read. */
export const NBD_CMD_READ = 0;
/** Write (payload follows the header). */
export const NBD_CMD_WRITE = 1;
/** Soft disconnect (no reply). */
export const NBD_CMD_DISC = 2;
/** Make replied writes durable. */
export const NBD_CMD_FLUSH = 3;
/** Discard. */
export const NBD_CMD_TRIM = 4;
/** Prefetch hint. */
export const NBD_CMD_CACHE = 5;
/** Write zeroes without a payload. */
export const NBD_CMD_WRITE_ZEROES = 6;
/** Query metadata (base:allocation). */
export const NBD_CMD_BLOCK_STATUS = 7;

// ---- Command flags --------------------------------------------------------

/** Force unit access: reply only once durable. */
export const NBD_CMD_FLAG_FUA = 1 << 0;
/** WRITE_ZEROES: do not punch a hole. */
export const NBD_CMD_FLAG_NO_HOLE = 1 << 1;
/** READ: at most one content chunk. */
export const NBD_CMD_FLAG_DF = 1 << 2;
/** BLOCK_STATUS: exactly one extent. */
export const NBD_CMD_FLAG_REQ_ONE = 1 << 3;
/** WRITE_ZEROES: fail fast with ENOTSUP unless zeroing is fast. */
export const NBD_CMD_FLAG_FAST_ZERO = 1 << 4;

// ---- Structured replies ---------------------------------------------------

/** Last chunk of a reply. */
export const NBD_REPLY_FLAG_DONE = 1 << 0;
/** Empty final chunk. */
export const NBD_REPLY_TYPE_NONE = 0;
/** u64 offset + data. */
export const NBD_REPLY_TYPE_OFFSET_DATA = 1;
/** u64 offset + u32 hole size. */
export const NBD_REPLY_TYPE_OFFSET_HOLE = 2;
/** u32 context id + n x {u32 length, u32 flags}. */
export const NBD_REPLY_TYPE_BLOCK_STATUS = 5;
/** u32 error, u16 message length, message. */
export const NBD_REPLY_TYPE_ERROR = 0x8001;
/** Like ERROR plus a u64 offset. */
export const NBD_REPLY_TYPE_ERROR_OFFSET = 0x8002;

// ---- base:allocation ------------------------------------------------------

/** Name of the one metadata context we serve. */
export const BASE_ALLOCATION = 'base:allocation';
/** Extent is not allocated. */
export const NBD_STATE_HOLE = 1 << 0;
/** Extent reads as zeroes. */
export const NBD_STATE_ZERO = 1 << 1;

// ---- Errors (transmission) ------------------------------------------------

/** Operation not permitted. */
export const NBD_EPERM = 1;
/** Input/output error. */
export const NBD_EIO = 5;
/** Cannot allocate memory. */
export const NBD_ENOMEM = 12;
/** Invalid argument. */
export const NBD_EINVAL = 22;
/** No space left on device. */
export const NBD_ENOSPC = 28;
/** Value too large. */
export const NBD_EOVERFLOW = 75;
/** Operation not supported. */
export const NBD_ENOTSUP = 95;
/** Server is shutting down. */
export const NBD_ESHUTDOWN = 108;

// ---- Sizes (derived) ------------------------------------------------------

/** Server greeting: magic, IHAVEOPT, u16 handshake flags. */
export const GREETING_SIZE = 8 + 8 + 2;
/** Option request header: magic, u32 option, u32 length. */
export const OPTION_HEADER_SIZE = 8 + 4 + 4;
/** Option reply header: magic, u32 option, u32 type, u32 length. */
export const OPTION_REPLY_HEADER_SIZE = 8 + 4 + 4 + 4;
/** Transmission request header. */
export const REQUEST_SIZE = 4 + 2 + 2 + 8 + 8 + 4;
/** Simple reply header. */
export const SIMPLE_REPLY_SIZE = 4 + 4 + 8;
/** Structured reply chunk header. */
export const STRUCTURED_REPLY_SIZE = 4 + 2 + 2 + 8 + 4;
/** Zero padding after an EXPORT_NAME reply unless NO_ZEROES was agreed. */
export const EXPORT_NAME_PADDING = 124;
/** Longest string the spec allows (names, queries). */
export const MAX_STRING_SIZE = 4096;

/** Advertised minimum block size: any byte alignment works. */
export const MIN_BLOCK_SIZE = 1;
/** Advertised preferred block size: the store's block. */
export const PREFERRED_BLOCK_SIZE = 4096;
/** Advertised maximum payload: 32 MiB, the size every client handles. */
export const MAX_PAYLOAD_SIZE = 32 * 1024 * 1024;
