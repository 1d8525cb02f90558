/**
 * `dormant serve --config FILE` (and `dormant mount --config FILE`): a
 * TOML file (smol-toml) whose keys are the command's long options,
 * kebab-case or camelCase (`listen`, `mount`, `scrub-every`, `tcp = false`
 * for `--no-tcp`, `log-format`, ...), plus `store`. A flag
 * given on the command line wins over the file; the file wins over the
 * defaults. Unknown keys and values of the wrong type are refused in one
 * line naming the file. Example: docs/dormant.toml.
 */
import fs from 'node:fs';
import type { Command, Option } from 'commander';
import { parse } from 'smol-toml';
import { DormantError } from '../blockstore/index.js';

const camel = (key: string) => key.replace(/-([a-z])/g, (_m, c: string) => c.toUpperCase());

/** Applies the settings of `file` to `cmd` (and `store` to its parent) where no flag set them. */
export function applyConfig(cmd: Command, file: string): void {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (err) {
    throw new DormantError('EINVAL', `cannot read --config '${file}': ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let settings: Record<string, unknown>;
  try {
    settings = parse(text) as Record<string, unknown>;
  } catch (err) {
    const first = (err as Error).message.split('\n')[0];
    throw new DormantError('EINVAL', `bad --config '${file}': ${first}`);
  }
  const options = new Map<string, Option>(cmd.options.map((o) => [o.attributeName(), o]));
  options.delete('config');
  for (const [key, value] of Object.entries(settings)) {
    const name = camel(key);
    if (name === 'store') {
      if (typeof value !== 'string') throw new DormantError('EINVAL', `bad --config '${file}': store must be a string`);
      const root = cmd.parent!;
      if (root.getOptionValueSource('store') !== 'cli') root.setOptionValueWithSource('store', value, 'config');
      continue;
    }
    const opt = options.get(name);
    if (!opt) {
      throw new DormantError('EINVAL', `bad --config '${file}': unknown setting '${key}' (settings: store, `
        + `${[...options.values()].map((o) => o.long!.replace(/^--(no-)?/, '')).filter((v, i, a) => a.indexOf(v) === i).join(', ')})`);
    }
    const flag = !opt.required && !opt.optional; // no value: a boolean
    if (flag ? typeof value !== 'boolean' : !['string', 'number'].includes(typeof value)) {
      throw new DormantError('EINVAL', `bad --config '${file}': ${key} must be ${flag ? 'true or false' : 'a string or a number'}`);
    }
    if (cmd.getOptionValueSource(name) === 'cli') continue; // the command line wins
    cmd.setOptionValueWithSource(name, flag ? value : String(value), 'config');
  }
}
