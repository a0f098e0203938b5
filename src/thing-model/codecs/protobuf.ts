// The `protobuf` codec: RedCap and Cat-1 devices that send protobuf instead of Alink JSON
// (devices/README.md "The protobuf codec" documents every option). product.json:
//   "codec": {"type": "protobuf", "proto": "vehicle.proto", "message": "wanwu.vehicle.Telemetry"}
// or, with several messages on up_raw told apart by a leading type byte, some of them events:
//   "typeByte": {"offset": 0, "messages": {"1": "wanwu.vehicle.Telemetry", "2": "wanwu.vehicle.HarshBraking"}},
//   "events": {"wanwu.vehicle.HarshBraking": "harshBraking"}
// and, on the Alink topics, a protobuf body instead of Alink JSON:
//   "messages": {"up_raw": "...", "property": "...", "event:harshBraking": "..."}
// Fields map to TSL identifiers by their .proto names (parsed with keepCase); "fields" renames,
// flattens ("gps.lat": "latitude") or skips (null) them.
// Commands (encodeCommand, sent on down_raw) name one message per Alink method, optionally after a
// type byte so that the device can tell them apart:
//   "downlink": {"thing.service.property.set": "pkg.SetProperties",
//                "thing.service.reboot": {"message": "pkg.Reboot", "typeByte": 3}}
// Its fields map to the rw properties (property set) or the service's inputData. Without
// `downlink` the codec has no encodeCommand and commands go out as Alink JSON (an MQTT device that
// posts protobuf may well read Alink JSON on the service topics); with it, a method it does not
// name is refused at submission. The frame carries no Alink message id.
//
// Everything is resolved at load: the .proto files are read and parsed once, every message gets a
// plan (one slot per field: identifier, presence rule, value converter) checked against the thing
// model, so decoding is protobufjs's generated Type.decode plus one pass over each plan.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import protobuf from 'protobufjs';
import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, show, type DefinitionReader, type JsonObject } from '../check.js';
import type { ThingModel, TslDataType } from '../tsl.js';
import type { Codec, CommandMessage, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';
import { alinkMethod, createAlinkJsonCodec, decodeAlinkJson } from './alink-json.js';
import type { CodecContext } from './index.js';

type Msg = Record<string, unknown>;
/** Decoded protobufjs value -> TSL value (throws WanwuError), or TSL value -> a value Type.encode accepts. */
type Convert = (value: unknown) => unknown;

/** When a field is reported. */
const Presence = {
  /** proto3 scalar without `optional`: absent means the default value, which is reported. */
  Implicit: 0,
  /** oneof member, `optional`, proto2 field, message field: reported only when on the wire. */
  Explicit: 1,
  /** repeated field: reported when it has elements (protobuf cannot tell empty from absent). */
  List: 2,
  /** map field: reported when it has entries. */
  Map: 3,
} as const;
type Presence = (typeof Presence)[keyof typeof Presence];

interface Slot {
  /** The .proto field name (keepCase), the property of a decoded message. */
  readonly name: string;
  /** TSL identifier (of the item, or of the struct member) the value is reported under. */
  readonly id: string;
  readonly presence: Presence;
  /** Name of the (non-synthetic) oneof the field belongs to; encode refuses two members. */
  readonly oneof: string | undefined;
  /** null: the decoded value is reported as it is. */
  readonly decode: Convert | null;
  readonly encode: Convert;
  /** A nested message whose fields are lifted into this level ("gps.lat": "latitude"). */
  readonly flatten: Plan | undefined;
}

interface Plan {
  readonly type: protobuf.Type;
  readonly slots: readonly Slot[];
  /** Field numbers of the message, to tell a known field sent with the wrong wire type from an unknown one. */
  readonly numbers: ReadonlyMap<number, string>;
  /** Every identifier the plan reports, flattened levels included (encode checks coverage with it). */
  readonly ids: ReadonlySet<string>;
  /** Writes the reported values of a decoded message into `out` (generated from the slots, see compileFill). */
  readonly fill: (msg: Msg, out: Msg) => void;
}

interface Binding {
  /** Full message name, without the leading dot. */
  readonly message: string;
  readonly kind: 'property' | 'event';
  readonly event: string | undefined;
  readonly plan: Plan;
}

type Selector =
  | { readonly by: 'message'; readonly binding: Binding }
  | {
      readonly by: 'typeByte';
      readonly offset: number;
      /** Indexed by the type byte. */
      readonly table: readonly (Binding | undefined)[];
      readonly bytes: readonly number[];
    };

const CODEC_KEYS = ['type', 'proto', 'message', 'typeByte', 'messages', 'events', 'fields', 'downlink'] as const;
const DOWNLINK_KEYS = ['message', 'typeByte'] as const;
const PROPERTY_SET_METHOD = 'thing.service.property.set';
// As src/downlink/build.ts accepts it.
const SERVICE_METHOD = /^thing\.service\.([A-Za-z0-9_:\-]{1,128})$/;
const TYPE_BYTE_KEYS = ['offset', 'messages'] as const;
// TSL identifiers; `block:id` names a feature of an Alibaba custom module (see tsl.ts).
const IDENTIFIER = /^(?!__proto__$)[A-Za-z0-9_:]{1,257}$/;
const ROUTE_KEY = /^(up_raw|property|event:(?!__proto__$)[A-Za-z0-9_:]{1,257})$/;
const TIMESTAMP = '.google.protobuf.Timestamp';
const F32_MAX = 3.4028234663852886e38;

// ---------------------------------------------------------------------------------------------
// Loading the .proto files

/**
 * Reads `file` and its imports, resolved against the product folder (like `protoc -I <folder>`)
 * and kept inside it; google/protobuf/*.proto come bundled with protobufjs. keepCase keeps the
 * .proto field names, so they can equal TSL identifiers.
 */
function loadProto(r: DefinitionReader, at: string, dir: string, file: string): protobuf.Root {
  const base = path.resolve(dir);
  const root = new protobuf.Root();
  const seen = new Set<string>();
  const load = (name: string, importer: string | undefined): void => {
    if (seen.has(name)) return;
    seen.add(name);
    const where = importer === undefined ? name : `${name} (imported by ${importer})`;
    const bundled = protobuf.common.get(name) as { nested?: Record<string, unknown> } | null;
    if (bundled) {
      root.addJSON((bundled.nested ?? {}) as Parameters<protobuf.Root['addJSON']>[0]);
      return;
    }
    const full = path.resolve(base, name);
    if (path.isAbsolute(name) || !full.startsWith(base + path.sep)) r.fail(at, `${where}: outside the product folder`);
    let source: string;
    try {
      source = readFileSync(full, 'utf8');
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      r.fail(at, `${where}: ${code === 'ENOENT' ? `file not found (${path.join(dir, name)})` : (err as Error).message}`);
    }
    let parsed: protobuf.IParserResult;
    try {
      parsed = protobuf.parse(source, root, { keepCase: true });
    } catch (err) {
      r.fail(at, `${where}: ${(err as Error).message}`); // protobufjs names the line: "illegal token 'x' (line 5)"
    }
    for (const imported of [...(parsed.imports ?? []), ...(parsed.weakImports ?? [])]) load(imported, name);
  };
  load(file, undefined);
  try {
    root.resolveAll();
  } catch (err) {
    r.fail(at, `${file}: ${(err as Error).message}`);
  }
  return root;
}

function allMessages(ns: protobuf.NamespaceBase, out: string[] = []): string[] {
  for (const nested of ns.nestedArray) {
    if (nested instanceof protobuf.Type) out.push(nested.fullName.slice(1));
    if (nested instanceof protobuf.Namespace || nested instanceof protobuf.Type) allMessages(nested, out);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// TSL targets: what a field must be able to carry

interface Target {
  readonly type: string;
  /** struct members by identifier. */
  readonly members?: ReadonlyMap<string, Target>;
  /** array element type. */
  readonly item?: Target;
}

/**
 * Reads a TSL dataType for its shape only: the type, and struct members / the array item type
 * (Alibaba: struct specs = [{identifier, name, dataType}], array specs = {size, item: {type, specs}}).
 * Ranges and lengths are validation's business.
 */
function targetOf(dataType: unknown): Target | undefined {
  if (typeof dataType !== 'object' || dataType === null) return undefined;
  const { type, specs } = dataType as { type?: unknown; specs?: unknown };
  if (typeof type !== 'string') return undefined;
  if (type === 'struct') {
    const members = new Map<string, Target>();
    if (Array.isArray(specs)) {
      for (const m of specs) {
        const { identifier, dataType: dt } = (m ?? {}) as { identifier?: unknown; dataType?: unknown };
        const t = targetOf(dt);
        if (typeof identifier === 'string' && t) members.set(identifier, t);
      }
    }
    return { type, members };
  }
  if (type === 'array') {
    const item = targetOf((specs as { item?: unknown } | null | undefined)?.item);
    return item ? { type, item } : { type };
  }
  return { type };
}

function targetsOf(params: readonly { identifier: string; dataType: TslDataType }[]): Map<string, Target> {
  const m = new Map<string, Target>();
  for (const p of params) {
    const t = targetOf(p.dataType);
    if (t) m.set(p.identifier, t);
  }
  return m;
}

function an(type: string): string {
  return `${/^[aeiou]/.test(type) ? 'an' : 'a'} ${type}`;
}

// ---------------------------------------------------------------------------------------------
// Value converters

function invalid(label: string, rule: string, value: unknown, message: string): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', `${label}: ${message}`, { detail: { identifier: label, rule, value } });
}

/**
 * The shortest decimal that reads back as the same float32, so 2.2f is reported as 2.2 and not
 * 2.200000047683716. Fast path: fewest decimals by rounding (exact for magnitudes where float32
 * keeps a fractional part); otherwise the toPrecision search.
 */
export function shortestFloat32(x: number): number {
  if (x === 0 || !Number.isFinite(x)) return x;
  const a = Math.abs(x);
  if (a >= 1e-3 && a < 16777216) {
    let p = 1;
    for (let d = 0; d <= 9; d++) {
      const y = Math.round(a * p) / p;
      if (Math.fround(y) === a) return x < 0 ? -y : y;
      p *= 10;
    }
  }
  for (let digits = 6; digits <= 9; digits++) {
    const y = Number(x.toPrecision(digits));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

const long =
  (label: string): Convert =>
  (v) => {
    // protobufjs gives Long objects for 64-bit fields (numbers if the `long` package is missing).
    const n = typeof v === 'number' ? v : (v as { toNumber(): number }).toNumber();
    if (!Number.isSafeInteger(n)) {
      throw invalid(label, 'int53', String(v), `64-bit value ${String(v)} does not fit a JavaScript number (2^53)`);
    }
    return n;
  };

// protobufjs decodes bytes into Buffers on Node; a plain Uint8Array is wrapped without a copy.
const hex: Convert = (v) => (Buffer.isBuffer(v) ? v : Buffer.from((v as Uint8Array).buffer, (v as Uint8Array).byteOffset, (v as Uint8Array).byteLength)).toString('hex');

const timestampToMs =
  (label: string): Convert =>
  (v) => {
    const t = v as { seconds?: unknown; nanos?: unknown };
    const seconds = t.seconds === undefined ? 0 : (long(label)(t.seconds) as number);
    const ms = seconds * 1000 + Math.floor(((t.nanos as number | undefined) ?? 0) / 1e6);
    if (!Number.isSafeInteger(ms)) throw invalid(label, 'int53', `${seconds}s`, `timestamp ${seconds} s does not fit ms in a JavaScript number`);
    return ms;
  };

const encInteger =
  (label: string, min: number, max: number): Convert =>
  (v) => {
    const n = v === true ? 1 : v === false ? 0 : v;
    if (typeof n !== 'number' || !Number.isInteger(n) || n < min || n > max) {
      throw invalid(label, 'range', v, `${show(v)} does not fit the field (an integer ${min}..${max})`);
    }
    return n;
  };

const encDate =
  (label: string, min: number): Convert =>
  (v) => encInteger(label, min, Number.MAX_SAFE_INTEGER)(typeof v === 'string' && /^\d{1,16}$/.test(v) ? Number(v) : v);

const encNumber =
  (label: string, max: number): Convert =>
  (v) => {
    if (typeof v !== 'number' || Number.isNaN(v) || Math.abs(v) > max) throw invalid(label, 'range', v, `${show(v)} does not fit the field`);
    return v;
  };

const encBool =
  (label: string): Convert =>
  (v) => {
    if (v === 0 || v === false) return false;
    if (v === 1 || v === true) return true;
    throw invalid(label, 'bool', v, `${show(v)} is not a bool`);
  };

const encString =
  (label: string): Convert =>
  (v) => {
    if (typeof v === 'string') return v;
    if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v); // a date sent as text
    throw invalid(label, 'text', v, `${show(v)} is not a text`);
  };

const encHex =
  (label: string): Convert =>
  (v) => {
    if (typeof v !== 'string' || !/^(?:[0-9a-fA-F]{2})*$/.test(v)) throw invalid(label, 'hex', v, `${show(v)} is not hex text (a bytes field)`);
    return Buffer.from(v, 'hex');
  };

const encTimestamp =
  (label: string): Convert =>
  (v) => {
    const ms = encDate(label, Number.MIN_SAFE_INTEGER)(v) as number;
    const seconds = Math.floor(ms / 1000);
    return { seconds, nanos: (ms - seconds * 1000) * 1e6 };
  };

interface ScalarInfo {
  /** TSL types the field can carry. */
  readonly carries: readonly string[];
  decode(label: string): Convert | null;
  encode(label: string): Convert;
}

const I32: readonly string[] = ['int', 'float', 'double', 'enum', 'bool'];
const I64: readonly string[] = ['int', 'float', 'double', 'date'];
const int32 = (min: number, max: number): ScalarInfo => ({ carries: I32, decode: () => null, encode: (l) => encInteger(l, min, max) });
const int64 = (min: number): ScalarInfo => ({ carries: I64, decode: long, encode: (l) => encDate(l, min) });

/** protobuf scalar type -> what it carries and how (enums are handled like int32). */
const SCALARS: Readonly<Record<string, ScalarInfo>> = {
  double: { carries: ['float', 'double'], decode: () => null, encode: (l) => encNumber(l, Number.MAX_VALUE) },
  float: { carries: ['float', 'double'], decode: () => shortestFloat32 as Convert, encode: (l) => encNumber(l, F32_MAX) },
  int32: int32(-0x80000000, 0x7fffffff),
  sint32: int32(-0x80000000, 0x7fffffff),
  sfixed32: int32(-0x80000000, 0x7fffffff),
  uint32: int32(0, 0xffffffff),
  fixed32: int32(0, 0xffffffff),
  int64: int64(Number.MIN_SAFE_INTEGER),
  sint64: int64(Number.MIN_SAFE_INTEGER),
  sfixed64: int64(Number.MIN_SAFE_INTEGER),
  uint64: int64(0),
  fixed64: int64(0),
  bool: { carries: ['bool'], decode: () => null, encode: encBool },
  string: { carries: ['text', 'date'], decode: () => null, encode: encString },
  bytes: { carries: ['text'], decode: () => hex, encode: encHex },
};

// ---------------------------------------------------------------------------------------------
// Compiling a message against its TSL targets

/** `fields` of one message: .proto field path -> identifier, or null to skip the field. */
type Overrides = ReadonlyMap<string, string | null>;

interface CompileContext {
  readonly r: DefinitionReader;
  /** Key path in product.json blamed for by-name problems (where the message is named). */
  readonly at: string;
  /** Key path of this message's `fields` object, for problems with an override. */
  readonly fieldsAt: string;
  /** "property", "an output of event harshBraking": for messages. */
  readonly where: string;
  readonly overrides: Overrides;
}

/** `a.b` for identifier-like keys, `a["gps.lat"]` otherwise, so a key path never reads ambiguously. */
function sub(pathSoFar: string, key: string): string {
  return /^[A-Za-z_][A-Za-z0-9_]*$/.test(key) ? keyPath(pathSoFar, key) : `${pathSoFar}[${JSON.stringify(key)}]`;
}

function fieldType(f: protobuf.FieldBase): string {
  if (f.map) return `map<${(f as protobuf.MapField).keyType}, ${f.type}>`;
  return f.repeated ? `repeated ${f.type}` : f.type;
}

/** Checks that every override path names a field, through singular message fields. */
function checkOverridePaths(ctx: CompileContext, type: protobuf.Type): void {
  for (const [p, target] of ctx.overrides) {
    const at = sub(ctx.fieldsAt, p);
    const parts = p.split('.');
    let t: protobuf.Type = type;
    parts.forEach((part, i) => {
      const f = t.fields[part];
      if (!f) ctx.r.fail(at, `no field "${part}" in ${t.fullName.slice(1)}`);
      if (i < parts.length - 1) {
        if (!(f.resolvedType instanceof protobuf.Type) || f.repeated || f.map || f.resolvedType.fullName === TIMESTAMP) {
          ctx.r.fail(at, `${part} is ${fieldType(f)}; only singular message fields can be entered`);
        }
        t = f.resolvedType;
      }
    });
    if (target !== null && !IDENTIFIER.test(target)) ctx.r.fail(at, `${show(target)} is not a TSL identifier (letters, digits, _; block:id for a module)`);
  }
}

function hasMappingBelow(overrides: Overrides, prefix: string): boolean {
  for (const [p, target] of overrides) if (target !== null && p.startsWith(prefix)) return true;
  return false;
}

/**
 * One plan per (message, level). `targets` are the identifiers reports go to (item properties,
 * event outputs or struct members), null without a model. `claimed` guards against two fields
 * reporting the same identifier at one level (flattened levels share their parent's).
 */
function compilePlan(
  ctx: CompileContext,
  type: protobuf.Type,
  prefix: string,
  idPrefix: string,
  targets: ReadonlyMap<string, Target> | null,
  inStruct: boolean,
  claimed: Map<string, string>,
  stack: readonly protobuf.Type[],
): Plan {
  const slots: Slot[] = [];
  const ids = new Set<string>();
  const message = type.fullName.slice(1);
  for (const f of type.fieldsArray) {
    const p = prefix + f.name;
    const field = `${message}.${f.name}`;
    const override = ctx.overrides.get(p);
    if (override === null) continue;
    const overrideAt = sub(ctx.fieldsAt, p);
    const explicit = f.partOf !== null || f.hasPresence || f.resolvedType instanceof protobuf.Type;
    const presence = f.map ? Presence.Map : f.repeated ? Presence.List : explicit ? Presence.Explicit : Presence.Implicit;
    const oneof = f.partOf !== null && f.partOf.fieldsArray.length > 1 ? f.partOf.name : undefined;

    if (override === undefined && hasMappingBelow(ctx.overrides, `${p}.`)) {
      if (inStruct) ctx.r.fail(ctx.fieldsAt, `fields below ${p} are inside a struct member; only fields lifted to the item can be renamed`);
      const inner = compilePlan(ctx, f.resolvedType as protobuf.Type, `${p}.`, idPrefix, targets, false, claimed, stack);
      for (const id of inner.ids) ids.add(id);
      slots.push({ name: f.name, id: f.name, presence: Presence.Explicit, oneof, decode: null, encode: (v) => v, flatten: inner });
      continue;
    }
    if (override !== undefined && hasMappingBelow(ctx.overrides, `${p}.`)) {
      ctx.r.fail(overrideAt, `${p} is mapped as a whole and has fields mapped below it; choose one`);
    }

    const id = override ?? f.name;
    const blame = override === undefined ? ctx.at : overrideAt;
    const first = claimed.get(id);
    if (first !== undefined) ctx.r.fail(blame, `${p} and ${first} both map to "${id}"`);
    claimed.set(id, p);
    let target: Target | undefined;
    if (targets) {
      target = targets.get(id);
      if (!target) {
        const hint = override === undefined ? ` (map it in ${ctx.fieldsAt}, or skip it with null)` : '';
        ctx.r.fail(blame, `${field} maps to "${id}", which is not ${ctx.where} in model.json${hint}`);
      }
    }
    const conv = compileField(ctx, f, p, target, id, idPrefix + id, blame, stack);
    ids.add(id);
    slots.push({ name: f.name, id, presence, oneof, decode: conv.decode, encode: conv.encode, flatten: undefined });
  }
  const numbers = new Map(type.fieldsArray.map((f) => [f.id, f.name]));
  const plan = { type, slots, numbers, ids, fill: (_msg: Msg, _out: Msg): void => {} };
  plan.fill = compileFill(plan);
  return plan;
}

interface FieldConv {
  decode: Convert | null;
  encode: Convert;
}

function compileField(
  ctx: CompileContext,
  f: protobuf.FieldBase,
  p: string,
  target: Target | undefined,
  id: string,
  label: string,
  blame: string,
  stack: readonly protobuf.Type[],
): FieldConv {
  const cannot = (what: string): never =>
    ctx.r.fail(blame, `${p} (${fieldType(f)}) cannot carry ${id}, ${what} in model.json`);
  if (f.map) {
    if (target && target.type !== 'struct') cannot(an(target.type));
    const keyType = (f as protobuf.MapField).keyType;
    if (keyType !== 'string') ctx.r.fail(blame, `${p} (${fieldType(f)}): only map<string, V> fields are supported (keys become struct members)`);
    if (f.resolvedType instanceof protobuf.Type) ctx.r.fail(blame, `${p} (${fieldType(f)}): map values must be scalars or enums`);
    const members = target?.members;
    if (members) {
      for (const [member, t] of members) {
        if (!carries(f, t)) ctx.r.fail(blame, `${p} (${fieldType(f)}) cannot carry ${id}.${member}, ${an(t.type)} in model.json`);
      }
    }
    const value = compileElement(ctx, f, p, undefined, id, label, blame, stack);
    const dec = value.decode;
    return {
      decode:
        dec === null
          ? (m) => copyMap(m as Msg)
          : (m) => {
              const src = m as Msg;
              const out: Msg = {};
              for (const k in src) out[k] = dec(src[k]);
              return out;
            },
      encode: (v) => {
        if (!isPlainObject(v)) throw invalid(label, 'struct', v, `${show(v)} is not a struct`);
        const out: Msg = {};
        for (const k of Object.keys(v)) out[k] = value.encode(v[k]);
        return out;
      },
    };
  }
  if (f.repeated) {
    if (target && target.type !== 'array') cannot(an(target.type));
    if (target && !target.item) ctx.r.fail(blame, `${id} is an array without an item type in model.json`);
    const element = compileElement(ctx, f, p, target?.item, id, label, blame, stack);
    const dec = element.decode;
    return {
      // The decoded array belongs to this decode only, so it is converted in place.
      decode:
        dec === null
          ? null
          : (a) => {
              const list = a as unknown[];
              for (let i = 0; i < list.length; i++) list[i] = dec(list[i]);
              return list;
            },
      encode: (v) => {
        if (!Array.isArray(v)) throw invalid(label, 'array', v, `${show(v)} is not an array`);
        return v.map(element.encode);
      },
    };
  }
  return compileElement(ctx, f, p, target, id, label, blame, stack);
}

/** Whether a field (element) can carry a TSL type. */
function carries(f: protobuf.FieldBase, t: Target): boolean {
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Enum) return t.type === 'enum' || t.type === 'int';
  if (rt instanceof protobuf.Type) return rt.fullName === TIMESTAMP ? t.type === 'date' : t.type === 'struct';
  return SCALARS[f.type]?.carries.includes(t.type) ?? false;
}

function compileElement(
  ctx: CompileContext,
  f: protobuf.FieldBase,
  p: string,
  target: Target | undefined,
  id: string,
  label: string,
  blame: string,
  stack: readonly protobuf.Type[],
): FieldConv {
  if (target && !carries(f, target)) {
    ctx.r.fail(blame, `${p} (${fieldType(f)}) cannot carry ${id}, ${an(target.type)} in model.json`);
  }
  const rt = f.resolvedType;
  if (rt instanceof protobuf.Enum) return { decode: null, encode: encInteger(label, -0x80000000, 0x7fffffff) };
  if (rt instanceof protobuf.Type) {
    if (rt.fullName === TIMESTAMP) return { decode: timestampToMs(label), encode: encTimestamp(label) };
    // Without a model the struct follows the message; a message containing itself has no end.
    if (!target && stack.includes(rt)) ctx.r.fail(blame, `${p}: recursive message ${rt.fullName.slice(1)} needs a thing model to bound it`);
    const inner = compilePlan(
      { ...ctx, where: `a member of struct ${id}` },
      rt,
      `${p}.`,
      `${label}.`,
      target?.members ?? null,
      true,
      new Map(),
      [...stack, rt],
    );
    return {
      decode: (m) => {
        const out: Msg = {};
        inner.fill(m as Msg, out);
        return out;
      },
      encode: (v) => {
        if (!isPlainObject(v)) throw invalid(label, 'struct', v, `${show(v)} is not a struct`);
        return build(inner, v, label);
      },
    };
  }
  const scalar = SCALARS[f.type];
  if (!scalar) ctx.r.fail(blame, `${p}: unsupported field type ${f.type}`);
  return { decode: scalar.decode(label), encode: scalar.encode(label) };
}

function isPlainObject(v: unknown): v is Msg {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Uint8Array);
}

function copyMap(src: Msg): Msg {
  const out: Msg = {};
  for (const k in src) out[k] = src[k];
  return out;
}

// ---------------------------------------------------------------------------------------------
// Decode and encode with a plan

/**
 * The plan's slots as straight-line code, one statement per field with the property names as
 * constants, like protobufjs's own generated toObject: a loop over the slots with computed keys
 * runs about twice as slow (megamorphic keyed loads and stores). Names are .proto field names and
 * TSL identifiers ([A-Za-z0-9_]), embedded through JSON.stringify all the same; converters are
 * passed in, never inlined as source.
 */
function compileFill(plan: Plan): (msg: Msg, out: Msg) => void {
  // A known field sent with another wire type is kept aside by protobufjs as an unknown field;
  // that is a schema mismatch, not a newer sender's extra field, so checkUnknowns refuses it.
  const lines: string[] = ['if (m.$unknowns !== undefined) checkUnknowns(plan, m.$unknowns);', 'var v;'];
  const locals: string[] = [];
  plan.slots.forEach((s, i) => {
    const name = JSON.stringify(s.name);
    const id = JSON.stringify(s.id);
    let report: string;
    if (s.flatten !== undefined) {
      locals.push(`var f${i} = plan.slots[${i}].flatten.fill;`);
      report = `f${i}(v, o);`;
    } else if (s.decode !== null) {
      locals.push(`var d${i} = plan.slots[${i}].decode;`);
      report = `o[${id}] = d${i}(v);`;
    } else {
      report = `o[${id}] = v;`;
    }
    switch (s.presence) {
      case Presence.Implicit:
        lines.push(`v = m[${name}]; ${report}`);
        break;
      case Presence.Explicit:
        lines.push(`if (hasOwn(m, ${name})) { v = m[${name}]; ${report} }`);
        break;
      case Presence.List:
        lines.push(`v = m[${name}]; if (v.length !== 0) { ${report} }`);
        break;
      case Presence.Map:
        lines.push(`v = m[${name}]; if (!isEmpty(v)) { ${report} }`);
        break;
    }
  });
  const source = `${locals.join('\n')}\nreturn function fill(m, o) {\n${lines.join('\n')}\n};`;
  return new Function('plan', 'hasOwn', 'isEmpty', 'checkUnknowns', source)(plan, Object.hasOwn, isEmpty, checkUnknowns) as (msg: Msg, out: Msg) => void;
}

function isEmpty(o: Msg): boolean {
  for (const _ in o) return false;
  return true;
}

const WIRE_TYPES = ['varint', '64-bit', 'length-delimited', 'start group', 'end group', '32-bit'];

function checkUnknowns(plan: Plan, unknowns: readonly Uint8Array[]): void {
  for (const raw of unknowns) {
    const tag = protobuf.Reader.create(raw).uint32();
    const name = plan.numbers.get(tag >>> 3);
    if (name !== undefined) {
      const field = plan.type.fields[name]!;
      throw new WanwuError(
        'WANWU_ERR_MALFORMED',
        `${plan.type.fullName.slice(1)}: field ${tag >>> 3} (${name}, ${fieldType(field)}) arrived with wire type ${tag & 7} (${WIRE_TYPES[tag & 7] ?? '?'})`,
        { detail: { field: name, number: tag >>> 3, wireType: tag & 7 } },
      );
    }
  }
}

/** TSL data -> a plain object protobufjs encodes. Throws WANWU_ERR_INVALID. */
function build(plan: Plan, data: Msg, label: string): Msg {
  const out: Msg = {};
  const used = buildInto(plan, data, out);
  let count = 0;
  for (const k in data) if (Object.hasOwn(data, k) && data[k] !== undefined) count++;
  if (used !== count) {
    for (const k of Object.keys(data)) {
      if (!plan.ids.has(k) && data[k] !== undefined) {
        throw invalid(label === '' ? k : `${label}.${k}`, 'field', data[k], `no field of ${plan.type.fullName.slice(1)} carries it`);
      }
    }
  }
  return out;
}

function buildInto(plan: Plan, data: Msg, out: Msg): number {
  let used = 0;
  let oneofs: Map<string, string> | undefined;
  for (const s of plan.slots) {
    if (s.flatten !== undefined) {
      const inner: Msg = {};
      const n = buildInto(s.flatten, data, inner);
      if (n > 0) {
        out[s.name] = inner;
        used += n;
      }
      continue;
    }
    if (!Object.hasOwn(data, s.id)) continue;
    const v = data[s.id];
    if (v === undefined) continue;
    if (s.oneof !== undefined) {
      oneofs ??= new Map();
      const other = oneofs.get(s.oneof);
      if (other !== undefined) throw invalid(s.id, 'oneof', v, `${other} and ${s.id} are both set; they share oneof ${s.oneof}`);
      oneofs.set(s.oneof, s.id);
    }
    out[s.name] = s.encode(v);
    used++;
  }
  return used;
}

// ---------------------------------------------------------------------------------------------
// The codec

export interface ProtobufCodecOptions {
  productKey: string;
  /** up_raw, property-post, and event-post selectors ("event:<id>" keys); routes without one are Alink JSON. */
  routes: ReadonlyMap<string, Selector>;
  /** codec.downlink: Alink method -> the message that carries it. Absent: no encodeCommand. */
  commands?: ReadonlyMap<string, Command>;
}

/** One `downlink` entry: the message a method's params are encoded in, after an optional type byte. */
interface Command {
  readonly message: string;
  readonly plan: Plan;
  readonly typeByte: number | undefined;
}

/** The `messages` key of a route; other Alink routes (pack/batch posts) have none and stay Alink JSON. */
function routeKey(route: UplinkRoute): string {
  switch (route.type) {
    case 'up-raw':
      return 'up_raw';
    case 'property-post':
      return 'property';
    case 'event-post':
      return `event:${route.eventId}`;
    default:
      return route.type;
  }
}

/** Decodes the message from `at` to the end of the payload (a Reader avoids copying the body out). */
function decodeWith(b: Binding, payload: Uint8Array, at: number): DecodedItem {
  let msg: Msg;
  try {
    const reader = protobuf.Reader.create(payload);
    reader.pos = at;
    // Keep unknown fields (per reader, not protobufjs's global default) so that compileFill can
    // tell a known field with the wrong wire type from a newer sender's extra field.
    reader.discardUnknown = false;
    msg = b.plan.type.decode(reader) as unknown as Msg;
  } catch (err) {
    // protobufjs throws RangeError ("index out of range") on truncation, Error on bad tags or wire
    // types, ProtocolError on missing proto2 required fields.
    throw new WanwuError('WANWU_ERR_MALFORMED', `${b.message}: cannot decode (${(err as Error).message})`, { cause: err });
  }
  const data: Msg = {};
  b.plan.fill(msg, data);
  if (b.kind === 'event') return { kind: 'event', event: b.event!, data };
  if (isEmpty(data)) throw new WanwuError('WANWU_ERR_MALFORMED', `${b.message}: the message carries no properties`);
  return { kind: 'property', data };
}

function createProtobufCodec(opts: ProtobufCodecOptions): Codec {
  const { productKey, routes, commands } = opts;
  const alink = createAlinkJsonCodec({ productKey });
  const hexByte = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

  const encodeCommand = (message: CommandMessage): Buffer => {
    const { method } = message;
    const c = commands?.get(method);
    if (c === undefined) {
      throw new WanwuError('WANWU_ERR_COMMAND', `no downlink message for ${method} in ${productKey}'s codec.downlink (it has ${[...(commands?.keys() ?? [])].join(', ')}); send the bytes as raw instead`, {
        detail: { method, reason: 'no-layout' },
      });
    }
    let body: Buffer;
    try {
      body = encodeWith(c, message.params);
    } catch (err) {
      if (!(err instanceof WanwuError) || err.code !== 'WANWU_ERR_INVALID') throw err;
      throw new WanwuError('WANWU_ERR_COMMAND', `${method}: ${err.message}`, { detail: { ...err.detail, method }, cause: err });
    }
    if (c.typeByte === undefined) return body;
    return Buffer.concat([Buffer.of(c.typeByte), body]);
  };

  return {
    ...(commands === undefined ? {} : { encodeCommand }),
    type: 'protobuf',
    decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
      const sel = routes.get(routeKey(route));
      if (sel === undefined) {
        if (route.type === 'up-raw') {
          throw new WanwuError('WANWU_ERR_TOPIC', `product ${productKey}: its protobuf codec has no message for thing/model/up_raw`);
        }
        return decodeAlinkJson(route, payload, envelope);
      }
      const method = alinkMethod(route);
      if (method !== undefined) envelope.method = method;
      if (sel.by === 'message') return [decodeWith(sel.binding, payload, 0)];
      if (payload.length <= sel.offset) {
        throw new WanwuError('WANWU_ERR_MALFORMED', `payload is ${payload.length} bytes; the type byte is at offset ${sel.offset}`, {
          detail: { length: payload.length, offset: sel.offset },
        });
      }
      const byte = payload[sel.offset]!;
      const b = sel.table[byte];
      if (b === undefined) {
        const known = sel.bytes.map((n) => `${hexByte(n)} (${sel.table[n]!.message})`).join(', ');
        throw new WanwuError('WANWU_ERR_MALFORMED', `type byte ${hexByte(byte)} at offset ${sel.offset} is not one of ${known}`, {
          detail: { typeByte: byte, offset: sel.offset },
        });
      }
      return [decodeWith(b, payload, sel.offset + 1)];
    },

    encode(route: UplinkRoute, item: EncodeInput): Buffer {
      const sel = routes.get(routeKey(route));
      if (sel === undefined) {
        if (route.type !== 'up-raw' && alink.encode) return alink.encode(route, item);
        throw new WanwuError('WANWU_ERR_TOPIC', `product ${productKey}: its protobuf codec has no message for ${routeKey(route)}`);
      }
      const fits = (b: Binding): boolean => b.kind === item.kind && (b.kind === 'property' || b.event === item.event);
      const what = item.kind === 'event' ? `event ${item.event ?? '?'}` : 'properties';
      if (sel.by === 'message') {
        if (!fits(sel.binding)) {
          throw new WanwuError('WANWU_ERR_INVALID', `${routeKey(route)} carries ${describe(sel.binding)}, not ${what}`, { detail: { kind: item.kind, event: item.event } });
        }
        return encodeWith(sel.binding, item.data);
      }
      // The first type byte whose message is of the item's kind and carries all of its identifiers.
      let firstError: WanwuError | undefined;
      for (const byte of sel.bytes) {
        const b = sel.table[byte]!;
        if (!fits(b)) continue;
        try {
          const body = encodeWith(b, item.data);
          const frame = Buffer.alloc(sel.offset + 1 + body.length);
          frame[sel.offset] = byte;
          body.copy(frame, sel.offset + 1);
          return frame;
        } catch (err) {
          firstError ??= err as WanwuError;
        }
      }
      throw firstError ?? new WanwuError('WANWU_ERR_INVALID', `no type byte carries ${what}`, { detail: { kind: item.kind, event: item.event } });
    },
  };
}

function describe(b: Binding): string {
  return b.kind === 'event' ? `${b.message} (event ${b.event})` : `${b.message} (properties)`;
}

function encodeWith(b: { readonly plan: Plan }, data: Msg): Buffer {
  const obj = build(b.plan, data, '');
  const bytes = b.plan.type.encode(obj).finish();
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

// ---------------------------------------------------------------------------------------------
// product.json

/** Builds the codec from product.json's `codec` object (see devices/README.md). Throws WANWU_ERR_PRODUCT. */
export function protobufCodecFromJson(options: JsonObject, ctx: CodecContext): Codec {
  const r: DefinitionReader = ctx.reader;
  const { path: at, model } = ctx;
  r.onlyKeys(options, at, CODEC_KEYS);
  const protoAt = keyPath(at, 'proto');
  const proto = r.string(options.proto, protoAt);
  const root = loadProto(r, protoAt, ctx.dir, proto);

  const lookup = (name: unknown, where: string): protobuf.Type => {
    const n = r.string(name, where).replace(/^\./, '');
    // protobufjs also finds "Telemetry" deep inside packages; a full name is required so that a
    // second package with the same short name can never change which message is meant.
    const found = root.lookup(n);
    if (!(found instanceof protobuf.Type) || found.fullName !== `.${n}`) {
      const known = allMessages(root).filter((m) => !m.startsWith('google.protobuf.'));
      const hint = found instanceof protobuf.Type ? `; use its full name "${found.fullName.slice(1)}"` : ` (messages: ${known.join(', ') || 'none'})`;
      r.fail(where, `"${n}" is not a message in ${proto}${hint}`);
    }
    return found;
  };

  // Which message each route carries: [route key, message type, key path naming it].
  interface Use {
    route: string;
    type: protobuf.Type;
    at: string;
    byte?: number;
  }
  const uses: Use[] = [];
  if (options.message !== undefined) uses.push({ route: 'up_raw', type: lookup(options.message, keyPath(at, 'message')), at: keyPath(at, 'message') });
  let typeByte: { offset: number } | undefined;
  if (options.typeByte !== undefined) {
    const tbAt = keyPath(at, 'typeByte');
    if (options.message !== undefined) r.fail(tbAt, 'give either "message" or "typeByte" for up_raw, not both');
    const tb = r.object(options.typeByte, tbAt);
    r.onlyKeys(tb, tbAt, TYPE_BYTE_KEYS);
    const offset = tb.offset === undefined ? 0 : r.integer(tb.offset, keyPath(tbAt, 'offset'), { min: 0, max: 255 });
    typeByte = { offset };
    const msgsAt = keyPath(tbAt, 'messages');
    const msgs = r.object(tb.messages, msgsAt);
    if (Object.keys(msgs).length === 0) r.fail(msgsAt, 'needs at least one type byte');
    for (const [key, name] of Object.entries(msgs)) {
      const kAt = sub(msgsAt, key);
      if (!/^(0|[1-9]\d{0,2})$/.test(key) || Number(key) > 255) r.fail(kAt, 'a type byte is a decimal number 0..255');
      uses.push({ route: 'up_raw', type: lookup(name, kAt), at: kAt, byte: Number(key) });
    }
  }
  if (options.messages !== undefined) {
    const msgsAt = keyPath(at, 'messages');
    const msgs = r.object(options.messages, msgsAt);
    for (const [key, name] of Object.entries(msgs)) {
      const kAt = sub(msgsAt, key);
      if (!ROUTE_KEY.test(key)) r.fail(kAt, 'a route is "up_raw", "property" or "event:<eventId>"');
      if (key === 'up_raw' && (options.message !== undefined || options.typeByte !== undefined)) {
        r.fail(kAt, `up_raw already has ${options.message !== undefined ? '"message"' : '"typeByte"'}`);
      }
      uses.push({ route: key, type: lookup(name, kAt), at: kAt });
    }
  }
  if (uses.length === 0) r.fail(at, 'a protobuf codec needs "message", "typeByte" or "messages"');
  const usedMessages = new Set(uses.map((u) => u.type.fullName.slice(1)));

  // Messages that are events, and which.
  const events = new Map<string, string>();
  if (options.events !== undefined) {
    const evAt = keyPath(at, 'events');
    for (const [name, event] of Object.entries(r.object(options.events, evAt))) {
      const kAt = sub(evAt, name);
      const full = lookup(name, kAt).fullName.slice(1);
      if (!usedMessages.has(full)) r.fail(kAt, `${full} is not carried by any route (message, typeByte, messages)`);
      const id = r.string(event, kAt, { re: IDENTIFIER, what: 'an event identifier' });
      if (model && !model.events.some((e) => e.identifier === id)) r.fail(kAt, `"${id}" is not an event in model.json`);
      events.set(full, id);
    }
  }

  // downlink: {method: "pkg.Msg" | {"message", "typeByte"?}}.
  interface DownUse {
    method: string;
    type: protobuf.Type;
    at: string;
    typeByte: number | undefined;
  }
  const downUses: DownUse[] = [];
  if (options.downlink !== undefined) {
    const dlAt = keyPath(at, 'downlink');
    const dl = r.object(options.downlink, dlAt);
    if (Object.keys(dl).length === 0) r.fail(dlAt, 'needs at least one method');
    const bytes = new Map<number, string>();
    for (const [method, value] of Object.entries(dl)) {
      const mAt = sub(dlAt, method);
      const m = SERVICE_METHOD.exec(method);
      if (method !== PROPERTY_SET_METHOD && (!m || m[1] === 'property')) r.fail(mAt, 'a method is "thing.service.property.set" or "thing.service.{serviceId}"');
      let name: unknown = value;
      let typeByte: number | undefined;
      let nameAt = mAt;
      if (typeof value === 'object' && value !== null) {
        const o = r.object(value, mAt);
        r.onlyKeys(o, mAt, DOWNLINK_KEYS);
        name = o.message;
        nameAt = keyPath(mAt, 'message');
        if (o.typeByte !== undefined) {
          const tbAt = keyPath(mAt, 'typeByte');
          typeByte = r.integer(o.typeByte, tbAt, { min: 0, max: 255 });
          const other = bytes.get(typeByte);
          if (other !== undefined) r.fail(tbAt, `${typeByte} is also the type byte of ${other}`);
          bytes.set(typeByte, method);
        }
      }
      const type = lookup(name, nameAt);
      downUses.push({ method, type, at: nameAt, typeByte });
      // After `events` (a command is no event), before `fields` (which may map a command's fields).
      usedMessages.add(type.fullName.slice(1));
    }
    // Either every command has a type byte or none: a device could not tell a bare message from a typed one.
    if (bytes.size > 0 && bytes.size !== downUses.length) r.fail(dlAt, 'give every method a "typeByte", or none');
  }

  // fields: {path: id|null} for the only message, or {message: {path: id|null}}.
  const overrides = new Map<string, { map: Map<string, string | null>; at: string }>();
  if (options.fields !== undefined) {
    const fAt = keyPath(at, 'fields');
    const fields = r.object(options.fields, fAt);
    const values = Object.values(fields);
    const nested = values.length > 0 && values.every((v) => typeof v === 'object' && v !== null);
    const readMap = (o: JsonObject, oAt: string): Map<string, string | null> => {
      const m = new Map<string, string | null>();
      for (const [p, id] of Object.entries(o)) {
        if (id !== null && typeof id !== 'string') r.fail(sub(oAt, p), `expected an identifier or null, got ${show(id)}`);
        m.set(p, id);
      }
      return m;
    };
    if (nested) {
      for (const [name, o] of Object.entries(fields)) {
        const kAt = sub(fAt, name);
        const full = lookup(name, kAt).fullName.slice(1);
        if (!usedMessages.has(full)) r.fail(kAt, `${full} is not carried by any route (message, typeByte, messages)`);
        overrides.set(full, { map: readMap(r.object(o, kAt), kAt), at: kAt });
      }
    } else {
      if (usedMessages.size !== 1) r.fail(fAt, 'with several messages, key the mappings by message name: {"pkg.Message": {"path": "identifier"}}');
      overrides.set([...usedMessages][0]!, { map: readMap(fields, fAt), at: fAt });
    }
  }

  // One binding per (message, kind, event); every use of it shares the plan.
  const bindings = new Map<string, Binding>();
  const checked = new Set<string>();
  const bind = (u: Use): Binding => {
    const message = u.type.fullName.slice(1);
    const declared = events.get(message);
    let kind: 'property' | 'event' = declared === undefined ? 'property' : 'event';
    let event = declared;
    if (u.route === 'property' && declared !== undefined) r.fail(u.at, `${message} is the event ${declared} (codec.events); thing/event/property/post carries properties`);
    if (u.route.startsWith('event:')) {
      const routeEvent = u.route.slice('event:'.length);
      if (declared !== undefined && declared !== routeEvent) r.fail(u.at, `${message} is the event ${declared} (codec.events), not ${routeEvent}`);
      if (model && !model.events.some((e) => e.identifier === routeEvent)) r.fail(u.at, `"${routeEvent}" is not an event in model.json`);
      kind = 'event';
      event = routeEvent;
    }
    const key = `${message}|${kind}|${event ?? ''}`;
    const existing = bindings.get(key);
    if (existing) return existing;
    const ov = overrides.get(message);
    const cctx: CompileContext = {
      r,
      at: u.at,
      fieldsAt: ov?.at ?? (usedMessages.size === 1 ? keyPath(at, 'fields') : sub(keyPath(at, 'fields'), message)),
      where: kind === 'event' ? `an output of event ${event}` : 'a property',
      overrides: ov?.map ?? new Map(),
    };
    if (!checked.has(message)) {
      checkOverridePaths(cctx, u.type);
      checked.add(message);
    }
    const targets = model ? itemTargets(model, kind, event) : null;
    const plan = compilePlan(cctx, u.type, '', kind === 'event' ? `${event}.` : '', targets, false, new Map(), [u.type]);
    const b: Binding = { message, kind, event, plan };
    bindings.set(key, b);
    return b;
  };

  const routes = new Map<string, Selector>();
  let table: (Binding | undefined)[] | undefined;
  for (const u of uses) {
    const b = bind(u);
    if (u.byte === undefined) routes.set(u.route, { by: 'message', binding: b });
    else (table ??= new Array<Binding | undefined>(256).fill(undefined))[u.byte] = b;
  }
  if (table && typeByte) {
    const bytes = table.flatMap((b, i) => (b === undefined ? [] : [i]));
    routes.set('up_raw', { by: 'typeByte', offset: typeByte.offset, table, bytes });
  }
  if (downUses.length === 0) return createProtobufCodec({ productKey: ctx.productKey, routes });

  // Downlink plans: fields map to the rw properties (property set) or the service's inputData.
  const commands = new Map<string, Command>();
  for (const u of downUses) {
    const message = u.type.fullName.slice(1);
    const ov = overrides.get(message);
    let where = 'an rw property';
    let targets: Map<string, Target> | null = null;
    if (u.method === PROPERTY_SET_METHOD) {
      if (model) targets = targetsOf(model.properties.filter((p) => p.accessMode === 'rw'));
    } else {
      const serviceId = SERVICE_METHOD.exec(u.method)![1]!;
      where = `an input of service ${serviceId}`;
      if (model) {
        const service = model.services.find((s) => s.method === u.method) ?? model.services.find((s) => s.identifier === serviceId && (s.method === undefined || s.method === u.method));
        if (!service) r.fail(sub(keyPath(at, 'downlink'), u.method), `"${serviceId}" is not a service in model.json`);
        const props = new Map(model.properties.map((p) => [p.identifier, p]));
        // A string input names a property (Alibaba's `set` service lists them that way).
        targets = targetsOf(service.inputData.flatMap((d) => (typeof d === 'string' ? (props.has(d) ? [props.get(d)!] : []) : [d])));
      }
    }
    const cctx: CompileContext = {
      r,
      at: u.at,
      fieldsAt: ov?.at ?? (usedMessages.size === 1 ? keyPath(at, 'fields') : sub(keyPath(at, 'fields'), message)),
      where,
      overrides: ov?.map ?? new Map(),
    };
    if (!checked.has(message)) {
      checkOverridePaths(cctx, u.type);
      checked.add(message);
    }
    const plan = compilePlan(cctx, u.type, '', '', targets, false, new Map(), [u.type]);
    commands.set(u.method, { message, plan, typeByte: u.typeByte });
  }
  return createProtobufCodec({ productKey: ctx.productKey, routes, commands });
}

function itemTargets(model: ThingModel, kind: 'property' | 'event', event: string | undefined): Map<string, Target> {
  if (kind === 'property') return targetsOf(model.properties);
  return targetsOf(model.events.find((e) => e.identifier === event)?.outputData ?? []);
}
