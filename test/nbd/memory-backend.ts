/**
 * In-memory NbdBackend for handshake/codec tests and early iteration only.
 * Integration tests use the real Store.
 */
import { DormantError } from '../../src/blockstore/errors.js';
import type { Extent, VolumeHandle } from '../../src/blockstore/types.js';
import type { ExportInfo, NbdBackend } from '../../src/nbd/backend.js';

const BLOCK = 4096;

export class MemoryVolume implements VolumeHandle {
  readonly kind = 'disk' as const;
  readonly data: Buffer;
  readonly reads: Array<{ offset: number; length: number; label?: string }> = [];
  flushes = 0;
  constructor(readonly name: string, readonly size: number, readonly readOnly = false) {
    this.data = Buffer.alloc(size);
  }
  private check(offset: number, length: number): void {
    if (offset + length > this.size) throw new DormantError('ERANGE', 'out of range', { volume: this.name, offset, length });
  }
  private checkWrite(): void {
    if (this.readOnly) throw new DormantError('EROFS', 'read-only', { volume: this.name });
  }
  async read(offset: number, length: number, opts?: { label?: string }): Promise<Buffer> {
    this.check(offset, length);
    this.reads.push({ offset, length, label: opts?.label });
    return Buffer.from(this.data.subarray(offset, offset + length));
  }
  readView(): Buffer | null {
    return null; // every read through read(), which records it
  }
  writeNow(): boolean {
    return false;
  }
  landing(): Buffer | null {
    return null;
  }
  abandon(): void {}
  async write(offset: number, data: Buffer): Promise<void> {
    this.checkWrite();
    this.check(offset, data.length);
    data.copy(this.data, offset);
  }
  async trim(offset: number, length: number): Promise<void> {
    return this.zero(offset, length);
  }
  async zero(offset: number, length: number): Promise<void> {
    this.checkWrite();
    this.check(offset, length);
    this.data.fill(0, offset, offset + length);
  }
  async flush(): Promise<void> {
    this.flushes++;
  }
  async cache(offset: number, length: number): Promise<void> {
    this.check(offset, length);
  }
  async extents(offset: number, length: number): Promise<Extent[]> {
    this.check(offset, length);
    const out: Extent[] = [];
    const first = Math.floor(offset / BLOCK) * BLOCK;
    for (let b = first; b < offset + length; b += BLOCK) {
      const end = Math.min(b + BLOCK, this.size);
      const hole = this.data.subarray(b, end).every((x) => x === 0);
      const last = out[out.length - 1];
      if (last && last.hole === hole) last.length = end - last.offset;
      else out.push({ offset: b, length: end - b, hole });
    }
    return out;
  }
  async close(): Promise<void> {}
}

export class MemoryBackend implements NbdBackend {
  readonly volumes = new Map<string, MemoryVolume>();
  opened = 0;
  add(v: MemoryVolume): MemoryVolume {
    this.volumes.set(v.name, v);
    return v;
  }
  async listExports(): Promise<ExportInfo[]> {
    return [...this.volumes.values()].map((v) => ({ name: v.name, description: `mem ${v.size}`, size: v.size, readOnly: v.readOnly }));
  }
  async describeExport(name: string): Promise<ExportInfo | null> {
    return (await this.listExports()).find((e) => e.name === name) ?? null;
  }
  async openExport(name: string): Promise<VolumeHandle | null> {
    const v = this.volumes.get(name);
    if (v) this.opened++;
    return v ?? null;
  }
}
