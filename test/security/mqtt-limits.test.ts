// The MQTT listener's limits on real sockets against an in-process gateway (real SQLite, the local
// upstream): device isolation, the socket-level packet-size guard, topic length and depth, keepalive
// range, the connect-flood ban, the per-device publish rate, the connection cap and the audit log.
// Raw sockets speak MQTT through mqtt-packet (what aedes and mqtt.js use) where mqtt.js would refuse
// to send the input, or would buffer it itself.

import { connect as tcpConnect, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import mqtt, { type MqttClient } from 'mqtt';
import { generate, parser, type Packet } from 'mqtt-packet';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { encodeRemainingLength } from '../../src/transport/mqtt/guard.js';
import type { Logger } from '../../src/types.js';
import { connectDevice, deviceSecret, gatewayConfig, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

const MB = 1024 * 1024;
const PK = 'TrackerCat1';
const postTopic = (dn: string, pk = PK) => `/sys/${pk}/${dn}/thing/event/property/post`;
const post = (id: string) => JSON.stringify({ id, version: '1.0', method: 'thing.event.property.post', params: { batteryLevel: 50 } });

/** A TCP client that speaks MQTT byte by byte: what it sends is exactly what the test says. */
class RawClient {
  readonly packets: Packet[] = [];
  closed = false;
  readonly whenClosed: Promise<void>;

  private constructor(readonly socket: Socket) {
    const p = parser();
    p.on('packet', (packet) => this.packets.push(packet));
    p.on('error', () => {});
    socket.on('data', (d: Buffer) => p.parse(d));
    socket.on('error', () => {});
    this.whenClosed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closed = true;
        resolve();
      }),
    );
  }

  static open(port: number, localAddress?: string): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = tcpConnect({ host: '127.0.0.1', port, ...(localAddress ? { localAddress } : {}) });
      s.once('connect', () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  send(packet: Packet): void {
    this.socket.write(generate(packet));
  }

  /** Writes `bytes` in total from a reused chunk, honouring backpressure, until done or the socket closes. */
  async stream(total: number, onMiB?: (sentMiB: number) => void): Promise<number> {
    const chunk = Buffer.alloc(MB, 0x78);
    let sent = 0;
    while (sent < total && !this.closed) {
      const part = total - sent >= chunk.length ? chunk : chunk.subarray(0, total - sent);
      sent += part.length;
      onMiB?.(sent / MB);
      if (!this.socket.write(part)) {
        await Promise.race([new Promise((r) => this.socket.once('drain', r)), this.whenClosed]);
      }
    }
    return sent;
  }

  /** The first received packet of this type not taken yet. */
  async next(cmd: Packet['cmd'], timeoutMs = 5000): Promise<Packet> {
    let found: Packet | undefined;
    await waitUntil(
      () => {
        const i = this.packets.findIndex((p) => p.cmd === cmd);
        if (i >= 0) found = this.packets.splice(i, 1)[0];
        return found !== undefined || this.closed;
      },
      timeoutMs,
      `${cmd}`,
    );
    if (!found) throw new Error(`connection closed before ${cmd}`);
    return found;
  }

  /** Resolves true if the gateway closes the connection within `ms`. */
  async closesWithin(ms: number): Promise<boolean> {
    await Promise.race([this.whenClosed, new Promise((r) => setTimeout(r, ms))]);
    return this.closed;
  }

  end(): void {
    this.socket.destroy();
  }
}

interface LoginOptions {
  keepalive?: number;
  id?: string;
  secret?: string;
  localAddress?: string;
  username?: string;
}

/** CONNECT with an Alibaba-signed login; resolves with the client and its CONNACK return code. */
async function rawLogin(port: number, productKey: string, deviceName: string, o: LoginOptions = {}): Promise<{ c: RawClient; code: number }> {
  const creds = signMqttLogin({ productKey, deviceName, deviceSecret: o.secret ?? (await deviceSecret(productKey, deviceName)), ...(o.id ? { id: o.id } : {}) });
  const c = await RawClient.open(port, o.localAddress);
  c.send({
    cmd: 'connect',
    protocolId: 'MQTT',
    protocolVersion: 4,
    clean: true,
    keepalive: o.keepalive ?? 60,
    clientId: creds.clientId,
    username: o.username ?? creds.username,
    password: Buffer.from(creds.password),
  });
  const connack = (await c.next('connack')) as Packet & { returnCode: number };
  return { c, code: connack.returnCode };
}

function mqttClient(port: number, opts: mqtt.IClientOptions): Promise<{ client: MqttClient; code: number }> {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, protocolVersion: 4, ...opts });
  return new Promise((resolve) => {
    client.once('connect', () => resolve({ client, code: 0 }));
    client.once('error', (err: Error & { code?: number }) => resolve({ client, code: err.code ?? -1 }));
  });
}

/** global.gc without --expose-gc on the command line: the flag can still be set at run time. */
function exposedGc(): () => void {
  setFlagsFromString('--expose-gc');
  return runInNewContext('gc') as () => void;
}

const replies = (c: RawClient) =>
  c.packets.filter((p): p is Packet & { topic: string; payload: Buffer } => p.cmd === 'publish').map((p) => JSON.parse(p.payload.toString()) as { id?: string; code: number; message: string });

describe('MQTT limits and abuse (real sockets, in-process gateway)', () => {
  let dir: ReturnType<typeof tempDir>;
  let gw: Gateway | null = null;
  const cleanups: Array<() => unknown> = [];
  const escaped: unknown[] = [];
  const onEscape = (e: unknown) => escaped.push(e);

  beforeEach(() => {
    dir = tempDir('wanwu-mqtt-limits-');
    process.on('uncaughtException', onEscape);
    process.on('unhandledRejection', onEscape);
  });
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    await gw?.stop();
    gw = null;
    dir.cleanup();
    process.off('uncaughtException', onEscape);
    process.off('unhandledRejection', onEscape);
    expect(escaped.splice(0)).toEqual([]);
  });

  const start = async (limits: Record<string, unknown> = {}, upstreams: Parameters<typeof startGateway>[1] = [{ name: 'local', url: 'local' }]) => {
    gw = await startGateway(dir.path, upstreams, { mqtt: { host: '127.0.0.1', port: 0, limits } });
    return { mqtt: gw.addresses().mqtt.port, http: gw.addresses().http.port };
  };
  const keep = <T extends { end(force?: boolean): unknown }>(c: T): T => {
    cleanups.push(() => c.end(true));
    return c;
  };
  const status = async (http: number) => (await getJson(http, '/status')).body;

  it('isolation: cross-device publish and subscribe, wildcards, and + / # in ids: zero allowed', async () => {
    const ports = await start();
    const app = keep((await mqttClient(ports.mqtt, { username: 'app', password: 'wanwu-demo' })).client);
    const records: Array<{ deviceName: string; msgId: string }> = [];
    // Device liveness records (wanwu/{pk}/{dn}/state) are the gateway's, not the devices' messages.
    app.on('message', (t, p) => void (t.endsWith('/state') || records.push(JSON.parse(p.toString()))));
    await app.subscribeAsync('wanwu/#', { qos: 1 });

    const { c: a } = await rawLogin(ports.mqtt, PK, 'tr-0001');
    keep(a);
    const foreign = [
      '#', '+', '+/#', '/#', '/sys/#', '/sys/+/#', '/sys/+/+/thing/event/property/post', `/sys/${PK}/#`, `/sys/${PK}/+/thing/#`,
      `/sys/${PK}/+/thing/event/property/post_reply`, `/sys/${PK}/tr-0002/#`, `/sys/${PK}/tr-0002/thing/event/property/post_reply`,
      '/sys/SensorRedCap/rs-0001/#', 'wanwu/#', `wanwu/${PK}/tr-0002/property`, '$SYS/#', `/sys/${PK}/tr-0001`,
    ];
    a.send({ cmd: 'subscribe', messageId: 1, subscriptions: foreign.map((topic) => ({ topic, qos: 1 as const })) });
    expect(((await a.next('suback')) as Packet & { granted: number[] }).granted).toEqual(foreign.map(() => 128));
    // The device's own namespace is granted: the refusals above are the namespace rule, not a broken SUBSCRIBE.
    a.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: `/sys/${PK}/tr-0001/#`, qos: 1 }] });
    expect(((await a.next('suback')) as Packet & { granted: number[] }).granted).toEqual([1]);

    // Device B's traffic reaches the application and nobody else.
    const b = keep(await connectDevice(ports.mqtt, PK, 'tr-0002'));
    await b.publishAsync(postTopic('tr-0002'), post('b1'), { qos: 1 });
    await waitUntil(() => records.length === 1, 5000, "B's record");
    expect(records[0]).toMatchObject({ deviceName: 'tr-0002', msgId: 'b1' });

    // A publishes as B: connection closed, nothing stored under B.
    expect(a.packets).toEqual([]);
    a.send({ cmd: 'publish', topic: postTopic('tr-0002'), payload: Buffer.from(post('forged')), qos: 1, messageId: 3, retain: false, dup: false });
    expect(await a.closesWithin(2000)).toBe(true);
    expect(a.packets).toEqual([]); // no PUBACK, nothing of B's

    // Wildcards in a PUBLISH topic (mqtt.js would not send them; a raw client does): connection closed.
    for (const topic of [`/sys/${PK}/tr-0003/thing/event/+/post`, `/sys/${PK}/tr-0003/thing/event/property/#`, '/sys/+/+/thing/event/property/post']) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0003');
      keep(c);
      expect(code).toBe(0);
      c.send({ cmd: 'publish', topic, payload: Buffer.from(post('wild')), qos: 1, messageId: 1, retain: false, dup: false });
      expect(await c.closesWithin(2000), topic).toBe(true);
    }

    // + # / in client ids and usernames. The first three are correctly signed logins of a real device:
    // the character rule is the only thing that refuses them.
    for (const id of ['tr#0003', 'tr+0003', 'fleet/tr-0003']) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0003', { id });
      keep(c);
      expect(code, id).toBe(2); // CONNACK 2: identifier rejected
    }
    for (const username of [`+&${PK}`, `#&${PK}`]) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0003', { username });
      keep(c);
      expect(code, username).toBe(4);
    }
    // An application account with valid credentials but a wildcard in its client id.
    expect((await mqttClient(ports.mqtt, { username: 'app', password: 'wanwu-demo', clientId: 'app/#1' }).then((r) => (keep(r.client), r))).code).toBe(2);

    await new Promise((r) => setTimeout(r, 300));
    expect(records.map((r) => r.msgId)).toEqual(['b1']);
    const s = await status(ports.http);
    expect(s.ingest.accepted.mqtt).toBe(1);
    expect(s.ingest.rejectedByCode.WANWU_ERR_FORBIDDEN).toEqual({ coap: 0, mqtt: 1 });
    expect(s.listeners.mqtt.refused).toEqual({ clientIdChars: 4, usernameChars: 2 });
    expect(s.listeners.mqtt.authFailures).toEqual({});
    const metrics = (await getJson(ports.http, '/metrics')).text;
    expect(metrics).toContain('wanwu_mqtt_refused_total{reason="clientIdChars"} 4');
    expect(metrics).toContain('wanwu_mqtt_refused_total{reason="usernameChars"} 2');
  });

  it('oversize: a CONNECT announcing 100 MB is disconnected within 1 s, and RSS grows by less than 20 MB', async () => {
    const ports = await start();
    const c = keep(await RawClient.open(ports.mqtt));
    const rssBefore = process.memoryUsage().rss;
    const t0 = performance.now();
    c.socket.write(Buffer.concat([Buffer.from([0x10]), encodeRemainingLength(100 * MB)]));
    // Then keep sending the announced body, as the attack does, until the gateway hangs up.
    const sent = await c.stream(100 * MB);
    await c.whenClosed;
    const closedMs = performance.now() - t0;
    const growth = process.memoryUsage().rss - rssBefore;
    console.log(`oversize CONNECT: closed after ${closedMs.toFixed(1)} ms having sent ${(sent / MB).toFixed(1)} MiB; RSS growth ${(growth / MB).toFixed(1)} MiB`);
    expect(closedMs).toBeLessThan(1000);
    expect(growth).toBeLessThan(20 * MB);
    const s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ packetTooLarge: 1 });
    // Still serving.
    const d = keep(await connectDevice(ports.mqtt, PK, 'tr-0001'));
    await d.publishAsync(postTopic('tr-0001'), post('after'), { qos: 1 }); // resolves on the PUBACK
  });

  it('control: with the packet limit at the protocol maximum, the same CONNECT keeps its socket open (aedes buffers it)', async () => {
    const ports = await start({ maxPacketBytes: 268_435_460 });
    const c = keep(await RawClient.open(ports.mqtt));
    c.socket.write(Buffer.concat([Buffer.from([0x10]), encodeRemainingLength(100 * MB)]));
    await c.stream(4 * MB);
    expect(await c.closesWithin(1000)).toBe(false);
    expect((await status(ports.http)).listeners.mqtt.refused).toEqual({});
  });

  it("a logged-in device's PUBLISH announcing 100 MB is cut at the payload limit: Alink 460, session kept, memory held bounded", async () => {
    const ports = await start();
    const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0001');
    keep(c);
    expect(code).toBe(0);
    c.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${postTopic('tr-0001')}_reply`, qos: 0 }] });
    await c.next('suback');
    const topic = Buffer.from(postTopic('tr-0001'));
    const payloadBytes = 100 * MB;
    // Memory the gateway holds for the packet: ArrayBuffers still reachable after a full GC, sampled
    // every 8 MiB while the payload streams in (read buffers already dropped are garbage, not held).
    const gc = exposedGc();
    gc();
    const rssBefore = process.memoryUsage().rss;
    const heldBefore = process.memoryUsage().arrayBuffers;
    let peakHeld = 0;
    // PUBLISH QoS 1: fixed header, topic length + topic, packet id 7, then the payload streamed.
    c.socket.write(Buffer.concat([Buffer.from([0x32]), encodeRemainingLength(2 + topic.length + 2 + payloadBytes), Buffer.from([topic.length >> 8, topic.length & 0xff]), topic, Buffer.from([0, 7])]));
    const sent = await c.stream(payloadBytes, (mib) => {
      if (mib % 8 !== 0) return;
      gc();
      peakHeld = Math.max(peakHeld, process.memoryUsage().arrayBuffers - heldBefore);
    });
    expect(sent).toBe(payloadBytes);
    const puback = (await c.next('puback')) as Packet & { messageId: number };
    expect(puback.messageId).toBe(7);
    await waitUntil(() => replies(c).length === 1, 5000, 'reply');
    expect(replies(c)[0]).toMatchObject({ code: 460, message: expect.stringContaining('WANWU_ERR_TOO_LARGE') });
    // The stream is still in step: PINGREQ is answered and the next publish is committed.
    c.send({ cmd: 'pingreq' });
    await c.next('pingresp');
    c.send({ cmd: 'publish', topic: postTopic('tr-0001'), payload: Buffer.from(post('small')), qos: 1, messageId: 8, retain: false, dup: false });
    await waitUntil(() => replies(c).length === 2, 5000, 'second reply');
    expect(replies(c)[1]).toMatchObject({ id: 'small', code: 200 });
    const rssGrowth = process.memoryUsage().rss - rssBefore;
    console.log(`oversize device PUBLISH: 100 MiB streamed and cut; gateway held at most ${(peakHeld / MB).toFixed(2)} MiB of buffers; RSS growth ${(rssGrowth / MB).toFixed(1)} MiB (read-buffer churn)`);
    expect(peakHeld).toBeLessThan(20 * MB);
    const s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ publishTruncated: 1 });
    expect(s.ingest.rejectedByCode.WANWU_ERR_TOO_LARGE).toEqual({ coap: 0, mqtt: 1 });
    expect(c.closed).toBe(false);
  });

  it('topics: a 65,400-slash topic and a 101-level topic are refused without a crash, as are topics over 16 levels or 256 bytes', async () => {
    const ports = await start();
    const own = `/sys/${PK}/tr-0001/`;
    const deep = (levels: number) => own + 'a/'.repeat(levels - 5) + 'a'; // own has 4 levels plus the empty last
    expect(deep(17).split('/')).toHaveLength(17);
    expect(deep(101).split('/')).toHaveLength(101);
    const slashes = '/'.repeat(65_400);
    const long = own + 'x'.repeat(300);

    // Subscriptions within our limits (<= 100 levels) get SUBACK 0x80 and the session stays up.
    {
      const { c } = await rawLogin(ports.mqtt, PK, 'tr-0001');
      keep(c);
      c.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${deep(17)}`, qos: 0 }] });
      expect(((await c.next('suback')) as Packet & { granted: number[] }).granted).toEqual([128]);
      c.send({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: long, qos: 0 }] });
      expect(((await c.next('suback')) as Packet & { granted: number[] }).granted).toEqual([128]);
      c.send({ cmd: 'pingreq' });
      await c.next('pingresp');
    }
    // Publishes over the limits, and subscriptions past aedes' 100-level ceiling: the connection is closed.
    const cases: Array<[string, Packet]> = [
      ['publish 17 levels', { cmd: 'publish', topic: deep(17), payload: Buffer.from('{}'), qos: 1, messageId: 1, retain: false, dup: false }],
      ['publish 300 bytes', { cmd: 'publish', topic: long, payload: Buffer.from('{}'), qos: 1, messageId: 1, retain: false, dup: false }],
      ['publish 101 levels', { cmd: 'publish', topic: deep(101), payload: Buffer.from('{}'), qos: 1, messageId: 1, retain: false, dup: false }],
      ['publish 65,400 slashes', { cmd: 'publish', topic: slashes, payload: Buffer.from('{}'), qos: 0, retain: false, dup: false }],
      ['subscribe 101 levels', { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: deep(101), qos: 0 }] }],
      ['subscribe 65,400 slashes', { cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: slashes, qos: 0 }] }],
    ];
    for (const [name, packet] of cases) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0002');
      keep(c);
      expect(code).toBe(0);
      c.send(packet);
      expect(await c.closesWithin(2000), name).toBe(true);
      expect(c.packets.filter((p) => p.cmd === 'puback' || p.cmd === 'suback'), name).toEqual([]);
    }
    // Still serving.
    const d = keep(await connectDevice(ports.mqtt, PK, 'tr-0003'));
    await d.publishAsync(postTopic('tr-0003'), post('after'), { qos: 1 }); // resolves on the PUBACK
    const s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ topicLevels: 6, topicLength: 2 });
    expect(s.ingest.accepted.mqtt).toBe(1);
    expect(s.buffer.deadLetters).toBe(0);
  });

  it('keepalive: a device must ask for 30-1200 s (CONNACK 2 otherwise); application accounts are not held to it', async () => {
    const ports = await start();
    for (const [keepalive, expected] of [[0, 2], [29, 2], [1201, 2], [65_535, 2], [30, 0], [1200, 0]] as const) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0001', { keepalive });
      keep(c);
      expect(code, `keepalive ${keepalive}`).toBe(expected);
    }
    expect((await mqttClient(ports.mqtt, { username: 'app', password: 'wanwu-demo', keepalive: 0 }).then((r) => (keep(r.client), r))).code).toBe(0);
    expect((await status(ports.http)).listeners.mqtt.refused).toEqual({ keepalive: 4 });
  });

  it('connect flood: the flooding device is banned after 15 logins in a minute; well-behaved devices connect normally during the flood', async () => {
    const ports = await start();
    const good = async (dn: string, id: string) => {
      const d = keep(await connectDevice(ports.mqtt, PK, dn));
      await d.publishAsync(postTopic(dn), post(id), { qos: 1 }); // resolves on the PUBACK
      d.end(true);
    };
    const codes: number[] = [];
    for (let i = 0; i < 20; i++) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0001');
      codes.push(code);
      c.end();
      if (i === 7) await good('tr-0002', 'during');
    }
    // 15 accepted, the 16th refused and starts the ban, the rest refused while it lasts (CONNACK 5).
    expect(codes).toEqual([...Array(15).fill(0), ...Array(5).fill(5)]);
    await good('tr-0002', 'after');
    await good('tr-0003', 'other');
    let s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ connectFlood: 1, banned: 4 });
    expect(s.listeners.mqtt.bans).toBe(1);
    expect(s.ingest.accepted.mqtt).toBe(3);

    // Failed logins count per source address and claimed identity: 16 bad signs for tr-0003 from
    // 127.0.0.1 ban that address for that identity only; the real tr-0003 elsewhere is untouched.
    for (let i = 0; i < 16; i++) {
      const { c, code } = await rawLogin(ports.mqtt, PK, 'tr-0003', { secret: 'wrong' });
      c.end();
      expect(code).toBe(4);
    }
    const banned = await rawLogin(ports.mqtt, PK, 'tr-0003');
    banned.c.end();
    expect(banned.code).toBe(5);
    const elsewhere = await rawLogin(ports.mqtt, PK, 'tr-0003', { localAddress: '127.0.0.2' });
    elsewhere.c.end();
    expect(elsewhere.code).toBe(0);
    s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ connectFlood: 2, banned: 5 });
    expect(s.listeners.mqtt.authFailures).toEqual({ WANWU_ERR_AUTH: 16 });
    expect(s.listeners.mqtt.bans).toBe(2);
    const metrics = (await getJson(ports.http, '/metrics')).text;
    expect(metrics).toContain('wanwu_mqtt_refused_total{reason="connectFlood"} 2');
    expect(metrics).toContain('wanwu_mqtt_bans 2');
  });

  it('publish rate: a device over its rate is first slowed down, then refused with Alink 429; other devices and the internal forwarder are not', async () => {
    const ports = await start({ publishRate: { perSecond: 20, burst: 5, maxDelayMs: 500 } });
    const app = keep((await mqttClient(ports.mqtt, { username: 'app', password: 'wanwu-demo' })).client);
    const records: Array<{ deviceName: string; msgId: string }> = [];
    // Device liveness records (wanwu/{pk}/{dn}/state) are the gateway's, not the devices' messages.
    app.on('message', (t, p) => void (t.endsWith('/state') || records.push(JSON.parse(p.toString()))));
    await app.subscribeAsync('wanwu/#', { qos: 1 });

    // 12 QoS 1 publishes in flight at once: 5 go at once, 7 wait for their token (50 ms apart), all committed.
    const a = keep(await connectDevice(ports.mqtt, PK, 'tr-0001'));
    const aReplies: Array<{ id: string; code: number }> = [];
    a.on('message', (_t, p) => aReplies.push(JSON.parse(p.toString())));
    await a.subscribeAsync(`${postTopic('tr-0001')}_reply`);
    const t0 = performance.now();
    await Promise.all(Array.from({ length: 12 }, (_, i) => a.publishAsync(postTopic('tr-0001'), post(`a${i}`), { qos: 1 })));
    const elapsed = performance.now() - t0;
    await waitUntil(() => aReplies.length === 12, 5000, 'replies to A');
    expect(aReplies.every((r) => r.code === 200)).toBe(true);
    expect(elapsed).toBeGreaterThan(250);
    let s = await status(ports.http);
    expect(s.listeners.mqtt.throttled).toBeGreaterThanOrEqual(5);
    expect(s.listeners.mqtt.throttled).toBeLessThanOrEqual(7);
    expect(s.listeners.mqtt.refused).toEqual({});

    // A QoS 0 flood of 200 in one write: what cannot be served within maxDelayMs gets Alink 429.
    const { c: flooder } = await rawLogin(ports.mqtt, PK, 'tr-0002');
    keep(flooder);
    flooder.send({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: `${postTopic('tr-0002')}_reply`, qos: 0 }] });
    await flooder.next('suback');
    flooder.socket.write(Buffer.concat(Array.from({ length: 200 }, (_, i) => generate({ cmd: 'publish', topic: postTopic('tr-0002'), payload: Buffer.from(post(`f${i}`)), qos: 0, retain: false, dup: false }))));
    // Meanwhile another device is served at once.
    const b = keep(await connectDevice(ports.mqtt, PK, 'tr-0003'));
    const tb = performance.now();
    await b.publishAsync(postTopic('tr-0003'), post('b'), { qos: 1 }); // resolves on the PUBACK
    const bMs = performance.now() - tb;
    await waitUntil(() => replies(flooder).length === 200, 10_000, 'a reply to every flood message');
    const byCode = replies(flooder).reduce<Record<number, number>>((m, r) => ({ ...m, [r.code]: (m[r.code] ?? 0) + 1 }), {});
    console.log(`publish flood: ${JSON.stringify(byCode)} (Alink code: count); the other device's PUBACK took ${bMs.toFixed(1)} ms`);
    expect(byCode[429]).toBeGreaterThan(100);
    expect(byCode[200]).toBeGreaterThanOrEqual(5);
    expect(Object.keys(byCode).sort()).toEqual(['200', '429']);
    expect(replies(flooder).find((r) => r.code === 429)).toMatchObject({ id: expect.stringMatching(/^f\d+$/), message: expect.stringContaining('WANWU_ERR_RATE_LIMITED') });
    expect(bMs).toBeLessThan(500);
    s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ rateLimited: byCode[429] });
    // Every committed record reached the application through the internal forwarder, unthrottled.
    const committed = 12 + byCode[200]! + 1;
    await waitUntil(() => records.length === committed, 5000, 'records upstream');
    expect(s.ingest.accepted.mqtt).toBe(committed);
  });

  it('maxConnections: a socket over the cap is closed at once and counted; a freed slot serves again', async () => {
    const upstream = new TestUpstream();
    await upstream.start();
    cleanups.push(() => upstream.stop());
    const ports = await start({ maxConnections: 2 }, [{ name: 'cloud', url: upstream.url }]);
    const first = keep(await RawClient.open(ports.mqtt));
    keep(await RawClient.open(ports.mqtt));
    const third = keep(await RawClient.open(ports.mqtt));
    expect(await third.closesWithin(1000)).toBe(true);
    let s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ maxConnections: 1 });
    expect(s.listeners.mqtt.connections).toBe(2);
    first.end();
    await waitUntil(async () => (await status(ports.http)).listeners.mqtt.connections === 1, 5000, 'slot freed');
    const d = keep(await connectDevice(ports.mqtt, PK, 'tr-0001'));
    await d.publishAsync(postTopic('tr-0001'), post('x'), { qos: 1 }); // resolves on the PUBACK
    s = await status(ports.http);
    expect(s.listeners.mqtt.refused).toEqual({ maxConnections: 1 });
  });

  it('audit log: refused logins go to logger.warn, at most 20 lines per 10 s, without passwords', async () => {
    const lines: Array<{ obj: Record<string, unknown>; msg: string | undefined }> = [];
    const logger: Logger = { debug() {}, info() {}, error() {}, warn: (obj, msg) => lines.push({ obj: obj as Record<string, unknown>, msg }) };
    gw = createGateway(gatewayConfig(dir.path, [{ name: 'local', url: 'local' }]), logger);
    await gw.start();
    const port = gw.addresses().mqtt.port;
    const passwords: string[] = [];
    for (let i = 0; i < 30; i++) {
      // 30 different unknown devices: no ban gets in the way, every one is an audited refusal.
      const creds = signMqttLogin({ productKey: PK, deviceName: `ghost-${i}`, deviceSecret: 'nope' });
      passwords.push(creds.password);
      const { client, code } = await mqttClient(port, creds);
      client.end(true);
      expect(code).toBe(4);
    }
    const audit = lines.filter((l) => l.obj.audit === 'mqtt');
    expect(audit).toHaveLength(20);
    expect(audit[0]).toEqual({
      obj: expect.objectContaining({ audit: 'mqtt', code: 'WANWU_ERR_UNKNOWN_DEVICE', reason: 'auth', connack: 4, username: `ghost-0&${PK}`, clientId: expect.stringMatching(/^ghost-0\|/), peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) }),
      msg: 'mqtt login refused',
    });
    const text = JSON.stringify(lines);
    for (const p of passwords) expect(text).not.toContain(p);
    const s = gw.status();
    expect(s.listeners.mqtt!.auditSuppressed).toBe(10);
    expect(s.listeners.mqtt!.authFailures).toEqual({ WANWU_ERR_UNKNOWN_DEVICE: 30 });
    // stop() writes the line that sums up what was left out.
    await gw.stop();
    gw = null;
    expect(lines.filter((l) => l.obj.audit === 'mqtt').at(-1)).toEqual({ obj: { audit: 'mqtt', suppressed: 10, windowS: 10 }, msg: 'mqtt login refusals left out of the audit log' });
  });
});
