// Alink JSON, Alibaba IoT's device protocol ("Alink协议"):
//   property post  thing/event/property/post
//                  {"id":"123","version":"1.0","params":{"temperature":23.5, "humidity":{"value":40,"time":1700000000000}},
//                   "method":"thing.event.property.post"}
//   event post     thing/event/{eventId}/post
//                  {"id":"124","params":{"value":{"batteryLevel":9},"time":1700000000000},"method":"thing.event.lowBattery.post"}
//   batched post   thing/event/property/pack/post (method thing.event.property.pack.post) and
//                  thing/event/property/batch/post (thing.event.property.batch.post, the Link SDK's batch report):
//                  {"id":"125","params":{
//                     "properties":{"temperature":{"value":23.5,"time":1700000000000},
//                                   "humidity":[{"value":40,"time":1700000000000},{"value":41,"time":1700000060000}]},
//                     "events":{"lowBattery":{"value":{"batteryLevel":9},"time":1700000000000}}},
//                   "method":"thing.event.property.pack.post"}
//                  Every identifier holds one {value, time} sample or an array of them. Property samples
//                  are grouped into one item per device time (as on a property post); each event sample
//                  is one item. `subDevices` (a gateway's sub-devices) is refused when not empty: Wanwu
//                  has no sub-device topology, and dropping that data silently would lose it.
// `sys` (ack options) and `version` are read by nobody here and tolerated. Alibaba's
// thing.event.property.history.post is not supported: it names devices by `identity`, which a pure
// codec cannot check against the connection.

import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, show } from '../check.js';
import type { Codec, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';

export const PROPERTY_POST_METHOD = 'thing.event.property.post';
export const PACK_POST_METHOD = 'thing.event.property.pack.post';
export const BATCH_POST_METHOD = 'thing.event.property.batch.post';

/** The routes that carry Alink JSON. */
export type AlinkRoute = Exclude<UplinkRoute, { type: 'up-raw' }>;

/** The Alink method a route expects, or undefined for up_raw. */
export function alinkMethod(route: UplinkRoute): string | undefined {
  switch (route.type) {
    case 'property-post':
      return PROPERTY_POST_METHOD;
    case 'event-post':
      return `thing.event.${route.eventId}.post`;
    case 'pack-post':
      return PACK_POST_METHOD;
    case 'batch-post':
      return BATCH_POST_METHOD;
    default:
      return undefined;
  }
}

export interface AlinkJsonOptions {
  productKey: string;
}

/**
 * up_raw carries custom-format bytes that Alibaba runs through the product's parsing script; a
 * product whose data format is Alink JSON has none, so up_raw is refused rather than guessed at.
 */
export function createAlinkJsonCodec(opts: AlinkJsonOptions): Codec {
  const upRaw = () =>
    new WanwuError(
      'WANWU_ERR_TOPIC',
      `product ${opts.productKey} uses the alink-json codec; thing/model/up_raw needs a binary codec (post Alink JSON to thing/event/property/post instead)`,
    );
  return {
    type: 'alink-json',
    decode(route, payload, envelope) {
      if (route.type === 'up-raw') throw upRaw();
      return decodeAlinkJson(route, payload, envelope);
    },
    encode(route, item) {
      if (route.type === 'up-raw') throw upRaw();
      return encodeAlinkJson(route, item);
    },
  };
}

/** Decodes an Alink JSON post. Throws WANWU_ERR_MALFORMED or WANWU_ERR_METHOD. */
export function decodeAlinkJson(route: AlinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
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

  switch (route.type) {
    case 'property-post':
      return propertyItems(params);
    case 'event-post':
      return [eventItem(route.eventId, params)];
    default:
      return packItems(params);
  }
}

function propertyItems(params: Record<string, unknown>): DecodedItem[] {
  const items = new ItemsByTime();
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
    items.add(key, value, ts);
  }
  if (items.list.length === 0) throw malformed('params: no properties');
  return items.list;
}

/**
 * Property samples grouped into items by device time, in order of appearance; a second sample of
 * the same property at the same time opens a new item instead of overwriting the first.
 */
class ItemsByTime {
  readonly list: DecodedItem[] = [];
  // Common case: no per-property time, one item, no map.
  private untimed: DecodedItem | undefined;
  private byTime: Map<number, DecodedItem> | undefined;

  add(key: string, value: unknown, ts: number | undefined): void {
    let item = ts === undefined ? this.untimed : this.byTime?.get(ts);
    if (item === undefined || Object.hasOwn(item.data, key)) {
      item = ts === undefined ? { kind: 'property', data: {} } : { kind: 'property', ts, data: {} };
      this.list.push(item);
      if (ts === undefined) this.untimed = item;
      else (this.byTime ??= new Map()).set(ts, item);
    }
    item.data[key] = value;
  }
}

function eventItem(event: string, params: Record<string, unknown>, path = 'params'): DecodedItem {
  const { value, time } = params;
  const valuePath = keyPath(path, 'value');
  if (!isObject(value)) throw malformed(`${valuePath}: expected an object of output data, got ${show(value)}`);
  const data: Record<string, unknown> = {};
  for (const key in value) {
    if (!Object.hasOwn(value, key)) continue;
    guardKey(key, valuePath);
    data[key] = value[key];
  }
  const item: DecodedItem = { kind: 'event', event, data };
  if (time !== undefined) item.ts = readTime(time, path, 'time');
  return item;
}

const PACK_KEYS = new Set(['properties', 'events', 'subDevices']);

function packItems(params: Record<string, unknown>): DecodedItem[] {
  for (const key in params) {
    if (!PACK_KEYS.has(key)) throw malformed(`${keyPath('params', key)}: unknown key (a batched post carries properties, events and subDevices)`);
  }
  const { properties, events, subDevices } = params;
  if (subDevices !== undefined && !(Array.isArray(subDevices) && subDevices.length === 0)) {
    throw malformed(
      'params.subDevices: sub-device data is not supported (Wanwu has no gateway sub-devices; each device posts its own data on its own connection)',
    );
  }
  const props = new ItemsByTime();
  if (properties !== undefined) {
    if (!isObject(properties)) throw malformed(`params.properties: expected an object, got ${show(properties)}`);
    for (const key in properties) {
      if (!Object.hasOwn(properties, key)) continue;
      guardKey(key, 'params.properties');
      forEachSample(properties[key], keyPath('params.properties', key), (sample, path) => {
        props.add(key, sample.value, sample.time === undefined ? undefined : readTime(sample.time, path, 'time'));
      });
    }
  }
  const items = props.list;
  if (events !== undefined) {
    if (!isObject(events)) throw malformed(`params.events: expected an object, got ${show(events)}`);
    for (const event in events) {
      if (!Object.hasOwn(events, event)) continue;
      guardKey(event, 'params.events');
      forEachSample(events[event], keyPath('params.events', event), (sample, path) => items.push(eventItem(event, sample, path)));
    }
  }
  if (items.length === 0) throw malformed('params: no properties or events');
  return items;
}

/** A batched identifier holds one {value, time} sample or an array of them. */
function forEachSample(v: unknown, path: string, each: (sample: { value: unknown; time?: unknown }, path: string) => void): void {
  if (Array.isArray(v)) {
    for (let i = 0; i < v.length; i++) {
      const p = keyPath(path, i);
      const sample: unknown = v[i];
      if (!isWrapped(sample)) throw malformed(`${p}: expected {"value", "time"}, got ${show(sample)}`);
      each(sample, p);
    }
  } else if (isWrapped(v)) {
    each(v, path);
  } else {
    throw malformed(`${path}: expected {"value", "time"} or an array of them, got ${show(v)}`);
  }
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

function invalid(message: string, opts?: { cause?: unknown }): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', message, opts);
}

/**
 * The Alink JSON a device sends on `route` for one item: `{id, version: "1.0", params, method}`,
 * with `id` = item.msgId (default "1"). A property item with a time wraps every value as
 * {value, time}; without one, values are sent plain (a struct value that looks like a
 * {value, time} wrapper is wrapped as {value} so it reads back as itself). On pack/batch routes the
 * item becomes one sample (batch: in an array). Throws WANWU_ERR_INVALID when the item does not
 * fit the route (an event on the property topic, another event's topic, no data).
 */
export function encodeAlinkJson(route: AlinkRoute, item: EncodeInput): Buffer {
  const method = alinkMethod(route)!;
  let params: Record<string, unknown>;
  const sample = (value: unknown) => (item.ts === undefined ? { value } : { value, time: item.ts });
  if (route.type === 'event-post') {
    if (item.kind !== 'event' || item.event !== route.eventId) {
      throw invalid(`${describe(item)} cannot be posted on thing/event/${route.eventId}/post`);
    }
    params = sample(item.data);
  } else if (item.kind === 'property') {
    const values: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    let n = 0;
    for (const key in item.data) {
      const v = item.data[key];
      if (route.type === 'property-post') values[key] = item.ts === undefined && !isWrapped(v) ? v : sample(v);
      else values[key] = route.type === 'batch-post' ? [sample(v)] : sample(v);
      n++;
    }
    if (n === 0) throw invalid('a property item without data cannot be posted');
    params = route.type === 'property-post' ? values : { properties: values };
  } else {
    if (route.type === 'property-post') throw invalid(`${describe(item)} cannot be posted on thing/event/property/post`);
    if (item.event === undefined || item.event === '') throw invalid('an event item needs its event identifier');
    const events: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
    events[item.event] = route.type === 'batch-post' ? [sample(item.data)] : sample(item.data);
    params = { events };
  }
  let json: string;
  try {
    json = JSON.stringify({ id: item.msgId ?? '1', version: '1.0', params, method });
  } catch (err) {
    throw invalid(`the item cannot be written as JSON (${(err as Error).message})`, { cause: err });
  }
  return Buffer.from(json, 'utf8');
}

function describe(item: EncodeInput): string {
  return item.kind === 'event' ? `an event item (${item.event ?? 'no event'})` : 'a property item';
}
