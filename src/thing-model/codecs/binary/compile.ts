// product.json `codec` object -> BinaryLayout. Two shapes:
//
//   one message     {"type": "binary", "kind"?, "event"?, "endian"?, "fields": [...], "trailing"?}
//   several         {"type": "binary", "endian"?, "fields": [header...], "switch": "msgType",
//                    "messages": [{"when": 1, "name"?, "kind"?, "event"?, "fields": [...]}, ...],
//                    "trailer"?: [...], "trailing"?}
//
// With `messages`, the raw value of the header field named by `switch` picks the message; its
// fields follow the header, then the trailer (typically a CRC) follows them. Everything is checked
// here, once, with the key path of the offending key (WANWU_ERR_PRODUCT): product.json is our own
// format, so unknown keys are refused.
//
// `codec.downlink` (commands to the device, direction "downlink") is written in the same language:
//   one message     {"endian"?, "method": "thing.service.{id}", "fields": [...]}
//   several         {"endian"?, "fields": [header...], "switch": "msgType",
//                    "messages": [{"when": 0x81, "name"?, "method": "thing.service.property.set", "fields": [...]}, ...],
//                    "trailer"?: [...]}
// A message names the Alink method it carries instead of kind/event; its ids are the rw properties
// (property set) or the service's inputData, and one unsigned integer field may carry the Alink
// message id ("msgId": true) so that the device can echo it.

import { DefinitionReader, keyPath } from '../../check.js';
import type { ThingModel } from '../../tsl.js';
import { clonePlace, compileField, newPlace, type Env, type LooseType, type Place, type Scope } from './fields.js';
import { hex, type BinaryLayout, type BinaryMessage, type CompiledField } from './types.js';

export interface LayoutContext {
  /** When given, field ids (and events) must exist in it and fit the field. */
  model?: ThingModel | null;
  /** Reports errors against a file (defaults to "binary layout"). */
  reader?: DefinitionReader;
  /** Key path of the layout in that file (default "codec"). */
  path?: string;
  /** For messages about Alink JSON posts to the product. */
  productKey?: string;
  /** "downlink": the layout is `codec.downlink` (messages name a `method`). Default "uplink". */
  direction?: 'uplink' | 'downlink';
}

// `downlink` belongs to the codec object but is compiled on its own (direction "downlink", see
// binaryCodecFromJson), so that callers holding the whole codec object can compile its uplink.
const LAYOUT_KEYS = ['type', 'endian', 'kind', 'event', 'fields', 'switch', 'messages', 'trailer', 'trailing', 'downlink'] as const;
const MESSAGE_KEYS = ['when', 'name', 'kind', 'event', 'fields'] as const;
// No `trailing`: the gateway only writes downlink frames.
const DOWN_LAYOUT_KEYS = ['endian', 'method', 'fields', 'switch', 'messages', 'trailer'] as const;
const DOWN_MESSAGE_KEYS = ['when', 'name', 'method', 'fields'] as const;
const PROPERTY_SET_METHOD = 'thing.service.property.set';
// As src/downlink/build.ts accepts it (module features are `block:id`).
const SERVICE_METHOD = /^thing\.service\.([A-Za-z0-9_:\-]{1,128})$/;

interface Target {
  kind: 'property' | 'event';
  event: string | undefined;
  scope: Scope;
  /** Downlink: the Alink method the message carries. */
  method?: string;
  /** Downlink: the service's required inputs, which the message must have a field for. */
  required?: readonly string[];
}

/** Checks and compiles a layout (the `codec` object of product.json). Throws WANWU_ERR_PRODUCT. */
export function compileBinaryLayout(json: unknown, ctx: LayoutContext = {}): BinaryLayout {
  const r: DefinitionReader = ctx.reader ?? new DefinitionReader('binary layout');
  const path = ctx.path ?? 'codec';
  const model = ctx.model ?? null;
  const downlink = ctx.direction === 'downlink';
  const o = r.object(json, path);
  r.onlyKeys(o, path, downlink ? DOWN_LAYOUT_KEYS : LAYOUT_KEYS);
  const littleEndian = o.endian !== undefined && r.oneOf(o.endian, keyPath(path, 'endian'), ['big', 'little'] as const) === 'little';
  const trailing = o.trailing === undefined ? 'error' : r.oneOf(o.trailing, keyPath(path, 'trailing'), ['error', 'ignore'] as const);
  const env = (scopes: Scope[], place: Place, seen: Map<string, string>): Env => ({
    r, root: path, littleEndian, scopes, seen, place, group: undefined, item: false, switchName: undefined, switchInfo: undefined, tsPath: undefined,
    downlink, msgIdPath: undefined,
  });
  const targetOf = downlink ? downlinkTarget : uplinkTarget;
  const fieldsPath = keyPath(path, 'fields');

  if (o.messages === undefined) {
    for (const key of ['switch', 'trailer'] as const) {
      if (o[key] !== undefined) r.fail(keyPath(path, key), 'only allowed with "messages"');
    }
    const target = targetOf(r, o, path, model);
    const list = r.array(o.fields, fieldsPath);
    if (list.length === 0) r.fail(fieldsPath, 'a layout needs at least one field');
    const e = env([target.scope], newPlace(), new Map());
    const fields = list.map((v, i) => compileField(e, v, keyPath(fieldsPath, i), i));
    const msg = message(undefined, undefined, target, fields, [], e, 'the layout');
    requireInputs(r, target, msg, fieldsPath);
    return freeze({
      kind: msg.kind, event: msg.event, size: msg.size, minSize: msg.minSize, maxSize: msg.maxSize, fields,
      switch: undefined, messages: [msg], byWhen: new Map(), choices: '', trailing,
    });
  }

  for (const key of downlink ? (['method'] as const) : (['kind', 'event'] as const)) {
    if (o[key] !== undefined) r.fail(keyPath(path, key), 'set it on each of "messages" instead');
  }
  const switchName = r.string(o.switch, keyPath(path, 'switch'));
  const messagesPath = keyPath(path, 'messages');
  const defs = r.array(o.messages, messagesPath).map((v, i) => {
    const p = keyPath(messagesPath, i);
    const m = r.object(v, p);
    r.onlyKeys(m, p, downlink ? DOWN_MESSAGE_KEYS : MESSAGE_KEYS);
    return { m, p, target: targetOf(r, m, p, model), name: r.optionalString(m.name, keyPath(p, 'name')) };
  });
  if (defs.length === 0) r.fail(messagesPath, 'expected at least one message');

  // Header ids are reported by every message, so they must fit every message's target.
  const head = env(defs.map((d) => d.target.scope), newPlace(), new Map());
  head.switchName = switchName;
  const fields = r.array(o.fields, fieldsPath).map((v, i) => compileField(head, v, keyPath(fieldsPath, i), i));
  const sw = head.switchInfo;
  if (!sw) r.fail(keyPath(path, 'switch'), `no field of "fields" is named "${switchName}" (the switch names a header field by its "name")`);
  const trailerPath = keyPath(path, 'trailer');
  const trailer = o.trailer === undefined ? [] : r.array(o.trailer, trailerPath);

  const byWhen = new Map<number, BinaryMessage>();
  const firstWhen = new Map<number, number>();
  const messages = defs.map(({ m, p, target, name }, i) => {
    const when = r.integer(m.when, keyPath(p, 'when'), { min: sw.min, max: sw.max });
    const first = firstWhen.get(when);
    if (first !== undefined) r.fail(keyPath(p, 'when'), `${when} is also the value of messages[${first}]`);
    firstWhen.set(when, i);
    // Each message continues from the header: its own copy of the header's place, ids and device time.
    const e = env([target.scope], clonePlace(head.place), new Map(head.seen));
    e.tsPath = head.tsPath;
    e.msgIdPath = head.msgIdPath;
    const own = r.array(m.fields, keyPath(p, 'fields')).map((v, j) => compileField(e, v, keyPath(keyPath(p, 'fields'), j), j));
    const tail = trailer.map((v, j) => compileField(e, v, keyPath(trailerPath, j), j));
    const msg = message(when, name, target, fields, [...own, ...tail], e, `message ${name ?? hex(when, sw.bytes)}`);
    requireInputs(r, target, msg, keyPath(p, 'fields'));
    byWhen.set(when, msg);
    return msg;
  });
  const sizes = new Set(messages.map((x) => x.size));
  const first = messages[0]!;
  return freeze({
    kind: first.kind, event: first.event, size: sizes.size === 1 ? first.size : undefined,
    minSize: Math.min(...messages.map((x) => x.minSize)), maxSize: Math.max(...messages.map((x) => x.maxSize)),
    fields, switch: { label: sw.label, type: sw.type, bytes: sw.bytes }, messages, byWhen,
    choices: messages.map((x) => `${hex(x.when!, sw.bytes)}${x.name === undefined ? '' : ` (${x.name})`}`).join(', '),
    trailing,
  });
}

/** kind/event of a layout or message, and where its field ids are looked up. */
function uplinkTarget(r: DefinitionReader, o: Record<string, unknown>, path: string, model: ThingModel | null): Target {
  const kind = o.kind === undefined ? 'property' : r.oneOf(o.kind, keyPath(path, 'kind'), ['property', 'event'] as const);
  if (kind === 'event') {
    const event = r.string(o.event, keyPath(path, 'event'));
    if (!model) return { kind, event, scope: { where: '', lookup: null } };
    const def = model.events.find((e) => e.identifier === event);
    if (!def) r.fail(keyPath(path, 'event'), `"${event}" is not an event in model.json`);
    return { kind, event, scope: { where: `an output of event ${event}`, lookup: new Map(def.outputData.map((p) => [p.identifier, p.dataType as LooseType])) } };
  }
  if (o.event !== undefined) r.fail(keyPath(path, 'event'), 'only allowed with "kind": "event"');
  return { kind, event: undefined, scope: { where: 'a property', lookup: model ? new Map(model.properties.map((p) => [p.identifier, p.dataType as LooseType])) : null } };
}

/**
 * The method of a downlink layout or message, and where its field ids are looked up: the rw
 * properties for a property set (only those can be set), the service's inputData for a service.
 */
function downlinkTarget(r: DefinitionReader, o: Record<string, unknown>, path: string, model: ThingModel | null): Target {
  const at = keyPath(path, 'method');
  const method = r.string(o.method, at);
  const target = (where: string, lookup: Map<string, LooseType> | null, required?: string[]): Target => {
    const t: Target = { kind: 'property', event: undefined, scope: { where, lookup }, method };
    if (required) t.required = required;
    return t;
  };
  if (method === PROPERTY_SET_METHOD) {
    const rw = model ? new Map(model.properties.filter((p) => p.accessMode === 'rw').map((p) => [p.identifier, p.dataType as LooseType])) : null;
    return target('an rw property', rw);
  }
  const m = SERVICE_METHOD.exec(method);
  if (!m || m[1] === 'property') r.fail(at, `${JSON.stringify(method)} is not "thing.service.property.set" or "thing.service.{serviceId}"`);
  const serviceId = m[1]!;
  if (!model) return target('', null);
  // As src/downlink/build.ts finds it: by the service's own method, else by identifier.
  const service = model.services.find((s) => s.method === method) ?? model.services.find((s) => s.identifier === serviceId && (s.method === undefined || s.method === method));
  if (!service) r.fail(at, `"${serviceId}" is not a service in model.json`);
  const props = new Map(model.properties.map((p) => [p.identifier, p]));
  const inputs = new Map<string, LooseType>();
  const required: string[] = [];
  for (const d of service.inputData) {
    // A string input names a property (Alibaba's `set` service lists them that way).
    const def = typeof d === 'string' ? props.get(d) : d;
    if (!def) continue;
    inputs.set(def.identifier, def.dataType as LooseType);
    if (typeof d !== 'string' && d.required === true) required.push(d.identifier);
  }
  return target(`an input of service ${serviceId}`, inputs, required);
}

/** A downlink message that cannot carry a required input would refuse every call of its service. */
function requireInputs(r: DefinitionReader, target: Target, msg: BinaryMessage, at: string): void {
  for (const id of target.required ?? []) {
    if (!msg.ids.has(id)) r.fail(at, `no field carries "${id}", a required input of ${target.method}`);
  }
}

function message(
  when: number | undefined,
  name: string | undefined,
  target: Target,
  header: readonly CompiledField[],
  fields: CompiledField[],
  e: Env,
  what: string,
): BinaryMessage {
  const all = [...header, ...fields];
  const size = e.place.pos === undefined ? undefined : e.place.claimedEnd;
  const msg: BinaryMessage = {
    when, name, kind: target.kind, fields,
    size, minSize: size ?? e.place.min, maxSize: size ?? e.place.max,
    ids: new Set(all.flatMap((f) => f.ids)), needs: new Set(all.flatMap((f) => f.needs)),
    hasTs: e.tsPath !== undefined, sizeNote: size === undefined ? '' : ` (${what} is ${size} bytes)`,
  };
  if (target.event !== undefined) (msg as { event?: string }).event = target.event;
  if (target.method !== undefined) (msg as { method?: string }).method = target.method;
  return Object.freeze(msg);
}

function freeze(layout: BinaryLayout & { event: string | undefined }): BinaryLayout {
  const { event, ...rest } = layout;
  return Object.freeze(event === undefined ? rest : { ...rest, event });
}
