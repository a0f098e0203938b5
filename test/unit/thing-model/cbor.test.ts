// The `cbor` codec (src/thing-model/codecs/cbor.ts): one CBOR map per up_raw payload, integer or
// text keys mapped to TSL identifiers. Byte fixtures are annotated item by item (RFC 8949 §3).
import { Encoder } from 'cbor-x';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { decodeUplink, type DecodeEnvelope } from '../../../src/thing-model/index.js';
import type { UplinkRoute } from '../../../src/types.js';
import { arbitraryItem } from '../../helpers/tsl-arbitrary.js';
import { errorOf } from '../../helpers/index.js';

const UP: UplinkRoute = { type: 'up-raw' };
const jsonEncoder = new Encoder({ useRecords: false });
const hex = (s: string) => Buffer.from(s.replace(/\s+/g, ''), 'hex');

const model = {
  properties: [
    { identifier: 'soilMoisture', name: '含水率', accessMode: 'r', dataType: { type: 'float', specs: { min: '0', max: '100' } } },
    { identifier: 'soilTemperature', name: '温度', accessMode: 'r', dataType: { type: 'float', specs: { min: '-40', max: '85' } } },
    { identifier: 'count', name: '计数', accessMode: 'r', dataType: { type: 'int', specs: { min: '0', max: '100000' } } },
    { identifier: 'flag', name: '标志', accessMode: 'r', dataType: { type: 'bool', specs: { '0': 'off', '1': 'on' } } },
    { identifier: 'mode', name: '模式', accessMode: 'rw', dataType: { type: 'enum', specs: { '0': 'eco', '1': 'normal', '2': 'boost' } } },
    { identifier: 'label', name: '标签', accessMode: 'r', dataType: { type: 'text', specs: { length: '16' } } },
    { identifier: 'seenAt', name: '时间', accessMode: 'r', dataType: { type: 'date', specs: {} } },
    { identifier: 'ratio', name: '比例', accessMode: 'r', dataType: { type: 'double', specs: { min: '-1e6', max: '1e6' } } },
    {
      identifier: 'pos',
      name: '位置',
      accessMode: 'r',
      dataType: {
        type: 'struct',
        specs: [
          { identifier: 'lat', name: '纬度', dataType: { type: 'double', specs: { min: '-90', max: '90' } } },
          { identifier: 'lon', name: '经度', dataType: { type: 'double', specs: { min: '-180', max: '180' } } },
        ],
      },
    },
    { identifier: 'samples', name: '采样', accessMode: 'r', dataType: { type: 'array', specs: { size: '4', item: { type: 'int' } } } },
  ],
  events: [
    { identifier: 'lowBattery', name: '低电量', type: 'alert', outputData: [{ identifier: 'level', name: '电量', dataType: { type: 'int', specs: { min: '0', max: '100' } } }] },
  ],
  services: [],
};

function product(codec: Record<string, unknown>): Product {
  return createProduct({ dir: 'devices/CborFixture', product: { productKey: 'CborFixture', name: 'CBOR fixture', rat: 'nb-iot', codec }, model });
}

const MAP = { '1': 'soilMoisture', '2': 'count', '3': 'flag', '0': '$event', '9': '$time' };
const mapped = product({ type: 'cbor', map: MAP });
const unmapped = product({ type: 'cbor' });

describe('cbor codec: decode', () => {
  it('reads integer keys through the map, with a device time', () => {
    const payload = hex(
      'a3' + //                  map of 3 pairs
        '01' + //                key 1 -> soilMoisture
        'fb4045400000000000' + // float64 42.5
        '02' + //                key 2 -> count
        '182a' + //              uint8 42
        '09' + //                key 9 -> $time
        '1b0000018bcfe56800', // uint64 1700000000000 (ms)
    );
    expect(decodeUplink(mapped, UP, payload)).toEqual({ ok: true, items: [{ kind: 'property', ts: 1700000000000, data: { soilMoisture: 42.5, count: 42 } }] });
  });

  it('decodes the example of devices/README.md', () => {
    const readme = product({ type: 'cbor', map: { '1': 'soilMoisture', '2': 'soilTemperature', '0': '$event', '9': '$time' } });
    const payload = hex('a3 01 fb4045400000000000 02 182a 09 1b0000018bcfe56800');
    expect(decodeUplink(readme, UP, payload)).toEqual({ ok: true, items: [{ kind: 'property', ts: 1700000000000, data: { soilMoisture: 42.5, soilTemperature: 42 } }] });
  });

  it('reads an event by its $event key', () => {
    const payload = hex(
      'a2' + //                    map of 2 pairs
        '00' + //                  key 0 -> $event
        '6a6c6f7742617474657279' + // text(10) "lowBattery"
        '656c6576656c' + //        text(5) "level" (no map entry: the identifier itself)
        '09', //                   uint 9
    );
    expect(decodeUplink(mapped, UP, payload)).toEqual({ ok: true, items: [{ kind: 'event', event: 'lowBattery', data: { level: 9 } }] });
  });

  it('reads text keys as identifiers, maps as structs and arrays as arrays', () => {
    const payload = hex(
      'a3' + //                    map of 3 pairs
        '656c6162656c 626f6b' + //  "label": "ok"
        '63706f73 a2' + //          "pos": map of 2 pairs
        '636c6174 fb4043f33333333333' + // "lat": 39.9
        '636c6f6e fb405d19999999999a' + // "lon": 116.4
        '6773616d706c6573 820102', //      "samples": [1, 2]
    );
    expect(unmapped.codec.decode(UP, payload, {})).toEqual([{ kind: 'property', data: { label: 'ok', pos: { lat: 39.9, lon: 116.4 }, samples: [1, 2] } }]);
  });

  it('turns a tag 1 date into ms since the epoch and reads $time as a text key without a map', () => {
    const payload = hex(
      'a2' + //                  map of 2 pairs
        '667365656e4174' + //    text(6) "seenAt"  (no map entry: the identifier itself)
        'c11a6553f100' + //      tag 1 (epoch seconds) 1700000000 -> 1700000000000 ms
        '652474696d65' + //      text(5) "$time"
        'c11a6553f100', //       tag 1 again
    );
    expect(unmapped.codec.decode(UP, payload, {})).toEqual([{ kind: 'property', ts: 1700000000000, data: { seenAt: 1700000000000 } }]);
  });

  it.each([
    ['', 'WANWU_ERR_MALFORMED', /^payload is not one CBOR item \(Unexpected end of CBOR data\)$/],
    ['a201', 'WANWU_ERR_MALFORMED', /^payload is not one CBOR item/], //        map of 2, cut after the first key
    ['a10102 00', 'WANWU_ERR_MALFORMED', /^payload is not one CBOR item/], //   a map, then a trailing byte
    ['820102', 'WANWU_ERR_MALFORMED', /^payload must be a CBOR map, got an array$/], // [1, 2]
    ['a0', 'WANWU_ERR_MALFORMED', /^the map holds no properties$/], //         {}
    ['a1 05 01', 'WANWU_ERR_UNKNOWN_IDENTIFIER', /^CBOR key 5 is not in the codec's map$/], // key 5 unmapped
    ['a1 40 01', 'WANWU_ERR_MALFORMED', /^map key a byte string of 0 bytes: keys must be integers or text$/],
    ['a1 01 43010203', 'WANWU_ERR_MALFORMED', /^soilMoisture: a byte string of 3 bytes has no TSL type$/], // bytes(3)
    ['a1 01 f97e00', 'WANWU_ERR_MALFORMED', /^soilMoisture: NaN is not a finite number$/], // half-float NaN
    ['a1 01 f7', 'WANWU_ERR_MALFORMED', /^soilMoisture: undefined has no TSL type$/], //  simple(23) undefined
    ['a1 01 d9010282 0102', 'WANWU_ERR_MALFORMED', /^soilMoisture: a Set \(CBOR tag\) has no TSL type$/], // tag 258 set
    ['a1 01 1b0020000000000001', 'WANWU_ERR_INVALID', /^soilMoisture: 9007199254740993 does not fit a JavaScript number \(2\^53\)$/],
    ['a1 00 01', 'WANWU_ERR_MALFORMED', /^\$event: expected an event identifier, got 1$/],
    ['a1 09 20', 'WANWU_ERR_MALFORMED', /^\$time: expected ms since the epoch, got -1$/],
    ['a2 01 01 6c736f696c4d6f6973747572 65 02', 'WANWU_ERR_MALFORMED', /^soilMoisture: given twice$/], // key 1 and "soilMoisture"
    ['a1 69 5f5f70726f746f5f5f 01', 'WANWU_ERR_MALFORMED', /^map key "__proto__" is reserved$/],
  ])('refuses %s with %s', (bytes, code, message) => {
    const err = errorOf(() => mapped.codec.decode(UP, hex(bytes), {}));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });

  it('reads Alink JSON posts as Alink JSON', () => {
    const envelope: DecodeEnvelope = {};
    const post = Buffer.from(JSON.stringify({ id: '5', version: '1.0', method: 'thing.event.property.post', params: { count: 3 } }));
    expect(mapped.codec.decode({ type: 'property-post' }, post, envelope)).toEqual([{ kind: 'property', data: { count: 3 } }]);
    expect(envelope.msgId).toBe('5');
  });

  it('answers any bytes with items or a WanwuError, nothing else', () => {
    const cborish = fc.oneof(
      fc.uint8Array({ maxLength: 48 }),
      // Map headers with random content, so that decoding gets past the first byte.
      fc.tuple(fc.integer({ min: 0xa0, max: 0xbf }), fc.uint8Array({ maxLength: 40 })).map(([h, rest]) => Uint8Array.of(h, ...rest)),
      // Well-formed CBOR of random JSON-like values (objects become maps with text keys).
      fc.jsonValue().map((v) => Uint8Array.from(jsonEncoder.encode(v))),
    );
    fc.assert(
      fc.property(cborish, (bytes) => {
        for (const p of [mapped, unmapped]) {
          const r = decodeUplink(p, UP, Buffer.from(bytes));
          if (!r.ok) expect(r.error).toBeInstanceOf(WanwuError);
        }
      }),
      { numRuns: 500, seed: 11 },
    );
  });
});

describe('cbor codec: encode', () => {
  it('writes mapped identifiers as integer keys and the rest as text', () => {
    const bytes = mapped.codec.encode!(UP, { kind: 'property', ts: 1700000000000, data: { soilMoisture: 42.5, count: 42 } });
    // a3 | 09 -> $time first | 01 fb 42.5 | 02 18 2a
    expect(bytes.toString('hex')).toBe('a3' + '09fb4278bcfe56800000' + '01fb4045400000000000' + '02182a');
    expect(mapped.codec.encode!(UP, { kind: 'event', event: 'lowBattery', data: { level: 9 } }).toString('hex')).toBe('a2006a6c6f7742617474657279656c6576656c09');
  });

  it('round-trips random model-valid items: decode(encode(item)) = item, valid', () => {
    const p = mapped;
    fc.assert(
      fc.property(arbitraryItem(p.model!), (item) => {
        for (const codec of [mapped.codec, unmapped.codec]) {
          const bytes = codec.encode!(UP, item);
          expect(decodeUplink(p, UP, bytes)).toEqual({ ok: true, items: [item] });
        }
      }),
      { numRuns: 300, seed: 20261121 },
    );
  });
});

describe('cbor codec: product.json', () => {
  it.each([
    [{ type: 'cbor', map: { '1': 'nope' } }, 'codec.map.1: "nope" is not a property or event output in model.json'],
    [{ type: 'cbor', map: { '1': 'count', '2': 'count' } }, 'codec.map.2: "count" is already the target of key "1"'],
    [{ type: 'cbor', map: { '1': 'a b' } }, 'codec.map.1: "a b" is not an identifier (letters, digits, _), "$event" or "$time"'],
    [{ type: 'cbor', map: [] }, 'codec.map: expected an object, got []'],
    [{ type: 'cbor', keys: {} }, 'codec.keys: unknown key (allowed: type, map)'],
  ])('refuses %j', (codec, message) => {
    const err = errorOf(() => product(codec));
    expect(err.code).toBe('WANWU_ERR_PRODUCT');
    expect(err.message).toBe(`devices/CborFixture/product.json: ${message}`);
  });
});
