/**
 * `dormant vm console <vm>`: the terminal connected to a running VM's serial
 * line, QEMU's Unix socket `STORE/vms/<vm>.console` (the CLI connects to it
 * directly: the same user owns the store; the daemon is only asked whether
 * the VM runs). On a terminal: raw mode (restored on exit), Ctrl-] detaches.
 * Without one (pipes): stdin goes to the guest, the guest to stdout; at the
 * end of stdin the console is left once the guest has been quiet for half a
 * second (at most 5 s), so `echo cmd | dormant vm console vm1` shows cmd's
 * output.
 */
import net from 'node:net';
import { DormantError } from '../blockstore/index.js';

/** Ctrl-], the detach key (as telnet and virsh console). */
export const DETACH_BYTE = 0x1d;
/** After stdin ends: leave once the guest printed nothing for this long ... */
const QUIET_MS = 500;
/** ... or this long after stdin ended at most. */
const LINGER_MAX_MS = 5_000;

/** Connects the terminal (or stdin/stdout) to the console socket `socketPath` of VM `name`; resolves when detached or closed. */
export async function attachConsole(name: string, socketPath: string): Promise<void> {
  const sock = net.createConnection(socketPath);
  await new Promise<void>((resolve, reject) => {
    const t = setTimeout(() => { sock.destroy(); reject(new DormantError('EINVAL', `VM '${name}': its console did not answer within 5 s`)); }, 5_000);
    sock.once('connect', () => { clearTimeout(t); resolve(); });
    sock.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(t);
      reject(err.code === 'ENOENT' || err.code === 'ECONNREFUSED'
        ? new DormantError('EINVAL', `VM '${name}' is not running (no console at ${socketPath})`)
        : err);
    });
  });
  const stdin = process.stdin;
  const tty = stdin.isTTY === true;
  if (tty) process.stderr.write(`connected to the serial console of VM ${name}; Ctrl-] detaches\r\n`);

  await new Promise<void>((resolve) => {
    let finished = false;
    let linger: NodeJS.Timeout | undefined;
    let quiet: NodeJS.Timeout | undefined;
    const finish = (why?: string) => {
      if (finished) return;
      finished = true;
      clearTimeout(linger);
      clearTimeout(quiet);
      if (tty) stdin.setRawMode(false);
      stdin.off('data', onInput);
      stdin.pause();
      stdin.destroy();
      sock.destroy();
      if (tty && why) process.stderr.write(`\r\n${why}\r\n`);
      resolve();
    };
    const onInput = (d: Buffer) => {
      const at = tty ? d.indexOf(DETACH_BYTE) : -1;
      if (at < 0) { sock.write(d); return; }
      if (at > 0) sock.write(d.subarray(0, at));
      finish(`detached from the console of VM ${name}`);
    };
    sock.on('data', (d: Buffer) => {
      if (!process.stdout.write(d)) { sock.pause(); process.stdout.once('drain', () => sock.resume()); }
      if (quiet) quiet.refresh();
    });
    sock.on('error', () => finish(`the console of VM ${name} went away`));
    sock.on('close', () => finish(`the console of VM ${name} closed (the VM stopped)`));
    process.stdout.on('error', () => finish()); // EPIPE: the reader went away
    if (tty) stdin.setRawMode(true);
    stdin.on('data', onInput);
    stdin.once('end', () => {
      if (tty) { finish(); return; }
      quiet = setTimeout(() => finish(), QUIET_MS);
      linger = setTimeout(() => finish(), LINGER_MAX_MS);
    });
    stdin.resume();
  });
}
