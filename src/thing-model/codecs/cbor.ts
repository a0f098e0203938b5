// The `cbor` codec: up_raw payloads that are one CBOR map (RFC 8949), as constrained devices send
// where JSON is too big. product.json:
//   "codec": {"type": "cbor", "map"?: {"1": "soilMoisture", "2": "soilTemperature", "0": "$event", "9": "$time"}}
// Map keys are CBOR integers or text. `map` names TSL identifiers for them: a key written as an
// integer ("1", "-2") stands for that CBOR integer key (modules use small integers to save bytes),
// any other for that text key. Text keys without an entry are taken as identifiers themselves;
// integer keys without one are refused. Two targets are reserved:
//   $event  holds an event identifier (text): the other entries are that event's output data;
//   $time   holds the device time: ms since the epoch (integer) or a tag 0/1 date.
// The text keys "$event" and "$time" mean the same without a map entry.
// Values: integers, floats, text, booleans, null; arrays and maps (text keys) for struct/array
// properties; a tag 0/1 date becomes ms since the epoch. Byte strings and other tags have no TSL
// type and are refused. Alink JSON posts to a cbor product are still Alink JSON.

import { Decoder, Encoder } from 'cbor-x';
import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, show, type JsonObject } from '../check.js';
import type { ThingModel } from '../tsl.js';
import type { Codec, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';
import { createAlinkJsonCodec, decodeAlinkJson } from './alink-json.js';
import type { CodecContext } from './index.js';

const CBOR_KEYS = ['type', 'map'] as const;
const EVENT = '$event';
const TIME = '$time';
const INTEGER_KEY = /^-?(0|[1-9]\d{0,15})$/;
const IDENTIFIER = /^(?!__proto__$)[A-Za-z0-9_]{1,128}$/;
/** Deepest nesting read from a payload (struct in array in property is 3). */
const MAX_DEPTH = 16;

// Maps come back as Map objects so that integer keys stay integers; records (a cbor-x extension)
// are neither read nor written.
const decoder = new Decoder({ mapsAsObjects: false, useRecords: false });
const encoder = new Encoder({ mapsAsObjects: false, useRecords: false, variableMapSize: true });

export interface CborCodecOptions {
  /** CBOR key (integer or text) -> TSL identifier, "$event" or "$time". */
  map?: ReadonlyMap<number | string, string>;
  productKey?: string;
}

/** Builds the codec from product.json's `codec` object; checks the map against the model. */
export function cborCodecFromJson(options: JsonObject, ctx: CodecContext): Codec {
  const r = ctx.reader;
  r.onlyKeys(options, ctx.path, CBOR_KEYS);
  const map = new Map<number | string, string>();
  if (options.map !== undefined) {
    const mapPath = keyPath(ctx.path, 'map');
    const known = ctx.model ? identifiersOf(ctx.model) : null;
    const seen = new Map<string, string>();
    for (const [key, target] of Object.entries(r.object(options.map, mapPath))) {
      const at = keyPath(mapPath, key);
      const id = r.string(target, at);
      if (id !== EVENT && id !== TIME) {
        if (!IDENTIFIER.test(id)) r.fail(at, `${show(id)} is not an identifier (letters, digits, _), "${EVENT}" or "${TIME}"`);
        if (known && !known.has(id)) r.fail(at, `"${id}" is not a property or event output in model.json`);
      }
      const first = seen.get(id);
      if (first !== undefined) r.fail(at, `"${id}" is already the target of key ${show(first)}`);
      seen.set(id, key);
      map.set(INTEGER_KEY.test(key) ? Number(key) : key, id);
    }
  }
  return createCborCodec({ map, productKey: ctx.productKey });
}

export function createCborCodec(opts: CborCodecOptions = {}): Codec {
  const byKey = new Map(opts.map ?? []);
  const keyOf = new Map<string, number | string>();
  for (const [key, id] of byKey) keyOf.set(id, key);
  const alink = createAlinkJsonCodec({ productKey: opts.productKey ?? '' });

  return {
    type: 'cbor',
    decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
      if (route.type !== 'up-raw') return decodeAlinkJson(route, payload, envelope);
      let root: unknown;
      try {
        root = decoder.decode(payload);
      } catch (err) {
        throw malformed(`payload is not one CBOR item (${err instanceof Error ? err.message : String(err)})`, err);
      }
      if (!(root instanceof Map)) throw malformed(`payload must be a CBOR map, got ${kindOf(root)}`);
      const data: Record<string, unknown> = {};
      let event: string | undefined;
      let ts: number | undefined;
      for (const [key, value] of root as Map<unknown, unknown>) {
        let id: string | undefined;
        if (typeof key === 'string') id = byKey.get(key) ?? key;
        else if (typeof key === 'number' && Number.isSafeInteger(key)) {
          id = byKey.get(key);
          if (id === undefined) {
            throw new WanwuError('WANWU_ERR_UNKNOWN_IDENTIFIER', `CBOR key ${key} is not in the codec's map`, { detail: { identifier: String(key) } });
          }
        } else throw malformed(`map key ${kindOf(key)}: keys must be integers or text`);
        if (id === EVENT) {
          if (typeof value !== 'string' || !IDENTIFIER.test(value)) throw malformed(`${EVENT}: expected an event identifier, got ${kindOf(value)}`);
          event = value;
        } else if (id === TIME) {
          ts = readTime(value);
        } else {
          if (id === '__proto__') throw malformed('map key "__proto__" is reserved');
          if (Object.hasOwn(data, id)) throw malformed(`${id}: given twice`);
          data[id] = plain(value, id, 0);
        }
      }
      let item: DecodedItem;
      if (event === undefined) {
        if (Object.keys(data).length === 0) throw malformed('the map holds no properties');
        item = { kind: 'property', data };
      } else item = { kind: 'event', event, data };
      if (ts !== undefined) item.ts = ts;
      return [item];
    },
    encode(route: UplinkRoute, item: EncodeInput): Buffer {
      if (route.type !== 'up-raw') {
        if (!alink.encode) throw new WanwuError('WANWU_ERR_INVALID', 'Alink JSON encoding is not available');
        return alink.encode(route, item);
      }
      const m = new Map<number | string, unknown>();
      if (item.kind === 'event') {
        if (!item.event) throw new WanwuError('WANWU_ERR_INVALID', 'an event item needs its event identifier');
        m.set(keyOf.get(EVENT) ?? EVENT, item.event);
      }
      if (item.ts !== undefined) m.set(keyOf.get(TIME) ?? TIME, item.ts);
      for (const id of Object.keys(item.data)) m.set(keyOf.get(id) ?? id, item.data[id]);
      try {
        // cbor-x reuses its output buffer: copy.
        return Buffer.from(encoder.encode(m));
      } catch (err) {
        throw new WanwuError('WANWU_ERR_INVALID', `cannot encode as CBOR: ${(err as Error).message}`, { cause: err });
      }
    },
  };
}

/** A CBOR value as JSON-safe data, or WANWU_ERR_MALFORMED / WANWU_ERR_INVALID naming where. */
function plain(v: unknown, at: string, depth: number): unknown {
  switch (typeof v) {
    case 'string':
    case 'boolean':
      return v;
    case 'number':
      if (!Number.isFinite(v)) throw malformed(`${at}: ${v} is not a finite number`);
      return v;
    case 'bigint': {
      const n = Number(v);
      if (!Number.isSafeInteger(n)) {
        throw new WanwuError('WANWU_ERR_INVALID', `${at}: ${v} does not fit a JavaScript number (2^53)`, { detail: { identifier: at, rule: 'int53', value: String(v) } });
      }
      return n;
    }
    case 'object':
      break;
    default:
      throw malformed(`${at}: ${kindOf(v)} has no TSL type`);
  }
  if (v === null) return null;
  if (depth >= MAX_DEPTH) throw malformed(`${at}: nested deeper than ${MAX_DEPTH}`);
  if (v instanceof Date) {
    const t = v.getTime();
    if (!Number.isSafeInteger(t)) throw malformed(`${at}: not a valid date`);
    return t;
  }
  if (Array.isArray(v)) return v.map((x, i) => plain(x, `${at}[${i}]`, depth + 1));
  if (v instanceof Map) {
    const out: Record<string, unknown> = {};
    for (const [key, x] of v as Map<unknown, unknown>) {
      if (typeof key !== 'string') throw malformed(`${at}: member key ${kindOf(key)}: struct members are named by text`);
      if (key === '__proto__') throw malformed(`${at}: member key "__proto__" is reserved`);
      out[key] = plain(x, `${at}.${key}`, depth + 1);
    }
    return out;
  }
  throw malformed(`${at}: ${kindOf(v)} has no TSL type`);
}

function readTime(v: unknown): number {
  const t = v instanceof Date ? v.getTime() : typeof v === 'bigint' ? Number(v) : v;
  if (typeof t !== 'number' || !Number.isSafeInteger(t) || t < 0) throw malformed(`${TIME}: expected ms since the epoch, got ${kindOf(v)}`);
  return t;
}

/** A short description of a decoded CBOR value for messages. */
function kindOf(v: unknown): string {
  if (v === undefined) return 'undefined';
  if (v === null || typeof v === 'number' || typeof v === 'boolean') return String(v);
  if (typeof v === 'string') return show(v);
  if (typeof v === 'bigint') return `${v}`;
  if (v instanceof Uint8Array) return `a byte string of ${v.length} bytes`;
  if (Array.isArray(v)) return 'an array';
  if (v instanceof Map) return 'a map';
  if (v instanceof Date) return 'a date';
  const name = (v as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name !== 'Object' ? `a ${name} (CBOR tag)` : 'an unsupported CBOR item';
}

function identifiersOf(model: ThingModel): Set<string> {
  const ids = new Set(model.properties.map((p) => p.identifier));
  for (const e of model.events) for (const p of e.outputData) ids.add(p.identifier);
  return ids;
}

function malformed(message: string, cause?: unknown): WanwuError {
  return new WanwuError('WANWU_ERR_MALFORMED', message, cause === undefined ? undefined : { cause });
}
