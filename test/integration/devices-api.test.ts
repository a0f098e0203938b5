// Device liveness and shadow through a real gateway: MQTT and CoAP devices on port 0, the HTTP API,
// /status and /metrics, and the state records on the gateway's own (local) upstream.

import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CoapClient } from '../../simulators/lib/coap-client.js';
import { PROPERTY_SET_METHOD } from '../../src/downlink/index.js';
import type { Gateway } from '../../src/gateway.js';
import { connectApp, connectDevice, DEMO, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir, waitUntil } from '../helpers/index.js';

interface Received {
  topic: string;
  json: any;
}

describe('device liveness and shadow (real gateway)', () => {
  let dir: ReturnType<typeof tempDir>;
  let gw: Gateway | null = null;
  const closers: Array<() => unknown> = [];

  beforeEach(() => {
    dir = tempDir();
  });
  afterEach(async () => {
    for (const c of closers.splice(0)) await c();
    await gw?.stop();
    gw = null;
    dir.cleanup();
  });

  /** An application on the local upstream (the demo app account), collecting the state records. */
  const watchStates = async (port: number): Promise<Received[]> => {
    const app = await connectApp(port);
    closers.push(() => app.end(true));
    const got: Received[] = [];
    app.on('message', (topic, payload) => got.push({ topic, json: JSON.parse(payload.toString()) }));
    await app.subscribeAsync('wanwu/+/+/state', { qos: 1 });
    return got;
  };

  it('an MQTT device: reported values and times, state online, desired from a property set, list paging and filters, /status and /metrics', async () => {
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
    const { mqtt: m, http } = gw.addresses();
    const states = await watchStates(m.port);
    const { productKey, deviceName } = DEMO.tracker;
    const device = await connectDevice(m.port, productKey, deviceName);
    closers.push(() => device.end(true));

    // Never seen yet: offline, lastSeen null, empty shadow.
    const before = await getJson(http.port, `/api/devices/${productKey}/${deviceName}`);
    expect(before.status).toBe(200);
    if (before.body.state === 'offline') expect(before.body).toMatchObject({ lastSeen: null, reported: {}, desired: {}, commands: [] });

    const sentAt = Date.now();
    await device.publishAsync(
      `/sys/${productKey}/${deviceName}/thing/event/property/post`,
      JSON.stringify({ id: '1', version: '1.0', method: 'thing.event.property.post', params: { batteryLevel: 87, speed: { value: 42.5, time: 1_700_000_000_000 } } }),
      { qos: 1 },
    );
    // PUBACK came after the commit, and the observers ran right after it.
    const one = await getJson(http.port, `/api/devices/${productKey}/${deviceName}`);
    expect(one.status).toBe(200);
    expect(one.body).toMatchObject({ productKey, deviceName, rat: 'cat1', status: 'enabled', state: 'online', desired: {}, commands: [] });
    expect(one.body.lastSeen).toBeGreaterThanOrEqual(sentAt - 1000);
    expect(one.body.reported).toEqual({
      batteryLevel: { value: 87, time: expect.any(Number) },
      speed: { value: 42.5, time: 1_700_000_000_000 }, // the device's own time
    });
    expect(Math.abs(one.body.reported.batteryLevel.time - Date.now())).toBeLessThan(10_000);

    // Its state record on the local upstream: offline -> online.
    await waitUntil(() => states.some((s) => s.json.deviceName === deviceName), 5000, 'state record upstream');
    const st = states.find((s) => s.json.deviceName === deviceName)!;
    expect(st.topic).toBe(`wanwu/${productKey}/${deviceName}/state`);
    expect(st.json).toMatchObject({ productKey, deviceName, kind: 'state', rat: 'cat1', transport: 'mqtt', data: { state: 'online', previous: 'offline', lastSeen: expect.any(Number) } });

    // A property set, submitted through the gateway's queue: desired until the device answers.
    const cmd = gw.downlink()!.submit(productKey, deviceName, { method: PROPERTY_SET_METHOD, params: { workMode: 2 } }, 'api');
    const withSet = (await getJson(http.port, `/api/devices/${productKey}/${deviceName}`)).body;
    expect(withSet.desired).toEqual({ workMode: { value: 2, commandId: cmd.id, since: cmd.createdAt } });
    expect(withSet.commands).toEqual([expect.objectContaining({ id: cmd.id, method: PROPERTY_SET_METHOD, params: { workMode: 2 } })]);
    expect(withSet.reported.workMode).toBeUndefined();

    // The list: every registered device, never-seen ones included, ordered, paged, filtered.
    const all = (await getJson(http.port, '/api/devices')).body;
    const deviceCount = gw.status().registry.devices;
    expect(all.total).toBe(deviceCount);
    expect(all.items).toHaveLength(deviceCount);
    const names = all.items.map((i: any) => `${i.productKey}/${i.deviceName}`);
    expect(names).toEqual([...names].sort());
    expect(all.items.find((i: any) => i.deviceName === deviceName)).toEqual({ productKey, deviceName, rat: 'cat1', state: 'online', lastSeen: one.body.lastSeen });
    expect(all.items.find((i: any) => i.deviceName === 'tr-0002')).toEqual({ productKey, deviceName: 'tr-0002', rat: 'cat1', state: 'offline', lastSeen: null });
    const page1 = (await getJson(http.port, '/api/devices?limit=5')).body;
    const page2 = (await getJson(http.port, `/api/devices?limit=5&offset=${page1.next}`)).body;
    expect(page1).toMatchObject({ total: deviceCount, offset: 0, limit: 5, next: 5 });
    expect([...page1.items, ...page2.items]).toEqual(all.items.slice(0, 10));
    const last = (await getJson(http.port, `/api/devices?limit=5&offset=${deviceCount - 2}`)).body;
    expect(last.items).toHaveLength(2);
    expect(last.next).toBeUndefined();
    const online = (await getJson(http.port, '/api/devices?state=online')).body;
    expect(online).toMatchObject({ total: 1, items: [{ productKey, deviceName, state: 'online' }] });
    const trackers = (await getJson(http.port, `/api/devices?productKey=${productKey}&state=offline`)).body;
    expect(trackers.items.map((i: any) => i.deviceName)).toEqual(['tr-0002', 'tr-0003']);
    const nb = (await getJson(http.port, '/api/devices?rat=nb-iot&limit=1')).body;
    expect(nb.items[0].rat).toBe('nb-iot');
    expect(nb.total).toBe(all.items.filter((i: any) => i.rat === 'nb-iot').length);

    // Refusals: a bad filter, an unknown device.
    const bad = await getJson(http.port, '/api/devices?state=asleep');
    expect(bad.status).toBe(400);
    expect(bad.body.code).toBe('WANWU_ERR_MALFORMED');
    expect((await getJson(http.port, '/api/devices?limt=5')).status).toBe(400);
    const unknown = await getJson(http.port, `/api/devices/${productKey}/nobody`);
    expect(unknown.status).toBe(404);
    expect(unknown.body.code).toBe('WANWU_ERR_UNKNOWN_DEVICE');

    // /status: devices by state and rat, commands by state.
    const s = (await getJson(http.port, '/status')).body;
    expect(s.devices.byState).toEqual({ online: 1, sleeping: 0, offline: deviceCount - 1 });
    expect(s.devices.byRat.cat1).toEqual({ online: 1, sleeping: 0, offline: 2 });
    expect(Object.keys(s.devices.byRat).sort()).toEqual(['cat1', 'nb-iot', 'redcap']);
    expect(Object.keys(s.commands.byState).sort()).toEqual(['cancelled', 'delivered', 'expired', 'queued', 'replied-error', 'replied-ok', 'sent']);
    expect(s.commands.byState.queued + s.commands.byState.sent + s.commands.byState.delivered).toBe(1);

    const metrics = (await getJson(http.port, '/metrics')).text;
    expect(metrics).toContain('wanwu_devices_by_state{state="online",rat="cat1"} 1');
    expect(metrics).toContain('wanwu_devices_by_state{state="offline",rat="cat1"} 2');
    expect(metrics).toMatch(/^wanwu_commands\{state="(queued|sent|delivered)"\} 1$/m);
    expect(s.commands).toMatchObject({ submitted: 1, refused: {}, unmatchedReplies: 0 });
    expect(metrics).toMatch(/^wanwu_commands_submitted_total 1$/m);
  });

  it('a CoAP device: online for the active window after its uplink, then sleeping, with both records upstream', async () => {
    // A 1 s window keeps the test short. CoAP auth is set to optional so a bare CON POST is taken
    // (test/security/coap-auth.test.ts covers tokens).
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], {
      coap: { host: '127.0.0.1', port: 0, auth: { mode: 'optional' } },
      downlink: { liveness: { activeWindowS: 1 } },
    });
    const { mqtt: m, coap: c, http } = gw.addresses();
    const states = await watchStates(m.port);
    const { productKey, deviceName } = DEMO.meter;
    const client = new CoapClient('127.0.0.1', c.port);
    closers.push(() => client.close());
    // The README's 14-byte report (layout in devices/WaterMeterNB/product.json).
    const res = await client.post(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`, Buffer.from('010000303904d20e10000929ffa6', 'hex'));
    expect(res.code).toBe('2.04');

    await waitUntil(() => states.filter((s) => s.json.deviceName === deviceName).length === 2, 5000, 'online and sleeping records');
    const [on, asleep] = states.filter((s) => s.json.deviceName === deviceName).map((s) => s.json);
    expect(on).toMatchObject({ kind: 'state', transport: 'coap', rat: 'nb-iot', data: { state: 'online', previous: 'offline', reason: 'uplink' } });
    // No liveness keys in WaterMeterNB's product.json and no history: the default 24 h interval.
    expect(asleep.data).toEqual({
      state: 'sleeping', previous: 'online', since: on.data.lastSeen + 1000, lastSeen: on.data.lastSeen, reason: 'window-ended',
      expectedNextAt: on.data.lastSeen + 86_400_000, intervalS: 86_400, intervalSource: 'default',
    });

    const one = (await getJson(http.port, `/api/devices/${productKey}/${deviceName}`)).body;
    expect(one).toMatchObject({ rat: 'nb-iot', state: 'sleeping', lastSeen: on.data.lastSeen, expectedNextAt: on.data.lastSeen + 86_400_000, mode: 'timed' });
    expect(one.reported.cumulativeFlow).toEqual({ value: 12.345, time: on.data.lastSeen });
    const s = (await getJson(http.port, '/status')).body;
    expect(s.devices.byRat['nb-iot']).toMatchObject({ online: 0, sleeping: 1 });
  });
});
