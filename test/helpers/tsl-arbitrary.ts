// fast-check arbitraries for thing-model values, for encode -> decode round-trip properties of codecs.
//
// Contract (other codecs' tests rely on it; extend, don't change):
//   - Every value is model-valid AND already normalized: validateItem returns it unchanged
//     (toEqual), so `decode(encode(x))` can be compared with `x` directly after validation.
//       int     integer within specs min/max and int32 (OneNET int64: the safe-integer range)
//       float   a 32-bit float (Math.fround(v) === v) within min/max, so a codec that stores TSL
//               float as float32 (protobuf `float`, CBOR half/single) gives it back exactly
//       double  any finite double within min/max
//       bool    0 | 1                      enum  one of the numeric keys
//       text    whole code points only (no lone surrogates, which UTF-8 cannot carry): mostly ASCII
//               and CJK, some controls and astral characters; at most specs.length characters,
//               capped at 64 to keep runs fast
//       date    a number of ms since the epoch (safe integer >= 0)
//       struct  an object with every member (option partialStructs: members may be missing)
//       array   up to min(specs.size, 10) items
//     Never -0 (toEqual tells -0 from 0, and text formats do not keep it), NaN or ±Infinity.
//   - Object keys are the model's identifiers (`block:id` for Alibaba custom-module features).
//   - Deterministic for a given fast-check seed.
//
// API:
//   arbitraryValue(dataType, opts?)                       one value of a TSL data type
//   arbitraryPropertyData(model, {min?, max?, identifiers?}) data of a random non-empty subset of
//                                                          the properties (min/max: how many identifiers)
//   arbitraryEventData(model, eventId, {partial?})        an event's output data (partial: optional outputs may be missing)
//   arbitraryTime()                                       a realistic device time (ms, 2017..2033)
//   arbitraryItem(model, {events?, time?})                a DecodedItem: property data, or event data of a random event

import fc from 'fast-check';
import type { DecodedItem, ThingModel, TslDataType } from '../../src/thing-model/index.js';

export interface ValueOptions {
  /** Struct members may be left out (the validator accepts partial structs). Default false. */
  partialStructs?: boolean;
}

const INT32_MIN = -2147483648;
const INT32_MAX = 2147483647;
const TEXT_CAP = 64;
const ARRAY_CAP = 10;

/** One model-valid, normalized value of `dataType`. */
export function arbitraryValue(dataType: TslDataType, opts: ValueOptions = {}): fc.Arbitrary<unknown> {
  switch (dataType.type) {
    case 'int': {
      const wide = dataType.int64 === true;
      const lo = Math.max(dataType.specs.min ?? -Infinity, wide ? Number.MIN_SAFE_INTEGER : INT32_MIN);
      const hi = Math.min(dataType.specs.max ?? Infinity, wide ? Number.MAX_SAFE_INTEGER : INT32_MAX);
      const min = Math.ceil(lo);
      const max = Math.floor(hi);
      if (min >= INT32_MIN && max <= INT32_MAX) return fc.integer({ min, max }).map(noNegativeZero);
      return fc.bigInt({ min: BigInt(min), max: BigInt(max) }).map((n) => noNegativeZero(Number(n)));
    }
    case 'float': {
      const min = dataType.specs.min === undefined ? undefined : float32AtLeast(dataType.specs.min);
      const max = dataType.specs.max === undefined ? undefined : float32AtMost(dataType.specs.max);
      if (min !== undefined && max !== undefined && min > max) {
        // No 32-bit float inside the range: fall back to the bound itself (a valid double).
        return fc.constant(noNegativeZero(dataType.specs.min!));
      }
      return fc.float({ min, max, noNaN: true, noDefaultInfinity: true }).map(noNegativeZero);
    }
    case 'double':
      return fc
        .double({ min: dataType.specs.min, max: dataType.specs.max, noNaN: true, noDefaultInfinity: true })
        .map(noNegativeZero);
    case 'bool':
      return fc.constantFrom(0, 1);
    case 'enum':
      return fc.constantFrom(...Object.keys(dataType.specs).map(Number));
    case 'text':
      return fc.string({ unit: codePoint, maxLength: Math.min(dataType.specs.length ?? TEXT_CAP, TEXT_CAP) });
    case 'date':
      return fc.oneof(arbitraryTime(), fc.maxSafeNat());
    case 'struct': {
      const members: Record<string, fc.Arbitrary<unknown>> = {};
      for (const m of dataType.specs) members[m.identifier] = arbitraryValue(m.dataType, opts);
      return opts.partialStructs ? fc.record(members, { requiredKeys: [] }) : fc.record(members);
    }
    case 'array':
      return fc.array(arbitraryValue(dataType.specs.item, opts), { maxLength: Math.min(dataType.specs.size, ARRAY_CAP) });
  }
}

export interface PropertyDataOptions extends ValueOptions {
  /** Fewest identifiers in the data (default 1). */
  min?: number;
  /** Most identifiers in the data (default: all candidates). */
  max?: number;
  /** Candidate properties (default: every property of the model). */
  identifiers?: readonly string[];
}

/** Data of a random non-empty subset of the model's properties, e.g. {temperature: 23.5, status: 1}. */
export function arbitraryPropertyData(model: ThingModel, opts: PropertyDataOptions = {}): fc.Arbitrary<Record<string, unknown>> {
  const wanted = opts.identifiers ? new Set(opts.identifiers) : null;
  const candidates = model.properties.filter((p) => wanted === null || wanted.has(p.identifier));
  if (wanted && candidates.length !== wanted.size) {
    const known = new Set(candidates.map((p) => p.identifier));
    throw new Error(`arbitraryPropertyData: not properties of the model: ${[...wanted].filter((id) => !known.has(id)).join(', ')}`);
  }
  if (candidates.length === 0) throw new Error('arbitraryPropertyData: the model has no properties');
  const minLength = Math.max(1, opts.min ?? 1);
  const maxLength = Math.min(candidates.length, opts.max ?? candidates.length);
  if (minLength > maxLength) throw new Error(`arbitraryPropertyData: min ${minLength} above max ${maxLength}`);
  return fc.subarray(candidates, { minLength, maxLength }).chain((chosen) => {
    const record: Record<string, fc.Arbitrary<unknown>> = {};
    for (const p of chosen) record[p.identifier] = arbitraryValue(p.dataType, opts);
    return fc.record(record);
  });
}

export interface EventDataOptions extends ValueOptions {
  /** Outputs not marked required may be missing. Default false: every output is present. */
  partial?: boolean;
}

/** Output data of event `eventId`. */
export function arbitraryEventData(model: ThingModel, eventId: string, opts: EventDataOptions = {}): fc.Arbitrary<Record<string, unknown>> {
  const event = model.events.find((e) => e.identifier === eventId);
  if (!event) throw new Error(`arbitraryEventData: ${eventId} is not an event of the model`);
  const record: Record<string, fc.Arbitrary<unknown>> = {};
  for (const p of event.outputData) record[p.identifier] = arbitraryValue(p.dataType, opts);
  if (!opts.partial) return fc.record(record);
  return fc.record(record, { requiredKeys: event.outputData.filter((p) => p.required === true).map((p) => p.identifier) });
}

/** A realistic device time in ms since the epoch (2017-07 .. 2033-05). */
export function arbitraryTime(): fc.Arbitrary<number> {
  return fc.bigInt({ min: 1_500_000_000_000n, max: 2_000_000_000_000n }).map(Number);
}

export interface ItemOptions extends ValueOptions {
  /** Event identifiers to draw from (default: every event of the model; [] for property items only). */
  events?: readonly string[];
  /** Whether items carry a device time: 'always', 'never' or 'maybe' (default). */
  time?: 'always' | 'never' | 'maybe';
}

/** A DecodedItem as a codec returns it before validation (already normalized values). */
export function arbitraryItem(model: ThingModel, opts: ItemOptions = {}): fc.Arbitrary<DecodedItem> {
  const ts: fc.Arbitrary<number | undefined> =
    opts.time === 'always' ? arbitraryTime() : opts.time === 'never' ? fc.constant(undefined) : fc.option(arbitraryTime(), { nil: undefined });
  const withTime = (item: DecodedItem, t: number | undefined): DecodedItem => (t === undefined ? item : { ...item, ts: t });
  const kinds: Array<fc.Arbitrary<DecodedItem>> = [];
  if (model.properties.length > 0) {
    kinds.push(fc.tuple(arbitraryPropertyData(model, opts), ts).map(([data, t]) => withTime({ kind: 'property', data }, t)));
  }
  for (const eventId of opts.events ?? model.events.map((e) => e.identifier)) {
    kinds.push(fc.tuple(arbitraryEventData(model, eventId, opts), ts).map(([data, t]) => withTime({ kind: 'event', event: eventId, data }, t)));
  }
  if (kinds.length === 0) throw new Error('arbitraryItem: the model has neither properties nor the requested events');
  return fc.oneof(...kinds);
}

// One code point, never a lone surrogate: mostly ASCII and CJK, sometimes anything else (controls,
// emoji and other astral characters). fc.string's 'binary' unit is avoided: its first use costs ~1 s.
const SURROGATES = 0xe000 - 0xd800;
const codePoint: fc.Arbitrary<string> = fc.oneof(
  { weight: 4, arbitrary: fc.integer({ min: 0x20, max: 0x7e }) },
  { weight: 2, arbitrary: fc.integer({ min: 0x4e00, max: 0x9fff }) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 0x10ffff - SURROGATES }).map((n) => (n < 0xd800 ? n : n + SURROGATES)) },
).map((n) => String.fromCodePoint(n));

function noNegativeZero(n: number): number {
  return n === 0 ? 0 : n;
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** The smallest 32-bit float >= x. */
function float32AtLeast(x: number): number {
  const f = Math.fround(x);
  return f >= x ? f : nextFloat32(f, +1);
}

/** The largest 32-bit float <= x. */
function float32AtMost(x: number): number {
  const f = Math.fround(x);
  return f <= x ? f : nextFloat32(f, -1);
}

/** The adjacent 32-bit float in direction `dir` (finite, non-NaN input). */
function nextFloat32(f: number, dir: 1 | -1): number {
  if (f === 0) return dir * 2 ** -149;
  f32[0] = f;
  // Moving away from zero increments the magnitude bits; towards zero decrements them.
  u32[0] = u32[0]! + ((f > 0) === (dir > 0) ? 1 : -1);
  return f32[0]!;
}
