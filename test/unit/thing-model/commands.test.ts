// Commands to the sample products end to end through src/downlink/build.ts: the request is
// checked against the product's thing model, then encoded by its codec for down_raw (binary and
// script products) or sent as Alink JSON (alink-json products).
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { buildCommand } from '../../../src/downlink/build.js';
import type { CommandRequest } from '../../../src/downlink/types.js';
import { loadRegistry, type Product } from '../../../src/registry/index.js';
import type { CommandMessage } from '../../../src/thing-model/index.js';
import { errorOf } from '../../helpers/index.js';

const registry = loadRegistry(fileURLToPath(new URL('../../../devices', import.meta.url)));
const MAX = 1024;

function build(productKey: string, deviceName: string, req: CommandRequest, product: Product = registry.product(productKey)!) {
  return buildCommand(product, registry.device(productKey, deviceName)!, req, MAX);
}

/** The product with its codec's encodeCommand counted, to tell a refusal by the thing model from one by the codec. */
function counted(productKey: string): { product: Product; calls: CommandMessage[] } {
  const real = registry.product(productKey)!;
  const calls: CommandMessage[] = [];
  const encodeCommand = real.codec.encodeCommand!;
  const codec = { ...real.codec, encodeCommand: (m: CommandMessage) => (calls.push(m), encodeCommand(m)) };
  return { product: { ...real, codec }, calls };
}

describe('WaterMeterNB (binary codec.downlink)', () => {
  it('sends setReportInterval as the documented frame on down_raw', () => {
    const c = build('WaterMeterNB', 'wm-0001', { method: 'thing.service.setReportInterval', params: { interval: 3600 } });
    expect(c.topic).toBe('/sys/WaterMeterNB/wm-0001/thing/model/down_raw');
    expect(c.method).toBe('thing.service.setReportInterval');
    expect(c.params).toEqual({ interval: 3600 });
    // 82 = setReportInterval | 002a = msgId 42 | 00000e10 = 3600 s | ca = sum8
    expect(c.encode('42').toString('hex')).toBe('82002a00000e10ca');
    // The store's id goes in the frame: another id, another msgId field and sum.
    expect(c.encode('43').toString('hex')).toBe('82002b00000e10cb');
  });

  it('sends a valve property set (valveState is rw) as message 0x81', () => {
    const c = build('WaterMeterNB', 'wm-0001', { method: 'thing.service.property.set', params: { valveState: 1 } });
    expect(c.topic).toBe('/sys/WaterMeterNB/wm-0001/thing/model/down_raw');
    // 81 = setValve | 0007 = msgId 7 | 01 = closed | 89 = sum8
    expect(c.encode('7').toString('hex')).toBe('8100070189');
  });

  it.each([
    [30, 'setReportInterval.interval: 30 below min 60'],
    [86401, 'setReportInterval.interval: 86401 above max 86400'],
    [90.5, 'setReportInterval.interval: 90.5 is not an int'],
  ])('refuses interval %s by the thing model, before the codec encodes anything', (interval, message) => {
    const { product, calls } = counted('WaterMeterNB');
    const e = errorOf(() => build('WaterMeterNB', 'wm-0001', { method: 'thing.service.setReportInterval', params: { interval } }, product));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe(message);
    expect(calls).toEqual([]);
    // The same product encodes a valid command: the spy does see calls.
    build('WaterMeterNB', 'wm-0001', { method: 'thing.service.setReportInterval', params: { interval: 60 } }, product);
    expect(calls).toHaveLength(1);
  });

  it('refuses a read-only property and a missing required input', () => {
    const ro = errorOf(() => build('WaterMeterNB', 'wm-0001', { method: 'thing.service.property.set', params: { cumulativeFlow: 0 } }));
    expect(ro.code).toBe('WANWU_ERR_COMMAND');
    expect(ro.message).toBe('cumulativeFlow: read-only property (accessMode "r"); only rw properties can be set');
    const missing = errorOf(() => build('WaterMeterNB', 'wm-0001', { method: 'thing.service.setReportInterval', params: {} }));
    expect(missing.code).toBe('WANWU_ERR_INVALID');
    expect(missing.message).toBe('setReportInterval.interval: required parameter missing');
  });
});

describe('AlarmNB (binary codec.downlink with header and CRC)', () => {
  it('sends mute on down_raw', () => {
    const c = build('AlarmNB', 'al-0001', { method: 'thing.service.mute', params: { minutes: 5 } });
    expect(c.topic).toBe('/sys/AlarmNB/al-0001/thing/model/down_raw');
    // a55a 01 = magic, version | 81 = mute | 0000002a = msgId 42 | 05 = 5 min | 9956 = CRC-16/MODBUS 0x5699, low byte first
    expect(c.encode('42').toString('hex')).toBe('a55a01810000002a059956');
  });

  it('refuses minutes out of range by the thing model', () => {
    const e = errorOf(() => build('AlarmNB', 'al-0001', { method: 'thing.service.mute', params: { minutes: 61 } }));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe('mute.minutes: 61 above max 60');
  });
});

describe('SoilNB (script codec, encodeDownlink)', () => {
  it('sends setReportInterval as the frame codec.js writes', () => {
    const c = build('SoilNB', 'so-0001', { method: 'thing.service.setReportInterval', params: { interval: 600 } });
    expect(c.topic).toBe('/sys/SoilNB/so-0001/thing/model/down_raw');
    // 81 = set report interval | 00000258 = 600 s
    expect(c.encode('42').toString('hex')).toBe('8100000258');
  });
});

describe('TrackerCat1 (alink-json): no codec encoding', () => {
  it('sends Alink JSON on the service topic', () => {
    const c = build('TrackerCat1', registry.product('TrackerCat1')!.devices.keys().next().value!, { method: 'thing.service.property.set', params: { workMode: 1 } });
    expect(c.topic).toMatch(/^\/sys\/TrackerCat1\/[^/]+\/thing\/service\/property\/set$/);
    expect(JSON.parse(c.encode('9').toString())).toEqual({ id: '9', version: '1.0', method: 'thing.service.property.set', params: { workMode: 1 } });
  });
});
