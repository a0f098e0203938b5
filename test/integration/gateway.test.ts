// The whole uplink path on real servers: CoAP and MQTT listeners on port 0, the real devices/ folder,
// a real SQLite file, and an in-process aedes broker as the upstream.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import mqtt from 'mqtt';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { CoapClient as CoapTestClient } from '../../simulators/lib/coap-client.js';
import { loadRegistry } from '../../src/registry/index.js';
import { connectDevice, DEMO, deviceSecret, DEVICES_DIR, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;

// Water meter report, big endian, 14 bytes (layout in devices/WaterMeterNB/product.json):
const METER_FRAME = Buffer.from(
  [
    '01', //        message type: report (const 0x01)
    '0012d687', //  cumulativeFlow u32 1234567 x 0.001 = 1234.567 m3
    '01f4', //      instantFlow    u16 500 x 0.001     = 0.5 m3/h
    '0e10', //      batteryVoltage u16 3600 x 0.001    = 3.6 V
    '00', //        valveState     u8  0               = open
    '0866', //      temperature    i16 2150 x 0.01     = 21.5 C
    'ffa1', //      rsrp           i16 -95 dBm
  ].join(''),
  'hex',
);

describe('gateway uplink (real servers, in-process aedes upstream)', () => {
  let dir: ReturnType<typeof tempDir>;
  let upstream: TestUpstream;
  let gw: Gateway | null = null;
  const clients: Array<{ end(force?: boolean): unknown }> = [];

  beforeEach(async () => {
    dir = tempDir();
    upstream = new TestUpstream();
    await upstream.start();
  });
  afterEach(async () => {
    for (const c of clients.splice(0)) c.end(true);
    await gw?.stop();
    gw = null;
    await upstream.stop();
    dir.cleanup();
  });

  const start = async () => {
    gw = await startGateway(dir.path, [{ name: 'cloud', url: upstream.url, reconnectMinMs: 50, reconnectMaxMs: 200 }]);
    return gw;
  };
  /** A CoAP client speaking as the water meter: authenticated, as the default coap.auth.mode "required" asks. */
  const meterClient = async (g: Gateway) => {
    const coap = new CoapTestClient('127.0.0.1', g.addresses().coap.port);
    clients.push({ end: () => coap.close() });
    const { productKey, deviceName } = DEMO.meter;
    await coap.authenticate({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName) });
    return coap;
  };

  it('MQTT property post: PUBACK after commit, Alink reply 200, exact record upstream', async () => {
    const g = await start();
    const { productKey, deviceName } = DEMO.tracker;
    const device = await connectDevice(g.addresses().mqtt.port, productKey, deviceName);
    clients.push(device);
    const topic = `/sys/${productKey}/${deviceName}/thing/event/property/post`;
    const replies: any[] = [];
    device.on('message', (_t, p) => replies.push(JSON.parse(p.toString())));
    await device.subscribeAsync(`${topic}_reply`, { qos: 0 });
    await device.publishAsync(
      topic,
      JSON.stringify({ id: '42', version: '1.0', method: 'thing.event.property.post', params: { longitude: 116.397, latitude: { value: 39.909, time: 1700000000000 }, batteryLevel: 87, charging: true } }),
      { qos: 1 },
    );
    await waitUntil(() => replies.length === 1 && upstream.messages.length === 2, 5000, 'reply and records');
    expect(replies[0]).toEqual({ id: '42', code: 200, data: {}, message: 'success', method: 'thing.event.property.post', version: '1.0' });
    // Params with a time of their own form their own record (ts = that time).
    const records = upstream.records().sort((a, b) => (a.ts as number) - (b.ts as number));
    const [timed, untimed] = records;
    expect(upstream.messages.every((m) => m.topic === `wanwu/${productKey}/${deviceName}/property`)).toBe(true);
    expect(timed).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: 1700000000000,
      receivedAt: expect.any(Number), transport: 'mqtt', rat: 'cat1', data: { latitude: 39.909 }, msgId: '42',
    });
    expect(untimed).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: untimed!.receivedAt,
      receivedAt: expect.any(Number), transport: 'mqtt', rat: 'cat1', data: { longitude: 116.397, batteryLevel: 87, charging: 1 }, msgId: '42',
    });
    expect(Math.abs((untimed!.receivedAt as number) - Date.now())).toBeLessThan(10_000);
  });

  it('MQTT event post becomes an event record on the event topic', async () => {
    const g = await start();
    const { productKey, deviceName } = DEMO.tracker;
    const device = await connectDevice(g.addresses().mqtt.port, productKey, deviceName);
    clients.push(device);
    await device.publishAsync(
      `/sys/${productKey}/${deviceName}/thing/event/lowBattery/post`,
      JSON.stringify({ id: '7', version: '1.0', method: 'thing.event.lowBattery.post', params: { value: { batteryLevel: 9 }, time: 1700000001000 } }),
      { qos: 1 },
    );
    await waitUntil(() => upstream.messages.length === 1, 5000, 'event record');
    expect(upstream.messages[0]!.topic).toBe(`wanwu/${productKey}/${deviceName}/event`);
    expect(upstream.messages[0]!.json).toMatchObject({ kind: 'event', event: 'lowBattery', ts: 1700000001000, data: { batteryLevel: 9 }, msgId: '7', rat: 'cat1' });
  });

  it('CoAP CON up_raw of the water meter: 2.04 after commit and the exact record upstream', async () => {
    const g = await start();
    const { productKey, deviceName } = DEMO.meter;
    const coap = await meterClient(g);
    const res = await coap.post(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`, METER_FRAME);
    expect(res.code).toBe('2.04');
    expect(res.packet.ack).toBe(true); // piggybacked
    await waitUntil(() => upstream.messages.length === 1, 5000, 'meter record');
    const r = upstream.messages[0]!.json;
    expect(upstream.messages[0]!.topic).toBe(`wanwu/${productKey}/${deviceName}/property`);
    expect(r).toEqual({
      id: expect.stringMatching(UUID), productKey, deviceName, kind: 'property', ts: r.receivedAt, receivedAt: expect.any(Number),
      transport: 'coap', rat: 'nb-iot',
      data: { cumulativeFlow: 1234.567, instantFlow: 0.5, batteryVoltage: 3.6, valveState: 0, temperature: 21.5, rsrp: -95 },
    });
  });

  it('refuses bad input with coded errors, dead-letters it, counts it, and keeps running', async () => {
    const g = await start();
    const { mqtt: m, http } = g.addresses();
    const coap = await meterClient(g);
    const { productKey, deviceName } = DEMO.tracker;
    const device = await connectDevice(m.port, productKey, deviceName);
    clients.push(device);
    const topic = `/sys/${productKey}/${deviceName}/thing/event/property/post`;
    const replies: any[] = [];
    device.on('message', (_t, p) => replies.push(JSON.parse(p.toString())));
    await device.subscribeAsync(`${topic}_reply`);

    await device.publishAsync(topic, '{"id":"1","params":', { qos: 1 }); // malformed JSON
    await device.publishAsync(topic, JSON.stringify({ id: '2', params: { batteryLevel: 130 } }), { qos: 1 }); // out of range
    await device.publishAsync(topic, JSON.stringify({ id: '3', params: { altitude: 5 } }), { qos: 1 }); // not in the model
    const oddTopic = `/sys/${productKey}/${deviceName}/thing/custom/thing`; // in its namespace, but no uplink
    await device.subscribeAsync(`${oddTopic}_reply`);
    await device.publishAsync(oddTopic, '{"id":"4"}', { qos: 1 });
    await waitUntil(() => replies.length === 4, 5000, 'four error replies');
    expect(replies.map((r) => r.code)).toEqual([6207, 460, 6320, 6203]);
    expect(replies[1]).toMatchObject({ id: '2', message: expect.stringContaining('batteryLevel: 130 above max 100') });

    // CoAP: undecodable frame -> 4.00 with a diagnostic; unknown path -> 4.04; an unknown device
    // has no token (none can be issued for it) -> 4.01 before the pipeline, not dead-lettered.
    const short = await coap.post(`/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`, METER_FRAME.subarray(0, 9));
    expect(short.code).toBe('4.00');
    expect(short.payload.toString()).toContain('WANWU_ERR_MALFORMED');
    const unknown = await coap.post(`/topic/sys/${DEMO.meter.productKey}/wm-9999/thing/model/up_raw`, METER_FRAME, { anonymous: true });
    expect(unknown.code).toBe('4.01');
    expect(unknown.payload.toString()).toContain('WANWU_ERR_TOKEN');
    const badPath = await coap.post('/nothing/here', METER_FRAME);
    expect(badPath.code).toBe('4.04');

    const big = await coap.post(`/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`, Buffer.alloc(1100, 1));
    expect(big.code).toBe('4.13');

    // Still serving: a good message goes through after all that.
    const ok = await coap.post(`/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`, METER_FRAME);
    expect(ok.code).toBe('2.04');
    await waitUntil(() => upstream.messages.length === 1, 5000, 'the good record');

    const status = (await getJson(http.port, '/status')).body;
    expect(status.ingest.rejectedByCode).toMatchObject({
      WANWU_ERR_MALFORMED: { mqtt: 1, coap: 1 },
      WANWU_ERR_INVALID: { mqtt: 1, coap: 0 },
      WANWU_ERR_UNKNOWN_IDENTIFIER: { mqtt: 1, coap: 0 },
      WANWU_ERR_TOO_LARGE: { mqtt: 0, coap: 1 },
      WANWU_ERR_TOPIC: { mqtt: 1, coap: 0 },
    });
    // The unauthenticated post never reached the pipeline.
    expect(status.ingest.rejectedByCode.WANWU_ERR_UNKNOWN_DEVICE?.coap ?? 0).toBe(0);
    expect(status.ingest.accepted).toEqual({ coap: 1, mqtt: 0, total: 1 });
    // Every refused payload from a named device is kept with its raw bytes (the oversize one cut to
    // the 1 KiB limit); the unknown path names no device and is only counted by the listener, and the
    // unauthenticated post is counted as an authentication refusal.
    await waitUntil(() => g.status().buffer.deadLetters === 6, 2000, 'six dead letters');
    expect(status.listeners.coap.responses).toMatchObject({ '4.00': 1, '4.01': 1, '4.04': 1, '4.13': 1, '2.04': 1 });
    expect(status.listeners.coap.auth).toMatchObject({ mode: 'required', issued: 1, refused: { unauthenticated: 1 } });
  });

  it('MQTT login: bad sign and unknown device get CONNACK 4; another device\'s topic closes the connection', async () => {
    const g = await start();
    const port = g.addresses().mqtt.port;
    const { productKey, deviceName } = DEMO.tracker;
    for (const creds of [
      signMqttLogin({ productKey, deviceName, deviceSecret: 'not-the-secret' }),
      signMqttLogin({ productKey, deviceName: 'tr-9999', deviceSecret: 'whatever' }),
    ]) {
      const c = mqtt.connect(`mqtt://127.0.0.1:${port}`, { ...creds, reconnectPeriod: 0 });
      clients.push(c);
      const err = await new Promise<Error & { code?: number }>((resolve) => c.once('error', resolve));
      expect(err.code).toBe(4);
    }
    const device = await connectDevice(port, productKey, deviceName);
    clients.push(device);
    const closed = new Promise<void>((resolve) => device.once('close', () => resolve()));
    device.publish(`/sys/${productKey}/tr-0002/thing/event/property/post`, JSON.stringify({ id: '1', params: { batteryLevel: 50 } }), { qos: 1 });
    await closed;
    const status = (await getJson(g.addresses().http.port, '/status')).body;
    expect(status.listeners.mqtt.authFailures).toEqual({ WANWU_ERR_AUTH: 1, WANWU_ERR_UNKNOWN_DEVICE: 1 });
    expect(status.ingest.rejectedByCode.WANWU_ERR_FORBIDDEN).toEqual({ coap: 0, mqtt: 1 });
    expect(upstream.messages).toHaveLength(0);
  });

  it('oversize MQTT payload is refused with a reply and dead-lettered (truncated to the limit)', async () => {
    const g = await start();
    const { productKey, deviceName } = DEMO.sensor;
    const device = await connectDevice(g.addresses().mqtt.port, productKey, deviceName);
    clients.push(device);
    const topic = `/sys/${productKey}/${deviceName}/thing/event/property/post`;
    const replies: any[] = [];
    device.on('message', (_t, p) => replies.push(JSON.parse(p.toString())));
    await device.subscribeAsync(`${topic}_reply`);
    await device.publishAsync(topic, JSON.stringify({ id: '9', params: { firmware: 'x'.repeat(70_000) } }), { qos: 1 });
    await waitUntil(() => replies.length === 1, 5000, 'reply');
    expect(replies[0]).toMatchObject({ code: 460, message: expect.stringContaining('WANWU_ERR_TOO_LARGE') });
    const status = (await getJson(g.addresses().http.port, '/status')).body;
    expect(status.ingest.rejectedByCode.WANWU_ERR_TOO_LARGE).toEqual({ coap: 0, mqtt: 1 });
  });

  it('a CoAP retransmission (same message id and token) is answered again and stored once', async () => {
    const g = await start();
    const coap = await meterClient(g);
    const path = `/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`;
    const token = Buffer.from('c0ffee01', 'hex');
    // Byte for byte the same datagram: same message id, CoAP token and sequence number.
    const first = await coap.post(path, METER_FRAME, { messageId: 4242, token, seq: 1 });
    const again = await coap.post(path, METER_FRAME, { messageId: 4242, token, seq: 1 });
    expect([first.code, again.code]).toEqual(['2.04', '2.04']);
    expect(again.packet.messageId).toBe(first.packet.messageId);
    await waitUntil(() => upstream.messages.length >= 1, 5000, 'record');
    await new Promise((r) => setTimeout(r, 200));
    expect(upstream.messages).toHaveLength(1);
    expect(g.status().ingest.accepted.coap).toBe(1);
    expect(g.status().listeners.coap!.duplicates).toBe(1);
  });

  it('status, metrics and healthz', async () => {
    const g = await start();
    const samples = loadRegistry(DEVICES_DIR);
    const { http, coap, mqtt: m } = g.addresses();
    const health = await getJson(http.port, '/healthz');
    expect(health.status).toBe(200);
    const status = (await getJson(http.port, '/status')).body;
    expect(status).toMatchObject({
      uptimeS: expect.any(Number),
      ready: true,
      listeners: { coap: { port: coap.port, address: '127.0.0.1' }, mqtt: { port: m.port, clients: 0 }, http: { port: http.port } },
      registry: { products: samples.products.length, devices: samples.deviceCount },
      ingest: { accepted: { total: 0 }, rejected: { total: 0 } },
      buffer: { pending: 0, deadLetters: 0, oldestPendingAgeS: 0 },
    });
    await waitUntil(async () => (await getJson(http.port, '/status')).body.upstreams[0].connected === true, 5000, 'upstream connected');
    const up = (await getJson(http.port, '/status')).body.upstreams[0];
    expect(up).toMatchObject({ name: 'cloud', connected: true, forwarded: 0, pending: 0, lastError: null });
    const metrics = await getJson(http.port, '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.text).toContain('wanwu_upstream_connected{upstream="cloud"} 1');
    expect(metrics.text).toContain('# TYPE wanwu_ingest_accepted_total counter');
    expect(metrics.text).toContain(`wanwu_devices ${samples.deviceCount}`);
    expect((await getJson(http.port, '/nope')).status).toBe(404);
  });

  it('upstream outage: records wait in the buffer (pending on /status) and arrive on recovery', async () => {
    const g = await start();
    const coap = await meterClient(g);
    await waitUntil(() => g.status().upstreams[0]!.connected, 5000, 'upstream connected');
    await upstream.stop();
    await waitUntil(() => !g.status().upstreams[0]!.connected, 5000, 'upstream seen down');
    for (let i = 0; i < 5; i++) {
      const r = await coap.post(`/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`, METER_FRAME);
      expect(r.code).toBe('2.04');
    }
    // The 5 reports, and the meter's state record (offline -> online at its first report).
    expect(g.status().buffer.pending).toBe(6);
    expect(g.status().upstreams[0]!.pending).toBe(6);
    await upstream.start();
    await waitUntil(() => upstream.messages.length >= 5 && g.status().buffer.pending === 0, 10_000, 'backlog delivered');
    expect(new Set(upstream.records().map((r) => r.id)).size).toBe(5);
  });

  it('records pending at shutdown are delivered by the next run on the same database', async () => {
    await upstream.stop(); // down for the whole first run
    const first = await start();
    const device = await connectDevice(first.addresses().mqtt.port, DEMO.sensor.productKey, DEMO.sensor.deviceName);
    const topic = `/sys/${DEMO.sensor.productKey}/${DEMO.sensor.deviceName}/thing/event/property/post`;
    for (let i = 0; i < 10; i++) {
      await device.publishAsync(topic, JSON.stringify({ id: String(i), params: { temperature: 20 + i } }), { qos: 1 });
    }
    device.end(true);
    // The 10 reports, and the sensor's state records: online at its login, offline at its disconnect.
    await waitUntil(() => first.status().buffer.pending === 12, 5000, 'reports and state records pending');
    await first.stop();
    gw = null;
    await upstream.start();
    await start();
    await waitUntil(() => upstream.messages.length >= 10, 10_000, 'records from the previous run');
    expect(upstream.records().map((r) => r.msgId)).toEqual(['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']);
  });
});
