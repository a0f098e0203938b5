// Hand validation of product definition files (product.json, model.json, devices.json) with
// precise key paths: every failure is a WANWU_ERR_PRODUCT whose message reads
//   devices/WaterMeterNB/model.json: properties[2].dataType.specs.min: expected a number, got "abc"

import { WanwuError } from '../errors.js';

export type JsonObject = Record<string, unknown>;

/** `a.b` / `a[0]`; the root path is the empty string. */
export function keyPath(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return path === '' ? key : `${path}.${key}`;
}

/** A short, quoted rendering of a JSON value for messages. */
export function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  if (typeof value === 'number') return Number.isNaN(value) ? 'NaN' : String(value);
  if (typeof value === 'bigint') return `${value}n`;
  let s: string;
  try {
    s = JSON.stringify(value) ?? String(value);
  } catch {
    s = String(value);
  }
  return s.length > 60 ? `${s.slice(0, 57)}...` : s;
}

// Alibaba exports write spec numbers as strings ("min": "0"); a plain decimal literal is accepted.
const NUMERIC_STRING = /^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$/;

/** Reads one definition file; every accessor names the file and the key path when it fails. */
export class DefinitionReader {
  constructor(readonly file: string) {}

  fail(path: string, message: string): never {
    throw new WanwuError('WANWU_ERR_PRODUCT', path === '' ? `${this.file}: ${message}` : `${this.file}: ${path}: ${message}`, {
      detail: { file: this.file, path },
    });
  }

  private expected(path: string, what: string, value: unknown): never {
    if (value === undefined) this.fail(path, `missing (expected ${what})`);
    this.fail(path, `expected ${what}, got ${show(value)}`);
  }

  object(value: unknown, path: string): JsonObject {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) this.expected(path, 'an object', value);
    return value as JsonObject;
  }

  array(value: unknown, path: string): unknown[] {
    if (!Array.isArray(value)) this.expected(path, 'an array', value);
    return value;
  }

  string(value: unknown, path: string, pattern?: { re: RegExp; what: string }): string {
    if (typeof value !== 'string' || value === '') this.expected(path, 'a non-empty string', value);
    if (pattern && !pattern.re.test(value)) this.fail(path, `${show(value)} is not ${pattern.what}`);
    return value;
  }

  optionalString(value: unknown, path: string): string | undefined {
    if (value === undefined) return undefined;
    if (typeof value !== 'string') this.expected(path, 'a string', value);
    return value;
  }

  boolean(value: unknown, path: string): boolean {
    if (typeof value !== 'boolean') this.expected(path, 'true or false', value);
    return value;
  }

  /** A finite number, or a string holding one (Alibaba TSL exports quote their spec numbers). */
  number(value: unknown, path: string, opts: { strings?: boolean } = {}): number {
    if (typeof value === 'number' && Number.isFinite(value)) return value;
    if (opts.strings && typeof value === 'string' && NUMERIC_STRING.test(value)) return Number(value);
    this.expected(path, 'a number', value);
  }

  optionalNumber(value: unknown, path: string, opts: { strings?: boolean } = {}): number | undefined {
    return value === undefined ? undefined : this.number(value, path, opts);
  }

  integer(value: unknown, path: string, opts: { strings?: boolean; min?: number; max?: number } = {}): number {
    const n = this.number(value, path, opts);
    if (!Number.isInteger(n)) this.expected(path, 'an integer', value);
    if (opts.min !== undefined && n < opts.min) this.fail(path, `${show(value)} is below ${opts.min}`);
    if (opts.max !== undefined && n > opts.max) this.fail(path, `${show(value)} is above ${opts.max}`);
    return n;
  }

  oneOf<T extends string>(value: unknown, path: string, allowed: readonly T[]): T {
    if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
      this.expected(path, `one of ${allowed.map((a) => JSON.stringify(a)).join(', ')}`, value);
    }
    return value as T;
  }

  /** Refuses keys outside `allowed` (used for Wanwu's own formats, where a typo must not be ignored). */
  onlyKeys(obj: JsonObject, path: string, allowed: readonly string[]): void {
    for (const key of Object.keys(obj)) {
      if (!allowed.includes(key)) this.fail(keyPath(path, key), `unknown key (allowed: ${allowed.join(', ')})`);
    }
  }
}
