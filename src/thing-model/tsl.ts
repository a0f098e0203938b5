// The thing model (物模型) in Alibaba IoT's TSL format, as exported by the Alibaba and OneNET
// consoles: {schema, profile, properties, events, services}. An export must load unchanged, so
// keys we do not use (functionBlockId, std, desc, ...) are tolerated, spec numbers may be
// strings ("min": "0"), and struct/array types are accepted without deep validation for now.

import { DefinitionReader, keyPath, type JsonObject } from './check.js';

export const TSL_TYPES = ['int', 'float', 'double', 'bool', 'enum', 'text', 'date', 'struct', 'array'] as const;
export type TslType = (typeof TSL_TYPES)[number];

export interface NumberSpecs {
  min?: number;
  max?: number;
  /** Informative only: values off the step grid are accepted. */
  step?: number;
  unit?: string;
  unitName?: string;
}

export type TslDataType =
  | { type: 'int' | 'float' | 'double'; specs: NumberSpecs }
  /** Labels for 0 and 1, e.g. {"0": "关", "1": "开"}. */
  | { type: 'bool'; specs: Readonly<Record<string, string>> }
  /** Integer value -> label, e.g. {"0": "open", "1": "closed"}. */
  | { type: 'enum'; specs: Readonly<Record<string, string>> }
  /** Maximum length in characters. */
  | { type: 'text'; specs: { length?: number } }
  | { type: 'date'; specs: Record<string, never> }
  /** Not validated yet: values pass through. */
  | { type: 'struct' | 'array'; specs: unknown };

export interface TslParam {
  identifier: string;
  name: string;
  dataType: TslDataType;
  required?: boolean;
}

export interface TslProperty extends TslParam {
  accessMode: 'r' | 'rw';
}

export interface TslEvent {
  identifier: string;
  name: string;
  type: 'info' | 'alert' | 'error';
  outputData: TslParam[];
  method?: string;
}

/** Parsed but not used yet (downlink comes later); Alibaba's `get` service lists plain identifiers as inputData. */
export interface TslService {
  identifier: string;
  name: string;
  callType?: string;
  inputData: unknown[];
  outputData: unknown[];
}

export interface ThingModel {
  schema?: string;
  profile?: JsonObject;
  properties: TslProperty[];
  events: TslEvent[];
  services: TslService[];
}

// Alibaba: letters, digits and underscores. `__proto__` is refused because identifiers become
// object keys in records.
const IDENTIFIER = { re: /^(?!__proto__$)[A-Za-z0-9_]{1,128}$/, what: 'an identifier (letters, digits, _)' };

/** Validates a parsed model.json; `file` is the path used in error messages. Throws WANWU_ERR_PRODUCT. */
export function parseThingModel(json: unknown, file: string): ThingModel {
  const r = new DefinitionReader(file);
  const root = r.object(json, '');
  const model: ThingModel = {
    properties: list(r, root.properties, 'properties', (v, p) => parseProperty(r, v, p)),
    events: list(r, root.events, 'events', (v, p) => parseEvent(r, v, p)),
    services: list(r, root.services, 'services', (v, p) => parseService(r, v, p)),
  };
  const schema = r.optionalString(root.schema, 'schema');
  if (schema !== undefined) model.schema = schema;
  if (root.profile !== undefined) model.profile = r.object(root.profile, 'profile');
  return model;
}

/** An optional array of entries with unique `identifier`s. */
function list<T extends { identifier: string }>(
  r: DefinitionReader,
  value: unknown,
  path: string,
  parse: (v: unknown, path: string) => T,
): T[] {
  if (value === undefined) return [];
  const seen = new Map<string, number>();
  return r.array(value, path).map((entry, i) => {
    const p = keyPath(path, i);
    const parsed = parse(entry, p);
    const first = seen.get(parsed.identifier);
    if (first !== undefined) r.fail(keyPath(p, 'identifier'), `duplicate identifier "${parsed.identifier}" (also ${keyPath(path, first)})`);
    seen.set(parsed.identifier, i);
    return parsed;
  });
}

function parseParam(r: DefinitionReader, value: unknown, path: string): TslParam {
  const o = r.object(value, path);
  const param: TslParam = {
    identifier: r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
    name: r.string(o.name, keyPath(path, 'name')),
    dataType: parseDataType(r, o.dataType, keyPath(path, 'dataType')),
  };
  if (o.required !== undefined) param.required = r.boolean(o.required, keyPath(path, 'required'));
  return param;
}

function parseProperty(r: DefinitionReader, value: unknown, path: string): TslProperty {
  const param = parseParam(r, value, path);
  const accessMode = r.oneOf((value as JsonObject).accessMode, keyPath(path, 'accessMode'), ['r', 'rw'] as const);
  return { ...param, accessMode };
}

function parseEvent(r: DefinitionReader, value: unknown, path: string): TslEvent {
  const o = r.object(value, path);
  const event: TslEvent = {
    identifier: r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
    name: r.string(o.name, keyPath(path, 'name')),
    type: r.oneOf(o.type, keyPath(path, 'type'), ['info', 'alert', 'error'] as const),
    outputData: list(r, o.outputData, keyPath(path, 'outputData'), (v, p) => parseParam(r, v, p)),
  };
  const method = r.optionalString(o.method, keyPath(path, 'method'));
  if (method !== undefined) event.method = method;
  return event;
}

function parseService(r: DefinitionReader, value: unknown, path: string): TslService {
  const o = r.object(value, path);
  const service: TslService = {
    identifier: r.string(o.identifier, keyPath(path, 'identifier'), IDENTIFIER),
    name: r.string(o.name, keyPath(path, 'name')),
    inputData: o.inputData === undefined ? [] : r.array(o.inputData, keyPath(path, 'inputData')),
    outputData: o.outputData === undefined ? [] : r.array(o.outputData, keyPath(path, 'outputData')),
  };
  const callType = r.optionalString(o.callType, keyPath(path, 'callType'));
  if (callType !== undefined) service.callType = callType;
  return service;
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;

function parseDataType(r: DefinitionReader, value: unknown, path: string): TslDataType {
  const o = r.object(value, path);
  const type = r.oneOf(o.type, keyPath(path, 'type'), TSL_TYPES);
  const specsPath = keyPath(path, 'specs');
  switch (type) {
    case 'int':
    case 'float':
    case 'double': {
      const s = o.specs === undefined ? {} : r.object(o.specs, specsPath);
      const specs: NumberSpecs = {};
      for (const key of ['min', 'max', 'step'] as const) {
        const p = keyPath(specsPath, key);
        const n =
          type === 'int'
            ? s[key] === undefined
              ? undefined
              : r.integer(s[key], p, { strings: true, min: INT32_MIN, max: INT32_MAX })
            : r.optionalNumber(s[key], p, { strings: true });
        if (n !== undefined) specs[key] = n;
      }
      if (specs.min !== undefined && specs.max !== undefined && specs.min > specs.max) {
        r.fail(keyPath(specsPath, 'min'), `min ${specs.min} is above max ${specs.max}`);
      }
      for (const key of ['unit', 'unitName'] as const) {
        const text = r.optionalString(s[key], keyPath(specsPath, key));
        if (text !== undefined) specs[key] = text;
      }
      return { type, specs };
    }
    case 'bool':
    case 'enum': {
      const s = o.specs === undefined && type === 'bool' ? {} : r.object(o.specs, specsPath);
      const labels: Record<string, string> = {};
      for (const [key, label] of Object.entries(s)) {
        const p = keyPath(specsPath, key);
        if (type === 'bool' ? key !== '0' && key !== '1' : !/^(0|-?[1-9]\d{0,9})$/.test(key) || !isInt32(Number(key))) {
          r.fail(p, type === 'bool' ? 'bool specs may only label "0" and "1"' : 'enum values must be int32 keys ("0", "1", ...)');
        }
        labels[key] = r.optionalString(label, p) ?? '';
      }
      if (type === 'enum' && Object.keys(labels).length === 0) r.fail(specsPath, 'an enum needs at least one value');
      return { type, specs: labels };
    }
    case 'text': {
      const s = o.specs === undefined ? {} : r.object(o.specs, specsPath);
      if (s.length === undefined) return { type, specs: {} };
      return { type, specs: { length: r.integer(s.length, keyPath(specsPath, 'length'), { strings: true, min: 1 }) } };
    }
    case 'date':
      return { type, specs: {} };
    case 'struct':
    case 'array':
      return { type, specs: o.specs };
  }
}

function isInt32(n: number): boolean {
  return Number.isInteger(n) && n >= INT32_MIN && n <= INT32_MAX;
}
