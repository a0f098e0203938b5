// The sample payloads documented in devices/README.md, one per product, decoded end to end from
// their topic: registry product -> route -> codec -> validation.
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { loadRegistry } from '../../../src/registry/index.js';
import { decodeUplink } from '../../../src/thing-model/index.js';
import { parseUplinkTopic } from '../../../src/thing-model/topic.js';

const registry = loadRegistry(fileURLToPath(new URL('../../../devices', import.meta.url)));

function decodeSample(topic: string, payload: Buffer) {
  const { productKey, deviceName, route } = parseUplinkTopic(topic);
  expect(registry.device(productKey, deviceName)).toBeDefined();
  return decodeUplink(registry.product(productKey)!, route, payload);
}

describe('documented sample payloads', () => {
  it('WaterMeterNB: a 14-byte report on up_raw', () => {
    // 01 | 00 00 30 39 | 04 d2 | 0e 10 | 00 | 09 29 | ff a6
    // type=report | 12.345 m³ | 1.234 m³/h | 3.6 V | open | 23.45 °C | -90 dBm
    const r = decodeSample('/sys/WaterMeterNB/wm-0001/thing/model/up_raw', Buffer.from('010000303904d20e10000929ffa6', 'hex'));
    expect(r).toEqual({
      ok: true,
      items: [{ kind: 'property', data: { cumulativeFlow: 12.345, instantFlow: 1.234, batteryVoltage: 3.6, valveState: 0, temperature: 23.45, rsrp: -90 } }],
    });
  });

  it('TrackerCat1: a property post and a lowBattery event', () => {
    const post = {
      id: '1001',
      version: '1.0',
      params: { longitude: 116.397128, latitude: 39.916527, speed: 35.5, batteryLevel: 78, charging: false, workMode: 0 },
      method: 'thing.event.property.post',
    };
    expect(decodeSample('/sys/TrackerCat1/tr-0001/thing/event/property/post', Buffer.from(JSON.stringify(post)))).toEqual({
      ok: true,
      msgId: '1001',
      method: 'thing.event.property.post',
      items: [{ kind: 'property', data: { longitude: 116.397128, latitude: 39.916527, speed: 35.5, batteryLevel: 78, charging: 0, workMode: 0 } }],
    });

    const event = { id: '1002', version: '1.0', params: { value: { batteryLevel: 9 }, time: 1700000000000 }, method: 'thing.event.lowBattery.post' };
    expect(decodeSample('/sys/TrackerCat1/tr-0001/thing/event/lowBattery/post', Buffer.from(JSON.stringify(event)))).toEqual({
      ok: true,
      msgId: '1002',
      method: 'thing.event.lowBattery.post',
      items: [{ kind: 'event', event: 'lowBattery', ts: 1700000000000, data: { batteryLevel: 9 } }],
    });
  });

  it('SensorRedCap: a batched property post with per-property times', () => {
    const post = {
      id: '2001',
      version: '1.0',
      params: {
        temperature: { value: 23.5, time: 1700000000000 },
        humidity: { value: 45.2, time: 1700000000000 },
        vibration: { value: 1.25, time: 1700000000100 },
        pressure: 101.325,
        status: 0,
        firmware: 'rc-2.1.0',
        calibratedAt: '1699999000000',
      },
      method: 'thing.event.property.post',
    };
    expect(decodeSample('/sys/SensorRedCap/rs-0001/thing/event/property/post', Buffer.from(JSON.stringify(post)))).toEqual({
      ok: true,
      msgId: '2001',
      method: 'thing.event.property.post',
      items: [
        { kind: 'property', ts: 1700000000000, data: { temperature: 23.5, humidity: 45.2 } },
        { kind: 'property', ts: 1700000000100, data: { vibration: 1.25 } },
        { kind: 'property', data: { pressure: 101.325, status: 0, firmware: 'rc-2.1.0', calibratedAt: 1699999000000 } },
      ],
    });
  });
});
