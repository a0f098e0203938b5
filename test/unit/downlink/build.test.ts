// Building commands (src/downlink/build.ts) against the sample products in devices/: the request's
// shape, the thing-model checks (rw properties, service inputData), the encoding and its size limit.
import { describe, expect, it } from 'vitest';
import { buildCommand, parseCommandRequest } from '../../../src/downlink/build.js';
import { loadRegistry } from '../../../src/registry/index.js';
import { DEMO, DEVICES_DIR } from '../../helpers/gateway.js';
import { errorOf } from '../../helpers/index.js';

const registry = loadRegistry(DEVICES_DIR);
const tracker = registry.product(DEMO.tracker.productKey)!;
const trackerDevice = registry.device(DEMO.tracker.productKey, DEMO.tracker.deviceName)!;
const sensor = registry.product(DEMO.sensor.productKey)!;
const sensorDevice = registry.device(DEMO.sensor.productKey, DEMO.sensor.deviceName)!;

/** Builds a tracker command from a JSON body, as the API and the upstream topic do. */
const build = (body: unknown, maxPayloadBytes = 1024) => buildCommand(tracker, trackerDevice, parseCommandRequest(body), maxPayloadBytes);
const message = (built: ReturnType<typeof build>, msgId = '42') => JSON.parse(built.encode(msgId).toString()) as Record<string, unknown>;

describe('parseCommandRequest: the body\'s shape', () => {
  it('takes a method with params, ttl and requestId, or raw hex', () => {
    expect(parseCommandRequest({ method: 'thing.service.property.set', params: { workMode: 1 }, ttl: 60, requestId: 'r-1' }))
      .toEqual({ method: 'thing.service.property.set', params: { workMode: 1 }, ttl: 60, requestId: 'r-1' });
    expect(parseCommandRequest({ raw: '0a0B' })).toEqual({ raw: '0a0B' });
    expect(parseCommandRequest({ method: 'thing.service.get' })).toEqual({ method: 'thing.service.get' });
  });

  it.each([
    ['not an object', [1, 2], /JSON object/],
    ['null', null, /JSON object/],
    ['an unknown key', { method: 'thing.service.property.set', params: {}, priority: 1 }, /unknown key "priority"/],
    ['no method', { params: { workMode: 1 } }, /method is required/],
    ['a method that is not a string', { method: 7 }, /method is required/],
    ['params that are not an object', { method: 'thing.service.property.set', params: [1] }, /params is a JSON object/],
    ['raw with a method', { raw: '00', method: 'thing.service.property.set' }, /no method or params/],
    ['raw that is not hex', { raw: 'zz' }, /even number of hex digits/],
    ['raw with an odd number of digits', { raw: 'abc' }, /even number of hex digits/],
    ['an empty raw', { raw: '' }, /even number of hex digits/],
    ['ttl 0', { raw: '00', ttl: 0 }, /ttl is a whole number/],
    ['a fractional ttl', { raw: '00', ttl: 1.5 }, /ttl is a whole number/],
    ['ttl as a string', { raw: '00', ttl: '60' }, /ttl is a whole number/],
    ['an empty requestId', { raw: '00', requestId: '' }, /requestId is a string of 1 to 64/],
    ['a requestId of 65 characters', { raw: '00', requestId: 'x'.repeat(65) }, /requestId is a string of 1 to 64/],
    ['a numeric requestId', { raw: '00', requestId: 12 }, /requestId is a string/],
  ])('refuses %s with WANWU_ERR_COMMAND', (_what, body, message) => {
    const err = errorOf(() => parseCommandRequest(body));
    expect(err.code).toBe('WANWU_ERR_COMMAND');
    expect(err.message).toMatch(message);
  });

  it('takes a requestId of exactly 64 characters', () => {
    expect(parseCommandRequest({ raw: '00', requestId: 'x'.repeat(64) })).toEqual({ raw: '00', requestId: 'x'.repeat(64) });
  });
});

describe('buildCommand: property set', () => {
  it('sets an rw property: Alink JSON on thing/service/property/set, the msgId patched in', () => {
    const built = build({ method: 'thing.service.property.set', params: { workMode: 2 } });
    expect(built.method).toBe('thing.service.property.set');
    expect(built.topic).toBe('/sys/TrackerCat1/tr-0001/thing/service/property/set');
    expect(built.params).toEqual({ workMode: 2 });
    expect(message(built, '42')).toEqual({ id: '42', version: '1.0', method: 'thing.service.property.set', params: { workMode: 2 } });
    expect(message(built, '43').id).toBe('43');
  });

  it('normalizes values like an uplink (a date property given as a number of ms)', () => {
    const built = buildCommand(sensor, sensorDevice, parseCommandRequest({ method: 'thing.service.property.set', params: { calibratedAt: 1_700_000_000_000 } }), 1024);
    expect(built.topic).toBe('/sys/SensorRedCap/rs-0001/thing/service/property/set');
    expect(Object.keys(built.params!)).toEqual(['calibratedAt']);
    expect(message(built).params).toEqual(built.params);
  });

  it('refuses a read-only property with WANWU_ERR_COMMAND naming it', () => {
    const err = errorOf(() => build({ method: 'thing.service.property.set', params: { workMode: 1, batteryLevel: 50 } }));
    expect(err.code).toBe('WANWU_ERR_COMMAND');
    expect(err.message).toContain('batteryLevel: read-only property');
    expect(err.detail).toEqual({ identifier: 'batteryLevel' });
  });

  it('refuses an identifier the model does not define with WANWU_ERR_UNKNOWN_IDENTIFIER', () => {
    const err = errorOf(() => build({ method: 'thing.service.property.set', params: { colour: 'red' } }));
    expect(err.code).toBe('WANWU_ERR_UNKNOWN_IDENTIFIER');
    expect(err.detail).toEqual({ identifier: 'colour' });
  });

  it('refuses a value outside the property\'s enum with WANWU_ERR_INVALID', () => {
    expect(errorOf(() => build({ method: 'thing.service.property.set', params: { workMode: 7 } })).code).toBe('WANWU_ERR_INVALID');
  });

  it('refuses a set with no property in it', () => {
    expect(errorOf(() => build({ method: 'thing.service.property.set', params: {} }))).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('at least one property') });
    expect(errorOf(() => build({ method: 'thing.service.property.set' })).code).toBe('WANWU_ERR_COMMAND');
  });
});

describe('buildCommand: service call', () => {
  it('calls a service with valid inputs on thing/service/{serviceId}', () => {
    const built = build({ method: 'thing.service.setReportInterval', params: { interval: 600, persist: 1 } });
    expect(built.topic).toBe('/sys/TrackerCat1/tr-0001/thing/service/setReportInterval');
    expect(built.params).toEqual({ interval: 600, persist: 1 });
    expect(message(built, '7')).toEqual({ id: '7', version: '1.0', method: 'thing.service.setReportInterval', params: { interval: 600, persist: 1 } });
  });

  it.each([
    ['a required input missing', { persist: 1 }, 'WANWU_ERR_INVALID', /interval: required/],
    ['an input below its min', { interval: 5 }, 'WANWU_ERR_INVALID', /interval/],
    ['an input above its max', { interval: 86_401 }, 'WANWU_ERR_INVALID', /interval/],
    ['an input of the wrong type', { interval: 'often' }, 'WANWU_ERR_INVALID', /interval/],
    ['an input the service does not have', { interval: 60, colour: 'red' }, 'WANWU_ERR_UNKNOWN_IDENTIFIER', /colour/],
  ])('refuses %s', (_what, params, code, message) => {
    const err = errorOf(() => build({ method: 'thing.service.setReportInterval', params }));
    expect(err.code).toBe(code);
    expect(err.message).toMatch(message);
  });

  it('refuses a service the model does not define, and methods that are not a service call', () => {
    expect(errorOf(() => build({ method: 'thing.service.selfDestruct', params: {} }))).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('selfDestruct: not a service') });
    for (const method of ['thing.event.property.post', 'thing.service.property', 'thing.service.', 'reboot', 'thing.service.a/b']) {
      expect(errorOf(() => build({ method })), method).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('unknown method') });
    }
  });
});

describe('buildCommand: raw', () => {
  it('sends the bytes as given on thing/model/down_raw', () => {
    const built = build({ raw: 'A1b2C3' });
    expect(built.method).toBe('thing.model.down_raw');
    expect(built.topic).toBe('/sys/TrackerCat1/tr-0001/thing/model/down_raw');
    expect(built.params).toBeUndefined();
    expect(built.encode('1')).toEqual(Buffer.from([0xa1, 0xb2, 0xc3]));
  });
});

describe('buildCommand: payload size limit (downlink.maxPayloadBytes)', () => {
  it('takes a payload of exactly the limit and refuses one byte more', () => {
    expect(build({ raw: '00'.repeat(16) }, 16).encode('1')).toHaveLength(16);
    expect(errorOf(() => build({ raw: '00'.repeat(17) }, 16))).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('17 bytes exceeds downlink.maxPayloadBytes 16') });
  });

  it('counts the encoded Alink JSON, not the params', () => {
    const body = { method: 'thing.service.property.set', params: { workMode: 1 } };
    const size = build(body).encode('0').length;
    expect(size).toBe(Buffer.byteLength(JSON.stringify({ id: '0', version: '1.0', ...body })));
    expect(build(body, size).encode('0')).toHaveLength(size);
    // Checked when encoded, which the store does inside the insert: a refusal leaves no row behind.
    expect(errorOf(() => build(body, size - 1).encode('0')).code).toBe('WANWU_ERR_COMMAND');
  });
});
