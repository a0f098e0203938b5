// Commands to CoAP devices (issue 7, part C; src/transport/coap/delivery.ts): a real gateway on port 0
// with a temp data dir, and a small test client on a real UDP socket acting as a sleeping NB-IoT
// module: it authenticates with POST /auth, sleeps (no traffic), and wakes with an uplink. Push
// retransmission timing runs on the listener alone with shortened RFC 7252 §4.8 timers.

import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate, type Option, type Packet, type ParsedPacket } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { COAP_AUTH_DEFAULTS, type ConfigInput } from '../../src/config/schema.js';
import { createDownlink, type Command, type CommandState, type Downlink } from '../../src/downlink/index.js';
import type { Gateway } from '../../src/gateway.js';
import { createProduct, loadRegistry } from '../../src/registry/index.js';
import { createListener, type CoapTuning } from '../../src/transport/coap/listener.js';
import type { CoapDownlinkMode, CoapListener } from '../../src/transport/coap/index.js';
import type { IngestOutcome } from '../../src/types.js';
import { RawCoapClient, type DeviceToken, type Received } from '../helpers/coap.js';
import { DEVICES_DIR, deviceSecret, startGateway } from '../helpers/gateway.js';
import { errorOf, silentLogger, tempDir, waitUntil } from '../helpers/index.js';

// devices/WaterMeterNB (binary codec): a 14-byte report on thing/model/up_raw, field by field:
// 01 msgType | 0012d687 cumulativeFlow 1234.567 | 01f4 instantFlow 0.5 | 0e10 battery 3.6 V | 00 valve open | 0866 21.5 C | ffa1 rsrp -95
const METER_FRAME = Buffer.from('010012d68701f40e10000866ffa1', 'hex');
const WM = { productKey: 'WaterMeterNB', deviceName: 'wm-0001', secret: 'demo-secret-WaterMeterNB-0001' };
const UP_RAW = `/sys/${WM.productKey}/${WM.deviceName}/thing/model/up_raw`;
const DOWN_RAW = `/sys/${WM.productKey}/${WM.deviceName}/thing/model/down_raw`;
const TR = { productKey: 'TrackerCat1', deviceName: 'tr-0001' };
/** Option numbers, written here rather than imported so the test checks the wire format. */
const OPT_COMMANDS_PENDING = '65000';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

let messageId = 0x0100;
/** Message ids below 0xf000 (authPacket uses 0xf000-0xffff). */
function mid(): number {
  messageId = messageId >= 0xe000 ? 0x0100 : messageId + 1;
  return messageId;
}

function uriPath(topic: string): Option[] {
  return ['topic', ...topic.split('/').filter((s) => s !== '')].map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
}

/** A POST of `payload` on `topic` (an uplink or a reply), with the token's options when given. */
function post(topic: string, payload: Buffer, token?: DeviceToken, extra: Partial<Packet> = {}): Packet {
  const options = uriPath(topic);
  if (token !== undefined) options.push(...token.options());
  return { code: 'POST', confirmable: true, messageId: mid(), token: Buffer.from([0x7e, messageId & 0xff]), options, payload, ...extra };
}

function get(topic: string, token?: DeviceToken): Packet {
  const options = uriPath(topic);
  if (token !== undefined) options.push(...token.options());
  return { code: 'GET', confirmable: true, messageId: mid(), token: Buffer.from([0x6e, messageId & 0xff]), options };
}

function locationPath(p: ParsedPacket): string {
  return p.options
    .filter((o) => o.name === 'Location-Path')
    .map((o) => `/${o.value.toString()}`)
    .join('');
}

function option(p: ParsedPacket, name: string): Buffer | undefined {
  return p.options.find((o) => o.name === name)?.value;
}

function uintOf(b: Buffer | undefined): number | undefined {
  if (b === undefined) return undefined;
  let v = 0;
  for (const x of b) v = v * 256 + x;
  return v;
}

/** The datagram the client received, asserted to be a pushed command request. */
function expectPush(r: Received, topic: string, payload: Buffer): void {
  expect(r.packet).toMatchObject({ code: '0.02', confirmable: true });
  expect(
    r.packet.options
      .filter((o) => o.name === 'Uri-Path')
      .map((o) => `/${o.value.toString()}`)
      .join(''),
  ).toBe(`/topic${topic}`);
  expect(r.packet.payload.equals(payload)).toBe(true);
}

/** An empty ACK (RFC 7252 §4.2) for a CON message the client received. */
function ackOf(r: Received): Buffer {
  return generate({ code: '0.00', ack: true, messageId: r.packet.messageId, token: Buffer.alloc(0) });
}

/** The states a command went through, in order, as the queue reported them. */
function trackStates(downlink: Downlink): (id: string) => CommandState[] {
  const seen = new Map<string, CommandState[]>();
  downlink.onChange(({ command }) => {
    const list = seen.get(command.id) ?? [];
    list.push(command.state);
    seen.set(command.id, list);
  });
  return (id) => seen.get(id) ?? [];
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

async function client(port: number): Promise<RawCoapClient> {
  const c = await RawCoapClient.open(port);
  cleanups.push(() => c.close());
  return c;
}

/** A devices/ copy whose product.json (WaterMeterNB unless named) has `downlink` set. */
function devicesWith(downlink: Record<string, unknown>, productKey = WM.productKey): string {
  const dir = tempDir('wanwu-devices-');
  cleanups.push(() => dir.cleanup());
  cpSync(DEVICES_DIR, dir.path, { recursive: true });
  const file = join(dir.path, productKey, 'product.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), downlink }));
  return dir.path;
}

interface Running {
  gw: Gateway;
  port: number;
  downlink: Downlink;
  states: (id: string) => CommandState[];
  dataDir: string;
}

async function gateway(extra: Partial<ConfigInput> = {}, dataDir?: string): Promise<Running> {
  let dir = dataDir;
  if (dir === undefined) {
    const t = tempDir('wanwu-coap-commands-');
    cleanups.push(() => t.cleanup());
    dir = t.path;
  }
  const gw = await startGateway(dir, [], extra);
  cleanups.push(() => gw.stop());
  const downlink = gw.downlink()!;
  return { gw, port: gw.addresses().coap.port, downlink, states: trackStates(downlink), dataDir: dir };
}

function submitRaw(downlink: Downlink, hex: string, ttl?: number): Command {
  return downlink.submit(WM.productKey, WM.deviceName, ttl === undefined ? { raw: hex } : { raw: hex, ttl }, 'api');
}

describe('commands to CoAP devices: piggyback (the default)', () => {
  it('a command queued while the device sleeps rides in the 2.04 to its next uplink; its reply completes it (sent -> delivered -> replied-ok)', async () => {
    const { port, downlink, states } = await gateway();
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    // Asleep: the command waits, and nothing is sent to the device.
    const cmd = submitRaw(downlink, 'a1b2c3d4');
    await dev.nothingFor(300);
    expect(downlink.get(cmd.id)!.state).toBe('queued');

    // Wake: one uplink. The piggybacked ACK: 2.04, the command's bytes, Content-Format 42 (octet-stream)
    // and Location-Path naming the command topic (RFC 7252 §5.10.7); nothing more waits.
    const a = await dev.request(post(UP_RAW, METER_FRAME, token));
    expect(a.packet).toMatchObject({ code: '2.04', ack: true, messageId: a.packet.messageId });
    expect(a.packet.payload.toString('hex')).toBe('a1b2c3d4');
    expect(uintOf(option(a.packet, 'Content-Format'))).toBe(42);
    expect(locationPath(a.packet)).toBe(`/topic${DOWN_RAW}`);
    expect(option(a.packet, OPT_COMMANDS_PENDING)).toBeUndefined();
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', via: 'coap-piggyback', attempts: 1 });

    // The device replies on the Location-Path + "_reply": that request proves it got the ACK
    // (delivered), and the reply completes the command. The reply's own answer is a bare 2.04.
    const r = await dev.request(post(`${DOWN_RAW}_reply`, Buffer.from([0x00]), token));
    expect(r.packet).toMatchObject({ code: '2.04', ack: true });
    expect(r.packet.payload.length).toBe(0);
    await waitUntil(() => downlink.get(cmd.id)!.state === 'replied-ok', 2000, 'the reply');
    expect(states(cmd.id)).toEqual(['queued', 'sent', 'delivered', 'replied-ok']);
    expect(downlink.get(cmd.id)!.reply).toMatchObject({ code: 200, data: { raw: '00' } });
  });

  it('sends an Alink JSON command as application/json, says when more wait, and takes the {"id","code"} reply', async () => {
    const { port, downlink, states } = await gateway();
    const dev = await client(port);
    const token = await dev.authenticate({ ...TR, secret: await deviceSecret(TR.productKey, TR.deviceName) });
    const setTopic = `/sys/${TR.productKey}/${TR.deviceName}/thing/service/property/set`;
    const first = downlink.submit(TR.productKey, TR.deviceName, { method: 'thing.service.property.set', params: { workMode: 1 } }, 'api');
    const second = downlink.submit(TR.productKey, TR.deviceName, { raw: '0102' }, 'api');

    const uplink = Buffer.from(JSON.stringify({ id: '7', version: '1.0', params: { batteryLevel: 80 } }));
    const a = await dev.request(post(`/sys/${TR.productKey}/${TR.deviceName}/thing/event/property/post`, uplink, token));
    expect(a.packet.code).toBe('2.04');
    expect(uintOf(option(a.packet, 'Content-Format'))).toBe(50);
    expect(locationPath(a.packet)).toBe(`/topic${setTopic}`);
    // COMMANDS_PENDING (option 65000) = 1: another command waits.
    expect(uintOf(option(a.packet, OPT_COMMANDS_PENDING))).toBe(1);
    const message = JSON.parse(a.packet.payload.toString()) as { id: string; method: string; params: unknown };
    expect(message).toMatchObject({ id: first.msgId, method: 'thing.service.property.set', params: { workMode: 1 } });

    // The reply (Alibaba's property/set_reply) is a new request: its answer carries the next command.
    const r = await dev.request(post(`${setTopic}_reply`, Buffer.from(JSON.stringify({ id: message.id, code: 200, data: {} })), token));
    expect(r.packet.code).toBe('2.04');
    expect(r.packet.payload.toString('hex')).toBe('0102');
    expect(locationPath(r.packet)).toBe(`/topic/sys/${TR.productKey}/${TR.deviceName}/thing/model/down_raw`);
    expect(option(r.packet, OPT_COMMANDS_PENDING)).toBeUndefined();
    await waitUntil(() => downlink.get(first.id)!.state === 'replied-ok', 2000, 'the reply');
    expect(states(first.id)).toEqual(['queued', 'sent', 'delivered', 'replied-ok']);
    expect(downlink.get(second.id)!.state).toBe('sent');
  });

  it('after a NON uplink nothing proves delivery: the command goes again with each answer until the device replies', async () => {
    const { port, downlink, states } = await gateway();
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, '0a0b');
    for (let i = 1; i <= 2; i++) {
      const a = await dev.request(post(UP_RAW, METER_FRAME, token, { confirmable: false }));
      expect(a.packet).toMatchObject({ code: '2.04', confirmable: false, ack: false });
      expect(a.packet.payload.toString('hex')).toBe('0a0b');
      expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', attempts: i });
    }
    const r = await dev.request(post(`${DOWN_RAW}_reply`, Buffer.from([0x00]), token, { confirmable: false }));
    expect(r.packet.payload.length).toBe(0);
    await waitUntil(() => downlink.get(cmd.id)!.state === 'replied-ok', 2000, 'the reply');
    expect(states(cmd.id)).toEqual(['queued', 'sent', 'sent', 'replied-ok']);
  });

  it('repeats the command for a retransmitted uplink, but not for a smaller datagram reusing its id and token (RFC 7252 §11.3)', async () => {
    const { port, downlink } = await gateway();
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, 'ff'.repeat(200));
    const a = await dev.request(post(UP_RAW, METER_FRAME, token));
    // The answer is larger than the request: allowed for a device that presented its token.
    expect(a.raw.length).toBeGreaterThan(a.sent.length);
    expect(a.packet.payload.length).toBe(200);
    // A real retransmission (byte for byte) gets the same answer from the de-duplication cache.
    dev.send(a.sent);
    expect((await dev.next()).raw.equals(a.raw)).toBe(true);
    // A shorter datagram with the same message id and token gets nothing.
    dev.send(a.sent.subarray(0, a.sent.length - METER_FRAME.length - 1));
    await dev.nothingFor(300);
    expect(downlink.get(cmd.id)!.attempts).toBe(1);
  });
});

describe('commands to CoAP devices: push', () => {
  it('pushes a command queued while the device slept as a CON POST after its next uplink; the ACK delivers it, the reply completes it', async () => {
    const { port, downlink, states } = await gateway({ devicesDir: devicesWith({ coap: 'push', windowS: 5 }) });
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, 'c0ffee');
    await dev.nothingFor(300); // asleep: no uplink yet, so nowhere to push

    const a = await dev.request(post(UP_RAW, METER_FRAME, token));
    // The uplink's answer is the plain 2.04: in push mode the command comes as a request of its own.
    expect(a.packet).toMatchObject({ code: '2.04', ack: true });
    expect(a.packet.payload.length).toBe(0);
    expect(locationPath(a.packet)).toBe('');
    const pushed = await dev.next();
    expectPush(pushed, DOWN_RAW, Buffer.from('c0ffee', 'hex'));
    expect(uintOf(option(pushed.packet, 'Content-Format'))).toBe(42);
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', via: 'coap-push' });
    dev.send(ackOf(pushed));
    await waitUntil(() => downlink.get(cmd.id)!.state === 'delivered', 2000, 'the ACK');

    // Queued while the device is still in its window: pushed at once (DeliveryChannel.wake).
    const next = submitRaw(downlink, '0badc0de');
    const again = await dev.next();
    expectPush(again, DOWN_RAW, Buffer.from('0badc0de', 'hex'));
    dev.send(ackOf(again));
    await waitUntil(() => downlink.get(next.id)!.state === 'delivered', 2000, 'the second ACK');

    await dev.request(post(`${DOWN_RAW}_reply`, Buffer.from([0x01]), token));
    await waitUntil(() => downlink.get(cmd.id)!.state === 'replied-ok', 2000, 'the reply');
    expect(states(cmd.id)).toEqual(['queued', 'sent', 'delivered', 'replied-ok']);
  });

  it('takes an Alink reply the device piggybacks in its ACK, or sends as a separate response after an empty ACK (RFC 7252 §5.2)', async () => {
    const { port, downlink, states } = await gateway({ devicesDir: devicesWith({ coap: 'push', windowS: 5 }, TR.productKey) });
    const dev = await client(port);
    const token = await dev.authenticate({ ...TR, secret: await deviceSecret(TR.productKey, TR.deviceName) });
    const setTopic = `/sys/${TR.productKey}/${TR.deviceName}/thing/service/property/set`;
    const first = downlink.submit(TR.productKey, TR.deviceName, { method: 'thing.service.property.set', params: { workMode: 1 } }, 'api');
    const uplink = Buffer.from(JSON.stringify({ id: '9', version: '1.0', params: { batteryLevel: 80 } }));
    const a = await dev.request(post(`/sys/${TR.productKey}/${TR.deviceName}/thing/event/property/post`, uplink, token));
    // An Alink JSON uplink in push mode keeps its usual Alink reply.
    expect(JSON.parse(a.packet.payload.toString())).toMatchObject({ id: '9', code: 200 });

    const p1 = await dev.next();
    expect(uintOf(option(p1.packet, 'Content-Format'))).toBe(50);
    const m1 = JSON.parse(p1.packet.payload.toString()) as { id: string };
    expect(m1.id).toBe(first.msgId);
    expectPush(p1, setTopic, p1.packet.payload);
    // §5.2.1: the response piggybacked in the ACK, echoing our token.
    dev.send(generate({ code: '2.04', ack: true, messageId: p1.packet.messageId, token: p1.packet.token, payload: Buffer.from(JSON.stringify({ id: m1.id, code: 200, data: {} })) }));
    await waitUntil(() => downlink.get(first.id)!.state === 'replied-ok', 2000, 'the reply in the ACK');
    expect(states(first.id)).toEqual(['queued', 'sent', 'delivered', 'replied-ok']);

    // §5.2.2: an empty ACK, then the response as a CON of the device's own, which the gateway ACKs.
    const second = downlink.submit(TR.productKey, TR.deviceName, { method: 'thing.service.property.set', params: { workMode: 2 } }, 'api');
    const p2 = await dev.next();
    const m2 = JSON.parse(p2.packet.payload.toString()) as { id: string };
    dev.send(ackOf(p2));
    await waitUntil(() => downlink.get(second.id)!.state === 'delivered', 2000, 'the empty ACK');
    const response = dev.request({ code: '2.04', confirmable: true, messageId: 0x4321, token: p2.packet.token, payload: Buffer.from(JSON.stringify({ id: m2.id, code: 200 })) });
    expect((await response).packet).toMatchObject({ code: '0.00', ack: true, messageId: 0x4321 });
    await waitUntil(() => downlink.get(second.id)!.state === 'replied-ok', 2000, 'the separate response');
  });

  it('a device whose source port changed between wake-ups (a NAT rebinding) still gets its commands, at the new port', async () => {
    const { port, downlink } = await gateway({ devicesDir: devicesWith({ coap: 'push', windowS: 3 }) });
    const before = await client(port);
    const token = await before.authenticate(WM);
    await before.request(post(UP_RAW, METER_FRAME, token));
    // The window closes, the device sleeps; its NAT binding is gone by the next wake-up.
    await sleep(3100);
    const cmd = submitRaw(downlink, '5a5a');
    const after = await client(port); // a new socket: a new source port, the same token
    expect(after.port).not.toBe(before.port);
    const a = await after.request(post(UP_RAW, METER_FRAME, token));
    expect(a.packet.code).toBe('2.04');
    const pushed = await after.next();
    expectPush(pushed, DOWN_RAW, Buffer.from('5a5a', 'hex'));
    after.send(ackOf(pushed));
    await waitUntil(() => downlink.get(cmd.id)!.state === 'delivered', 2000, 'the ACK');
    await before.nothingFor(200);
  });
});

describe('commands to CoAP devices: the listener alone, with short timers', () => {
  /** A listener with a real queue and registry; `ingest` commits after `ingestMs`. */
  async function listenerWithQueue(mode: CoapDownlinkMode, tuning: Partial<CoapTuning>, ingestMs = 0): Promise<{ listener: CoapListener; downlink: Downlink }> {
    const dir = tempDir('wanwu-coap-push-');
    cleanups.push(() => dir.cleanup());
    const registry = loadRegistry(DEVICES_DIR);
    const downlink = createDownlink({
      path: join(dir.path, 'commands.db'),
      registry,
      records: { append: async () => {} },
      logger: silentLogger,
      ttlS: 3600,
      maxTtlS: 86_400,
      maxPerDevice: 10,
      maxPayloadBytes: 1024,
      retainS: 60,
      sweepMs: 1000,
    });
    await downlink.start();
    cleanups.push(() => downlink.stop());
    const ingest = async (): Promise<IngestOutcome> => {
      await sleep(ingestMs);
      return { committed: 1, deadLettered: false };
    };
    const listener: CoapListener = createListener(
      {
        host: '127.0.0.1',
        port: 0,
        maxPayloadBytes: 1024,
        auth: { ...COAP_AUTH_DEFAULTS, registry },
        ingest,
        logger: silentLogger,
        downlink,
        downlinkMode: () => mode,
      },
      tuning,
    );
    await listener.start();
    cleanups.push(() => listener.stop());
    return { listener, downlink };
  }

  it('push retransmits per RFC 7252 §4.2 within the window and stops at its end; RST keeps the command queued and pauses the window', async () => {
    // ACK_TIMEOUT 100 ms, no jitter: transmissions at 0, 100, 300, 700 ms; the next (1500 ms) would
    // fall after the 1 s window, so the push ends with the window instead.
    const { listener, downlink } = await listenerWithQueue({ delivery: 'push', windowS: 1 }, { ackTimeoutMs: 100, random: () => 0 });
    const dev = await client(listener.address().port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, 'beef');

    expect((await dev.request(post(UP_RAW, METER_FRAME, token))).packet.code).toBe('2.04');
    const first = await dev.next();
    expectPush(first, DOWN_RAW, Buffer.from('beef', 'hex'));
    const transmissions = [first];
    for (let i = 0; i < 3; i++) transmissions.push(await dev.next(1000));
    // §4.2: the same message id and token each time.
    for (const t of transmissions) expect(t.raw.equals(first.raw)).toBe(true);
    await dev.nothingFor(700);
    expect(listener.stats().commands).toMatchObject({ pushed: 1, pushRetransmissions: 3, unacknowledged: 1, delivered: 0 });
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', via: 'coap-push', attempts: 1 });

    // Next wake-up: pushed again; this time the device answers RST (RFC 7252 §4.2: it cannot process it).
    await dev.request(post(UP_RAW, METER_FRAME, token));
    const second = await dev.next();
    expect(second.packet.messageId).not.toBe(first.packet.messageId);
    dev.send(generate({ code: '0.00', reset: true, messageId: second.packet.messageId, token: Buffer.alloc(0) }));
    await waitUntil(() => listener.stats().commands!.resets === 1, 1000, 'the RST');
    // Still queued; and nothing more is pushed in this window, not even a new command.
    submitRaw(downlink, '0001');
    await dev.nothingFor(400);
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', attempts: 2 });

    // Third wake-up: the oldest goes first again; an ACK with a piggybacked 2.04 delivers it.
    await sleep(300); // let the 1 s window close
    await dev.request(post(UP_RAW, METER_FRAME, token));
    const third = await dev.next();
    expectPush(third, DOWN_RAW, Buffer.from('beef', 'hex'));
    dev.send(generate({ code: '2.04', ack: true, messageId: third.packet.messageId, token: third.packet.token }));
    await waitUntil(() => downlink.get(cmd.id)!.state === 'delivered', 1000, 'the ACK');
    expect(downlink.get(cmd.id)!.attempts).toBe(3);
    // NSTART 1 (§4.7): the next command follows the ACK.
    expectPush(await dev.next(), DOWN_RAW, Buffer.from('0001', 'hex'));
  });

  it('piggyback when ingest is slow: the command rides in the separate CON response, and the device\'s ACK of it delivers it', async () => {
    const { listener, downlink } = await listenerWithQueue({ delivery: 'piggyback', windowS: 20 }, { piggybackMs: 30, ackTimeoutMs: 2000 }, 150);
    const dev = await client(listener.address().port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, '4242');
    const ack = await dev.request(post(UP_RAW, METER_FRAME, token));
    expect(ack.packet).toMatchObject({ code: '0.00', ack: true }); // §5.2.2: empty ACK first
    const separate = await dev.next();
    expect(separate.packet).toMatchObject({ code: '2.04', confirmable: true });
    expect(separate.packet.payload.toString('hex')).toBe('4242');
    expect(locationPath(separate.packet)).toBe(`/topic${DOWN_RAW}`);
    expect(downlink.get(cmd.id)!.state).toBe('sent');
    dev.send(ackOf(separate));
    await waitUntil(() => downlink.get(cmd.id)!.state === 'delivered', 1000, 'the ACK of the separate response');
  });
});

describe('commands to CoAP devices: queue lifetime', () => {
  it('expires a command the device does not wake for within its TTL; the device then gets nothing', async () => {
    const { port, downlink, states } = await gateway({ downlink: { sweepMs: 20 } });
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, 'dead', 1);
    await waitUntil(() => downlink.get(cmd.id)!.state === 'expired', 3000, 'the TTL');
    expect(states(cmd.id)).toEqual(['queued', 'expired']);
    const a = await dev.request(post(UP_RAW, METER_FRAME, token));
    expect(a.packet.code).toBe('2.04');
    expect(a.packet.payload.length).toBe(0);
    expect(locationPath(a.packet)).toBe('');
  });

  it('keeps the queue across a gateway restart on the same data dir', async () => {
    const first = await gateway();
    const cmd = submitRaw(first.downlink, '1234');
    await first.gw.stop();
    const second = await gateway({}, first.dataDir);
    // Tokens live in memory: the device authenticates again after the restart, then wakes.
    const dev = await client(second.port);
    const token = await dev.authenticate(WM);
    const a = await dev.request(post(UP_RAW, METER_FRAME, token));
    expect(a.packet.payload.toString('hex')).toBe('1234');
    expect(second.downlink.get(cmd.id)).toMatchObject({ state: 'sent', via: 'coap-piggyback' });
  });
});

describe('commands to CoAP devices: poll', () => {
  it('answers GET on a command topic with the oldest pending command under it, then 2.05 without a payload', async () => {
    const { port, downlink } = await gateway();
    const dev = await client(port);
    const token = await dev.authenticate(WM);
    const cmd = submitRaw(downlink, '77');
    // Under thing/service there is nothing (the command is on down_raw).
    const none = await dev.request(get(`/sys/${WM.productKey}/${WM.deviceName}/thing/service`, token));
    expect(none.packet).toMatchObject({ code: '2.05', ack: true });
    expect(none.packet.payload.length).toBe(0);

    const a = await dev.request(get(DOWN_RAW, token));
    expect(a.packet.code).toBe('2.05');
    expect(a.packet.payload.toString('hex')).toBe('77');
    expect(locationPath(a.packet)).toBe(`/topic${DOWN_RAW}`);
    expect(downlink.get(cmd.id)).toMatchObject({ state: 'sent', via: 'coap-poll' });
    // A retransmitted GET gets the same answer; the next GET proves the first arrived.
    dev.send(a.sent);
    expect((await dev.next()).raw.equals(a.raw)).toBe(true);
    const b = await dev.request(get(DOWN_RAW, token));
    expect(b.packet.code).toBe('2.05');
    expect(b.packet.payload.length).toBe(0);
    expect(downlink.get(cmd.id)!.state).toBe('delivered');
  });
});

describe('commands to CoAP devices: only to authenticated devices', () => {
  it('refuses a poll without a token (4.01, no larger than the request) and gives a tokenless uplink no command', async () => {
    // "optional": a tokenless uplink is accepted, named by its path alone; it must not get a command.
    const { port, downlink } = await gateway({ coap: { host: '127.0.0.1', port: 0, auth: { mode: 'optional' } } });
    const dev = await client(port);
    const cmd = submitRaw(downlink, 'ab'.repeat(100));

    const poll = await dev.request(get(DOWN_RAW));
    expect(poll.packet.code).toBe('4.01');
    expect(poll.packet.payload.toString()).toContain('WANWU_ERR_TOKEN');
    expect(poll.raw.length).toBeLessThanOrEqual(poll.sent.length);

    const a = await dev.request(post(UP_RAW, METER_FRAME));
    expect(a.packet.code).toBe('2.04');
    expect(a.raw.length).toBeLessThanOrEqual(a.sent.length);
    expect(locationPath(a.packet)).toBe('');
    expect(downlink.get(cmd.id)!.state).toBe('queued');

    // The same device with its token gets it.
    const token = await dev.authenticate(WM);
    const b = await dev.request(post(UP_RAW, METER_FRAME, token));
    expect(b.packet.payload.toString('hex')).toBe('ab'.repeat(100));
  });

  it('pushes nothing after a tokenless uplink, even in push mode', async () => {
    const { port, downlink } = await gateway({
      coap: { host: '127.0.0.1', port: 0, auth: { mode: 'optional' } },
      devicesDir: devicesWith({ coap: 'push', windowS: 5 }),
    });
    const dev = await client(port);
    const cmd = submitRaw(downlink, 'cd');
    expect((await dev.request(post(UP_RAW, METER_FRAME))).packet.code).toBe('2.04');
    await dev.nothingFor(400);
    expect(downlink.get(cmd.id)!.state).toBe('queued');
  });
});

describe('product.json "downlink"', () => {
  const base = { productKey: 'P1', name: 'p', rat: 'nb-iot', codec: { type: 'alink-json' } };
  it('takes the delivery mode and window, and refuses bad values with WANWU_ERR_PRODUCT', () => {
    const ok = createProduct({ dir: '/x/P1', product: { ...base, downlink: { coap: 'push', windowS: 22 } } });
    expect(ok.downlink).toEqual({ coap: 'push', windowS: 22 });
    expect(createProduct({ dir: '/x/P1', product: base }).downlink).toBeUndefined();
    for (const [downlink, text] of [
      [{ coap: 'shout' }, 'downlink.coap'],
      [{ windowS: 0 }, 'downlink.windowS'],
      [{ windowS: 1.5 }, 'downlink.windowS'],
      [{ coap: 'push', windowSeconds: 3 }, 'downlink.windowSeconds'],
      ['push', 'downlink'],
    ] as const) {
      const err = errorOf(() => createProduct({ dir: '/x/P1', product: { ...base, downlink } }));
      expect(err.code).toBe('WANWU_ERR_PRODUCT');
      expect(err.message).toContain(text);
    }
  });
});
