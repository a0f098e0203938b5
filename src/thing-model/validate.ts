// Checks decoded values against the thing model and normalizes them (Alibaba TSL data types):
//   int    integer within int32          float/double  finite number
//   bool   true/false/0/1 -> 0|1         enum          integer key of specs
//   text   string, at most specs.length characters
//   date   ms since the epoch, a number or (as Alibaba sends it) a string of digits -> number
// min/max apply to int/float/double; step is informative only. struct/array pass through for now.
// Property posts are partial updates, so `required` is not enforced on them; on event output
// data it is, when the model sets it.
//
// Each model is compiled once into per-identifier check functions (compileModel, memoized).

import { WanwuError } from '../errors.js';
import { show } from './check.js';
import type { ThingModel, TslDataType, TslParam } from './tsl.js';
import type { DecodedItem } from './types.js';

/** Returns the normalized value or throws WANWU_ERR_INVALID. */
type Check = (value: unknown) => unknown;

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
      properties: new Map(model.properties.map((p) => [p.identifier, compileCheck(p.identifier, p.dataType)])),
      events: new Map(
        model.events.map((e) => [
          e.identifier,
          {
            outputs: new Map(e.outputData.map((p: TslParam) => [p.identifier, compileCheck(`${e.identifier}.${p.identifier}`, p.dataType)])),
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
      out[key] = check(data[key]);
    }
    return out;
  }
  const event = item.event ?? '';
  const e = c.events.get(event);
  if (!e) throw unknown(event, `${event}: not an event of ${productKey}`, { event });
  for (const key in data) {
    const check = e.outputs.get(key);
    if (!check) throw unknown(key, `${event}.${key}: not an output of event ${event} of ${productKey}`, { event });
    out[key] = check(data[key]);
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

function unknown(identifier: string, message: string, extra: Record<string, unknown> = {}): WanwuError {
  return new WanwuError('WANWU_ERR_UNKNOWN_IDENTIFIER', message, { detail: { identifier, ...extra } });
}

/** `label` is the identifier as messages show it (`temperature`, or `lowBattery.batteryLevel` for event output). */
function compileCheck(label: string, dataType: TslDataType): Check {
  const fail = (rule: string, value: unknown, message: string, limit?: unknown): never => {
    const detail: Record<string, unknown> = { identifier: label, rule, value };
    if (limit !== undefined) detail.limit = limit;
    throw new WanwuError('WANWU_ERR_INVALID', `${label}: ${message}`, { detail });
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
      return (v) => {
        if (typeof v !== 'number' || !Number.isFinite(v) || (type === 'int' && !Number.isInteger(v))) {
          fail(type, v, `${show(v)} is not ${article} ${type}`);
        }
        const n = v as number;
        if (type === 'int' && (n < INT32_MIN || n > INT32_MAX)) fail('int', n, `${n} is outside int32`);
        if (n < lo) fail('min', n, `${n} below min ${min}`, min);
        if (n > hi) fail('max', n, `${n} above max ${max}`, max);
        return n;
      };
    }
    case 'bool':
      return (v) => {
        if (v === 0 || v === false) return 0;
        if (v === 1 || v === true) return 1;
        return fail('bool', v, `${show(v)} is not a bool (0, 1, true or false)`);
      };
    case 'enum': {
      const keys = Object.keys(dataType.specs).map(Number).sort((a, b) => a - b);
      const allowed = new Set(keys);
      const list = keys.join(',');
      return (v) => {
        if (typeof v !== 'number' || !allowed.has(v)) fail('enum', v, `${show(v)} not one of enum ${list}`, keys);
        return v;
      };
    }
    case 'text': {
      const length = dataType.specs.length;
      return (v) => {
        if (typeof v !== 'string') return fail('text', v, `${show(v)} is not a text`);
        // Characters are code points; v.length (UTF-16 units) is an upper bound, so count only when it may exceed.
        if (length !== undefined && v.length > length) {
          const chars = [...v].length;
          if (chars > length) fail('length', v, `text of ${chars} characters exceeds length ${length}`, length);
        }
        return v;
      };
    }
    case 'date':
      // Alibaba TSL: a date is a UTC timestamp in ms, sent as a string; numbers are accepted too.
      return (v) => {
        const n = typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : v;
        if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
          return fail('date', v, `${show(v)} is not a date (ms since the epoch)`);
        }
        return n;
      };
    case 'struct':
    case 'array':
      return (v) => v;
  }
}
