// Interop: real mosquitto as the upstream broker, mosquitto_pub as a Cat-1 device with an Alibaba-signed
// login, libcoap's coap-client-notls as an NB-IoT water meter, and mosquitto_sub as an application
// reading the gateway's own broker. Each asserts the exact normalized record that arrives.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { DEMO, DEVICES_DIR, deviceSecret, startGateway } from '../helpers/gateway.js';
import { tempDir, waitUntil } from '../helpers/index.js';
import { coapClientAuth, missingTools, mustRunInterop, Mosquitto, run, skipInterop, tool } from './helpers.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// The water meter frame from devices/WaterMeterNB (see test/integration/gateway.test.ts for the field map).
const METER_FRAME = Buffer.from('010012d68701f40e1000' + '0866ffa1', 'hex');

describe('interop tools', () => {
  it('are installed when CI=true (apt-get install -y mosquitto mosquitto-clients libcoap3-bin)', () => {
    if (mustRunInterop) expect(missingTools).toEqual([]);
    else expect(skipInterop).toBe(missingTools.length > 0);
  });
});

describe.skipIf(skipInterop)('interop with mosquitto and libcoap', () => {
  const dir = tempDir('wanwu-interop-');
  const broker = new Mosquitto(dir.path);
  let gw: Gateway;
  let sub: MqttClient;
  const received: Array<{ topic: string; record: any }> = [];

  beforeAll(async () => {
    await broker.start();
    sub = mqtt.connect(broker.url, { reconnectPeriod: 0 });
    await new Promise<void>((resolve, reject) => {
      sub.once('connect', () => resolve());
      sub.once('error', reject);
    });
    await sub.subscribeAsync('wanwu/#', { qos: 1 });
    sub.on('message', (topic, payload) => received.push({ topic, record: JSON.parse(payload.toString()) }));
    gw = await startGateway(dir.path, [{ name: 'mosquitto', url: broker.url, reconnectMinMs: 50 }, { name: 'local', url: 'local' }]);
  });

  afterAll(async () => {
    sub?.end(true);
    await gw?.stop();
    await broker.stop();
    dir.cleanup();
  });

  it('mosquitto_pub as a Cat-1 tracker (login from `wanwu sign`, QoS 1) -> exact record in mosquitto', async () => {
    const { productKey, deviceName } = DEMO.tracker;
    // The README's command: mosquitto_pub ... $(node bin/wanwu.js sign --product ... --device ...)
    const signed = await run(process.execPath, [join(import.meta.dirname, '..', '..', 'bin', 'wanwu.js'), 'sign', '--product', productKey, '--device', deviceName, '--devices', DEVICES_DIR]);
    expect(signed.code).toBe(0);
    const loginArgs = signed.stdout.trim().split(/\s+/);
    expect(loginArgs.filter((_, i) => i % 2 === 0)).toEqual(['-i', '-u', '-P']);
    const payload = JSON.stringify({
      id: '1001', version: '1.0', method: 'thing.event.property.post',
      params: { longitude: { value: 121.4737, time: 1700000100000 }, latitude: { value: 31.2304, time: 1700000100000 }, speed: { value: 42.5, time: 1700000100000 }, workMode: { value: 0, time: 1700000100000 } },
    });
    const pub = await run(tool('mosquitto_pub'), [
      '-h', '127.0.0.1', '-p', String(gw.addresses().mqtt.port), '-V', 'mqttv311', '-q', '1', ...loginArgs,
      '-t', `/sys/${productKey}/${deviceName}/thing/event/property/post`, '-m', payload,
    ]);
    expect(pub.stderr).toBe('');
    expect(pub.code).toBe(0); // mosquitto_pub exits 0 only after the PUBACK
    await waitUntil(() => received.some((r) => r.record.msgId === '1001'), 10_000, 'tracker record in mosquitto');
    const got = received.find((r) => r.record.msgId === '1001')!;
    expect(got.topic).toBe(`wanwu/${productKey}/${deviceName}/property`);
    expect(got.record).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: 1700000100000,
      receivedAt: expect.any(Number), transport: 'mqtt', rat: 'cat1',
      data: { longitude: 121.4737, latitude: 31.2304, speed: 42.5, workMode: 0 }, msgId: '1001',
    });
  });

  it('mosquitto_pub with a wrong sign is refused at CONNECT', async () => {
    const { productKey, deviceName } = DEMO.tracker;
    const creds = signMqttLogin({ productKey, deviceName, deviceSecret: 'wrong-secret' });
    const pub = await run(tool('mosquitto_pub'), [
      '-h', '127.0.0.1', '-p', String(gw.addresses().mqtt.port), '-V', 'mqttv311', '-q', '1',
      '-i', creds.clientId, '-u', creds.username, '-P', creds.password,
      '-t', `/sys/${productKey}/${deviceName}/thing/event/property/post`, '-m', '{"id":"1","params":{"speed":1}}',
    ]);
    expect(pub.code).not.toBe(0);
    expect(pub.stderr.toLowerCase()).toMatch(/not authori[sz]ed|bad user ?name or password|connection refused/);
  });

  it('coap-client-notls as an NB-IoT water meter (CON POST of the binary frame) -> exact record in mosquitto', async () => {
    const { productKey, deviceName } = DEMO.meter;
    const file = join(dir.path, 'frame.bin');
    writeFileSync(file, METER_FRAME);
    const before = received.length;
    // POST /auth first, as the gateway requires by default; then the uplink with token and sequence number.
    const meter = await coapClientAuth(`coap://127.0.0.1:${gw.addresses().coap.port}`, { productKey, deviceName, secret: await deviceSecret(productKey, deviceName) });
    const res = await run(tool('coap-client-notls'), [
      '-m', 'post', '-t', 'application/octet-stream', '-f', file, '-B', '10', ...meter.args(),
      `coap://127.0.0.1:${gw.addresses().coap.port}/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`,
    ]);
    expect(res.code).toBe(0);
    expect(res.stderr).not.toMatch(/4\.\d\d|5\.\d\d/);
    await waitUntil(() => received.slice(before).some((r) => r.record.deviceName === deviceName), 10_000, 'meter record in mosquitto');
    const got = received.slice(before).find((r) => r.record.deviceName === deviceName)!;
    expect(got.topic).toBe(`wanwu/${productKey}/${deviceName}/property`);
    expect(got.record).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: got.record.receivedAt, receivedAt: expect.any(Number),
      transport: 'coap', rat: 'nb-iot',
      data: { cumulativeFlow: 1234.567, instantFlow: 0.5, batteryVoltage: 3.6, valveState: 0, temperature: 21.5, rsrp: -95 },
    });
  });

  it('coap-client-notls gets 4.00 with a diagnostic for a short frame', async () => {
    const { productKey, deviceName } = DEMO.meter;
    const file = join(dir.path, 'short.bin');
    writeFileSync(file, METER_FRAME.subarray(0, 5));
    const meter = await coapClientAuth(`coap://127.0.0.1:${gw.addresses().coap.port}`, { productKey, deviceName, secret: await deviceSecret(productKey, deviceName) });
    const res = await run(tool('coap-client-notls'), [
      '-m', 'post', '-f', file, '-B', '10', ...meter.args(),
      `coap://127.0.0.1:${gw.addresses().coap.port}/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`,
    ]);
    // libcoap prints the response code and the diagnostic payload.
    expect(`${res.stdout}${res.stderr}`).toMatch(/4\.00/);
    expect(`${res.stdout}${res.stderr}`).toContain('WANWU_ERR_MALFORMED');
  });

  it('mosquitto_sub with the demo application account reads records from the gateway\'s own broker (local upstream)', async () => {
    const { productKey, deviceName } = DEMO.sensor;
    const subProc = run(tool('mosquitto_sub'), [
      '-h', '127.0.0.1', '-p', String(gw.addresses().mqtt.port), '-u', 'app', '-P', 'wanwu-demo',
      // Property records only: the device's session also makes a liveness record on .../state.
      '-t', `wanwu/${productKey}/+/property`, '-v', '-C', '1', '-W', '10',
    ]);
    // Give mosquitto_sub time to subscribe, then send as a RedCap sensor.
    await new Promise((r) => setTimeout(r, 500));
    const creds = signMqttLogin({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName) });
    const pub = await run(tool('mosquitto_pub'), [
      '-h', '127.0.0.1', '-p', String(gw.addresses().mqtt.port), '-q', '1', '-i', creds.clientId, '-u', creds.username, '-P', creds.password,
      '-t', `/sys/${productKey}/${deviceName}/thing/event/property/post`,
      '-m', JSON.stringify({ id: '77', params: { temperature: { value: 36.6, time: 1700000200000 }, status: { value: 1, time: 1700000200000 } } }),
    ]);
    expect(pub.code).toBe(0);
    const out = await subProc;
    expect(out.code).toBe(0);
    const space = out.stdout.indexOf(' ');
    expect(out.stdout.slice(0, space)).toBe(`wanwu/${productKey}/${deviceName}/property`);
    expect(JSON.parse(out.stdout.slice(space + 1))).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: 1700000200000, receivedAt: expect.any(Number),
      transport: 'mqtt', rat: 'redcap', data: { temperature: 36.6, status: 1 }, msgId: '77',
    });
  });
});
