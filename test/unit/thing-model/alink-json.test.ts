import { describe, expect, it } from 'vitest';
import { createProduct } from '../../../src/registry/index.js';
import { decodeUplink, type DecodeResult } from '../../../src/thing-model/index.js';
import type { UplinkRoute } from '../../../src/types.js';

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
