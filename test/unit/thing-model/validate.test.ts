import { readFileSync } from 'node:fs';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, loadRegistry } from '../../../src/registry/index.js';
import { decodeUplink, parseThingModel, validateItem, type DecodedItem, type ThingModel } from '../../../src/thing-model/index.js';
import { arbitraryEventData, arbitraryItem, arbitraryPropertyData, arbitraryValue } from '../../helpers/tsl-arbitrary.js';

// Spec numbers are written both ways on purpose: Alibaba exports quote them.
const model = parseThingModel(
  {
    properties: [
      { identifier: 'batteryLevel', name: '电池电量', accessMode: 'r', dataType: { type: 'int', specs: { min: '0', max: '100', step: '1', unit: '%' } } },
      { identifier: 'offsetDb', name: '偏移', accessMode: 'rw', dataType: { type: 'int', specs: {} } },
      { identifier: 'temperature', name: '温度', accessMode: 'r', dataType: { type: 'float', specs: { min: -40, max: 120 } } },
      { identifier: 'pressure', name: '气压', accessMode: 'r', dataType: { type: 'double', specs: { min: '0', max: '2000.5' } } },
      { identifier: 'charging', name: '充电状态', accessMode: 'r', dataType: { type: 'bool', specs: { '0': '否', '1': '是' } } },
      { identifier: 'valveState', name: '阀门状态', accessMode: 'r', dataType: { type: 'enum', specs: { '0': 'open', '1': 'closed', '2': 'fault' } } },
      { identifier: 'firmware', name: '固件版本', accessMode: 'r', dataType: { type: 'text', specs: { length: '32' } } },
      { identifier: 'note', name: '备注', accessMode: 'rw', dataType: { type: 'text', specs: {} } },
      { identifier: 'calibratedAt', name: '校准时间', accessMode: 'rw', dataType: { type: 'date', specs: {} } },
      {
        identifier: 'pos',
        name: '位置',
        accessMode: 'r',
        dataType: {
          type: 'struct',
          specs: [
            { identifier: 'lng', name: '经度', dataType: { type: 'double', specs: { min: '-180', max: '180' } } },
            { identifier: 'lat', name: '纬度', dataType: { type: 'double', specs: { min: '-90', max: '90' } } },
            { identifier: 'fix', name: '定位', dataType: { type: 'bool', specs: { '0': '无', '1': '有' } } },
            { identifier: 'sys', name: '坐标系', dataType: { type: 'enum', specs: { '1': 'WGS_84', '2': 'GCJ_02' } } },
            { identifier: 'at', name: '时间', dataType: { type: 'date', specs: {} } },
            { identifier: 'src', name: '来源', dataType: { type: 'text', specs: { length: '4' } } },
          ],
        },
      },
      { identifier: 'readings', name: '读数', accessMode: 'r', dataType: { type: 'array', specs: { size: '10', item: { type: 'int', specs: { min: '0', max: '1000' } } } } },
      { identifier: 'tags', name: '标签', accessMode: 'r', dataType: { type: 'array', specs: { size: '10', item: { type: 'text', specs: { length: '3' } } } } },
      { identifier: 'spectrum', name: '频谱', accessMode: 'r', dataType: { type: 'array', specs: { size: '4', item: { type: 'float' } } } },
      {
        identifier: 'wifiList',
        name: '热点',
        accessMode: 'r',
        dataType: {
          type: 'array',
          specs: {
            size: '3',
            item: {
              type: 'struct',
              specs: [
                { identifier: 'mac', name: 'MAC', dataType: { type: 'text', specs: { length: '17' } } },
                { identifier: 'rssi', name: '信号', dataType: { type: 'int', specs: { min: '-120', max: '0' } } },
              ],
            },
          },
        },
      },
      { identifier: 'totalFlow', name: '累计流量', accessMode: 'r', dataType: { type: 'int64', specs: { min: '0' } } },
    ],
    events: [
      {
        identifier: 'overTemperature',
        name: '高温告警',
        type: 'alert',
        outputData: [
          { identifier: 'temperature', name: '温度', dataType: { type: 'float', specs: { min: '-40', max: '200' } } },
          { identifier: 'threshold', name: '阈值', required: true, dataType: { type: 'float', specs: {} } },
        ],
      },
      {
        identifier: 'fenceExit',
        name: '出围栏',
        type: 'info',
        outputData: [
          { identifier: 'pos', name: '位置', dataType: { type: 'struct', specs: [{ identifier: 'lat', name: '纬度', dataType: { type: 'double', specs: { min: '-90', max: '90' } } }] } },
          { identifier: 'fences', name: '围栏', dataType: { type: 'array', specs: { size: '2', item: { type: 'int' } } } },
        ],
      },
    ],
  },
  'model.json',
);

const prop = (data: Record<string, unknown>): DecodedItem => ({ kind: 'property', data });
const valid = (data: Record<string, unknown>) => validateItem(model, 'SensorX', prop(data));

function refusal(data: Record<string, unknown>, item?: DecodedItem) {
  try {
    validateItem(model, 'SensorX', item ?? prop(data));
  } catch (err) {
    expect(err).toBeInstanceOf(WanwuError);
    const e = err as WanwuError;
    return { code: e.code, message: e.message, detail: e.detail };
  }
  throw new Error('expected a refusal');
}

describe('validate: int', () => {
  it('accepts integers within range', () => {
    expect(valid({ batteryLevel: 0 })).toEqual({ batteryLevel: 0 });
    expect(valid({ batteryLevel: 100 })).toEqual({ batteryLevel: 100 });
    expect(valid({ offsetDb: -2147483648 })).toEqual({ offsetDb: -2147483648 });
  });
  it('refuses non-integers, strings and values outside int32 or the range', () => {
    expect(refusal({ batteryLevel: 'abc' })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'batteryLevel: "abc" is not an int',
      detail: { identifier: 'batteryLevel', rule: 'int', value: 'abc' },
    });
    expect(refusal({ batteryLevel: '50' }).message).toBe('batteryLevel: "50" is not an int');
    expect(refusal({ batteryLevel: 50.5 }).message).toBe('batteryLevel: 50.5 is not an int');
    expect(refusal({ batteryLevel: null }).message).toBe('batteryLevel: null is not an int');
    expect(refusal({ offsetDb: 2147483648 }).message).toBe('offsetDb: 2147483648 is outside int32');
    expect(refusal({ batteryLevel: 101 })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'batteryLevel: 101 above max 100',
      detail: { identifier: 'batteryLevel', rule: 'max', value: 101, limit: 100 },
    });
    expect(refusal({ batteryLevel: -1 }).message).toBe('batteryLevel: -1 below min 0');
  });
});

describe('validate: float and double', () => {
  it('accepts finite numbers within range, ignoring step', () => {
    expect(valid({ temperature: -40, pressure: 2000.5 })).toEqual({ temperature: -40, pressure: 2000.5 });
    expect(valid({ temperature: 23.456789 })).toEqual({ temperature: 23.456789 });
  });
  it('refuses out of range values and non-numbers', () => {
    expect(refusal({ temperature: 130 }).message).toBe('temperature: 130 above max 120');
    expect(refusal({ temperature: -40.01 }).message).toBe('temperature: -40.01 below min -40');
    expect(refusal({ pressure: 2000.51 }).message).toBe('pressure: 2000.51 above max 2000.5');
    expect(refusal({ temperature: '23.5' }).message).toBe('temperature: "23.5" is not a float');
    expect(refusal({ pressure: true }).message).toBe('pressure: true is not a double');
    expect(refusal({ temperature: Number.NaN }).message).toBe('temperature: NaN is not a float');
  });
});

describe('validate: bool', () => {
  it('normalizes true/false/0/1 to 0|1', () => {
    expect(valid({ charging: true })).toEqual({ charging: 1 });
    expect(valid({ charging: false })).toEqual({ charging: 0 });
    expect(valid({ charging: 1 })).toEqual({ charging: 1 });
    expect(valid({ charging: 0 })).toEqual({ charging: 0 });
  });
  it('refuses anything else', () => {
    expect(refusal({ charging: 2 })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'charging: 2 is not a bool (0, 1, true or false)',
      detail: { identifier: 'charging', rule: 'bool', value: 2 },
    });
    expect(refusal({ charging: 'true' }).message).toBe('charging: "true" is not a bool (0, 1, true or false)');
  });
});

describe('validate: enum', () => {
  it('accepts a key of the specs', () => {
    expect(valid({ valveState: 2 })).toEqual({ valveState: 2 });
  });
  it('refuses other values, including the label and the key as a string', () => {
    expect(refusal({ valveState: 7 })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'valveState: 7 not one of enum 0,1,2',
      detail: { identifier: 'valveState', rule: 'enum', value: 7, limit: [0, 1, 2] },
    });
    expect(refusal({ valveState: 'open' }).message).toBe('valveState: "open" not one of enum 0,1,2');
    expect(refusal({ valveState: '1' }).message).toBe('valveState: "1" not one of enum 0,1,2');
  });
});

describe('validate: text', () => {
  it('accepts strings up to the length, counted in characters', () => {
    expect(valid({ firmware: 'v1.2.3' })).toEqual({ firmware: 'v1.2.3' });
    expect(valid({ firmware: '固'.repeat(32) })).toEqual({ firmware: '固'.repeat(32) });
    // 20 emoji are 40 UTF-16 units but 20 characters
    expect(valid({ firmware: '😀'.repeat(20) })).toEqual({ firmware: '😀'.repeat(20) });
    expect(valid({ note: 'x'.repeat(5000) })).toEqual({ note: 'x'.repeat(5000) });
  });
  it('refuses longer text and non-strings', () => {
    expect(refusal({ firmware: 'a'.repeat(40) })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'firmware: text of 40 characters exceeds length 32',
      detail: { identifier: 'firmware', rule: 'length', value: 'a'.repeat(40), limit: 32 },
    });
    expect(refusal({ firmware: '😀'.repeat(33) }).message).toBe('firmware: text of 33 characters exceeds length 32');
    expect(refusal({ firmware: 123 }).message).toBe('firmware: 123 is not a text');
  });
});

describe('validate: date', () => {
  it('normalizes a numeric string or a number to ms since the epoch', () => {
    expect(valid({ calibratedAt: '1700000000000' })).toEqual({ calibratedAt: 1700000000000 });
    expect(valid({ calibratedAt: 1700000000000 })).toEqual({ calibratedAt: 1700000000000 });
  });
  it('refuses other values', () => {
    expect(refusal({ calibratedAt: '2024-01-01' }).message).toBe('calibratedAt: "2024-01-01" is not a date (ms since the epoch)');
    expect(refusal({ calibratedAt: 1.5 }).message).toBe('calibratedAt: 1.5 is not a date (ms since the epoch)');
    expect(refusal({ calibratedAt: -1 }).message).toBe('calibratedAt: -1 is not a date (ms since the epoch)');
  });
});

describe('validate: struct', () => {
  it('normalizes each member by its type and keeps members left out absent', () => {
    expect(valid({ pos: { lng: 116.4, lat: 39.9, fix: true, sys: 2, at: '1700000000000', src: 'gps' } })).toEqual({
      pos: { lng: 116.4, lat: 39.9, fix: 1, sys: 2, at: 1700000000000, src: 'gps' },
    });
    expect(valid({ pos: { lat: -90 } })).toEqual({ pos: { lat: -90 } });
    expect(valid({ pos: {} })).toEqual({ pos: {} });
  });
  it('names the member in messages: identifier.member', () => {
    expect(refusal({ pos: { lng: 116.4, lat: 91 } })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'pos.lat: 91 above max 90',
      detail: { identifier: 'pos.lat', rule: 'max', value: 91, limit: 90 },
    });
    expect(refusal({ pos: { lng: -180.5 } }).message).toBe('pos.lng: -180.5 below min -180');
    expect(refusal({ pos: { fix: 'yes' } }).message).toBe('pos.fix: "yes" is not a bool (0, 1, true or false)');
    expect(refusal({ pos: { sys: 3 } }).message).toBe('pos.sys: 3 not one of enum 1,2');
    expect(refusal({ pos: { at: 'now' } }).message).toBe('pos.at: "now" is not a date (ms since the epoch)');
    expect(refusal({ pos: { src: 'gnss+' } }).message).toBe('pos.src: text of 5 characters exceeds length 4');
  });
  it('refuses a member the model does not define as an unknown identifier', () => {
    expect(refusal({ pos: { lng: 1, alt: 5 } })).toEqual({
      code: 'WANWU_ERR_UNKNOWN_IDENTIFIER',
      message: 'pos.alt: not a member of struct pos',
      detail: { identifier: 'pos.alt' },
    });
    expect(refusal({ pos: JSON.parse('{"__proto__": {"lng": 1}}') }).message).toBe('pos.__proto__: not a member of struct pos');
  });
  it('refuses values that are not JSON objects', () => {
    expect(refusal({ pos: [116.4, 39.9] })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'pos: [116.4,39.9] is not a struct (a JSON object)',
      detail: { identifier: 'pos', rule: 'struct', value: [116.4, 39.9] },
    });
    expect(refusal({ pos: null }).message).toBe('pos: null is not a struct (a JSON object)');
    expect(refusal({ pos: '116.4,39.9' }).message).toBe('pos: "116.4,39.9" is not a struct (a JSON object)');
  });
});

describe('validate: array', () => {
  it('normalizes every item and returns a new array', () => {
    const readings = [0, 500, 1000];
    const out = valid({ readings, tags: ['a', '标签'], spectrum: [0.5, 1e-3], wifiList: [{ mac: 'aa:bb:cc:dd:ee:ff', rssi: -60 }, { rssi: -90 }] });
    expect(out).toEqual({ readings: [0, 500, 1000], tags: ['a', '标签'], spectrum: [0.5, 1e-3], wifiList: [{ mac: 'aa:bb:cc:dd:ee:ff', rssi: -60 }, { rssi: -90 }] });
    expect(out.readings).not.toBe(readings);
    expect(valid({ readings: [] })).toEqual({ readings: [] });
  });
  it('names the item by index: identifier[i], identifier[i].member', () => {
    expect(refusal({ readings: [1, 2, 3, 7.5] })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'readings[3]: 7.5 is not an int',
      detail: { identifier: 'readings[3]', rule: 'int', value: 7.5 },
    });
    expect(refusal({ readings: [1001] }).message).toBe('readings[0]: 1001 above max 1000');
    expect(refusal({ tags: ['ok', 'long'] }).message).toBe('tags[1]: text of 4 characters exceeds length 3');
    expect(refusal({ spectrum: [1, null] }).message).toBe('spectrum[1]: null is not a float');
    expect(refusal({ wifiList: [{ rssi: -60 }, { rssi: -200 }] })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'wifiList[1].rssi: -200 below min -120',
      detail: { identifier: 'wifiList[1].rssi', rule: 'min', value: -200, limit: -120 },
    });
    expect(refusal({ wifiList: [{ ssid: 'x' }] })).toEqual({
      code: 'WANWU_ERR_UNKNOWN_IDENTIFIER',
      message: 'wifiList[0].ssid: not a member of struct wifiList[0]',
      detail: { identifier: 'wifiList[0].ssid' },
    });
    expect(refusal({ wifiList: [5] }).message).toBe('wifiList[0]: 5 is not a struct (a JSON object)');
  });
  it('refuses more items than size, and values that are not arrays', () => {
    expect(refusal({ tags: Array.from({ length: 12 }, () => 'a') })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'tags: array of 12 exceeds size 10',
      detail: { identifier: 'tags', rule: 'size', value: 12, limit: 10 },
    });
    expect(refusal({ readings: { 0: 1 } })).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'readings: {"0":1} is not an array',
      detail: { identifier: 'readings', rule: 'array', value: { 0: 1 } },
    });
    expect(refusal({ readings: '1,2,3' }).message).toBe('readings: "1,2,3" is not an array');
  });
});

describe('validate: int64 (OneNET)', () => {
  it('accepts integers a JSON number carries exactly', () => {
    expect(valid({ totalFlow: 2 ** 40 })).toEqual({ totalFlow: 2 ** 40 });
    expect(valid({ totalFlow: Number.MAX_SAFE_INTEGER })).toEqual({ totalFlow: Number.MAX_SAFE_INTEGER });
  });
  it('refuses larger integers and fractions', () => {
    expect(refusal({ totalFlow: 2 ** 53 }).message).toBe('totalFlow: 9007199254740992 is outside the exact integer range of JSON (±(2^53-1))');
    expect(refusal({ totalFlow: 1.5 }).message).toBe('totalFlow: 1.5 is not an int');
    expect(refusal({ totalFlow: -1 }).message).toBe('totalFlow: -1 below min 0');
  });
});

describe('validate: error codes give the Alink reply code', () => {
  it('WANWU_ERR_INVALID replies 460, WANWU_ERR_UNKNOWN_IDENTIFIER 6320', () => {
    const invalid = (() => {
      try {
        valid({ temperature: 130 });
      } catch (err) {
        return err as WanwuError;
      }
    })();
    const unknownId = (() => {
      try {
        valid({ pos: { alt: 1 } });
      } catch (err) {
        return err as WanwuError;
      }
    })();
    expect([invalid?.code, invalid?.alinkCode, invalid?.message]).toEqual(['WANWU_ERR_INVALID', 460, 'temperature: 130 above max 120']);
    expect([unknownId?.code, unknownId?.alinkCode]).toEqual(['WANWU_ERR_UNKNOWN_IDENTIFIER', 6320]);
  });
});

describe('validate: identifiers', () => {
  it('refuses an unknown property', () => {
    expect(refusal({ temperature: 20, humidty: 50 })).toEqual({
      code: 'WANWU_ERR_UNKNOWN_IDENTIFIER',
      message: 'humidty: not a property of SensorX',
      detail: { identifier: 'humidty' },
    });
  });
  it('does not enforce required properties on a partial property post', () => {
    expect(valid({ temperature: 20 })).toEqual({ temperature: 20 });
  });
  it('normalizes a whole item and returns a new object', () => {
    const data = { charging: true, calibratedAt: '1', temperature: 1 };
    expect(validateItem(model, 'SensorX', prop(data))).toEqual({ charging: 1, calibratedAt: 1, temperature: 1 });
    expect(data.charging).toBe(true);
  });
});

describe('validate: events', () => {
  const event = (name: string, data: Record<string, unknown>): DecodedItem => ({ kind: 'event', event: name, data });
  it('validates output data against the event', () => {
    expect(validateItem(model, 'SensorX', event('overTemperature', { temperature: 150, threshold: 120 }))).toEqual({ temperature: 150, threshold: 120 });
  });
  it('uses the event output ranges and names the event in messages', () => {
    expect(refusal({}, event('overTemperature', { temperature: 250, threshold: 120 }))).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'overTemperature.temperature: 250 above max 200',
      detail: { identifier: 'overTemperature.temperature', rule: 'max', value: 250, limit: 200 },
    });
  });
  it('refuses unknown events and unknown outputs', () => {
    expect(refusal({}, event('overHeat', {}))).toEqual({
      code: 'WANWU_ERR_UNKNOWN_IDENTIFIER',
      message: 'overHeat: not an event of SensorX',
      detail: { identifier: 'overHeat', event: 'overHeat' },
    });
    expect(refusal({}, event('overTemperature', { threshold: 1, humidity: 1 })).message).toBe(
      'overTemperature.humidity: not an output of event overTemperature of SensorX',
    );
  });
  it('checks struct and array outputs, naming event.output.member and event.output[i]', () => {
    expect(validateItem(model, 'SensorX', event('fenceExit', { pos: { lat: 1 }, fences: [1, 2] }))).toEqual({ pos: { lat: 1 }, fences: [1, 2] });
    expect(refusal({}, event('fenceExit', { pos: { lat: 91 } }))).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'fenceExit.pos.lat: 91 above max 90',
      detail: { identifier: 'fenceExit.pos.lat', rule: 'max', value: 91, limit: 90 },
    });
    expect(refusal({}, event('fenceExit', { fences: [1, 'x'] })).message).toBe('fenceExit.fences[1]: "x" is not an int');
    expect(refusal({}, event('fenceExit', { fences: [1, 2, 3] })).message).toBe('fenceExit.fences: array of 3 exceeds size 2');
    expect(refusal({}, event('fenceExit', { pos: { lng: 1 } })).message).toBe('fenceExit.pos.lng: not a member of struct fenceExit.pos');
  });
  it('enforces output data marked required', () => {
    expect(refusal({}, event('overTemperature', { temperature: 150 }))).toEqual({
      code: 'WANWU_ERR_INVALID',
      message: 'overTemperature.threshold: required output missing',
      detail: { identifier: 'threshold', event: 'overTemperature', rule: 'required' },
    });
  });
});

describe('validate: products', () => {
  it('passes values through unvalidated when the product has no model', () => {
    const product = createProduct({ dir: 'devices/Bare', product: { productKey: 'Bare', name: '无模型', rat: 'cat1', codec: { type: 'alink-json' } } });
    expect(product.model).toBeNull();
    const r = decodeUplink(product, { type: 'property-post' }, Buffer.from('{"id":"1","params":{"anything":"goes","charging":true}}'));
    expect(r).toEqual({ ok: true, msgId: '1', method: 'thing.event.property.post', items: [{ kind: 'property', data: { anything: 'goes', charging: true } }] });
  });

  it('returns validation failures from decodeUplink with the message id', () => {
    const product = createProduct({ dir: 'devices/SensorX', product: { productKey: 'SensorX', name: '传感器', rat: 'redcap', codec: { type: 'alink-json' } }, model: { properties: [] } });
    const r = decodeUplink(product, { type: 'property-post' }, Buffer.from('{"id":"9","params":{"temperature":1}}'));
    expect(r.ok).toBe(false);
    expect(!r.ok && [r.error.code, r.error.message, r.msgId]).toEqual(['WANWU_ERR_UNKNOWN_IDENTIFIER', 'temperature: not a property of SensorX', '9']);
  });
});

describe('validate: test/helpers/tsl-arbitrary values are valid and already normalized', () => {
  const registry = loadRegistry(new URL('../../../devices', import.meta.url).pathname);
  const fixture = (name: string) =>
    parseThingModel(JSON.parse(readFileSync(new URL(`../../fixtures/tsl/${name}.json`, import.meta.url), 'utf8')), `${name}.json`);
  const models: Array<[string, ThingModel]> = [
    ['this file', model],
    ['TrackerCat1', registry.product('TrackerCat1')!.model!],
    ['SensorRedCap', registry.product('SensorRedCap')!.model!],
    ['alibaba-export', fixture('alibaba-export')],
    ['alibaba-module', fixture('alibaba-module')],
    ['onenet-export', fixture('onenet-export')],
  ];

  it.each(models)('%s: items survive validation unchanged', (_name, m) => {
    fc.assert(
      fc.property(arbitraryItem(m, { partialStructs: true }), (item) => {
        expect(validateItem(m, 'P', item)).toEqual(item.data);
      }),
      { seed: 20240601, numRuns: 200 },
    );
  });

  it('honours min/max identifier counts, candidate identifiers and full event data', () => {
    const tracker = registry.product('TrackerCat1')!.model!;
    fc.assert(
      fc.property(arbitraryPropertyData(tracker, { min: 2, max: 3, identifiers: ['GeoLocation', 'wifiList', 'charging', 'speed'] }), (data) => {
        const keys = Object.keys(data);
        expect(keys.length).toBeGreaterThanOrEqual(2);
        expect(keys.length).toBeLessThanOrEqual(3);
        for (const k of keys) expect(['GeoLocation', 'wifiList', 'charging', 'speed']).toContain(k);
      }),
      { seed: 7, numRuns: 100 },
    );
    fc.assert(
      fc.property(arbitraryEventData(model, 'overTemperature'), (data) => {
        expect(Object.keys(data).sort()).toEqual(['temperature', 'threshold']);
      }),
      { seed: 7, numRuns: 20 },
    );
  });

  it('makes floats 32-bit exact within min/max, never -0', () => {
    const float = { type: 'float', specs: { min: -0.1, max: 0.3 } } as const;
    fc.assert(
      fc.property(arbitraryValue(float), (v) => {
        const n = v as number;
        expect(Math.fround(n)).toBe(n);
        expect(n).toBeGreaterThanOrEqual(-0.1);
        expect(n).toBeLessThanOrEqual(0.3);
        expect(Object.is(n, -0)).toBe(false);
      }),
      { seed: 11, numRuns: 300 },
    );
  });
});
