// Commands to MQTT devices (issue 7, part B): a real gateway on port 0 with its command queue, mqtt.js
// devices with signed logins, an application account on the local upstream watching the state
// records. Also the listener's presence events, on a listener of its own.

import { connect as tcpConnect } from 'node:net';
import type { IClientOptions, IClientPublishOptions, MqttClient } from 'mqtt';
import { generate } from 'mqtt-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { MQTT_LIMITS_DEFAULTS } from '../../src/config/schema.js';
import type { Command, Downlink, PresenceEvent } from '../../src/downlink/index.js';
import type { Gateway } from '../../src/gateway.js';
import { loadRegistry } from '../../src/registry/index.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { createMqttListener, type MqttListener } from '../../src/transport/mqtt/index.js';
import { connectApp, connectDevice, DEVICES_DIR, deviceSecret, startGateway } from '../helpers/gateway.js';
import { silentLogger, tempDir, waitUntil } from '../helpers/index.js';

const PK = 'TrackerCat1';
const base = (dn: string) => `/sys/${PK}/${dn}/thing`;
const setTopic = (dn: string) => `${base(dn)}/service/property/set`;
const intervalTopic = (dn: string) => `${base(dn)}/service/setReportInterval`;
const setWorkMode = (workMode: number) => ({ method: 'thing.service.property.set', params: { workMode } });
const setReportInterval = (interval: number) => ({ method: 'thing.service.setReportInterval', params: { interval } });

interface Received {
  topic: string;
  json: { id: string; version: string; params: Record<string, unknown>; method: string };
  qos: number;
  retain: boolean;
}

/** A state record of kind "command" as the local upstream publishes it (data part). */
interface StateRecord {
  commandId: string;
  state: string;
  attempts: number;
  via?: string;
  reply?: { code: number; message?: string };
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('commands to MQTT devices', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A gateway with the local upstream, and an application watching wanwu/+/+/command. */
  async function setup(): Promise<{ gw: Gateway; port: number; downlink: Downlink; states: StateRecord[] }> {
    const dir = tempDir('wanwu-commands-');
    cleanups.push(() => dir.cleanup());
    const gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
    cleanups.push(() => gw.stop());
    const port = gw.addresses().mqtt.port;
    const app = await connectApp(port);
    cleanups.push(() => app.end(true));
    const states: StateRecord[] = [];
    app.on('message', (topic, payload) => {
      if (topic.endsWith('/command')) states.push((JSON.parse(payload.toString()) as { data: StateRecord }).data);
    });
    await app.subscribeAsync('wanwu/+/+/command', { qos: 1 });
    return { gw, port, downlink: gw.downlink()!, states };
  }

  /** A device login; what it receives is collected (customHandleAcks devices collect in their handler). */
  async function device(port: number, dn: string, options: IClientOptions = {}): Promise<{ client: MqttClient; received: Received[] }> {
    const client = await connectDevice(port, PK, dn, undefined, options);
    cleanups.push(() => client.end(true));
    const received: Received[] = [];
    client.on('message', (topic, payload, packet) => received.push({ topic, json: JSON.parse(payload.toString()), qos: packet.qos, retain: packet.retain }));
    return { client, received };
  }

  const stateOf = (downlink: Downlink, id: string) => downlink.get(id)!.state;
  const statesOf = (states: StateRecord[], id: string) => states.filter((s) => s.commandId === id).map((s) => s.state);
  const reply = (client: MqttClient, topic: string, body: Record<string, unknown>, opts: IClientPublishOptions = { qos: 1 }) =>
    client.publishAsync(`${topic}_reply`, JSON.stringify(body), opts);

  it('an online, subscribed device gets a property set at once; its PUBACK delivers it, its reply completes it, and every state reaches the upstream', async () => {
    const { port, downlink, states } = await setup();
    const dn = 'tr-0001';
    const { client, received } = await device(port, dn);
    await client.subscribeAsync(setTopic(dn), { qos: 1 });

    const cmd = downlink.submit(PK, dn, setWorkMode(1), 'api');
    await waitUntil(() => received.length === 1, 5000, 'the command');
    expect(received[0]).toEqual({
      topic: setTopic(dn),
      json: { id: cmd.msgId, version: '1.0', params: { workMode: 1 }, method: 'thing.service.property.set' },
      qos: 1,
      retain: false,
    });
    // mqtt.js acknowledges the QoS 1 PUBLISH: the command is delivered.
    await waitUntil(() => stateOf(downlink, cmd.id) === 'delivered', 5000, 'delivered');
    expect(downlink.get(cmd.id)).toMatchObject({ attempts: 1, via: 'mqtt' });

    await reply(client, setTopic(dn), { id: cmd.msgId, code: 200, data: {} });
    // The reply's PUBACK comes after its state record is committed.
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'replied-ok', reply: { code: 200 } });
    await waitUntil(() => statesOf(states, cmd.id).length === 4, 5000, 'four state records upstream');
    expect(statesOf(states, cmd.id)).toEqual(['queued', 'sent', 'delivered', 'replied-ok']);
    expect(states.find((s) => s.commandId === cmd.id && s.state === 'sent')).toMatchObject({ via: 'mqtt', attempts: 1 });
    expect(received).toHaveLength(1);
  });

  it('a command queued while the device is offline goes out right after it connects and subscribes, not before (clean session)', async () => {
    const { port, downlink } = await setup();
    const dn = 'tr-0002';
    const cmd = downlink.submit(PK, dn, setWorkMode(2), 'api');
    expect(cmd.state).toBe('queued');

    const { client, received } = await device(port, dn);
    // Connected but not subscribed: a PUBLISH now would be one the device never asked for.
    await sleep(300);
    expect(received).toHaveLength(0);
    expect(stateOf(downlink, cmd.id)).toBe('queued');

    await client.subscribeAsync(`${base(dn)}/service/#`, { qos: 1 });
    await waitUntil(() => received.length === 1, 5000, 'the command after SUBSCRIBE');
    expect(received[0]!.json.id).toBe(cmd.msgId);
    await waitUntil(() => stateOf(downlink, cmd.id) === 'delivered', 5000, 'delivered');
  });

  it('a kept session (clean = 0) gets a command queued while it was away right after it connects, on the subscription aedes restored', async () => {
    const { port, downlink } = await setup();
    const dn = 'tr-0003';
    const first = await device(port, dn, { clean: false });
    await first.client.subscribeAsync(setTopic(dn), { qos: 1 });
    await first.client.endAsync();

    const cmd = downlink.submit(PK, dn, setWorkMode(0), 'api');
    const second = await device(port, dn, { clean: false });
    // No SUBSCRIBE in this connection: the session's subscription is restored by aedes.
    await waitUntil(() => second.received.length === 1, 5000, 'the command on the restored subscription');
    expect(second.received[0]!.json.id).toBe(cmd.msgId);
    await waitUntil(() => stateOf(downlink, cmd.id) === 'delivered', 5000, 'delivered');
  });

  it.each([
    ['clean', true],
    ['kept', false],
  ])('a device that drops before its PUBACK gets the command again once on reconnect, attempts 2 (%s session)', async (_name, clean) => {
    const { port, downlink, states } = await setup();
    const dn = 'tr-0001';
    // First connection: takes the PUBLISH and never acknowledges it. mqtt.js sends a PUBACK once
    // handleMessage calls back (its documented hook for that), so this one never does.
    const first = await device(port, dn, { clean });
    first.client.handleMessage = () => {};
    await first.client.subscribeAsync(setTopic(dn), { qos: 1 });
    const cmd = downlink.submit(PK, dn, setWorkMode(1), 'api');
    await waitUntil(() => first.received.length === 1, 5000, 'the command');
    await sleep(300);
    // Without the PUBACK it is not delivered, and not published again in the same session.
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', attempts: 1 });
    expect(first.received).toHaveLength(1);
    first.client.end(true);
    await sleep(100);

    const second = await device(port, dn, { clean });
    if (clean) await second.client.subscribeAsync(setTopic(dn), { qos: 1 });
    await waitUntil(() => stateOf(downlink, cmd.id) === 'delivered', 5000, 'delivered on the second connection');
    expect(downlink.get(cmd.id)!.attempts).toBe(2);
    await sleep(300);
    // Once: for a kept session, aedes' own stored copy of the first attempt is not sent as well.
    expect(second.received.map((r) => r.json.id)).toEqual([cmd.msgId]);
    await waitUntil(() => statesOf(states, cmd.id).length === 4, 5000, 'state records upstream');
    expect(statesOf(states, cmd.id)).toEqual(['queued', 'sent', 'sent', 'delivered']);
  });

  it('keeps the order of a device\'s commands, queued while it was away and while it is online, past one round of 16', async () => {
    const { port, downlink } = await setup();
    const dn = 'tr-0002';
    const sent: Command[] = [];
    for (let i = 0; i < 20; i++) sent.push(downlink.submit(PK, dn, i % 2 === 0 ? setWorkMode(i % 3) : setReportInterval(10 + i), 'api'));
    const { client, received } = await device(port, dn);
    // Both command topics in one SUBSCRIBE.
    await client.subscribeAsync({ [setTopic(dn)]: { qos: 1 }, [intervalTopic(dn)]: { qos: 1 } });
    for (let i = 0; i < 5; i++) sent.push(downlink.submit(PK, dn, setReportInterval(100 + i), 'api'));
    await waitUntil(() => received.length === sent.length, 10_000, `${sent.length} commands`);
    expect(received.map((r) => r.json.id)).toEqual(sent.map((c) => c.msgId));
    expect(received.map((r) => r.topic)).toEqual(sent.map((c) => c.topic));
    await waitUntil(() => sent.every((c) => stateOf(downlink, c.id) === 'delivered'), 5000, 'all delivered');
    await sleep(200);
    expect(received).toHaveLength(sent.length);
  });

  it('a reply with code != 200 gives replied-error; one with an unknown id is refused and leaves the command open; no reply is ever answered', async () => {
    const { gw, port, downlink, states } = await setup();
    const dn = 'tr-0003';
    const { client, received } = await device(port, dn);
    // Everything under the device's prefix: a `..._reply_reply` would show here.
    await client.subscribeAsync(`/sys/${PK}/${dn}/#`, { qos: 1 });
    const cmd = downlink.submit(PK, dn, setReportInterval(60), 'api');
    await waitUntil(() => stateOf(downlink, cmd.id) === 'delivered', 5000, 'delivered');

    // Unknown id: refused by the pipeline (counted, dead-lettered), the command stays open.
    await reply(client, intervalTopic(dn), { id: '987654321', code: 200, data: { applied: 60, previous: 30 } });
    expect(stateOf(downlink, cmd.id)).toBe('delivered');
    expect(gw.status().ingest.rejectedByCode.WANWU_ERR_UNKNOWN_COMMAND?.mqtt).toBe(1);

    await reply(client, intervalTopic(dn), { id: cmd.msgId, code: 460, message: 'interval not supported' });
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'replied-error', reply: { code: 460, message: 'interval not supported' } });
    await waitUntil(() => statesOf(states, cmd.id).includes('replied-error'), 5000, 'replied-error upstream');

    await sleep(300);
    const topics = received.map((r) => r.topic);
    expect(topics.filter((t) => t.endsWith('_reply_reply'))).toEqual([]);
    // What the device saw: the command, and its own two replies routed back to its '#' subscription.
    expect(topics).toEqual([intervalTopic(dn), `${intervalTopic(dn)}_reply`, `${intervalTopic(dn)}_reply`]);
  });
});

describe('MQTT device presence', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A bare MQTT listener (no pipeline) reporting presence; keepalives from 1 s allowed. */
  async function listener(): Promise<{ listener: MqttListener; port: number; events: PresenceEvent[] }> {
    const events: PresenceEvent[] = [];
    const l = createMqttListener({
      host: '127.0.0.1',
      port: 0,
      registry: loadRegistry(DEVICES_DIR),
      ingest: async () => ({ committed: 1, deadLettered: false }),
      refuse: async () => {},
      apps: [],
      publishers: [],
      logger: silentLogger,
      limits: { ...MQTT_LIMITS_DEFAULTS, keepaliveMinS: 1 },
      presence: (e) => events.push(e),
    });
    await l.start();
    cleanups.push(() => l.stop());
    return { listener: l, port: l.address().port, events };
  }

  const summary = (events: PresenceEvent[]) => events.map((e) => ({ deviceName: e.deviceName, online: e.online, ...(e.reason ? { reason: e.reason } : {}) }));

  it('online when the session is ready; offline when it ends, with the reason', async () => {
    const { port, events } = await listener();
    const before = Date.now();
    const a = await connectDevice(port, PK, 'tr-0001');
    cleanups.push(() => a.end(true));
    await waitUntil(() => events.length === 1, 5000, 'online');
    expect(events[0]).toMatchObject({ productKey: PK, deviceName: 'tr-0001', online: true });
    expect(events[0]!.at).toBeGreaterThanOrEqual(before);

    await a.endAsync(); // sends DISCONNECT
    await waitUntil(() => events.length === 2, 5000, 'offline after DISCONNECT');

    const b = await connectDevice(port, PK, 'tr-0002');
    await waitUntil(() => events.length === 3, 5000, 'online');
    b.stream.destroy(); // the connection drops without DISCONNECT
    await waitUntil(() => events.length === 4, 5000, 'offline after a lost connection');

    expect(summary(events)).toEqual([
      { deviceName: 'tr-0001', online: true },
      { deviceName: 'tr-0001', online: false, reason: 'client disconnect' },
      { deviceName: 'tr-0002', online: true },
      { deviceName: 'tr-0002', online: false, reason: 'connection lost' },
    ]);
  });

  it('offline with "keepalive timeout" when a device goes silent past 1.5 x its keepalive [MQTT-3.1.2-24]', async () => {
    const { port, events } = await listener();
    const creds = signMqttLogin({ productKey: PK, deviceName: 'tr-0003', deviceSecret: await deviceSecret(PK, 'tr-0003') });
    const socket = tcpConnect({ host: '127.0.0.1', port });
    cleanups.push(() => socket.destroy());
    socket.on('error', () => {});
    await new Promise<void>((resolve) => socket.once('connect', () => resolve()));
    // CONNECT with a 1 s keepalive, then nothing (no PINGREQ).
    socket.write(generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 1, clientId: creds.clientId, username: creds.username, password: Buffer.from(creds.password) }));
    await waitUntil(() => events.length === 1, 5000, 'online');
    await waitUntil(() => events.length === 2, 5000, 'offline');
    expect(summary(events)).toEqual([
      { deviceName: 'tr-0003', online: true },
      { deviceName: 'tr-0003', online: false, reason: 'keepalive timeout' },
    ]);
  });

  it('a new login of the same device takes the session over without an offline in between', async () => {
    const { port, events } = await listener();
    const first = await connectDevice(port, PK, 'tr-0001');
    cleanups.push(() => first.end(true));
    await waitUntil(() => events.length === 1, 5000, 'online');
    const firstClosed = new Promise<void>((resolve) => first.once('close', () => resolve()));

    const second = await connectDevice(port, PK, 'tr-0001');
    cleanups.push(() => second.end(true));
    await firstClosed; // [MQTT-3.1.4-2]: the older connection is closed
    await waitUntil(() => events.length === 2, 5000, 'the new session online');
    await sleep(300);
    expect(summary(events)).toEqual([
      { deviceName: 'tr-0001', online: true },
      { deviceName: 'tr-0001', online: true },
    ]);

    await second.endAsync();
    await waitUntil(() => events.length === 3, 5000, 'offline');
    expect(summary(events)[2]).toEqual({ deviceName: 'tr-0001', online: false, reason: 'client disconnect' });
  });

  it('the sessions still open when the listener stops end with "gateway stopping"', async () => {
    const { listener: l, port, events } = await listener();
    const a = await connectDevice(port, PK, 'tr-0002');
    cleanups.push(() => a.end(true));
    await waitUntil(() => events.length === 1, 5000, 'online');
    await l.stop();
    // Reported before stop() resolved.
    expect(summary(events)).toEqual([
      { deviceName: 'tr-0002', online: true },
      { deviceName: 'tr-0002', online: false, reason: 'gateway stopping' },
    ]);
  });
});
