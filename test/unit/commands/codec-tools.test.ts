import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempDir } from '../../helpers/index.js';
import { decodeCommand, encodeCommand } from '../../../src/commands/codec-tools.js';
import { DEVICES_DIR } from '../../helpers/gateway.js';

const devices = DEVICES_DIR;
const METER_HEX = '010000303904d20e10000929ffa6'; // devices/README.md, WaterMeterNB sample frame

describe('wanwu decode', () => {
  it('prints the normalized record of a binary frame (hex, base64 and file give the same data)', () => {
    const r = decodeCommand({ devices, product: 'WaterMeterNB', hex: METER_HEX });
    expect(r.exitCode).toBe(0);
    const record = JSON.parse(r.output);
    expect(record).toMatchObject({
      productKey: 'WaterMeterNB', deviceName: 'wm-0001', kind: 'property', transport: 'coap', rat: 'nb-iot',
      data: { cumulativeFlow: 12.345, instantFlow: 1.234, batteryVoltage: 3.6, valveState: 0, temperature: 23.45, rsrp: -90 },
    });
    const b64 = decodeCommand({ devices, product: 'WaterMeterNB', base64: Buffer.from(METER_HEX, 'hex').toString('base64'), device: 'wm-0002' });
    expect(JSON.parse(b64.output)).toMatchObject({ deviceName: 'wm-0002', data: record.data });
  });

  it('decodes Alink JSON on the property post topic by default for alink-json products', () => {
    const payload = JSON.stringify({ id: '5', params: { speed: 12.5, charging: true } });
    const r = decodeCommand({ devices, product: 'TrackerCat1', hex: Buffer.from(payload).toString('hex') });
    expect(r.exitCode).toBe(0);
    expect(JSON.parse(r.output)).toMatchObject({ kind: 'property', transport: 'mqtt', msgId: '5', data: { speed: 12.5, charging: 1 } });
  });

  it('takes a topic suffix for events', () => {
    const payload = JSON.stringify({ id: '6', params: { value: { batteryLevel: 5 }, time: 1700000000000 } });
    const r = decodeCommand({ devices, product: 'TrackerCat1', topic: 'thing/event/lowBattery/post', hex: Buffer.from(payload).toString('hex') });
    expect(JSON.parse(r.output)).toMatchObject({ kind: 'event', event: 'lowBattery', ts: 1700000000000, data: { batteryLevel: 5 } });
  });

  it('prints {"error": {code, message}} and exit 1 on a decode failure', () => {
    const r = decodeCommand({ devices, product: 'WaterMeterNB', hex: '0100003039' });
    expect(r.exitCode).toBe(1);
    expect(JSON.parse(r.output)).toEqual({ error: { code: 'WANWU_ERR_MALFORMED', message: expect.stringContaining('frame is 5 bytes') } });
  });

  it.each([
    [{ product: 'WaterMeterNB' }, 'WANWU_ERR_CONFIG', /--hex H, --base64 B or --file F/],
    [{ product: 'WaterMeterNB', hex: 'abc' }, 'WANWU_ERR_CONFIG', /even number of hex digits/],
    [{ product: 'WaterMeterNB', hex: '01', base64: 'AQ==' }, 'WANWU_ERR_CONFIG', /give the payload once/],
    [{ product: 'Nope', hex: '01' }, 'WANWU_ERR_UNKNOWN_DEVICE', /no product Nope/],
    [{ product: 'WaterMeterNB', hex: '01', topic: 'thing/what' }, 'WANWU_ERR_TOPIC', /unsupported uplink topic/],
    [{ product: 'WaterMeterNB', file: '/nonexistent/frame.bin' }, 'WANWU_ERR_CONFIG', /--file/],
  ])('refuses %o with %s', (opts, code, message) => {
    const r = decodeCommand({ devices, ...opts });
    expect(r.exitCode).toBe(1);
    const { error } = JSON.parse(r.output);
    expect(error.code).toBe(code);
    expect(error.message).toMatch(message);
  });

  it('encode refuses data that is not a JSON object', () => {
    const r = encodeCommand({ devices, product: 'TrackerCat1', data: '[1,2]' });
    expect(r.exitCode).toBe(1);
    expect(JSON.parse(r.output).error.code).toBe('WANWU_ERR_CONFIG');
  });

  it('--fport reaches a script codec as input.fPort, and is refused for other codecs', () => {
    const dir = tempDir();
    try {
      mkdirSync(join(dir.path, 'EchoNB'));
      writeFileSync(join(dir.path, 'EchoNB', 'product.json'), JSON.stringify({ productKey: 'EchoNB', name: 'echo', rat: 'nb-iot', codec: { type: 'script', file: 'codec.js' } }));
      writeFileSync(join(dir.path, 'EchoNB', 'codec.js'), 'function decodeUplink(input) { return { data: { port: input.fPort, n: input.bytes.length } }; }\n');
      const byDefault = JSON.parse(decodeCommand({ devices: dir.path, product: 'EchoNB', hex: '0102' }).output);
      expect(byDefault).toMatchObject({ data: { port: 1, n: 2 }, validated: false });
      const on7 = decodeCommand({ devices: dir.path, product: 'EchoNB', hex: '0102', fport: '7' });
      expect(on7.exitCode).toBe(0);
      expect(JSON.parse(on7.output).data).toEqual({ port: 7, n: 2 });
      const bad = decodeCommand({ devices, product: 'WaterMeterNB', hex: METER_HEX, fport: '2' });
      expect(JSON.parse(bad.output).error).toMatchObject({ code: 'WANWU_ERR_CONFIG', message: expect.stringContaining('script codecs') });
    } finally {
      dir.cleanup();
    }
  });
});
