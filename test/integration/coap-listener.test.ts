// The CoAP listener against a real UDP client (node:dgram + coap-packet), on 127.0.0.1 port 0.
// `ingest` is a real function that records calls and resolves an outcome after a delay.

import { generate, parse, type Option, type Packet, type ParsedPacket } from 'coap-packet';
import dgram from 'node:dgram';
import { afterEach, describe, expect, it } from 'vitest';
import { RawCoapClient } from '../helpers/coap.js';
import { WanwuError, type ErrorCode } from '../../src/errors.js';
import { createCoapListener, type CoapListener } from '../../src/transport/coap/index.js';
import { createListener, type CoapTuning } from '../../src/transport/coap/listener.js';
import type { IngestOutcome, Logger, RawMessage } from '../../src/types.js';

const silent: Logger = { debug() {}, info() {}, warn() {}, error() {} };

const PK = 'a1Water';
const DN = 'meter-0001';
const PROPERTY_PATH = ['topic', 'sys', PK, DN, 'thing', 'event', 'property', 'post'];
const UP_RAW_PATH = ['topic', 'sys', PK, DN, 'thing', 'model', 'up_raw'];
const EVENT_PATH = ['topic', 'sys', PK, DN, 'thing', 'event', 'lowBattery', 'post'];



interface FakeIngest {
  calls: RawMessage[];
  handler: (raw: RawMessage) => Promise<IngestOutcome>;
  /** Delay before resolving, in ms. */
  delayMs: number;
  /** The outcome to resolve with (per call). */
  outcome: (raw: RawMessage) => IngestOutcome;
  inFlight: number;
  /** When set, the handler breaks its contract and rejects with this. */
  rejectWith?: Error;
}

function fakeIngest(): FakeIngest {
  const f: FakeIngest = {
    calls: [],
    delayMs: 0,
    inFlight: 0,
    outcome: (raw) => ({ committed: 1, deadLettered: false, msgId: raw.route.type === 'up-raw' ? undefined : '123' }),
    handler: (raw) => {
      f.calls.push(raw);
      if (f.rejectWith) return Promise.reject(f.rejectWith);
      f.inFlight++;
      const outcome = f.outcome(raw);
      return new Promise((resolve) =>
        setTimeout(() => {
          f.inFlight--;
          resolve(outcome);
        }, f.delayMs),
      );
    },
  };
  return f;
}

function failWith(code: ErrorCode, message: string): (raw: RawMessage) => IngestOutcome {
  return () => ({ error: new WanwuError(code, message), committed: 0, deadLettered: code !== 'WANWU_ERR_BUFFER_FULL' });
}

function uriPath(segments: string[]): Option[] {
  return segments.map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
}

function post(messageId: number, path: string[], payload: Buffer, extra: Partial<Packet> = {}): Packet {
  return { code: 'POST', confirmable: true, messageId, token: Buffer.from([0x0a, 0x0b, 0x0c, messageId & 0xff]), options: uriPath(path), payload, ...extra };
}

function option(p: ParsedPacket, name: string): Buffer | undefined {
  return p.options.find((o) => o.name === name)?.value;
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

let listener: CoapListener | null = null;
const clients: RawCoapClient[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  if (listener) await listener.stop();
  listener = null;
});

async function setup(
  opts: { tuning?: Partial<CoapTuning>; maxPayloadBytes?: number; now?: () => number } = {},
): Promise<{ ingest: FakeIngest; client: RawCoapClient; listener: CoapListener }> {
  const ingest = fakeIngest();
  const base = { host: '127.0.0.1', port: 0, maxPayloadBytes: opts.maxPayloadBytes ?? 1024, ingest: ingest.handler, logger: silent, now: opts.now };
  const l = opts.tuning ? createListener(base, opts.tuning) : createCoapListener(base);
  listener = l;
  await l.start();
  const client = await RawCoapClient.open(l.address().port);
  clients.push(client);
  return { ingest, client, listener: l };
}

describe('CoAP listener: confirmable requests', () => {
  it('answers a CON POST with a piggybacked 2.04 echoing the token, after one ingest call', async () => {
    const clock = 1_750_000_000_000;
    const { ingest, client, listener: l } = await setup({ now: () => clock });
    const payload = Buffer.from('{"id":"123","version":"1.0","params":{"temperature":21.5},"method":"thing.event.property.post"}');
    client.send(post(0x1001, PROPERTY_PATH, payload));

    const { packet } = await client.next();
    expect(packet).toMatchObject({ code: '2.04', ack: true, confirmable: false, messageId: 0x1001 });
    expect(packet.token).toEqual(Buffer.from([0x0a, 0x0b, 0x0c, 0x01]));
    expect(option(packet, 'Content-Format')).toEqual(Buffer.from([50]));
    expect(JSON.parse(packet.payload.toString())).toEqual({ id: '123', code: 200, data: {}, message: 'success' });

    expect(ingest.calls).toHaveLength(1);
    const raw = ingest.calls[0]!;
    expect(raw).toMatchObject({
      transport: 'coap',
      productKey: PK,
      deviceName: DN,
      topic: `/sys/${PK}/${DN}/thing/event/property/post`,
      route: { type: 'property-post' },
      receivedAt: clock,
      peer: `127.0.0.1:${client.port}`,
    });
    expect(Buffer.compare(raw.payload, payload)).toBe(0);

    const s = l.stats();
    expect(s).toMatchObject({ address: '127.0.0.1', port: l.address().port, requests: 1, duplicates: 0, peers: 1, dedupEntries: 1 });
    expect(s.responses).toEqual({ '2.04': 1 });
  });

  it('answers up_raw with a bare 2.04 and passes binary payloads through unchanged', async () => {
    const { ingest, client } = await setup();
    const payload = Buffer.from([0x00, 0xff, 0x10, 0x80, 0x7f]);
    client.send(post(7, UP_RAW_PATH, payload));
    const { packet } = await client.next();
    expect(packet).toMatchObject({ code: '2.04', ack: true, messageId: 7 });
    expect(packet.payload.length).toBe(0);
    expect(packet.options).toEqual([]);
    expect(ingest.calls[0]).toMatchObject({ route: { type: 'up-raw' }, topic: `/sys/${PK}/${DN}/thing/model/up_raw` });
    expect(Buffer.compare(ingest.calls[0]!.payload, payload)).toBe(0);
  });

  it('routes event posts with their event id', async () => {
    const { ingest, client } = await setup();
    client.send(post(8, EVENT_PATH, Buffer.from('{"id":"9","params":{"value":{}}}')));
    const { packet } = await client.next();
    expect(packet.code).toBe('2.04');
    expect(ingest.calls[0]!.route).toEqual({ type: 'event-post', eventId: 'lowBattery' });
  });

  it('sends an empty ACK when ingest is slow, then a separate CON 2.04 retransmitted until acknowledged', async () => {
    const { ingest, client, listener: l } = await setup(); // default timings: piggyback 1 s, ACK_TIMEOUT 2 s
    ingest.delayMs = 1_500;
    const sentAt = Date.now();
    client.send(post(0x2002, PROPERTY_PATH, Buffer.from('{"id":"77","params":{}}')));

    const ack = await client.next(2_000);
    expect(ack.raw.length).toBe(4); // empty message (RFC 7252 §4.1)
    expect(ack.packet).toMatchObject({ code: '0.00', ack: true, messageId: 0x2002 });
    expect(Date.now() - sentAt).toBeGreaterThanOrEqual(900);

    const first = await client.next(2_000);
    expect(first.packet).toMatchObject({ code: '2.04', confirmable: true });
    expect(first.packet.token).toEqual(Buffer.from([0x0a, 0x0b, 0x0c, 0x02]));
    expect(JSON.parse(first.packet.payload.toString())).toMatchObject({ id: '123', code: 200 });

    // Not acknowledged: the same CON comes again after ACK_TIMEOUT .. ACK_TIMEOUT * 1.5 (RFC 7252 §4.2).
    const t0 = Date.now();
    const again = await client.next(3_500);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(1_900);
    expect(Buffer.compare(again.raw, first.raw)).toBe(0);
    client.send({ code: '0.00', ack: true, messageId: first.packet.messageId });
    await sleep(100);
    expect(l.stats().retransmissions).toBe(1);
    expect(l.stats().responses).toMatchObject({ ACK: 1, '2.04': 1 });
    expect(ingest.calls).toHaveLength(1);
  }, 15_000);

  it('stops retransmitting on ACK or RST and gives up after MAX_RETRANSMIT', async () => {
    const { ingest, client, listener: l } = await setup({ tuning: { piggybackMs: 50, ackTimeoutMs: 100, random: () => 0 } });
    ingest.delayMs = 100;

    // 1. Acknowledged after the first retransmission.
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    expect((await client.next()).packet).toMatchObject({ code: '0.00', ack: true, messageId: 1 });
    const a1 = await client.next();
    const a2 = await client.next();
    expect(Buffer.compare(a1.raw, a2.raw)).toBe(0);
    client.send({ code: '0.00', ack: true, messageId: a1.packet.messageId });
    await client.nothingFor(800); // the next retransmission would have come 200 ms later

    // 2. Rejected with RST: no more retransmissions either.
    client.send(post(2, UP_RAW_PATH, Buffer.from([2])));
    expect((await client.next()).packet).toMatchObject({ code: '0.00', ack: true, messageId: 2 });
    const b1 = await client.next();
    client.send({ code: '0.00', reset: true, messageId: b1.packet.messageId });
    await client.nothingFor(500);

    // 3. Never acknowledged: 1 transmission + MAX_RETRANSMIT (4) retransmissions at 100, 200, 400, 800 ms.
    client.send(post(3, UP_RAW_PATH, Buffer.from([3])));
    expect((await client.next()).packet).toMatchObject({ code: '0.00', ack: true, messageId: 3 });
    const copies: Buffer[] = [];
    for (let i = 0; i < 5; i++) copies.push((await client.next()).raw);
    expect(new Set(copies.map((c) => c.toString('hex'))).size).toBe(1);
    await client.nothingFor(1_800);
    expect(l.stats()).toMatchObject({ retransmissions: 1 + 4, separateTimeouts: 1 });
  }, 15_000);

  it('processes a duplicate CON once and sends the same response bytes again', async () => {
    const { ingest, client, listener: l } = await setup();
    const msg = post(0x3003, PROPERTY_PATH, Buffer.from('{"id":"1","params":{"t":1}}'));
    const bytes = client.send(msg);
    const r1 = await client.next();
    client.send(bytes);
    const r2 = await client.next();
    expect(r1.packet.code).toBe('2.04');
    expect(Buffer.compare(r1.raw, r2.raw)).toBe(0);
    expect(ingest.calls).toHaveLength(1);
    expect(l.stats()).toMatchObject({ requests: 2, duplicates: 1 });
  });

  it('stays silent for a duplicate while ingest works inside the piggyback window, and repeats the empty ACK after it', async () => {
    const { ingest, client, listener: l } = await setup({ tuning: { piggybackMs: 200, ackTimeoutMs: 5_000 } });
    ingest.delayMs = 400;
    const bytes = client.send(post(0x4004, UP_RAW_PATH, Buffer.from([9])));
    await sleep(50);
    client.send(bytes); // in the piggyback window: ignored
    const ack = await client.next();
    expect(ack.packet).toMatchObject({ code: '0.00', ack: true, messageId: 0x4004 });
    client.send(bytes); // after the empty ACK: the empty ACK again (RFC 7252 §5.2.2)
    const ack2 = await client.next();
    expect(Buffer.compare(ack2.raw, ack.raw)).toBe(0);
    const sep = await client.next();
    expect(sep.packet).toMatchObject({ code: '2.04', confirmable: true });
    client.send({ code: '0.00', ack: true, messageId: sep.packet.messageId });
    await client.nothingFor(300);
    expect(ingest.calls).toHaveLength(1);
    expect(l.stats().duplicates).toBe(2);
  });

  it('forgets a message id after the exchange lifetime (injected clock)', async () => {
    let clock = 0;
    const { ingest, client, listener: l } = await setup({ now: () => clock });
    const bytes = client.send(post(0x5005, UP_RAW_PATH, Buffer.from([5])));
    await client.next();
    clock += 200_000; // within EXCHANGE_LIFETIME (247 s): still a duplicate
    client.send(bytes);
    await client.next();
    expect(ingest.calls).toHaveLength(1);
    clock += 200_000; // 400 s later: past lifetime + one generation span, the entry is gone
    client.send(bytes);
    await client.next();
    expect(ingest.calls).toHaveLength(2);
    expect(l.stats().duplicates).toBe(1);
  });
});

describe('CoAP listener: non-confirmable requests', () => {
  it('answers a NON POST with a NON 2.04 carrying the token and processes duplicates once', async () => {
    const { ingest, client } = await setup();
    const bytes = client.send(post(0x6006, PROPERTY_PATH, Buffer.from('{"id":"5","params":{}}'), { confirmable: false }));
    const r = await client.next();
    expect(r.packet).toMatchObject({ code: '2.04', confirmable: false, ack: false, reset: false });
    expect(r.packet.token).toEqual(Buffer.from([0x0a, 0x0b, 0x0c, 0x06]));
    expect(ingest.calls).toHaveLength(1);
    client.send(bytes);
    const r2 = await client.next();
    expect(Buffer.compare(r2.raw, r.raw)).toBe(0);
    expect(ingest.calls).toHaveLength(1);
  });
});

describe('CoAP listener: refusals', () => {
  it('answers WANWU_ERR_INVALID with 4.00 and a diagnostic payload', async () => {
    const { ingest, client, listener: l } = await setup();
    ingest.outcome = failWith('WANWU_ERR_INVALID', 'temperature: 130 above max 120');
    client.send(post(10, PROPERTY_PATH, Buffer.from('{"params":{"temperature":130}}')));
    const { packet } = await client.next();
    expect(packet).toMatchObject({ code: '4.00', ack: true, messageId: 10 });
    expect(packet.payload.toString('utf8')).toBe('WANWU_ERR_INVALID temperature: 130 above max 120');
    expect(option(packet, 'Content-Format')).toBeUndefined();
    expect(l.stats().responses['4.00']).toBe(1);
  });

  it('answers WANWU_ERR_UNKNOWN_DEVICE with 4.04', async () => {
    const { ingest, client } = await setup();
    ingest.outcome = failWith('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${PK}/${DN}`);
    client.send(post(11, UP_RAW_PATH, Buffer.from([1])));
    const { packet } = await client.next();
    expect(packet.code).toBe('4.04');
    expect(packet.payload.toString()).toMatch(/^WANWU_ERR_UNKNOWN_DEVICE /);
  });

  it('answers WANWU_ERR_BUFFER_FULL with 5.03 and Max-Age', async () => {
    const { ingest, client } = await setup();
    ingest.outcome = failWith('WANWU_ERR_BUFFER_FULL', 'buffer full');
    client.send(post(12, UP_RAW_PATH, Buffer.from([1]), { confirmable: false }));
    const { packet } = await client.next();
    expect(packet).toMatchObject({ code: '5.03', confirmable: false, ack: false });
    expect(option(packet, 'Max-Age')).toEqual(Buffer.from([30]));
  });

  it('answers an oversize payload with 4.13 and Size1 without calling ingest', async () => {
    const { ingest, client, listener: l } = await setup({ maxPayloadBytes: 64 });
    client.send(post(13, UP_RAW_PATH, Buffer.alloc(65, 1)));
    const { packet } = await client.next();
    expect(packet).toMatchObject({ code: '4.13', ack: true, messageId: 13 });
    expect(option(packet, 'Size1')).toEqual(Buffer.from([64]));
    expect(ingest.calls).toHaveLength(0);
    expect(l.stats().responses).toEqual({ '4.13': 1 });
  });

  it('answers the first block of a Block1 upload with 2.31 Continue, without calling ingest (more in test/security/coap-limits.test.ts)', async () => {
    const { ingest, client } = await setup();
    client.send(post(14, UP_RAW_PATH, Buffer.alloc(16), { options: [...uriPath(UP_RAW_PATH), { name: 'Block1', value: Buffer.from([0x08]) }] }));
    const { packet } = await client.next();
    expect(packet.code).toBe('2.31');
    expect(option(packet, 'Block1')).toEqual(Buffer.from([0x08]));
    expect(ingest.calls).toHaveLength(0);
  });

  it('answers a bad path with 4.04 and GET on an uplink topic with 4.05', async () => {
    const { ingest, client } = await setup();
    client.send(post(15, ['topic', 'sys', PK, DN, 'thing', 'nothing'], Buffer.from('x')));
    expect((await client.next()).packet).toMatchObject({ code: '4.04', messageId: 15 });
    client.send(post(16, ['hello'], Buffer.from('x')));
    expect((await client.next()).packet.code).toBe('4.04');
    client.send(post(17, PROPERTY_PATH, Buffer.alloc(0), { code: 'GET' }));
    const get = (await client.next()).packet;
    expect(get).toMatchObject({ code: '4.05', messageId: 17 });
    expect(get.payload.toString()).toContain('GET');
    client.send(post(18, PROPERTY_PATH, Buffer.alloc(0), { code: 'DELETE', confirmable: false }));
    expect((await client.next()).packet).toMatchObject({ code: '4.05', confirmable: false });
    expect(ingest.calls).toHaveLength(0);
  });

  it('answers a CON request with an unknown critical option with 4.02', async () => {
    const { ingest, client } = await setup();
    client.send(post(19, UP_RAW_PATH, Buffer.from([1]), { options: [...uriPath(UP_RAW_PATH), { name: 'OSCORE', value: Buffer.alloc(1) }] }));
    expect((await client.next()).packet.code).toBe('4.02');
    expect(ingest.calls).toHaveLength(0);
  });
});

describe('CoAP listener: overload', () => {
  it('answers 5.03 with Max-Age when too many requests are with ingest, without calling it', async () => {
    const { ingest, client, listener: l } = await setup({ tuning: { maxInFlight: 1 } });
    ingest.delayMs = 200;
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    client.send(post(2, UP_RAW_PATH, Buffer.from([2])));
    const busy = (await client.next()).packet;
    expect(busy).toMatchObject({ code: '5.03', messageId: 2 });
    expect(option(busy, 'Max-Age')).toEqual(Buffer.from([30]));
    expect((await client.next()).packet).toMatchObject({ code: '2.04', messageId: 1 });
    expect(ingest.calls).toHaveLength(1);
    expect(l.stats().inFlight).toBe(0);
  });

  it('answers 5.00 when ingest resolves without an outcome', async () => {
    const { ingest, client } = await setup();
    ingest.outcome = () => undefined as unknown as IngestOutcome;
    client.send(post(3, UP_RAW_PATH, Buffer.from([1])));
    expect((await client.next()).packet.code).toBe('5.00');
  });
});

describe('CoAP listener: empty and broken messages', () => {
  it('answers a CoAP ping (empty CON) with RST', async () => {
    const { client, listener: l } = await setup();
    client.send(Buffer.from([0x40, 0x00, 0x12, 0x34]));
    const r = await client.next();
    expect(r.raw).toEqual(Buffer.from([0x70, 0x00, 0x12, 0x34]));
    expect(l.stats().responses).toEqual({ RST: 1 });
  });

  it('survives garbage and keeps answering', async () => {
    const { ingest, client, listener: l } = await setup();
    client.send(Buffer.from('hello, world')); // version 1, ACK type by accident: a stray ACK, ignored
    client.send(Buffer.from([0xff])); // shorter than a header
    client.send(Buffer.from([0x00, 0x02, 0x00, 0x01])); // version 0: silently ignored (§3)
    client.send(Buffer.from([0x50, 0x00, 0x00, 0x02])); // empty NON: ignored
    await client.nothingFor(200);

    // CON with a broken option (delta 15 is reserved): header parses, so RST (§4.2).
    client.send(Buffer.from([0x40, 0x02, 0x00, 0x03, 0xf1, 0x00]));
    expect((await client.next()).raw).toEqual(Buffer.from([0x70, 0x00, 0x00, 0x03]));
    // CON with token length 9 (reserved): RST.
    client.send(Buffer.concat([Buffer.from([0x49, 0x02, 0x00, 0x04]), Buffer.alloc(9)]));
    expect((await client.next()).raw).toEqual(Buffer.from([0x70, 0x00, 0x00, 0x04]));
    // A CON response (we send no requests): RST.
    client.send(generate({ code: '2.05', confirmable: true, messageId: 5 }));
    expect((await client.next()).raw).toEqual(Buffer.from([0x70, 0x00, 0x00, 0x05]));
    // The same broken option in a NON: ignored.
    client.send(Buffer.from([0x50, 0x02, 0x00, 0x06, 0xf1, 0x00]));
    await client.nothingFor(200);

    client.send(post(7, UP_RAW_PATH, Buffer.from([1])));
    expect((await client.next()).packet).toMatchObject({ code: '2.04', messageId: 7 });
    expect(ingest.calls).toHaveLength(1);
    expect(l.stats().ignored).toBeGreaterThanOrEqual(5);
    expect(l.stats().errors).toBe(0);
  });

  it('answers 5.00 when ingest breaks its contract and rejects', async () => {
    const { ingest, client } = await setup();
    ingest.rejectWith = new Error('boom');
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    const { packet } = await client.next();
    expect(packet.code).toBe('5.00');
    expect(packet.payload.toString()).toBe('WANWU_ERR_INTERNAL boom');
  });
});

describe('CoAP listener: lifecycle', () => {
  it('start and stop are idempotent and the port is released', async () => {
    const { listener: l } = await setup();
    await Promise.all([l.start(), l.start()]);
    const { port } = l.address();
    await Promise.all([l.stop(), l.stop()]);
    await l.stop();
    // The port is free again: bind it ourselves.
    const s = dgram.createSocket('udp4');
    await new Promise<void>((resolve, reject) => {
      s.once('error', reject);
      s.bind(port, '127.0.0.1', () => resolve());
    });
    await new Promise<void>((resolve) => s.close(() => resolve()));
    // A stopped listener can start again.
    await l.start();
    expect(l.address().port).toBeGreaterThan(0);
  });

  it('stop stops accepting, waits for ingest under way and still sends its response', async () => {
    const { ingest, client, listener: l } = await setup();
    ingest.delayMs = 300;
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    await sleep(50);
    expect(ingest.inFlight).toBe(1);
    const stopped = l.stop();
    client.send(post(2, UP_RAW_PATH, Buffer.from([2]))); // arrives while stopping: not accepted
    await stopped;
    expect(ingest.inFlight).toBe(0);
    expect(ingest.calls).toHaveLength(1);
    const r = await client.next();
    expect(r.packet).toMatchObject({ code: '2.04', messageId: 1 });
    await client.nothingFor(200);
  });

  it('stop cancels the retransmission of separate responses', async () => {
    const { ingest, client, listener: l } = await setup({ tuning: { piggybackMs: 50, ackTimeoutMs: 100, random: () => 0 } });
    ingest.delayMs = 150;
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    expect((await client.next()).packet).toMatchObject({ code: '0.00', ack: true });
    await l.stop(); // waits for ingest; the separate response leaves once, then its timer is cleared
    expect((await client.next()).packet).toMatchObject({ code: '2.04', confirmable: true });
    await client.nothingFor(500);
    expect(l.stats()).toMatchObject({ retransmissions: 0, inFlight: 0, dedupEntries: 0 });
  });

  it('rejects start when the port is taken', async () => {
    const { listener: l } = await setup();
    const other = createCoapListener({ host: '127.0.0.1', port: l.address().port, maxPayloadBytes: 1024, ingest: fakeIngest().handler, logger: silent });
    await expect(other.start()).rejects.toThrow(/EADDRINUSE/);
    await other.stop();
  });

  it('counts distinct peers', async () => {
    const { client, listener: l } = await setup();
    const other = await RawCoapClient.open(client.serverPort);
    clients.push(other);
    client.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    other.send(post(1, UP_RAW_PATH, Buffer.from([1])));
    client.send(post(2, UP_RAW_PATH, Buffer.from([1])));
    await client.next();
    await other.next();
    await client.next();
    expect(l.stats()).toMatchObject({ peers: 2, requests: 3, duplicates: 0, dedupEntries: 3 });
  });
});
