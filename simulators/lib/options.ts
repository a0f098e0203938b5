// Command-line values shared by the wanwu-sim modes: durations, rates, fleet sizes and profile files.

import { readFileSync } from 'node:fs';
import ms from 'ms';

/** "60s", "5m", "1.5h", "250ms"; a bare number is seconds. Returns milliseconds. */
export function parseDuration(text: string, what = 'duration'): number {
  const t = text.trim();
  const value = /^\d+(\.\d+)?$/.test(t) ? Number(t) * 1000 : ms(t as ms.StringValue);
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new Error(`--${what}: expected a duration such as 60s, 5m or 250ms, got ${JSON.stringify(text)}`);
  }
  return value;
}

/** A non-negative integer option. */
export function parseCount(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < 0) throw new Error(`--${what}: expected a whole number >= 0, got ${JSON.stringify(text)}`);
  return n;
}

/** A positive number option (rates, factors). */
export function parsePositive(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${what}: expected a number > 0, got ${JSON.stringify(text)}`);
  return n;
}

/** A probability 0..1 (fault rates, jitter). */
export function parseFraction(text: string, what: string): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n < 0 || n > 1) throw new Error(`--${what}: expected a number from 0 to 1, got ${JSON.stringify(text)}`);
  return n;
}

/**
 * A profile file: a JSON object whose keys are the long option names of `run` in camelCase
 * (`{"nbiot": 5000, "cat1": 200, "nbiotInterval": "10m", "duration": "5m"}`). Values may be strings
 * or numbers; options given on the command line win.
 */
export function readProfile(path: string): Record<string, string> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new Error(`--profile ${path}: ${(err as Error).message}`);
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error(`--profile ${path}: expected a JSON object of option: value`);
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(parsed)) {
    if (typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean') throw new Error(`--profile ${path}: ${k} must be a string, number or boolean`);
    out[k] = String(v);
  }
  return out;
}
