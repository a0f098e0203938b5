import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, loadRegistry } from '../../../src/registry/index.js';
import { compileBinaryLayout, decodeBinary, decodeUplink, encodeBinary, parseThingModel } from '../../../src/thing-model/index.js';
import { decimalsOf } from '../../../src/thing-model/codecs/binary.js';
import { errorOf } from '../../helpers/index.js';

const devicesDir = fileURLToPath(new URL('../../../devices', import.meta.url));
const registry = loadRegistry(devicesDir);
const waterMeter = registry.product('WaterMeterNB')!;
const upRaw = { type: 'up-raw' } as const;

/** The water meter's layout, compiled from its product.json exactly as the registry does. */
function waterMeterLayout() {
  const json = JSON.parse(readFileSync(`${devicesDir}/WaterMeterNB/product.json`, 'utf8')) as { codec: unknown };
  return compileBinaryLayout(json.codec, { model: waterMeter.model });
}

// The documented sample report (devices/README.md), 14 bytes, big endian.
const SAMPLE = Buffer.from([
  0x01, //                   msgType        u8  @0   1 = report (const)
  0x00, 0x00, 0x30, 0x39, // cumulativeFlow u32 @1   12345 * 0.001 = 12.345 m³
  0x04, 0xd2, //             instantFlow    u16 @5   1234 * 0.001 = 1.234 m³/h
  0x0e, 0x10, //             batteryVoltage u16 @7   3600 * 0.001 = 3.6 V
  0x00, //                   valveState     u8  @9   0 = open
  0x09, 0x29, //             temperature    i16 @10  2345 * 0.01 = 23.45 °C
  0xff, 0xa6, //             rsrp           i16 @12  -90 dBm
]);
const SAMPLE_DATA = { cumulativeFlow: 12.345, instantFlow: 1.234, batteryVoltage: 3.6, valveState: 0, temperature: 23.45, rsrp: -90 };

describe('binary layout: water meter', () => {
  it('compiles to fixed offsets and a 14-byte frame', () => {
    const layout = waterMeterLayout();
    expect(layout.size).toBe(14);
    expect(layout.fields.map((f) => [f.label, f.at, f.size])).toEqual([
      ['msgType', 0, 1],
      ['cumulativeFlow', 1, 4],
      ['instantFlow', 5, 2],
      ['batteryVoltage', 7, 2],
      ['valveState', 9, 1],
      ['temperature', 10, 2],
      ['rsrp', 12, 2],
    ]);
  });

  it('decodes the sample frame field by field', () => {
    expect(SAMPLE.toString('hex')).toBe('010000303904d20e10000929ffa6');
    expect(decodeBinary(waterMeterLayout(), SAMPLE)).toEqual(SAMPLE_DATA);
  });

  it('decodes the sample through the registry product (up_raw -> one property item)', () => {
    const result = decodeUplink(waterMeter, upRaw, SAMPLE);
    expect(result).toEqual({ ok: true, items: [{ kind: 'property', data: SAMPLE_DATA }] });
  });

  it('decodes negative scaled values and extremes', () => {
    const frame = Buffer.from([
      0x01, //                   msgType
      0xff, 0xff, 0xff, 0xff, // cumulativeFlow 4294967295 * 0.001 = 4294967.295
      0x00, 0x00, //             instantFlow 0
      0x13, 0x88, //             batteryVoltage 5000 -> 5
      0x02, //                   valveState 2 = fault
      0xfb, 0x2e, //             temperature -1234 * 0.01 = -12.34
      0xff, 0x74, //             rsrp -140
    ]);
    expect(decodeBinary(waterMeterLayout(), frame)).toEqual({
      cumulativeFlow: 4294967.295,
      instantFlow: 0,
      batteryVoltage: 5,
      valveState: 2,
      temperature: -12.34,
      rsrp: -140,
    });
  });

  it('refuses a short frame, naming the first field that does not fit', () => {
    const e = errorOf(() => decodeBinary(waterMeterLayout(), SAMPLE.subarray(0, 8)));
    expect(e.code).toBe('WANWU_ERR_MALFORMED');
    expect(e.message).toBe('frame is 8 bytes; field batteryVoltage (u16 at offset 7) needs 2 (the layout is 14 bytes)');
    const empty = errorOf(() => decodeBinary(waterMeterLayout(), Buffer.alloc(0)));
    expect(empty.message).toBe('frame is 0 bytes; field msgType (u8 at offset 0) needs 1 (the layout is 14 bytes)');
  });

  it('refuses trailing bytes', () => {
    const e = errorOf(() => decodeBinary(waterMeterLayout(), Buffer.concat([SAMPLE, Buffer.from([0xaa, 0xbb])])));
    expect(e.code).toBe('WANWU_ERR_MALFORMED');
    expect(e.message).toBe('frame is 16 bytes; the layout ends at 14 (2 trailing bytes)');
  });

  it('refuses a const mismatch (wrong message type)', () => {
    const frame = Buffer.from(SAMPLE);
    frame[0] = 0x02;
    const e = errorOf(() => decodeBinary(waterMeterLayout(), frame));
    expect(e.code).toBe('WANWU_ERR_MALFORMED');
    expect(e.message).toBe('field msgType (u8 at offset 0) is 0x02; expected 0x01');
  });

  it('reports errors from decodeUplink as ok:false, and validates decoded values', () => {
    const short = decodeUplink(waterMeter, upRaw, SAMPLE.subarray(0, 5));
    expect(short.ok).toBe(false);
    expect(!short.ok && short.error.code).toBe('WANWU_ERR_MALFORMED');

    const badValve = Buffer.from(SAMPLE);
    badValve[9] = 7; // valveState 7: not in the enum
    const invalid = decodeUplink(waterMeter, upRaw, badValve);
    expect(invalid.ok).toBe(false);
    if (!invalid.ok) {
      expect(invalid.error.code).toBe('WANWU_ERR_INVALID');
      expect(invalid.error.message).toBe('valveState: 7 not one of enum 0,1,2');
    }

    const flat = Buffer.from(SAMPLE);
    flat.writeUInt16BE(5001, 7); // batteryVoltage 5.001 V: above the model's max 5
    const high = decodeUplink(waterMeter, upRaw, flat);
    expect(!high.ok && high.error.message).toBe('batteryVoltage: 5.001 above max 5');
  });

  it('takes Alink JSON on the property post topic of a binary product', () => {
    const payload = Buffer.from(JSON.stringify({ id: '7', params: { rsrp: -100 } }));
    expect(decodeUplink(waterMeter, { type: 'property-post' }, payload)).toEqual({
      ok: true,
      msgId: '7',
      method: 'thing.event.property.post',
      items: [{ kind: 'property', data: { rsrp: -100 } }],
    });
  });

  it('encodes values back into the sample frame', () => {
    expect(encodeBinary(waterMeterLayout(), SAMPLE_DATA).equals(SAMPLE)).toBe(true);
  });

  it('encodes through the product codec: up_raw gives the frame, the property post gives Alink JSON', () => {
    const encode = waterMeter.codec.encode!;
    expect(encode(upRaw, { kind: 'property', data: SAMPLE_DATA }).equals(SAMPLE)).toBe(true);
    const json = encode({ type: 'property-post' }, { kind: 'property', data: { rsrp: -100 }, msgId: '7' });
    expect(decodeUplink(waterMeter, { type: 'property-post' }, json)).toMatchObject({ ok: true, msgId: '7', items: [{ kind: 'property', data: { rsrp: -100 } }] });
  });

  it('refuses to encode an event or an unknown identifier into the report layout', () => {
    const encode = waterMeter.codec.encode!;
    const event = errorOf(() => encode(upRaw, { kind: 'event', event: 'leak', data: {} }));
    expect([event.code, event.message]).toEqual(['WANWU_ERR_INVALID', 'the layout has no message for event leak']);
    const unknown = errorOf(() => encode(upRaw, { kind: 'property', data: { ...SAMPLE_DATA, pressure: 1 } }));
    expect(unknown.message).toBe('pressure: not a field of the layout (cumulativeFlow, instantFlow, batteryVoltage, valveState, temperature, rsrp)');
  });
});

describe('binary layout: field types', () => {
  it('reads little endian, signed, 64-bit and float fields', () => {
    const layout = compileBinaryLayout({
      type: 'binary',
      fields: [
        { id: 'a', type: 'u16', endian: 'little' },
        { id: 'b', type: 'i8' },
        { id: 'c', type: 'i32', endian: 'little' },
        { id: 'd', type: 'u64' },
        { id: 'e', type: 'i64', endian: 'little' },
        { id: 'f', type: 'f32' },
        { id: 'g', type: 'f64', endian: 'little' },
        { type: 'u8' }, // reserved byte, skipped
      ],
    });
    const frame = Buffer.concat([
      Buffer.from([0x34, 0x12]), //                                   a u16 LE 0x1234 = 4660
      Buffer.from([0xfe]), //                                          b i8 -2
      Buffer.from([0xfe, 0xff, 0xff, 0xff]), //                        c i32 LE -2
      Buffer.from([0x00, 0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // d u64 BE 2^53-1
      Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]), // e i64 LE -1
      Buffer.from([0x3d, 0xcc, 0xcc, 0xcd]), //                        f f32 BE 0.1f
      Buffer.from([0x1f, 0x85, 0xeb, 0x51, 0xb8, 0x1e, 0x09, 0x40]), // g f64 LE 3.14
      Buffer.from([0x99]), //                                          reserved
    ]);
    expect(layout.size).toBe(36);
    expect(decodeBinary(layout, frame)).toEqual({ a: 4660, b: -2, c: -2, d: Number.MAX_SAFE_INTEGER, e: -1, f: 0.1, g: 3.14 });
  });

  it('refuses a 64-bit value beyond 2^53 instead of losing precision', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'n', type: 'u64' }] });
    const e = errorOf(() => decodeBinary(layout, Buffer.alloc(8, 0xff)));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe('field n (u64 at offset 0): 64-bit value 18446744073709551615 does not fit a JavaScript number (2^53)');
  });

  it('applies offset after scale and rounds to their decimals', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 't', type: 'u8', scale: 0.5, offset: -40 }, { id: 'v', type: 'u16', scale: 0.1, offset: 0.05 }] });
    // t: 0x55 = 85 -> 85 * 0.5 - 40 = 2.5; v: 0x0003 = 3 -> 3 * 0.1 + 0.05 = 0.35 (not 0.35000000000000003)
    expect(decodeBinary(layout, Buffer.from([0x55, 0x00, 0x03]))).toEqual({ t: 2.5, v: 0.35 });
  });

  it('gives the nearest double to raw/1000 for every u16 with scale 0.001', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'x', type: 'u16', scale: 0.001 }] });
    const frame = Buffer.alloc(2);
    let wrong = 0;
    for (let raw = 0; raw <= 0xffff; raw++) {
      frame.writeUInt16BE(raw, 0);
      if (decodeBinary(layout, frame).x !== raw / 1000) wrong++;
    }
    expect(wrong).toBe(0);
  });

  it('counts decimals of scales', () => {
    expect([0.001, 0.01, 0.5, 1, 250, 1e-7, 2.5e-3].map(decimalsOf)).toEqual([3, 2, 1, 0, 0, 7, 4]);
  });
});

describe('binary layout: encode', () => {
  const layout = compileBinaryLayout({
    type: 'binary',
    fields: [
      { type: 'u8', const: 0xa5, name: 'header' },
      { id: 'u8v', type: 'u8' },
      { id: 'i16v', type: 'i16', endian: 'little', scale: 0.01 },
      { id: 'u32v', type: 'u32', scale: 0.001, offset: 100 },
      { id: 'i32v', type: 'i32' },
      { id: 'f32v', type: 'f32', endian: 'little' },
      { id: 'f64v', type: 'f64' },
      { id: 'i64v', type: 'i64' },
    ],
  });

  it('round-trips pseudo-random values of every type', () => {
    // Deterministic LCG so a failure is reproducible.
    let seed = 42;
    const next = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
    const int = (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1));
    for (let i = 0; i < 2000; i++) {
      const values = {
        u8v: int(0, 255),
        i16v: int(-32768, 32767) / 100,
        u32v: Math.round((int(0, 4294967295) / 1000 + 100) * 1000) / 1000,
        i32v: int(-2147483648, 2147483647),
        f32v: Math.fround(next() * 2000 - 1000),
        f64v: next() * 1e6 - 5e5,
        i64v: int(-1e15, 1e15),
      };
      const frame = encodeBinary(layout, values);
      expect(frame[0]).toBe(0xa5);
      const back = decodeBinary(layout, frame);
      // f32 comes back as its shortest decimal, which reads back as the same float32
      expect({ ...back, f32v: Math.fround(back.f32v as number) }).toEqual(values);
    }
  });

  it('refuses a missing value or one that does not fit', () => {
    const base = { u8v: 1, i16v: 1, u32v: 100, i32v: 1, f32v: 1, f64v: 1, i64v: 1 };
    const { u8v: _, ...missing } = base;
    expect(errorOf(() => encodeBinary(layout, missing)).message).toBe('no value for u8v (field u8v (u8 at offset 1))');
    const e = errorOf(() => encodeBinary(layout, { ...base, u8v: 256 }));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe('u8v: 256 does not fit u8 (raw 256, range 0..255) (field u8v (u8 at offset 1))');
    expect(errorOf(() => encodeBinary(layout, { ...base, u32v: 99 })).message).toMatch(/^u32v: 99 does not fit u32 \(raw -1000,/);
  });
});

describe('binary layout: definition errors', () => {
  const model = parseThingModel(
    {
      properties: [
        { identifier: 'level', name: '液位', accessMode: 'r', dataType: { type: 'float', specs: {} } },
        { identifier: 'state', name: '状态', accessMode: 'r', dataType: { type: 'enum', specs: { '0': 'ok' } } },
        { identifier: 'label', name: '标签', accessMode: 'r', dataType: { type: 'text', specs: { length: 8 } } },
      ],
      events: [{ identifier: 'alarm', name: '告警', type: 'alert', outputData: [{ identifier: 'code', name: '代码', dataType: { type: 'int', specs: {} } }] }],
    },
    'model.json',
  );
  const cases: Array<[string, unknown, string]> = [
    ['no fields', { type: 'binary', fields: [] }, 'binary layout: codec.fields: a layout needs at least one field'],
    ['unknown type', { type: 'binary', fields: [{ id: 'level', type: 'u24' }] }, 'binary layout: codec.fields[0].type: expected one of "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64", "bits", "bcd", "string", "bytes", "group", "crc16-modbus", "sum8", "xor8", got "u24"'],
    ['bad endian', { type: 'binary', fields: [{ id: 'level', type: 'u16', endian: 'middle' }] }, 'binary layout: codec.fields[0].endian: expected one of "big", "little", got "middle"'],
    ['zero scale', { type: 'binary', fields: [{ id: 'level', type: 'u16', scale: 0 }] }, 'binary layout: codec.fields[0].scale: must not be 0'],
    ['const out of range', { type: 'binary', fields: [{ type: 'u8', const: 256 }] }, 'binary layout: codec.fields[0].const: 256 is above 255'],
    ['typo key', { type: 'binary', fields: [{ id: 'level', type: 'u16', scael: 0.1 }] }, 'binary layout: codec.fields[0].scael: unknown key (allowed: id, name, type, endian, scale, offset, const, at, ts, msgId)'],
    ['id not in model', { type: 'binary', fields: [{ id: 'lvl', type: 'u16' }] }, 'binary layout: codec.fields[0].id: "lvl" is not a property in model.json'],
    ['duplicate id', { type: 'binary', fields: [{ id: 'level', type: 'u16' }, { id: 'level', type: 'u8' }] }, 'binary layout: codec.fields[1].id: duplicate id "level" (also fields[0])'],
    ['text target', { type: 'binary', fields: [{ id: 'label', type: 'u8' }] }, 'binary layout: codec.fields[0].id: label is a text in model.json; a u8 field carries a number'],
    ['fractional enum', { type: 'binary', fields: [{ id: 'state', type: 'u8', scale: 0.1 }] }, 'binary layout: codec.fields[0].scale: 0.1 would make state fractional; it is an enum in model.json'],
    ['unknown event', { type: 'binary', kind: 'event', event: 'alrm', fields: [{ id: 'code', type: 'u8' }] }, 'binary layout: codec.event: "alrm" is not an event in model.json'],
    ['event output', { type: 'binary', kind: 'event', event: 'alarm', fields: [{ id: 'level', type: 'u8' }] }, 'binary layout: codec.fields[0].id: "level" is not an output of event alarm in model.json'],
    ['event without kind', { type: 'binary', event: 'alarm', fields: [{ id: 'level', type: 'u8' }] }, 'binary layout: codec.event: only allowed with "kind": "event"'],
  ];
  for (const [name, json, message] of cases) {
    it(`refuses ${name}`, () => {
      const e = errorOf(() => compileBinaryLayout(json, { model }));
      expect(e.code).toBe('WANWU_ERR_PRODUCT');
      expect(e.message).toBe(message);
    });
  }

  it('decodes an event layout into an event item', () => {
    const product = createProduct({
      dir: 'devices/AlarmNB',
      product: { productKey: 'AlarmNB', name: '告警器', rat: 'nb-iot', codec: { type: 'binary', kind: 'event', event: 'alarm', fields: [{ type: 'u8', const: 2 }, { id: 'code', type: 'u16' }] } },
      model: { events: [{ identifier: 'alarm', name: '告警', type: 'alert', outputData: [{ identifier: 'code', name: '代码', dataType: { type: 'int', specs: { max: '999' } } }] }] },
    });
    // 02 = message type "alarm" (const), 01 f4 = code 500
    expect(decodeUplink(product, upRaw, Buffer.from([0x02, 0x01, 0xf4]))).toEqual({ ok: true, items: [{ kind: 'event', event: 'alarm', data: { code: 500 } }] });
  });
});
