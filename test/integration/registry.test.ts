// The device registry on a running gateway (real CoAP and MQTT listeners on port 0, real SQLite files):
// `wanwu devices` changes take effect without a restart, and unknown devices, disabled devices and
// foreign SIM cards (card binding, 机卡绑定) get zero records committed.

import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CoapClient } from '../../simulators/lib/coap-client.js';
import { devicesAdd, devicesList, devicesRotateSecret, devicesSetStatus } from '../../src/commands/devices.js';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { openDeviceStore, registryPaths } from '../../src/registry/store.js';
import { connectDevice, deviceSecret, DEVICES_DIR, gatewayConfig } from '../helpers/gateway.js';
import { silentLogger, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

// Water meter report, 14 bytes big endian (devices/WaterMeterNB/product.json):
// 01 type | 0012d687 cumulativeFlow 1234.567 | 01f4 instantFlow 0.5 | 0e10 battery 3.6 V | 00 valve open | 0866 21.5 C | ffa1 rsrp -95
const METER_FRAME = Buffer.from('010012d68701f40e10000866ffa1', 'hex');
const TRACKER_ICCID = '89860420000000000011'; // tr-0001's card in devices/TrackerCat1/devices.json
const RELOAD_MS = 50;

describe('device registry on a running gateway', () => {
  let dir: ReturnType<typeof tempDir>;
  let upstream: TestUpstream;
  let gw: Gateway | null = null;
  let config: ReturnType<typeof gatewayConfig>;
  const closers: Array<() => unknown> = [];

  beforeEach(async () => {
    dir = tempDir('wanwu-registry-it-');
    // The sample products, with TrackerCat1 reporting its SIM's ICCID as a text property.
    const devicesDir = join(dir.path, 'devices');
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    const modelFile = join(devicesDir, 'TrackerCat1', 'model.json');
    const model = JSON.parse(readFileSync(modelFile, 'utf8'));
    model.properties.push({ identifier: 'iccid', name: 'ICCID', accessMode: 'r', required: false, dataType: { type: 'text', specs: { length: '20' } } });
    writeFileSync(modelFile, JSON.stringify(model));
    upstream = new TestUpstream();
    await upstream.start();
    config = gatewayConfig(dir.path, [{ name: 'cloud', url: upstream.url, reconnectMinMs: 50, reconnectMaxMs: 200 }], {
      devicesDir,
      registry: { reloadMs: RELOAD_MS, lastSeenFlushMs: 100 },
    });
    gw = createGateway(config, silentLogger);
    await gw.start();
  });
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
    await gw?.stop();
    gw = null;
    await upstream.stop();
    dir.cleanup();
  });

  const ctx = () => ({ config, env: {} as NodeJS.ProcessEnv });
  const committed = () => gw!.status().ingest.records.total;
  const refused = (code: string) => {
    const byCode = gw!.status().ingest.rejectedByCode as Record<string, { coap: number; mqtt: number } | undefined>;
    return byCode[code] ?? { coap: 0, mqtt: 0 };
  };
  /** Long enough for the gateway to have polled the registry several times, even on a busy machine. */
  const reloaded = () => new Promise((r) => setTimeout(r, RELOAD_MS * 8));
  const coap = () => {
    const c = new CoapClient('127.0.0.1', gw!.addresses().coap.port);
    closers.push(() => c.close());
    return c;
  };
  /** A CoAP client authenticated as a water meter (the gateway requires it by default). */
  const meter = async (deviceName: string, secret?: string) => {
    const c = coap();
    await c.authenticate({ productKey: 'WaterMeterNB', deviceName, deviceSecret: secret ?? (await deviceSecret('WaterMeterNB', deviceName)) });
    return c;
  };
  const coapAuth = () => gw!.status().listeners.coap!.auth!;
  const device = async (productKey: string, deviceName: string, secret?: string) => {
    const d = await connectDevice(gw!.addresses().mqtt.port, productKey, deviceName, secret);
    closers.push(() => d.end(true));
    const replies: Array<{ id: string; code: number; message: string }> = [];
    d.on('message', (_t, p) => replies.push(JSON.parse(p.toString())));
    await d.subscribeAsync(`/sys/${productKey}/${deviceName}/thing/event/property/post_reply`, { qos: 0 });
    return { client: d as MqttClient, replies };
  };
  const post = (d: { client: MqttClient }, productKey: string, deviceName: string, id: string, params: Record<string, unknown>) =>
    d.client.publishAsync(`/sys/${productKey}/${deviceName}/thing/event/property/post`, JSON.stringify({ id, version: '1.0', params }), { qos: 1 });
  const meterPath = (deviceName: string) => `/topic/sys/WaterMeterNB/${deviceName}/thing/model/up_raw`;

  it('a disabled device is refused on CoAP and MQTT with zero records; enabling it again works without a restart', async () => {
    const tracker = await device('TrackerCat1', 'tr-0002');
    const c = await meter('wm-0002');
    expect((await c.post(meterPath('wm-0002'), METER_FRAME)).code).toBe('2.04');
    await waitUntil(() => upstream.messages.length === 1, 5000, 'the first record');

    expect(devicesSetStatus(ctx(), 'disabled', { product: 'WaterMeterNB', device: 'wm-0002' }).exitCode).toBe(0);
    expect(devicesSetStatus(ctx(), 'disabled', { product: 'TrackerCat1', device: 'tr-0002' }).exitCode).toBe(0);
    await reloaded();
    const before = committed();

    // Its token is still valid (it proves the secret), so the pipeline refuses it as disabled.
    const res = await c.post(meterPath('wm-0002'), METER_FRAME);
    expect(res.code).toBe('4.03');
    expect(res.payload.toString()).toContain('WANWU_ERR_DEVICE_DISABLED');
    // And a new /auth of the disabled device is refused too.
    await expect(meter('wm-0002')).rejects.toThrow(/answered 4\.03 WANWU_ERR_DEVICE_DISABLED/);
    await post(tracker, 'TrackerCat1', 'tr-0002', '1', { batteryLevel: 50 });
    await waitUntil(() => tracker.replies.length === 1, 5000, 'the Alink reply');
    expect(tracker.replies[0]).toMatchObject({ code: 6204, message: expect.stringContaining('disabled') }); // refused before decoding: no id
    // A new MQTT login of the disabled device is refused too: CONNACK 5, not authorized.
    await expect(connectDevice(gw!.addresses().mqtt.port, 'TrackerCat1', 'tr-0002')).rejects.toThrow(/Not authorized/i);
    // Other devices are not affected.
    expect((await (await meter('wm-0003')).post(meterPath('wm-0003'), METER_FRAME)).code).toBe('2.04');

    expect(committed()).toBe(before + 1);
    expect(refused('WANWU_ERR_DEVICE_DISABLED')).toEqual({ coap: 1, mqtt: 1 });
    await waitUntil(() => upstream.messages.length === 2, 5000, 'the other meter\'s record');
    expect(upstream.messages.map((m) => m.json.deviceName)).toEqual(['wm-0002', 'wm-0003']);

    devicesSetStatus(ctx(), 'enabled', { product: 'WaterMeterNB', device: 'wm-0002' });
    devicesSetStatus(ctx(), 'enabled', { product: 'TrackerCat1', device: 'tr-0002' });
    await reloaded();
    expect((await c.post(meterPath('wm-0002'), METER_FRAME)).code).toBe('2.04');
    await post(tracker, 'TrackerCat1', 'tr-0002', '2', { batteryLevel: 51 });
    await waitUntil(() => tracker.replies.length === 2, 5000, 'the second Alink reply');
    expect(tracker.replies[1]).toMatchObject({ id: '2', code: 200 });
    await waitUntil(() => upstream.messages.length === 4, 5000, 'records after enabling');
    expect(committed()).toBe(before + 3);
  });

  it('a device presenting another ICCID is refused with an audit row; its own card is accepted', async () => {
    const tracker = await device('TrackerCat1', 'tr-0001');
    const before = committed();
    await post(tracker, 'TrackerCat1', 'tr-0001', '1', { batteryLevel: 50, iccid: '89860420000000000029' });
    await waitUntil(() => tracker.replies.length === 1, 5000, 'the refusal');
    expect(tracker.replies[0]).toMatchObject({ id: '1', code: 403, message: expect.stringContaining('not the card bound to it') });
    expect(committed()).toBe(before);
    expect(refused('WANWU_ERR_CARD_MISMATCH')).toEqual({ coap: 0, mqtt: 1 });

    const paths = registryPaths(config);
    const store = openDeviceStore({ path: paths.path, keyFile: paths.keyFile, env: {} });
    try {
      const audit = store.listAudit({ productKey: 'TrackerCat1', deviceName: 'tr-0001' });
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({ event: 'card-mismatch', detail: '89860420000000000029', count: 1, source: expect.stringMatching(/^mqtt 127\.0\.0\.1:\d+$/) });
    } finally {
      store.close();
    }

    // Its own card (also without the check digit) goes through, and is forwarded like any property.
    await post(tracker, 'TrackerCat1', 'tr-0001', '2', { batteryLevel: 51, iccid: TRACKER_ICCID });
    await post(tracker, 'TrackerCat1', 'tr-0001', '3', { iccid: TRACKER_ICCID.slice(0, 19) });
    await waitUntil(() => tracker.replies.length === 3 && upstream.messages.length === 2, 5000, 'two accepted posts');
    expect(tracker.replies.slice(1).map((r) => r.code)).toEqual([200, 200]);
    expect(upstream.messages[0]!.json.data).toEqual({ batteryLevel: 51, iccid: TRACKER_ICCID });
  });

  it('an unknown device is refused on CoAP and MQTT with zero records', async () => {
    const before = committed();
    // CoAP: no token can be had for it (/auth answers as for a bad sign), and a post without one gets 4.01.
    await expect(meter('wm-9999', 'whatever')).rejects.toThrow(/answered 4\.01 WANWU_ERR_AUTH/);
    const res = await coap().post(meterPath('wm-9999'), METER_FRAME);
    expect(res.code).toBe('4.01');
    await expect(connectDevice(gw!.addresses().mqtt.port, 'TrackerCat1', 'tr-9999', 'whatever')).rejects.toMatchObject({ code: 4 });
    expect(committed()).toBe(before);
    expect(coapAuth().refused).toMatchObject({ unknownDevice: 1, unauthenticated: 1 });
    expect(upstream.messages).toHaveLength(0);
  });

  it('devices added and secrets rotated with `wanwu devices` work at once; the old secret stops working; last seen is kept', async () => {
    const added = devicesAdd({ ...ctx(), random: (n) => Buffer.alloc(n, 7) }, { product: 'TrackerCat1', device: 'tr-0100', json: true });
    const secret = JSON.parse(added.output).deviceSecret as string;
    expect(secret).toBe('07'.repeat(16));
    await expect(meter('wm-0100', 'meter-secret')).rejects.toThrow(/answered 4\.01/);
    devicesAdd(ctx(), { product: 'WaterMeterNB', device: 'wm-0100', secret: 'meter-secret' });
    await reloaded();
    const c = await meter('wm-0100', 'meter-secret');
    expect((await c.post(meterPath('wm-0100'), METER_FRAME)).code).toBe('2.04');
    const tracker = await device('TrackerCat1', 'tr-0100', secret);
    await post(tracker, 'TrackerCat1', 'tr-0100', '1', { batteryLevel: 60 });
    await waitUntil(() => tracker.replies.length === 1, 5000, 'the reply');
    expect(tracker.replies[0]!.code).toBe(200);

    const rotated = JSON.parse(devicesRotateSecret(ctx(), { product: 'TrackerCat1', device: 'tr-0100', json: true }).output).deviceSecret as string;
    await reloaded();
    await expect(connectDevice(gw!.addresses().mqtt.port, 'TrackerCat1', 'tr-0100', secret)).rejects.toMatchObject({ code: 4 });
    const again = await device('TrackerCat1', 'tr-0100', rotated);
    expect(again.client.connected).toBe(true);
    // On CoAP a rotated secret revokes the token issued for the old one: 4.01, then /auth with the new secret.
    const meterSecret = JSON.parse(devicesRotateSecret(ctx(), { product: 'WaterMeterNB', device: 'wm-0100', json: true }).output).deviceSecret as string;
    await reloaded();
    const revoked = await c.post(meterPath('wm-0100'), METER_FRAME);
    expect(revoked.code).toBe('4.01');
    expect(revoked.payload.toString()).toContain('WANWU_ERR_TOKEN');
    await expect(meter('wm-0100', 'meter-secret')).rejects.toThrow(/answered 4\.01/);
    expect((await (await meter('wm-0100', meterSecret)).post(meterPath('wm-0100'), METER_FRAME)).code).toBe('2.04');

    await waitUntil(
      () => {
        const rows = JSON.parse(devicesList(ctx(), { product: 'WaterMeterNB', json: true }).output) as Array<{ deviceName: string; lastSeenAt: string | null }>;
        return rows.find((r) => r.deviceName === 'wm-0100')?.lastSeenAt != null;
      },
      5000,
      'last seen of wm-0100',
    );
    const rows = JSON.parse(devicesList(ctx(), { product: 'WaterMeterNB', json: true }).output) as Array<{ deviceName: string; lastSeenAt: string | null }>;
    expect(rows.find((r) => r.deviceName === 'wm-0001')?.lastSeenAt).toBeNull(); // never sent anything
  });
});
