/**
 * Temp dirs for tests: each test file makes its own under the OS temp dir
 * and removes them all in afterEach/afterAll, whatever the outcome.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

/** A set of temp dirs removed together by `cleanup()`. */
export class TempDirs {
  private readonly dirs: string[] = [];

  /** Makes a fresh empty dir named dormant-<prefix>-XXXXXX. */
  make(prefix = 'tmp'): string {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), `dormant-${prefix}-`));
    this.dirs.push(dir);
    return dir;
  }

  /** Removes every dir made so far. */
  cleanup(): void {
    for (const dir of this.dirs.splice(0)) fs.rmSync(dir, { recursive: true, force: true });
  }
}

/** Copies a directory tree (e.g. a fixture store) to `to`. */
export function copyTree(from: string, to: string): void {
  fs.cpSync(from, to, { recursive: true });
}
