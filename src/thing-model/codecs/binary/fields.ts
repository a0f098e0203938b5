// Field compilers: one product.json field object -> a CompiledField whose read/write closures
// capture every option already checked. Each kind of field is one function here:
//   u8..u64, i8..i64, f32, f64   numbers: endian, scale, offset, const
//   bits                          one word read once, sliced into several identifiers
//   bcd                           packed decimal: a number, a digit text, or a date-time
//   string, bytes                 fixed size or length-prefixed; bytes are reported as hex text
//   group                         counted repetition of item fields: a TSL array (of struct)
//   crc16-modbus, sum8, xor8      a check over earlier bytes
// Readers check every read against the frame's end first: a short frame is a coded error naming
// the field and its offset, never a RangeError or a garbage value.

import { WanwuError } from '../../../errors.js';
import { keyPath, show, type DefinitionReader, type JsonObject } from '../../check.js';
import { CHECKSUMS } from './checksum.js';
import {
  FIELD_KINDS,
  FIELD_TYPES,
  hex,
  hexUpper,
  intReader,
  makeToValue,
  uintReader,
  type BitSlice,
  type ChecksumType,
  type CompiledField,
  type FieldKind,
  type FieldType,
  type FieldTypeName,
  type ReadState,
  type Reader,
  type WriteState,
  type Writer,
} from './types.js';

/** A TSL data type as far as the layout needs it (model.json is parsed leniently for struct/array). */
export interface LooseType {
  type: string;
  specs?: unknown;
}

/** Where ids of a field are looked up: the properties, an event's outputData, or a struct's members. */
export interface Scope {
  /** "a property", "an output of event alarm", "a member of the samples struct". */
  where: string;
  /** null when the product has no model.json: ids are not checked. */
  lookup: ReadonlyMap<string, LooseType> | null;
}

/** Static knowledge of where the next field starts, for `at`, overlap checks and frame sizes. */
export interface Place {
  /** Offset of the next field; undefined after a variable-length field. */
  pos: number | undefined;
  /** Smallest and largest offset the next field can have. */
  min: number;
  max: number;
  /** Byte ranges claimed by fields at known offsets. */
  claimed: Array<{ start: number; end: number; label: string }>;
  claimedEnd: number;
  /** The variable-length field that made `pos` unknown. */
  variable: string | undefined;
}

export interface SwitchInfo {
  label: string;
  type: string;
  /** Raw value range, for `when`. */
  min: number;
  max: number;
  bytes: number;
}

/** Everything a field compiler needs to know about its surroundings. */
export interface Env {
  r: DefinitionReader;
  /** Key path of the codec object, stripped from paths in "also ..." messages. */
  root: string;
  littleEndian: boolean;
  scopes: Scope[];
  /** id -> where it was first used. */
  seen: Map<string, string>;
  place: Place;
  /** Label of the enclosing group; undefined at the top level. */
  group: string | undefined;
  /** Item form of a group (`item`): the one field reports under ITEM_KEY. */
  item: boolean;
  switchName: string | undefined;
  switchInfo: SwitchInfo | undefined;
  /** Path of the field that gives the item's device time, once one does. */
  tsPath: string | undefined;
  /** The layout is codec.downlink (a field may carry the Alink message id). Absent: uplink. */
  downlink?: boolean;
  /** Path of the field that carries the Alink message id, once one does (downlink only). */
  msgIdPath?: string | undefined;
}

/** Key under which an `item` field of a group reports, read back by the group. */
const ITEM_KEY = 'value';
/** Reused by groups of `item` form (decoding is synchronous, so one scratch object is enough). */
const scratch: Record<string, unknown> = {};

const IDENTIFIER = { re: /^(?!__proto__$)[A-Za-z0-9_]{1,128}$/, what: 'an identifier' };
const NUMBER_TARGETS = new Set(['int', 'float', 'double', 'enum', 'bool', 'date']);
const INTEGRAL_TARGETS = new Set(['int', 'enum', 'bool', 'date']);
const PREFIX_TYPES = ['u8', 'u16', 'u32'] as const;
type PrefixType = (typeof PREFIX_TYPES)[number];
const MAX_SIZE = 0xffff;

export function newPlace(): Place {
  return { pos: 0, min: 0, max: 0, claimed: [], claimedEnd: 0, variable: undefined };
}

export function clonePlace(p: Place): Place {
  return { ...p, claimed: [...p.claimed] };
}

/** Compiles `fields[i]` (or a group item, or a trailer entry) at `p`. */
export function compileField(env: Env, json: unknown, p: string, i: number): CompiledField {
  const f = env.r.object(json, p);
  const field = compileKind(env, f, p, i);
  if (f.at === undefined) return field;
  // An explicit offset: read and write there, whatever the cursor says; the next field follows it.
  const at = field.at!;
  const { read, write } = field;
  return { ...field, read: (s, _pos, out) => read(s, at, out), write: (w, _pos, values) => write(w, at, values) };
}

function compileKind(env: Env, f: JsonObject, p: string, i: number): CompiledField {
  const type: FieldKind = env.r.oneOf(f.type, keyPath(p, 'type'), FIELD_KINDS);
  switch (type) {
    case 'bits':
      return bitsField(env, f, p, i);
    case 'bcd':
      return bcdField(env, f, p, i);
    case 'string':
    case 'bytes':
      return textField(env, f, p, i, type);
    case 'group':
      return groupField(env, f, p, i);
    case 'crc16-modbus':
    case 'sum8':
    case 'xor8':
      return checksumField(env, f, p, i, type);
    default:
      return numberField(env, f, p, i, type);
  }
}

// ---------------------------------------------------------------------------------------------
// Messages. `Info` names a field in errors; inside a group the item index is only known when reading.

class Info {
  constructor(
    readonly label: string,
    readonly type: string,
    readonly group: string | undefined,
  ) {}

  name(index: number): string {
    if (this.group === undefined) return this.label;
    return this.label === '' ? `${this.group}[${index}]` : `${this.group}[${index}].${this.label}`;
  }

  describe(index: number, pos: number): string {
    return `field ${this.name(index)} (${this.type} at offset ${pos})`;
  }
}

function malformed(s: ReadState, info: Info, pos: number, message: string, detail: Record<string, unknown> = {}): WanwuError {
  return new WanwuError('WANWU_ERR_MALFORMED', `${info.describe(s.index, pos)}${message}`, {
    detail: { field: info.name(s.index), offset: pos, ...detail },
  });
}

/** A read past the end of the frame. */
export function shortFrame(s: ReadState, info: Info, pos: number, size: number, note = ''): WanwuError {
  return new WanwuError('WANWU_ERR_MALFORMED', `frame is ${s.end} bytes; ${info.describe(s.index, pos)} needs ${size}${note}${s.expected}`, {
    detail: { length: s.end, field: info.name(s.index), offset: pos, needs: size },
  });
}

function invalidRead(s: ReadState, info: Info, pos: number, message: string, rule: string, value: unknown, id: string | undefined): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', `${info.describe(s.index, pos)}: ${message}`, { detail: { identifier: id, rule, value } });
}

function encodeError(w: WriteState, info: Info, pos: number, message: string, rule: string, id: string | undefined, value: unknown): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', `${message} (${info.describe(w.index, pos)})`, { detail: { identifier: id, rule, value } });
}

// ---------------------------------------------------------------------------------------------
// Shared load-time checks.

function article(word: string): string {
  return /^[aeiou]/.test(word) ? 'an' : 'a';
}

function relative(env: Env, p: string): string {
  return p.startsWith(`${env.root}.`) ? p.slice(env.root.length + 1) : p;
}

/** Reads `id` and `name`, registers the id, and returns the data types the id has in every scope. */
function ident(env: Env, f: JsonObject, p: string, i: number): { id: string | undefined; name: string | undefined; label: string; targets: LooseType[] } {
  const r: DefinitionReader = env.r;
  const name = r.optionalString(f.name, keyPath(p, 'name'));
  if (env.item) {
    if (f.id !== undefined) r.fail(keyPath(p, 'id'), 'an item takes no id: its values make up the array');
    return { id: ITEM_KEY, name, label: '', targets: targetsOf(env, p, ITEM_KEY, `${env.group}[]`) };
  }
  if (f.id === undefined) return { id: undefined, name, label: name ?? `fields[${i}]`, targets: [] };
  const id = r.string(f.id, keyPath(p, 'id'), IDENTIFIER);
  const first = env.seen.get(id);
  if (first !== undefined) r.fail(keyPath(p, 'id'), `duplicate id "${id}" (also ${first})`);
  env.seen.set(id, relative(env, p));
  return { id, name, label: id, targets: targetsOf(env, p, id, id) };
}

function targetsOf(env: Env, p: string, id: string, display: string): LooseType[] {
  const out: LooseType[] = [];
  for (const scope of env.scopes) {
    if (!scope.lookup) continue;
    const dt = scope.lookup.get(id);
    if (!dt) env.r.fail(keyPath(p, 'id'), `"${display}" is not ${scope.where} in model.json`);
    out.push(dt);
  }
  return out;
}

/** The ids' TSL types must take what the field carries. */
function requireTargets(env: Env, p: string, display: string, targets: LooseType[], accepted: ReadonlySet<string>, fieldType: string, carries: string): void {
  for (const dt of targets) {
    if (!accepted.has(dt.type)) {
      env.r.fail(keyPath(p, 'id'), `${display} is ${article(dt.type)} ${dt.type} in model.json; a ${fieldType} field carries ${carries}`);
    }
  }
}

/** A scaled number into an int/enum/bool/date must stay whole. */
function requireIntegral(env: Env, p: string, display: string, targets: LooseType[], scale: number, offset: number): void {
  for (const dt of targets) {
    if (!INTEGRAL_TARGETS.has(dt.type)) continue;
    const what = `${article(dt.type)} ${dt.type}`;
    if (!Number.isInteger(scale)) env.r.fail(keyPath(p, 'scale'), `${show(scale)} would make ${display} fractional; it is ${what} in model.json`);
    if (!Number.isInteger(offset)) env.r.fail(keyPath(p, 'offset'), `${show(offset)} would make ${display} fractional; it is ${what} in model.json`);
  }
}

function endianOf(env: Env, f: JsonObject, p: string, fallback = env.littleEndian): boolean {
  if (f.endian === undefined) return fallback;
  return env.r.oneOf(f.endian, keyPath(p, 'endian'), ['big', 'little'] as const) === 'little';
}

function scaleOf(env: Env, f: JsonObject, p: string): { scale: number; offset: number } {
  const scale = f.scale === undefined ? 1 : env.r.number(f.scale, keyPath(p, 'scale'));
  if (scale === 0) env.r.fail(keyPath(p, 'scale'), 'must not be 0');
  const offset = f.offset === undefined ? 0 : env.r.number(f.offset, keyPath(p, 'offset'));
  return { scale, offset };
}

/** `"ts": true`: the field's value (ms since the epoch) becomes the item's device time. */
function tsOf(env: Env, f: JsonObject, p: string): boolean {
  if (f.ts === undefined) return false;
  const ts = env.r.boolean(f.ts, keyPath(p, 'ts'));
  if (!ts) return false;
  if (env.group !== undefined) env.r.fail(keyPath(p, 'ts'), 'not allowed in a group item (one device time per message)');
  if (env.tsPath !== undefined) env.r.fail(keyPath(p, 'ts'), `the device time already comes from ${env.tsPath}`);
  env.tsPath = relative(env, p);
  return true;
}

/** The switch field carries the message type and nothing else. */
function switchCheck(env: Env, f: JsonObject, p: string, keys: readonly string[]): void {
  if (env.switchInfo) env.r.fail(keyPath(p, 'name'), `a second field is named "${env.switchName}", the switch`);
  for (const key of keys) {
    if (f[key] !== undefined) env.r.fail(keyPath(p, key), `not allowed on the switch field ${env.switchName} (its raw value picks the message)`);
  }
}

/**
 * Places a field of static size `size` (undefined: variable, between minSize and maxSize) at the
 * next offset, or at `at`. Refuses overlaps, and `at` after a variable-length field. Returns the
 * field's static offset.
 */
function place(env: Env, f: JsonObject, p: string, label: string, size: number | undefined, minSize: number, maxSize: number): number | undefined {
  const r: DefinitionReader = env.r;
  const pl = env.place;
  if (f.at !== undefined) {
    const path = keyPath(p, 'at');
    if (env.group !== undefined) r.fail(path, 'not allowed in a group item (items follow each other)');
    const at = r.integer(f.at, path, { min: 0, max: MAX_SIZE });
    if (pl.pos === undefined) r.fail(path, `not allowed after the variable-length field ${pl.variable}`);
    pl.pos = at;
    pl.min = at;
    pl.max = at;
  }
  const start = pl.pos;
  if (start !== undefined) {
    if (size !== undefined) {
      const end = start + size;
      for (const c of pl.claimed) {
        if (start < c.end && c.start < end) r.fail(p, `bytes ${start}..${end - 1} overlap field ${c.label} (bytes ${c.start}..${c.end - 1})`);
      }
      pl.claimed.push({ start, end, label });
      if (end > pl.claimedEnd) pl.claimedEnd = end;
      pl.pos = end;
    } else {
      if (pl.claimedEnd > start) r.fail(p, `a variable-length field must start after every byte placed so far (offset ${pl.claimedEnd}), not at ${start}`);
      pl.pos = undefined;
      pl.variable = label;
    }
  } else if (size === undefined) {
    pl.variable ??= label;
  }
  pl.min += minSize;
  pl.max += maxSize;
  return start;
}

// ---------------------------------------------------------------------------------------------
// Numbers.

const NUMBER_KEYS = ['id', 'name', 'type', 'endian', 'scale', 'offset', 'const', 'at', 'ts', 'msgId'] as const;
const UNSIGNED: ReadonlySet<string> = new Set(['u8', 'u16', 'u32', 'u64']);

/**
 * `"msgId": true` (downlink only): the field carries the command's Alink message id, so the device
 * can echo it in its reply. The id is the store's sequence number; a narrow field gets its low
 * bits (id mod 2^bits), which tells apart every command a device can have open at once.
 */
function msgIdOf(env: Env, f: JsonObject, p: string, type: FieldTypeName): boolean {
  if (f.msgId === undefined) return false;
  const at = keyPath(p, 'msgId');
  if (!env.r.boolean(f.msgId, at)) return false;
  // The group check first: a group's own Env does not carry `downlink`.
  if (env.group !== undefined) env.r.fail(at, 'not allowed in a group item (one message id per frame)');
  if (!env.downlink) env.r.fail(at, 'only in codec.downlink (a command carries an Alink message id; an uplink frame reports none)');
  if (!UNSIGNED.has(type)) env.r.fail(at, `the message id goes in an unsigned integer field (u8, u16, u32, u64), not ${type}`);
  for (const key of ['id', 'const', 'scale', 'offset', 'ts'] as const) {
    if (f[key] !== undefined) env.r.fail(keyPath(p, key), 'not allowed with "msgId": true (the field carries the message id and nothing else)');
  }
  if (env.msgIdPath !== undefined) env.r.fail(at, `the message id already goes in ${env.msgIdPath}`);
  env.msgIdPath = relative(env, p);
  return true;
}

function numberField(env: Env, f: JsonObject, p: string, i: number, type: FieldTypeName): CompiledField {
  const r: DefinitionReader = env.r;
  r.onlyKeys(f, p, NUMBER_KEYS);
  const ft: FieldType = FIELD_TYPES[type];
  const le = endianOf(env, f, p);
  const { scale, offset } = scaleOf(env, f, p);
  const name = r.optionalString(f.name, keyPath(p, 'name'));
  const isSwitch = env.switchName !== undefined && name === env.switchName;
  if (isSwitch) {
    switchCheck(env, f, p, ['id', 'const', 'scale', 'offset', 'ts']);
    if (!ft.integer || ft.size > 4) r.fail(keyPath(p, 'type'), `the switch field ${name} must be an integer of 8 to 32 bits, not ${type}`);
    env.switchInfo = { label: name, type, min: ft.min, max: ft.max, bytes: ft.size };
  }
  let constant: number | undefined;
  if (f.const !== undefined) {
    constant = ft.integer ? r.integer(f.const, keyPath(p, 'const'), { min: ft.min, max: ft.max }) : r.number(f.const, keyPath(p, 'const'));
  }
  const { id, label, targets } = ident(env, f, p, i);
  const display = env.item ? `${env.group}[]` : (id ?? label);
  requireTargets(env, p, display, targets, NUMBER_TARGETS, type, 'a number');
  requireIntegral(env, p, display, targets, scale, offset);
  const ts = tsOf(env, f, p);
  const msgId = msgIdOf(env, f, p, type);
  const size = ft.size;
  const at = place(env, f, p, label, size, size, size);

  const info = new Info(label, type, env.group);
  const fast = intReader(type, le);
  const rd = ft.read;
  const toValue = makeToValue(ft.integer, scale, offset);
  const wide = size === 8 && ft.integer;
  const float = !ft.integer;

  let read: Reader;
  if (isSwitch) {
    read = (s, pos) => {
      if (pos + size > s.end) throw shortFrame(s, info, pos, size);
      s.sw = fast!(s.buf, pos);
      s.swAt = pos;
      return pos + size;
    };
  } else if (id === undefined && constant === undefined && !ts) {
    // Reserved bytes: skipped unread.
    read = (s, pos) => {
      if (pos + size > s.end) throw shortFrame(s, info, pos, size);
      return pos + size;
    };
  } else {
    read = (s, pos, out) => {
      if (pos + size > s.end) throw shortFrame(s, info, pos, size);
      let raw: number;
      if (fast) raw = fast(s.buf, pos);
      else if (wide) {
        try {
          raw = rd(s.dv, pos, le);
        } catch (err) {
          const e = err as WanwuError;
          throw new WanwuError(e.code, `${info.describe(s.index, pos)}: ${e.message}`, { detail: { ...e.detail, identifier: id } });
        }
      } else {
        raw = rd(s.dv, pos, le);
        if (float && !Number.isFinite(raw)) throw invalidRead(s, info, pos, `${raw} is not a finite number`, 'finite', raw, id);
      }
      if (constant !== undefined && raw !== constant) {
        throw malformed(s, info, pos, ` is ${hex(raw, size)}; expected ${hex(constant, size)}`, { expected: constant, value: raw });
      }
      const value = toValue(raw);
      if (id !== undefined) out[id] = value;
      if (ts) s.ts = deviceTime(s, info, pos, value, id);
      return pos + size;
    };
  }

  const fromValue = (w: WriteState, pos: number, given: unknown, key: string): number => {
    const value = typeof given === 'boolean' ? Number(given) : given;
    if (typeof value !== 'number') throw encodeError(w, info, pos, `${key}: ${show(given)} is not a number`, 'number', id, given);
    let raw = (value - offset) / scale;
    if (ft.integer) raw = Math.round(raw);
    if (!Number.isFinite(raw) || raw < ft.min || raw > ft.max) {
      throw encodeError(w, info, pos, `${key}: ${show(given)} does not fit ${type} (raw ${raw}, range ${ft.min}..${ft.max})`, 'range', id, given);
    }
    if (constant !== undefined && raw !== constant) throw encodeError(w, info, pos, `${key}: ${show(given)} is not the const ${constant}`, 'const', id, given);
    return raw;
  };
  const write: Writer = (w, pos, values) => {
    w.reserve(pos, size);
    let raw: number;
    if (isSwitch) raw = w.when;
    else if (id !== undefined && (Object.hasOwn(values, id) || constant === undefined)) {
      const given = values[id];
      if (given === undefined) throw encodeError(w, info, pos, `no value for ${info.name(w.index)}`, 'missing', id, undefined);
      raw = fromValue(w, pos, given, info.name(w.index));
    } else if (ts) {
      if (w.ts === undefined) throw encodeError(w, info, pos, `no device time (ts) for ${label}`, 'missing', undefined, undefined);
      raw = fromValue(w, pos, w.ts, 'ts');
    } else if (msgId) {
      if (w.msgId === undefined) throw encodeError(w, info, pos, `no numeric message id for ${label}`, 'missing', undefined, undefined);
      raw = w.msgId % (ft.max + 1);
    } else raw = constant ?? 0;
    ft.write(w.dv, pos, raw, le);
    return pos + size;
  };

  const needs = id !== undefined && constant === undefined && !env.item ? [id] : [];
  return { id: env.item ? undefined : id, label, type, at, size, minSize: size, maxSize: size, needs, ids: id !== undefined && !env.item ? [id] : [], read, write };
}

function deviceTime(s: ReadState, info: Info, pos: number, value: number, id: string | undefined): number {
  if (!Number.isSafeInteger(value) || value < 0) throw invalidRead(s, info, pos, `${value} is not a device time (ms since the epoch)`, 'ts', value, id);
  return value;
}

// ---------------------------------------------------------------------------------------------
// Bit fields: {"type": "bits", "size": 1, "bits": [{"id": "tamper", "bit": 0}, {"id": "mode", "bits": [4, 6]}]}.

const BITS_KEYS = ['name', 'type', 'size', 'endian', 'bits', 'at'] as const;
const SLICE_KEYS = ['id', 'name', 'bit', 'bits', 'const'] as const;

interface Slice extends BitSlice {
  readonly width: number;
  readonly mask: number;
  readonly const: number | undefined;
  readonly isSwitch: boolean;
  readonly info: Info;
}

function bitsField(env: Env, f: JsonObject, p: string, i: number): CompiledField {
  const r: DefinitionReader = env.r;
  r.onlyKeys(f, p, BITS_KEYS);
  if (env.item) r.fail(keyPath(p, 'type'), 'a bits field gives several values; use "fields" rather than "item"');
  const size = f.size === undefined ? 1 : r.integer(f.size, keyPath(p, 'size'));
  if (size !== 1 && size !== 2 && size !== 4) r.fail(keyPath(p, 'size'), `expected 1, 2 or 4 (bytes), got ${show(f.size)}`);
  const width = size * 8;
  const le = endianOf(env, f, p);
  const name = r.optionalString(f.name, keyPath(p, 'name'));
  const label = name ?? `fields[${i}]`;
  const list = r.array(f.bits, keyPath(p, 'bits'));
  if (list.length === 0) r.fail(keyPath(p, 'bits'), 'a bits field needs at least one slice');

  const slices: Slice[] = [];
  list.forEach((value, j) => {
    const sp = keyPath(keyPath(p, 'bits'), j);
    const o = r.object(value, sp);
    r.onlyKeys(o, sp, SLICE_KEYS);
    let lo: number;
    let hi: number;
    if ((o.bit === undefined) === (o.bits === undefined)) r.fail(sp, 'give either "bit": n or "bits": [low, high]');
    if (o.bit !== undefined) {
      lo = hi = r.integer(o.bit, keyPath(sp, 'bit'), { min: 0, max: width - 1 });
    } else {
      const range = r.array(o.bits, keyPath(sp, 'bits'));
      if (range.length !== 2) r.fail(keyPath(sp, 'bits'), `expected [low, high], got ${show(o.bits)}`);
      lo = r.integer(range[0], keyPath(keyPath(sp, 'bits'), 0), { min: 0, max: width - 1 });
      hi = r.integer(range[1], keyPath(keyPath(sp, 'bits'), 1), { min: lo, max: width - 1 });
    }
    for (const other of slices) {
      if (lo <= other.hi && other.lo <= hi) r.fail(sp, `bits ${lo}..${hi} overlap ${other.label} (bits ${other.lo}..${other.hi})`);
    }
    const sliceWidth = hi - lo + 1;
    const max = 2 ** sliceWidth - 1;
    const sliceName = r.optionalString(o.name, keyPath(sp, 'name'));
    const isSwitch = env.switchName !== undefined && sliceName === env.switchName;
    if (isSwitch) {
      switchCheck(env, o, sp, ['id', 'const']);
      env.switchInfo = { label: sliceName, type: `bits ${lo}..${hi} of ${label}`, min: 0, max, bytes: Math.ceil(sliceWidth / 8) };
    }
    const constant = o.const === undefined ? undefined : r.integer(o.const, keyPath(sp, 'const'), { min: 0, max });
    let id: string | undefined;
    if (o.id !== undefined) {
      id = r.string(o.id, keyPath(sp, 'id'), IDENTIFIER);
      const first = env.seen.get(id);
      if (first !== undefined) r.fail(keyPath(sp, 'id'), `duplicate id "${id}" (also ${first})`);
      env.seen.set(id, relative(env, sp));
      requireTargets(env, sp, id, targetsOf(env, sp, id, id), NUMBER_TARGETS, 'bits', 'a number');
    }
    const sliceLabel = id ?? sliceName ?? `${label}.bits[${j}]`;
    slices.push({
      id, label: sliceLabel, lo, hi, width: sliceWidth, mask: sliceWidth === 32 ? 0xffffffff : max, const: constant, isSwitch,
      info: new Info(sliceLabel, `bits ${lo}..${hi} of ${size === 1 ? 'the byte' : `the ${width}-bit word`}`, env.group),
    });
  });
  const at = place(env, f, p, label, size, size, size);
  const info = new Info(label, 'bits', env.group);
  const readWord = uintReader(size, le);
  const live = slices.filter((s) => s.id !== undefined || s.const !== undefined || s.isSwitch);

  const read: Reader = (s, pos, out) => {
    if (pos + size > s.end) throw shortFrame(s, info, pos, size);
    const word = readWord(s.buf, pos);
    for (let k = 0; k < live.length; k++) {
      const sl = live[k]!;
      const v = sl.width === 32 ? word : (word >>> sl.lo) & sl.mask;
      if (sl.isSwitch) {
        s.sw = v;
        s.swAt = pos;
      } else {
        if (sl.const !== undefined && v !== sl.const) throw malformed(s, sl.info, pos, ` is ${v}; expected ${sl.const}`, { expected: sl.const, value: v });
        if (sl.id !== undefined) out[sl.id] = v;
      }
    }
    return pos + size;
  };

  const write: Writer = (w, pos, values) => {
    w.reserve(pos, size);
    let word = 0;
    for (const sl of slices) {
      let v: number;
      if (sl.isSwitch) v = w.when;
      else if (sl.id !== undefined && (Object.hasOwn(values, sl.id) || sl.const === undefined)) {
        const given = values[sl.id];
        if (given === undefined) throw encodeError(w, sl.info, pos, `no value for ${sl.info.name(w.index)}`, 'missing', sl.id, undefined);
        const n = typeof given === 'boolean' ? Number(given) : given;
        if (typeof n !== 'number' || !Number.isInteger(n) || n < 0 || n > sl.mask) {
          throw encodeError(w, sl.info, pos, `${sl.info.name(w.index)}: ${show(given)} does not fit ${sl.width} bit${sl.width === 1 ? '' : 's'} (0..${sl.mask})`, 'range', sl.id, given);
        }
        if (sl.const !== undefined && n !== sl.const) throw encodeError(w, sl.info, pos, `${sl.id}: ${show(given)} is not the const ${sl.const}`, 'const', sl.id, given);
        v = n;
      } else v = sl.const ?? 0;
      word += v * 2 ** sl.lo; // slices do not overlap, so + is |, without 32-bit sign trouble
    }
    if (size === 1) w.buf[pos] = word;
    else if (size === 2) w.dv.setUint16(pos, word, le);
    else w.dv.setUint32(pos, word, le);
    return pos + size;
  };

  const ids = slices.flatMap((s) => (s.id === undefined ? [] : [s.id]));
  const needs = slices.flatMap((s) => (s.id !== undefined && s.const === undefined ? [s.id] : []));
  return { id: undefined, label, type: 'bits', at, size, minSize: size, maxSize: size, bits: slices.map(({ id, label: l, lo, hi }) => ({ id, label: l, lo, hi })), needs, ids, read, write };
}

// ---------------------------------------------------------------------------------------------
// BCD (binary-coded decimal, two digits a byte), as water, heat and gas meters send it (CJ/T 188):
//   "as": "number" (default)  digits -> integer -> raw * scale + offset; "endian": "little" = low byte first
//   "as": "text"              the digits as text, leading zeros kept (meter numbers)
//   "as": "date"              "format": "YYMMDDhhmmss" (any order of YYYY|YY MM DD hh mm ss) -> ms, at "utcOffset"

const BCD_KEYS = {
  number: ['id', 'name', 'type', 'as', 'size', 'endian', 'scale', 'offset', 'const', 'at', 'ts'],
  text: ['id', 'name', 'type', 'as', 'size', 'endian', 'at'],
  date: ['id', 'name', 'type', 'as', 'size', 'format', 'utcOffset', 'at', 'ts'],
} as const;

const DATE_TOKENS = { YYYY: 2, YY: 1, MM: 1, DD: 1, hh: 1, mm: 1, ss: 1 } as const;
type DateToken = keyof typeof DATE_TOKENS;

function bcdField(env: Env, f: JsonObject, p: string, i: number): CompiledField {
  const r: DefinitionReader = env.r;
  const as = f.as === undefined ? 'number' : r.oneOf(f.as, keyPath(p, 'as'), ['number', 'text', 'date'] as const);
  r.onlyKeys(f, p, BCD_KEYS[as]);
  if (as === 'date') return bcdDateField(env, f, p, i);
  const maxBytes = as === 'number' ? 7 : 32; // 14 digits stay below 2^53
  const size = r.integer(f.size, keyPath(p, 'size'), { min: 1, max: maxBytes });
  const le = endianOf(env, f, p, false);
  const { scale, offset } = scaleOf(env, f, p);
  const digits = size * 2;
  const constant = f.const === undefined ? undefined : r.integer(f.const, keyPath(p, 'const'), { min: 0, max: 10 ** digits - 1 });
  const { id, label, targets } = ident(env, f, p, i);
  const display = env.item ? `${env.group}[]` : (id ?? label);
  if (as === 'number') {
    requireTargets(env, p, display, targets, NUMBER_TARGETS, 'bcd', 'a number');
    requireIntegral(env, p, display, targets, scale, offset);
  } else {
    requireTargets(env, p, display, targets, new Set(['text']), 'bcd text', 'text');
  }
  const ts = as === 'number' && tsOf(env, f, p);
  const at = place(env, f, p, label, size, size, size);
  const info = new Info(label, 'bcd', env.group);
  const toValue = makeToValue(true, scale, offset);
  const text = as === 'text';

  const read: Reader = (s, pos, out) => {
    if (pos + size > s.end) throw shortFrame(s, info, pos, size);
    const buf = s.buf;
    let n = 0;
    let str = '';
    for (let k = 0; k < size; k++) {
      const at = le ? pos + size - 1 - k : pos + k;
      const b = buf[at]!;
      const h = b >> 4;
      const l = b & 0x0f;
      if (h > 9 || l > 9) throw malformed(s, info, pos, ` has byte ${hex(b, 1)} at offset ${at}, which is not two decimal digits`, { value: b });
      if (text) str += String.fromCharCode(0x30 + h, 0x30 + l);
      else n = n * 100 + h * 10 + l;
    }
    if (text) {
      if (id !== undefined) out[id] = str;
      return pos + size;
    }
    if (constant !== undefined && n !== constant) throw malformed(s, info, pos, ` is ${n}; expected ${constant}`, { expected: constant, value: n });
    const value = toValue(n);
    if (id !== undefined) out[id] = value;
    if (ts) s.ts = deviceTime(s, info, pos, value, id);
    return pos + size;
  };

  const limit = 10 ** digits - 1;
  const write: Writer = (w, pos, values) => {
    w.reserve(pos, size);
    let digitsText: string;
    if (id !== undefined && (Object.hasOwn(values, id) || constant === undefined)) {
      const given = values[id];
      const key = info.name(w.index);
      if (given === undefined) throw encodeError(w, info, pos, `no value for ${key}`, 'missing', id, undefined);
      if (text) {
        if (typeof given !== 'string' || given.length !== digits || !/^\d+$/.test(given)) {
          throw encodeError(w, info, pos, `${key}: ${show(given)} is not ${digits} decimal digits`, 'bcd', id, given);
        }
        digitsText = given;
      } else {
        const v = typeof given === 'boolean' ? Number(given) : given;
        if (typeof v !== 'number') throw encodeError(w, info, pos, `${key}: ${show(given)} is not a number`, 'number', id, given);
        const raw = Math.round((v - offset) / scale);
        if (!Number.isFinite(raw) || raw < 0 || raw > limit) {
          throw encodeError(w, info, pos, `${key}: ${show(given)} does not fit ${digits} BCD digits (raw ${raw}, range 0..${limit})`, 'range', id, given);
        }
        if (constant !== undefined && raw !== constant) throw encodeError(w, info, pos, `${key}: ${show(given)} is not the const ${constant}`, 'const', id, given);
        digitsText = String(raw).padStart(digits, '0');
      }
    } else if (ts) {
      const raw = w.ts === undefined ? NaN : Math.round((w.ts - offset) / scale);
      if (!(raw >= 0 && raw <= limit)) throw encodeError(w, info, pos, `no device time (ts) that fits ${label}`, 'missing', undefined, w.ts);
      digitsText = String(raw).padStart(digits, '0');
    } else {
      digitsText = String(constant ?? 0).padStart(digits, '0');
    }
    for (let k = 0; k < size; k++) {
      const b = ((digitsText.charCodeAt(2 * k) - 0x30) << 4) | (digitsText.charCodeAt(2 * k + 1) - 0x30);
      w.buf[le ? pos + size - 1 - k : pos + k] = b;
    }
    return pos + size;
  };

  const own = id !== undefined && !env.item;
  return { id: own ? id : undefined, label, type: 'bcd', at, size, minSize: size, maxSize: size, needs: own && constant === undefined ? [id] : [], ids: own ? [id] : [], read, write };
}

function bcdDateField(env: Env, f: JsonObject, p: string, i: number): CompiledField {
  const r: DefinitionReader = env.r;
  const format = r.string(f.format, keyPath(p, 'format'));
  const tokens: DateToken[] = [];
  const re = /YYYY|YY|MM|DD|hh|mm|ss/y;
  let k = 0;
  while (k < format.length) {
    re.lastIndex = k;
    const m = re.exec(format);
    if (!m) r.fail(keyPath(p, 'format'), `${show(format)} is not made of YYYY or YY, MM, DD, hh, mm, ss (at ${show(format.slice(k))})`);
    const token = m[0] as DateToken;
    const year = token === 'YY' || token === 'YYYY';
    if (tokens.some((t) => t === token || (year && (t === 'YY' || t === 'YYYY')))) r.fail(keyPath(p, 'format'), `${show(format)} has ${token} twice`);
    tokens.push(token);
    k += token.length;
  }
  for (const need of ['MM', 'DD'] as const) if (!tokens.includes(need)) r.fail(keyPath(p, 'format'), `${show(format)} has no ${need}`);
  if (!tokens.includes('YY') && !tokens.includes('YYYY')) r.fail(keyPath(p, 'format'), `${show(format)} has no year (YY or YYYY)`);
  const size = tokens.reduce((n, t) => n + DATE_TOKENS[t], 0);
  if (f.size !== undefined && r.integer(f.size, keyPath(p, 'size')) !== size) r.fail(keyPath(p, 'size'), `format ${format} takes ${size} bytes, not ${show(f.size)}`);
  let offsetMin = 0;
  if (f.utcOffset !== undefined) {
    const m = /^([+-])(\d\d):(\d\d)$/.exec(typeof f.utcOffset === 'string' ? f.utcOffset : '');
    if (!m || Number(m[2]) > 14 || Number(m[3]) > 59) r.fail(keyPath(p, 'utcOffset'), `expected "+hh:mm" or "-hh:mm", got ${show(f.utcOffset)}`);
    offsetMin = (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3]));
  }
  const { id, label, targets } = ident(env, f, p, i);
  requireTargets(env, p, env.item ? `${env.group}[]` : (id ?? label), targets, new Set(['date']), 'bcd date-time', 'a date');
  const ts = tsOf(env, f, p);
  const at = place(env, f, p, label, size, size, size);
  const info = new Info(label, 'bcd', env.group);
  const shift = offsetMin * 60_000;
  // Smallest unit the format keeps: a time is only representable on that grid.
  const unit = tokens.includes('ss') ? 1000 : tokens.includes('mm') ? 60_000 : tokens.includes('hh') ? 3_600_000 : 86_400_000;
  const fullYear = tokens.includes('YYYY');

  const read: Reader = (s, pos, out) => {
    if (pos + size > s.end) throw shortFrame(s, info, pos, size);
    const buf = s.buf;
    let year = 0;
    let month = 0;
    let day = 0;
    let hour = 0;
    let minute = 0;
    let second = 0;
    let q = pos;
    for (const t of tokens) {
      let v = 0;
      for (let n = 0; n < DATE_TOKENS[t]; n++, q++) {
        const b = buf[q]!;
        if (b >> 4 > 9 || (b & 0x0f) > 9) throw malformed(s, info, pos, ` has byte ${hex(b, 1)} at offset ${q}, which is not two decimal digits`, { value: b });
        v = v * 100 + (b >> 4) * 10 + (b & 0x0f);
      }
      if (t === 'YYYY') year = v;
      else if (t === 'YY') year = 2000 + v;
      else if (t === 'MM') month = v;
      else if (t === 'DD') day = v;
      else if (t === 'hh') hour = v;
      else if (t === 'mm') minute = v;
      else second = v;
    }
    const ms = Date.UTC(year, month - 1, day, hour, minute, second) - shift;
    if (month < 1 || month > 12 || day < 1 || day > daysIn(year, month) || hour > 23 || minute > 59 || second > 59 || year < 1970 || ms < 0) {
      const shown = `${String(year).padStart(4, '0')}-${pad2(month)}-${pad2(day)} ${pad2(hour)}:${pad2(minute)}:${pad2(second)}`;
      throw malformed(s, info, pos, ` is ${shown}, not a date-time after 1970 (format ${format})`, { value: shown });
    }
    if (id !== undefined) out[id] = ms;
    if (ts) s.ts = ms;
    return pos + size;
  };

  const write: Writer = (w, pos, values) => {
    w.reserve(pos, size);
    let given: unknown;
    const key = id === undefined ? 'ts' : info.name(w.index);
    if (id !== undefined) {
      given = values[id];
      if (given === undefined) throw encodeError(w, info, pos, `no value for ${key}`, 'missing', id, undefined);
    } else if (ts) {
      given = w.ts;
      if (given === undefined) throw encodeError(w, info, pos, `no device time (ts) for ${label}`, 'missing', undefined, undefined);
    } else given = 946_684_800_000 - shift; // an unnamed date field: 2000-01-01 00:00 local
    const ms = typeof given === 'string' && /^\d{1,16}$/.test(given) ? Number(given) : given;
    if (typeof ms !== 'number' || !Number.isSafeInteger(ms) || ms < 0 || (ms + shift) % unit !== 0) {
      throw encodeError(w, info, pos, `${key}: ${show(given)} is not a time the format ${format} can hold (whole ${unit / 1000} s, ms since the epoch)`, 'date', id, given);
    }
    const d = new Date(ms + shift);
    const year = d.getUTCFullYear();
    if (year < (fullYear ? 1970 : 2000) || year > (fullYear ? 9999 : 2099)) {
      throw encodeError(w, info, pos, `${key}: year ${year} does not fit ${fullYear ? 'YYYY' : 'YY (2000..2099)'}`, 'date', id, given);
    }
    let q = pos;
    for (const t of tokens) {
      const v =
        t === 'YYYY' ? year : t === 'YY' ? year - 2000 : t === 'MM' ? d.getUTCMonth() + 1 : t === 'DD' ? d.getUTCDate() : t === 'hh' ? d.getUTCHours() : t === 'mm' ? d.getUTCMinutes() : d.getUTCSeconds();
      if (t === 'YYYY') {
        w.buf[q++] = toBcdByte(Math.floor(v / 100));
        w.buf[q++] = toBcdByte(v % 100);
      } else w.buf[q++] = toBcdByte(v);
    }
    return pos + size;
  };

  const own = id !== undefined && !env.item;
  return { id: own ? id : undefined, label, type: 'bcd', at, size, minSize: size, maxSize: size, needs: own ? [id] : [], ids: own ? [id] : [], read, write };
}

function daysIn(year: number, month: number): number {
  if (month === 2) return year % 4 === 0 && (year % 100 !== 0 || year % 400 === 0) ? 29 : 28;
  return month === 4 || month === 6 || month === 9 || month === 11 ? 30 : 31;
}

function pad2(n: number): string {
  return String(n).padStart(2, '0');
}

function toBcdByte(v: number): number {
  return (Math.floor(v / 10) << 4) | v % 10;
}

// ---------------------------------------------------------------------------------------------
// Strings and byte arrays: "size": n (fixed) or "prefix": "u8"|"u16"|"u32" (length before the bytes).
// A string ends at its first NUL; trailing spaces are trimmed (fixed-size fields are padded with
// either). Bytes are reported as lower-case hex text.

const STRING_KEYS = ['id', 'name', 'type', 'size', 'prefix', 'encoding', 'endian', 'at'] as const;
const BYTES_KEYS = ['id', 'name', 'type', 'size', 'prefix', 'endian', 'const', 'at'] as const;
const HEX = Array.from({ length: 256 }, (_, b) => b.toString(16).padStart(2, '0'));
const UTF8 = new TextDecoder('utf-8', { fatal: true });

function textField(env: Env, f: JsonObject, p: string, i: number, type: 'string' | 'bytes'): CompiledField {
  const r: DefinitionReader = env.r;
  r.onlyKeys(f, p, type === 'string' ? STRING_KEYS : BYTES_KEYS);
  if ((f.size === undefined) === (f.prefix === undefined)) r.fail(p, 'give either "size": n or "prefix": "u8" | "u16" | "u32"');
  const fixed = f.size === undefined ? undefined : r.integer(f.size, keyPath(p, 'size'), { min: 1, max: MAX_SIZE });
  const prefix: PrefixType | undefined = f.prefix === undefined ? undefined : r.oneOf(f.prefix, keyPath(p, 'prefix'), PREFIX_TYPES);
  const le = endianOf(env, f, p);
  const ascii = type === 'string' && f.encoding !== undefined && r.oneOf(f.encoding, keyPath(p, 'encoding'), ['utf8', 'ascii'] as const) === 'ascii';
  let constant: string | undefined;
  if (f.const !== undefined) {
    if (fixed === undefined) r.fail(keyPath(p, 'const'), 'only with a fixed "size"');
    constant = r.string(f.const, keyPath(p, 'const'), { re: /^([0-9a-fA-F]{2})+$/, what: 'hex bytes' }).toLowerCase();
    if (constant.length !== fixed * 2) r.fail(keyPath(p, 'const'), `${show(f.const)} is ${constant.length / 2} bytes; the field is ${fixed}`);
  }
  const { id, label, targets } = ident(env, f, p, i);
  requireTargets(env, p, env.item ? `${env.group}[]` : (id ?? label), targets, new Set(['text']), type, 'text');
  const pt = prefix === undefined ? undefined : FIELD_TYPES[prefix];
  const psize = pt?.size ?? 0;
  const readLength = uintReader(psize, le);
  // A u32 prefix is bounded by the frame in practice; keep sizes finite for the size arithmetic.
  const maxLen = fixed ?? Math.min(pt!.max, MAX_SIZE);
  const at = place(env, f, p, label, fixed, fixed ?? psize, fixed ?? psize + maxLen);
  const info = new Info(label, type, env.group);

  const decodeText = (s: ReadState, pos: number, start: number, end: number): string => {
    const buf = s.buf;
    let stop = start;
    while (stop < end && buf[stop] !== 0) stop++;
    while (stop > start && buf[stop - 1] === 0x20) stop--;
    if (ascii) {
      let out = '';
      for (let k = start; k < stop; k++) {
        const c = buf[k]!;
        if (c > 0x7f) throw malformed(s, info, pos, ` has byte ${hex(c, 1)} at offset ${k}, which is not ASCII`, { value: c });
        out += String.fromCharCode(c);
      }
      return out;
    }
    try {
      return UTF8.decode(buf.subarray(start, stop));
    } catch {
      throw malformed(s, info, pos, ' is not valid UTF-8');
    }
  };
  const decodeHex = (buf: Uint8Array, start: number, end: number): string => {
    let out = '';
    for (let k = start; k < end; k++) out += HEX[buf[k]!];
    return out;
  };

  const read: Reader = (s, pos, out) => {
    let start = pos;
    let len: number;
    if (fixed !== undefined) {
      len = fixed;
      if (pos + len > s.end) throw shortFrame(s, info, pos, len);
    } else {
      if (pos + psize > s.end) throw shortFrame(s, info, pos, psize, ' for its length');
      len = readLength(s.buf, pos);
      start = pos + psize;
      if (start + len > s.end) throw shortFrame(s, info, pos, psize + len, ` (length ${len})`);
    }
    if (constant !== undefined) {
      const got = decodeHex(s.buf, start, start + len);
      if (got !== constant) throw malformed(s, info, pos, ` is ${got}; expected ${constant}`, { expected: constant, value: got });
    }
    if (id !== undefined) out[id] = type === 'bytes' ? decodeHex(s.buf, start, start + len) : decodeText(s, pos, start, start + len);
    return start + len;
  };

  const write: Writer = (w, pos, values) => {
    let bytes: Uint8Array;
    const key = info.name(w.index);
    if (id !== undefined && (Object.hasOwn(values, id) || constant === undefined)) {
      const given = values[id];
      if (given === undefined) throw encodeError(w, info, pos, `no value for ${key}`, 'missing', id, undefined);
      if (typeof given !== 'string') throw encodeError(w, info, pos, `${key}: ${show(given)} is not a text`, 'text', id, given);
      if (type === 'bytes') {
        if (!/^([0-9a-fA-F]{2})*$/.test(given)) throw encodeError(w, info, pos, `${key}: ${show(given)} is not hex bytes`, 'hex', id, given);
        if (constant !== undefined && given.toLowerCase() !== constant) throw encodeError(w, info, pos, `${key}: ${show(given)} is not the const ${constant}`, 'const', id, given);
        bytes = Buffer.from(given, 'hex');
      } else {
        // Decoding stops at a NUL and trims trailing spaces: refuse what would not read back the same.
        if (given.includes('\u0000') || given.endsWith(' ')) {
          throw encodeError(w, info, pos, `${key}: ${show(given)} has a NUL or trailing spaces, which the decoder drops`, 'text', id, given);
        }
        // eslint-disable-next-line no-control-regex
        if (ascii && /[^\u0000-\u007f]/.test(given)) throw encodeError(w, info, pos, `${key}: ${show(given)} is not ASCII`, 'ascii', id, given);
        bytes = Buffer.from(given, 'utf8');
      }
    } else {
      bytes = constant === undefined ? new Uint8Array(0) : Buffer.from(constant, 'hex');
    }
    if (bytes.length > maxLen || (type === 'bytes' && fixed !== undefined && id !== undefined && bytes.length !== fixed)) {
      throw encodeError(w, info, pos, `${key}: ${bytes.length} bytes do not fit ${fixed === undefined ? `a ${prefix} length (up to ${maxLen})` : `${fixed} bytes`}`, 'length', id, bytes.length);
    }
    const len = fixed ?? bytes.length;
    w.reserve(pos, psize + len);
    if (pt) pt.write(w.dv, pos, bytes.length, le);
    w.buf.set(bytes, pos + psize); // a fixed field's remaining bytes stay 0 (NUL padding)
    return pos + psize + len;
  };

  const own = id !== undefined && !env.item;
  return {
    id: own ? id : undefined, label, type, at, size: fixed, minSize: fixed ?? psize, maxSize: fixed ?? psize + maxLen,
    needs: own && constant === undefined ? [id] : [], ids: own ? [id] : [], read, write,
  };
}

// ---------------------------------------------------------------------------------------------
// Groups: {"id": "samples", "type": "group", "count": "u8", "fields": [...]} -> [{...}, ...]
// (a TSL array of struct), or "item": {field} -> [v, ...] (an array of int/float/double/text).
// "count": n is a fixed number of items; "u8"|"u16"|"u32" is a count read just before them.

const GROUP_KEYS = ['id', 'name', 'type', 'count', 'endian', 'fields', 'item', 'at'] as const;

function groupField(env: Env, f: JsonObject, p: string, i: number): CompiledField {
  const r: DefinitionReader = env.r;
  r.onlyKeys(f, p, GROUP_KEYS);
  if (env.group !== undefined) r.fail(keyPath(p, 'type'), 'groups do not nest (a TSL array holds no arrays)');
  if (f.id === undefined) r.fail(keyPath(p, 'id'), 'missing (expected the identifier of a TSL array)');
  let fixedCount: number | undefined;
  let prefix: PrefixType | undefined;
  if (typeof f.count === 'string') prefix = r.oneOf(f.count, keyPath(p, 'count'), PREFIX_TYPES);
  else fixedCount = r.integer(f.count, keyPath(p, 'count'), { min: 1, max: MAX_SIZE });
  const le = endianOf(env, f, p);
  if ((f.fields === undefined) === (f.item === undefined)) r.fail(p, 'give either "fields": [...] (an array of struct) or "item": {...} (an array of values)');
  const itemForm = f.item !== undefined;
  const { id, label, targets } = ident(env, f, p, i);
  const gid = id!;

  // The items' scopes: the struct members, or the array's item type under ITEM_KEY.
  const memberScopes: Scope[] = [];
  for (const dt of targets) {
    if (dt.type !== 'array') r.fail(keyPath(p, 'id'), `${gid} is ${article(dt.type)} ${dt.type} in model.json; a group carries an array`);
    const { size, item } = arraySpecs(dt);
    if (!item) r.fail(keyPath(p, 'id'), `${gid}: model.json gives the array no item type`);
    if (fixedCount !== undefined && size !== undefined && fixedCount > size) r.fail(keyPath(p, 'count'), `${fixedCount} items exceed the size ${size} of ${gid} in model.json`);
    if (itemForm) {
      if (item.type === 'struct' || item.type === 'array') r.fail(keyPath(p, 'item'), `${gid} is an array of ${item.type} in model.json; use "fields" for an array of struct`);
      memberScopes.push({ where: `the item of ${gid}`, lookup: new Map([[ITEM_KEY, item]]) });
    } else {
      if (item.type !== 'struct') r.fail(keyPath(p, 'fields'), `${gid} is an array of ${item.type} in model.json; use "item" for an array of values`);
      memberScopes.push({ where: `a member of the ${gid} struct`, lookup: structMembers(item) });
    }
  }
  if (!targets.length) memberScopes.push({ where: '', lookup: null });

  const sub: Env = {
    r, root: env.root, littleEndian: env.littleEndian, scopes: memberScopes, seen: new Map(), place: newPlace(),
    group: gid, item: itemForm, switchName: undefined, switchInfo: undefined, tsPath: env.tsPath,
  };
  let members: CompiledField[];
  if (itemForm) {
    members = [compileField(sub, f.item, keyPath(p, 'item'), 0)];
  } else {
    const list = r.array(f.fields, keyPath(p, 'fields'));
    if (list.length === 0) r.fail(keyPath(p, 'fields'), 'a group needs at least one field');
    members = list.map((v, j) => compileField(sub, v, keyPath(keyPath(p, 'fields'), j), j));
  }
  const itemSize = sub.place.pos; // static item size, or undefined when items vary
  const itemMin = sub.place.min;
  const itemMax = sub.place.max;
  const pt = prefix === undefined ? undefined : FIELD_TYPES[prefix];
  const psize = pt?.size ?? 0;
  const readCount = uintReader(psize, le);
  const maxCount = fixedCount ?? Math.min(pt!.max, MAX_SIZE);
  const size = fixedCount !== undefined && itemSize !== undefined ? fixedCount * itemSize : undefined;
  const minSize = fixedCount !== undefined ? fixedCount * itemMin : psize;
  const maxSize = psize + maxCount * itemMax;
  const at = place(env, f, p, label, size, minSize, maxSize);
  const info = new Info(label, 'group', env.group);
  const single = itemForm ? members[0]! : undefined;
  const memberIds = new Set(members.flatMap((m) => m.ids));

  const read: Reader = (s, pos, out) => {
    let n: number;
    if (pt) {
      if (pos + psize > s.end) throw shortFrame(s, info, pos, psize, ' for its count');
      n = readCount(s.buf, pos);
    } else n = fixedCount!;
    let q = pos + psize;
    if (itemSize !== undefined && q + n * itemSize > s.end) {
      throw malformed(s, info, pos, ` counts ${n} items of ${itemSize} bytes (${n * itemSize} from offset ${q}); the frame has ${s.end - q} left`, { count: n, length: s.end });
    }
    const list: unknown[] = [];
    for (let k = 0; k < n; k++) {
      s.index = k;
      if (single) {
        q = single.read(s, q, scratch);
        list.push(scratch[ITEM_KEY]);
      } else {
        const o: Record<string, unknown> = {};
        for (let m = 0; m < members.length; m++) q = members[m]!.read(s, q, o);
        list.push(o);
      }
    }
    s.index = 0;
    out[gid] = list;
    return q;
  };

  const write: Writer = (w, pos, values) => {
    const given = values[gid];
    if (given === undefined) throw encodeError(w, info, pos, `no value for ${gid}`, 'missing', gid, undefined);
    if (!Array.isArray(given)) throw encodeError(w, info, pos, `${gid}: ${show(given)} is not an array`, 'array', gid, given);
    if (fixedCount !== undefined ? given.length !== fixedCount : given.length > maxCount) {
      const want = fixedCount !== undefined ? `exactly ${fixedCount}` : `at most ${maxCount} (${prefix} count)`;
      throw encodeError(w, info, pos, `${gid}: ${given.length} items; the group takes ${want}`, 'count', gid, given.length);
    }
    w.reserve(pos, psize);
    if (pt) pt.write(w.dv, pos, given.length, le);
    let q = pos + psize;
    for (let k = 0; k < given.length; k++) {
      w.index = k;
      const el: unknown = given[k];
      if (single) q = single.write(w, q, { [ITEM_KEY]: el });
      else {
        if (typeof el !== 'object' || el === null || Array.isArray(el)) {
          throw encodeError(w, info, pos, `${gid}[${k}]: ${show(el)} is not an object of ${[...memberIds].join(', ')}`, 'struct', gid, el);
        }
        for (const key of Object.keys(el)) {
          if (!memberIds.has(key)) throw encodeError(w, info, pos, `${gid}[${k}].${key}: not a field of the group (${[...memberIds].join(', ')})`, 'unknown', gid, key);
        }
        for (const m of members) q = m.write(w, q, el as Record<string, unknown>);
      }
    }
    w.index = 0;
    return q;
  };

  return { id: gid, label, type: 'group', at, size, minSize, maxSize, fields: members, needs: [gid], ids: [gid], read, write };
}

/** Alibaba TSL: {"type": "array", "specs": {"size": "24", "item": {"type": "struct", "specs": [...]}}}. */
function arraySpecs(dt: LooseType): { size: number | undefined; item: LooseType | undefined } {
  const specs = dt.specs as { size?: unknown; item?: unknown } | undefined;
  const size = specs && (typeof specs.size === 'number' || typeof specs.size === 'string') ? Number(specs.size) : undefined;
  const item = specs?.item as LooseType | undefined;
  return {
    size: size !== undefined && Number.isInteger(size) ? size : undefined,
    item: item && typeof item === 'object' && typeof item.type === 'string' ? item : undefined,
  };
}

/** A struct's specs: [{"identifier", "name", "dataType"}]. */
function structMembers(dt: LooseType): Map<string, LooseType> {
  const members = new Map<string, LooseType>();
  if (Array.isArray(dt.specs)) {
    for (const m of dt.specs as Array<{ identifier?: unknown; dataType?: unknown }>) {
      const t = m?.dataType as LooseType | undefined;
      if (typeof m?.identifier === 'string' && t && typeof t.type === 'string') members.set(m.identifier, t);
    }
  }
  return members;
}

// ---------------------------------------------------------------------------------------------
// Checks: {"type": "crc16-modbus", "from": 0} covers bytes [from, to), `to` defaulting to the
// check's own offset; crc16-modbus is stored low byte first unless "endian" says otherwise.

const CHECKSUM_KEYS = ['name', 'type', 'from', 'to', 'endian', 'at'] as const;

function checksumField(env: Env, f: JsonObject, p: string, i: number, type: ChecksumType): CompiledField {
  const r: DefinitionReader = env.r;
  r.onlyKeys(f, p, CHECKSUM_KEYS);
  if (env.group !== undefined) r.fail(keyPath(p, 'type'), 'a checksum cannot be inside a group');
  const cs = CHECKSUMS[type];
  const le = endianOf(env, f, p, cs.littleEndian);
  const name = r.optionalString(f.name, keyPath(p, 'name'));
  const label = name ?? `fields[${i}]`;
  const from = f.from === undefined ? 0 : r.integer(f.from, keyPath(p, 'from'), { min: 0, max: MAX_SIZE });
  const to = f.to === undefined ? undefined : r.integer(f.to, keyPath(p, 'to'), { min: 0, max: MAX_SIZE });
  const size = cs.size;
  const at = place(env, f, p, label, size, size, size);
  // The check can sit no earlier than this: the bytes it covers must come before it.
  const earliest = at ?? env.place.min - size;
  if (to !== undefined && to > earliest) r.fail(keyPath(p, 'to'), `${to} is past the checksum itself (offset ${at ?? `${earliest} or later`})`);
  if (from >= (to ?? earliest)) r.fail(keyPath(p, 'from'), `${from} leaves no bytes to check before ${to ?? earliest}`);
  const info = new Info(label, type, undefined);
  const readStored = uintReader(size, le);

  const read: Reader = (s, pos) => {
    if (pos + size > s.end) throw shortFrame(s, info, pos, size);
    const stored = readStored(s.buf, pos);
    const end = to ?? pos;
    const want = cs.compute(s.buf, from, end);
    if (stored !== want) {
      throw malformed(s, info, pos, `: ${cs.title} ${hexUpper(stored, size)} does not match ${hexUpper(want, size)} computed over bytes [${from}, ${end})`, {
        expected: want, value: stored,
      });
    }
    return pos + size;
  };

  const write: Writer = (w, pos) => {
    w.reserve(pos, size);
    const end = to ?? pos;
    w.after.push(() => {
      const v = cs.compute(w.buf, from, end);
      if (size === 1) w.buf[pos] = v;
      else w.dv.setUint16(pos, v, le);
    });
    return pos + size;
  };

  return { id: undefined, label, type, at, size, minSize: size, maxSize: size, needs: [], ids: [], read, write };
}
