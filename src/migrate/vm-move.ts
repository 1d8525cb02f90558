/**
 * Moving a running VM to another host: the VM's disk and memory
 * are volumes of the store, and QEMU's RAM is a shared file on the FUSE
 * view, so only the chunks the destination lacks and QEMU's device state
 * travel.
 *
 * Source (migrateVm):
 *   1. ask the destination whether it can take the VM (name, volumes,
 *      kernel), before anything else;
 *   2. pre-copy while the guest runs: write its dirty RAM back, push the
 *      disk branch and the memory volume (missing chunks only), committed
 *      there under their names; from before this step on the store
 *      records every block written to either (Store.watchWrites);
 *   3. the destination starts QEMU on them with `-incoming defer`
 *      (POST /v1/vms/<vm>/incoming), `x-ignore-shared` on both QEMUs so
 *      that QEMU's stream carries device state, not RAM; then it reads
 *      the guest pages in use (those QEMU has mapped here: touched since
 *      the last page-out) into its page cache (POST .../prefetch,
 *      src/pager/handover.ts), so loading the device state and the
 *      guest's first moments there fault nothing in through FUSE;
 *   4. rounds while the guest runs (up to PRECOPY_ROUNDS, until one sends
 *      PAUSED_PATCH_BLOCKS or fewer): write the RAM back and patch both
 *      volumes there in place with the blocks written since the push or
 *      the last round (patch.ts, carrying the chunks the destination does
 *      not hold; chunk ids alone would miss a block whose uncommitted
 *      chunk was rewritten in place); then pause the guest (QMP stop:
 *      QEMU drains and flushes its disk);
 *   5. the same once more, paused, in one request per volume: the
 *      downtime grows with what the guest wrote during the last round, not
 *      with its size. The destination drops the patched pages from its
 *      page cache before it answers;
 *   6. QMP migrate to the destination's listener, wait until QEMU sent
 *      its last byte;
 *   7. ask the destination to resume the guest once it loaded the state,
 *      and confirm it runs (POST .../finish): the commit point;
 *   8. release the source: quit its QEMU, remove the VM and its volumes.
 * Before the commit point any failure aborts the destination's side
 * (POST .../abort: its QEMU killed, the VM and volumes it received
 * removed; the chunks stay, so a retry sends little) and resumes the guest
 * on the source: nothing is lost, and a retry starts over.
 *
 * Lazy mode differs in what travels before the guest continues there:
 *   2. only the manifests: the destination writes the blocks whose chunk it
 *      holds and marks the others absent (lazy.ts);
 *   5. the patch carries hashes only: changed blocks whose chunk the
 *      destination lacks are marked absent too;
 *   7. the finish hands the VM over with this host's API URL and a token
 *      for this migration (lazy-source.ts): the destination fetches absent
 *      chunks from here when read, and copies the rest in the background;
 *   8. QEMU quits here and the VM's record goes, but its volumes stay
 *      until the destination says its copy is complete (POST
 *      /v1/vms/<vm>/lazy/done).
 * The pause then covers the RAM write-back, the patches' metadata and the
 * device state, not the chunks.
 *
 * The destination's side is vm-arrive.ts; what both ask of the VM runner,
 * movable.ts.
 */
import { BLOCK_SIZE, DormantError, HASH_SIZE, type Store } from '../blockstore/index.js';
import { buildManifest } from './manifest.js';
import { push, pushManifest, pushPatch } from './transfer.js';
import { requestJson, type RemoteHost } from './remote.js';
import type { LazyLeases } from './lazy-source.js';
import { sha256File, STREAM_TIMEOUT_MS, type FinishAnswer, type IncomingRequest, type MoveMode, type MovableVms } from './movable.js';

/** What `vm migrate --json` prints. */
export interface VmMoveResult {
  vm: string;
  mode: MoveMode;
  to: string;
  /** From the guest's pause on the source to its confirmed run on the destination. */
  downtimeMs: number;
  bytesSent: number;
  memoryBytesSent: number;
  diskBytesSent: number;
  /** QEMU's own migration stream (device state and the few RAM blocks that are not the shared file). */
  deviceStateBytes: number;
  /** Where the downtime went: RAM write-back and flush, the patches, QEMU's device state, the resume there. */
  downtimePhasesMs: { writeBack: number; patch: number; deviceState: number; resume: number };
  /** Blocks each pre-copy round after the first push sent (what the guest wrote during the round before), in order. */
  precopyRounds: number[];
  /** Guest pages read into the destination's page cache before the pause (those the guest touched since its last page-out). */
  arrivalPages: number;
  /** Blocks sent as patches while the guest was paused, per volume. */
  patchedBlocks: Record<string, number>;
  /** Guest pages faulted in on the source while it moved (a paged-out VM's memory is read from the store, not faulted back). */
  sourcePagesFaulted: number;
  /** The VM's HTTP port on the destination. */
  hostPort?: number;
  /** Lazy mode: what the destination still lacked when the guest continued there (fetched from here afterwards). */
  lazy?: { memoryBytesToFetch: number; diskBytesToFetch: number };
  seconds: number;
}

/** Patch rounds while the guest runs, at most, after the first push (a guest that writes faster than they send never converges). */
const PRECOPY_ROUNDS = 4;
/** Rounds stop once one sent this few blocks: the pause's patch will be about as small. */
const PAUSED_PATCH_BLOCKS = 256;

/**
 * Guest pages read in on the destination before the pause, at most: in
 * copy mode from its own store (256 MiB); in lazy mode each is fetched
 * from here first, and the point of lazy mode is to go on there before the
 * chunks do (16 MiB: the device state's and a quiet guest's first needs).
 */
const ARRIVAL_PAGES_MAX = { copy: 65_536, lazy: 4_096 };

/** Asks `host` to read the pages VM `name` touched since its last page-out into its page cache; the pages read there. */
async function sendArrivalPages(vms: MovableVms, name: string, host: RemoteHost, mode: MoveMode): Promise<number> {
  const runs = await vms.touchedRuns(name, ARRIVAL_PAGES_MAX[mode]);
  if (runs.length === 0) return 0;
  const r = await requestJson<{ pages: number }>(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/prefetch`,
    Buffer.from(JSON.stringify({ runs })));
  return r.pages;
}

/** Moves running VM `name` to `host`; see the header. Lazy mode needs `leases` with this host's API URL. */
export async function migrateVm(store: Store, vms: MovableVms, name: string, host: RemoteHost,
  log: (line: string) => void = () => undefined, progress?: (done: number, total: number) => void,
  fromHost?: string, mode: MoveMode = 'copy', leases?: LazyLeases): Promise<VmMoveResult> {
  const rec = vms.record(name);
  if (!vms.isRunning(name)) throw new DormantError('EINVAL', `cannot migrate VM '${name}': it is not running (start it, or push its volumes)`);
  const lazy = mode === 'lazy';
  if (lazy && !leases?.selfUrl) {
    throw new DormantError('EINVAL', `--mode lazy needs this host's API (serve --api): VM '${name}' would fetch its chunks from it`);
  }
  for (const v of [rec.disk, rec.memory]) {
    if (store.absentOf(v)) throw new DormantError('EBUSY', `VM '${name}' is still arriving here lazily ('${v}' lacks blocks): wait for its copy (dormant vm status)`);
  }
  const t0 = performance.now();
  const request: IncomingRequest = {
    record: rec, kernelSha256: sha256File(rec.kernel), initrdSha256: sha256File(rec.initrd), ...(fromHost ? { fromHost } : {}),
  };
  // The destination must be able to run it before the guest pauses: it checks the kernel and the name.
  await requestJson(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/check`, Buffer.from(JSON.stringify(request)));
  const faultsBefore = vms.pagesIn(name);
  // Until it is released, a daemon that starts again must not start it here: it may run there.
  vms.markMigrating(name, host.url);
  const roles = ['disk', 'memory'] as const;
  const sent = { disk: 0, memory: 0 };
  let committed = false;
  let paused = 0;
  // Every block written from before the pre-copy on: what the patches send (renewed at each patch).
  let watches = { disk: store.watchWrites(rec.disk), memory: store.watchWrites(rec.memory) };
  // Blocks whose chunk the push could not send (rewritten meanwhile): the first patch sends them.
  const unsent: Record<'disk' | 'memory', number[]> = { disk: [], memory: [] };
  let wroteBack = 0;
  /** Writes the RAM back and sends what was written since the last push or patch; per volume, the blocks sent. */
  const patchRound = async (): Promise<Record<'disk' | 'memory', number>> => {
    const taken = watches;
    watches = { disk: store.watchWrites(rec.disk), memory: store.watchWrites(rec.memory) };
    try {
      await vms.writeBack(name);
      await store.flush();
      wroteBack = performance.now();
      const counts = { disk: 0, memory: 0 };
      await Promise.all(roles.map(async (role) => {
        const blocks = unsent[role].length === 0 ? taken[role].blocks()
          : [...new Set([...taken[role].blocks(), ...unsent[role]])].sort((x, y) => x - y);
        unsent[role] = [];
        if (blocks.length === 0) return; // (nothing written: no round trips, no flush there)
        const p = await pushPatch(store, host, rec[role], blocks, lazy, !paused);
        sent[role] += p.bytesSent;
        counts[role] = p.blocks;
      }));
      return counts;
    } finally {
      taken.disk.close();
      taken.memory.close();
    }
  };
  try {
    // Pre-copy, while the guest runs: the volumes as the store holds them now, committed there under their names.
    await vms.writeBack(name);
    await store.flush();
    for (const role of roles) {
      const m = await buildManifest(store, rec[role]);
      if (lazy) {
        // Lazy: the manifest only; the destination marks what it lacks absent.
        const r = await pushManifest(host, m);
        sent[role] += r.bytesSent;
        continue;
      }
      const r = await push(store, host, rec[role], undefined, progress, { manifest: m, partial: true });
      sent[role] += r.bytesSent;
      for (let b = 0; r.missing?.size && b < m.header.blocks; b++) {
        if (r.missing.has(m.hashes.toString('hex', b * HASH_SIZE, (b + 1) * HASH_SIZE))) unsent[role].push(b);
      }
    }
    // The destination starts QEMU now, waiting for the device state: its start is not downtime.
    // Lazy: the destination fetches what it lacks from here (QEMU reads guest RAM as soon as the device state loads),
    // with a token for this migration only.
    const handOver: IncomingRequest = lazy ? {
      ...request,
      lazy: {
        url: leases!.selfUrl!, token: leases!.grant(name, [rec.disk, rec.memory], host.url),
        ...(leases!.selfCa ? { ca: leases!.selfCa } : {}),
      },
    } : request;
    const inc = await requestJson<{ uri: string }>(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming`,
      Buffer.from(JSON.stringify(handOver)));
    // The pages the guest uses now are read in there while it still runs here: loading its device state and its
    // first moments there then find them in the page cache (src/pager/handover.ts). A failure only costs time.
    const arrivalPages = await sendArrivalPages(vms, name, host, mode).catch((err: Error) => {
      log(`vm ${name}: reading its pages in use in there: ${err.message}`);
      return 0;
    });
    // More rounds while the guest runs, each sending what it wrote during the last (shorter each time while the
    // guest writes slower than they send): the patch during the pause carries only the last round's writes.
    const rounds: number[] = [];
    for (let last = Infinity; rounds.length < PRECOPY_ROUNDS && last > PAUSED_PATCH_BLOCKS;) {
      const c = await patchRound();
      last = c.disk + c.memory;
      rounds.push(last);
    }
    log(`vm ${name}: migrating to ${host.url} (${mode}): pre-copied ${sent.disk + sent.memory} bytes (then ${rounds.join(', ')} `
      + `blocks written meanwhile), QEMU waits there with ${arrivalPages} pages in use read in; pausing`);
    await vms.pause(name);
    paused = performance.now();
    // What changed since, patched in place there (the write-back is its first step).
    const patchedBlocks = await patchRound();
    log(`vm ${name}: patched ${patchedBlocks.disk} disk and ${patchedBlocks.memory} memory blocks there; sending QEMU's device state`);
    const patched = performance.now();
    const stream = await vms.migrateOut(name, inc.uri, STREAM_TIMEOUT_MS);
    const streamed = performance.now();
    // The destination waits for its side to have loaded the state, then resumes the guest: the commit point.
    const [fin, streamBytes] = await Promise.all([
      requestJson<FinishAnswer>(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/finish`), stream.bytes]);
    committed = true;
    const resumed = performance.now();
    const sourcePagesFaulted = vms.pagesIn(name) - faultsBefore;
    log(`vm ${name}: runs on ${host.url} (port ${fin.hostPort}); releasing it here${lazy ? ' (its volumes stay until the copy there completes)' : ''}`);
    await vms.release(name, `migrated to ${host.url}`, lazy);
    const left = fin.lazyBlocks ?? {};
    return {
      vm: name, mode, to: host.url, downtimeMs: Math.round(resumed - paused),
      bytesSent: sent.disk + sent.memory + streamBytes, memoryBytesSent: sent.memory, diskBytesSent: sent.disk,
      deviceStateBytes: streamBytes, sourcePagesFaulted,
      downtimePhasesMs: {
        writeBack: Math.round(wroteBack - paused), patch: Math.round(patched - wroteBack),
        deviceState: Math.round(streamed - patched), resume: Math.round(resumed - streamed),
      },
      patchedBlocks, precopyRounds: rounds, arrivalPages, ...(fin.hostPort !== undefined ? { hostPort: fin.hostPort } : {}),
      ...(lazy ? { lazy: { memoryBytesToFetch: (left[rec.memory] ?? 0) * BLOCK_SIZE, diskBytesToFetch: (left[rec.disk] ?? 0) * BLOCK_SIZE } } : {}),
      seconds: Math.round((performance.now() - t0) / 10) / 100,
    };
  } catch (err) {
    if (committed) throw err; // (the release failed: the VM runs on the destination)
    log(`vm ${name}: migration to ${host.url} failed (${(err as Error).message})${paused ? '; resuming it here' : ''}`);
    // The destination may hold what this migration sent: it removes it (and its QEMU).
    await requestJson(host, 'POST', `/v1/vms/${encodeURIComponent(name)}/incoming/abort`,
      Buffer.from(JSON.stringify({ volumes: [rec.disk, rec.memory] })))
      .catch((e: Error) => log(`vm ${name}: abort on ${host.url}: ${e.message}`));
    if (lazy) leases!.revoke(name);
    if (paused) await vms.cont(name);
    vms.markMigrating(name, undefined);
    throw err;
  } finally {
    watches.disk.close();
    watches.memory.close();
  }
}
