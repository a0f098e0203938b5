// The thing model (物模型) in Alibaba IoT's TSL format, as exported by the Alibaba console and, with a
// few differences, by OneNET Studio: {schema, profile, properties, events, services}. An export
// must load unchanged, so:
//   - spec numbers may be strings ("min": "0", "size": "10"); OneNET writes "" or null for unset specs;
//   - keys Wanwu does not use (std, functionType, functionMode, extendConfig, ...) are kept in the
//     file and reported once per key name as a warning, never refused;
//   - OneNET's type names int32, int64, string and bitMap are read as int, int (wider), text and a
//     non-negative int; its bool labels {"true", "false"}, its `eventType` and its two array forms
//     ({size, items} and {length, type, specs}) are accepted next to Alibaba's {size, item};
//   - Alibaba custom modules (自定义模块): a module's TSL carries `functionBlockId`, and devices report
//     its features as `{functionBlockId}:{identifier}` (Alink: "模块标识符:属性标识符"). A model.json
//     that is one module's export, or a default-module export whose `functionBlocks` entries hold the
//     modules' own properties/events/services (a Wanwu convenience), lists those features under that
//     prefixed identifier, so lookups and records use exactly what devices send.
// Struct members are scalars (one level); array items are int, float, double, text or struct.

import { DefinitionReader, keyPath, show, type JsonObject } from './check.js';

export const TSL_TYPES = ['int', 'float', 'double', 'bool', 'enum', 'text', 'date', 'struct', 'array'] as const;
export type TslType = (typeof TSL_TYPES)[number];

/** OneNET Studio's type names, read as these TSL types (int64 widens int to the safe-integer range, see TslNumberType). */
export const TSL_TYPE_ALIASES: Readonly<Record<string, TslType>> = { int32: 'int', int64: 'int', string: 'text', bitMap: 'int' };

const SCALAR_TYPES = ['int', 'float', 'double', 'bool', 'enum', 'text', 'date'] as const;
const ARRAY_ITEM_TYPES = ['int', 'float', 'double', 'text', 'struct'] as const;

export interface NumberSpecs {
  min?: number;
  max?: number;
  /** Informative only: values off the step grid are accepted. */
  step?: number;
  unit?: string;
  unitName?: string;
}

export interface TslNumberType {
  type: 'int' | 'float' | 'double';
  specs: NumberSpecs;
  /**
   * Set for OneNET's int64 and bitMap: the integer may use the whole range a JSON number carries
   * exactly (±(2^53-1)) instead of int32.
   */
  int64?: true;
}
/** Labels for 0 and 1, e.g. {"0": "关", "1": "开"} (OneNET's {"false", "true"} are stored under "0" and "1"). */
export interface TslBoolType {
  type: 'bool';
  specs: Readonly<Record<string, string>>;
}
/** Integer value -> label, e.g. {"0": "open", "1": "closed"}. */
export interface TslEnumType {
  type: 'enum';
  specs: Readonly<Record<string, string>>;
}
/** `length`: maximum length in characters (code points). */
export interface TslTextType {
  type: 'text';
  specs: { length?: number };
}
/** ms since the epoch, sent as a number or a string of digits. */
export interface TslDateType {
  type: 'date';
  specs: Record<string, never>;
}
export type TslScalarDataType = TslNumberType | TslBoolType | TslEnumType | TslTextType | TslDateType;

/** One member of a struct: scalar types only (Alibaba: a struct holds the seven scalar types). */
export interface TslStructMember {
  identifier: string;
  name: string;
  dataType: TslScalarDataType;
  desc?: string;
}
export interface TslStructType {
  type: 'struct';
  specs: readonly TslStructMember[];
}
export type TslArrayItem = TslNumberType | TslTextType | TslStructType;
/** `size`: the most elements a value may have. */
export interface TslArrayType {
  type: 'array';
  specs: { size: number; item: TslArrayItem };
}
export type TslDataType = TslScalarDataType | TslStructType | TslArrayType;

export interface TslParam {
  /** For a custom module's feature: `{functionBlockId}:{identifier}` (see the top of this file). */
  identifier: string;
  name: string;
  dataType: TslDataType;
  required?: boolean;
  desc?: string;
}

export interface TslProperty extends TslParam {
  accessMode: 'r' | 'rw';
  /** The custom module it belongs to; absent for the default module. */
  functionBlockId?: string;
}

export interface TslEvent {
  identifier: string;
  name: string;
  type: 'info' | 'alert' | 'error';
  outputData: TslParam[];
  method?: string;
  required?: boolean;
  desc?: string;
  functionBlockId?: string;
}

/**
 * A service (kept for downlink; not used on the uplink). Alibaba's built-in `get` service lists
 * plain property identifiers as its inputData, hence `string` entries.
 */
export interface TslService {
  identifier: string;
  name: string;
  /** Alibaba's default when the export has none: async. */
  callType: 'sync' | 'async';
  inputData: Array<TslParam | string>;
  outputData: TslParam[];
  method?: string;
  required?: boolean;
  desc?: string;
  functionBlockId?: string;
}

/** A custom module named by the model. `included` is false for a reference without the module's own TSL. */
export interface TslFunctionBlock {
  functionBlockId: string;
  functionBlockName?: string;
  included: boolean;
}

export interface ThingModel {
  schema?: string;
  /** Kept as exported ({version, productKey} from Alibaba, {productId, ...} from OneNET); not used. */
  profile?: JsonObject;
  /** Every property of every module, by the identifier devices report it under. */
  properties: TslProperty[];
  events: TslEvent[];
  services: TslService[];
  /** Set when model.json is one custom module's export. */
  functionBlockId?: string;
  functionBlockName?: string;
  /** The `functionBlocks` entries, when the model lists modules. */
  functionBlocks?: TslFunctionBlock[];
}

// Alibaba: letters, digits and underscores; OneNET system features start with `$` ($OneNET_LBS).
// `__proto__` is refused because identifiers become object keys in records.
const IDENTIFIER = { re: /^(?!__proto__$)\$?[A-Za-z0-9_]{1,128}$/, what: 'an identifier (letters, digits, _)' };
const BLOCK_ID = { re: /^(?!__proto__$)[A-Za-z0-9_]{1,64}$/, what: 'a module identifier (letters, digits, _)' };

// The keys each object may carry that Wanwu reads; any other key is kept in the file and reported.
const ROOT_KEYS = keys('schema', 'profile', 'properties', 'events', 'services', 'functionBlockId', 'functionBlockName', 'functionBlocks');
const BLOCK_KEYS = keys('functionBlockId', 'functionBlockName', 'productKey', 'properties', 'events', 'services');
const PROPERTY_KEYS = keys('identifier', 'name', 'accessMode', 'required', 'dataType', 'desc');
const PARAM_KEYS = keys('identifier', 'name', 'dataType', 'required', 'desc');
const MEMBER_KEYS = keys('identifier', 'name', 'dataType', 'desc');
const EVENT_KEYS = keys('identifier', 'name', 'type', 'eventType', 'outputData', 'method', 'required', 'desc');
const SERVICE_KEYS = keys('identifier', 'name', 'callType', 'inputData', 'outputData', 'method', 'required', 'desc');
const DATA_TYPE_KEYS = keys('type', 'specs');
const NUMBER_SPEC_KEYS = keys('min', 'max', 'step', 'unit', 'unitName');
const TEXT_SPEC_KEYS = keys('length');
const NO_KEYS = keys();

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

function keys(...names: string[]): ReadonlySet<string> {
  return new Set(names);
}

/**
 * Reads a model.json, throwing WANWU_ERR_PRODUCT naming `file` and the key path. `warn` receives one
 * line per ignored key name (with its first path and how often it occurs) and per other notice.
 */
export function parseThingModel(json: unknown, file: string, warn?: (line: string) => void): ThingModel {
  const t = new TslReader(file);
  const root = t.r.object(json, '');
  t.known(root, '', ROOT_KEYS);

  const model: ThingModel = { properties: [], events: [], services: [] };
  const schema = t.optionalString(root.schema, 'schema');
  if (schema !== undefined) model.schema = schema;
  if (!t.blank(root.profile)) model.profile = t.r.object(root.profile, 'profile');

  // A custom module's own export: everything in it is addressed with its prefix.
  let prefix = '';
  if (!t.blank(root.functionBlockId)) {
    model.functionBlockId = t.r.string(root.functionBlockId, 'functionBlockId', BLOCK_ID);
    prefix = model.functionBlockId;
    const name = t.optionalString(root.functionBlockName, 'functionBlockName');
    if (name !== undefined) model.functionBlockName = name;
  }
  t.module(model, root, '', prefix);

  if (!t.blank(root.functionBlocks)) {
    const blocks: TslFunctionBlock[] = [];
    const seen = new Map<string, string>();
    t.r.array(root.functionBlocks, 'functionBlocks').forEach((entry, i) => {
      const path = keyPath('functionBlocks', i);
      const o = t.r.object(entry, path);
      t.known(o, path, BLOCK_KEYS);
      const id = t.r.string(o.functionBlockId, keyPath(path, 'functionBlockId'), BLOCK_ID);
      const first = seen.get(id);
      if (first !== undefined) t.r.fail(keyPath(path, 'functionBlockId'), `duplicate module "${id}" (also ${first})`);
      if (id === prefix) t.r.fail(keyPath(path, 'functionBlockId'), `"${id}" is this file's own functionBlockId`);
      seen.set(id, path);
      const block: TslFunctionBlock = { functionBlockId: id, included: false };
      const name = t.optionalString(o.functionBlockName, keyPath(path, 'functionBlockName'));
      if (name !== undefined) block.functionBlockName = name;
      if (o.properties !== undefined || o.events !== undefined || o.services !== undefined) {
        block.included = true;
        t.module(model, o, path, id);
      } else {
        t.note(
          path,
          `module "${id}" is only named here, without its properties, events or services, so data for "${id}:..." identifiers will be refused (paste the module's TSL export into this entry to accept it)`,
        );
      }
      blocks.push(block);
    });
    model.functionBlocks = blocks;
  }

  if (warn) for (const line of t.warnings()) warn(line);
  return model;
}

/** A DefinitionReader plus the TSL rules shared by every level, and the record of ignored keys. */
class TslReader {
  readonly r: DefinitionReader;
  /** key name -> first path and count. */
  private readonly ignored = new Map<string, { path: string; count: number }>();
  /** message -> first path. */
  private readonly notes = new Map<string, string>();
  /** Identifiers already used, per kind, across modules. */
  private readonly seen = { properties: new Map<string, string>(), events: new Map<string, string>(), services: new Map<string, string>() };

  constructor(readonly file: string) {
    this.r = new DefinitionReader(file);
  }

  /** Records the keys of `o` outside `known` as ignored. */
  known(o: JsonObject, path: string, known: ReadonlySet<string>): void {
    for (const key of Object.keys(o)) {
      if (known.has(key)) continue;
      const seen = this.ignored.get(key);
      if (seen) seen.count++;
      else this.ignored.set(key, { path: keyPath(path, key), count: 1 });
    }
  }

  note(path: string, message: string): void {
    if (!this.notes.has(message)) this.notes.set(message, path);
  }

  warnings(): string[] {
    const lines: string[] = [];
    for (const [key, { path, count }] of this.ignored) {
      const more = count > 1 ? `, and ${count - 1} more ${JSON.stringify(key)} key${count > 2 ? 's' : ''}` : '';
      lines.push(`${this.file}: ${path}: ignored (not used by Wanwu)${more}`);
    }
    for (const [message, path] of this.notes) lines.push(path === '' ? `${this.file}: ${message}` : `${this.file}: ${path}: ${message}`);
    return lines;
  }

  /** OneNET writes null or "" for an unset optional value. */
  blank(v: unknown): boolean {
    return v === undefined || v === null || v === '';
  }

  optionalString(v: unknown, path: string): string | undefined {
    return this.blank(v) ? undefined : this.r.optionalString(v, path);
  }

  optionalBoolean(v: unknown, path: string): boolean | undefined {
    return v === undefined || v === null ? undefined : this.r.boolean(v, path);
  }

  /** Reads properties, events and services of one module into `model`; `prefix` is its functionBlockId or "". */
  module(model: ThingModel, o: JsonObject, path: string, prefix: string): void {
    const at = (key: string) => (path === '' ? key : keyPath(path, key));
    for (const p of this.list(o.properties, at('properties'), 'properties', prefix, (v, q) => this.property(v, q))) {
      if (prefix) p.functionBlockId = prefix;
      model.properties.push(p);
    }
    for (const e of this.list(o.events, at('events'), 'events', prefix, (v, q) => this.event(v, q))) {
      if (prefix) e.functionBlockId = prefix;
      model.events.push(e);
    }
    for (const s of this.list(o.services, at('services'), 'services', prefix, (v, q) => this.service(v, q))) {
      if (prefix) s.functionBlockId = prefix;
      model.services.push(s);
    }
  }

  /** A list of features with identifiers unique across the model (after the module prefix). */
  private list<T extends { identifier: string }>(
    value: unknown,
    path: string,
    kind: 'properties' | 'events' | 'services',
    prefix: string,
    parse: (v: unknown, path: string) => T,
  ): T[] {
    if (this.blank(value)) return [];
    const seen = this.seen[kind];
    return this.r.array(value, path).map((entry, i) => {
      const p = keyPath(path, i);
      const parsed = parse(entry, p);
      if (prefix) parsed.identifier = `${prefix}:${parsed.identifier}`;
      const first = seen.get(parsed.identifier);
      if (first !== undefined) this.r.fail(keyPath(p, 'identifier'), `duplicate identifier "${parsed.identifier}" (also ${first})`);
      seen.set(parsed.identifier, p);
      return parsed;
    });
  }

  /** Parameters (event output, service input/output): unique within their list. */
  private params(value: unknown, path: string): TslParam[] {
    if (this.blank(value)) return [];
    const seen = new Map<string, string>();
    return this.r.array(value, path).map((entry, i) => {
      const p = keyPath(path, i);
      const param = this.param(entry, p, PARAM_KEYS);
      const first = seen.get(param.identifier);
      if (first !== undefined) this.r.fail(keyPath(p, 'identifier'), `duplicate identifier "${param.identifier}" (also ${first})`);
      seen.set(param.identifier, p);
      return param;
    });
  }

  private param(value: unknown, path: string, known: ReadonlySet<string>): TslParam {
    const o = this.r.object(value, path);
    this.known(o, path, known);
    const param: TslParam = {
      identifier: this.r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
      name: this.r.string(o.name, keyPath(path, 'name')),
      dataType: this.dataType(o.dataType, keyPath(path, 'dataType'), TSL_TYPES),
    };
    const required = this.optionalBoolean(o.required, keyPath(path, 'required'));
    if (required !== undefined) param.required = required;
    const desc = this.optionalString(o.desc, keyPath(path, 'desc'));
    if (desc !== undefined) param.desc = desc;
    return param;
  }

  private property(value: unknown, path: string): TslProperty {
    const param = this.param(value, path, PROPERTY_KEYS);
    const accessMode = this.r.oneOf((value as JsonObject).accessMode, keyPath(path, 'accessMode'), ['r', 'rw'] as const);
    return { ...param, accessMode };
  }

  private event(value: unknown, path: string): TslEvent {
    const o = this.r.object(value, path);
    this.known(o, path, EVENT_KEYS);
    // OneNET's QueryThingModel and some of its exports name the event type `eventType`.
    const typeKey = o.type === undefined && o.eventType !== undefined ? 'eventType' : 'type';
    const event: TslEvent = {
      identifier: this.r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
      name: this.r.string(o.name, keyPath(path, 'name')),
      type: this.r.oneOf(o[typeKey], keyPath(path, typeKey), ['info', 'alert', 'error'] as const),
      outputData: this.params(o.outputData, keyPath(path, 'outputData')),
    };
    const method = this.optionalString(o.method, keyPath(path, 'method'));
    if (method !== undefined) event.method = method;
    const required = this.optionalBoolean(o.required, keyPath(path, 'required'));
    if (required !== undefined) event.required = required;
    const desc = this.optionalString(o.desc, keyPath(path, 'desc'));
    if (desc !== undefined) event.desc = desc;
    return event;
  }

  private service(value: unknown, path: string): TslService {
    const o = this.r.object(value, path);
    this.known(o, path, SERVICE_KEYS);
    const inputPath = keyPath(path, 'inputData');
    const service: TslService = {
      identifier: this.r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
      name: this.r.string(o.name, keyPath(path, 'name')),
      callType: this.blank(o.callType) ? 'async' : this.r.oneOf(o.callType, keyPath(path, 'callType'), ['sync', 'async'] as const),
      // Alibaba's `get` service lists the property identifiers it reads as plain strings.
      inputData: this.blank(o.inputData)
        ? []
        : this.r.array(o.inputData, inputPath).map((entry, i) =>
            typeof entry === 'string' ? this.r.string(entry, keyPath(inputPath, i), IDENTIFIER) : this.param(entry, keyPath(inputPath, i), PARAM_KEYS),
          ),
      outputData: this.params(o.outputData, keyPath(path, 'outputData')),
    };
    const method = this.optionalString(o.method, keyPath(path, 'method'));
    if (method !== undefined) service.method = method;
    const required = this.optionalBoolean(o.required, keyPath(path, 'required'));
    if (required !== undefined) service.required = required;
    const desc = this.optionalString(o.desc, keyPath(path, 'desc'));
    if (desc !== undefined) service.desc = desc;
    return service;
  }

  /** Reads {type, specs}; `allowed` narrows the types (struct members, array items). */
  dataType<T extends TslType>(value: unknown, path: string, allowed: readonly T[]): Extract<TslDataType, { type: T }> {
    const o = this.r.object(value, path);
    this.known(o, path, DATA_TYPE_KEYS);
    return this.typed(o.type, o.specs, path, allowed);
  }

  private typed<T extends TslType>(rawType: unknown, rawSpecs: unknown, path: string, allowed: readonly T[]): Extract<TslDataType, { type: T }> {
    const typePath = keyPath(path, 'type');
    const alias = typeof rawType === 'string' && Object.hasOwn(TSL_TYPE_ALIASES, rawType) ? TSL_TYPE_ALIASES[rawType] : undefined;
    const type = (alias ?? rawType) as TslType;
    if (!(allowed as readonly string[]).includes(type)) {
      if ((TSL_TYPES as readonly string[]).includes(type)) {
        this.r.fail(typePath, `${show(rawType)} is not allowed here (expected one of ${allowed.map((a) => JSON.stringify(a)).join(', ')})`);
      }
      this.r.oneOf(rawType, typePath, allowed);
    }
    const specsPath = keyPath(path, 'specs');
    const dt = this.specs(type, rawType as string, rawSpecs, specsPath);
    return dt as Extract<TslDataType, { type: T }>;
  }

  private specs(type: TslType, rawType: string, rawSpecs: unknown, specsPath: string): TslDataType {
    const s = (known: ReadonlySet<string>): JsonObject => {
      if (this.blank(rawSpecs)) return {};
      const o = this.r.object(rawSpecs, specsPath);
      this.known(o, specsPath, known);
      return o;
    };
    switch (type) {
      case 'int':
      case 'float':
      case 'double': {
        if (rawType === 'bitMap') {
          // OneNET's bit map: an unsigned integer of flags. Its specs (bit labels) are not checked.
          this.note(specsPath, 'bitMap is read as a non-negative integer; its specs are not checked');
          return { type: 'int', specs: { min: 0, max: Number.MAX_SAFE_INTEGER }, int64: true };
        }
        const o = s(NUMBER_SPEC_KEYS);
        const int64 = rawType === 'int64';
        const specs: NumberSpecs = {};
        for (const key of ['min', 'max'] as const) {
          if (this.blank(o[key])) continue;
          const p = keyPath(specsPath, key);
          // int64 bounds such as "-9223372036854775808" are clamped to what a JSON number holds exactly.
          specs[key] =
            type !== 'int'
              ? this.r.number(o[key], p, { strings: true })
              : int64
                ? clampSafe(this.r.integer(o[key], p, { strings: true }))
                : this.r.integer(o[key], p, { strings: true, min: INT32_MIN, max: INT32_MAX });
        }
        if (!this.blank(o.step)) specs.step = this.r.number(o.step, keyPath(specsPath, 'step'), { strings: true });
        if (specs.min !== undefined && specs.max !== undefined && specs.min > specs.max) {
          this.r.fail(keyPath(specsPath, 'min'), `min ${specs.min} is above max ${specs.max}`);
        }
        for (const key of ['unit', 'unitName'] as const) {
          const text = this.optionalString(o[key], keyPath(specsPath, key));
          if (text !== undefined) specs[key] = text;
        }
        return int64 ? { type: 'int', specs, int64: true } : { type, specs };
      }
      case 'bool':
      case 'enum': {
        const o = type === 'bool' && this.blank(rawSpecs) ? {} : this.r.object(rawSpecs, specsPath);
        const labels: Record<string, string> = {};
        for (const [key, label] of Object.entries(o)) {
          const p = keyPath(specsPath, key);
          let at = key;
          if (type === 'bool') {
            // OneNET labels its bools {"true": "开", "false": "关"}.
            if (key === 'true') at = '1';
            else if (key === 'false') at = '0';
            else if (key !== '0' && key !== '1') this.r.fail(p, 'bool specs may only label "0" and "1" (or "false" and "true")');
          } else if (!/^(0|-?[1-9]\d{0,9})$/.test(key) || !isInt32(Number(key))) {
            this.r.fail(p, 'enum values must be int32 keys ("0", "1", ...)');
          }
          labels[at] = this.optionalString(label, p) ?? '';
        }
        if (type === 'enum' && Object.keys(labels).length === 0) this.r.fail(specsPath, 'an enum needs at least one value');
        return { type, specs: labels };
      }
      case 'text': {
        const o = s(TEXT_SPEC_KEYS);
        if (this.blank(o.length)) return { type, specs: {} };
        return { type, specs: { length: this.r.integer(o.length, keyPath(specsPath, 'length'), { strings: true, min: 1 }) } };
      }
      case 'date':
        s(NO_KEYS);
        return { type, specs: {} };
      case 'struct': {
        const members = this.r.array(rawSpecs, specsPath);
        if (members.length === 0) this.r.fail(specsPath, 'a struct needs at least one member');
        const seen = new Map<string, string>();
        const specs = members.map((entry, i): TslStructMember => {
          const p = keyPath(specsPath, i);
          const o = this.r.object(entry, p);
          this.known(o, p, MEMBER_KEYS);
          const member: TslStructMember = {
            identifier: this.r.string(o.identifier, keyPath(p, 'identifier'), IDENTIFIER),
            name: this.r.string(o.name, keyPath(p, 'name')),
            dataType: this.dataType(o.dataType, keyPath(p, 'dataType'), SCALAR_TYPES),
          };
          const desc = this.optionalString(o.desc, keyPath(p, 'desc'));
          if (desc !== undefined) member.desc = desc;
          const first = seen.get(member.identifier);
          if (first !== undefined) this.r.fail(keyPath(p, 'identifier'), `duplicate identifier "${member.identifier}" (also ${first})`);
          seen.set(member.identifier, p);
          return member;
        });
        return { type, specs };
      }
      case 'array': {
        const o = this.r.object(rawSpecs, specsPath);
        // Alibaba: {size, item: {type, specs?}}. OneNET: {size, items: {...}} or {length, type, specs}.
        let item: TslArrayItem;
        let sizeKey: 'size' | 'length' = 'size';
        if (o.item !== undefined || o.items !== undefined) {
          const itemKey = o.item !== undefined ? 'item' : 'items';
          this.known(o, specsPath, keys('size', itemKey));
          item = this.dataType(o[itemKey], keyPath(specsPath, itemKey), ARRAY_ITEM_TYPES);
        } else if (o.type !== undefined) {
          sizeKey = o.size === undefined ? 'length' : 'size';
          this.known(o, specsPath, keys(sizeKey, 'type', 'specs'));
          item = this.typed(o.type, o.specs, specsPath, ARRAY_ITEM_TYPES);
        } else {
          this.r.fail(keyPath(specsPath, 'item'), 'missing (expected the item type: {"type": "int" | "float" | "double" | "text" | "struct", "specs"?})');
        }
        const size = this.r.integer(o[sizeKey], keyPath(specsPath, sizeKey), { strings: true, min: 1 });
        return { type, specs: { size, item } };
      }
    }
  }
}

function clampSafe(n: number): number {
  return Math.min(Number.MAX_SAFE_INTEGER, Math.max(Number.MIN_SAFE_INTEGER, n));
}

function isInt32(n: number): boolean {
  return Number.isInteger(n) && n >= INT32_MIN && n <= INT32_MAX;
}
