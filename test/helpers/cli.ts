/**
 * Running the real CLI (bin/dormant -> dist/cli/bin.js) as a child process,
 * and the assertions every CLI test makes about its three outputs.
 *
 * The child's environment never inherits DORMANT_STORE or DORMANT_DEBUG from
 * the test runner; a test that wants them passes them in `env`.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

/** Root of the repository. */
export const REPO = fileURLToPath(new URL('../..', import.meta.url));
/** The CLI entry point. */
export const BIN = path.join(REPO, 'bin', 'dormant');
/** The built CLI that bin/dormant runs. */
const BUILT = path.join(REPO, 'dist', 'cli', 'bin.js');

/** What a CLI run left behind. */
export interface CliResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/** Options of one CLI run. */
export interface CliOptions {
  /** Passed as `--store DIR` before the command. */
  store?: string;
  /** Variables to set (a value of undefined removes the variable). */
  env?: Record<string, string | undefined>;
}

let built = false;

/**
 * Throws a clear message when dist/ is missing or older than src/ (npm test
 * builds it; by hand: bash scripts/setup.sh). Tests that mix the API (src/,
 * in the test process) and the CLI (dist/) on one store need both the same.
 */
export function ensureBuilt(): void {
  if (built) return;
  const stamp = path.join(REPO, 'dist', '.tsbuildinfo');
  if (!fs.existsSync(BUILT) || !fs.existsSync(stamp)) {
    throw new Error(`${BUILT} is missing: run \`bash scripts/setup.sh\` before these tests`);
  }
  const builtAt = fs.statSync(stamp).mtimeMs;
  const src = path.join(REPO, 'src');
  for (const f of fs.readdirSync(src, { recursive: true }) as string[]) {
    if (f.endsWith('.ts') && fs.statSync(path.join(src, f)).mtimeMs > builtAt) {
      throw new Error(`dist/ is older than src/${f}: run \`bash scripts/setup.sh\` before these tests`);
    }
  }
  built = true;
}

/** The environment a CLI child sees: the runner's, minus dormant's own variables, plus `extra`. */
export function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env };
  delete env.DORMANT_STORE;
  delete env.DORMANT_DEBUG;
  for (const [k, v] of Object.entries(extra)) {
    if (v === undefined) delete env[k]; else env[k] = v;
  }
  return env;
}

/** Runs `dormant [--store DIR] ...args` to completion (bounded by a timeout). */
export function dormant(args: string[], opts: CliOptions = {}): CliResult {
  ensureBuilt();
  const argv = [BIN, ...(opts.store ? ['--store', opts.store] : []), ...args];
  const r = spawnSync(process.execPath, argv, {
    env: cliEnv(opts.env),
    encoding: 'utf8',
    timeout: 60_000,
    killSignal: 'SIGKILL',
    maxBuffer: 16 * 1024 * 1024,
  });
  if (r.error) throw r.error;
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * `dormant` without blocking the test process (for tests that serve
 * something to the CLI from the test itself, e.g. a proxy); killed after
 * `timeoutMs`.
 */
export function dormantAsync(args: string[], opts: CliOptions = {}, timeoutMs = 120_000): Promise<CliResult> {
  ensureBuilt();
  const argv = [BIN, ...(opts.store ? ['--store', opts.store] : []), ...args];
  return new Promise((resolve, reject) => {
    const c = spawn(process.execPath, argv, { env: cliEnv(opts.env), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    c.stdout.on('data', (d: Buffer) => { stdout += d.toString(); });
    c.stderr.on('data', (d: Buffer) => { stderr += d.toString(); });
    const t = setTimeout(() => c.kill('SIGKILL'), timeoutMs);
    c.on('error', (err) => { clearTimeout(t); reject(err); });
    c.on('close', (status) => { clearTimeout(t); resolve({ status, stdout, stderr }); });
  });
}

/** Asserts success with nothing on stderr; returns stdout. */
export function expectOk(r: CliResult): string {
  expect(r.stderr, 'stderr of a successful run').toBe('');
  expect(r.status, `exit status (stderr: ${r.stderr})`).toBe(0);
  return r.stdout;
}

/** Runs a command that must succeed and parses its JSON stdout. */
export function dormantJson<T = any>(args: string[], opts: CliOptions = {}): T {
  return JSON.parse(expectOk(dormant([...args, '--json'], opts))) as T;
}

/**
 * Asserts a failure with exit code `status`, empty stdout, and exactly one
 * line on stderr, "dormant: ..." matching `pattern`; returns that line.
 */
export function expectFailure(r: CliResult, pattern: RegExp, status = 1): string {
  expect(r.stdout, 'stdout of a failed run').toBe('');
  expect(r.stderr.endsWith('\n'), `stderr ends with a newline: ${JSON.stringify(r.stderr)}`).toBe(true);
  const lines = r.stderr.slice(0, -1).split('\n');
  expect(lines, 'stderr is exactly one line').toHaveLength(1);
  expect(lines[0]).toMatch(/^dormant: \S/);
  expect(lines[0]).toMatch(pattern);
  expect(r.status, `exit status (stderr: ${r.stderr})`).toBe(status);
  return lines[0];
}

/** Exports `name` of `store` (through its daemon when one runs) into `dir`; returns the sha256 of the raw image. */
export function exportSha256(name: string, store: string, dir: string): string {
  const file = path.join(dir, `${name.replace('@', '_')}.raw`);
  expectOk(dormant(['export', name, file], { store }));
  const h = createHash('sha256').update(fs.readFileSync(file)).digest('hex');
  fs.rmSync(file);
  return h;
}
