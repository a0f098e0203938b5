import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, loadRegistry } from '../../../src/registry/index.js';
import { alinkMethod, decodeUplink, type DecodedItem, type DecodeResult, type EncodeInput } from '../../../src/thing-model/index.js';
import type { UplinkRoute } from '../../../src/types.js';
import { arbitraryItem } from '../../helpers/tsl-arbitrary.js';

// No model: these tests are about the codec alone (validation has its own file).
const product = createProduct({ dir: 'devices/JsonDev', product: { productKey: 'JsonDev', name: 'JSON 设备', rat: 'cat1', codec: { type: 'alink-json' } } });
const propertyPost: UplinkRoute = { type: 'property-post' };
const lowBattery: UplinkRoute = { type: 'event-post', eventId: 'lowBattery' };

function decode(route: UplinkRoute, payload: unknown): DecodeResult {
  return decodeUplink(product, route, Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)));
}

function failure(result: DecodeResult) {
  if (result.ok) throw new Error(`expected a failure, got ${JSON.stringify(result)}`);
  return { code: result.error.code, message: result.error.message, msgId: result.msgId, method: result.method };
}

describe('alink-json: property post', () => {
  it('takes plain values into one item without a device time', () => {
    const r = decode(propertyPost, { id: '123', version: '1.0', params: { temperature: 23.5, status: 1 }, method: 'thing.event.property.post', sys: { ack: 1 } });
    expect(r).toEqual({ ok: true, msgId: '123', method: 'thing.event.property.post', items: [{ kind: 'property', data: { temperature: 23.5, status: 1 } }] });
    expect(r.ok && r.items[0]!.ts).toBeUndefined();
  });

  it('unwraps {value, time} and uses the time', () => {
    const r = decode(propertyPost, { id: '1', params: { temperature: { value: 23.5, time: 1700000000000 } } });
    expect(r).toEqual({ ok: true, msgId: '1', method: 'thing.event.property.post', items: [{ kind: 'property', ts: 1700000000000, data: { temperature: 23.5 } }] });
  });

  it('splits params into one item per distinct time, untimed values in their own item, in order of appearance', () => {
    const r = decode(propertyPost, {
      id: '2',
      params: {
        temperature: { value: 20.1, time: 1700000000000 },
        status: 0,
        humidity: { value: 40, time: 1700000060000 },
        pressure: { value: 101.3, time: 1700000000000 },
        vibration: { value: 0.5 }, // a wrapper without time: untimed
      },
    });
    expect(r.ok && r.items).toEqual([
      { kind: 'property', ts: 1700000000000, data: { temperature: 20.1, pressure: 101.3 } },
      { kind: 'property', data: { status: 0, vibration: 0.5 } },
      { kind: 'property', ts: 1700000060000, data: { humidity: 40 } },
    ]);
  });

  it('accepts a time written as a string of digits', () => {
    const r = decode(propertyPost, { id: '3', params: { temperature: { value: 1, time: '1700000000000' } } });
    expect(r.ok && r.items[0]!.ts).toBe(1700000000000);
  });

  it('takes an object that is not exactly {value, time} as the value itself (a struct)', () => {
    const r = decode(propertyPost, { id: '4', params: { location: { value: 1, unit: 'm' } } });
    expect(r.ok && r.items).toEqual([{ kind: 'property', data: { location: { value: 1, unit: 'm' } } }]);
  });

  it('normalizes a numeric id to a string', () => {
    const r = decode(propertyPost, { id: 42, params: { temperature: 1 } });
    expect(r.ok && r.msgId).toBe('42');
  });

  it('reports the topic method when the payload has none', () => {
    const r = decode(propertyPost, { id: '5', params: { temperature: 1 } });
    expect(r.ok && r.method).toBe('thing.event.property.post');
  });

  it('refuses a method that does not match the topic, echoing id and method', () => {
    expect(failure(decode(propertyPost, { id: '6', method: 'thing.event.lowBattery.post', params: { temperature: 1 } }))).toEqual({
      code: 'WANWU_ERR_METHOD',
      message: 'method "thing.event.lowBattery.post" does not match the topic (expected "thing.event.property.post")',
      msgId: '6',
      method: 'thing.event.lowBattery.post',
    });
    expect(failure(decode(propertyPost, { id: '7', method: 5, params: {} })).code).toBe('WANWU_ERR_METHOD');
  });

  it('refuses a bad time', () => {
    expect(failure(decode(propertyPost, { id: '8', params: { temperature: { value: 1, time: 'yesterday' } } }))).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'params.temperature.time: expected ms since the epoch, got "yesterday"',
      msgId: '8',
      method: 'thing.event.property.post',
    });
    expect(failure(decode(propertyPost, { id: '9', params: { temperature: { value: 1, time: -5 } } })).code).toBe('WANWU_ERR_MALFORMED');
  });
});

describe('alink-json: event post', () => {
  it('makes one event item from params.value and params.time', () => {
    const r = decode(lowBattery, { id: '10', version: '1.0', params: { value: { batteryLevel: 9 }, time: 1700000000000 }, method: 'thing.event.lowBattery.post' });
    expect(r).toEqual({
      ok: true,
      msgId: '10',
      method: 'thing.event.lowBattery.post',
      items: [{ kind: 'event', event: 'lowBattery', ts: 1700000000000, data: { batteryLevel: 9 } }],
    });
  });

  it('accepts an event without time and with empty output data', () => {
    const r = decode(lowBattery, { id: '11', params: { value: {} } });
    expect(r.ok && r.items).toEqual([{ kind: 'event', event: 'lowBattery', data: {} }]);
  });

  it('refuses the property method on an event topic', () => {
    const f = failure(decode(lowBattery, { id: '12', method: 'thing.event.property.post', params: { value: {} } }));
    expect(f.code).toBe('WANWU_ERR_METHOD');
    expect(f.message).toBe('method "thing.event.property.post" does not match the topic (expected "thing.event.lowBattery.post")');
  });

  it('refuses params without an object value', () => {
    expect(failure(decode(lowBattery, { id: '13', params: { batteryLevel: 9 } }))).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'params.value: expected an object of output data, got nothing',
      msgId: '13',
      method: 'thing.event.lowBattery.post',
    });
  });
});

describe('alink-json: malformed payloads', () => {
  const cases: Array<[string, unknown, string, string | undefined]> = [
    ['a JSON array', [1, 2], 'payload must be an Alink JSON object, got [1,2]', undefined],
    ['a JSON number', 5, 'payload must be an Alink JSON object, got 5', undefined],
    ['no id', { params: { a: 1 } }, 'id: expected a string or number, got nothing', undefined],
    ['an object id', { id: { n: 1 }, params: { a: 1 } }, 'id: expected a string or number, got {"n":1}', undefined],
    ['no params', { id: '1' }, 'params: expected an object, got nothing', '1'],
    ['array params', { id: '1', params: [1] }, 'params: expected an object, got [1]', '1'],
    ['null params', { id: '1', params: null }, 'params: expected an object, got null', '1'],
    ['empty params', { id: '1', params: {} }, 'params: no properties', '1'],
  ];
  for (const [name, payload, message, msgId] of cases) {
    it(`refuses ${name}`, () => {
      const f = failure(decode(propertyPost, payload));
      expect(f).toEqual({ code: 'WANWU_ERR_MALFORMED', message, msgId, method: 'thing.event.property.post' });
    });
  }

  it('refuses bytes that are not JSON, without an id', () => {
    const f = failure(decode(propertyPost, '{"id":"1","params":{'));
    expect(f.code).toBe('WANWU_ERR_MALFORMED');
    expect(f.message).toMatch(/^payload is not JSON \(/);
    expect(f.msgId).toBeUndefined();
  });

  it('refuses a __proto__ key instead of replacing the prototype of the data object', () => {
    const f = failure(decode(propertyPost, '{"id":"1","params":{"__proto__":{"polluted":1}}}'));
    expect(f).toMatchObject({ code: 'WANWU_ERR_MALFORMED', message: 'params.__proto__: reserved key' });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });

  it('refuses up_raw for an alink-json product', () => {
    const f = failure(decodeUplink(product, { type: 'up-raw' }, Buffer.from([1, 2, 3])));
    expect(f.code).toBe('WANWU_ERR_TOPIC');
    expect(f.message).toBe(
      'product JsonDev uses the alink-json codec; thing/model/up_raw needs a binary codec (post Alink JSON to thing/event/property/post instead)',
    );
  });
});

const packPost: UplinkRoute = { type: 'pack-post' };
const batchPost: UplinkRoute = { type: 'batch-post' };

describe('alink-json: batched posts (pack/post and batch/post)', () => {
  it('makes property items grouped by time, then one event item per sample, replying with the pack method', () => {
    const r = decode(packPost, {
      id: '20',
      version: '1.0',
      sys: { ack: 0 },
      params: {
        properties: {
          temperature: { value: 23.5, time: 1700000000000 },
          humidity: [
            { value: 40, time: 1700000000000 },
            { value: 41, time: 1700000060000 },
          ],
          status: { value: 1 },
        },
        events: {
          lowBattery: { value: { batteryLevel: 9 }, time: 1700000000500 },
          overTemperature: [
            { value: { temperature: 80 }, time: '1700000001000' },
            { value: { temperature: 85 } },
          ],
        },
      },
      method: 'thing.event.property.pack.post',
    });
    expect(r).toEqual({
      ok: true,
      msgId: '20',
      method: 'thing.event.property.pack.post',
      items: [
        { kind: 'property', ts: 1700000000000, data: { temperature: 23.5, humidity: 40 } },
        { kind: 'property', ts: 1700000060000, data: { humidity: 41 } },
        { kind: 'property', data: { status: 1 } },
        { kind: 'event', event: 'lowBattery', ts: 1700000000500, data: { batteryLevel: 9 } },
        { kind: 'event', event: 'overTemperature', ts: 1700000001000, data: { temperature: 80 } },
        { kind: 'event', event: 'overTemperature', data: { temperature: 85 } },
      ],
    });
  });

  it('keeps two samples of one property at the same time as two items instead of overwriting', () => {
    const r = decode(batchPost, {
      id: '21',
      params: { properties: { status: [{ value: 0, time: 1700000000000 }, { value: 1, time: 1700000000000 }], temperature: [{ value: 1, time: 1700000000000 }] } },
      method: 'thing.event.property.batch.post',
    });
    expect(r.ok && r.items).toEqual([
      { kind: 'property', ts: 1700000000000, data: { status: 0 } },
      { kind: 'property', ts: 1700000000000, data: { status: 1, temperature: 1 } },
    ]);
    expect(r.ok && r.method).toBe('thing.event.property.batch.post');
  });

  it('accepts properties only, events only, and an empty subDevices list', () => {
    expect(decode(packPost, { id: '22', params: { properties: { a: { value: 1, time: 5 } } } })).toMatchObject({ ok: true, items: [{ kind: 'property', ts: 5, data: { a: 1 } }] });
    expect(decode(packPost, { id: '23', params: { events: { e: { value: {} } }, subDevices: [] } })).toMatchObject({ ok: true, items: [{ kind: 'event', event: 'e', data: {} }] });
  });

  it('refuses the property-post method on the pack topic', () => {
    expect(failure(decode(packPost, { id: '24', method: 'thing.event.property.post', params: { properties: {} } }))).toEqual({
      code: 'WANWU_ERR_METHOD',
      message: 'method "thing.event.property.post" does not match the topic (expected "thing.event.property.pack.post")',
      msgId: '24',
      method: 'thing.event.property.post',
    });
  });

  const cases: Array<[string, unknown, string]> = [
    [
      'sub-device data',
      { subDevices: [{ identity: { productKey: 'a1Sub', deviceName: 's1' }, properties: { a: { value: 1, time: 1 } } }] },
      'params.subDevices: sub-device data is not supported (Wanwu has no gateway sub-devices; each device posts its own data on its own connection)',
    ],
    ['subDevices that are not a list', { subDevices: {} }, 'params.subDevices: sub-device data is not supported (Wanwu has no gateway sub-devices; each device posts its own data on its own connection)'],
    ['an unknown params key', { properties: { a: { value: 1 } }, extra: 1 }, 'params.extra: unknown key (a batched post carries properties, events and subDevices)'],
    ['nothing to post', { properties: {}, events: {} }, 'params: no properties or events'],
    ['properties that are an array', { properties: [{ a: 1 }] }, 'params.properties: expected an object, got [{"a":1}]'],
    ['a plain property value', { properties: { a: 1 } }, 'params.properties.a: expected {"value", "time"} or an array of them, got 1'],
    ['a sample with other keys', { properties: { a: [{ value: 1, time: 1, unit: 'm' }] } }, 'params.properties.a[0]: expected {"value", "time"}, got {"value":1,"time":1,"unit":"m"}'],
    ['a bad sample time', { properties: { a: [{ value: 1, time: 1 }, { value: 2, time: 'noon' }] } }, 'params.properties.a[1].time: expected ms since the epoch, got "noon"'],
    ['an event value that is not an object', { events: { e: [{ value: 5, time: 1 }] } }, 'params.events.e[0].value: expected an object of output data, got 5'],
    ['events that are not an object', { events: 'e' }, 'params.events: expected an object, got "e"'],
    ['a __proto__ property', JSON.parse('{"properties": {"__proto__": {"value": 1}}}'), 'params.properties.__proto__: reserved key'],
    ['a __proto__ event output', JSON.parse('{"events": {"e": {"value": {"__proto__": 1}}}}'), 'params.events.e.value.__proto__: reserved key'],
  ];
  it.each(cases)('refuses %s (WANWU_ERR_MALFORMED)', (_name, params, message) => {
    expect(failure(decode(packPost, { id: '30', params }))).toEqual({ code: 'WANWU_ERR_MALFORMED', message, msgId: '30', method: 'thing.event.property.pack.post' });
  });
});

describe('alink-json: encode', () => {
  const encode = (route: UplinkRoute, item: EncodeInput) => product.codec.encode!(route, item).toString('utf8');

  it('writes a property post with plain values, or {value, time} when the item has a time', () => {
    expect(encode(propertyPost, { kind: 'property', data: { temperature: 23.5, status: 1 }, msgId: '7' })).toBe(
      '{"id":"7","version":"1.0","params":{"temperature":23.5,"status":1},"method":"thing.event.property.post"}',
    );
    expect(encode(propertyPost, { kind: 'property', ts: 1700000000000, data: { temperature: 23.5, pos: { lat: 1 } } })).toBe(
      '{"id":"1","version":"1.0","params":{"temperature":{"value":23.5,"time":1700000000000},"pos":{"value":{"lat":1},"time":1700000000000}},"method":"thing.event.property.post"}',
    );
  });

  it('wraps an untimed struct value that looks like {value, time}, so it reads back as itself', () => {
    const item: EncodeInput = { kind: 'property', data: { reading: { value: 3 } } };
    expect(encode(propertyPost, item)).toBe('{"id":"1","version":"1.0","params":{"reading":{"value":{"value":3}}},"method":"thing.event.property.post"}');
    expect(decode(propertyPost, encode(propertyPost, item))).toMatchObject({ ok: true, items: [{ kind: 'property', data: { reading: { value: 3 } } }] });
  });

  it('writes an event post as {value, time}', () => {
    expect(encode(lowBattery, { kind: 'event', event: 'lowBattery', ts: 1700000000000, data: { batteryLevel: 9 }, msgId: '8' })).toBe(
      '{"id":"8","version":"1.0","params":{"value":{"batteryLevel":9},"time":1700000000000},"method":"thing.event.lowBattery.post"}',
    );
    expect(encode(lowBattery, { kind: 'event', event: 'lowBattery', data: {} })).toBe('{"id":"1","version":"1.0","params":{"value":{}},"method":"thing.event.lowBattery.post"}');
  });

  it('writes one sample per identifier on pack/post, and arrays of samples on batch/post', () => {
    expect(encode(packPost, { kind: 'property', ts: 5, data: { a: 1, b: 'x' } })).toBe(
      '{"id":"1","version":"1.0","params":{"properties":{"a":{"value":1,"time":5},"b":{"value":"x","time":5}}},"method":"thing.event.property.pack.post"}',
    );
    expect(encode(batchPost, { kind: 'event', event: 'e', data: { v: 1 } })).toBe(
      '{"id":"1","version":"1.0","params":{"events":{"e":[{"value":{"v":1}}]}},"method":"thing.event.property.batch.post"}',
    );
  });

  it('refuses items that do not fit the route (WANWU_ERR_INVALID) and up_raw (WANWU_ERR_TOPIC)', () => {
    const refusal = (route: UplinkRoute, item: EncodeInput) => {
      try {
        product.codec.encode!(route, item);
      } catch (err) {
        expect(err).toBeInstanceOf(WanwuError);
        return `${(err as WanwuError).code}: ${(err as WanwuError).message}`;
      }
      throw new Error('expected a refusal');
    };
    expect(refusal(propertyPost, { kind: 'event', event: 'lowBattery', data: {} })).toBe(
      'WANWU_ERR_INVALID: an event item (lowBattery) cannot be posted on thing/event/property/post',
    );
    expect(refusal(lowBattery, { kind: 'event', event: 'geofenceExit', data: {} })).toBe('WANWU_ERR_INVALID: an event item (geofenceExit) cannot be posted on thing/event/lowBattery/post');
    expect(refusal(lowBattery, { kind: 'property', data: { a: 1 } })).toBe('WANWU_ERR_INVALID: a property item cannot be posted on thing/event/lowBattery/post');
    expect(refusal(propertyPost, { kind: 'property', data: {} })).toBe('WANWU_ERR_INVALID: a property item without data cannot be posted');
    expect(refusal(packPost, { kind: 'event', data: {} })).toBe('WANWU_ERR_INVALID: an event item needs its event identifier');
    expect(refusal(propertyPost, { kind: 'property', data: { big: 1n } })).toMatch(/^WANWU_ERR_INVALID: the item cannot be written as JSON \(/);
    expect(refusal({ type: 'up-raw' }, { kind: 'property', data: { a: 1 } })).toBe(
      'WANWU_ERR_TOPIC: product JsonDev uses the alink-json codec; thing/model/up_raw needs a binary codec (post Alink JSON to thing/event/property/post instead)',
    );
  });
});

describe('alink-json: encode -> decode -> validate returns the item (sample products, random model-valid data)', () => {
  const registry = loadRegistry(fileURLToPath(new URL('../../../devices', import.meta.url)));
  for (const pk of ['TrackerCat1', 'SensorRedCap']) {
    const sample = registry.product(pk)!;
    const model = sample.model!;
    const routesFor = (item: DecodedItem): UplinkRoute[] =>
      item.kind === 'property' ? [propertyPost, packPost, batchPost] : [{ type: 'event-post', eventId: item.event! }, packPost, batchPost];

    it(`${pk}: every route a sample item can take`, () => {
      fc.assert(
        fc.property(arbitraryItem(model, { partialStructs: true }), fc.option(fc.string({ minLength: 1, maxLength: 12 }), { nil: undefined }), (item, msgId) => {
          for (const route of routesFor(item)) {
            const payload = sample.codec.encode!(route, msgId === undefined ? item : { ...item, msgId });
            const r = decodeUplink(sample, route, payload);
            expect(r).toEqual({ ok: true, msgId: msgId ?? '1', method: alinkMethod(route), items: [item] });
          }
        }),
        { seed: 42, numRuns: 100 },
      );
    });
  }
});

describe('alink-json: the decoder only ever throws WanwuError', () => {
  const registry = loadRegistry(fileURLToPath(new URL('../../../devices', import.meta.url)));
  const tracker = registry.product('TrackerCat1')!;
  const routes: UplinkRoute[] = [propertyPost, lowBattery, packPost, batchPost, { type: 'event-post', eventId: '__proto__' }];
  const route = fc.constantFrom(...routes);

  function onlyWanwuErrors(r: UplinkRoute, payload: Buffer): void {
    try {
      product.codec.decode(r, payload, {});
    } catch (err) {
      if (!(err instanceof WanwuError)) throw err;
    }
    // With a model, validation runs too; decodeUplink turns anything else into WANWU_ERR_INTERNAL.
    const result = decodeUplink(tracker, r, payload);
    if (!result.ok) expect(result.error.code).not.toBe('WANWU_ERR_INTERNAL');
  }

  it('random bytes', () => {
    fc.assert(
      fc.property(route, fc.uint8Array({ maxLength: 200 }), (r, bytes) => onlyWanwuErrors(r, Buffer.from(bytes))),
      { seed: 1, numRuns: 300 },
    );
  });

  it('random JSON values', () => {
    fc.assert(
      fc.property(route, fc.jsonValue(), (r, v) => onlyWanwuErrors(r, Buffer.from(JSON.stringify(v) ?? 'null'))),
      { seed: 2, numRuns: 300 },
    );
  });

  it('Alink-shaped messages with random params', () => {
    const sample = fc.oneof(fc.jsonValue(), fc.record({ value: fc.jsonValue(), time: fc.oneof(fc.jsonValue(), fc.nat()) }, { requiredKeys: ['value'] }));
    const ids = fc.constantFrom('longitude', 'GeoLocation', 'wifiList', 'charging', 'lowBattery', '__proto__', 'value', 'time');
    const params = fc.oneof(
      fc.jsonValue(),
      fc.dictionary(ids, sample),
      fc.record({ properties: fc.oneof(fc.jsonValue(), fc.dictionary(ids, fc.oneof(sample, fc.array(sample)))), events: fc.oneof(fc.jsonValue(), fc.dictionary(ids, fc.oneof(sample, fc.array(sample)))) }, { requiredKeys: [] }),
      fc.record({ value: fc.oneof(fc.jsonValue(), fc.dictionary(ids, fc.jsonValue())), time: fc.jsonValue() }, { requiredKeys: [] }),
    );
    const message = fc.record({ id: fc.oneof(fc.string(), fc.integer(), fc.jsonValue()), version: fc.constant('1.0'), method: fc.option(fc.string()), params }, { requiredKeys: ['params'] });
    fc.assert(
      fc.property(route, message, (r, m) => onlyWanwuErrors(r, Buffer.from(JSON.stringify(m)))),
      { seed: 3, numRuns: 300 },
    );
  });
});

describe('alink-json: the struct, array and pack payloads documented in devices/README.md', () => {
  const registry = loadRegistry(fileURLToPath(new URL('../../../devices', import.meta.url)));
  const post = (pk: string, route: UplinkRoute, message: unknown) => decodeUplink(registry.product(pk)!, route, Buffer.from(JSON.stringify(message)));

  it('TrackerCat1: GeoLocation and wifiList', () => {
    const geo = { Longitude: 116.397128, Latitude: 39.916527, Altitude: 43.5, CoordinateSystem: 2 };
    const wifi = [
      { mac: '50:2b:73:c1:08:9e', rssi: -58 },
      { mac: 'c8:3a:35:0d:11:72', rssi: -71 },
    ];
    const message = { id: '1003', version: '1.0', method: 'thing.event.property.post', params: { GeoLocation: { value: geo, time: 1700000000000 }, wifiList: wifi } };
    expect(post('TrackerCat1', propertyPost, message)).toEqual({
      ok: true,
      msgId: '1003',
      method: 'thing.event.property.post',
      items: [
        { kind: 'property', ts: 1700000000000, data: { GeoLocation: geo } },
        { kind: 'property', data: { wifiList: wifi } },
      ],
    });
    const bad = post('TrackerCat1', propertyPost, { id: '1004', params: { GeoLocation: { ...geo, CoordinateSystem: 3 } } });
    expect(!bad.ok && [bad.error.code, bad.error.alinkCode, bad.error.message]).toEqual([
      'WANWU_ERR_INVALID',
      460,
      'GeoLocation.CoordinateSystem: 3 not one of enum 1,2',
    ]);
  });

  it('SensorRedCap: vibrationSpectrum and an event in one pack post', () => {
    const spectrum = [0.12, 0.35, 1.8, 0.9, 0.41, 0.2, 0.08, 0.05];
    const message = {
      id: '2002',
      version: '1.0',
      method: 'thing.event.property.pack.post',
      params: {
        properties: {
          vibrationSpectrum: { value: spectrum, time: 1700000000000 },
          temperature: [
            { value: 81.5, time: 1700000000000 },
            { value: 82.1, time: 1700000060000 },
          ],
        },
        events: { overTemperature: { value: { temperature: 82.1, threshold: 80 }, time: 1700000060000 } },
      },
    };
    expect(post('SensorRedCap', packPost, message)).toEqual({
      ok: true,
      msgId: '2002',
      method: 'thing.event.property.pack.post',
      items: [
        { kind: 'property', ts: 1700000000000, data: { vibrationSpectrum: spectrum, temperature: 81.5 } },
        { kind: 'property', ts: 1700000060000, data: { temperature: 82.1 } },
        { kind: 'event', event: 'overTemperature', ts: 1700000060000, data: { temperature: 82.1, threshold: 80 } },
      ],
    });
    const tooLong = post('SensorRedCap', propertyPost, { id: '2003', params: { vibrationSpectrum: [...spectrum, 1, 2, 3, 4] } });
    expect(!tooLong.ok && tooLong.error.message).toBe('vibrationSpectrum: array of 12 exceeds size 8');
  });
});
