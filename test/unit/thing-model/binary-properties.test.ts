// Properties of the binary codec, checked with fast-check:
//   - round trip: for representable values (raw integers within the field's range and the TSL
//     min/max, then scaled), decode(encode(item)) gives the item back, validated, for the two
//     binary sample products and for a layout using every field kind;
//   - robustness: whatever the bytes, decoding returns items or throws a WanwuError, nothing else.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { compileBinaryLayout, crc16Modbus, decodeBinaryItem, encodeBinaryItem, FIELD_TYPES, type FieldTypeName } from '../../../src/thing-model/codecs/binary.js';
import { decodeUplink, type DecodedItem } from '../../../src/thing-model/index.js';

const upRaw = { type: 'up-raw' } as const;
const RUNS = { seed: 20240501, numRuns: 300 };

function load(productKey: string): { product: Product; codec: Record<string, unknown>; model: Record<string, unknown> } {
  const dir = fileURLToPath(new URL(`../../../devices/${productKey}`, import.meta.url));
  const read = (name: string) => JSON.parse(readFileSync(`${dir}/${name}`, 'utf8'));
  const json = read('product.json');
  const model = read('model.json');
  return { product: createProduct({ dir, product: json, model }), codec: json.codec, model };
}

interface FieldJson {
  id?: string;
  type: string;
  scale?: number;
  offset?: number;
}
interface DataTypeJson {
  type: string;
  specs?: Record<string, unknown>;
}

/** Decimals of a scale written in product.json (0.001 -> 3). */
function decimals(n: number): number {
  const s = String(n);
  return s.includes('.') ? s.length - s.indexOf('.') - 1 : 0;
}

/**
 * Values a numeric field can carry for its TSL type: a raw integer within the field's range and,
 * through scale and offset, within the TSL min/max, turned into the decimal the device means.
 */
function numberArb(field: FieldJson, dataType: DataTypeJson): fc.Arbitrary<number> {
  if (dataType.type === 'enum') return fc.constantFrom(...Object.keys(dataType.specs!).map(Number));
  if (dataType.type === 'bool') return fc.constantFrom(0, 1);
  const ft = FIELD_TYPES[field.type as FieldTypeName];
  const scale = field.scale ?? 1;
  const offset = field.offset ?? 0;
  const specs = dataType.specs ?? {};
  const lo = specs.min === undefined ? -Infinity : Number(specs.min);
  const hi = specs.max === undefined ? Infinity : Number(specs.max);
  const min = Math.max(ft.min, Math.ceil((lo - offset) / scale - 1e-9));
  const max = Math.min(ft.max, Math.floor((hi - offset) / scale + 1e-9));
  const places = Math.max(decimals(scale), decimals(offset));
  // The oracle: the decimal a device means by raw * scale + offset, written independently of the codec.
  return fc.integer({ min, max }).map((raw) => Number((raw * scale + offset).toFixed(places)) + 0);
}

function dataArb(fields: FieldJson[], types: Map<string, DataTypeJson>): fc.Arbitrary<Record<string, unknown>> {
  const shape: Record<string, fc.Arbitrary<unknown>> = {};
  for (const f of fields) if (f.id !== undefined) shape[f.id] = numberArb(f, types.get(f.id)!);
  return fc.record(shape);
}

function roundTrips(product: Product, item: DecodedItem): void {
  const frame = product.codec.encode!(upRaw, structuredClone(item));
  const back = decodeUplink(product, upRaw, frame);
  if (!back.ok) throw new Error(`${frame.toString('hex')}: ${back.error.message}`);
  expect(back.items).toEqual([item]);
}

/** Decoding must give items or a WanwuError, never another exception. */
function decodesOrRefuses(product: Product, frame: Buffer): void {
  try {
    const items = product.codec.decode(upRaw, frame, {});
    for (const item of items) {
      for (const v of Object.values(item.data)) if (typeof v === 'number') expect(Number.isFinite(v)).toBe(true);
    }
  } catch (err) {
    if (!(err instanceof WanwuError)) throw err;
  }
  // The decoder stage as the pipeline calls it: never throws, errors come back coded.
  const r = decodeUplink(product, upRaw, frame);
  if (!r.ok) expect(r.error).toBeInstanceOf(WanwuError);
}

describe('binary round trip: WaterMeterNB', () => {
  const { product, codec, model } = load('WaterMeterNB');
  const types = new Map((model.properties as Array<{ identifier: string; dataType: DataTypeJson }>).map((p) => [p.identifier, p.dataType]));
  const data = dataArb(codec.fields as FieldJson[], types);

  it('decode(encode(x)) == x for every representable report', () => {
    fc.assert(fc.property(data, (d) => roundTrips(product, { kind: 'property', data: d })), RUNS);
  });

  it('never throws anything but a WanwuError on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 32 }), (bytes) => decodesOrRefuses(product, Buffer.from(bytes))), { ...RUNS, numRuns: 1000 });
    // 14-byte frames reach every field: mostly msgType refusals, 1 in 256 decodes fully.
    const frames = fc.tuple(fc.uint8Array({ minLength: 13, maxLength: 13 })).map(([rest]) => Buffer.concat([Buffer.from([1]), rest]));
    fc.assert(fc.property(frames, (frame) => decodesOrRefuses(product, frame)), { ...RUNS, numRuns: 1000 });
  });
});

describe('binary round trip: AlarmNB', () => {
  const { product, codec, model } = load('AlarmNB');
  const properties = new Map((model.properties as Array<{ identifier: string; dataType: DataTypeJson }>).map((p) => [p.identifier, p.dataType]));
  const events = model.events as Array<{ identifier: string; outputData: Array<{ identifier: string; dataType: DataTypeJson }> }>;
  const outputs = (event: string) => new Map(events.find((e) => e.identifier === event)!.outputData.map((p) => [p.identifier, p.dataType]));
  const messages = codec.messages as Array<{ name: string; kind: 'property' | 'event'; event?: string; fields: Array<FieldJson & { bits?: FieldJson[]; fields?: FieldJson[] }> }>;
  const fieldsOf = (name: string) => messages.find((m) => m.name === name)!.fields;

  // Header time: u32 seconds x 1000.
  const ts = fc.integer({ min: 0, max: 0xffffffff }).map((s) => s * 1000);
  // lastTestAt: BCD YYMMDDhhmmss at +08:00 holds whole seconds of local years 2000..2099.
  const lastTestAt = fc.integer({ min: Date.UTC(2000, 0, 1) / 1000, max: Date.UTC(2099, 11, 31, 23, 59, 59) / 1000 }).map((s) => s * 1000 - 8 * 3600_000);
  const struct = (properties.get('recentTemperatures')!.specs as { size: string; item: { specs: Array<{ identifier: string; dataType: DataTypeJson }> } });
  const members = new Map(struct.item.specs.map((m) => [m.identifier, m.dataType]));
  const group = fieldsOf('report').find((f) => f.id === 'recentTemperatures')!;
  const sample = dataArb(group.fields!, members);

  const reportData = fc
    .tuple(
      dataArb(fieldsOf('report').filter((f) => f.type !== 'bcd' && f.type !== 'group' && f.type !== 'bits'), properties),
      numberArb({ type: 'u8' }, properties.get('tamper')!),
      numberArb({ type: 'u8' }, properties.get('status')!),
      lastTestAt,
      fc.array(sample, { maxLength: Number(struct.size) }),
    )
    .map(([plain, tamper, status, at, samples]) => ({ ...plain, tamper, status, lastTestAt: at, recentTemperatures: samples }));

  const item: fc.Arbitrary<DecodedItem> = fc.oneof(
    fc.record({ kind: fc.constant('property' as const), ts, data: reportData }),
    fc.record({ kind: fc.constant('property' as const), ts, data: dataArb(fieldsOf('heartbeat'), properties) }),
    fc.record({ kind: fc.constant('event' as const), event: fc.constant('alarm'), ts, data: dataArb(fieldsOf('alarm'), outputs('alarm')) }),
    fc.record({ kind: fc.constant('event' as const), event: fc.constant('fault'), ts, data: dataArb(fieldsOf('fault'), outputs('fault')) }),
  );

  it('decode(encode(x)) == x for every representable report, alarm, heartbeat and fault', () => {
    fc.assert(fc.property(item, (x) => roundTrips(product, x)), RUNS);
  });

  it('never throws anything but a WanwuError on random bytes', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 64 }), (bytes) => decodesOrRefuses(product, Buffer.from(bytes))), { ...RUNS, numRuns: 1000 });
  });

  it('never throws anything but a WanwuError on damaged valid frames whose CRC is then fixed', () => {
    // Valid frames with bytes overwritten, cut short or extended, and the CRC recomputed so that
    // the damage reaches the fields behind the check (counts, BCD, consts, the switch).
    const damaged = fc
      .tuple(item, fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { maxLength: 4 }), fc.integer({ min: -8, max: 8 }), fc.boolean())
      .map(([x, edits, resize, fixCrc]) => {
        let frame = Buffer.from(product.codec.encode!(upRaw, x));
        for (const [at, value] of edits) frame[at % frame.length] = value;
        frame = resize < 0 ? frame.subarray(0, Math.max(0, frame.length + resize)) : Buffer.concat([frame, Buffer.alloc(resize, 0x5a)]);
        if (fixCrc && frame.length >= 2) {
          const crc = crc16Modbus(frame, 0, frame.length - 2);
          frame[frame.length - 2] = crc & 0xff;
          frame[frame.length - 1] = crc >> 8;
        }
        return frame;
      });
    fc.assert(fc.property(damaged, (frame) => decodesOrRefuses(product, frame)), { ...RUNS, numRuns: 1000 });
  });
});

describe('binary round trip: every field kind', () => {
  const layout = compileBinaryLayout({
    type: 'binary',
    endian: 'little',
    fields: [
      { name: 'sync', type: 'bytes', size: 2, const: '6868' },
      { id: 'meterId', type: 'bcd', as: 'text', size: 7 },
      { id: 'reading', type: 'bcd', size: 4, endian: 'little', scale: 0.01 },
      { type: 'bits', size: 2, bits: [{ id: 'open', bit: 0 }, { id: 'mode', bits: [3, 5] }, { id: 'code', bits: [8, 15] }] },
      { id: 'i8v', type: 'i8' },
      { id: 'i32v', type: 'i32', endian: 'big', scale: 0.5 },
      { id: 'u64v', type: 'u64' },
      { id: 'f64v', type: 'f64' },
      { id: 'label', type: 'string', prefix: 'u8' },
      { id: 'blob', type: 'bytes', prefix: 'u16' },
      { id: 'levels', type: 'group', count: 'u8', item: { type: 'u16', scale: 0.1 } },
      { name: 'cs', type: 'sum8', from: 2 },
      { name: 'crc', type: 'crc16-modbus' },
    ],
  });
  const text = fc.string({ unit: 'grapheme', maxLength: 20 }).filter((s) => !s.includes('\u0000') && !s.endsWith(' ') && Buffer.byteLength(s) <= 255);
  const data = fc.record({
    meterId: fc.stringMatching(/^\d{14}$/),
    reading: fc.integer({ min: 0, max: 99999999 }).map((r) => Number((r * 0.01).toFixed(2))),
    open: fc.constantFrom(0, 1),
    mode: fc.integer({ min: 0, max: 7 }),
    code: fc.integer({ min: 0, max: 255 }),
    i8v: fc.integer({ min: -128, max: 127 }),
    i32v: fc.integer({ min: -0x80000000, max: 0x7fffffff }).map((r) => r * 0.5 + 0),
    u64v: fc.maxSafeNat(),
    f64v: fc.double({ noNaN: true, noDefaultInfinity: true }).map((v) => v + 0),
    label: text,
    blob: fc.uint8Array({ maxLength: 40 }).map((b) => Buffer.from(b).toString('hex')),
    levels: fc.array(fc.integer({ min: 0, max: 0xffff }).map((r) => Number((r * 0.1).toFixed(1))), { maxLength: 30 }),
  });

  it('decode(encode(x)) == x', () => {
    fc.assert(
      fc.property(data, (d) => {
        const frame = encodeBinaryItem(layout, { kind: 'property', data: d });
        expect(decodeBinaryItem(layout, frame)).toEqual({ kind: 'property', data: d });
      }),
      RUNS,
    );
  });

  it('never throws anything but a WanwuError on random bytes', () => {
    const frames = fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.concat([Buffer.from([0x68, 0x68]), b])); // past the sync const
    fc.assert(
      fc.property(frames, (frame) => {
        try {
          decodeBinaryItem(layout, frame);
        } catch (err) {
          if (!(err instanceof WanwuError)) throw err;
        }
      }),
      { ...RUNS, numRuns: 1000 },
    );
  });
});
