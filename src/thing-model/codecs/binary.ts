// Declarative binary layouts for up_raw payloads (NB-IoT meters and alarms send a few packed
// bytes, not JSON). product.json:
//   "codec": {"type": "binary", "kind": "property", "fields": [
//     {"type": "u8", "const": 1, "name": "msgType"},
//     {"id": "cumulativeFlow", "type": "u32", "scale": 0.001}, ...]}
// value = raw * scale + offset; `const` compares the raw value (frame headers, message types).
//
// The layout is compiled once at load into a table of fields with fixed byte offsets and
// DataView readers, so decoding a frame is one length check and one pass over the table. A field
// is described by an entry in FIELD_TYPES (size, reader, writer, range); bit fields, BCD, groups,
// discriminators and CRC checks are meant to become further entries / field kinds in this table.
//
// Alink JSON property/event posts to a binary product are still Alink JSON (Alibaba: the custom
// format only applies to up_raw), so those routes go to the alink-json codec.

import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { DefinitionReader, keyPath, show, type JsonObject } from '../check.js';
import type { ThingModel, TslDataType } from '../tsl.js';
import type { Codec, DecodeEnvelope, DecodedItem } from '../types.js';
import { decodeAlinkJson } from './alink-json.js';

interface FieldType {
  size: number;
  integer: boolean;
  min: number;
  max: number;
  read(dv: DataView, at: number, littleEndian: boolean): number;
  write(dv: DataView, at: number, raw: number, littleEndian: boolean): void;
}

const F32_MAX = 3.4028234663852886e38;

export const FIELD_TYPES = {
  u8: { size: 1, integer: true, min: 0, max: 0xff, read: (dv, at) => dv.getUint8(at), write: (dv, at, v) => dv.setUint8(at, v) },
  i8: { size: 1, integer: true, min: -0x80, max: 0x7f, read: (dv, at) => dv.getInt8(at), write: (dv, at, v) => dv.setInt8(at, v) },
  u16: { size: 2, integer: true, min: 0, max: 0xffff, read: (dv, at, le) => dv.getUint16(at, le), write: (dv, at, v, le) => dv.setUint16(at, v, le) },
  i16: { size: 2, integer: true, min: -0x8000, max: 0x7fff, read: (dv, at, le) => dv.getInt16(at, le), write: (dv, at, v, le) => dv.setInt16(at, v, le) },
  u32: { size: 4, integer: true, min: 0, max: 0xffffffff, read: (dv, at, le) => dv.getUint32(at, le), write: (dv, at, v, le) => dv.setUint32(at, v, le) },
  i32: { size: 4, integer: true, min: -0x80000000, max: 0x7fffffff, read: (dv, at, le) => dv.getInt32(at, le), write: (dv, at, v, le) => dv.setInt32(at, v, le) },
  // 64-bit integers are read exactly but must fit a JavaScript number (2^53) to be reported.
  u64: {
    size: 8, integer: true, min: 0, max: Number.MAX_SAFE_INTEGER,
    read: (dv, at, le) => bigToNumber(dv.getBigUint64(at, le)), write: (dv, at, v, le) => dv.setBigUint64(at, BigInt(v), le),
  },
  i64: {
    size: 8, integer: true, min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER,
    read: (dv, at, le) => bigToNumber(dv.getBigInt64(at, le)), write: (dv, at, v, le) => dv.setBigInt64(at, BigInt(v), le),
  },
  f32: { size: 4, integer: false, min: -F32_MAX, max: F32_MAX, read: (dv, at, le) => shortestF32(dv.getFloat32(at, le)), write: (dv, at, v, le) => dv.setFloat32(at, v, le) },
  f64: { size: 8, integer: false, min: -Number.MAX_VALUE, max: Number.MAX_VALUE, read: (dv, at, le) => dv.getFloat64(at, le), write: (dv, at, v, le) => dv.setFloat64(at, v, le) },
} as const satisfies Record<string, FieldType>;

export type FieldTypeName = keyof typeof FIELD_TYPES;

/** One field of a compiled layout. */
export interface CompiledField {
  /** TSL identifier the value is reported under; undefined for skipped bytes. */
  readonly id: string | undefined;
  /** For messages: id, else name, else fields[i]. */
  readonly label: string;
  readonly type: FieldTypeName;
  /** Byte offset in the frame. */
  readonly at: number;
  readonly size: number;
  readonly littleEndian: boolean;
  readonly scale: number;
  readonly offset: number;
  /** Raw value the bytes must hold (checked before scale/offset). */
  readonly const: number | undefined;
  /** raw -> reported value (scale, offset, rounding to the scale's decimals). */
  readonly toValue: (raw: number) => number;
}

export interface BinaryLayout {
  readonly kind: 'property' | 'event';
  readonly event?: string;
  /** Frame size in bytes. */
  readonly size: number;
  readonly fields: readonly CompiledField[];
}

export interface LayoutContext {
  /** When given, field ids (and the event) must exist in it and fit the field. */
  model?: ThingModel | null;
  /** Reports errors against a file (defaults to "binary layout"). */
  reader?: DefinitionReader;
  /** Key path of the layout in that file (default "codec"). */
  path?: string;
}

const FIELD_KEYS = ['id', 'name', 'type', 'endian', 'scale', 'offset', 'const'] as const;
const LAYOUT_KEYS = ['type', 'kind', 'event', 'fields'] as const;

/** Checks and compiles a layout (the `codec` object of product.json). Throws WANWU_ERR_PRODUCT. */
export function compileBinaryLayout(json: unknown, ctx: LayoutContext = {}): BinaryLayout {
  const r: DefinitionReader = ctx.reader ?? new DefinitionReader('binary layout');
  const path = ctx.path ?? 'codec';
  const model = ctx.model ?? null;
  const o = r.object(json, path);
  r.onlyKeys(o, path, LAYOUT_KEYS);
  const kind = o.kind === undefined ? 'property' : r.oneOf(o.kind, keyPath(path, 'kind'), ['property', 'event'] as const);

  // Where field ids must be found: the model's properties, or the event's outputData.
  let targets: Map<string, TslDataType> | null = null;
  let event: string | undefined;
  if (kind === 'event') {
    event = r.string(o.event, keyPath(path, 'event'));
    if (model) {
      const def = model.events.find((e) => e.identifier === event);
      if (!def) r.fail(keyPath(path, 'event'), `"${event}" is not an event in model.json`);
      targets = new Map(def.outputData.map((p) => [p.identifier, p.dataType]));
    }
  } else {
    if (o.event !== undefined) r.fail(keyPath(path, 'event'), 'only allowed with "kind": "event"');
    if (model) targets = new Map(model.properties.map((p) => [p.identifier, p.dataType]));
  }
  const where = kind === 'event' ? `an output of event ${event}` : 'a property';

  const list = r.array(o.fields, keyPath(path, 'fields'));
  if (list.length === 0) r.fail(keyPath(path, 'fields'), 'a layout needs at least one field');
  const fields: CompiledField[] = [];
  const seen = new Map<string, number>();
  let at = 0;
  list.forEach((value, i) => {
    const p = keyPath(keyPath(path, 'fields'), i);
    const f = r.object(value, p);
    r.onlyKeys(f, p, FIELD_KEYS);
    const type = r.oneOf(f.type, keyPath(p, 'type'), Object.keys(FIELD_TYPES) as FieldTypeName[]);
    const ft: FieldType = FIELD_TYPES[type];
    const endian = f.endian === undefined ? 'big' : r.oneOf(f.endian, keyPath(p, 'endian'), ['big', 'little'] as const);
    const scale = f.scale === undefined ? 1 : r.number(f.scale, keyPath(p, 'scale'));
    if (scale === 0) r.fail(keyPath(p, 'scale'), 'must not be 0');
    const offset = f.offset === undefined ? 0 : r.number(f.offset, keyPath(p, 'offset'));
    const name = r.optionalString(f.name, keyPath(p, 'name'));
    let constant: number | undefined;
    if (f.const !== undefined) {
      constant = ft.integer
        ? r.integer(f.const, keyPath(p, 'const'), { min: ft.min, max: ft.max })
        : r.number(f.const, keyPath(p, 'const'));
    }
    let id: string | undefined;
    if (f.id !== undefined) {
      id = r.string(f.id, keyPath(p, 'id'), { re: /^(?!__proto__$)[A-Za-z0-9_]{1,128}$/, what: 'an identifier' });
      const first = seen.get(id);
      if (first !== undefined) r.fail(keyPath(p, 'id'), `duplicate id "${id}" (also fields[${first}])`);
      seen.set(id, i);
      if (targets) {
        const dataType = targets.get(id);
        if (!dataType) r.fail(keyPath(p, 'id'), `"${id}" is not ${where} in model.json`);
        checkFits(r, p, id, dataType, scale, offset);
      }
    }
    const label = id ?? name ?? `fields[${i}]`;
    fields.push({
      id,
      label,
      type,
      at,
      size: ft.size,
      littleEndian: endian === 'little',
      scale,
      offset,
      const: constant,
      toValue: makeToValue(ft.integer, scale, offset),
    });
    at += ft.size;
  });
  const layout: BinaryLayout = event === undefined ? { kind, size: at, fields } : { kind, event, size: at, fields };
  return Object.freeze(layout);
}

/** A binary field carries a number: refuse targets it cannot represent, found at load rather than per message. */
function checkFits(r: DefinitionReader, p: string, id: string, dataType: TslDataType, scale: number, offset: number): void {
  const t = dataType.type;
  const what = `${/^[aeiou]/.test(t) ? 'an' : 'a'} ${t}`;
  if (t === 'text' || t === 'struct' || t === 'array') r.fail(keyPath(p, 'id'), `${id} is ${what} in model.json; a binary field carries a number`);
  if (t === 'int' || t === 'enum' || t === 'bool' || t === 'date') {
    if (!Number.isInteger(scale)) r.fail(keyPath(p, 'scale'), `${show(scale)} would make ${id} fractional; it is ${what} in model.json`);
    if (!Number.isInteger(offset)) r.fail(keyPath(p, 'offset'), `${show(offset)} would make ${id} fractional; it is ${what} in model.json`);
  }
}

function makeToValue(integer: boolean, scale: number, offset: number): (raw: number) => number {
  if (scale === 1 && offset === 0) return (raw) => raw;
  // An integer raw value times 0.001 is a decimal with 3 places; binary floating point gives
  // 12.344999999999999 for 12345 * 0.001, so round back to the scale's (and offset's) decimals.
  const decimals = Math.max(decimalsOf(scale), decimalsOf(offset));
  if (!integer || decimals === 0 || decimals > 12) return (raw) => raw * scale + offset;
  const p = 10 ** decimals;
  return (raw) => Math.round((raw * scale + offset) * p) / p + 0; // + 0 turns -0 into 0
}

/** Number of decimal places in the shortest representation of n (0.001 -> 3, 1e-7 -> 7, 250 -> 0). */
export function decimalsOf(n: number): number {
  const s = String(Math.abs(n));
  const e = s.indexOf('e');
  const mantissa = e < 0 ? s : s.slice(0, e);
  const exponent = e < 0 ? 0 : Number(s.slice(e + 1));
  const dot = mantissa.indexOf('.');
  return Math.max(0, (dot < 0 ? 0 : mantissa.length - dot - 1) - exponent);
}

/** The shortest decimal that reads back as the same float32 (0.1f is reported as 0.1, not 0.10000000149011612). */
function shortestF32(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  for (let digits = 6; digits < 9; digits++) {
    const y = Number(x.toPrecision(digits));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

function bigToNumber(b: bigint): number {
  const n = Number(b);
  if (!Number.isSafeInteger(n)) {
    throw new WanwuError('WANWU_ERR_INVALID', `64-bit value ${b} does not fit a JavaScript number (2^53)`, { detail: { rule: 'int53', value: String(b) } });
  }
  return n;
}

function describe(f: CompiledField): string {
  return `field ${f.label} (${f.type} at offset ${f.at})`;
}

function hex(raw: number, f: CompiledField): string {
  return Number.isInteger(raw) && raw >= 0 ? `0x${raw.toString(16).padStart(f.size * 2, '0')}` : String(raw);
}

/** Frame bytes -> {identifier: value}. Throws WANWU_ERR_MALFORMED on a wrong size or const mismatch. */
export function decodeBinary(layout: BinaryLayout, frame: Uint8Array): Record<string, unknown> {
  if (frame.length !== layout.size) throw sizeError(layout, frame.length);
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  const data: Record<string, unknown> = {};
  const fields = layout.fields;
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i]!;
    let raw: number;
    try {
      raw = FIELD_TYPES[f.type].read(dv, f.at, f.littleEndian);
    } catch (err) {
      if (err instanceof WanwuError) throw new WanwuError(err.code, `${describe(f)}: ${err.message}`, { detail: { ...err.detail, identifier: f.id } });
      throw err;
    }
    if (f.const !== undefined && raw !== f.const) {
      throw new WanwuError('WANWU_ERR_MALFORMED', `${describe(f)} is ${hex(raw, f)}; expected ${hex(f.const, f)}`, {
        detail: { field: f.label, offset: f.at, expected: f.const, value: raw },
      });
    }
    if (f.id !== undefined) data[f.id] = f.toValue(raw);
  }
  return data;
}

function sizeError(layout: BinaryLayout, length: number): WanwuError {
  if (length > layout.size) {
    const extra = length - layout.size;
    return new WanwuError('WANWU_ERR_MALFORMED', `frame is ${length} bytes; the layout ends at ${layout.size} (${extra} trailing byte${extra === 1 ? '' : 's'})`, {
      detail: { length, expected: layout.size },
    });
  }
  // Name the first field that does not fit, so the device developer sees where the frame stops.
  const f = layout.fields.find((x) => x.at + x.size > length)!;
  return new WanwuError(
    'WANWU_ERR_MALFORMED',
    `frame is ${length} bytes; ${describe(f)} needs ${f.size} (the layout is ${layout.size} bytes)`,
    { detail: { length, expected: layout.size, field: f.label, offset: f.at } },
  );
}

/**
 * {identifier: value} -> frame bytes: the inverse of decodeBinary (tests build frames with it;
 * downlink will too). Const fields are written as their const; unnamed fields as 0. Throws
 * WANWU_ERR_INVALID for a missing value or one the field cannot hold.
 */
export function encodeBinary(layout: BinaryLayout, values: Readonly<Record<string, number | boolean>>): Buffer {
  const frame = Buffer.alloc(layout.size);
  const dv = new DataView(frame.buffer, frame.byteOffset, frame.byteLength);
  for (const f of layout.fields) {
    const ft: FieldType = FIELD_TYPES[f.type];
    let raw: number;
    if (f.id !== undefined && (Object.hasOwn(values, f.id) || f.const === undefined)) {
      const given = values[f.id];
      if (given === undefined) throw encodeError(f, `no value for ${f.id}`, 'missing', undefined);
      const value = typeof given === 'boolean' ? Number(given) : given;
      raw = (value - f.offset) / f.scale;
      if (ft.integer) raw = Math.round(raw);
      if (!Number.isFinite(raw) || raw < ft.min || raw > ft.max) {
        throw encodeError(f, `${f.id}: ${show(given)} does not fit ${f.type} (raw ${raw}, range ${ft.min}..${ft.max})`, 'range', given);
      }
      if (f.const !== undefined && raw !== f.const) throw encodeError(f, `${f.id}: ${show(given)} is not the const ${f.const}`, 'const', given);
    } else {
      raw = f.const ?? 0;
    }
    ft.write(dv, f.at, raw, f.littleEndian);
  }
  return frame;
}

function encodeError(f: CompiledField, message: string, rule: string, value: unknown): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', `${message} (${describe(f)})`, { detail: { identifier: f.id, rule, value } });
}

/** The binary codec: up_raw through the layout, Alink JSON posts through the alink-json codec. */
export function createBinaryCodec(layout: BinaryLayout): Codec {
  const { kind, event } = layout;
  return {
    type: 'binary',
    decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
      if (route.type !== 'up-raw') return decodeAlinkJson(route, payload, envelope);
      const data = decodeBinary(layout, payload);
      return [event === undefined ? { kind, data } : { kind, event, data }];
    },
  };
}

/** Builds the codec from product.json's `codec` object. */
export function binaryCodecFromJson(json: JsonObject, ctx: LayoutContext): Codec {
  return createBinaryCodec(compileBinaryLayout(json, ctx));
}
