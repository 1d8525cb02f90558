/**
 * The fixed-newstyle handshake as a state machine, free of sockets.
 *
 * The connection feeds it the client flags, then one option at a time; each
 * call returns the replies to write and what to do next:
 *
 *   state          input                     -> next
 *   AWAIT_FLAGS    client flags ok           -> OPTIONS        (continue)
 *                  unknown / unadvertised bit -> close
 *   OPTIONS        LIST, INFO, SR, META, ...  -> OPTIONS        (continue)
 *                  unknown option             -> OPTIONS        (ERR_UNSUP)
 *                  STARTTLS (tls on/require)  -> OPTIONS        (starttls: caller upgrades, calls tlsStarted())
 *                  GO + ACK / EXPORT_NAME ok  -> TRANSMISSION   (transmit)
 *                  ABORT, EXPORT_NAME failure -> close
 *   non-fixed client: any option but EXPORT_NAME -> close (it cannot read error replies)
 *
 * Under tls 'require' every option but STARTTLS and ABORT gets ERR_TLS_REQD
 * until TLS is up (EXPORT_NAME: close). STARTTLS discards SR and
 * meta-context state. The machine owns no handle: a handle opened for GO or
 * EXPORT_NAME is handed to the caller inside the 'transmit' step.
 */
import type { VolumeHandle } from '../blockstore/index.js';
import type { ExportInfo, NbdBackend, NbdLogger } from './backend.js';
import * as C from './codec.js';
import { mapBackendErrorToRep } from './errors.js';
import * as P from './protocol.js';

/** off: NOTLS; on: TLS optional (all exports); require: FORCEDTLS. */
export type TlsMode = 'off' | 'on' | 'require';

/** Handshake flags this server advertises. */
export const SERVER_HANDSHAKE_FLAGS = P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES;
/** Context id we hand out for base:allocation. */
export const BASE_ALLOCATION_ID = 1;
/** Options accepted per connection before we call it a DoS and close. */
export const MAX_OPTIONS = 1024;

/** Transmission flags for an export. */
export function transmissionFlags(readOnly: boolean, structuredReplies: boolean): number {
  let f = P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_CACHE | P.NBD_FLAG_CAN_MULTI_CONN;
  if (structuredReplies) f |= P.NBD_FLAG_SEND_DF;
  if (readOnly) f |= P.NBD_FLAG_READ_ONLY;
  else f |= P.NBD_FLAG_SEND_TRIM | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_SEND_FAST_ZERO;
  return f;
}

/** What the transmission phase needs from the handshake. */
export interface NegotiatedExport {
  name: string;
  handle: VolumeHandle;
  size: number;
  readOnly: boolean;
  /** Transmission flags sent to the client. */
  flags: number;
  structuredReplies: boolean;
  /** base:allocation was selected for this export. */
  baseAllocation: boolean;
}

/** What the caller must do after feeding the machine one input. */
export type HandshakeStep =
  | { next: 'continue'; replies: Buffer[] }
  | { next: 'close'; replies: Buffer[]; reason: string }
  | { next: 'starttls'; replies: Buffer[] }
  | { next: 'transmit'; replies: Buffer[]; export: NegotiatedExport };

/** Configuration of a handshake. */
export interface HandshakeConfig {
  backend: NbdBackend;
  tlsMode: TlsMode;
  /** Export served for the empty name; none when unset. */
  defaultExport?: string;
  logger: NbdLogger;
}

const cont = (...replies: Buffer[]): HandshakeStep => ({ next: 'continue', replies });
const close = (reason: string, ...replies: Buffer[]): HandshakeStep => ({ next: 'close', replies, reason });

/** One connection's option negotiation. */
export class Handshake {
  private fixed = false;
  private noZeroes = false;
  private tlsActive = false;
  private structured = false;
  /** Export name (as sent) of the last SET_META_CONTEXT that selected base:allocation. */
  private metaExport: string | null = null;
  private options = 0;

  constructor(private readonly cfg: HandshakeConfig) {}

  /** The greeting the server sends first. */
  greeting(): Buffer {
    return C.encodeGreeting(SERVER_HANDSHAKE_FLAGS);
  }

  /** Feeds the client's u32 flags. */
  clientFlags(flags: number): HandshakeStep {
    const known = P.NBD_FLAG_C_FIXED_NEWSTYLE | P.NBD_FLAG_C_NO_ZEROES;
    if ((flags & ~known) !== 0) return close(`unknown client flags 0x${flags.toString(16)}`);
    this.fixed = (flags & P.NBD_FLAG_C_FIXED_NEWSTYLE) !== 0;
    this.noZeroes = (flags & P.NBD_FLAG_C_NO_ZEROES) !== 0;
    if (!this.fixed && this.cfg.tlsMode === 'require') return close('TLS required but client is not fixed newstyle');
    return cont();
  }

  /** Call once the TLS handshake succeeded: earlier negotiation state is void. */
  tlsStarted(): void {
    this.tlsActive = true;
    this.structured = false;
    this.metaExport = null;
  }

  /** Feeds one option request; never throws. */
  async option(option: number, data: Buffer): Promise<HandshakeStep> {
    if (++this.options > MAX_OPTIONS) return close('too many options');
    if (option === P.NBD_OPT_EXPORT_NAME) return this.exportName(data);
    if (!this.fixed) return close(`option ${option} from a non-fixed-newstyle client`);
    if (option === P.NBD_OPT_ABORT) return close('client aborted', C.encodeOptionReply(option, P.NBD_REP_ACK));
    if (option === P.NBD_OPT_STARTTLS) return this.startTls(data);
    if (this.cfg.tlsMode === 'require' && !this.tlsActive) {
      return cont(C.encodeOptionError(option, P.NBD_REP_ERR_TLS_REQD, 'TLS required'));
    }
    switch (option) {
      case P.NBD_OPT_LIST:
        return this.list(data);
      case P.NBD_OPT_INFO:
      case P.NBD_OPT_GO:
        return this.infoOrGo(option, data);
      case P.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return cont(C.encodeOptionError(option, P.NBD_REP_ERR_INVALID, 'unexpected data'));
        this.structured = true;
        return cont(C.encodeOptionReply(option, P.NBD_REP_ACK));
      case P.NBD_OPT_LIST_META_CONTEXT:
      case P.NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        return cont(C.encodeOptionError(option, P.NBD_REP_ERR_UNSUP, 'unsupported option'));
    }
  }

  private resolveName(name: string): string | null {
    if (name !== '') return name;
    return this.cfg.defaultExport ?? null;
  }

  private async describe(option: number, name: string): Promise<ExportInfo | Buffer> {
    const resolved = this.resolveName(name);
    if (resolved === null) return C.encodeOptionError(option, P.NBD_REP_ERR_UNKNOWN, 'no default export');
    try {
      const info = await this.cfg.backend.describeExport(resolved);
      return info ?? C.encodeOptionError(option, P.NBD_REP_ERR_UNKNOWN, 'unknown export');
    } catch (err) {
      return this.backendFailure(option, resolved, err);
    }
  }

  private backendFailure(option: number, name: string, err: unknown): Buffer {
    const m = mapBackendErrorToRep(err);
    if (m.unexpected) this.cfg.logger.error(`nbd: looking up export '${name}' failed`, err, { export: name });
    return C.encodeOptionError(option, m.rep, 'export unavailable');
  }

  private startTls(data: Buffer): HandshakeStep {
    const opt = P.NBD_OPT_STARTTLS;
    if (this.cfg.tlsMode === 'off') return cont(C.encodeOptionError(opt, P.NBD_REP_ERR_UNSUP, 'TLS not configured'));
    if (data.length !== 0) return cont(C.encodeOptionError(opt, P.NBD_REP_ERR_INVALID, 'unexpected data'));
    if (this.tlsActive) return cont(C.encodeOptionError(opt, P.NBD_REP_ERR_INVALID, 'TLS already active'));
    return { next: 'starttls', replies: [C.encodeOptionReply(opt, P.NBD_REP_ACK)] };
  }

  private async list(data: Buffer): Promise<HandshakeStep> {
    const opt = P.NBD_OPT_LIST;
    if (data.length !== 0) return cont(C.encodeOptionError(opt, P.NBD_REP_ERR_INVALID, 'unexpected data'));
    try {
      const exports = await this.cfg.backend.listExports();
      const replies = exports.map((e) => C.encodeRepServer(opt, e.name, e.description));
      replies.push(C.encodeOptionReply(opt, P.NBD_REP_ACK));
      return cont(...replies);
    } catch (err) {
      return cont(this.backendFailure(opt, '*', err));
    }
  }

  private async infoOrGo(option: number, data: Buffer): Promise<HandshakeStep> {
    const req = C.decodeExportRequest(data);
    if (typeof req === 'string') return cont(C.encodeOptionError(option, P.NBD_REP_ERR_INVALID, req));
    const info = await this.describe(option, req.name);
    if (Buffer.isBuffer(info)) return cont(info);
    let handle: VolumeHandle | null = null;
    if (option === P.NBD_OPT_GO) {
      try {
        handle = await this.cfg.backend.openExport(info.name);
      } catch (err) {
        return cont(this.backendFailure(option, info.name, err));
      }
      if (handle === null) return cont(C.encodeOptionError(option, P.NBD_REP_ERR_UNKNOWN, 'unknown export'));
    }
    const size = handle?.size ?? info.size;
    const readOnly = handle?.readOnly ?? info.readOnly;
    const flags = transmissionFlags(readOnly, this.structured);
    const replies = [C.encodeInfoExport(option, size, flags)];
    const asked = new Set(req.infos);
    if (asked.has(P.NBD_INFO_NAME)) replies.push(C.encodeInfoString(option, P.NBD_INFO_NAME, info.name));
    if (asked.has(P.NBD_INFO_DESCRIPTION)) {
      replies.push(C.encodeInfoString(option, P.NBD_INFO_DESCRIPTION, info.description));
    }
    if (asked.has(P.NBD_INFO_BLOCK_SIZE)) {
      replies.push(C.encodeInfoBlockSize(option, P.MIN_BLOCK_SIZE, P.PREFERRED_BLOCK_SIZE, P.MAX_PAYLOAD_SIZE));
    }
    replies.push(C.encodeOptionReply(option, P.NBD_REP_ACK));
    if (handle === null) return cont(...replies);
    return { next: 'transmit', replies, export: this.negotiated(req.name, info.name, handle, flags) };
  }

  private negotiated(asked: string, name: string, handle: VolumeHandle, flags: number): NegotiatedExport {
    return {
      name,
      handle,
      size: handle.size,
      readOnly: handle.readOnly,
      flags,
      structuredReplies: this.structured,
      baseAllocation: this.structured && this.metaExport !== null && this.metaExport === asked,
    };
  }

  private async exportName(data: Buffer): Promise<HandshakeStep> {
    if (this.cfg.tlsMode === 'require' && !this.tlsActive) return close('EXPORT_NAME before TLS');
    const asked = C.decodeString(data);
    if (asked === null) return close('EXPORT_NAME with an invalid name');
    const resolved = this.resolveName(asked);
    if (resolved === null) return close('EXPORT_NAME without a default export');
    let handle: VolumeHandle | null;
    try {
      handle = await this.cfg.backend.openExport(resolved);
    } catch (err) {
      this.backendFailure(P.NBD_OPT_EXPORT_NAME, resolved, err);
      return close(`EXPORT_NAME '${resolved}' failed`);
    }
    if (handle === null) return close(`EXPORT_NAME '${resolved}': unknown export`);
    const flags = transmissionFlags(handle.readOnly, this.structured);
    const reply = C.encodeExportNameReply(handle.size, flags, this.noZeroes);
    return { next: 'transmit', replies: [reply], export: this.negotiated(asked, resolved, handle, flags) };
  }

  private async metaContext(option: number, data: Buffer): Promise<HandshakeStep> {
    const set = option === P.NBD_OPT_SET_META_CONTEXT;
    if (set) this.metaExport = null; // SET replaces the selection, even when it fails
    if (set && !this.structured) {
      return cont(C.encodeOptionError(option, P.NBD_REP_ERR_INVALID, 'structured replies not negotiated'));
    }
    const req = C.decodeMetaContextRequest(data);
    if (typeof req === 'string') return cont(C.encodeOptionError(option, P.NBD_REP_ERR_INVALID, req));
    const info = await this.describe(option, req.name);
    if (Buffer.isBuffer(info)) return cont(info);
    const match = set
      ? req.queries.includes(P.BASE_ALLOCATION)
      : req.queries.length === 0 || req.queries.some((q) => q === 'base:' || q === P.BASE_ALLOCATION);
    const replies: Buffer[] = [];
    if (match) {
      replies.push(C.encodeRepMetaContext(option, set ? BASE_ALLOCATION_ID : 0, P.BASE_ALLOCATION));
      if (set) this.metaExport = req.name;
    }
    replies.push(C.encodeOptionReply(option, P.NBD_REP_ACK));
    return cont(...replies);
  }
}
