/**
 * Every reach into Node's private net.Socket internals in src/nbd, and the
 * only place where one is allowed. Checked against Node 20 (package.json:
 * engines node >= 20); re-check this file whenever the supported Node
 * changes.
 *
 * Why each is needed:
 * 1. `_handle` and the undocumented `handle` option of `new net.Socket`
 *    (onreadSocket, for reader.ts). Reads into our own buffers need the
 *    `onread` option, which only `new net.Socket` takes, while the server
 *    makes each accepted Socket itself. So the accepted Socket's libuv
 *    handle is wrapped in a new Socket built the way Node's server builds
 *    one for an accepted connection (`handle`), plus `onread`; the old
 *    Socket lets go of the handle.
 * 2. `_server` and `server` (onreadSocket). Node counts a server's
 *    connections down when a Socket whose `_server` is set is destroyed;
 *    that count lets `server.close()` emit 'close'. Both move to the new
 *    Socket, so the count follows the connection.
 * 3. `_handle.fd` (descriptorOf, for connection.ts and the transmission
 *    loop): the socket's descriptor, for the send buffer's size, READ
 *    replies sent with sendfile and WRITE payloads received on the pool.
 * 4. `_handle.verifyError()` of a TLSSocket (peerVerifyError, for tls.ts):
 *    OpenSSL's verdict on the client's certificate chain. Node acts on it
 *    (`authorized`, `rejectUnauthorized`) only for sockets a tls.Server
 *    accepted; a STARTTLS upgrade wraps a socket in mid-stream, so tls.ts
 *    asks for the verdict itself.
 *
 * What would break it, and how it would show:
 * - `_handle` renamed or gone: onreadSocket and descriptorOf return null,
 *   so connections read the ordinary way, without sendfile, pool receive
 *   or a wider send buffer: slower, still correct.
 * - The `handle` option ignored: the new Socket has no connection and the
 *   old one no handle, so every connection fails at once (every NBD test).
 * - `onread` no longer honoured for a Socket made from a handle (Node 20
 *   reads it after taking the handle): reads arrive as 'data' events,
 *   which connection.ts also listens to, but a direct read (reader.ts
 *   DirectReads.into) never completes, so a big WRITE hangs
 *   (test/nbd/raw.test.ts, pool-receive.test.ts).
 * - `_server` / `server` renamed: the server's count never goes down, and
 *   `close()` never emits 'close'.
 * - `verifyError` renamed or gone: peerVerifyError fails closed, so every
 *   client certificate is rejected (test/nbd/auth.test.ts).
 */
import net from 'node:net';
import type { TLSSocket } from 'node:tls';

/** The private fields of net.Socket used here. */
interface SocketInternals {
  _handle?: { fd?: unknown } | null;
  _server?: unknown;
  server?: unknown;
}

/** Node's `onread` option: the buffer the next read goes into, and the callback after each read. */
export interface OnRead {
  buffer: () => Buffer;
  callback: (n: number, buf: Uint8Array) => boolean;
}

/**
 * A Socket over `accepted`'s connection that reads with `onread` (see 1
 * and 2 above), or null when `accepted` cannot be moved (no handle, bytes
 * it already read, or Node refused): then `accepted` is untouched. Once a
 * Socket is returned, `accepted` must not be used any more.
 */
export function onreadSocket(accepted: net.Socket, onread: OnRead): net.Socket | null {
  const old = accepted as unknown as SocketInternals;
  const handle = old._handle;
  if (handle === undefined || handle === null || accepted.readableLength > 0) return null;
  let s: net.Socket;
  try {
    s = new net.Socket({
      handle, allowHalfOpen: false, readable: true, writable: true, onread,
    } as net.SocketConstructorOpts & { handle: object });
  } catch {
    return null;
  }
  // The server counts its connections down when a socket it accepted is destroyed.
  const fresh = s as unknown as SocketInternals;
  fresh._server = old._server;
  fresh.server = old.server;
  old._server = null;
  old._handle = null;
  return s;
}

/** The descriptor of a plaintext socket (see 3 above), or null when Node does not expose it. */
export function descriptorOf(socket: net.Socket): number | null {
  const fd = (socket as unknown as SocketInternals)._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : null;
}

/**
 * OpenSSL's verdict on the peer's certificate chain (see 4 above): null
 * when it verified, else its error code (NOT_CHECKED when Node does not
 * expose the verdict: fail closed).
 */
export function peerVerifyError(socket: TLSSocket): string | null {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => unknown } | null })._handle;
  if (typeof handle?.verifyError !== 'function') return 'NOT_CHECKED';
  const err = handle.verifyError() as { code?: unknown } | null | undefined;
  if (err === null || err === undefined) return null;
  return typeof err.code === 'string' ? err.code : 'UNKNOWN';
}
