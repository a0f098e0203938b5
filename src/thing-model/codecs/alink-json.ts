// Alink JSON, Alibaba IoT's device protocol ("Alink协议"):
//   property post  {"id":"123","version":"1.0","params":{"temperature":23.5, "humidity":{"value":40,"time":1700000000000}},
//                   "method":"thing.event.property.post"}
//   event post     {"id":"124","params":{"value":{"batteryLevel":9},"time":1700000000000},"method":"thing.event.lowBattery.post"}
// `sys` (ack options) and `version` are read by nobody here and tolerated.

import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, show } from '../check.js';
import type { Codec, DecodeEnvelope, DecodedItem } from '../types.js';

export const PROPERTY_POST_METHOD = 'thing.event.property.post';

/** The Alink method a route expects, or undefined for up_raw. */
export function alinkMethod(route: UplinkRoute): string | undefined {
  if (route.type === 'property-post') return PROPERTY_POST_METHOD;
  if (route.type === 'event-post') return `thing.event.${route.eventId}.post`;
  return undefined;
}

export interface AlinkJsonOptions {
  productKey: string;
}

/**
 * up_raw carries custom-format bytes that Alibaba runs through the product's parsing script; a
 * product whose data format is Alink JSON has none, so up_raw is refused rather than guessed at.
 */
export function createAlinkJsonCodec(opts: AlinkJsonOptions): Codec {
  return {
    type: 'alink-json',
    decode(route, payload, envelope) {
      if (route.type === 'up-raw') {
        throw new WanwuError(
          'WANWU_ERR_TOPIC',
          `product ${opts.productKey} uses the alink-json codec; thing/model/up_raw needs a binary codec (post Alink JSON to thing/event/property/post instead)`,
        );
      }
      return decodeAlinkJson(route, payload, envelope);
    },
  };
}

/** Decodes an Alink JSON property or event post. Throws WANWU_ERR_MALFORMED or WANWU_ERR_METHOD. */
export function decodeAlinkJson(
  route: Exclude<UplinkRoute, { type: 'up-raw' }>,
  payload: Buffer,
  envelope: DecodeEnvelope,
): DecodedItem[] {
  const expected = alinkMethod(route)!;
  envelope.method = expected;
  let msg: unknown;
  try {
    msg = JSON.parse(payload.toString('utf8'));
  } catch (err) {
    throw malformed(`payload is not JSON (${(err as Error).message})`, { cause: err });
  }
  if (!isObject(msg)) throw malformed(`payload must be an Alink JSON object, got ${show(msg)}`);

  // Read id and method first: the reply echoes them even if the rest is refused.
  const { id, method, params } = msg;
  if (typeof method === 'string') envelope.method = method;
  if (typeof id === 'string') envelope.msgId = id;
  else if (typeof id === 'number' && Number.isFinite(id)) envelope.msgId = String(id);
  else throw malformed(`id: expected a string or number, got ${show(id)}`);

  // The method is optional (Alibaba infers it from the topic) but must agree when given.
  if (method !== undefined && method !== expected) {
    throw new WanwuError('WANWU_ERR_METHOD', `method ${show(method)} does not match the topic (expected "${expected}")`, {
      detail: { method, expected },
    });
  }
  if (!isObject(params)) throw malformed(`params: expected an object, got ${show(params)}`);

  return route.type === 'property-post' ? propertyItems(params) : [eventItem(route.eventId, params)];
}

function propertyItems(params: Record<string, unknown>): DecodedItem[] {
  // Common case: no per-property time, one item, no grouping map.
  let untimed: Record<string, unknown> | undefined;
  let byTime: Map<number, DecodedItem> | undefined;
  const items: DecodedItem[] = [];
  for (const key in params) {
    if (!Object.hasOwn(params, key)) continue;
    guardKey(key, 'params');
    let value = params[key];
    let ts: number | undefined;
    // {"value": v, "time": ms} wraps one property with its own device time; any other object
    // (a struct value) is taken as the value itself.
    if (isWrapped(value)) {
      ts = value.time === undefined ? undefined : readTime(value.time, 'params', key, 'time');
      value = value.value;
    }
    if (ts === undefined) {
      if (!untimed) {
        untimed = {};
        items.push({ kind: 'property', data: untimed });
      }
      untimed[key] = value;
    } else {
      byTime ??= new Map();
      let item = byTime.get(ts);
      if (!item) {
        item = { kind: 'property', ts, data: {} };
        byTime.set(ts, item);
        items.push(item);
      }
      item.data[key] = value;
    }
  }
  if (items.length === 0) throw malformed('params: no properties');
  return items;
}

function eventItem(event: string, params: Record<string, unknown>): DecodedItem {
  const { value, time } = params;
  if (!isObject(value)) throw malformed(`params.value: expected an object of output data, got ${show(value)}`);
  const data: Record<string, unknown> = {};
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    guardKey(key, 'params.value');
    data[key] = value[key];
  }
  const item: DecodedItem = { kind: 'event', event, data };
  if (time !== undefined) item.ts = readTime(time, 'params', 'time');
  return item;
}

function isWrapped(v: unknown): v is { value: unknown; time?: unknown } {
  if (!isObject(v) || !Object.hasOwn(v, 'value')) return false;
  for (const k in v) if (k !== 'value' && k !== 'time') return false;
  return true;
}

/** Device time: ms since the epoch, as a number or a string of digits. */
function readTime(value: unknown, ...path: string[]): number {
  const n = typeof value === 'string' && /^\d{1,16}$/.test(value) ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 0) {
    throw malformed(`${path.reduce(keyPath, '')}: expected ms since the epoch, got ${show(value)}`);
  }
  return n;
}

/** JSON.parse makes `__proto__` an own key; copying it into a plain object would replace the prototype. */
function guardKey(key: string, path: string): void {
  if (key === '__proto__') throw malformed(`${keyPath(path, key)}: reserved key`);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function malformed(message: string, opts?: { cause?: unknown }): WanwuError {
  return new WanwuError('WANWU_ERR_MALFORMED', message, opts);
}
