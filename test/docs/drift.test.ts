/**
 * The documentation keeps up with the code:
 *   (a) every export of the native addon (Object.keys of the loaded .node)
 *       has a row in native/README.md's export table;
 *   (b) every `dormant` subcommand (buildProgram() walked recursively:
 *       `vm start`, `image build-test-guest`, ...) appears as
 *       `dormant <path>` in the README's CLI reference section, and every
 *       long option of every command appears there too;
 *   (c) every relative link in README.md and docs/**.md (and
 *       native/README.md) points to a file or directory that exists inside
 *       the repository (no link to ../shared or anywhere outside it);
 *   (d) every test file (test/<module>/<name>.test.ts) is described in docs/testing.md.
 * Each check reports every missing item at once, by name.
 */
import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/index.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const ADDON = path.join(ROOT, 'native/build/Release/dormant_native.node');

const read = (rel: string): string => fs.readFileSync(path.join(ROOT, rel), 'utf8');

/** Names in the first column of the markdown table whose header row starts with `| export |`. */
function exportTableNames(markdown: string): Set<string> {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => /^\|\s*export\s*\|/.test(l));
  if (start < 0) return new Set();
  const names = new Set<string>();
  for (const line of lines.slice(start + 2)) {
    if (!line.startsWith('|')) break;
    const first = line.split(/(?<!\\)\|/)[1] ?? '';
    for (const m of first.matchAll(/`([A-Za-z_$][\w$]*)/g)) names.add(m[1]);
  }
  return names;
}

/** The text of the section under `## <title>`, up to the next `## ` heading. */
function section(markdown: string, title: string): string {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => l.trim() === `## ${title}`);
  if (start < 0) return '';
  const end = lines.findIndex((l, i) => i > start && /^## /.test(l));
  return lines.slice(start + 1, end < 0 ? undefined : end).join('\n');
}

/** Every command below `program`, as its path of names (`['vm', 'start']`), with the command itself. */
function commandPaths(program: Command): { path: string[]; cmd: Command }[] {
  const out: { path: string[]; cmd: Command }[] = [];
  const walk = (cmd: Command, prefix: string[]) => {
    for (const sub of cmd.commands) {
      const p = [...prefix, sub.name()];
      out.push({ path: p, cmd: sub });
      walk(sub, p);
    }
  };
  walk(program, []);
  return out;
}

/** Relative link targets of a markdown file: `[text](target)`, without URLs, anchors or mail. */
function relativeLinks(markdown: string): string[] {
  const text = markdown.replace(/```[\s\S]*?```/g, '');
  const out: string[] = [];
  for (const m of text.matchAll(/\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) {
    const target = m[1];
    if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('#')) continue;
    out.push(target.split('#')[0]);
  }
  return out.filter((t) => t !== '');
}

/** Markdown files whose links are checked: the README, native/README.md, everything under docs/. */
function markdownFiles(): string[] {
  const files = ['README.md', 'native/README.md'];
  const walk = (dir: string) => {
    if (!fs.existsSync(path.join(ROOT, dir))) return;
    for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
      const rel = path.join(dir, e.name);
      if (e.isDirectory()) walk(rel);
      else if (e.name.endsWith('.md')) files.push(rel);
    }
  };
  walk('docs');
  return files;
}

describe('documentation drift', () => {
  it('(a) every export of the native addon has a row in native/README.md', () => {
    const addon = createRequire(import.meta.url)(ADDON) as Record<string, unknown>;
    const exported = Object.keys(addon);
    expect(exported.length).toBeGreaterThan(0);
    const documented = exportTableNames(read('native/README.md'));
    const missing = exported.filter((name) => !documented.has(name));
    expect(missing, `exports with no row in native/README.md's export table`).toEqual([]);
    const stale = [...documented].filter((name) => !exported.includes(name));
    expect(stale, `rows in native/README.md's export table that the addon does not export`).toEqual([]);
  });

  it('(b) every dormant subcommand and long option is in the README\'s CLI reference', () => {
    const reference = section(read('README.md'), 'CLI reference');
    expect(reference, 'README.md has a "## CLI reference" section').not.toBe('');
    const program = buildProgram();
    const commands = commandPaths(program);
    expect(commands.map((c) => c.path.join(' '))).toEqual(expect.arrayContaining(['init', 'vm start', 'image build-test-guest']));
    const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    const missing = commands
      .map((c) => `dormant ${c.path.join(' ')}`)
      .filter((text) => !new RegExp(`${escape(text)}(?![\\w-])`).test(reference));
    expect(missing, 'subcommands missing from the README\'s CLI reference').toEqual([]);
    const options = new Set<string>();
    for (const cmd of [program, ...commands.map((c) => c.cmd)]) {
      for (const o of cmd.options) if (o.long) options.add(o.long);
    }
    const missingOptions = [...options].filter((long) => !new RegExp(`${escape(long)}(?![\\w-])`).test(reference));
    expect(missingOptions, 'long options missing from the README\'s CLI reference').toEqual([]);
  });

  it('(c) every relative link in the README and docs/ points to a file in the repository', () => {
    const broken: string[] = [];
    for (const file of markdownFiles()) {
      for (const link of relativeLinks(read(file))) {
        const target = path.resolve(ROOT, path.dirname(file), decodeURI(link));
        const inside = target === ROOT || target.startsWith(ROOT + path.sep);
        if (!inside) broken.push(`${file}: ${link} (outside the repository)`);
        else if (!fs.existsSync(target)) broken.push(`${file}: ${link} (no such file)`);
      }
    }
    expect(broken, 'relative links that do not resolve inside the repository').toEqual([]);
  });

  it('(d) every test file is described in docs/testing.md', () => {
    const testing = read('docs/testing.md');
    const files: string[] = [];
    const walk = (dir: string) => {
      for (const e of fs.readdirSync(path.join(ROOT, dir), { withFileTypes: true })) {
        const rel = path.join(dir, e.name);
        if (e.isDirectory()) walk(rel);
        else if (e.name.endsWith('.test.ts')) files.push(rel);
      }
    };
    walk('test');
    expect(files.length).toBeGreaterThan(10);
    const missing = files.filter((f) => !testing.includes(`\`${path.basename(f)}\``));
    expect(missing, 'test files missing from docs/testing.md').toEqual([]);
  });
});
