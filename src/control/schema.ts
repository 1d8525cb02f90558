/**
 * The JSON schema of every control request: each operation's arguments
 * (a JSON array, server.ts) as JSON Schema 2020-12, checked by ajv before
 * the operation runs. The validators are compiled once, when the module
 * loads (the daemon's start). A request that does not match gets one line
 * naming the operation, the argument and what is wrong (EINVAL, a user
 * error), and nothing runs.
 *
 * The schemas check shapes and plain bounds only; names, sizes against the
 * store's limits and the like stay with the store and the VM runner, which
 * give the same errors offline.
 */
import { Ajv2020, type ErrorObject, type ValidateFunction } from 'ajv/dist/2020.js';
import { DormantError } from '../blockstore/index.js';
import { CONTROL_OPS, type ControlOp } from './operations.js';

type Schema = Record<string, unknown>;

const str: Schema = { type: 'string', maxLength: 4096 };
const count: Schema = { type: 'integer', minimum: 0 };
const bool: Schema = { type: 'boolean' };
const RESTART = ['no', 'on-failure', 'always'];

/** VmSpec (src/vm/vm-record.ts). */
const vmSpec: Schema = {
  type: 'object',
  required: ['name', 'from', 'memoryBytes', 'cpus', 'image', 'kernel', 'initrd', 'cmdline'],
  additionalProperties: false,
  properties: {
    name: str, from: str, memoryBytes: count, cpus: { type: 'integer', minimum: 1 }, image: str, kernel: str, initrd: str,
    cmdline: str, ballastBytes: count, ballastSharedPercent: { type: 'number', minimum: 0, maximum: 100 },
    restart: { enum: RESTART },
  },
};

/** Each operation's arguments, by name, in order. */
export const CONTROL_ARGS: Record<ControlOp, ReadonlyArray<[string, Schema]>> = {
  createVolume: [['name', str], ['size', count], ['kind', { enum: ['disk', 'memory'] }]],
  snapshot: [['volume', str], ['snapshot', str]],
  branch: [['name', str], ['from', str]],
  remove: [['name', str]],
  resize: [['name', str], ['size', count]],
  list: [],
  info: [['name', str]],
  stats: [],
  gc: [],
  check: [],
  verifyData: [['repair', bool], ['rate', { type: 'number', minimum: 0 }]],
  importFile: [['name', str], ['file', str], ['kind', { enum: ['disk', 'memory'] }], ['format', str]],
  exportFile: [['name', str], ['file', str]],
  pull: [['name', str], ['url', str], ['token', str], ['as', str], ['ca', { type: 'string', maxLength: 1 << 20 }]],
  push: [['name', str], ['url', str], ['token', str], ['as', str], ['ca', { type: 'string', maxLength: 1 << 20 }]],
  vmMigrate: [['name', str], ['url', str], ['token', str], ['mode', { enum: ['copy', 'lazy'] }], ['ca', { type: 'string', maxLength: 1 << 20 }]],
  vmCreate: [['spec', vmSpec]],
  vmStart: [['name', str], ['kvm', bool], ['restart', { enum: ['', ...RESTART] }]],
  vmStop: [['name', str], ['timeoutMs', count]],
  vmPause: [['name', str]],
  vmResume: [['name', str]],
  vmRemove: [['name', str]],
  vmStatus: [['name', str]],
  vmList: [],
  vmPageout: [['name', str], ['keepBytes', count]],
  vmPrefetch: [['name', str]],
  vmSharing: [],
};

const ajv = new Ajv2020({ allErrors: false, strict: true });
const validators = new Map<ControlOp, ValidateFunction>(CONTROL_OPS.map((op) => {
  const args = CONTROL_ARGS[op];
  return [op, ajv.compile({
    type: 'array', ...(args.length > 0 ? { prefixItems: args.map(([, s]) => s) } : {}), items: false, minItems: args.length,
  })];
}));

/** Checks `body` (parsed JSON) as the arguments of `op`; throws EINVAL in one line when they do not fit. */
export function checkArgs(op: ControlOp, body: unknown): unknown[] {
  const validate = validators.get(op)!;
  const ok: boolean = validate(body);
  if (ok) return body as unknown[];
  const names = CONTROL_ARGS[op].map(([n]) => n);
  const usage = `${op} takes (${CONTROL_ARGS[op].map(([n, schema]) => `${n}: ${typeName(schema)}`).join(', ')})`;
  if (!Array.isArray(body)) throw new DormantError('EINVAL', `bad control request: ${usage}, a JSON array, not ${describe(body)}`);
  if (body.length !== names.length) {
    throw new DormantError('EINVAL', `bad control request: ${usage}, got ${body.length} argument${body.length === 1 ? '' : 's'}`);
  }
  throw new DormantError('EINVAL', `bad control request: ${usage}: ${explain(validate.errors?.[0], names)}`);
}

/** "size must be >= 0", "spec.cpus must be integer", "spec must NOT have additional properties (x)". */
function explain(e: ErrorObject | undefined, names: string[]): string {
  if (!e) return 'invalid';
  const [index, ...rest] = e.instancePath.split('/').slice(1);
  const where = [names[Number(index)] ?? `argument ${index}`, ...rest].join('.');
  const extra = e.keyword === 'additionalProperties' ? ` (${(e.params as { additionalProperty: string }).additionalProperty})` : '';
  const allowed = e.keyword === 'enum' ? `: ${(e.params as { allowedValues: unknown[] }).allowedValues.map((v) => JSON.stringify(v)).join(', ')}` : '';
  return `${where} ${e.message ?? 'is invalid'}${extra}${allowed}`;
}

/** `string`, `integer`, `"disk"|"memory"`, `object`. */
function typeName(schema: Schema): string {
  return Array.isArray(schema.enum) ? schema.enum.map((v) => JSON.stringify(v)).join('|') : String(schema.type);
}

function describe(v: unknown): string {
  return v === null ? 'null' : typeof v === 'object' ? 'an object' : `a ${typeof v}`;
}
