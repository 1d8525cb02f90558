/**
 * TLS for NBD's in-band upgrade (STARTTLS): the server's credentials, the
 * PSK file, and the upgrade of one connection's socket.
 *
 * Credentials (`TlsCredentials.load`, at server start):
 *   x509  a certificate and key (PEM). With `verifyPeer` the client must
 *         present a certificate that chains to `caFile`, else its
 *         connection ends (qemu-nbd's verify-peer=yes).
 *   psk   a PSK file in GnuTLS psktool format (`username:hexkey` per line,
 *         the file qemu-nbd and nbdkit read, so their clients' key files
 *         work as they are); no certificate.
 * The PSK file is read again before each upgrade, as GnuTLS does for those
 * servers: a key added or removed counts from the next STARTTLS on, and a
 * file that turned unreadable or malformed fails that upgrade only.
 *
 * One upgrade: `prepare()` (before the STARTTLS ACK, so no byte of the
 * client's TLS hello can arrive while the file is read) -> `upgrade(raw)`:
 * a TLSSocket over the plaintext socket -> 'secure', then the peer check
 * of verifyPeer -> upgraded; or 'error' / 'close' -> failed, with a reason
 * the connection logs. Node checks a client certificate's chain only for
 * sockets a tls.Server accepted; here the TLSSocket wraps a socket in
 * mid-stream, so after 'secure' the chain is judged by OpenSSL's own
 * verify result (node-internals.ts). A missing certificate already fails
 * inside OpenSSL (requestCert + rejectUnauthorized).
 *
 * No session is resumed (no tickets): every connection makes a full
 * handshake, its certificate checked again, its key looked up in the PSK
 * file as it is now. A resumption offered with a ticket would also fail
 * outright: a context used outside a tls.Server has no session id context,
 * which OpenSSL needs to resume a session whose client certificate it
 * checked.
 *
 * PSK suites: TLS 1.3 takes an external PSK with its usual SHA-256 suites
 * (what OpenSSL assumes for a key from the server callback); TLS 1.2 needs
 * the PSK suites that Node's default list leaves out, listed here.
 */
import { constants as cryptoConstants } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import type { Socket } from 'node:net';
import * as tls from 'node:tls';
import type { TlsMode } from './handshake.js';
import { peerVerifyError } from './node-internals.js';

/** TLS configuration of an NBD server. */
export interface NbdTlsOptions {
  /** off: NOTLS; on: TLS optional; require: every option needs TLS first. */
  mode: TlsMode;
  /** x509 certificate (PEM); with keyFile, unless pskFile is given. */
  certFile?: string;
  /** Private key of certFile (PEM). */
  keyFile?: string;
  /** Require a client certificate that chains to caFile. */
  verifyPeer?: boolean;
  /** CA certificates (PEM) that client certificates must chain to; only with verifyPeer. */
  caFile?: string;
  /** Pre-shared keys, GnuTLS psktool format (`username:hexkey` lines), instead of certificates. */
  pskFile?: string;
}

/** TLS 1.2 suites offered with PSK: forward-secret first, AEAD or SHA-2 only. */
const PSK_TLS12_CIPHERS = [
  'ECDHE-PSK-CHACHA20-POLY1305', 'ECDHE-PSK-AES256-CBC-SHA384', 'ECDHE-PSK-AES128-CBC-SHA256',
  'DHE-PSK-CHACHA20-POLY1305', 'DHE-PSK-AES256-GCM-SHA384', 'DHE-PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305', 'PSK-AES256-GCM-SHA384', 'PSK-AES128-GCM-SHA256',
].join(':');
/** No session tickets: every connection makes a full handshake (see the note above). */
const SECURE_OPTIONS = cryptoConstants.SSL_OP_NO_TICKET;
/** Longest key OpenSSL takes from a PSK callback (PSK_MAX_PSK_LEN). */
export const MAX_PSK_BYTES = 512;
/** Longest client-chosen text (identity, certificate subject) put in a log line. */
const MAX_LOGGED_TEXT = 100;

/** Keys by username, as read from a PSK file. */
export type PskKeys = ReadonlyMap<string, Buffer>;

/**
 * Parses a PSK file (GnuTLS psktool format): `username:hexkey` per line;
 * blank lines and lines starting with `#` are skipped; the first line of a
 * username wins, as in GnuTLS. Returns the keys, or why the file is bad.
 * `text` is the file read as latin1, so usernames compare byte for byte
 * with the identity OpenSSL hands over.
 */
export function parsePskFile(text: string): PskKeys | string {
  const keys = new Map<string, Buffer>();
  const lines = text.split('\n');
  for (const [i, raw] of lines.entries()) {
    const line = raw.replace(/\r$/, '');
    if (line.trim() === '' || line.startsWith('#')) continue;
    const colon = line.indexOf(':');
    const user = colon < 0 ? '' : line.slice(0, colon);
    const hex = colon < 0 ? '' : line.slice(colon + 1).trim();
    if (user === '') return `line ${i + 1}: expected username:hexkey`;
    if (!/^([0-9a-fA-F]{2})+$/.test(hex)) return `line ${i + 1}: the key of '${printable(user)}' is not an even number of hex digits`;
    if (hex.length / 2 > MAX_PSK_BYTES) return `line ${i + 1}: the key of '${printable(user)}' is longer than ${MAX_PSK_BYTES} bytes`;
    if (!keys.has(user)) keys.set(user, Buffer.from(hex, 'hex'));
  }
  if (keys.size === 0) return 'no keys';
  return keys;
}

/** Client-chosen text made safe for one log line: control characters replaced, length capped. */
function printable(s: string): string {
  const clean = s.replace(/[\u0000-\u001f\u007f-\u009f]/g, '?');
  return clean.length > MAX_LOGGED_TEXT ? `${clean.slice(0, MAX_LOGGED_TEXT)}...` : clean;
}

/** How one upgrade ended: the TLS socket and who the peer proved to be, or why it failed. */
export type TlsOutcome =
  | { ok: true; socket: tls.TLSSocket; summary: string }
  | { ok: false; reason: string };

/** What one upgrade needs, read before the STARTTLS ACK; `upgrade` runs the TLS handshake. */
export interface PreparedUpgrade {
  upgrade(raw: Socket): Promise<TlsOutcome>;
}

/** A server's TLS credentials (made once, at start). */
export class TlsCredentials {
  private constructor(
    private readonly context: tls.SecureContext,
    private readonly verifyPeer: boolean,
    private readonly pskFile: string | null,
    /** Things the operator should know about the configuration (a PSK file others can read). */
    readonly warnings: string[],
  ) {}

  /** Reads and checks the files of `o` (mode on or require); throws an Error saying what is wrong. */
  static load(o: NbdTlsOptions): TlsCredentials {
    if (o.mode === 'off') throw new Error('TLS is off');
    if (o.caFile !== undefined && !o.verifyPeer) throw new Error('a CA file is used only to verify client certificates (verifyPeer)');
    if (o.pskFile !== undefined) {
      if (o.certFile !== undefined || o.keyFile !== undefined) throw new Error('use either a PSK file or a certificate and key, not both');
      if (o.verifyPeer) throw new Error('client certificates are verified only with a certificate and key, not with a PSK file');
      const keys = parsePskFile(readFileSync(o.pskFile, 'latin1'));
      if (typeof keys === 'string') throw new Error(`PSK file ${o.pskFile}: ${keys}`);
      const warnings: string[] = [];
      if ((statSync(o.pskFile).mode & 0o077) !== 0) {
        warnings.push(`PSK file ${o.pskFile} can be read by other users: make it mode 0600`);
      }
      const context = tls.createSecureContext({
        minVersion: 'TLSv1.2', ciphers: PSK_TLS12_CIPHERS, dhparam: 'auto', secureOptions: SECURE_OPTIONS,
      });
      return new TlsCredentials(context, false, o.pskFile, warnings);
    }
    if (o.certFile === undefined || o.keyFile === undefined) throw new Error(`tls mode '${o.mode}' needs certFile and keyFile (or pskFile)`);
    if (o.verifyPeer && o.caFile === undefined) throw new Error('verifying client certificates needs a CA file');
    const context = tls.createSecureContext({
      cert: readFileSync(o.certFile),
      key: readFileSync(o.keyFile),
      ca: o.caFile !== undefined ? readFileSync(o.caFile) : undefined,
      minVersion: 'TLSv1.2',
      secureOptions: SECURE_OPTIONS,
    });
    return new TlsCredentials(context, o.verifyPeer === true, null, []);
  }

  /** How clients authenticate: by certificate, by PSK, or not at all. */
  get clientAuth(): 'certificate' | 'psk' | 'none' {
    return this.pskFile !== null ? 'psk' : this.verifyPeer ? 'certificate' : 'none';
  }

  /** Reads what one upgrade needs (the PSK file); a string says why it cannot go ahead. */
  async prepare(): Promise<PreparedUpgrade | string> {
    let keys: PskKeys | null = null;
    if (this.pskFile !== null) {
      let text: string;
      try {
        text = await readFile(this.pskFile, 'latin1');
      } catch (err) {
        return `cannot read PSK file ${this.pskFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`;
      }
      const parsed = parsePskFile(text);
      if (typeof parsed === 'string') return `PSK file ${this.pskFile}: ${parsed}`;
      keys = parsed;
    }
    return { upgrade: (raw) => this.upgrade(raw, keys) };
  }

  private async upgrade(raw: Socket, keys: PskKeys | null): Promise<TlsOutcome> {
    let identity: { name: string; known: boolean } | null = null;
    const pskCallback = keys === null ? undefined : (_s: tls.TLSSocket, id: string): Buffer | null => {
      const key = keys.get(id) ?? null;
      identity = { name: id, known: key !== null };
      return key;
    };
    const secure = new tls.TLSSocket(raw, {
      isServer: true,
      secureContext: this.context,
      requestCert: this.verifyPeer,
      rejectUnauthorized: this.verifyPeer,
      pskCallback,
    } as tls.TLSSocketOptions);
    secure.on('error', () => {}); // reported through the outcome; a listener keeps errors from escaping
    const failure = await new Promise<Error | null>((resolve) => {
      secure.once('secure', () => resolve(null));
      secure.once('error', (err) => resolve(err));
      secure.once('close', () => resolve(new Error('connection closed')));
    });
    const who = (): string => {
      const id = identity as { name: string; known: boolean } | null;
      if (id === null) return keys !== null ? ', no PSK identity offered' : '';
      return `, ${id.known ? '' : 'unknown '}PSK identity "${printable(id.name)}"`;
    };
    if (failure !== null) {
      secure.destroy();
      const code = (failure as NodeJS.ErrnoException).code;
      return { ok: false, reason: `TLS handshake failed (${code ?? printable(failure.message)})${who()}` };
    }
    const subject = this.verifyPeer ? peerSubject(secure) : '';
    if (this.verifyPeer) {
      const verdict = peerVerifyError(secure);
      if (verdict !== null) {
        secure.destroy();
        return { ok: false, reason: `client certificate rejected: ${verdict}, ${subject}` };
      }
    }
    const auth = this.verifyPeer ? `client certificate ${subject}` : keys !== null ? who().slice(2) : 'no client authentication';
    return { ok: true, socket: secure, summary: `TLS ${secure.getProtocol() ?? '?'} ${secure.getCipher()?.name ?? '?'}, ${auth}` };
  }
}

/** The subject and issuer of the peer's certificate, for the log. */
function peerSubject(s: tls.TLSSocket): string {
  const cert = s.getPeerX509Certificate();
  if (cert === undefined) return 'none';
  const flat = (dn: string): string => printable(dn.split('\n').join(', '));
  return `"${flat(cert.subject)}" (issuer "${flat(cert.issuer)}")`;
}
