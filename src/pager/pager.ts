/**
 * The pager of a host. The VM runner (src/vm) owns one for the daemon's
 * life and attaches each VM once its QEMU runs; the pager knows a VM only
 * as a PagedVm (memory file, QEMU pid and vCPU threads, working-set file,
 * disk counter) and never reaches into the runner.
 *
 * Once a second it samples every attached VM (VmPager.tick): activity,
 * fault classes, and with automatic paging on, page-out of VMs that turned
 * idle. Ticks of one VM never overlap; a slow one (a page-out runs in the
 * background, a prefetch ahead of a wake-up does not) delays only that VM.
 */
import { asWarn, type LogFn } from '../blockstore/index.js';
import { MemoryIo, type VolumeIo } from './faults.js';
import { predictorOptions, type PredictorOptions } from './idleness.js';
import { MemoryAgent } from './mem-agent.js';
import { GuestMemory } from './pageout.js';
import { VmPager, type PagedVm } from './vm-pager.js';

/** How often VMs are sampled. */
export const SAMPLE_MS = 1_000;
/** Default initial idle timeout (`dormant serve --idle-timeout`), seconds. */
export const DEFAULT_IDLE_TIMEOUT_S = 30;

/** Options of the host pager. */
export interface PagerOptions {
  /** The FUSE view's memory traffic (the daemon passes the one its mount reports to). */
  io?: MemoryIo;
  log?: LogFn;
  /** Page out VMs that turn idle, and put their vCPUs under SCHED_IDLE (default true). */
  autoPage?: boolean;
  /** Initial idle timeout before a VM has a history of its own, seconds. */
  idleTimeoutSeconds?: number;
}

/** The host's pager: the memory agent, the memory traffic, and the sampling of every attached VM. */
export class Pager {
  readonly io: MemoryIo;
  readonly autoPage: boolean;
  private readonly agent: MemoryAgent;
  private readonly log: LogFn;
  private readonly predictor: PredictorOptions;
  private readonly vms = new Set<VmPager>();
  private readonly ticking = new Set<VmPager>();
  private timer?: NodeJS.Timeout;

  constructor(o: PagerOptions = {}) {
    this.io = o.io ?? new MemoryIo();
    this.log = o.log ?? (() => undefined);
    this.agent = new MemoryAgent(this.log);
    this.autoPage = o.autoPage ?? true;
    this.predictor = predictorOptions(o.idleTimeoutSeconds ?? DEFAULT_IDLE_TIMEOUT_S);
  }

  /** Starts counting the memory traffic of a VM whose QEMU is starting; fresh counters. */
  track(memory: string, memoryBytes: number): VolumeIo {
    return this.io.track(memory, memoryBytes);
  }

  /** The pager of VM `vm` once its QEMU runs and maps `vm.memFile`; `io` is what track() gave at its start. */
  attach(vm: PagedVm, io: VolumeIo): VmPager {
    const p = new VmPager(vm, io, new GuestMemory(vm.memFile, vm.memoryBytes, this.agent), this.predictor, this.log);
    this.vms.add(p);
    this.timer ??= setInterval(() => this.sampleAll(), SAMPLE_MS).unref();
    return p;
  }

  /** Stops sampling `p` (its QEMU exited). */
  detach(p: VmPager): void {
    this.vms.delete(p);
  }

  private sampleAll(): void {
    for (const p of this.vms) {
      if (this.ticking.has(p)) continue;
      this.ticking.add(p);
      p.tick({ enabled: this.autoPage, log: this.log })
        .catch((err: Error) => this.log(`vm ${p.vm.name}: sampling: ${err.message}`, asWarn({ vm: p.vm.name, err: err.message })))
        .finally(() => this.ticking.delete(p));
    }
  }

  /** Stops sampling and the memory agent: after every VM's memory file was closed. */
  close(): Promise<void> {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
    this.vms.clear();
    return this.agent.close();
  }
}
