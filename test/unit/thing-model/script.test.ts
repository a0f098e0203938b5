// The `script` codec: product JavaScript in the sandbox (src/thing-model/codecs/script.ts, sandbox.ts).
// Fixtures: devices/SoilNB (ChirpStack style) and test/fixtures/scripts/*.js, each annotated.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { DefinitionReader } from '../../../src/thing-model/check.js';
import { scriptCodecFromJson } from '../../../src/thing-model/codecs/script.js';
import { decodeUplink, type Codec, type DecodeEnvelope, type TslDataType } from '../../../src/thing-model/index.js';
import type { UplinkRoute } from '../../../src/types.js';
import { errorOf } from '../../helpers/index.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** Relative paths, as the registry passes them: messages and stack traces name these. */
const FIXTURES = path.relative(process.cwd(), path.join(ROOT, 'test/fixtures/scripts'));
const SOIL_DIR = path.relative(process.cwd(), path.join(ROOT, 'devices/SoilNB'));
const UP: UplinkRoute = { type: 'up-raw' };

function fixture(file: string, options: Record<string, unknown> = {}): Codec {
  return scriptCodecFromJson(
    { type: 'script', file, ...options },
    { productKey: 'Fixture', model: null, reader: new DefinitionReader(path.join(FIXTURES, 'product.json')), path: 'codec', dir: FIXTURES },
  );
}

function soilProduct(): Product {
  const read = (name: string): unknown => JSON.parse(readFileSync(path.join(SOIL_DIR, name), 'utf8'));
  return createProduct({ dir: SOIL_DIR, product: read('product.json'), model: read('model.json'), devices: read('devices.json') });
}

const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');
const bytes = (...b: number[]) => Buffer.from(b);

describe('SoilNB sample (ChirpStack-style codec.js)', () => {
  const soil = soilProduct();

  it('loads as a script product with its model and demo devices', () => {
    expect(soil.codec.type).toBe('script');
    expect([...soil.devices.keys()]).toEqual(['so-0001', 'so-0002', 'so-0003']);
    expect(soil.model?.events.map((e) => e.identifier)).toEqual(['dryAlarm']);
  });

  it('decodes the documented report', () => {
    const frame = hex(
      '01' + //        frame type 0x01 = report
        '01a9' + //    soilMoisture    u16 425   x 0.1  = 42.5 %
        '0898' + //    soilTemperature i16 2200  x 0.01 = 22 °C
        '0514' + //    conductivity    u16 1300  = 1300 µS/cm
        '0e42' + //    batteryVoltage  u16 3650 mV = 3.65 V
        'ff9c' + //    rsrp            i16 -100 dBm
        '00', //       sensorStatus    u8  0 = ok
    );
    expect(decodeUplink(soil, UP, frame)).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { soilMoisture: 42.5, soilTemperature: 22, conductivity: 1300, batteryVoltage: 3.65, rsrp: -100, sensorStatus: 0 } }],
    });
  });

  it('decodes a cold, dry report with a probe fault (negative temperature)', () => {
    const frame = hex('01 0000 f060 0000 0000 ff74 02');
    //                 type | 0 % | -4000 -> -40 °C | 0 µS/cm | 0 V | -140 dBm | 2 = probe fault
    expect(soil.codec.decode(UP, frame, {})).toEqual([
      { kind: 'property', data: { soilMoisture: 0, soilTemperature: -40, conductivity: 0, batteryVoltage: 0, rsrp: -140, sensorStatus: 2 } },
    ]);
  });

  it('decodes the dry alarm as the dryAlarm event', () => {
    const frame = hex(
      '02' + //   frame type 0x02 = dry alarm
        '00b4' + // soilMoisture u16 180 x 0.1 = 18 %
        '00c8', //  threshold    u16 200 x 0.1 = 20 %
    );
    expect(decodeUplink(soil, UP, frame)).toEqual({ ok: true, items: [{ kind: 'event', event: 'dryAlarm', data: { soilMoisture: 18, threshold: 20 } }] });
  });

  it("refuses frames the script reports in `errors`, with the script's first error", () => {
    const unknown = errorOf(() => soil.codec.decode(UP, hex('07 00b4 00c8'), {}));
    expect(unknown.code).toBe('WANWU_ERR_MALFORMED');
    expect(unknown.message).toBe('codec.js: decodeUplink: unknown frame type 0x07');
    expect(unknown.detail).toMatchObject({ script: 'codec.js', function: 'decodeUplink', reason: 'errors' });
    expect(errorOf(() => soil.codec.decode(UP, hex('01 01a9 0898'), {})).message).toBe('codec.js: decodeUplink: report frame is 5 bytes; expected 12');
    expect(errorOf(() => soil.codec.decode(UP, Buffer.alloc(0), {})).message).toBe('codec.js: decodeUplink: empty frame');
  });

  it('lets the thing model refuse out-of-range values the script decoded', () => {
    // soilMoisture 0xffff x 0.1 = 6553.5 %, above max 100
    const r = decodeUplink(soil, UP, hex('01 ffff 0898 0514 0e42 ff9c 00'));
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error.code).toBe('WANWU_ERR_INVALID');
  });

  it('encodes through encodeDownlink into the same frames', () => {
    const report = { soilMoisture: 42.5, soilTemperature: 22, conductivity: 1300, batteryVoltage: 3.65, rsrp: -100, sensorStatus: 0 };
    expect(soil.codec.encode!(UP, { kind: 'property', data: report }).toString('hex')).toBe('0101a9089805140e42ff9c00');
    expect(soil.codec.encode!(UP, { kind: 'event', event: 'dryAlarm', data: { soilMoisture: 18, threshold: 20 } }).toString('hex')).toBe('0200b400c8');
    const partial = errorOf(() => soil.codec.encode!(UP, { kind: 'property', data: { soilMoisture: 42.5 } }));
    expect(partial.code).toBe('WANWU_ERR_INVALID');
    expect(partial.message).toBe('codec.js: encodeDownlink: soilTemperature missing');
  });

  it('reads Alink JSON posts as Alink JSON, and encodes them so', () => {
    const post = Buffer.from(JSON.stringify({ id: '9', version: '1.0', method: 'thing.event.property.post', params: { soilMoisture: 33.3 } }));
    const envelope: DecodeEnvelope = {};
    expect(soil.codec.decode({ type: 'property-post' }, post, envelope)).toEqual([{ kind: 'property', data: { soilMoisture: 33.3 } }]);
    expect(envelope.msgId).toBe('9');
    const encoded = soil.codec.encode!({ type: 'property-post' }, { kind: 'property', data: { soilMoisture: 33.3 }, msgId: '9' });
    expect(JSON.parse(encoded.toString())).toMatchObject({ id: '9', params: { soilMoisture: 33.3 } });
  });

  // The frame stores each value at the model's step (0.1 %, 0.01 °C, 1 mV), so the values drawn
  // are the model-valid values on that grid (k / 10^decimals, exactly what the script computes);
  // arbitrary floats in range would be rounded by any fixed-point frame.
  const model = soil.model!;
  const onGrid = (dataType: TslDataType): fc.Arbitrary<number> => {
    if (dataType.type === 'enum') return fc.constantFrom(...Object.keys(dataType.specs).map(Number));
    if (dataType.type !== 'int' && dataType.type !== 'float' && dataType.type !== 'double') throw new Error(`no grid for ${dataType.type}`);
    const { min = 0, max = 0, step = 1 } = dataType.specs;
    const p = 10 ** Math.max(0, -Math.floor(Math.log10(step) + 1e-9));
    return fc.integer({ min: Math.round(min * p), max: Math.round(max * p) }).map((k) => k / p);
  };
  const report = fc.record(Object.fromEntries(model.properties.map((p) => [p.identifier, onGrid(p.dataType)])));
  const alarm = fc.record(Object.fromEntries(model.events[0]!.outputData.map((p) => [p.identifier, onGrid(p.dataType)])));

  it('round-trips random model-valid reports and alarms: decode(encode(item)) = item, valid', () => {
    fc.assert(
      fc.property(fc.oneof(report.map((data) => ({ kind: 'property' as const, data })), alarm.map((data) => ({ kind: 'event' as const, event: 'dryAlarm', data }))), (item) => {
        const frame = soil.codec.encode!(UP, item);
        expect(decodeUplink(soil, UP, frame)).toEqual({ ok: true, items: [item] });
      }),
      { numRuns: 300, seed: 20261121 },
    );
  });

  it('answers any bytes with items or a WanwuError, nothing else', () => {
    const frames = fc.oneof(
      fc.uint8Array({ maxLength: 40 }),
      fc.uint8Array({ minLength: 11, maxLength: 11 }).map((b) => Uint8Array.of(1, ...b)), // report-shaped
      fc.uint8Array({ minLength: 4, maxLength: 4 }).map((b) => Uint8Array.of(2, ...b)), // alarm-shaped
    );
    fc.assert(
      fc.property(frames, (frame) => {
        const r = decodeUplink(soil, UP, Buffer.from(frame));
        if (!r.ok) expect(r.error).toBeInstanceOf(WanwuError);
        else expect(r.items).toHaveLength(1);
      }),
      { numRuns: 300, seed: 7 },
    );
  });
});

describe('Alibaba IoT style (rawDataToProtocol / protocolToRawData)', () => {
  const thermo = fixture('alibaba-thermostat.js');

  it('decodes a property report into the Alink message, with id as msgId', () => {
    const frame = hex(
      '00' + //        command 0x00 = property report
        '00003039' + // id          i32 12345 -> "12345"
        '00e1' + //    setpoint    i16 225 x 0.1 = 22.5
        '01' + //      power       u8  1
        '41bc0000', // temperature f32 23.5
    );
    const envelope: DecodeEnvelope = {};
    expect(thermo.decode(UP, frame, envelope)).toEqual([{ kind: 'property', data: { setpoint: 22.5, power: 1, temperature: 23.5 } }]);
    expect(envelope).toEqual({ msgId: '12345', method: 'thing.event.property.post' });
  });

  it('reads bytes above 0x7f (passed signed, masked by the script)', () => {
    const frame = hex('00 7fffffff ff38 00 c1200000');
    //                 cmd | id 2147483647 | setpoint -200 -> -20 | power 0 | temperature -10.0
    const envelope: DecodeEnvelope = {};
    expect(thermo.decode(UP, frame, envelope)).toEqual([{ kind: 'property', data: { setpoint: -20, power: 0, temperature: -10 } }]);
    expect(envelope.msgId).toBe('2147483647');
    // The script itself sees Java-style signed bytes, -128..127.
    expect(fixture('alibaba-signed.js').decode(UP, bytes(0xff, 0x80, 0x7f), {})).toEqual([{ kind: 'property', data: { first: -1, last: 127, n: 3 } }]);
  });

  it('maps thing.event.{id}.post to an event item', () => {
    const frame = hex(
      '04' + //        command 0x04 = fault event
        '00000007' + // id        i32 7
        '03', //       errorCode u8  3
    );
    const envelope: DecodeEnvelope = {};
    expect(thermo.decode(UP, frame, envelope)).toEqual([{ kind: 'event', event: 'fault', data: { errorCode: 3 } }]);
    expect(envelope).toEqual({ msgId: '7', method: 'thing.event.fault.post' });
  });

  it('refuses a message that is not a post (a set reply has no method)', () => {
    const err = errorOf(() => thermo.decode(UP, hex('03 00000008 c8'), {}));
    expect(err.code).toBe('WANWU_ERR_METHOD');
    expect(err.message).toBe('alibaba-thermostat.js: rawDataToProtocol returned method nothing; up_raw takes "thing.event.property.post" or "thing.event.{eventId}.post"');
  });

  it('refuses an Alink message with a bad shape, naming the script', () => {
    // An unknown command byte: the script returns {} (no method).
    expect(errorOf(() => thermo.decode(UP, hex('09'), {})).code).toBe('WANWU_ERR_METHOD');
    // A report cut short: DataView reads past the end and throws RangeError in the script.
    const short = errorOf(() => thermo.decode(UP, hex('00 00003039 00'), {}));
    expect(short.code).toBe('WANWU_ERR_MALFORMED');
    expect(short.message).toMatch(/^alibaba-thermostat\.js:\d+: rawDataToProtocol threw RangeError: Offset is outside the bounds of the DataView$/);
  });

  it('encodes with protocolToRawData into the frames it decodes', () => {
    const item = { kind: 'property' as const, data: { setpoint: 22.5, power: 1, temperature: 23.5 }, msgId: '12345' };
    expect(thermo.encode!(UP, item).toString('hex')).toBe('0000003039' + '00e1' + '01' + '41bc0000');
    expect(thermo.encode!(UP, { kind: 'event', event: 'fault', data: { errorCode: 3 }, msgId: '7' }).toString('hex')).toBe('040000000703');
  });

  it('round-trips random reports and fault events with their msgId', () => {
    const report = fc.record({
      setpoint: fc.integer({ min: -32768, max: 32767 }).map((k) => k / 10),
      power: fc.constantFrom(0, 1),
      temperature: fc.float({ noNaN: true, noDefaultInfinity: true }).map((x) => (x === 0 ? 0 : x)),
    });
    const items = fc.oneof(
      report.map((data) => ({ kind: 'property' as const, data })),
      fc.integer({ min: 0, max: 255 }).map((errorCode) => ({ kind: 'event' as const, event: 'fault', data: { errorCode } })),
    );
    fc.assert(
      fc.property(items, fc.integer({ min: 0, max: 2 ** 31 - 1 }), (item, id) => {
        const envelope: DecodeEnvelope = {};
        expect(thermo.decode(UP, thermo.encode!(UP, { ...item, msgId: String(id) }), envelope)).toEqual([item]);
        expect(envelope.msgId).toBe(String(id));
      }),
      { numRuns: 200, seed: 42 },
    );
  });

  it('answers any bytes with items or a WanwuError, nothing else', () => {
    fc.assert(
      fc.property(fc.oneof(fc.uint8Array({ maxLength: 24 }), fc.uint8Array({ minLength: 11, maxLength: 11 }).map((b) => Uint8Array.of(0, ...b))), (frame) => {
        try {
          thermo.decode(UP, Buffer.from(frame), {});
        } catch (err) {
          expect(err).toBeInstanceOf(WanwuError);
        }
      }),
      { numRuns: 200, seed: 3 },
    );
  });
});

describe('what a script is given', () => {
  it('passes bytes as a plain array, fPort and variables from product.json, recvTime as a Date; variables are frozen', () => {
    const echo = fixture('tts-echo.js', { fPort: 10, variables: { site: 'field 7' } });
    const first = echo.decode(UP, bytes(1, 2, 255), {});
    expect(first).toEqual([
      { kind: 'property', data: { bytes: [1, 2, 255], isArray: true, fPort: 10, recvTimeIsDate: true, site: 'field 7', variablesMutated: 'no', calls: 1 } },
    ]);
    // The context lives as long as the product: state carries over between calls.
    expect(echo.decode(UP, bytes(), {})[0]!.data).toMatchObject({ bytes: [], site: 'field 7', calls: 2 });
    // Defaults: fPort 1, no variables.
    expect(fixture('tts-echo.js').decode(UP, bytes(0), {})[0]!.data).toMatchObject({ fPort: 1, calls: 1 });
  });
});

describe('sandbox: a script cannot reach the host', () => {
  const escape = fixture('escape.js');
  const run = (n: number, codec: Codec = escape) => codec.decode(UP, bytes(n), {})[0]!.data.result as string;

  it('sees no require, process, Buffer, timers, fetch, Atomics, WebAssembly or weak references', () => {
    const seen = Object.fromEntries(run(1).split(',').map((pair) => pair.split('=')));
    expect(Object.keys(seen)).toHaveLength(21);
    for (const [name, type] of Object.entries(seen)) expect({ name, type }).toEqual({ name, type: 'undefined' });
  });

  it.each([
    [2, 'this.constructor.constructor("return process")()'],
    [3, 'Function("return this")()'],
    [4, 'eval'],
    [5, 'the AsyncFunction constructor'],
    [6, 'the GeneratorFunction constructor'],
    [7, "the input object's constructor chain"],
    [8, "the byte array's constructor chain"],
    [9, "recvTime's constructor chain"],
    [10, 'Reflect.construct(Function, ...)'],
  ])('cannot generate code: attempt %i, %s', (n) => {
    expect(run(n)).toBe('EvalError: Code generation from strings disallowed for this context');
  });

  it("gets no host this-value or function from Error.prepareStackTrace's call sites", () => {
    expect(run(11)).toBe('frames>0=true stack=formatted leaks=[]');
  });

  it("reaches only its own realm through the global object's prototype chain", () => {
    expect(run(12)).toBe('clean=true ');
  });

  it('has globals of its own, per product, and none of the host', () => {
    const other = fixture('escape.js');
    expect(run(13)).toBe('marked');
    expect(run(14)).toBe('marker=string');
    expect(run(14, other)).toBe('marker=undefined');
    expect((globalThis as Record<string, unknown>).marker).toBeUndefined();
  });

  it('may call console.log (no output, no error)', () => {
    expect(run(15)).toBe('console ok');
  });

  it('is given objects of its own realm only', () => {
    expect(run(16)).toBe('foreign=false false false false');
  });

  it('gets descriptors and key lists of its global object made in its own realm', () => {
    expect(run(17)).toBe('foreign=[]');
  });

  it('is refused at load when it uses import()', () => {
    const err = errorOf(() => fixture('uses-import.js'));
    expect(err.code).toBe('WANWU_ERR_PRODUCT');
    expect(err.message).toBe(`${path.join(FIXTURES, 'uses-import.js')}:3: "import" is not allowed in a codec script (modules cannot be loaded; rename the identifier or reword the comment)`);
    expect(err.detail).toEqual({ file: path.join(FIXTURES, 'uses-import.js'), line: 3 });
  });
});

describe('sandbox: faults in a script', () => {
  const faults = fixture('faults.js', { timeoutMs: 100 });
  const decode = (...b: number[]) => faults.decode(UP, Buffer.from(b), {});
  const fault = (...b: number[]) => errorOf(() => decode(...b));

  it('stops an endless loop within its budget, and the next call works', () => {
    const quick = fixture('faults.js', { timeoutMs: 50 });
    const soil = soilProduct();
    const start = performance.now();
    const err = errorOf(() => quick.decode(UP, bytes(0x01), {}));
    const elapsed = performance.now() - start;
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe('faults.js: decodeUplink was stopped after its 50 ms budget');
    expect(err.detail).toEqual({ script: 'faults.js', function: 'decodeUplink', reason: 'timeout' });
    expect(elapsed).toBeGreaterThanOrEqual(45);
    expect(elapsed).toBeLessThan(1500); // the wall-time cap is 1 s; CPU time decides sooner unless the machine is starved
    // The sandbox was restarted: this script and every other product's are loaded again on demand.
    expect(quick.decode(UP, bytes(0x20, 0), {})).toEqual([{ kind: 'property', data: { first: 0x20, length: 2 } }]);
    expect(soil.codec.decode(UP, hex('0200b400c8'), {})).toEqual([{ kind: 'event', event: 'dryAlarm', data: { soilMoisture: 18, threshold: 20 } }]);
  });

  it.each([
    [0x0a, 'a promise chain that never ends'],
    [0x0c, 'a result whose proxy traps never return'],
    [0x0f, 'a script that eats memory'],
  ])('stops %i, %s', (n) => {
    expect(fault(n).detail).toMatchObject({ reason: 'timeout' });
    expect(decode(0x21)).toEqual([{ kind: 'property', data: { first: 0x21, length: 1 } }]);
  });

  it('lets a finite loop finish within the budget', () => {
    expect(decode(0x17)).toEqual([{ kind: 'property', data: { x: 499999500000 } }]);
  });

  it('reports an exception with its type, message and line', () => {
    const err = fault(0x02);
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    expect(err.message).toBe("faults.js:12: decodeUplink threw TypeError: Cannot read properties of undefined (reading 'value')");
    expect(err.detail).toEqual({ script: 'faults.js', function: 'decodeUplink', reason: 'threw', line: 12 });
    expect(fault(0x03).message).toBe('faults.js: decodeUplink threw frame checksum mismatch');
    expect(fault(0x0d).message).toMatch(/^faults\.js:\d+: decodeUplink threw RangeError: Maximum call stack size exceeded$/);
  });

  it("refuses a payload with the script's first error", () => {
    const err = fault(0x09);
    expect(err.message).toBe('faults.js: decodeUplink: battery frame too short');
    expect(err.detail).toEqual({ script: 'faults.js', function: 'decodeUplink', reason: 'errors', errors: ['battery frame too short', 'second error'] });
  });

  it.each([
    [0x04, 'faults.js: decodeUplink returned 42; expected an object'],
    [0x05, 'faults.js: decodeUplink returned data = [1,2,3]; expected an object of identifier: value'],
    [0x06, 'faults.js: decodeUplink returned data.x is NaN'],
    [0x07, 'faults.js: decodeUplink returned data that is not JSON data (Do not know how to serialize a BigInt)'],
    [0x08, /^faults\.js: decodeUplink returned data that is not JSON data \(Converting circular structure to JSON/],
    [0x0e, 'faults.js: decodeUplink returned data that is not JSON data (Code generation from strings disallowed for this context)'],
    [0x10, 'faults.js: decodeUplink returned data with the reserved key "__proto__"'],
    [0x13, 'faults.js: decodeUplink returned no data'],
    [0x14, 'faults.js: decodeUplink returned errors = "oops"; expected an array'],
    [0x15, 'faults.js: decodeUplink returned time = "yesterday"; expected ms since the epoch'],
    [0x16, 'faults.js: decodeUplink returned event = 42; expected an event identifier'],
  ])('refuses a result it cannot use (case %i)', (n, message) => {
    const err = fault(n);
    expect(err.code).toBe('WANWU_ERR_MALFORMED');
    if (typeof message === 'string') expect(err.message).toBe(message);
    else expect(err.message).toMatch(message);
    expect(err.detail).toMatchObject({ reason: 'shape' });
  });

  it('survives an unhandled rejection inside the script', () => {
    expect(decode(0x0b)).toEqual([{ kind: 'property', data: { x: 11 } }]);
    expect(decode(0x0b)).toEqual([{ kind: 'property', data: { x: 11 } }]);
  });

  it('reads `event` and `time` (a number or a Date) beside data; drops undefined members', () => {
    expect(decode(0x11)).toEqual([{ kind: 'event', event: 'tamper', ts: 1700000000000, data: {} }]);
    expect(decode(0x12)).toEqual([{ kind: 'event', event: 'tamper', ts: 1700000000123, data: { level: 3 } }]);
  });

  it('checks what encodeDownlink returns', () => {
    const encode = (data: Record<string, unknown>) => faults.encode!(UP, { kind: 'property', data });
    expect(encode({ value: 0x1ff }).toString('hex')).toBe('ff');
    expect(encode({ fault: 'typed' }).toString('hex')).toBe('0102ff');
    const cases: Array<[string, string]> = [
      ['errors', 'faults.js: encodeDownlink: cannot encode that'],
      ['range', 'faults.js: encodeDownlink returned bytes[1] = 256; expected an integer 0..255'],
      ['negative', 'faults.js: encodeDownlink returned bytes[0] = -1; expected an integer 0..255'],
      ['fraction', 'faults.js: encodeDownlink returned bytes[0] = 1.5; expected an integer 0..255'],
      ['text', 'faults.js: encodeDownlink returned bytes[0] = "a"; expected an integer 0..255'],
      ['not-array', 'faults.js: encodeDownlink returned bytes = "abc"; expected an array of bytes'],
      ['none', 'faults.js: encodeDownlink returned 7; expected {bytes: [...]}'],
    ];
    for (const [name, message] of cases) {
      const err = errorOf(() => encode({ fault: name }));
      expect({ name, code: err.code, message: err.message }).toEqual({ name, code: 'WANWU_ERR_INVALID', message });
    }
    expect(errorOf(() => encode({ fault: 'throw' })).message).toMatch(/^faults\.js:\d+: encodeDownlink threw RangeError: no room for throw$/);
    expect(errorOf(() => encode({ fault: 'loop' })).detail).toMatchObject({ reason: 'timeout', function: 'encodeDownlink' });
  });

  it('cannot encode without encodeDownlink', () => {
    const err = errorOf(() => fixture('tts-echo.js').encode!(UP, { kind: 'property', data: { x: 1 } }));
    expect(err.code).toBe('WANWU_ERR_INVALID');
    expect(err.message).toBe('tts-echo.js defines no encodeDownlink, so Fixture cannot encode');
  });
});

describe('load errors name the file and line', () => {
  const file = (name: string) => path.join(FIXTURES, name);

  it.each([
    ['syntax-error.js', `${file('syntax-error.js')}:4: SyntaxError: Unexpected token '}'`],
    ['top-level-throw.js', `${file('top-level-throw.js')}:2: ReferenceError: buildTable is not defined`],
    ['no-functions.js', `${file('no-functions.js')}: defines neither decodeUplink(input) (ChirpStack, The Things Stack) nor rawDataToProtocol(bytes) (Alibaba IoT)`],
    ['both-styles.js', `${file('both-styles.js')}: defines both decodeUplink (ChirpStack, The Things Stack) and rawDataToProtocol (Alibaba IoT); keep one`],
    ['top-level-loop.js', `${file('top-level-loop.js')}: the top level was stopped after 1000 ms`],
  ])('%s', (name, message) => {
    const err = errorOf(() => fixture(name));
    expect(err.code).toBe('WANWU_ERR_PRODUCT');
    expect(err.message).toBe(message);
    expect(err.detail).toMatchObject({ file: file(name) });
  });

  it.each([
    [{ file: 'nope.js' }, `codec.file: cannot read ${path.join(FIXTURES, 'nope.js')} (no such file)`],
    [{ file: '../scripts/escape.js' }, 'codec.file: "../scripts/escape.js" must name a file inside the product\'s folder'],
    [{ file: '/etc/hostname' }, 'codec.file: "/etc/hostname" must name a file inside the product\'s folder'],
    [{ file: 'escape.js', timeoutMs: 0 }, 'codec.timeoutMs: 0 is below 1'],
    [{ file: 'escape.js', fPort: 256 }, 'codec.fPort: 256 is above 255'],
    [{ file: 'escape.js', variables: [] }, 'codec.variables: expected an object, got []'],
    [{ file: 'escape.js', language: 'lua' }, 'codec.language: unknown key (allowed: type, file, timeoutMs, fPort, variables)'],
    [{}, 'codec.file: missing (expected a non-empty string)'],
  ])('product.json codec options %j', (options, message) => {
    const err = errorOf(() =>
      scriptCodecFromJson(
        { type: 'script', ...options },
        { productKey: 'Fixture', model: null, reader: new DefinitionReader('devices/Fixture/product.json'), path: 'codec', dir: FIXTURES },
      ),
    );
    expect(err.code).toBe('WANWU_ERR_PRODUCT');
    expect(err.message).toBe(`devices/Fixture/product.json: ${message}`);
  });
});
