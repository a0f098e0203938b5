// Checks decoded values against the thing model and normalizes them (Alibaba TSL data types):
//   int     integer within int32 (OneNET int64/bitMap: within ±(2^53-1))
//   float/double  finite number                 min/max apply; step is informative only
//   bool    true/false/0/1 -> 0|1                enum  integer key of specs
//   text    string of at most specs.length characters (code points)
//   date    ms since the epoch, a number or (as Alibaba sends it) a string of digits -> number
//   struct  JSON object of members (each checked by its type); members may be left out
//   array   JSON array of at most specs.size items, each checked by the item type
// Property posts are partial updates, so `required` is not enforced on them; on event output
// data it is, when the model sets it.
//
// Messages name the value's path, the rule and the value:
//   temperature: 130 above max 120        GeoLocation.Latitude: 91 above max 90
//   readings[3]: 7.5 is not an int         tags: array of 12 exceeds size 10
// and the error code gives the Alink reply: WANWU_ERR_INVALID (460) or WANWU_ERR_UNKNOWN_IDENTIFIER
// (6320, also for a struct member the model does not define).
//
// Each model is compiled once into per-identifier check functions (compileModel, memoized). A check
// gets the array index it is called for (or -1) instead of a path string, so the path is only built
// when a value fails.

import { WanwuError } from '../errors.js';
import { show } from './check.js';
import type { ThingModel, TslDataType, TslParam } from './tsl.js';
import type { DecodedItem } from './types.js';

/** Returns the normalized value or throws; `index` is the position in the enclosing array, or -1. */
type Check = (value: unknown, index: number) => unknown;

interface EventChecks {
  outputs: Map<string, Check>;
  required: string[];
}

export interface CompiledModel {
  readonly properties: ReadonlyMap<string, Check>;
  readonly events: ReadonlyMap<string, EventChecks>;
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

const compiled = new WeakMap<ThingModel, CompiledModel>();

/** The model's checks, compiled on first use (the registry warms this at load). */
export function compileModel(model: ThingModel): CompiledModel {
  let c = compiled.get(model);
  if (!c) {
    c = {
      properties: new Map(model.properties.map((p) => [p.identifier, compileCheck(p.identifier, '', p.dataType)])),
      events: new Map(
        model.events.map((e) => [
          e.identifier,
          {
            outputs: new Map(e.outputData.map((p: TslParam) => [p.identifier, compileCheck(`${e.identifier}.${p.identifier}`, '', p.dataType)])),
            required: e.outputData.filter((p) => p.required === true).map((p) => p.identifier),
          },
        ]),
      ),
    };
    compiled.set(model, c);
  }
  return c;
}

/**
 * Validates one item's data against the model and returns the normalized data (a new object).
 * Throws WANWU_ERR_UNKNOWN_IDENTIFIER or WANWU_ERR_INVALID; `productKey` is for messages.
 */
export function validateItem(model: ThingModel, productKey: string, item: DecodedItem): Record<string, unknown> {
  const c = compileModel(model);
  const data = item.data;
  const out: Record<string, unknown> = {};
  if (item.kind === 'property') {
    for (const key in data) {
      const check = c.properties.get(key);
      if (!check) throw unknown(key, `${key}: not a property of ${productKey}`);
      out[key] = check(data[key], -1);
    }
    return out;
  }
  const event = item.event ?? '';
  const e = c.events.get(event);
  if (!e) throw unknown(event, `${event}: not an event of ${productKey}`, { event });
  for (const key in data) {
    const check = e.outputs.get(key);
    if (!check) throw unknown(key, `${event}.${key}: not an output of event ${event} of ${productKey}`, { event });
    out[key] = check(data[key], -1);
  }
  for (const key of e.required) {
    if (!Object.hasOwn(data, key)) {
      throw new WanwuError('WANWU_ERR_INVALID', `${event}.${key}: required output missing`, {
        detail: { identifier: key, event, rule: 'required' },
      });
    }
  }
  return out;
}

/**
 * Validates the parameters of a service call (its inputData) or of a service reply (its outputData)
 * and returns them normalized. `params` entries that are plain strings (Alibaba's built-in `get`
 * service lists property identifiers) are checked as those properties. `what` names the service in
 * messages (`setInterval.seconds: 0 below min 60`). With `requireAll`, parameters marked required
 * must be present. Throws WANWU_ERR_UNKNOWN_IDENTIFIER or WANWU_ERR_INVALID.
 */
export function validateParams(
  model: ThingModel,
  what: string,
  defs: ReadonlyArray<TslParam | string>,
  data: Record<string, unknown>,
  requireAll: boolean,
): Record<string, unknown> {
  let checks = paramChecks.get(defs);
  if (!checks) {
    const props = compileModel(model).properties;
    checks = new Map();
    for (const d of defs) {
      if (typeof d === 'string') {
        const check = props.get(d);
        if (check) checks.set(d, { check, required: false });
      } else {
        checks.set(d.identifier, { check: compileCheck(`${what}.${d.identifier}`, '', d.dataType), required: d.required === true });
      }
    }
    paramChecks.set(defs, checks);
  }
  const out: Record<string, unknown> = {};
  for (const key in data) {
    const c = checks.get(key);
    if (!c) throw unknown(key, `${what}.${key}: not a parameter of ${what}`);
    out[key] = c.check(data[key], -1);
  }
  if (requireAll) {
    for (const [key, c] of checks) {
      if (c.required && !Object.hasOwn(data, key)) {
        throw new WanwuError('WANWU_ERR_INVALID', `${what}.${key}: required parameter missing`, { detail: { identifier: key, rule: 'required' } });
      }
    }
  }
  return out;
}

/** Compiled parameter lists, keyed by the model's own array (so a reloaded model compiles again). */
const paramChecks = new WeakMap<ReadonlyArray<TslParam | string>, Map<string, { check: Check; required: boolean }>>();

function unknown(identifier: string, message: string, extra: Record<string, unknown> = {}): WanwuError {
  return new WanwuError('WANWU_ERR_UNKNOWN_IDENTIFIER', message, { detail: { identifier, ...extra } });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Compiles the check of one value. Its path in messages is `base` + `suffix` outside arrays, and
 * `base[index]` + `suffix` for an array item (`wifiList[2].rssi`: base "wifiList", suffix ".rssi").
 */
function compileCheck(base: string, suffix: string, dataType: TslDataType): Check {
  const label = (index: number): string => (index < 0 ? base + suffix : `${base}[${index}]${suffix}`);
  const fail = (index: number, rule: string, value: unknown, message: string, limit?: unknown): never => {
    const at = label(index);
    const detail: Record<string, unknown> = { identifier: at, rule, value };
    if (limit !== undefined) detail.limit = limit;
    throw new WanwuError('WANWU_ERR_INVALID', `${at}: ${message}`, { detail });
  };
  switch (dataType.type) {
    case 'int':
    case 'float':
    case 'double': {
      const { type } = dataType;
      const { min, max } = dataType.specs;
      const article = type === 'int' ? 'an' : 'a';
      const lo = min ?? -Infinity;
      const hi = max ?? Infinity;
      const wide = dataType.int64 === true;
      const intLo = wide ? Number.MIN_SAFE_INTEGER : INT32_MIN;
      const intHi = wide ? Number.MAX_SAFE_INTEGER : INT32_MAX;
      const range = wide ? 'the exact integer range of JSON (±(2^53-1))' : 'int32';
      return (v, i) => {
        if (typeof v !== 'number' || !Number.isFinite(v) || (type === 'int' && !Number.isInteger(v))) {
          fail(i, type, v, `${show(v)} is not ${article} ${type}`);
        }
        const n = v as number;
        if (type === 'int' && (n < intLo || n > intHi)) fail(i, 'int', n, `${n} is outside ${range}`);
        if (n < lo) fail(i, 'min', n, `${n} below min ${min}`, min);
        if (n > hi) fail(i, 'max', n, `${n} above max ${max}`, max);
        return n;
      };
    }
    case 'bool':
      return (v, i) => {
        if (v === 0 || v === false) return 0;
        if (v === 1 || v === true) return 1;
        return fail(i, 'bool', v, `${show(v)} is not a bool (0, 1, true or false)`);
      };
    case 'enum': {
      const keys = Object.keys(dataType.specs).map(Number).sort((a, b) => a - b);
      const allowed = new Set(keys);
      const list = keys.join(',');
      return (v, i) => {
        if (typeof v !== 'number' || !allowed.has(v)) fail(i, 'enum', v, `${show(v)} not one of enum ${list}`, keys);
        return v;
      };
    }
    case 'text': {
      const length = dataType.specs.length;
      return (v, i) => {
        if (typeof v !== 'string') return fail(i, 'text', v, `${show(v)} is not a text`);
        // Characters are code points; v.length (UTF-16 units) is an upper bound, so count only when it may exceed.
        if (length !== undefined && v.length > length) {
          const chars = [...v].length;
          if (chars > length) fail(i, 'length', v, `text of ${chars} characters exceeds length ${length}`, length);
        }
        return v;
      };
    }
    case 'date':
      // Alibaba TSL: a date is a UTC timestamp in ms, sent as a string; numbers are accepted too.
      return (v, i) => {
        const n = typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : v;
        if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
          return fail(i, 'date', v, `${show(v)} is not a date (ms since the epoch)`);
        }
        return n;
      };
    case 'struct': {
      const members = new Map<string, Check>(dataType.specs.map((m) => [m.identifier, compileCheck(base, `${suffix}.${m.identifier}`, m.dataType)]));
      return (v, i) => {
        if (!isObject(v)) return fail(i, 'struct', v, `${show(v)} is not a struct (a JSON object)`);
        const out: Record<string, unknown> = {};
        for (const key in v) {
          const check = members.get(key);
          if (check === undefined) {
            const at = label(i);
            throw unknown(`${at}.${key}`, `${at}.${key}: not a member of struct ${at}`);
          }
          out[key] = check(v[key], i);
        }
        return out;
      };
    }
    case 'array': {
      const { size, item } = dataType.specs;
      // Arrays are never nested (Alibaba), so items are labelled by index under this array's path.
      const itemCheck = compileCheck(label(-1), '', item);
      return (v, i) => {
        if (!Array.isArray(v)) return fail(i, 'array', v, `${show(v)} is not an array`);
        if (v.length > size) fail(i, 'size', v.length, `array of ${v.length} exceeds size ${size}`, size);
        const out = new Array<unknown>(v.length);
        for (let k = 0; k < v.length; k++) out[k] = itemCheck(v[k], k);
        return out;
      };
    }
  }
}
