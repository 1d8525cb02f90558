/**
 * systemd's readiness protocol (`Type=notify`): when NOTIFY_SOCKET is set,
 * the daemon sends `READY=1` once NBD, the control socket and FUSE are up,
 * and `STOPPING=1` when it starts to stop. Sent from the daemon's own
 * process (systemd accepts only the main PID by default). Without
 * NOTIFY_SOCKET nothing happens; a failed send is one log line.
 */
import { asWarn, type LogFn } from '../blockstore/index.js';
import { notifySocket } from '../native/index.js';

/** Sends `state` (e.g. "READY=1\nSTATUS=...") to $NOTIFY_SOCKET when set. */
export function sdNotify(state: string, log: LogFn): void {
  const socket = process.env.NOTIFY_SOCKET;
  if (!socket) return;
  try {
    notifySocket(socket, state);
  } catch (err) {
    log(`dormant serve: cannot notify systemd on ${socket}: ${(err as Error).message}`, asWarn({ socket, err: (err as Error).message }));
  }
}
