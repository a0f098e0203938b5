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
}

const LAYOUT_KEYS = ['type', 'endian', 'kind', 'event', 'fields', 'switch', 'messages', 'trailer', 'trailing'] as const;
const MESSAGE_KEYS = ['when', 'name', 'kind', 'event', 'fields'] as const;

interface Target {
  kind: 'property' | 'event';
  event: string | undefined;
  scope: Scope;
}

/** Checks and compiles a layout (the `codec` object of product.json). Throws WANWU_ERR_PRODUCT. */
export function compileBinaryLayout(json: unknown, ctx: LayoutContext = {}): BinaryLayout {
  const r: DefinitionReader = ctx.reader ?? new DefinitionReader('binary layout');
  const path = ctx.path ?? 'codec';
  const model = ctx.model ?? null;
  const o = r.object(json, path);
  r.onlyKeys(o, path, LAYOUT_KEYS);
  const littleEndian = o.endian !== undefined && r.oneOf(o.endian, keyPath(path, 'endian'), ['big', 'little'] as const) === 'little';
  const trailing = o.trailing === undefined ? 'error' : r.oneOf(o.trailing, keyPath(path, 'trailing'), ['error', 'ignore'] as const);
  const env = (scopes: Scope[], place: Place, seen: Map<string, string>): Env => ({
    r, root: path, littleEndian, scopes, seen, place, group: undefined, item: false, switchName: undefined, switchInfo: undefined, tsPath: undefined,
  });
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
    return freeze({
      kind: msg.kind, event: msg.event, size: msg.size, minSize: msg.minSize, maxSize: msg.maxSize, fields,
      switch: undefined, messages: [msg], byWhen: new Map(), choices: '', trailing,
    });
  }

  for (const key of ['kind', 'event'] as const) {
    if (o[key] !== undefined) r.fail(keyPath(path, key), 'set it on each of "messages" instead');
  }
  const switchName = r.string(o.switch, keyPath(path, 'switch'));
  const messagesPath = keyPath(path, 'messages');
  const defs = r.array(o.messages, messagesPath).map((v, i) => {
    const p = keyPath(messagesPath, i);
    const m = r.object(v, p);
    r.onlyKeys(m, p, MESSAGE_KEYS);
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
    const own = r.array(m.fields, keyPath(p, 'fields')).map((v, j) => compileField(e, v, keyPath(keyPath(p, 'fields'), j), j));
    const tail = trailer.map((v, j) => compileField(e, v, keyPath(trailerPath, j), j));
    const msg = message(when, name, target, fields, [...own, ...tail], e, `message ${name ?? hex(when, sw.bytes)}`);
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
function targetOf(r: DefinitionReader, o: Record<string, unknown>, path: string, model: ThingModel | null): Target {
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
  return Object.freeze(msg);
}

function freeze(layout: BinaryLayout & { event: string | undefined }): BinaryLayout {
  const { event, ...rest } = layout;
  return Object.freeze(event === undefined ? rest : { ...rest, event });
}
