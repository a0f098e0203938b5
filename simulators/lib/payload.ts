// The messages a simulated device sends (wanwu-sim): values generated from the product's thing
// model (model.json), encoded with the product's own codec, on the topic the product uses by
// default (as `wanwu encode` picks it: Alink JSON products post on thing/event/property/post and
// thing/event/{eventId}/post, every other codec sends thing/model/up_raw).
//
// How a product is simulated is worked out once, when the factory is made:
//   - A template per kind of message: for alink-json the property post (a random non-empty subset
//     of the properties) and each event; for a binary layout each message of the layout (exactly
//     its fields, values drawn on the field's own grid: raw range, scale, offset, bit width, BCD
//     date resolution, group count); for any other codec (protobuf, script, cbor, ...) the set of
//     properties and events the codec accepts, found by encoding a full item and dropping the
//     identifiers it names as not carried (a field the message lacks); the second member of a
//     protobuf oneof joins the first in a group of which each item carries one.
//   - Calibration: a few items per template are encoded, decoded and validated exactly as the
//     gateway does (decodeUplink). A template whose items come back unchanged is "exact": at run
//     time its items are reported as generated, without decoding. One whose values the codec
//     reshapes in a way the generator cannot predict (a script with its own rounding) is
//     "canonical": each message is decoded once and the decoded items are reported. A template
//     that cannot be encoded or is refused is dropped (events) or fails the factory (properties).
//   - Fault generators are checked the same way (see FAULTS below), so a fault is what it claims.
//
// Values follow the contract of test/helpers/tsl-arbitrary.ts (valid and already normalized:
// validateItem returns them unchanged), without fast-check, plus a few rules that make them
// survive every codec exactly: numbers sit on a decimal grid (the TSL step, or the binary field's
// scale), floats keep at most 6 significant digits (a float32 carries them exactly: protobuf
// `float`, CBOR single), structs are complete (proto3 sub-messages report every member), arrays
// are non-empty (protobuf cannot tell an empty repeated field from an absent one), and text is
// hex for byte-oriented codecs (a protobuf `bytes` field carries hex text).
//
// Everything random comes from a seeded PRNG (seededRandom), so one seed gives the same bytes.
//
// FAULTS (each chosen per message with its probability; the rest are valid messages):
//   invalid    A well-formed payload with one value the thing model refuses: a number one grid
//              step (or ten) beyond its max or min, an enum value outside its keys, 2 for a
//              bool, a text or array longer than allowed, and for Alink JSON also an identifier
//              the model does not define. Only values the codec can actually write are used
//              (a u8 carries 101% battery, a script that range-checks its input carries nothing),
//              each checked at creation to be refused with WANWU_ERR_INVALID or
//              WANWU_ERR_UNKNOWN_IDENTIFIER. A product whose codec can express no invalid value
//              sends a malformed message instead, and says so: fault 'malformed'. records 0.
//   malformed  Bytes the codec cannot decode: Alink JSON cut short (broken JSON), a binary frame
//              cut short or with its checksum broken, any other payload missing its last byte
//              (protobuf then reads past the end). Refused with WANWU_ERR_MALFORMED. records 0.
//   duplicate  The exact bytes of this device's previous message sent again as a new message
//              (a retransmission after a lost ack). The gateway accepts it again, so records
//              and items are those of that message (0 if it was a fault). A device's first
//              message cannot be a duplicate and is generated normally.

import path from 'node:path';
import type { ErrorCode } from '../../src/errors.js';
import { readProductSource, type Product } from '../../src/registry/index.js';
import {
  compileBinaryLayout,
  decodeUplink,
  FIELD_TYPES,
  type DecodedItem,
  type EncodeInput,
  type ThingModel,
  type TslDataType,
  type TslNumberType,
} from '../../src/thing-model/index.js';
import { decimalsOf } from '../../src/thing-model/codecs/binary/types.js';
import type { UplinkRoute } from '../../src/types.js';

export type SimFault = 'none' | 'invalid' | 'malformed' | 'duplicate';

export interface SimMessage {
  /** Full Alink topic: `/sys/{productKey}/{deviceName}/thing/...`. */
  topic: string;
  route: UplinkRoute;
  /** The bytes to send. Shared with a later duplicate: do not modify. */
  payload: Buffer;
  /** Records the gateway commits when it accepts this message (0 for a fault it refuses). */
  records: number;
  fault: SimFault;
  /** The Alink `id` inside the payload, when the format has one (Alink JSON; not when malformed). */
  msgId?: string;
  /** What was encoded (the gateway's records for a valid message); empty for malformed. */
  items: DecodedItem[];
}

export interface MessageFactory {
  next(deviceName: string): SimMessage;
  /** What the factory found it can send for this product (for the CLI to show). */
  readonly info: MessageFactoryInfo;
}

export interface MessageFactoryInfo {
  productKey: string;
  codec: string;
  /** One line per kind of message: `property post`, `event alarm (up_raw)`, ... */
  messages: string[];
  /** How invalid faults are sent: as model-breaking values, or (codec cannot express any) as malformed. */
  invalid: 'values' | 'malformed';
  /**
   * True when every kind of message comes back from the codec exactly as generated; false when
   * some are decoded once each to report what the gateway records (the codec reshapes values).
   */
  exact: boolean;
}

export interface MessageFactoryOptions {
  /** PRNG seed (its integer part modulo 2^32); mixed with the productKey. Default 1. */
  seed?: number;
  /** Probability (0-1) that a message carries a value the model refuses. Default 0. */
  invalidRate?: number;
  /** Probability (0-1) that a message cannot be decoded. Default 0. */
  malformedRate?: number;
  /** Probability (0-1) that a message repeats the device's previous bytes. Default 0. */
  duplicateRate?: number;
  /**
   * Sometimes (1 message in 10) send an event the model defines, where the codec can carry it.
   * Default true. A product whose codec carries only events sends them regardless.
   */
  events?: boolean;
  /**
   * Device time in ms since the epoch, for messages that carry one. Default: a simulated clock
   * from 2024-01-01T00:00:00Z advancing 1 s per message, so a seed always gives the same bytes.
   */
  clock?: () => number;
}

// --- PRNG ----------------------------------------------------------------------------------------

/** mulberry32: a tiny, fast 32-bit PRNG (uniform in [0, 1)); good enough for test data, not for secrets. */
export function seededRandom(seed: number): () => number {
  let a = Math.trunc(seed) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

type Rng = () => number;

/** An integer in [lo, hi] (both finite); two draws when the span exceeds 32 bits. */
function randInt(rng: Rng, lo: number, hi: number): number {
  const span = hi - lo + 1;
  const u = span > 4294967296 ? rng() + rng() / 4294967296 : rng();
  return Math.min(hi, lo + Math.floor(u * span));
}

function pick<T>(rng: Rng, list: readonly T[]): T {
  return list[Math.floor(rng() * list.length)]!;
}

/** FNV-1a, to mix the productKey into the seed (one seed, different but fixed data per product). */
function hash32(text: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) h = Math.imul(h ^ text.charCodeAt(i), 0x01000193);
  return h >>> 0;
}

// --- values ------------------------------------------------------------------------------------

type Gen = (rng: Rng) => unknown;

/** How to make one identifier's value, and values that break the model (candidates for invalid faults). */
interface ValueSpec {
  gen: Gen;
  bad: unknown[];
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;
/** Device dates: 2017-07 .. 2033-05, as the test arbitraries use. */
const DATE_LO = 1_500_000_000_000;
const DATE_HI = 2_000_000_000_000;
/** Span for numbers the model leaves unbounded. */
const DEFAULT_SPAN = 1000;
/** Longest generated text (characters) and array (items): realistic sizes, fast runs. */
const TEXT_CAP = 16;
const HEX_CAP = 32;
const ARRAY_CAP = 8;
/** Six significant digits: the most a float32 gives back as the same decimal. */
const F32_DIGITS = 999_999;


/**
 * Values offset + scale × k for integer k in [kLo, kHi], rounded to the decimals of scale and
 * offset exactly as the binary codec reports them (binary/types.ts makeToValue), which is also
 * the nearest double to the decimal (what JSON, scripts and float32 give back).
 */
interface Grid {
  value(k: number): number;
  kLo: number;
  kHi: number;
  scale: number;
}

function makeGrid(lo: number, hi: number, scale: number, offset: number, rawLo = -Infinity, rawHi = Infinity): Grid | null {
  const value = toValueFn(scale, offset);
  const a = (lo - offset) / scale;
  const b = (hi - offset) / scale;
  let kLo = Math.max(rawLo, Math.ceil(Math.min(a, b)));
  let kHi = Math.min(rawHi, Math.floor(Math.max(a, b)));
  if (!Number.isFinite(kLo) || !Number.isFinite(kHi)) return null;
  // Division rounding can put the first or last step just outside [lo, hi]; the values between are monotonic.
  const inside = (k: number) => {
    const v = value(k);
    return v >= lo && v <= hi;
  };
  while (kLo <= kHi && !inside(kLo)) kLo++;
  while (kHi >= kLo && !inside(kHi)) kHi--;
  return kLo <= kHi ? { value, kLo, kHi, scale } : null;
}

/** raw -> raw × scale + offset, rounded to the decimals of scale and offset as binary/types.ts makeToValue does. */
function toValueFn(scale: number, offset: number): (k: number) => number {
  const decimals = Math.max(decimalsOf(scale), decimalsOf(offset));
  if (decimals === 0 || decimals > 12) return (k) => k * scale + offset + 0;
  const p = 10 ** decimals;
  return (k) => Math.round((k * scale + offset) * p) / p + 0; // + 0 turns -0 into 0
}

/** The model's bounds for a number type, with a default span where it gives none. */
function numberBounds(dt: TslNumberType | { type: 'date' }): { lo: number; hi: number } {
  if (dt.type === 'date') return { lo: DATE_LO, hi: DATE_HI };
  const { min, max } = dt.specs;
  let lo = min ?? (max === undefined ? 0 : max - DEFAULT_SPAN);
  let hi = max ?? lo + DEFAULT_SPAN;
  if (dt.type === 'int') {
    const wide = dt.int64 === true;
    lo = Math.max(Math.ceil(lo), wide ? Number.MIN_SAFE_INTEGER : INT32_MIN);
    hi = Math.min(Math.floor(hi), wide ? Number.MAX_SAFE_INTEGER : INT32_MAX);
  }
  return { lo, hi };
}

/** Values beyond the model's bounds, one and ten grid steps out (the codec decides which it can write). */
function outOfRange(dt: TslNumberType | { type: 'date' }, grid: Grid): number[] {
  if (dt.type === 'date') return [-1000];
  const step = Math.abs(grid.scale);
  const round = (x: number) => Number(x.toFixed(Math.min(12, decimalsOf(step)))) + 0;
  const bad: number[] = [];
  if (dt.specs.max !== undefined) bad.push(round(dt.specs.max + step), round(dt.specs.max + 10 * step));
  if (dt.specs.min !== undefined) bad.push(round(dt.specs.min - step));
  return bad;
}

function gridSpec(dt: TslNumberType | { type: 'date' }, grid: Grid | null): ValueSpec | null {
  if (!grid) return null;
  return { gen: (rng) => grid.value(randInt(rng, grid.kLo, grid.kHi)), bad: outOfRange(dt, grid) };
}

/**
 * A TSL number on the model's decimal grid: ints by 1, floats and doubles by their step (or 0.01
 * / 0.0001 without one). Floats keep at most six significant digits so that a float32 carries them.
 */
function numberSpec(dt: TslNumberType | { type: 'date' }): ValueSpec | null {
  const { lo, hi } = numberBounds(dt);
  if (dt.type === 'int' || dt.type === 'date') return gridSpec(dt, makeGrid(lo, hi, 1, 0));
  const step = dt.specs.step;
  let scale = step !== undefined && step > 0 && decimalsOf(step) <= 12 ? step : dt.type === 'float' ? 0.01 : 0.0001;
  if (dt.type === 'double') return gridSpec(dt, makeGrid(lo, hi, scale, 0));
  // float: |value| × 10^decimals <= 999999; where the range lies beyond that, coarsen the grid.
  for (let tries = 0; tries < 40; tries++) {
    const cap = F32_DIGITS / 10 ** decimalsOf(scale);
    const grid = makeGrid(Math.max(lo, -cap * Math.max(1, scale)), Math.min(hi, cap * Math.max(1, scale)), scale, 0);
    if (grid) return gridSpec(dt, grid);
    scale *= 10;
  }
  return gridSpec(dt, makeGrid(lo, hi, scale, 0));
}

function choiceSpec(values: number[], bad: number[]): ValueSpec | null {
  if (values.length === 0) return null;
  return { gen: (rng) => pick(rng, values), bad };
}

function enumKeys(dt: { specs: Readonly<Record<string, string>> }): number[] {
  return Object.keys(dt.specs)
    .map(Number)
    .sort((a, b) => a - b);
}

function enumBad(keys: number[]): number[] {
  return keys.length === 0 ? [] : [keys[keys.length - 1]! + 1, keys[0]! - 1];
}

/** How text values look: Alink JSON carries any text; byte-oriented codecs get hex (a protobuf bytes field takes nothing else). */
type TextStyle = 'mixed' | 'hex';

interface TextRule {
  kind: 'mixed' | 'hex' | 'ascii' | 'digits';
  /** Most characters (hex: even). */
  max: number;
  /** Fewest characters. */
  min: number;
}

const ALNUM = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789';
const HEX_DIGITS = '0123456789abcdef';

/** One code point: mostly printable ASCII, some CJK, rarely astral (emoji); never a lone surrogate. */
function mixedChar(rng: Rng): string {
  const r = rng();
  if (r < 0.7) return String.fromCharCode(0x20 + Math.floor(rng() * 95));
  if (r < 0.95) return String.fromCharCode(0x4e00 + Math.floor(rng() * 0x5200));
  return String.fromCodePoint(0x1f300 + Math.floor(rng() * 0x300));
}

function textGen(rule: TextRule): Gen {
  const { kind, min, max } = rule;
  switch (kind) {
    case 'digits':
      return (rng) => {
        let s = '';
        for (let i = 0; i < max; i++) s += String.fromCharCode(0x30 + Math.floor(rng() * 10));
        return s;
      };
    case 'hex':
      return (rng) => {
        const bytes = randInt(rng, min / 2, max / 2);
        let s = '';
        for (let i = 0; i < bytes * 2; i++) s += HEX_DIGITS[Math.floor(rng() * 16)];
        return s;
      };
    case 'ascii':
      return (rng) => {
        const n = randInt(rng, min, max);
        let s = '';
        for (let i = 0; i < n; i++) s += ALNUM[Math.floor(rng() * ALNUM.length)];
        return s;
      };
    case 'mixed':
      return (rng) => {
        const n = randInt(rng, min, max);
        let s = '';
        for (let i = 0; i < n; i++) s += mixedChar(rng);
        return s;
      };
  }
}

/** Text longer than the model allows: digits, so it is also valid hex (even length) and ASCII. */
function textBad(length: number | undefined): string[] {
  if (length === undefined) return [];
  const n = length + 1;
  return ['0'.repeat(n % 2 === 0 ? n : n + 1)];
}

function textSpec(length: number | undefined, style: TextStyle): ValueSpec {
  const rule: TextRule =
    style === 'hex'
      ? { kind: 'hex', min: 0, max: Math.min(length ?? HEX_CAP, HEX_CAP) & ~1 }
      : { kind: 'mixed', min: 0, max: Math.min(length ?? TEXT_CAP, TEXT_CAP) };
  rule.min = Math.min(2, rule.max); // non-empty where the model allows any text
  return { gen: textGen(rule), bad: textBad(length) };
}

/** A complete struct (every member), from member specs. */
function structSpec(members: Array<{ id: string; spec: ValueSpec }>): ValueSpec {
  return {
    gen: (rng) => {
      const out: Record<string, unknown> = {};
      for (const m of members) out[m.id] = m.spec.gen(rng);
      return out;
    },
    bad: [],
  };
}

/** A non-empty array of at most `most` items. `oversize`: the model's size, for an invalid candidate. */
function arraySpec(item: ValueSpec, least: number, most: number, oversize: number | undefined): ValueSpec {
  const bad: unknown[] = [];
  if (oversize !== undefined && oversize < 1000) {
    // Made once: a fixed PRNG is enough for a value that is meant to be refused.
    const rng = seededRandom(oversize);
    bad.push(Array.from({ length: oversize + 1 }, () => item.gen(rng)));
  }
  return {
    gen: (rng) => {
      const n = randInt(rng, least, most);
      const out = new Array<unknown>(n);
      for (let i = 0; i < n; i++) out[i] = item.gen(rng);
      return out;
    },
    bad,
  };
}

/** A value of a TSL data type, from the model alone. Null when the model leaves no valid value. */
function valueSpec(dt: TslDataType, style: TextStyle): ValueSpec | null {
  switch (dt.type) {
    case 'int':
    case 'float':
    case 'double':
    case 'date':
      return numberSpec(dt);
    case 'bool':
      return choiceSpec([0, 1], [2]);
    case 'enum': {
      const keys = enumKeys(dt);
      return choiceSpec(keys, enumBad(keys));
    }
    case 'text':
      return textSpec(dt.specs.length, style);
    case 'struct': {
      const members: Array<{ id: string; spec: ValueSpec }> = [];
      for (const m of dt.specs) {
        const spec = valueSpec(m.dataType, style);
        if (!spec) return null;
        members.push({ id: m.identifier, spec });
      }
      return structSpec(members);
    }
    case 'array': {
      const item = valueSpec(dt.specs.item, style);
      if (!item) return null;
      return arraySpec(item, 1, Math.min(dt.specs.size, ARRAY_CAP), dt.specs.size);
    }
  }
}

// --- templates -------------------------------------------------------------------------------

interface FieldSpec {
  id: string;
  spec: ValueSpec;
}

type Corrupt = (payload: Buffer, rng: Rng) => Buffer;

interface Template {
  /** For info and errors: `property post`, `properties (message report)`, `event alarm (up_raw)`. */
  label: string;
  kind: 'property' | 'event';
  event?: string;
  route: UplinkRoute;
  /** Topic after /sys/{pk}/{dn}/. */
  suffix: string;
  fields: FieldSpec[];
  /** A random non-empty subset of the fields (else all of them). */
  subset: boolean;
  /** Identifiers of which an item carries one (a protobuf oneof), and each member's group. */
  groups: string[][];
  groupOf: Map<string, number>;
  /** Whether the subset mode may be tried (calibration decides). */
  subsetAllowed: boolean;
  /** Device time: none, sometimes (alink), or always (a layout field needs it), snapped to what the field holds. */
  ts: 'never' | 'maybe' | 'always';
  snapTs: (t: number) => number;
  /** A field that reports both an identifier and the device time. */
  tsId?: string;
  /** The payload carries an Alink message id. */
  alink: boolean;
  /** Items come back as generated (else decode each message to report what the gateway sees). */
  exact: boolean;
  /** Verified invalid values: identifier and value. */
  invalid: Array<{ id: string; value: unknown }>;
  /** Verified ways to break the payload. */
  malformed: Corrupt[];
  /** Candidate ways to break it, verified at calibration. */
  corruptions: Corrupt[];
}

/** Any proper prefix of a JSON object is broken JSON (the top-level brace closes at the end). */
const cutJson: Corrupt = (p, rng) => p.subarray(0, Math.floor(rng() * p.length));
/** A binary frame cut short: the layout or its counts ask for more bytes than are left. */
const cutFrame: Corrupt = (p, rng) => (p.length < 2 ? p.subarray(0, 0) : p.subarray(0, randInt(rng, 1, p.length - 1)));
/** The last byte lost: every protobuf field has a payload byte, so the decoder reads past the end. */
const dropLast: Corrupt = (p) => p.subarray(0, Math.max(0, p.length - 1));
/** A trailing checksum that does not match (every bit of its last byte flipped). */
const badCheck: Corrupt = (p) => {
  const c = Buffer.from(p);
  if (c.length > 0) c[c.length - 1] = c[c.length - 1]! ^ 0xff;
  return c;
};
/** Last resort: nothing at all. */
const empty: Corrupt = (p) => p.subarray(0, 0);

const EVENT_SHARE = 0.1;
const IDENT = /^[A-Za-z0-9_.:@-]{1,64}$/;
const UNKNOWN_ID = 'wanwuSimUnknown';

function baseTemplate(t: Pick<Template, 'label' | 'kind' | 'event' | 'route' | 'suffix' | 'fields' | 'subsetAllowed' | 'ts' | 'alink' | 'corruptions'>): Template {
  return { ...t, subset: false, groups: [], groupOf: new Map(), snapTs: (x) => x, exact: true, invalid: [], malformed: [] };
}

function setGroups(t: Template, groups: string[][]): void {
  t.groups = groups;
  groups.forEach((g, i) => g.forEach((id) => t.groupOf.set(id, i)));
}

/** Sets one value, leaving out the other members of its oneof group. */
function setValue(t: Template, data: Record<string, unknown>, id: string, value: unknown): void {
  const g = t.groupOf.get(id);
  if (g !== undefined) for (const other of t.groups[g]!) delete data[other];
  data[id] = value;
}

function eventSuffix(id: string): string {
  return `thing/event/${id}/post`;
}

/** Events a device sends: not Alibaba's built-in `post` (that is the property post itself). */
function simulatedEvents(model: ThingModel): ThingModel['events'] {
  return model.events.filter((e) => e.identifier !== 'post');
}

function specsOf(params: ReadonlyArray<{ identifier: string; dataType: TslDataType }>, style: TextStyle): FieldSpec[] {
  const out: FieldSpec[] = [];
  for (const p of params) {
    const spec = valueSpec(p.dataType, style);
    if (spec) out.push({ id: p.identifier, spec });
  }
  return out;
}

/** Alink JSON: the property post (subsets) and one template per event, on its own topic. */
function alinkTemplates(model: ThingModel): Template[] {
  const out: Template[] = [];
  if (model.properties.length > 0) {
    out.push(
      baseTemplate({
        label: 'property post', kind: 'property', route: { type: 'property-post' }, suffix: 'thing/event/property/post',
        fields: specsOf(model.properties, 'mixed'), subsetAllowed: true, ts: 'maybe', alink: true, corruptions: [cutJson],
      }),
    );
  }
  for (const e of simulatedEvents(model)) {
    if (!IDENT.test(e.identifier)) continue; // cannot be named in a topic
    out.push(
      baseTemplate({
        label: `event ${e.identifier}`, kind: 'event', event: e.identifier, route: { type: 'event-post', eventId: e.identifier }, suffix: eventSuffix(e.identifier),
        fields: specsOf(e.outputData, 'mixed'), subsetAllowed: false, ts: 'maybe', alink: true, corruptions: [cutJson],
      }),
    );
  }
  return out;
}

// --- binary layouts ----------------------------------------------------------------------------

type JsonObject = Record<string, unknown>;

function isObject(v: unknown): v is JsonObject {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function list(v: unknown): unknown[] {
  return Array.isArray(v) ? v : [];
}

function num(v: unknown, fallback: number): number {
  return typeof v === 'number' ? v : fallback;
}

const CHECKSUM_KINDS = new Set(['crc16-modbus', 'sum8', 'xor8']);
/** Most items or bytes a length/count prefix allows (the codec caps a u32 at 0xffff too). */
const PREFIX_MAX: Readonly<Record<string, number>> = { u8: 0xff, u16: 0xffff, u32: 0xffff };

/** What one walk over a message's fields found: the identifiers' specs and the device-time field. */
interface Walk {
  fields: FieldSpec[];
  snapTs?: (t: number) => number;
  tsId?: string;
}

/**
 * The product's binary layout (product.json `codec`), read again because the codec keeps it in a
 * closure: each message becomes a template whose values sit exactly on its fields' grids.
 * Null when product.json cannot be read (a product built in memory): the generic probe applies.
 */
function binaryTemplates(product: Product, model: ThingModel): Template[] | null {
  let codec: unknown;
  try {
    codec = (readProductSource(path.dirname(product.dir), path.basename(product.dir)).product as JsonObject).codec;
  } catch {
    return null;
  }
  if (!isObject(codec) || codec.type !== 'binary') return null;
  const layout = compileBinaryLayout(codec, { model });
  const multi = codec.messages !== undefined;
  const messages = multi ? list(codec.messages).filter(isObject) : [codec];
  const last = multi ? list(codec.trailer) : list(codec.fields);
  const checked = last.length > 0 && isObject(last[last.length - 1]) && CHECKSUM_KINDS.has(String((last[last.length - 1] as JsonObject).type));
  return layout.messages.map((m, i) => {
    const fieldsJson = multi ? [...list(codec.fields), ...list(messages[i]?.fields), ...list(codec.trailer)] : list(codec.fields);
    const scope = m.kind === 'event' ? model.events.find((e) => e.identifier === m.event)?.outputData ?? [] : model.properties;
    const lookup = new Map<string, TslDataType>(scope.map((p) => [p.identifier, p.dataType]));
    const walk: Walk = { fields: [] };
    walkFields(fieldsJson, lookup, walk);
        const t = baseTemplate({
      label: `${m.kind === 'event' ? `event ${m.event}` : 'properties'} (${m.when === undefined ? 'frame' : `message ${m.name ?? `0x${m.when.toString(16)}`}`})`,
      kind: m.kind, event: m.event, route: { type: 'up-raw' }, suffix: 'thing/model/up_raw',
      fields: walk.fields, subsetAllowed: false, ts: m.hasTs && walk.tsId === undefined ? 'always' : 'never', alink: false,
      corruptions: checked ? [cutFrame, badCheck] : [cutFrame],
    });
    if (walk.snapTs) t.snapTs = walk.snapTs;
    if (walk.tsId !== undefined) t.tsId = walk.tsId;
    return t;
  });
}

function walkFields(fields: unknown[], lookup: ReadonlyMap<string, TslDataType>, walk: Walk): void {
  for (const f of fields) {
    if (!isObject(f)) continue;
    const type = String(f.type);
    const id = typeof f.id === 'string' ? f.id : undefined;
    const dt = id === undefined ? undefined : lookup.get(id);
    if (type in FIELD_TYPES || type === 'bcd') {
      if (f.ts === true) {
        if (id === undefined) walk.snapTs = tsSnapper(f, type);
        else walk.tsId = id;
      }
      if (id !== undefined && dt) addSpec(walk, id, scalarFieldSpec(f, type, dt));
    } else if (type === 'bits') {
      for (const s of list(f.bits)) {
        if (!isObject(s) || typeof s.id !== 'string') continue;
        const sdt = lookup.get(s.id);
        if (sdt) addSpec(walk, s.id, bitsSliceSpec(s, sdt));
      }
    } else if ((type === 'string' || type === 'bytes') && id !== undefined && dt) {
      addSpec(walk, id, textFieldSpec(f, type, dt));
    } else if (type === 'group' && id !== undefined && dt?.type === 'array') {
      addSpec(walk, id, groupSpec(f, dt));
    }
    // Checksums, reserved bytes, consts without an id and the switch field carry no data.
  }
}

function addSpec(walk: Walk, id: string, spec: ValueSpec | null): void {
  if (spec) walk.fields.push({ id, spec });
}

/** Value on the grid a numeric field (or BCD number) reports: raw × scale + offset, raw within the type. */
function scalarFieldSpec(f: JsonObject, type: string, dt: TslDataType): ValueSpec | null {
  if (type === 'bcd') {
    const as = f.as ?? 'number';
    if (as === 'date') return bcdDateSpec(f, dt);
    const digits = num(f.size, 1) * 2;
    if (as === 'text') return dt.type === 'text' ? { gen: textGen({ kind: 'digits', min: digits, max: digits }), bad: [] } : null;
    return rawNumberSpec(f, dt, 0, 10 ** digits - 1, true);
  }
  const ft = FIELD_TYPES[type as keyof typeof FIELD_TYPES];
  return rawNumberSpec(f, dt, ft.min, ft.max, ft.integer, type === 'f32');
}

function rawNumberSpec(f: JsonObject, dt: TslDataType, rawLo: number, rawHi: number, integer: boolean, f32 = false): ValueSpec | null {
  const scale = num(f.scale, 1);
  const offset = num(f.offset, 0);
  const fixed = typeof f.const === 'number' ? toValueFn(scale, offset)(f.const) : undefined;
  if (fixed !== undefined) return { gen: () => fixed, bad: [] };
  if (!integer) {
    // A float field: with scale 1 the value is the float itself; otherwise calibration finds out.
    const spec = valueSpec(dt, 'hex');
    if (!spec || !f32 || dt.type !== 'double') return spec;
    return numberSpec({ ...dt, type: 'float' });
  }
  switch (dt.type) {
    case 'enum':
    case 'bool': {
      const keys = dt.type === 'bool' ? [0, 1] : enumKeys(dt);
      const onGrid = keys.filter((v) => {
        const raw = (v - offset) / scale;
        return Number.isInteger(raw) && raw >= rawLo && raw <= rawHi;
      });
      return choiceSpec(onGrid, dt.type === 'bool' ? [2] : enumBad(keys));
    }
    case 'int':
    case 'float':
    case 'double':
    case 'date': {
      const { lo, hi } = numberBounds(dt);
      return gridSpec(dt, makeGrid(lo, hi, scale, offset, rawLo, rawHi));
    }
    default:
      return null;
  }
}

/** A slice of a bits field: an unsigned integer of its width. */
function bitsSliceSpec(s: JsonObject, dt: TslDataType): ValueSpec | null {
  const [lo, hi] = typeof s.bit === 'number' ? [s.bit, s.bit] : (list(s.bits) as number[]);
  const width = num(hi, 0) - num(lo, 0) + 1;
  const slice = { scale: 1, offset: 0, const: s.const };
  return rawNumberSpec(slice, dt, 0, 2 ** width - 1, true);
}

const DATE_UNITS: ReadonlyArray<[string, number]> = [['ss', 1000], ['mm', 60_000], ['hh', 3_600_000]];

/** BCD date-time: whole units of the format's smallest field, in local time at utcOffset, years it can write. */
function bcdDateParts(f: JsonObject): { unit: number; shift: number; lo: number; hi: number } {
  const format = String(f.format ?? '');
  const unit = DATE_UNITS.find(([token]) => format.includes(token))?.[1] ?? 86_400_000;
  const m = /^([+-])(\d\d):(\d\d)$/.exec(typeof f.utcOffset === 'string' ? f.utcOffset : '');
  const shift = m ? (m[1] === '-' ? -1 : 1) * (Number(m[2]) * 60 + Number(m[3])) * 60_000 : 0;
  const full = format.includes('YYYY');
  const lo = Math.max(DATE_LO, Date.UTC(full ? 1970 : 2000, 0, 2) - shift);
  const hi = Math.min(DATE_HI, Date.UTC(full ? 9999 : 2099, 11, 30) - shift);
  return { unit, shift, lo, hi };
}

function bcdDateSpec(f: JsonObject, dt: TslDataType): ValueSpec | null {
  if (dt.type !== 'date') return null;
  const { unit, shift, lo, hi } = bcdDateParts(f);
  // value = unit × k - shift: on the format's grid in local time.
  return gridSpec(dt, makeGrid(lo, hi, unit, -shift));
}

/** How the device time is written by a ts field without an id: snapped down to what it holds. */
function tsSnapper(f: JsonObject, type: string): (t: number) => number {
  if (type === 'bcd' && f.as === 'date') {
    const { unit, shift } = bcdDateParts(f);
    return (t) => Math.floor((t + shift) / unit) * unit - shift;
  }
  const scale = num(f.scale, 1);
  const offset = num(f.offset, 0);
  const value = toValueFn(scale, offset);
  return (t) => value(Math.floor((t - offset) / scale));
}

function textFieldSpec(f: JsonObject, type: 'string' | 'bytes', dt: TslDataType): ValueSpec | null {
  if (dt.type !== 'text') return null;
  const length = dt.specs.length;
  const fixed = typeof f.size === 'number' ? f.size : undefined;
  const maxBytes = fixed ?? PREFIX_MAX[String(f.prefix)] ?? 0xff;
  if (typeof f.const === 'string') {
    const c = f.const.toLowerCase();
    return { gen: () => c, bad: [] };
  }
  if (type === 'bytes') {
    // Hex text, two characters a byte: a fixed field takes exactly its size.
    const most = Math.min(maxBytes, Math.floor((length ?? HEX_CAP) / 2), HEX_CAP / 2);
    const bytes = fixed === undefined ? { min: Math.min(1, most), max: most } : { min: fixed, max: fixed };
    return { gen: textGen({ kind: 'hex', min: bytes.min * 2, max: bytes.max * 2 }), bad: textBad(length) };
  }
  // ASCII letters and digits: no NUL or trailing space, which the decoder drops.
  const most = Math.min(maxBytes, length ?? TEXT_CAP, TEXT_CAP);
  return { gen: textGen({ kind: 'ascii', min: Math.min(1, most), max: most }), bad: textBad(length) };
}

/** A counted group: an array of structs (fields) or of values (item), as many items as the count allows. */
function groupSpec(f: JsonObject, dt: Extract<TslDataType, { type: 'array' }>): ValueSpec | null {
  const size = dt.specs.size;
  const fixed = typeof f.count === 'number' ? f.count : undefined;
  const most = fixed ?? Math.min(size, ARRAY_CAP, PREFIX_MAX[String(f.count)] ?? 0xff);
  const least = fixed ?? Math.min(1, most);
  const item = dt.specs.item;
  let spec: ValueSpec | null;
  if (isObject(f.item)) {
    const walk: Walk = { fields: [] };
    walkFields([{ ...f.item, id: 'value' }], new Map([['value', item]]), walk);
    spec = walk.fields[0]?.spec ?? null;
  } else {
    if (item.type !== 'struct') return null;
    const walk: Walk = { fields: [] };
    walkFields(list(f.fields), new Map(item.specs.map((m) => [m.identifier, m.dataType as TslDataType])), walk);
    spec = structSpec(walk.fields.map((w) => ({ id: w.id, spec: w.spec })));
  }
  return spec && arraySpec(spec, least, most, fixed === undefined ? size : undefined);
}

// --- other codecs: probing ---------------------------------------------------------------------

/**
 * Any other codec (protobuf, script, cbor ...): its property and event items on up_raw, with the
 * identifiers it carries. A full item is encoded; an identifier the codec names as not carried
 * (WANWU_ERR_INVALID with detail.identifier, e.g. the second member of a protobuf oneof) is
 * dropped and the rest tried again.
 */
function probedTemplates(product: Product, model: ThingModel, rng: Rng): { templates: Template[]; propertyError?: Error } {
  const route: UplinkRoute = { type: 'up-raw' };
  const base = { route, suffix: 'thing/model/up_raw', ts: 'never' as const, alink: false, corruptions: [dropLast] };
  const out: Template[] = [];
  let propertyError: Error | undefined;
  const props = probeFields(product, route, 'property', undefined, specsOf(model.properties, 'hex'), rng);
  if (props instanceof Error) propertyError = props;
  else if (props.fields.length > 0) {
    const t = baseTemplate({ ...base, label: 'properties (up_raw)', kind: 'property', fields: props.fields, subsetAllowed: true });
    setGroups(t, props.groups);
    out.push(t);
  }
  for (const e of simulatedEvents(model)) {
    const probed = probeFields(product, route, 'event', e.identifier, specsOf(e.outputData, 'hex'), rng);
    if (probed instanceof Error) continue; // the codec cannot carry this event
    const t = baseTemplate({ ...base, label: `event ${e.identifier} (up_raw)`, kind: 'event', event: e.identifier, fields: probed.fields, subsetAllowed: false });
    setGroups(t, probed.groups);
    out.push(t);
  }
  return propertyError ? { templates: out, propertyError } : { templates: out };
}

interface Probed {
  fields: FieldSpec[];
  /** Identifiers of which one item carries at most one (a protobuf oneof). */
  groups: string[][];
}

function probeFields(product: Product, route: UplinkRoute, kind: 'property' | 'event', event: string | undefined, fields: FieldSpec[], rng: Rng): Probed | Error {
  const encodes = (subset: FieldSpec[]): unknown => {
    const data: Record<string, unknown> = {};
    for (const f of subset) data[f.id] = f.spec.gen(rng);
    try {
      product.codec.encode!(route, event === undefined ? { kind, data } : { kind, event, data });
      return undefined;
    } catch (err) {
      return err;
    }
  };
  let kept = fields;
  const exclusive: FieldSpec[] = [];
  for (;;) {
    const err = encodes(kept);
    if (err === undefined) break;
    const detail = (err as { detail?: { identifier?: unknown; rule?: unknown } }).detail;
    const named = detail?.identifier;
    const top = typeof named === 'string' ? named.split(/[.[]/)[0] : undefined;
    const culprit = kept.find((f) => f.id === top);
    if (kept.length <= 1 || !culprit) return err instanceof Error ? err : new Error(String(err));
    if (detail?.rule === 'oneof') exclusive.push(culprit);
    kept = kept.filter((f) => f !== culprit);
  }
  // A oneof member dropped above joins the kept identifier it excludes: items carry one of them.
  const groups: string[][] = [];
  const all = [...kept];
  for (const x of exclusive) {
    const partner = kept.find((y) => encodes([...kept.filter((f) => f !== y), x]) === undefined);
    if (!partner) continue;
    const group = groups.find((g) => g.includes(partner.id));
    if (group) group.push(x.id);
    else groups.push([partner.id, x.id]);
    all.push(x);
  }
  return { fields: all, groups };
}

// --- generation and calibration ----------------------------------------------------------------

function makeItem(t: Template, rng: Rng, time: number): EncodeInput {
  const data: Record<string, unknown> = {};
  const fields = t.fields;
  // One member of each oneof group takes part.
  const chosen = t.groups.length === 0 ? undefined : t.groups.map((g) => pick(rng, g));
  let n = 0;
  for (const f of fields) {
    if (chosen) {
      const g = t.groupOf.get(f.id);
      if (g !== undefined && chosen[g] !== f.id) continue;
    }
    if (t.subset && rng() >= 0.5) continue;
    data[f.id] = f.spec.gen(rng);
    n++;
  }
  if (n === 0 && fields.length > 0) {
    const f = pick(rng, fields);
    data[f.id] = f.spec.gen(rng);
  }
  const item: EncodeInput = t.event === undefined ? { kind: t.kind, data } : { kind: t.kind, event: t.event, data };
  if (t.tsId !== undefined) item.ts = data[t.tsId] as number;
  else if (t.ts === 'always' || (t.ts === 'maybe' && rng() < 0.5)) item.ts = t.snapTs(time);
  return item;
}

/** Deep equality of JSON-like data (what decode and validation produce). */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  if (typeof a !== 'object' || typeof b !== 'object' || a === null || b === null) return false;
  if (Array.isArray(a) !== Array.isArray(b)) return false;
  if (Array.isArray(a)) {
    const bb = b as unknown[];
    return a.length === bb.length && a.every((v, i) => same(v, bb[i]));
  }
  const ka = Object.keys(a);
  const kb = Object.keys(b);
  if (ka.length !== kb.length) return false;
  return ka.every((k) => Object.hasOwn(b, k) && same((a as JsonObject)[k], (b as JsonObject)[k]));
}

function sameItem(a: DecodedItem, b: DecodedItem): boolean {
  return a.kind === b.kind && a.event === b.event && a.ts === b.ts && same(a.data, b.data);
}

/** A DecodedItem without the msgId an EncodeInput may carry. */
function asItem(item: EncodeInput): DecodedItem {
  const out: DecodedItem = { kind: item.kind, data: item.data };
  if (item.event !== undefined) out.event = item.event;
  if (item.ts !== undefined) out.ts = item.ts;
  return out;
}

const CALIBRATION_SAMPLES = 12;
const REFUSED: ReadonlySet<ErrorCode> = new Set(['WANWU_ERR_INVALID', 'WANWU_ERR_UNKNOWN_IDENTIFIER']);

interface Trial {
  ok: boolean;
  exact: boolean;
  error?: string;
  payloads: Buffer[];
}

/** Encodes and decodes samples: do they encode, pass validation, and come back unchanged? */
function trial(product: Product, t: Template, rng: Rng): Trial {
  const payloads: Buffer[] = [];
  let exact = true;
  for (let i = 0; i < CALIBRATION_SAMPLES; i++) {
    const item = makeItem(t, rng, DATE_LO + i * 1000);
    let payload: Buffer;
    try {
      payload = product.codec.encode!(t.route, item);
    } catch (err) {
      return { ok: false, exact: false, error: `encode: ${(err as Error).message}`, payloads };
    }
    const result = decodeUplink(product, t.route, payload);
    if (!result.ok) return { ok: false, exact: false, error: `${result.error.code}: ${result.error.message}`, payloads };
    if (result.items.length !== 1 || !sameItem(result.items[0]!, asItem(item))) exact = false;
    payloads.push(payload);
  }
  return { ok: true, exact, payloads };
}

/** Settles a template's mode (subsets or all fields; exact or decoded at run time). Returns an error text when it cannot be sent. */
function calibrate(product: Product, t: Template, rng: Rng): string | undefined {
  let result: Trial | undefined;
  if (t.subsetAllowed) {
    t.subset = true;
    result = trial(product, t, rng);
    if (!result.ok || !result.exact) result = undefined;
  }
  if (!result) {
    t.subset = false;
    result = trial(product, t, rng);
    if (!result.ok) return result.error;
  }
  t.exact = result.exact;
  t.malformed = t.corruptions.filter((c) => breaks(product, t.route, result.payloads, c, rng));
  if (t.malformed.length === 0 && breaks(product, t.route, result.payloads, empty, rng)) t.malformed = [empty];
  return undefined;
}

/** Whether a corruption makes every sample undecodable (WANWU_ERR_MALFORMED). */
function breaks(product: Product, route: UplinkRoute, payloads: Buffer[], corrupt: Corrupt, rng: Rng): boolean {
  return payloads.every((p) => {
    const r = decodeUplink(product, route, corrupt(p, rng));
    return !r.ok && r.error.code === 'WANWU_ERR_MALFORMED';
  });
}

/** Invalid values the codec writes and the gateway refuses with a validation error, per template. */
function findInvalid(product: Product, t: Template, rng: Rng, unknownId: boolean): void {
  const candidates: Array<{ id: string; value: unknown }> = [];
  for (const f of t.fields) for (const value of f.spec.bad) candidates.push({ id: f.id, value });
  if (unknownId) candidates.push({ id: UNKNOWN_ID, value: 1 });
  for (const c of candidates) {
    let refused = true;
    for (let i = 0; i < 3 && refused; i++) {
      const item = makeItem(t, rng, DATE_LO);
      setValue(t, item.data, c.id, c.value);
      if (t.tsId === c.id) refused = false;
      try {
        const r = decodeUplink(product, t.route, product.codec.encode!(t.route, item));
        refused &&= !r.ok && REFUSED.has(r.error.code);
      } catch {
        refused = false; // the codec cannot write it
      }
    }
    if (refused) t.invalid.push(c);
  }
}

// --- the factory -------------------------------------------------------------------------------

const DEFAULT_SEED = 1;
const SIM_EPOCH = Date.UTC(2024, 0, 1);

/**
 * A message factory for one product. Throws an Error naming the product and codec when the
 * product cannot be simulated: no thing model, a codec that cannot encode, or property messages
 * the codec refuses.
 */
export function createMessageFactory(product: Product, opts: MessageFactoryOptions = {}): MessageFactory {
  const rates = checkRates(opts);
  const pk = product.productKey;
  const codecType = product.codec.type;
  const model = product.model;
  if (!model) throw new Error(`${pk}: no thing model (model.json), so wanwu-sim has nothing to generate values from`);
  if (!product.codec.encode) throw new Error(`${pk}: its ${codecType} codec cannot encode, so it cannot be simulated`);

  const seed = ((opts.seed ?? DEFAULT_SEED) ^ hash32(pk)) >>> 0;
  const setupRng = seededRandom(seed ^ 0x9e3779b9);
  let templates: Template[];
  let propertyError: Error | undefined;
  if (codecType === 'alink-json') templates = alinkTemplates(model);
  else {
    const binary = codecType === 'binary' ? binaryTemplates(product, model) : null;
    if (binary) templates = binary;
    else ({ templates, propertyError } = probedTemplates(product, model, setupRng));
  }

  const usable: Template[] = [];
  for (const t of templates) {
    const error = calibrate(product, t, setupRng);
    if (error === undefined) usable.push(t);
    else if (t.kind === 'property') propertyError ??= new Error(`${t.label}: ${error}`);
    // An event the codec cannot carry is simply not sent.
  }
  if (!usable.some((t) => t.kind === 'property') && (propertyError || usable.length === 0)) {
    const why = propertyError?.message ?? 'the model has no property or event it can carry';
    throw new Error(`${pk}: the ${codecType} codec cannot encode its messages (${why})`, { cause: propertyError });
  }
  if (rates.invalid > 0) for (const t of usable) findInvalid(product, t, setupRng, t.alink);
  return new Factory(product, usable, rates, opts, seed);
}

interface Rates {
  invalid: number;
  malformed: number;
  duplicate: number;
}

function checkRates(opts: MessageFactoryOptions): Rates {
  const rates = { invalid: opts.invalidRate ?? 0, malformed: opts.malformedRate ?? 0, duplicate: opts.duplicateRate ?? 0 };
  for (const [name, r] of Object.entries(rates)) {
    if (!(r >= 0 && r <= 1)) throw new RangeError(`${name}Rate must be between 0 and 1, got ${r}`);
  }
  if (rates.invalid + rates.malformed + rates.duplicate > 1 + 1e-9) throw new RangeError('invalidRate + malformedRate + duplicateRate must not exceed 1');
  return rates;
}

/**
 * Script codecs encode in the sandbox thread, a blocking round trip of tens of µs that would make the
 * simulator, not the gateway, the bottleneck at thousands of messages/s. Once this many distinct valid
 * messages of a kind are made, they are reused (picked at random).
 */
const SCRIPT_POOL = 64;

class Factory implements MessageFactory {
  readonly info: MessageFactoryInfo;
  private readonly rng: Rng;
  private readonly properties: Template[];
  private readonly events: Template[];
  /** Templates with verified invalid values. */
  private readonly invalidCapable: Template[];
  /** Templates with verified ways to break the payload. */
  private readonly breakable: Template[];
  private readonly clock: () => number;
  private readonly last = new Map<string, SimMessage>();
  private msgCounter = 0;
  private ticks = 0;
  /** Valid messages of script codecs, kept for reuse (see SCRIPT_POOL). */
  private readonly pools = new Map<Template, SimMessage[]>();

  constructor(
    private readonly product: Product,
    templates: Template[],
    private readonly rates: Rates,
    opts: MessageFactoryOptions,
    seed: number,
  ) {
    this.rng = seededRandom(seed);
    this.properties = templates.filter((t) => t.kind === 'property');
    const events = templates.filter((t) => t.kind === 'event');
    // Events only when asked, unless they are all the product sends.
    this.events = opts.events === false && this.properties.length > 0 ? [] : events;
    const sent = [...this.properties, ...this.events];
    this.invalidCapable = sent.filter((t) => t.invalid.length > 0);
    this.breakable = sent.filter((t) => t.malformed.length > 0);
    // Invalid faults fall back to malformed ones where the codec can express no invalid value.
    if (this.breakable.length === 0 && (rates.malformed > 0 || (rates.invalid > 0 && this.invalidCapable.length === 0))) {
      throw new Error(`${product.productKey}: no way found to make a payload that its ${product.codec.type} codec cannot decode`);
    }
    this.clock = opts.clock ?? (() => SIM_EPOCH + this.ticks * 1000);
    this.info = {
      productKey: product.productKey,
      codec: product.codec.type,
      messages: sent.map((t) => t.label),
      invalid: this.invalidCapable.length > 0 ? 'values' : 'malformed',
      exact: sent.every((t) => t.exact),
    };
  }

  next(deviceName: string): SimMessage {
    this.ticks++;
    const r = this.rng();
    const { duplicate, invalid, malformed } = this.rates;
    const previous = this.last.get(deviceName);
    let msg: SimMessage;
    if (r < duplicate) msg = previous ? { ...previous, fault: 'duplicate' } : this.validMessage(deviceName);
    else if (r < duplicate + invalid) msg = this.invalidCapable.length > 0 ? this.invalidMessage(deviceName) : this.malformedMessage(deviceName);
    else if (r < duplicate + invalid + malformed) msg = this.malformedMessage(deviceName);
    else msg = this.validMessage(deviceName);
    this.last.set(deviceName, msg);
    return msg;
  }

  private template(): Template {
    const events = this.events;
    if (events.length > 0 && (this.properties.length === 0 || this.rng() < EVENT_SHARE)) return pick(this.rng, events);
    return pick(this.rng, this.properties);
  }

  private item(t: Template): EncodeInput {
    const item = makeItem(t, this.rng, this.clock());
    if (t.alink) item.msgId = String(++this.msgCounter);
    return item;
  }

  private envelope(t: Template, deviceName: string, payload: Buffer, fault: SimFault, items: DecodedItem[], records: number, msgId?: string): SimMessage {
    const msg: SimMessage = { topic: `/sys/${this.product.productKey}/${deviceName}/${t.suffix}`, route: t.route, payload, records, fault, items };
    if (msgId !== undefined) msg.msgId = msgId;
    return msg;
  }

  private validMessage(deviceName: string): SimMessage {
    const t = this.template();
    const pool = this.pools.get(t);
    if (pool && pool.length >= SCRIPT_POOL) {
      const m = pick(this.rng, pool);
      return this.envelope(t, deviceName, m.payload, 'none', m.items, m.records);
    }
    for (let attempt = 0; ; attempt++) {
      const item = this.item(t);
      const payload = this.product.codec.encode!(t.route, item);
      let msg: SimMessage | null = null;
      if (t.exact) msg = this.envelope(t, deviceName, payload, 'none', [asItem(item)], 1, item.msgId);
      else {
        // The codec reshapes values: report what the gateway will record.
        const result = decodeUplink(this.product, t.route, payload);
        if (result.ok) msg = this.envelope(t, deviceName, payload, 'none', result.items, result.items.length, item.msgId);
        else if (attempt >= 10) throw new Error(`${this.product.productKey}: ${t.label} did not decode: ${result.error.message}`);
      }
      if (!msg) continue;
      if (this.product.codec.type === 'script' && msg.msgId === undefined) {
        if (pool) pool.push(msg);
        else this.pools.set(t, [msg]);
      }
      return msg;
    }
  }

  private invalidMessage(deviceName: string): SimMessage {
    const t = pick(this.rng, this.invalidCapable);
    const bad = pick(this.rng, t.invalid);
    const item = this.item(t);
    setValue(t, item.data, bad.id, bad.value);
    const payload = this.product.codec.encode!(t.route, item);
    return this.envelope(t, deviceName, payload, 'invalid', [asItem(item)], 0, item.msgId);
  }

  private malformedMessage(deviceName: string): SimMessage {
    const t = pick(this.rng, this.breakable);
    const item = this.item(t);
    const payload = pick(this.rng, t.malformed)(this.product.codec.encode!(t.route, item), this.rng);
    return this.envelope(t, deviceName, payload, 'malformed', [], 0);
  }
}
