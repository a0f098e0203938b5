// The protobuf codec: the VehicleRedCap sample's wire fixtures, refusals of bad bytes and bad
// definitions, and encode -> decode round trips.
//
// Wire fixtures are annotated per tag/length/value group:  field number, wire type, value.
// Wire types (protobuf encoding spec): 0 varint, 1 64-bit, 2 length-delimited, 5 32-bit.
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { afterAll, describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { shortestFloat32 } from '../../../src/thing-model/codecs/protobuf.js';
import { decodeUplink, type DecodedItem, type TslDataType } from '../../../src/thing-model/index.js';
import type { UplinkRoute } from '../../../src/types.js';
import { arbitraryEventData, arbitraryPropertyData } from '../../helpers/tsl-arbitrary.js';
import { errorOf } from '../../helpers/index.js';

const sampleDir = fileURLToPath(new URL('../../../devices/VehicleRedCap', import.meta.url));
const readJson = (file: string): unknown => JSON.parse(readFileSync(path.join(sampleDir, file), 'utf8'));
const vehicle = createProduct({ dir: sampleDir, product: readJson('product.json'), model: readJson('model.json'), devices: readJson('devices.json') });
const model = vehicle.model!;

const upRaw: UplinkRoute = { type: 'up-raw' };
const brakingRoute: UplinkRoute = { type: 'event-post', eventId: 'harshBraking' };

/** Hex digits, spaces and newlines; `//` starts a comment to the end of the line. */
function hex(s: string): Buffer {
  const digits = s.replace(/\/\/.*$/gm, '').replace(/\s+/g, '');
  if (!/^(?:[0-9a-f]{2})*$/i.test(digits)) throw new Error(`bad hex fixture: ${digits}`);
  return Buffer.from(digits, 'hex');
}

function refused(product: Product, route: UplinkRoute, payload: Buffer): WanwuError {
  const r = decodeUplink(product, route, payload);
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.items)}`);
  return r.error;
}

// The documented sample (devices/README.md): a Telemetry report on up_raw, 92 bytes.
const TELEMETRY = hex(`
  01                            // type byte 1 = wanwu.vehicle.Telemetry
  0d 00009142                   // field 1 speed, 32-bit: f32 72.5 km/h
  12 1c                         // field 2 gps, length-delimited: 28 bytes of Gps
     09 a379008bfc3a3f40          // field 1 lat, 64-bit: f64 31.230416
     11 48c5ff1d515e5e40          // field 2 lon, 64-bit: f64 121.473701
     1d 00004841                  // field 3 alt, 32-bit: f32 12.5 m
     25 0000af42                  // field 4 heading, 32-bit: f32 87.5°
  1a 10                         // field 3 tire_pressure, length-delimited: packed, 16 bytes
     00006643 00006843            // f32 230, 232 kPa
     00006443 00006743            // f32 228, 231 kPa
  20 03                         // field 4 gear, varint: 3 = GEAR_DRIVE
  28 01                         // field 5 ignition, varint: 1 = true
  3d 00009942                   // field 7 battery_soc (oneof energy), 32-bit: f32 76.5 %
  42 13                         // field 8 sensors, length-delimited: one map entry, 19 bytes
     0a 0c 636f6f6c616e745f74656d70   // field 1 key, length-delimited: "coolant_temp"
     15 0000b142                  // field 2 value, 32-bit: f32 88.5
  48 cec2f105                   // field 9 odometer, varint: 12345678 m
  50 bd01                       // field 10 rsrp, varint: zigzag 189 = sint32 -95 dBm
`);
const TELEMETRY_DATA = {
  speed: 72.5,
  gps: { lat: 31.230416, lon: 121.473701, alt: 12.5, heading: 87.5 },
  tire_pressure: [230, 232, 228, 231],
  gear: 3,
  ignition: 1,
  battery_soc: 76.5,
  sensors: { coolant_temp: 88.5 },
  odometer: 12345678,
  rsrp: -95,
};

// A HarshBraking event: type byte 2 on up_raw, or the bare message on thing/event/harshBraking/post.
const BRAKING_BODY = hex(`
  0d 0000f040                   // field 1 decel, 32-bit: f32 7.5 m/s²
  15 00008042                   // field 2 speed, 32-bit: f32 64 km/h
  1a 12                         // field 3 location, length-delimited: 18 bytes of Gps
     09 a379008bfc3a3f40          // field 1 lat, 64-bit: f64 31.230416 -> latitude (codec.fields)
     11 48c5ff1d515e5e40          // field 2 lon, 64-bit: f64 121.473701 -> longitude
`);
const BRAKING_DATA = { decel: 7.5, speed: 64, latitude: 31.230416, longitude: 121.473701 };

describe('protobuf: VehicleRedCap wire fixtures', () => {
  it('decodes the documented Telemetry report into TSL struct, array, enum, bool and numbers', () => {
    expect(TELEMETRY.length).toBe(92);
    expect(decodeUplink(vehicle, upRaw, TELEMETRY)).toEqual({ ok: true, items: [{ kind: 'property', data: TELEMETRY_DATA }] });
  });

  it('is the payload devices/README.md documents, with the same harshBraking example', () => {
    const readme = readFileSync(path.join(sampleDir, '..', 'README.md'), 'utf8');
    const section = readme.slice(readme.indexOf('### VehicleRedCap'));
    expect(section).toContain(`\`\`\`\n${TELEMETRY.toString('hex')}\n\`\`\``);
    const braking = /`(02 [0-9a-f\s]+)` decodes to/.exec(section)?.[1];
    expect(braking && hex(braking)).toEqual(Buffer.concat([hex('02'), BRAKING_BODY]));
  });

  it('encodes the same item into the same bytes', () => {
    expect(vehicle.codec.encode!(upRaw, { kind: 'property', data: TELEMETRY_DATA }).toString('hex')).toBe(TELEMETRY.toString('hex'));
  });

  it('decodes HarshBraking as the harshBraking event, chosen by type byte 2, with location flattened', () => {
    const frame = Buffer.concat([hex('02'), BRAKING_BODY]); // type byte 2 = wanwu.vehicle.HarshBraking
    expect(decodeUplink(vehicle, upRaw, frame)).toEqual({ ok: true, items: [{ kind: 'event', event: 'harshBraking', data: BRAKING_DATA }] });
    expect(vehicle.codec.encode!(upRaw, { kind: 'event', event: 'harshBraking', data: BRAKING_DATA })).toEqual(frame);
  });

  it('decodes HarshBraking without type byte on its event topic, echoing the Alink method', () => {
    expect(decodeUplink(vehicle, brakingRoute, BRAKING_BODY)).toEqual({
      ok: true,
      method: 'thing.event.harshBraking.post',
      items: [{ kind: 'event', event: 'harshBraking', data: BRAKING_DATA }],
    });
  });

  it('reports the set oneof member under its own identifier', () => {
    const frame = hex(`
      01
      35 00002042                 // field 6 fuel_level (oneof energy), 32-bit: f32 40
    `);
    expect(decodeUplink(vehicle, upRaw, frame)).toEqual({ ok: true, items: [{ kind: 'property', data: { fuel_level: 40 } }] });
    // Both members on the wire: protobuf keeps the last one (battery_soc).
    const both = hex(`
      01
      35 00002042                 // field 6 fuel_level: 40
      3d 0000a042                 // field 7 battery_soc: 80
    `);
    expect(decodeUplink(vehicle, upRaw, both)).toEqual({ ok: true, items: [{ kind: 'property', data: { battery_soc: 80 } }] });
  });

  it('reports optional fields sent as zero, and implicit struct members as their default', () => {
    const frame = hex(`
      01
      0d 00000000                 // field 1 speed (optional), 32-bit: f32 0 -> still reported
      12 09                       // field 2 gps, length-delimited: 9 bytes
         09 0000000000003f40        // field 1 lat, 64-bit: f64 31; lon, alt, heading absent -> proto3 defaults 0
      20 00                       // field 4 gear (optional), varint: 0 = GEAR_PARK
    `);
    expect(decodeUplink(vehicle, upRaw, frame)).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { speed: 0, gps: { lat: 31, lon: 0, alt: 0, heading: 0 }, gear: 0 } }],
    });
  });

  it('reads unpacked repeated floats, bytes as hex text, and skips fields of a newer firmware', () => {
    const frame = hex(`
      01
      1d 00006643                 // field 3 tire_pressure, 32-bit (unpacked): f32 230
      1d 33336643                 // field 3 tire_pressure, 32-bit (unpacked): f32 230.2
      5a 04 18feee00              // field 11 can_frame, length-delimited: 4 bytes -> "18feee00"
      60 07                       // field 12 seq, varint: 7 -> skipped (codec.fields: null)
      a0 01 2a                    // field 20 (not in vehicle.proto), varint: 42 -> ignored
    `);
    expect(decodeUplink(vehicle, upRaw, frame)).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { tire_pressure: [230, 230.2], can_frame: '18feee00' } }],
    });
  });

  it('reports a float32 as its shortest decimal', () => {
    expect(shortestFloat32(Math.fround(2.2))).toBe(2.2);
    expect(shortestFloat32(Math.fround(-0.001))).toBe(-0.001);
    expect(shortestFloat32(Math.fround(1e-7))).toBe(1e-7);
    expect(shortestFloat32(Math.fround(1e20))).toBe(1e20);
    expect(shortestFloat32(Math.fround(16777217))).toBe(16777216);
    fc.assert(
      fc.property(fc.float({ noNaN: true, noDefaultInfinity: true }), (f) => {
        const y = shortestFloat32(f);
        expect(Math.fround(y)).toBe(f);
        // float32 never needs more than 9 significant digits
        expect(y.toExponential().replace(/^-|\.|e.*$/g, '').length).toBeLessThanOrEqual(9);
      }),
      { seed: 7, numRuns: 2000 },
    );
  });

  it('keeps Alink JSON on the property topic, which has no protobuf message', () => {
    const post = { id: '9', params: { speed: 30 }, method: 'thing.event.property.post' };
    expect(decodeUplink(vehicle, { type: 'property-post' }, Buffer.from(JSON.stringify(post)))).toEqual({
      ok: true,
      msgId: '9',
      method: 'thing.event.property.post',
      items: [{ kind: 'property', data: { speed: 30 } }],
    });
  });
});

describe('protobuf: bad bytes are refused with a code', () => {
  it('refuses a truncated message (MALFORMED)', () => {
    const err = refused(vehicle, upRaw, TELEMETRY.subarray(0, 40)); // cut inside the packed tire pressures
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe('wanwu.vehicle.Telemetry: cannot decode (index out of range: 38 + 16 > 40)');
  });

  it('refuses an invalid wire type (MALFORMED)', () => {
    const err = refused(vehicle, upRaw, hex('01 0f 00')); // field 1, wire type 7: no such wire type
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe('wanwu.vehicle.Telemetry: cannot decode (invalid wire type 7 at offset 2)');
  });

  it('refuses a known field sent with the wrong wire type (MALFORMED)', () => {
    const err = refused(vehicle, upRaw, hex('01 08 48')); // field 1 speed as a varint, not 32-bit
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe('wanwu.vehicle.Telemetry: field 1 (speed, float) arrived with wire type 0 (varint)');
    const nested = refused(vehicle, upRaw, hex('01 12 02 08 01')); // gps.lat (field 1 of Gps) as a varint
    expect(nested.message).toBe('wanwu.vehicle.Gps: field 1 (lat, double) arrived with wire type 0 (varint)');
  });

  it('refuses an unknown type byte and an empty payload (MALFORMED)', () => {
    const err = refused(vehicle, upRaw, hex('07 0d 00009142'));
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe('type byte 0x07 at offset 0 is not one of 0x01 (wanwu.vehicle.Telemetry), 0x02 (wanwu.vehicle.HarshBraking)');
    expect(refused(vehicle, upRaw, Buffer.alloc(0)).message).toBe('payload is 0 bytes; the type byte is at offset 0');
    expect(refused(vehicle, upRaw, hex('01')).message).toBe('wanwu.vehicle.Telemetry: the message carries no properties');
  });

  it('refuses values outside the thing model through validation (INVALID)', () => {
    const fast = refused(vehicle, upRaw, hex('01 0d 0000c843')); // speed f32 400 > max 300
    expect(fast.code).toBe('WANWU_ERR_INVALID');
    expect(fast.message).toBe('speed: 400 above max 300');
    const gear = refused(vehicle, upRaw, hex('01 20 09')); // gear 9: an open proto3 enum decodes it, the TSL enum does not have it
    expect(gear.code).toBe('WANWU_ERR_INVALID');
    expect(gear.message).toBe('gear: 9 not one of enum 0,1,2,3');
    const brake = refused(vehicle, brakingRoute, hex('0d 0000f842')); // decel f32 124 > max 30
    expect(brake.code).toBe('WANWU_ERR_INVALID');
    expect(brake.message).toBe('harshBraking.decel: 124 above max 30');
    const sensor = refused(vehicle, upRaw, hex('01 42 0c 0a 05 626f6f7374 15 0000c842')); // sensors {"boost": 100}
    expect(sensor.code).toBe('WANWU_ERR_UNKNOWN_IDENTIFIER');
    expect(sensor.message).toMatch(/^sensors\.boost: /);
  });

  it('refuses a 64-bit value beyond 2^53 (INVALID), and one beyond the TSL int', () => {
    // field 9 odometer, varint: 2^53 + 1 = 0x20000000000001
    const huge = refused(vehicle, upRaw, hex('01 48 81808080808080 10'));
    expect(huge.code).toBe('WANWU_ERR_INVALID');
    expect(huge.message).toBe('odometer: 64-bit value 9007199254740993 does not fit a JavaScript number (2^53)');
    const big = refused(vehicle, upRaw, hex('01 48 8080808010')); // 2^32
    expect(big.code).toBe('WANWU_ERR_INVALID');
    expect(big.message).toBe('odometer: 4294967296 is outside int32');
  });

  it('never lets anything but a WanwuError out of decode, whatever the bytes', () => {
    const payload = fc.oneof(
      fc.uint8Array({ maxLength: 120 }).map((b) => Buffer.from(b)),
      // Behind a valid type byte, so the bytes reach the message decoders.
      fc.tuple(fc.constantFrom(1, 2), fc.uint8Array({ maxLength: 120 })).map(([t, b]) => Buffer.concat([Buffer.from([t]), b])),
      // A valid report with one byte changed.
      fc.tuple(fc.nat(TELEMETRY.length - 1), fc.integer({ min: 0, max: 255 })).map(([i, v]) => {
        const b = Buffer.from(TELEMETRY);
        b[i] = v;
        return b;
      }),
    );
    fc.assert(
      fc.property(payload, fc.constantFrom(upRaw, brakingRoute), (bytes, route) => {
        try {
          vehicle.codec.decode(route, bytes, {});
        } catch (err) {
          expect(err).toBeInstanceOf(WanwuError);
        }
        const r = decodeUplink(vehicle, route, bytes);
        if (!r.ok) expect(['WANWU_ERR_MALFORMED', 'WANWU_ERR_INVALID', 'WANWU_ERR_UNKNOWN_IDENTIFIER']).toContain(r.error.code);
      }),
      { seed: 20240601, numRuns: 1500 },
    );
  });
});

describe('protobuf: encode', () => {
  const encode = (route: UplinkRoute, item: DecodedItem) => vehicle.codec.encode!(route, item);

  it('refuses what the message cannot carry (INVALID)', () => {
    const both = errorOf(() => encode(upRaw, { kind: 'property', data: { fuel_level: 40, battery_soc: 80 } }));
    expect(both.code).toBe('WANWU_ERR_INVALID');
    expect(both.message).toBe('battery_soc: fuel_level and battery_soc are both set; they share oneof energy');
    expect(errorOf(() => encode(upRaw, { kind: 'property', data: { speed: 1, mystery: 2 } })).message).toBe(
      'mystery: no field of wanwu.vehicle.Telemetry carries it',
    );
    expect(errorOf(() => encode(upRaw, { kind: 'property', data: { can_frame: 'xyz' } })).message).toBe('can_frame: "xyz" is not hex text (a bytes field)');
    expect(errorOf(() => encode(upRaw, { kind: 'property', data: { speed: 1e39 } })).message).toBe('speed: 1e+39 does not fit the field');
    expect(errorOf(() => encode(upRaw, { kind: 'property', data: { odometer: 1.5 } })).message).toBe(
      'odometer: 1.5 does not fit the field (an integer 0..9007199254740991)',
    );
    expect(errorOf(() => encode(upRaw, { kind: 'property', data: { gps: { lat: 1, depth: 2 } } })).message).toBe(
      'gps.depth: no field of wanwu.vehicle.Gps carries it',
    );
    expect(errorOf(() => encode(brakingRoute, { kind: 'property', data: { speed: 1 } })).message).toBe(
      'event:harshBraking carries wanwu.vehicle.HarshBraking (event harshBraking), not properties',
    );
    expect(errorOf(() => encode(upRaw, { kind: 'event', event: 'overSpeed', data: {} })).message).toBe('no type byte carries event overSpeed');
  });

  it('encodes Alink JSON on the topics without a protobuf message', () => {
    const bytes = encode({ type: 'property-post' }, { kind: 'property', data: { speed: 30 } });
    expect(decodeUplink(vehicle, { type: 'property-post' }, bytes)).toMatchObject({ ok: true, items: [{ kind: 'property', data: { speed: 30 } }] });
  });

  // What decode gives back for an encoded item: float32 values as their shortest decimal, and no
  // empty arrays (protobuf cannot tell an empty repeated field from an absent one).
  function expected(dataTypes: ReadonlyMap<string, TslDataType>, data: Record<string, unknown>): Record<string, unknown> {
    const norm = (dt: TslDataType, v: unknown): unknown => {
      if (dt.type === 'float') return shortestFloat32(v as number);
      if (dt.type === 'array') return (v as unknown[]).map((x) => norm(dt.specs.item, x));
      if (dt.type === 'struct') {
        const out: Record<string, unknown> = {};
        for (const m of dt.specs) if (Object.hasOwn(v as object, m.identifier)) out[m.identifier] = norm(m.dataType, (v as Record<string, unknown>)[m.identifier]);
        return out;
      }
      return v;
    };
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(data)) {
      if (Array.isArray(v) && v.length === 0) continue;
      out[k] = norm(dataTypes.get(k)!, v);
    }
    return out;
  }

  it('round-trips random model-valid property data through up_raw', () => {
    const types = new Map(model.properties.map((p) => [p.identifier, p.dataType]));
    const identifiers = model.properties.map((p) => p.identifier).filter((id) => id !== 'can_frame');
    const data = fc
      .tuple(
        arbitraryPropertyData(model, { identifiers }),
        // can_frame is a bytes field: TSL text of hex digits.
        fc.option(fc.uint8Array({ maxLength: 16 }).map((b) => Buffer.from(b).toString('hex')), { nil: undefined }),
      )
      .map(([d, frame]) => {
        const out: Record<string, unknown> = { ...d };
        if (frame !== undefined) out.can_frame = frame;
        if ('fuel_level' in out && 'battery_soc' in out) delete out.fuel_level; // one oneof member at a time
        return out;
      })
      .filter((d) => Object.keys(expected(types, d)).length > 0);
    fc.assert(
      fc.property(data, (d) => {
        const bytes = encode(upRaw, { kind: 'property', data: d });
        expect(bytes[0]).toBe(1);
        expect(decodeUplink(vehicle, upRaw, bytes)).toEqual({ ok: true, items: [{ kind: 'property', data: expected(types, d) }] });
      }),
      { seed: 4242, numRuns: 300 },
    );
  });

  it('round-trips random harshBraking events through up_raw and the event topic', () => {
    const outputs = model.events.find((e) => e.identifier === 'harshBraking')!.outputData;
    const types = new Map(outputs.map((p) => [p.identifier, p.dataType]));
    fc.assert(
      fc.property(arbitraryEventData(model, 'harshBraking'), (d) => {
        const item: DecodedItem = { kind: 'event', event: 'harshBraking', data: d };
        const want = { ok: true, items: [{ kind: 'event', event: 'harshBraking', data: expected(types, d) }] };
        const framed = encode(upRaw, item);
        expect(framed[0]).toBe(2);
        expect(decodeUplink(vehicle, upRaw, framed)).toEqual(want);
        expect(decodeUplink(vehicle, brakingRoute, encode(brakingRoute, item))).toEqual({ ...want, method: 'thing.event.harshBraking.post' });
      }),
      { seed: 99, numRuns: 200 },
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Products built in a temporary folder, for the load-time checks.

const tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'wanwu-protobuf-'));
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
let folders = 0;

const REPORT_PROTO = `
syntax = "proto3";
package t;
import "google/protobuf/timestamp.proto";

enum Mode { MODE_OFF = 0; MODE_ON = 1; }
message Pos { double lat = 1; double lon = 2; }
message Report {
  optional int32 level = 1;
  optional string label = 2;
  Pos pos = 3;
  repeated sint32 samples = 4;
  map<string, float> extra = 5;
  optional Mode mode = 6;
  uint32 seq = 7;
  optional int64 big = 8;
  optional bytes raw = 9;
  google.protobuf.Timestamp at = 10;
  repeated Pos trail = 11;
}
message Alarm { int32 code = 1; Pos pos = 2; }
`;

const prop = (identifier: string, dataType: unknown) => ({ identifier, name: identifier, accessMode: 'r', dataType });
const REPORT_MODEL = {
  properties: [
    prop('level', { type: 'int', specs: { min: 0, max: 100 } }),
    prop('label', { type: 'text', specs: { length: 16 } }),
    prop('pos', { type: 'struct', specs: [{ identifier: 'lat', name: 'lat', dataType: { type: 'double', specs: {} } }, { identifier: 'lon', name: 'lon', dataType: { type: 'double', specs: {} } }] }),
    prop('samples', { type: 'array', specs: { size: 8, item: { type: 'int' } } }),
    prop('extra', { type: 'struct', specs: [{ identifier: 'a', name: 'a', dataType: { type: 'float', specs: {} } }] }),
    prop('mode', { type: 'enum', specs: { 0: 'off', 1: 'on' } }),
    prop('seq', { type: 'int', specs: {} }),
    prop('big', { type: 'int', specs: {} }),
    prop('raw', { type: 'text', specs: {} }),
    prop('at', { type: 'date', specs: {} }),
    prop('trail', { type: 'array', specs: { size: 4, item: { type: 'struct', specs: [{ identifier: 'lat', name: 'lat', dataType: { type: 'double', specs: {} } }, { identifier: 'lon', name: 'lon', dataType: { type: 'double', specs: {} } }] } } }),
    prop('latitude', { type: 'double', specs: {} }),
  ],
  events: [{ identifier: 'alarm', name: 'alarm', type: 'alert', outputData: [{ identifier: 'code', name: 'code', dataType: { type: 'int', specs: {} } }, { identifier: 'lat', name: 'lat', dataType: { type: 'double', specs: {} } }] }],
};

interface Fixture {
  codec: Record<string, unknown>;
  files?: Record<string, string>;
  model?: unknown;
}

/** Builds product PbTest<n> in its own folder; returns it and the product.json path used in messages. */
function build({ codec, files = { 'report.proto': REPORT_PROTO }, model: m = REPORT_MODEL }: Fixture): { product: Product; file: string } {
  const key = `PbTest${++folders}`;
  const dir = path.join(tmpRoot, key);
  mkdirSync(dir, { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    writeFileSync(path.join(dir, name), text);
  }
  const product = createProduct({ dir, product: { productKey: key, name: key, rat: 'redcap', codec: { type: 'protobuf', ...codec } }, model: m });
  return { product, file: path.join(dir, 'product.json') };
}

function loadError(fixture: Fixture): string {
  const key = `PbTest${folders + 1}`;
  const err = errorOf(() => build(fixture));
  expect(err.code).toBe('WANWU_ERR_PRODUCT');
  return err.message.replaceAll(path.join(tmpRoot, key), '<dir>');
}

describe('protobuf: product definitions are checked at load', () => {
  const report = { proto: 'report.proto', message: 't.Report' };

  it('maps every field by name: struct, array of ints and of structs, map, enum, int64, bytes, timestamp', () => {
    const { product } = build({ codec: report });
    const item: DecodedItem = {
      kind: 'property',
      data: {
        level: 5, label: 'ok', pos: { lat: 1.5, lon: -2 }, samples: [-1, 2], extra: { a: 0.5 }, mode: 1, seq: 3, big: -7, raw: '00ff', at: 1700000000123,
        trail: [{ lat: 1, lon: 2 }, { lat: 3, lon: 0 }],
      },
    };
    const bytes = product.codec.encode!(upRaw, item);
    expect(decodeUplink(product, upRaw, bytes)).toEqual({ ok: true, items: [item] });
  });

  it('refuses a missing .proto, a syntax error and a bad import, naming the file and line', () => {
    expect(loadError({ codec: { ...report, proto: 'nothere.proto' } })).toBe('<dir>/product.json: codec.proto: nothere.proto: file not found (<dir>/nothere.proto)');
    const broken = 'syntax = "proto3";\npackage t;\nmessage Report {\n  int32 level = 1\n  int32 seq = 2;\n}\n';
    expect(loadError({ codec: report, files: { 'report.proto': broken } })).toBe(
      "<dir>/product.json: codec.proto: report.proto: illegal token 'int32', ';' expected (line 5)",
    );
    const importing = 'syntax = "proto3";\npackage t;\nimport "common/units.proto";\nmessage Report { int32 level = 1; }\n';
    expect(loadError({ codec: report, files: { 'report.proto': importing } })).toBe(
      '<dir>/product.json: codec.proto: common/units.proto (imported by report.proto): file not found (<dir>/common/units.proto)',
    );
    const escaping = 'syntax = "proto3";\npackage t;\nimport "../VehicleRedCap/vehicle.proto";\nmessage Report { int32 level = 1; }\n';
    expect(loadError({ codec: report, files: { 'report.proto': escaping } })).toBe(
      '<dir>/product.json: codec.proto: ../VehicleRedCap/vehicle.proto (imported by report.proto): outside the product folder',
    );
    const unresolved = 'syntax = "proto3";\npackage t;\nmessage Report { Missing level = 1; }\n';
    expect(loadError({ codec: report, files: { 'report.proto': unresolved } })).toBe(
      "<dir>/product.json: codec.proto: report.proto: no such Type or Enum 'Missing' in Type .t.Report",
    );
  });

  it('loads imports beside the .proto', () => {
    const files = {
      'report.proto': 'syntax = "proto3";\npackage t;\nimport "pos.proto";\nmessage Report { optional int32 level = 1; Pos pos = 3; }\n',
      'pos.proto': 'syntax = "proto3";\npackage t;\nmessage Pos { double lat = 1; double lon = 2; }\n',
    };
    const { product } = build({ codec: report, files });
    expect(decodeUplink(product, upRaw, hex('08 05 1a 09 09 000000000000f83f'))).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { level: 5, pos: { lat: 1.5, lon: 0 } } }],
    });
  });

  it('refuses unknown messages, by short name too', () => {
    expect(loadError({ codec: { ...report, message: 't.Nope' } })).toBe('<dir>/product.json: codec.message: "t.Nope" is not a message in report.proto (messages: t.Pos, t.Report, t.Alarm)');
    expect(loadError({ codec: { ...report, message: 'Report' } })).toBe('<dir>/product.json: codec.message: "Report" is not a message in report.proto; use its full name "t.Report"');
    expect(loadError({ codec: { ...report, message: 't.Mode' } })).toMatch(/codec\.message: "t\.Mode" is not a message in report\.proto/);
  });

  it('refuses a field without a same-named property, unless it is mapped or skipped', () => {
    const model = { ...REPORT_MODEL, properties: REPORT_MODEL.properties.filter((p) => p.identifier !== 'seq') };
    expect(loadError({ codec: report, model })).toBe(
      '<dir>/product.json: codec.message: t.Report.seq maps to "seq", which is not a property in model.json (map it in codec.fields, or skip it with null)',
    );
    expect(build({ codec: { ...report, fields: { seq: null } }, model }).product.codec.type).toBe('protobuf');
    expect(build({ codec: { ...report, fields: { seq: 'level', level: null } }, model }).product.codec.type).toBe('protobuf');
  });

  it('refuses mappings to identifiers the model lacks, to the same identifier twice, and through lists', () => {
    expect(loadError({ codec: { ...report, fields: { 'pos.lat': 'lat' } } })).toBe(
      '<dir>/product.json: codec.fields["pos.lat"]: t.Pos.lat maps to "lat", which is not a property in model.json',
    );
    expect(loadError({ codec: { ...report, fields: { seq: 'level' } } })).toBe('<dir>/product.json: codec.fields.seq: seq and level both map to "level"');
    expect(loadError({ codec: { ...report, fields: { 'samples.x': 'level' } } })).toBe(
      '<dir>/product.json: codec.fields["samples.x"]: samples is repeated sint32; only singular message fields can be entered',
    );
    expect(loadError({ codec: { ...report, fields: { 'pos.alt': 'level' } } })).toBe('<dir>/product.json: codec.fields["pos.alt"]: no field "alt" in t.Pos');
    expect(loadError({ codec: { ...report, fields: { level: 7 } } })).toBe('<dir>/product.json: codec.fields.level: expected an identifier or null, got 7');
  });

  it('flattens a nested message when one of its fields is mapped', () => {
    const model = { ...REPORT_MODEL, properties: [...REPORT_MODEL.properties, prop('lon', { type: 'double', specs: {} })] };
    const { product } = build({ codec: { ...report, fields: { 'pos.lat': 'latitude', seq: null } }, model });
    // field 3 pos { lat 1.5, lon 2 } -> latitude 1.5, lon 2 (unmapped fields keep their names)
    expect(decodeUplink(product, upRaw, hex('1a 12 09 000000000000f83f 11 0000000000000040'))).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { latitude: 1.5, lon: 2 } }],
    });
  });

  it('refuses a field type that cannot carry the TSL type', () => {
    const retype = (identifier: string, dataType: unknown) => ({
      ...REPORT_MODEL,
      properties: REPORT_MODEL.properties.map((p) => (p.identifier === identifier ? prop(identifier, dataType) : p)),
    });
    expect(loadError({ codec: report, model: retype('label', { type: 'int', specs: {} }) })).toBe(
      '<dir>/product.json: codec.message: label (string) cannot carry label, an int in model.json',
    );
    expect(loadError({ codec: report, model: retype('level', { type: 'text', specs: {} }) })).toBe(
      '<dir>/product.json: codec.message: level (int32) cannot carry level, a text in model.json',
    );
    expect(loadError({ codec: report, model: retype('samples', { type: 'int', specs: {} }) })).toBe(
      '<dir>/product.json: codec.message: samples (repeated sint32) cannot carry samples, an int in model.json',
    );
    expect(loadError({ codec: report, model: retype('samples', { type: 'array', specs: { size: 4, item: { type: 'text' } } }) })).toBe(
      '<dir>/product.json: codec.message: samples (repeated sint32) cannot carry samples, a text in model.json',
    );
    expect(loadError({ codec: report, model: retype('pos', { type: 'double', specs: {} }) })).toBe(
      '<dir>/product.json: codec.message: pos (Pos) cannot carry pos, a double in model.json',
    );
    expect(loadError({ codec: report, model: retype('extra', { type: 'struct', specs: [{ identifier: 'a', name: 'a', dataType: { type: 'text', specs: {} } }] }) })).toBe(
      '<dir>/product.json: codec.message: extra (map<string, float>) cannot carry extra.a, a text in model.json',
    );
    expect(loadError({ codec: report, model: retype('mode', { type: 'bool', specs: {} }) })).toBe(
      '<dir>/product.json: codec.message: mode (Mode) cannot carry mode, a bool in model.json',
    );
    expect(loadError({ codec: report, model: retype('pos', { type: 'struct', specs: [{ identifier: 'lat', name: 'lat', dataType: { type: 'double', specs: {} } }] }) })).toBe(
      '<dir>/product.json: codec.message: t.Pos.lon maps to "lon", which is not a member of struct pos in model.json (map it in codec.fields, or skip it with null)',
    );
    const intKeys = REPORT_PROTO.replace('map<string, float> extra', 'map<int32, float> extra');
    expect(loadError({ codec: report, files: { 'report.proto': intKeys } })).toBe(
      '<dir>/product.json: codec.message: extra (map<int32, float>): only map<string, V> fields are supported (keys become struct members)',
    );
  });

  it('checks the routing options', () => {
    const both = { ...report, typeByte: { messages: { 1: 't.Report' } } };
    expect(loadError({ codec: both })).toBe('<dir>/product.json: codec.typeByte: give either "message" or "typeByte" for up_raw, not both');
    expect(loadError({ codec: { proto: 'report.proto', typeByte: { messages: { 256: 't.Report' } } } })).toBe(
      '<dir>/product.json: codec.typeByte.messages["256"]: a type byte is a decimal number 0..255',
    );
    expect(loadError({ codec: { proto: 'report.proto', messages: { 'event:overheat': 't.Alarm' } } })).toBe(
      '<dir>/product.json: codec.messages["event:overheat"]: "overheat" is not an event in model.json',
    );
    expect(loadError({ codec: { proto: 'report.proto', messages: { down_raw: 't.Report' } } })).toBe(
      '<dir>/product.json: codec.messages.down_raw: a route is "up_raw", "property" or "event:<eventId>"',
    );
    expect(loadError({ codec: { ...report, events: { 't.Report': 'alarm' } } })).toBe(
      '<dir>/product.json: codec.message: t.Report.level maps to "level", which is not an output of event alarm in model.json (map it in codec.fields, or skip it with null)',
    );
    expect(loadError({ codec: { ...report, events: { 't.Alarm': 'alarm' } } })).toBe(
      '<dir>/product.json: codec.events["t.Alarm"]: t.Alarm is not carried by any route (message, typeByte, messages)',
    );
    expect(loadError({ codec: { proto: 'report.proto', messages: { property: 't.Alarm' }, events: { 't.Alarm': 'alarm' } } })).toBe(
      '<dir>/product.json: codec.messages.property: t.Alarm is the event alarm (codec.events); thing/event/property/post carries properties',
    );
    expect(loadError({ codec: { proto: 'report.proto', typeByte: { messages: { 1: 't.Report', 2: 't.Alarm' } }, fields: { seq: null } } })).toBe(
      '<dir>/product.json: codec.fields: with several messages, key the mappings by message name: {"pkg.Message": {"path": "identifier"}}',
    );
    expect(loadError({ codec: { proto: 'report.proto' } })).toBe('<dir>/product.json: codec: a protobuf codec needs "message", "typeByte" or "messages"');
    expect(loadError({ codec: { ...report, keepCase: false } })).toBe(
      '<dir>/product.json: codec.keepCase: unknown key (allowed: type, proto, message, typeByte, messages, events, fields, downlink)',
    );
  });

  it('routes by type byte at an offset, with an event message', () => {
    const { product } = build({
      codec: {
        proto: 'report.proto',
        typeByte: { offset: 1, messages: { 16: 't.Report', 17: 't.Alarm' } },
        events: { 't.Alarm': 'alarm' },
        fields: { 't.Alarm': { 'pos.lat': 'lat', 'pos.lon': null } },
      },
    });
    const frame = hex(`
      a5                          // header byte, skipped
      11                          // type byte 0x11 = t.Alarm
      08 07                       // field 1 code, varint: 7
      12 09 09 000000000000f83f   // field 2 pos { field 1 lat, 64-bit: 1.5 } -> lat
    `);
    expect(decodeUplink(product, upRaw, frame)).toEqual({ ok: true, items: [{ kind: 'event', event: 'alarm', data: { code: 7, lat: 1.5 } }] });
    // encode writes the header as zero
    expect(product.codec.encode!(upRaw, { kind: 'event', event: 'alarm', data: { code: 7, lat: 1.5 } })).toEqual(Buffer.concat([hex('00'), frame.subarray(1)]));
    expect(refused(product, upRaw, hex('a5')).message).toBe('payload is 1 bytes; the type byte is at offset 1');
  });

  it('decodes by inference without a thing model, and refuses a recursive message there', () => {
    const { product } = build({ codec: report, model: null });
    const big = refused(product, upRaw, hex(`
      08 05                       // field 1 level, varint: 5
      40 ffffffffffffffff7f       // field 8 big, varint: int64 2^63-1, beyond 2^53
    `));
    expect(big.code).toBe('WANWU_ERR_INVALID');
    expect(big.message).toBe('big: 64-bit value 9223372036854775807 does not fit a JavaScript number (2^53)');
    const frame = hex(`
      30 01                       // field 6 mode, varint: 1 (enum number)
      4a 02 beef                  // field 9 raw, length-delimited: 2 bytes -> "beef"
      52 06                       // field 10 at, length-delimited: 6 bytes of Timestamp
         08 01                      // field 1 seconds, varint: 1
         10 80897a                  // field 2 nanos, varint: 2000000 -> at 1002 ms
    `);
    // seq is a proto3 scalar without presence: absent means 0, and 0 is reported.
    expect(decodeUplink(product, upRaw, frame)).toEqual({ ok: true, items: [{ kind: 'property', data: { mode: 1, seq: 0, raw: 'beef', at: 1002 } }] });
    const tree = 'syntax = "proto3";\npackage t;\nmessage Node { int32 v = 1; Node next = 2; }\n';
    expect(loadError({ codec: { proto: 'report.proto', message: 't.Node' }, files: { 'report.proto': tree }, model: null })).toBe(
      '<dir>/product.json: codec.message: next: recursive message t.Node needs a thing model to bound it',
    );
  });
});
