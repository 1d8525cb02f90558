/**
 * A VM whose QEMU the supervisor started (`Running`), and how what QEMU
 * tells changes it: the QMP events of the supervisor's one persistent QMP
 * connection (SHUTDOWN with its reason, STOP, RESUME, RESET,
 * GUEST_PANICKED) and the serial log (the guest's first output, a Linux
 * "Kernel panic" line). Each change is made at once, before QEMU exits, and
 * logged with the VM's name.
 */
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import type { PageoutReport, PrefetchReport, VmPager, VolumeIo } from '../pager/index.js';
import type { PortProxy } from './port-proxy.js';
import type { QmpClient, QmpEvent } from './qmp.js';
import type { ExitKind } from './restart.js';
import { pauseReason, type VmState } from './status.js';
import type { VmRecord } from './vm-record.js';

/** Why QEMU stopped its vCPUs while it runs on (STOP until RESUME). */
export interface Pause {
  /** QEMU's run state (query-status): `paused`, `io-error`, `guest-panicked`, ... */
  status: string;
  /** The disk's I/O status when not `ok` (`nospace` after ENOSPC). */
  ioStatus?: string;
  reason: string;
}

/** How the guest or QEMU ended, known before QEMU exits (SHUTDOWN event, or a panic on the serial line). */
export interface Ending {
  state: 'stopped' | 'crashed';
  /** In words, with QEMU's own reason in parentheses. */
  reason: string;
  kind: ExitKind;
}

/** What the supervisor knows of a VM it started. */
export interface Running {
  rec: VmRecord;
  child: ChildProcess;
  state: VmState;
  reason?: string;
  hostPort: number;
  /** The daemon's end of the host port (QEMU forwards an internal port). */
  proxy?: PortProxy;
  startedAt: number;
  stderrTail: string;
  exited: Promise<void>;
  /** QEMU has exited (its `close` came). */
  gone?: boolean;
  io: VolumeIo;
  /** Its pager while QEMU runs (page-out, prefetch, write-back of the memory file). */
  pager?: VmPager;
  /** The persistent QMP connection, from QEMU's first QMP answer until it exits. */
  qmp?: QmpClient;
  /** Set by STOP, cleared by RESUME. */
  pause?: Pause;
  /** Settles once QEMU said why it paused (a status waits for it). */
  pauseKnown?: Promise<void>;
  /** Set by SHUTDOWN (or a panic seen on the serial line): how it ended, while QEMU is still on its way out. */
  ending?: Ending;
  /** The guest panicked (GUEST_PANICKED, or a panic line on its serial console). */
  panicked?: string;
  /** The guest wrote to its serial console since QEMU started (it booted far enough to talk). */
  alive?: boolean;
  serial?: SerialWatch;
  /** The last reports, kept after the VM stops. */
  lastPageout?: PageoutReport;
  lastPrefetch?: PrefetchReport;
}

/** What a SHUTDOWN reason (QMP ShutdownCause) means for the VM. */
export function endingOf(reason: string, panicked?: string): Ending {
  switch (reason) {
    case 'guest-shutdown': return { state: 'stopped', reason: 'the guest powered off (guest-shutdown)', kind: 'powered-off' };
    case 'guest-reset':
      return { state: 'stopped', reason: 'the guest rebooted, and QEMU runs with -no-reboot (guest-reset)', kind: 'powered-off' };
    case 'guest-panic': return { state: 'crashed', reason: `the guest panicked${panicked ? `: ${panicked}` : ''} (guest-panic)`, kind: 'panicked' };
    case 'host-signal': return { state: 'crashed', reason: 'QEMU got a signal on the host (host-signal)', kind: 'crashed' };
    default: return { state: 'crashed', reason: `QEMU shut down (${reason})`, kind: 'crashed' };
  }
}

/** Applies QMP event `e` to `vm`: at once, logged; STOP then asks QEMU why (query-status, query-block). */
export function applyEvent(vm: Running, e: QmpEvent, log: (line: string) => void): void {
  const name = vm.rec.name;
  const live = vm.state === 'running' || vm.state === 'starting';
  switch (e.event) {
    case 'SHUTDOWN': {
      const reason = String(e.data.reason ?? 'unknown');
      if (!live || vm.ending) { log(`vm ${name}: QEMU event SHUTDOWN (${reason})`); return; }
      end(vm, endingOf(reason, vm.panicked), log);
      return;
    }
    case 'GUEST_PANICKED': {
      const info = e.data.info as Record<string, unknown> | undefined;
      vm.panicked = `GUEST_PANICKED, action ${String(e.data.action)}${info ? ` ${JSON.stringify(info)}` : ''}`;
      log(`vm ${name}: the guest panicked (${vm.panicked})`);
      if (e.data.action === 'pause' && live) vm.pause = { status: 'guest-panicked', reason: pauseReason('guest-panicked') };
      return;
    }
    case 'STOP': {
      if (!live) return;
      const pause: Pause = { status: 'paused', reason: 'paused' };
      vm.pause = pause;
      log(`vm ${name}: paused (QEMU event STOP)`);
      vm.pauseKnown = whyPaused(vm).then((why) => {
        if (vm.pause !== pause || !why) return; // resumed meanwhile, or QEMU going away
        Object.assign(pause, why);
        log(`vm ${name}: paused (${why.reason})`);
      });
      return;
    }
    case 'RESUME':
      if (vm.pause) log(`vm ${name}: running again (QEMU event RESUME)`);
      vm.pause = undefined;
      return;
    case 'RESET':
      log(`vm ${name}: the guest was reset (QEMU event RESET${e.data.reason ? `, ${String(e.data.reason)}` : ''})`);
      return;
    default:
      return; // (other events: NIC_RX_FILTER_CHANGED, RTC_CHANGE, BLOCK_IO_ERROR (STOP follows), ...)
  }
}

/** Records how `vm` ended, before QEMU exits; its exit then finishes the job (supervisor). */
export function end(vm: Running, ending: Ending, log: (line: string) => void): void {
  vm.ending = ending;
  vm.state = ending.state;
  vm.reason = ending.reason;
  vm.pause = undefined;
  log(`vm ${vm.rec.name}: ${ending.state}: ${ending.reason}`);
}

/** QEMU's run state and the disk's I/O status, asked over the persistent connection (undefined if it does not answer). */
async function whyPaused(vm: Running): Promise<Pause | undefined> {
  const qmp = vm.qmp;
  if (!qmp) return undefined;
  try {
    const st = await qmp.execute('query-status', undefined, 2_000) as { running: boolean; status: string };
    if (st.running) return undefined;
    const block = await qmp.execute('query-block', undefined, 2_000) as Array<{ 'io-status'?: string }>;
    const bad = block.map((b) => b['io-status']).find((s) => s !== undefined && s !== 'ok');
    return { status: st.status, reason: pauseReason(st.status, bad), ...(bad ? { ioStatus: bad } : {}) };
  } catch {
    return undefined;
  }
}

/** How often the serial log is looked at for the guest's first output and a panic. */
const SERIAL_POLL_MS = 1_000;
/** A Linux kernel panic on the console (the kernel prints it whatever its `panic=` setting). */
const PANIC_LINE = /Kernel panic - not syncing: [^\r\n]*/;
/** The most read per look (a guest printing faster than this is read on over the next looks). */
const SERIAL_READ_MAX = 256 * 1024;

/**
 * Reads the serial log as QEMU appends to it: `onAlive` at the guest's first
 * byte, `onPanic` with the line when a Linux kernel panics (a guest without
 * the pvpanic driver, or one that panics before loading it, gives QEMU no
 * GUEST_PANICKED, and with `panic=0` it spins forever).
 */
export class SerialWatch {
  private offset = 0;
  private tail = '';
  private readonly timer: NodeJS.Timeout;
  private busy = false;
  private done = false;

  constructor(private readonly file: string, private readonly onAlive: () => void, private readonly onPanic: (line: string) => void) {
    this.timer = setInterval(() => { void this.look(); }, SERIAL_POLL_MS);
    this.timer.unref();
  }

  /** Reads what was appended since the last look. */
  async look(): Promise<void> {
    if (this.busy || this.done) return;
    this.busy = true;
    try {
      const size = await fs.promises.stat(this.file).then((st) => st.size, () => 0);
      if (size < this.offset) { this.offset = 0; this.tail = ''; }
      if (size === this.offset) return;
      this.onAlive();
      const fh = await fs.promises.open(this.file, 'r');
      try {
        const want = Math.min(size - this.offset, SERIAL_READ_MAX);
        const buf = Buffer.alloc(want);
        const { bytesRead } = await fh.read(buf, 0, want, this.offset);
        this.offset += bytesRead;
        const text = this.tail + buf.subarray(0, bytesRead).toString('latin1');
        const m = PANIC_LINE.exec(text);
        if (m && /[\r\n]/.test(text.charAt(m.index + m[0].length))) {
          this.close();
          this.onPanic(m[0].trim());
          return;
        }
        // A line cut at the end of this read is matched whole at the next look.
        this.tail = m ? text.slice(m.index) : text.slice(-200);
      } finally {
        await fh.close();
      }
    } catch {
      // (the log was removed: the VM is going away)
    } finally {
      this.busy = false;
    }
  }

  close(): void {
    this.done = true;
    clearInterval(this.timer);
  }
}
