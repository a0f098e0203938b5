import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct } from '../../../src/registry/index.js';
import { decodeUplink, parseThingModel, validateItem, type DecodedItem } from '../../../src/thing-model/index.js';

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
      { identifier: 'location', name: '位置', accessMode: 'r', dataType: { type: 'struct', specs: [{ identifier: 'lng', name: '经度', dataType: { type: 'double', specs: {} } }] } },
      { identifier: 'history', name: '历史', accessMode: 'r', dataType: { type: 'array', specs: { size: '10', item: { type: 'int' } } } },
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

describe('validate: struct and array pass through', () => {
  it('keeps the values as sent', () => {
    expect(valid({ location: { lng: 116.4 }, history: [1, 2, 3] })).toEqual({ location: { lng: 116.4 }, history: [1, 2, 3] });
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
