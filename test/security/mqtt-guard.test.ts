// Unit tests of the MQTT listener's limit machinery (src/transport/mqtt/guard.ts, limits.ts): the
// fixed-header guard fed byte streams split at every position, the per-device token bucket, the
// connect-flood detector and the audit log, each with an injected clock. The same machinery on real
// sockets is in mqtt-limits.test.ts.

import { afterEach, describe, expect, it, vi } from 'vitest';
import { generate, parser, type Packet } from 'mqtt-packet';
import { parseConfig } from '../../src/config/index.js';
import { encodeRemainingLength, PacketGuard, type GuardPolicy } from '../../src/transport/mqtt/guard.js';
import { AuditLog } from '../../src/transport/audit.js';
import { ConnectFloodDetector, identifierRefused, PublishRateLimiter, topicRefusal } from '../../src/transport/mqtt/limits.js';
import type { Logger } from '../../src/types.js';

/** Feeds `bytes` to a fresh guard in the given chunks; returns what it passed on and its refusal. */
function run(policy: GuardPolicy, chunks: Buffer[]) {
  const truncations: Array<[number, number]> = [];
  const guard = new PacketGuard(policy, { truncated: (a, k) => truncations.push([a, k]) });
  const out: Buffer[] = [];
  let refusal: string | null = null;
  let refusedAtChunk = -1;
  chunks.forEach((c, i) => {
    if (refusal) return;
    refusal = guard.feed(c, (b) => out.push(Buffer.from(b)));
    if (refusal) refusedAtChunk = i;
  });
  return { out: Buffer.concat(out), refusal: refusal as string | null, refusedAtChunk, truncations };
}

/** Every way of cutting `bytes` in two, plus one byte at a time. */
function splits(bytes: Buffer): Buffer[][] {
  const all: Buffer[][] = [[bytes]];
  for (let i = 1; i < bytes.length; i++) all.push([bytes.subarray(0, i), bytes.subarray(i)]);
  all.push([...bytes].map((b) => Buffer.from([b])));
  return all;
}

function parseAll(bytes: Buffer): Packet[] {
  const p = parser();
  const packets: Packet[] = [];
  const errors: Error[] = [];
  p.on('packet', (x) => packets.push(x));
  p.on('error', (e) => errors.push(e));
  p.parse(bytes);
  expect(errors).toEqual([]);
  return packets;
}

const OPEN: GuardPolicy = { maxPacketBytes: 1024, truncatePublishTo: null };

describe('PacketGuard (fixed header, [MQTT-2.2.3])', () => {
  const stream = Buffer.concat([
    generate({ cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, clientId: 'c1', keepalive: 60 }),
    generate({ cmd: 'publish', topic: '/sys/p/d/thing/event/property/post', payload: Buffer.alloc(300, 7), qos: 1, messageId: 9, retain: false, dup: false }),
    generate({ cmd: 'pingreq' }),
    generate({ cmd: 'subscribe', messageId: 2, subscriptions: [{ topic: '/sys/p/d/#', qos: 0 }] }),
    generate({ cmd: 'disconnect' }),
  ]);

  it('passes packets within the limit through unchanged, however the stream is cut', () => {
    for (const chunks of splits(stream)) {
      const r = run(OPEN, chunks);
      expect(r.refusal).toBeNull();
      expect(r.out.equals(stream)).toBe(true);
    }
  });

  it('refuses a packet announcing more than the limit after its header alone, passing on only the packets before it', () => {
    // CONNECT announcing 100 MB: 0x10, then the Remaining Length in 4 bytes.
    const header = Buffer.concat([Buffer.from([0x10]), encodeRemainingLength(100 * 1024 * 1024)]);
    expect(header).toHaveLength(5);
    const ping = generate({ cmd: 'pingreq' });
    const bytes = Buffer.concat([ping, header, Buffer.alloc(64, 0x41)]);
    for (const chunks of splits(bytes)) {
      const r = run(OPEN, chunks);
      expect(r.refusal).toBe('packetTooLarge');
      expect(r.out.equals(ping)).toBe(true);
    }
    // Decided at the fifth byte of the header, before any byte of the body.
    const r = run(OPEN, [...bytes].map((b) => Buffer.from([b])));
    expect(r.refusedAtChunk).toBe(ping.length + 4);
  });

  it('the limit counts the whole packet: exactly maxPacketBytes passes, one more is refused', () => {
    const limit = 200;
    // PUBLISH QoS 0 to topic "a": 1 type byte + 2 length bytes (the remaining length is > 127) + body.
    const packet = (total: number) => Buffer.concat([Buffer.from([0x30]), encodeRemainingLength(total - 3), Buffer.from([0, 1, 0x61]), Buffer.alloc(total - 6)]);
    expect(packet(limit)).toHaveLength(limit);
    expect(run({ maxPacketBytes: limit, truncatePublishTo: null }, [packet(limit)]).refusal).toBeNull();
    expect(run({ maxPacketBytes: limit, truncatePublishTo: null }, [packet(limit + 1)]).refusal).toBe('packetTooLarge');
  });

  it('a fifth Remaining Length byte is malformed', () => {
    const bytes = Buffer.from([0x30, 0xff, 0xff, 0xff, 0xff, 0x01]);
    for (const chunks of splits(bytes)) expect(run({ maxPacketBytes: 1 << 30, truncatePublishTo: null }, chunks).refusal).toBe('malformedPacket');
  });

  it("a device's oversize PUBLISH is cut to the payload allowance, stays well-formed, and the stream stays in step", () => {
    const topic = '/sys/p/d/thing/event/property/post';
    const big = generate({ cmd: 'publish', topic, payload: Buffer.alloc(1500, 0x42), qos: 1, messageId: 77, retain: false, dup: false });
    const ping = generate({ cmd: 'pingreq' });
    const bytes = Buffer.concat([ping, big, ping]);
    const policy = { maxPacketBytes: 1024, truncatePublishTo: 101 };
    // Every split point, and byte by byte.
    for (const chunks of splits(bytes)) {
      const r = run(policy, chunks);
      expect(r.refusal).toBeNull();
      const packets = parseAll(r.out);
      expect(packets.map((p) => p.cmd)).toEqual(['pingreq', 'publish', 'pingreq']);
      const pub = packets[1] as Packet & { topic: string; payload: Buffer; messageId: number; qos: number };
      expect(pub).toMatchObject({ topic, messageId: 77, qos: 1 });
      expect(pub.payload).toEqual(Buffer.alloc(101, 0x42));
      expect(r.truncations).toEqual([[1500 + 2 + topic.length + 2, 2 + topic.length + 2 + 101]]);
    }
  });

  it('a PUBLISH over the packet limit whose payload fits the allowance passes whole; other packet types are never cut', () => {
    const pub = generate({ cmd: 'publish', topic: 't/x', payload: Buffer.alloc(2000, 1), qos: 0, retain: false, dup: false });
    const r = run({ maxPacketBytes: 1024, truncatePublishTo: 4096 }, [pub]);
    expect(r.refusal).toBeNull();
    expect(r.out.equals(pub)).toBe(true);
    expect(r.truncations).toEqual([]);
    const sub = generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: 'a/'.repeat(600), qos: 0 }] });
    expect(run({ maxPacketBytes: 1024, truncatePublishTo: 4096 }, [sub]).refusal).toBe('packetTooLarge');
  });

  it('reports each PUBACK packet identifier and a DISCONNECT (what command delivery and presence use), however the stream is cut', () => {
    // A PUBLISH whose body holds PUBACK-like bytes, PUBACKs for ids 0x0102 and 0xfffe, a PUBREC
    // (same shape, not a PUBACK), then DISCONNECT.
    const bytes = Buffer.concat([
      generate({ cmd: 'publish', topic: 't', payload: Buffer.from([0x40, 0x02, 0x00, 0x07]), qos: 1, messageId: 5, retain: false, dup: false }),
      generate({ cmd: 'puback', messageId: 0x0102 }),
      generate({ cmd: 'pubrec', messageId: 3 }),
      generate({ cmd: 'puback', messageId: 0xfffe }),
      generate({ cmd: 'disconnect' }),
    ]);
    for (const chunks of splits(bytes)) {
      const events: string[] = [];
      const guard = new PacketGuard(OPEN, { puback: (id) => events.push(`puback ${id}`), disconnect: () => events.push('disconnect') });
      const out: Buffer[] = [];
      for (const c of chunks) expect(guard.feed(c, (b) => out.push(Buffer.from(b)))).toBeNull();
      expect(events).toEqual(['puback 258', 'puback 65534', 'disconnect']);
      expect(Buffer.concat(out).equals(bytes)).toBe(true);
    }
  });
});

describe('identifier and topic checks', () => {
  it('refuses +, #, / and NUL in identifiers and nothing else of an Alibaba login', () => {
    for (const bad of ['a+b', '#', 'tr/0001', 'x\u0000y', 'tr-0001&Tracker+']) expect(identifierRefused(bad), bad).toBe(true);
    for (const ok of ['tr-0001|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|', 'tr-0001&TrackerCat1', 'dev@site.1:x', undefined]) {
      expect(identifierRefused(ok), String(ok)).toBe(false);
    }
  });

  it('counts levels and UTF-8 bytes', () => {
    const limits = { maxTopicLength: 256, maxTopicLevels: 16 };
    expect(topicRefusal('/sys/p/d/thing/event/property/pack/post', limits)).toBeNull(); // 9 levels
    expect(topicRefusal('a/'.repeat(15) + 'a', limits)).toBeNull(); // 16 levels
    expect(topicRefusal('a/'.repeat(16) + 'a', limits)).toBe('topicLevels'); // 17
    expect(topicRefusal('/'.repeat(65_400), limits)).toBe('topicLevels');
    expect(topicRefusal('x'.repeat(256), limits)).toBeNull();
    expect(topicRefusal('x'.repeat(257), limits)).toBe('topicLength');
    expect(topicRefusal('万'.repeat(86), limits)).toBe('topicLength'); // 86 characters, 258 bytes
  });
});

describe('PublishRateLimiter (token bucket per device)', () => {
  const limits = { perSecond: 10, burst: 3, maxDelayMs: 250 };

  it('lets a burst through, then holds publishes for their token in order, then refuses past maxDelayMs', () => {
    const r = new PublishRateLimiter(limits);
    const t = 1_000_000;
    expect([1, 2, 3].map(() => r.reserve('a', t))).toEqual(Array(3).fill({ allowed: true, delayMs: 0 }));
    // 10/s: one token every 100 ms.
    expect(r.reserve('a', t)).toEqual({ allowed: true, delayMs: 100 });
    expect(r.reserve('a', t)).toEqual({ allowed: true, delayMs: 200 });
    // The next would wait 300 ms > 250: refused, takes nothing, answered after the 200 ms already queued.
    expect(r.reserve('a', t)).toEqual({ allowed: false, delayMs: 200 });
    expect(r.reserve('a', t)).toEqual({ allowed: false, delayMs: 200 });
    // Another device has its own bucket.
    expect(r.reserve('b', t)).toEqual({ allowed: true, delayMs: 0 });
    // 100 ms later one queued publish has had its turn.
    expect(r.reserve('a', t + 100)).toEqual({ allowed: true, delayMs: 200 });
    // After a quiet second the bucket is full again (and no fuller).
    expect(r.reserve('a', t + 2000)).toEqual({ allowed: true, delayMs: 0 });
    expect(r.reserve('a', t + 2000)).toEqual({ allowed: true, delayMs: 0 });
    expect(r.reserve('a', t + 2000)).toEqual({ allowed: true, delayMs: 0 });
    expect(r.reserve('a', t + 2000).delayMs).toBe(100);
  });

  it('sweep forgets only refilled buckets', () => {
    const r = new PublishRateLimiter(limits);
    r.reserve('a', 0);
    r.reserve('b', 0);
    r.reserve('b', 0);
    r.reserve('b', 0);
    r.sweep(150); // a: 2 + 1.5 >= 3; b: 0 + 1.5 < 3
    expect(r.size).toBe(1);
    r.sweep(300);
    expect(r.size).toBe(0);
  });
});

describe('ConnectFloodDetector (EMQX flapping: 15 a minute, then a 5-minute ban)', () => {
  const limits = { maxPerMinute: 15, banS: 300 };

  it('allows 15 connects in a minute; the 16th is refused and bans the key, and only that key, for banS', () => {
    const f = new ConnectFloodDetector(limits);
    const t = 5_000_000;
    for (let i = 0; i < 15; i++) expect(f.record('dev-a', t + i * 1000)).toBe(false);
    expect(f.bannedFor('dev-a', t + 15_000)).toBe(0);
    expect(f.record('dev-a', t + 15_000)).toBe(true);
    expect(f.bannedFor('dev-a', t + 15_000)).toBe(300_000);
    expect(f.bannedFor('dev-b', t + 15_000)).toBe(0);
    expect(f.record('dev-b', t + 15_000)).toBe(false);
    expect(f.activeBans(t + 15_000)).toBe(1);
    expect(f.bannedFor('dev-a', t + 15_000 + 299_999)).toBe(1);
    expect(f.bannedFor('dev-a', t + 15_000 + 300_000)).toBe(0);
    // After the ban the count starts afresh.
    expect(f.record('dev-a', t + 315_000)).toBe(false);
  });

  it('counts a sliding 60 s window: 15 a minute forever is never banned', () => {
    const f = new ConnectFloodDetector(limits);
    for (let i = 0; i < 200; i++) expect(f.record('k', i * 4001)).toBe(false);
  });

  it('tracks at most maxKeys keys, forgetting the least recently seen; sweep drops idle ones', () => {
    const f = new ConnectFloodDetector(limits, 3);
    for (const k of ['a', 'b', 'c']) f.record(k, 0);
    f.record('a', 1);
    f.record('d', 2); // b is the oldest
    expect(f.size).toBe(3);
    for (let i = 0; i < 14; i++) f.record('b', 3);
    expect(f.record('b', 3)).toBe(false); // b was forgotten, so this is its 15th, not 16th
    f.sweep(70_000);
    expect(f.size).toBe(0);
  });
});

describe('AuditLog (rate-limited logger.warn)', () => {
  afterEach(() => vi.useRealTimers());

  it('writes at most 20 lines per 10 s and then one line with the number left out', () => {
    vi.useFakeTimers();
    const lines: Array<{ obj: Record<string, unknown>; msg: string | undefined }> = [];
    const logger: Logger = { debug() {}, info() {}, error() {}, warn: (obj, msg) => lines.push({ obj: obj as Record<string, unknown>, msg }) };
    const audit = new AuditLog(logger, 'mqtt', () => Date.now());
    for (let i = 0; i < 50; i++) audit.write({ clientId: `c${i}` }, 'mqtt login refused');
    expect(lines).toHaveLength(20);
    expect(audit.suppressed).toBe(30);
    vi.advanceTimersByTime(10_000);
    expect(lines).toHaveLength(21);
    expect(lines[20]).toEqual({ obj: { audit: 'mqtt', suppressed: 30, windowS: 10 }, msg: 'mqtt login refusals left out of the audit log' });
    // A new window: lines again.
    audit.write({ clientId: 'late' }, 'mqtt login refused');
    expect(lines).toHaveLength(22);
    expect(lines[21]!.obj).toMatchObject({ audit: 'mqtt', clientId: 'late' });
    audit.close();
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('mqtt.limits configuration', () => {
  it('has the documented defaults', () => {
    expect(parseConfig({}).mqtt.limits).toEqual({
      maxPacketBytes: 65_536,
      maxTopicLength: 256,
      maxTopicLevels: 16,
      keepaliveMinS: 30,
      keepaliveMaxS: 1200,
      maxConnections: 100_000,
      publishRate: { perSecond: 100, burst: 200, maxDelayMs: 2000 },
      connectFlood: { maxPerMinute: 15, banS: 300 },
    });
  });

  it('refuses a keepalive range upside down, more than 100 topic levels, and unknown keys, naming the key', () => {
    expect(() => parseConfig({ mqtt: { limits: { keepaliveMinS: 100, keepaliveMaxS: 60 } } })).toThrow(/mqtt\.limits\.keepaliveMinS: keepaliveMinS must not exceed keepaliveMaxS/);
    expect(() => parseConfig({ mqtt: { limits: { maxTopicLevels: 101 } } })).toThrow(/mqtt\.limits\.maxTopicLevels/);
    expect(() => parseConfig({ mqtt: { limits: { publishRate: { perMinute: 5 } } } })).toThrow(/mqtt\.limits\.publishRate\.perMinute: unknown key/);
  });
});
