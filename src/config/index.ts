// Loads the configuration once: embedded defaults <- JSON file (--config or WANWU_CONFIG) <- WANWU_* env
// overrides; validated against the schema and frozen. Every refusal is a WANWU_ERR_CONFIG naming the key path.

import { readFileSync } from 'node:fs';
import { WanwuError } from '../errors.js';
import { configSchema, type Config } from './schema.js';

export { configSchema, TOPIC_PLACEHOLDERS } from './schema.js';
export type { Config, ConfigInput, UpstreamConfig } from './schema.js';

/** Individual overrides: env variable -> key path and how to read its string. */
export const ENV_OVERRIDES: ReadonlyArray<{ env: string; path: readonly string[]; type: 'string' | 'port' }> = [
  { env: 'WANWU_COAP_HOST', path: ['coap', 'host'], type: 'string' },
  { env: 'WANWU_COAP_PORT', path: ['coap', 'port'], type: 'port' },
  { env: 'WANWU_MQTT_HOST', path: ['mqtt', 'host'], type: 'string' },
  { env: 'WANWU_MQTT_PORT', path: ['mqtt', 'port'], type: 'port' },
  { env: 'WANWU_HTTP_HOST', path: ['http', 'host'], type: 'string' },
  { env: 'WANWU_HTTP_PORT', path: ['http', 'port'], type: 'port' },
  // A secret: better in the environment (or a file readable by the service only) than in a config file.
  { env: 'WANWU_HTTP_API_TOKEN', path: ['http', 'apiToken'], type: 'string' },
  { env: 'WANWU_STORAGE_PATH', path: ['storage', 'path'], type: 'string' },
  { env: 'WANWU_DEVICES_DIR', path: ['devicesDir'], type: 'string' },
  { env: 'WANWU_LOG_LEVEL', path: ['log', 'level'], type: 'string' },
];

export interface LoadConfigOptions {
  /** Path of a JSON config file; falls back to env WANWU_CONFIG; none means embedded defaults. */
  file?: string | undefined;
  env?: NodeJS.ProcessEnv;
}

export function loadConfig(opts: LoadConfigOptions = {}): Readonly<Config> {
  const env = opts.env ?? process.env;
  const file = opts.file ?? (env.WANWU_CONFIG || undefined);
  const input: Record<string, unknown> = file === undefined ? {} : readConfigFile(file);
  applyEnv(input, env);
  return parseConfig(input, file);
}

/** Validates a config object (already merged); throws WANWU_ERR_CONFIG listing every bad key. */
export function parseConfig(input: unknown, source?: string): Readonly<Config> {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const keys = issue.code === 'unrecognized_keys' ? issue.keys : [];
      const base = issue.path.map(String);
      if (keys.length > 0) return keys.map((k) => `${formatPath([...base, k])}: unknown key`).join('; ');
      return `${formatPath(base)}: ${issue.message}`;
    });
    const where = source === undefined ? 'configuration' : `configuration ${source}`;
    throw new WanwuError('WANWU_ERR_CONFIG', `${where}: ${problems.join('; ')}`, {
      detail: { issues: result.error.issues.map((i) => ({ path: formatPath(i.path.map(String)), message: i.message })) },
    });
  }
  return deepFreeze(result.data);
}

function readConfigFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new WanwuError('WANWU_ERR_CONFIG', `configuration ${file}: cannot read: ${(err as Error).message}`, { cause: err });
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (err) {
    throw new WanwuError('WANWU_ERR_CONFIG', `configuration ${file}: not valid JSON: ${(err as Error).message}`, { cause: err });
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new WanwuError('WANWU_ERR_CONFIG', `configuration ${file}: the top level must be a JSON object`);
  }
  return parsed as Record<string, unknown>;
}

function applyEnv(input: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const o of ENV_OVERRIDES) {
    const raw = env[o.env];
    if (raw === undefined || raw === '') continue;
    let value: unknown = raw;
    if (o.type === 'port') {
      if (!/^\d+$/.test(raw)) {
        throw new WanwuError('WANWU_ERR_CONFIG', `env ${o.env} (${o.path.join('.')}): expected a port number 0-65535, got ${JSON.stringify(raw)}`);
      }
      value = Number(raw);
    }
    let node = input;
    for (const key of o.path.slice(0, -1)) {
      const next = node[key];
      if (next === undefined) node[key] = {};
      else if (next === null || typeof next !== 'object' || Array.isArray(next)) break;
      node = node[key] as Record<string, unknown>;
    }
    node[o.path[o.path.length - 1]!] = value;
  }
}

function formatPath(path: string[]): string {
  if (path.length === 0) return '(top level)';
  return path.reduce((acc, k) => (/^\d+$/.test(k) ? `${acc}[${k}]` : acc === '' ? k : `${acc}.${k}`), '');
}

function deepFreeze<T>(value: T): T {
  if (value !== null && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value as object)) deepFreeze(v);
  }
  return value;
}
