// CoAP limits: Block1 reassembly and its extremes (RFC 7959), rate limits (4.29, RFC 8516), the caps
// on tracked peers and transfers, and no amplification (RFC 7252 §11.3). Raw dgram + coap-packet
// clients against the listener alone (a recording ingest) and against an in-process gateway.

import { generate, parse, type Option, type Packet, type ParsedPacket } from 'coap-packet';
import fc from 'fast-check';
import { afterEach, describe, expect, it } from 'vitest';
import { RawCoapClient, type Received } from '../helpers/coap.js';
import { parseConfig } from '../../src/config/index.js';
import { COAP_LIMITS_DEFAULTS } from '../../src/config/schema.js';
import { WanwuError } from '../../src/errors.js';
import type { Gateway } from '../../src/gateway.js';
import { createMetricsRegistry, type StatusSources } from '../../src/status/index.js';
import { createCoapListener, type CoapLimits, type CoapListener } from '../../src/transport/coap/index.js';
import { createListener, type CoapTuning } from '../../src/transport/coap/listener.js';
import type { IngestOutcome, RawMessage } from '../../src/types.js';
import { DEMO, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';
import { silentLogger, tempDir, waitUntil } from '../helpers/index.js';

const T0 = 1_750_000_000_000;
const OFF = { perSecond: 0, burst: 1 };

type Answer = Received;

/** A raw client bound to `address`, closed after each test. */
const Client = {
  async open(serverPort: number, address = '127.0.0.1'): Promise<RawCoapClient> {
    const c = await RawCoapClient.open(serverPort, address);
    clients.push(c);
    return c;
  },
};

/** A Block1 option value (RFC 7959 §2.2): NUM | M | SZX, big-endian, minimal length. Written here, not imported, so the test checks the encoding too. */
function block(num: number, more: boolean, szx: number): Buffer {
  const v = num * 16 + (more ? 8 : 0) + szx;
  if (v === 0) return Buffer.alloc(0);
  if (v < 0x100) return Buffer.from([v]);
  if (v < 0x10000) return Buffer.from([v >> 8, v & 0xff]);
  return Buffer.from([v >> 16, (v >> 8) & 0xff, v & 0xff]);
}

function uint(v: number): Buffer {
  const out: number[] = [];
  for (let x = v; x > 0; x = Math.floor(x / 256)) out.unshift(x % 256);
  return Buffer.from(out);
}

function upRaw(pk = 'a1Water', dn = 'meter-0001'): string[] {
  return ['topic', 'sys', pk, dn, 'thing', 'model', 'up_raw'];
}

function propertyPost(pk = 'a1Water', dn = 'meter-0001'): string[] {
  return ['topic', 'sys', pk, dn, 'thing', 'event', 'property', 'post'];
}

interface PostOptions {
  block1?: Buffer;
  size1?: number;
  token?: Buffer;
  confirmable?: boolean;
  extra?: Option[];
  code?: string;
}

function post(messageId: number, path: string[], payload: Buffer, o: PostOptions = {}): Packet {
  const options: Option[] = path.map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
  if (o.block1 !== undefined) options.push({ name: 'Block1', value: o.block1 });
  if (o.size1 !== undefined) options.push({ name: 'Size1', value: uint(o.size1) });
  options.push(...(o.extra ?? []));
  return {
    code: o.code ?? 'POST',
    confirmable: o.confirmable ?? true,
    messageId,
    token: o.token ?? Buffer.from([0x5a, messageId & 0xff]),
    options,
    payload,
  };
}

function option(p: ParsedPacket, name: string): Buffer | undefined {
  return p.options.find((o) => o.name === name)?.value;
}

interface Recorder {
  calls: RawMessage[];
  outcome: (raw: RawMessage) => IngestOutcome;
  delayMs: number;
  handler: (raw: RawMessage) => Promise<IngestOutcome>;
}

function recorder(): Recorder {
  const r: Recorder = {
    calls: [],
    delayMs: 0,
    outcome: (raw) => ({ committed: 1, deadLettered: false, msgId: raw.route.type === 'up-raw' ? undefined : '7' }),
    handler: (raw) => {
      r.calls.push(raw);
      const outcome = r.outcome(raw);
      return new Promise((resolve) => setTimeout(() => resolve(outcome), r.delayMs));
    },
  };
  return r;
}

const unknownDevice = (): IngestOutcome => ({
  error: new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${'x'.repeat(200)}`),
  committed: 0,
  deadLettered: false,
});

const clients: RawCoapClient[] = [];
let listener: CoapListener | null = null;
let gateway: Gateway | null = null;
let cleanupDir: (() => void) | null = null;

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  if (listener) await listener.stop();
  listener = null;
  if (gateway) await gateway.stop();
  gateway = null;
  cleanupDir?.();
  cleanupDir = null;
});

async function setup(
  o: { limits?: Partial<CoapLimits>; tuning?: Partial<CoapTuning>; maxPayloadBytes?: number; now?: () => number } = {},
): Promise<{ ingest: Recorder; client: RawCoapClient; listener: CoapListener }> {
  const ingest = recorder();
  const l = createListener(
    {
      host: '127.0.0.1',
      port: 0,
      maxPayloadBytes: o.maxPayloadBytes ?? 1024,
      ingest: ingest.handler,
      logger: silentLogger,
      now: o.now,
      limits: { ...COAP_LIMITS_DEFAULTS, ...o.limits },
    },
    o.tuning ?? {},
  );
  listener = l;
  await l.start();
  return { ingest, client: await Client.open(l.address().port), listener: l };
}

describe('Block1 uploads (RFC 7959) are reassembled up to coap.maxPayloadBytes', () => {
  it('answers 2.31 Continue per block echoing its Block1, then ingests the whole body once and answers 2.04 with Block1', async () => {
    const { ingest, client, listener: l } = await setup({ maxPayloadBytes: 64 });
    const body = Buffer.from('0123456789abcdef'.repeat(3) + 'xyz'); // 51 bytes: blocks of 16, 16, 16 and 3
    for (let n = 0; n < 3; n++) {
      // §2.5: a client may change the token from block to block; the transfer is keyed by peer + path.
      const r = await client.request(post(100 + n, upRaw(), body.subarray(n * 16, n * 16 + 16), { block1: block(n, true, 0), token: Buffer.from([n]) }));
      expect(r.packet).toMatchObject({ code: '2.31', ack: true, messageId: 100 + n });
      expect(r.packet.token).toEqual(Buffer.from([n]));
      expect(option(r.packet, 'Block1')).toEqual(block(n, true, 0));
      expect(ingest.calls).toHaveLength(0);
    }
    expect(l.stats()).toMatchObject({ reassemblies: 1, reassemblyBytes: 48 });
    const last = await client.request(post(103, upRaw(), body.subarray(48), { block1: block(3, false, 0), token: Buffer.from([9]) }));
    expect(last.packet).toMatchObject({ code: '2.04', ack: true, messageId: 103 });
    expect(last.packet.token).toEqual(Buffer.from([9]));
    expect(option(last.packet, 'Block1')).toEqual(block(3, false, 0));
    expect(ingest.calls).toHaveLength(1);
    expect(ingest.calls[0]!.payload).toEqual(body);
    expect(ingest.calls[0]!.topic).toBe('/sys/a1Water/meter-0001/thing/model/up_raw');
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0, responses: { '2.31': 3, '2.04': 1 } });
  });

  it('accepts a body of exactly the limit, NON blocks, and a block size that shrinks mid-transfer (offset = num x size)', async () => {
    const { ingest, client } = await setup({ maxPayloadBytes: 64 });
    const body = Buffer.alloc(64, 0x41);
    // 32-byte block 0, then 16-byte blocks 2 and 3 (offsets 32 and 48), as NON messages.
    const a = await client.request(post(1, upRaw(), body.subarray(0, 32), { block1: block(0, true, 1), confirmable: false }));
    expect(a.packet).toMatchObject({ code: '2.31', confirmable: false, ack: false });
    expect((await client.request(post(2, upRaw(), body.subarray(32, 48), { block1: block(2, true, 0), confirmable: false }))).packet.code).toBe('2.31');
    const last = await client.request(post(3, upRaw(), body.subarray(48), { block1: block(3, false, 0), confirmable: false }));
    expect(last.packet.code).toBe('2.04');
    expect(ingest.calls.map((c) => c.payload.length)).toEqual([64]);
  });

  it('answers a retransmitted block from the de-duplication cache and stores it once', async () => {
    const { ingest, client, listener: l } = await setup();
    const first = post(1, upRaw(), Buffer.alloc(16, 1), { block1: block(0, true, 0) });
    const a = await client.request(first);
    const again = await client.request(first);
    expect(again.raw).toEqual(a.raw);
    expect(l.stats()).toMatchObject({ duplicates: 1, reassemblyBytes: 16 });
    expect((await client.request(post(2, upRaw(), Buffer.from([2, 2]), { block1: block(1, false, 0) }))).packet.code).toBe('2.04');
    expect(ingest.calls[0]!.payload).toEqual(Buffer.concat([Buffer.alloc(16, 1), Buffer.from([2, 2])]));
  });

  it('answers 4.08 Request Entity Incomplete to a block out of order or without a transfer, and drops the transfer (§2.9.2)', async () => {
    const { ingest, client, listener: l } = await setup();
    const orphan = await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(1, true, 0) }));
    expect(orphan.packet.code).toBe('4.08');
    expect(orphan.packet.payload.toString()).toMatch(/^WANWU_ERR_INCOMPLETE /);
    expect((await client.request(post(2, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await client.request(post(3, upRaw(), Buffer.alloc(16), { block1: block(2, true, 0) }))).packet.code).toBe('4.08');
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
    expect((await client.request(post(4, upRaw(), Buffer.alloc(16), { block1: block(1, true, 0) }))).packet.code).toBe('4.08');
    // Starting over from block 0 works.
    expect((await client.request(post(5, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await client.request(post(6, upRaw(), Buffer.alloc(1), { block1: block(1, false, 0) }))).packet.code).toBe('2.04');
    expect(ingest.calls.map((c) => c.payload.length)).toEqual([17]);
    expect(l.stats().refused).toMatchObject({ incomplete: 3 });
  });

  it('keeps transfers of different peers and paths apart', async () => {
    const { ingest, client } = await setup();
    const other = await Client.open(client.serverPort);
    expect((await client.request(post(1, upRaw(), Buffer.alloc(16, 1), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await other.request(post(1, upRaw(), Buffer.alloc(16, 2), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await client.request(post(2, upRaw('a1Water', 'meter-0002'), Buffer.alloc(16, 3), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await other.request(post(2, upRaw(), Buffer.from([2]), { block1: block(1, false, 0) }))).packet.code).toBe('2.04');
    expect((await client.request(post(3, upRaw(), Buffer.from([1]), { block1: block(1, false, 0) }))).packet.code).toBe('2.04');
    expect(ingest.calls.map((c) => [c.deviceName, c.payload[0], c.payload.length])).toEqual([
      ['meter-0001', 2, 17],
      ['meter-0001', 1, 17],
    ]);
  });

  it('drops a transfer idle for longer than MAX_TRANSMIT_SPAN (45 s); each block restarts the wait', async () => {
    let clock = T0;
    const { client, listener: l } = await setup({ now: () => clock });
    expect((await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    clock += 44_000;
    expect((await client.request(post(2, upRaw(), Buffer.alloc(16), { block1: block(1, true, 0) }))).packet.code).toBe('2.31');
    clock += 44_000;
    expect((await client.request(post(3, upRaw(), Buffer.alloc(16), { block1: block(2, true, 0) }))).packet.code).toBe('2.31');
    clock += 45_000;
    expect((await client.request(post(4, upRaw(), Buffer.alloc(16), { block1: block(3, true, 0) }))).packet.code).toBe('4.08');
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
  });

  it('frees an idle transfer without further traffic (maintenance sweep, no timer per transfer)', async () => {
    let clock = T0;
    const { client, listener: l } = await setup({ now: () => clock, tuning: { reassemblyIdleMs: 1_000 } });
    expect((await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect(l.stats().reassemblies).toBe(1);
    clock += 1_000;
    await waitUntil(() => l.stats().reassemblies === 0, 5_000, 'the sweep');
    expect(l.stats().reassemblyBytes).toBe(0);
  });

  it('caps transfers in progress at coap.limits.maxReassemblies: 5.03 with Max-Age, room again once one completes', async () => {
    const { client, listener: l } = await setup({ limits: { maxReassemblies: 2 } });
    const b = await Client.open(client.serverPort);
    const c = await Client.open(client.serverPort);
    expect((await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect((await b.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    const full = await c.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }));
    expect(full.packet.code).toBe('5.03');
    expect(option(full.packet, 'Max-Age')).toEqual(Buffer.from([30]));
    expect(full.packet.payload.toString()).toMatch(/^WANWU_ERR_OVERLOADED /);
    // A single-block body needs no state and still goes through.
    expect((await c.request(post(2, upRaw(), Buffer.alloc(3), { block1: block(0, false, 0) }))).packet.code).toBe('2.04');
    expect((await client.request(post(2, upRaw(), Buffer.alloc(1), { block1: block(1, false, 0) }))).packet.code).toBe('2.04');
    expect((await c.request(post(3, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('2.31');
    expect(l.stats()).toMatchObject({ reassemblies: 2, reassemblyBytes: 32 });
    expect(l.stats().refused).toMatchObject({ reassemblyLimit: 1 });
  });
});

describe('Block1 extremes get 4.13 with Size1 before anything is stored (RFC 7959 §2.9.3)', () => {
  const cases: Array<{ name: string; block1: Buffer; payload: number; size1?: number }> = [
    { name: 'num 1048575 (the largest NUM), last block, SZX 6', block1: block(1048575, false, 6), payload: 16 },
    { name: 'num 1048575 with M set, SZX 0', block1: block(1048575, true, 0), payload: 16 },
    { name: 'M set with a huge num (65536 x 1024 bytes)', block1: block(65536, true, 6), payload: 1024 },
    { name: 'M set with a huge num and a short payload', block1: block(4000, true, 6), payload: 10 },
    { name: 'block 0 announcing a body over the limit in Size1', block1: block(0, true, 0), payload: 16, size1: 1025 },
    { name: 'block 0 announcing 4 GiB in Size1', block1: block(0, true, 0), payload: 16, size1: 0xffffffff },
    { name: 'block 0 of 1024 bytes with M set (so at least 1025)', block1: block(0, true, 6), payload: 1024 },
  ];

  it.each(cases)('$name', async (c) => {
    const { ingest, client, listener: l } = await setup({ maxPayloadBytes: 1024 });
    const opts: PostOptions = { block1: c.block1 };
    if (c.size1 !== undefined) opts.size1 = c.size1;
    const r = await client.request(post(1, upRaw(), Buffer.alloc(c.payload, 7), opts));
    expect(r.packet).toMatchObject({ code: '4.13', ack: true, messageId: 1 });
    expect(option(r.packet, 'Size1')).toEqual(Buffer.from([0x04, 0x00])); // 1024
    expect(r.packet.payload.toString()).toMatch(/^WANWU_ERR_TOO_LARGE Block1 body of /);
    expect(r.raw.length).toBeLessThanOrEqual(r.sent.length);
    expect(ingest.calls).toHaveLength(0);
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
    expect(l.stats().refused).toMatchObject({ tooLarge: 1 });
  });

  it('a body that would exceed the limit over several blocks gets 4.13 at the block that proves it, and its transfer is dropped', async () => {
    const { ingest, client, listener: l } = await setup({ maxPayloadBytes: 64 });
    for (let n = 0; n < 3; n++) {
      expect((await client.request(post(1 + n, upRaw(), Buffer.alloc(16), { block1: block(n, true, 0) }))).packet.code).toBe('2.31');
    }
    expect(l.stats().reassemblyBytes).toBe(48);
    // Block 3 with M set: 64 bytes so far and more to come.
    const r = await client.request(post(4, upRaw(), Buffer.alloc(16), { block1: block(3, true, 0) }));
    expect(r.packet.code).toBe('4.13');
    expect(option(r.packet, 'Size1')).toEqual(Buffer.from([64]));
    // The diagnostic names the least body size; it is cut to fit the request's size (no amplification).
    expect(r.packet.payload.toString()).toMatch(/^WANWU_ERR_TOO_LARGE Block1 body of at least 65 bytes/);
    expect(r.raw.length).toBeLessThanOrEqual(r.sent.length);
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
    expect(ingest.calls).toHaveLength(0);
    // The client starts over within the limit: 64 bytes exactly.
    for (let n = 0; n < 3; n++) {
      expect((await client.request(post(10 + n, upRaw(), Buffer.alloc(16), { block1: block(n, true, 0) }))).packet.code).toBe('2.31');
    }
    expect((await client.request(post(13, upRaw(), Buffer.alloc(16), { block1: block(3, false, 0) }))).packet.code).toBe('2.04');
    expect(ingest.calls.map((c) => c.payload.length)).toEqual([64]);
  });

  it('SZX 7 is reserved: 4.00 Bad Request as RFC 7959 §2.2 requires, with num 0 or 1048575', async () => {
    const { ingest, client, listener: l } = await setup();
    for (const [id, b] of [[1, block(0, true, 7)], [2, block(1048575, true, 7)], [3, block(1048575, false, 7)]] as const) {
      const r = await client.request(post(id, upRaw(), Buffer.alloc(16), { block1: b }));
      expect(r.packet.code).toBe('4.00');
      expect(r.packet.payload.toString()).toMatch(/^WANWU_ERR_BLOCKWISE Block1 SZX 7 is reserved/);
    }
    expect(ingest.calls).toHaveLength(0);
    expect(l.stats()).toMatchObject({ reassemblies: 0, refused: { badBlock: 3 } });
  });

  it('a block with M set must carry exactly the block size, a last block at most that: 4.00', async () => {
    const { ingest, client } = await setup();
    expect((await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: block(0, true, 1) }))).packet.code).toBe('4.00');
    expect((await client.request(post(2, upRaw(), Buffer.alloc(17), { block1: block(0, false, 0) }))).packet.code).toBe('4.00');
    expect(ingest.calls).toHaveLength(0);
  });

  it('a Block1 value longer than 3 bytes, or a second Block1, is a bad option: 4.02 (RFC 7252 §5.4.3, §5.4.5)', async () => {
    const { ingest, client } = await setup();
    const long = await client.request(post(1, upRaw(), Buffer.alloc(16), { block1: Buffer.from([0, 0, 0, 0x08]) }));
    expect(long.packet.code).toBe('4.02');
    const twice = await client.request(post(2, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0), extra: [{ name: 'Block1', value: block(1, true, 0) }] }));
    expect(twice.packet.code).toBe('4.02');
    expect(ingest.calls).toHaveLength(0);
  });

  it('allocates nothing for them: 300 requests with num 1048575 leave memory flat (node-coap 1.5 allocates ~1 GB for one)', async () => {
    const { client, listener: l } = await setup({ maxPayloadBytes: 1024 * 1024 });
    global.gc?.();
    const before = process.memoryUsage();
    for (let i = 0; i < 300; i++) {
      const r = await client.request(post(i, upRaw(), Buffer.alloc(1024), { block1: block(1048575, i % 2 === 0, 6) }));
      expect(r.packet.code).toBe('4.13');
    }
    const after = process.memoryUsage();
    const grown = after.arrayBuffers + after.heapUsed - (before.arrayBuffers + before.heapUsed);
    expect(grown).toBeLessThan(64 * 1024 * 1024);
    expect(l.stats()).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
  });
});

describe('rate limits: 4.29 Too Many Requests with Max-Age (RFC 8516)', () => {
  it('limits each source address, all its ports together; another address is not affected; tokens refill with time', async () => {
    let clock = T0;
    const { ingest, client, listener: l } = await setup({
      now: () => clock,
      limits: { perSource: { perSecond: 1, burst: 3 }, perDevice: OFF, exemptLoopback: false },
    });
    const samePort = await Client.open(client.serverPort, '127.0.0.1');
    const otherAddress = await Client.open(client.serverPort, '127.0.0.2');
    for (let i = 1; i <= 3; i++) expect((await client.request(post(i, upRaw(), Buffer.from([i])))).packet.code).toBe('2.04');
    const limited = await client.request(post(4, upRaw(), Buffer.from([4])));
    expect(limited.packet).toMatchObject({ code: '4.29', ack: true, messageId: 4 });
    expect(option(limited.packet, 'Max-Age')).toEqual(Buffer.from([1]));
    expect(limited.packet.payload.toString()).toMatch(/^WANWU_ERR_RATE_LIMITED source 127\.0\.0\.1/);
    expect((await samePort.request(post(1, upRaw(), Buffer.from([5])))).packet.code).toBe('4.29');
    expect((await otherAddress.request(post(1, upRaw(), Buffer.from([6])))).packet.code).toBe('2.04');
    clock += 1_000;
    expect((await client.request(post(5, upRaw(), Buffer.from([7])))).packet.code).toBe('2.04');
    expect((await client.request(post(6, upRaw(), Buffer.from([8])))).packet.code).toBe('4.29');
    expect(ingest.calls.map((c) => c.payload[0])).toEqual([1, 2, 3, 6, 7]);
    const s = l.stats();
    expect(s.refused).toMatchObject({ rateLimitedSource: 3, rateLimitedDevice: 0 });
    expect(s.responses['4.29']).toBe(3);
    expect(s.tracked).toEqual({ sources: 2, devices: 0 });
  });

  it('counts duplicates against the source too, and refuses from the header alone (a NON gets a NON 4.29)', async () => {
    const { client } = await setup({ limits: { perSource: { perSecond: 0.001, burst: 2 }, perDevice: OFF, exemptLoopback: false } });
    const req = post(1, upRaw(), Buffer.from([1]));
    expect((await client.request(req)).packet.code).toBe('2.04');
    expect((await client.request(req)).packet.code).toBe('2.04'); // the duplicate, from the cache
    const non = await client.request(post(2, ['anything'], Buffer.alloc(0), { confirmable: false }));
    expect(non.packet).toMatchObject({ code: '4.29', confirmable: false, ack: false });
  });

  it('Max-Age says in whole seconds when the next token is there', async () => {
    let clock = T0;
    const { client } = await setup({ now: () => clock, limits: { perSource: { perSecond: 0.1, burst: 1 }, perDevice: OFF, exemptLoopback: false } });
    expect((await client.request(post(1, upRaw(), Buffer.from([1])))).packet.code).toBe('2.04');
    expect(option((await client.request(post(2, upRaw(), Buffer.from([1])))).packet, 'Max-Age')).toEqual(Buffer.from([10]));
    clock += 4_500;
    expect(option((await client.request(post(3, upRaw(), Buffer.from([1])))).packet, 'Max-Age')).toEqual(Buffer.from([6]));
  });

  it('limits each device named by the path, from any source; other devices are not affected', async () => {
    const { ingest, client, listener: l } = await setup({ limits: { perDevice: { perSecond: 0.001, burst: 2 }, perSource: OFF, exemptLoopback: false } });
    const other = await Client.open(client.serverPort, '127.0.0.3');
    expect((await client.request(post(1, upRaw('pk', 'A'), Buffer.from([1])))).packet.code).toBe('2.04');
    expect((await other.request(post(1, upRaw('pk', 'A'), Buffer.from([2])))).packet.code).toBe('2.04');
    const limited = await client.request(post(2, propertyPost('pk', 'A'), Buffer.from('{}')));
    expect(limited.packet.code).toBe('4.29');
    expect(limited.packet.payload.toString()).toMatch(/^WANWU_ERR_RATE_LIMITED device pk\/A/);
    expect((await client.request(post(3, upRaw('pk', 'B'), Buffer.from([3])))).packet.code).toBe('2.04');
    expect(ingest.calls.map((c) => c.deviceName)).toEqual(['A', 'A', 'B']);
    expect(l.stats().refused).toMatchObject({ rateLimitedDevice: 1, rateLimitedSource: 0 });
    expect(l.stats().tracked).toEqual({ sources: 0, devices: 2 });
  });

  it('counts a Block1 upload once against its device', async () => {
    const { ingest, client } = await setup({ limits: { perDevice: { perSecond: 0.001, burst: 1 }, perSource: OFF, exemptLoopback: false } });
    for (let n = 0; n < 3; n++) expect((await client.request(post(1 + n, upRaw(), Buffer.alloc(16), { block1: block(n, true, 0) }))).packet.code).toBe('2.31');
    expect((await client.request(post(4, upRaw(), Buffer.alloc(2), { block1: block(3, false, 0) }))).packet.code).toBe('2.04');
    expect((await client.request(post(5, upRaw(), Buffer.alloc(16), { block1: block(0, true, 0) }))).packet.code).toBe('4.29');
    expect(ingest.calls).toHaveLength(1);
  });

  it('leaves loopback sources alone when exemptLoopback is true (the default), and perSecond 0 switches a limit off', async () => {
    const tiny = { perSecond: 0.001, burst: 1 };
    const { ingest, client, listener: l } = await setup({ limits: { perDevice: tiny, perSource: tiny } });
    for (let i = 0; i < 20; i++) expect((await client.request(post(i, upRaw(), Buffer.from([i])))).packet.code).toBe('2.04');
    expect(ingest.calls).toHaveLength(20);
    expect(l.stats().tracked).toEqual({ sources: 0, devices: 0 });
    await l.stop();
    const off = await setup({ limits: { perDevice: OFF, perSource: OFF, exemptLoopback: false } });
    for (let i = 0; i < 20; i++) expect((await off.client.request(post(i, upRaw(), Buffer.from([i])))).packet.code).toBe('2.04');
    expect(Object.values(off.listener.stats().refused).every((n) => n === 0)).toBe(true);
  });
});

describe('tracked peers are capped (coap.limits.maxPeers)', () => {
  it('keeps at most maxPeers peers, source addresses and device names, counting what it drops early', async () => {
    const { listener: l } = await setup({
      limits: { maxPeers: 16, exemptLoopback: false, perSource: { perSecond: 100, burst: 100 }, perDevice: { perSecond: 100, burst: 100 } },
    });
    for (let i = 0; i < 40; i++) {
      const c = await Client.open(l.address().port, `127.0.1.${i + 1}`);
      expect((await c.request(post(1, upRaw('pk', `dn-${i}`), Buffer.from([i])))).packet.code).toBe('2.04');
      const s = l.stats();
      expect(s.peers).toBeLessThanOrEqual(16);
      expect(s.tracked.sources).toBeLessThanOrEqual(16);
      expect(s.tracked.devices).toBeLessThanOrEqual(16);
    }
    const { evicted } = l.stats();
    expect(evicted.peers).toBeGreaterThan(0);
    expect(evicted.sources).toBeGreaterThan(0);
    expect(evicted.devices).toBeGreaterThan(0);
  });
});

describe('no amplification: no answer is larger than its request (RFC 7252 §11.3)', () => {
  it('cuts the diagnostic of a refusal from the pipeline (unknown device) to the size of the request', async () => {
    const { ingest, client } = await setup();
    ingest.outcome = unknownDevice;
    const small = await client.request(post(1, upRaw('p', 'd'), Buffer.alloc(0), { token: Buffer.alloc(0) }));
    expect(small.packet.code).toBe('4.04');
    expect(small.raw.length).toBeLessThanOrEqual(small.sent.length);
    expect(small.packet.payload.length).toBeGreaterThan(0);
    expect(`WANWU_ERR_UNKNOWN_DEVICE unknown device ${'x'.repeat(200)}`.startsWith(small.packet.payload.toString())).toBe(true);
    // A larger request gets the whole (128-byte) diagnostic.
    const large = await client.request(post(2, upRaw('p', 'd'), Buffer.alloc(200)));
    expect(large.packet.payload.length).toBe(128);
  });

  it('holds for every answer to short random requests (property test, 200 runs)', async () => {
    const { ingest, client } = await setup({
      maxPayloadBytes: 16,
      limits: { exemptLoopback: false, perSource: { perSecond: 1000, burst: 100 }, perDevice: { perSecond: 20, burst: 5 } },
    });
    let messageId = 0;
    const segment = fc.constantFrom('topic', 'sys', 'p', 'd', 'thing', 'model', 'up_raw', 'event', 'property', 'post', 'x'.repeat(30), '');
    await fc.assert(
      fc.asyncProperty(
        fc.record({
          code: fc.constantFrom('POST', 'POST', 'POST', 'GET', 'PUT', '0.07'),
          token: fc.uint8Array({ maxLength: 8 }),
          path: fc.oneof(fc.constant(upRaw('p', 'd')), fc.constant(propertyPost('p', 'd')), fc.array(segment, { maxLength: 8 })),
          block1: fc.option(fc.uint8Array({ maxLength: 4 }), { nil: undefined }),
          size1: fc.option(fc.nat(5000), { nil: undefined }),
          payload: fc.uint8Array({ maxLength: 40 }),
          fail: fc.boolean(),
        }),
        async (r) => {
          ingest.outcome = r.fail ? unknownDevice : (raw) => ({ committed: 1, deadLettered: false, msgId: raw.route.type === 'up-raw' ? undefined : 'an-alink-id-longer-than-the-request-body' });
          const opts: PostOptions = { token: Buffer.from(r.token), code: r.code };
          if (r.block1 !== undefined) opts.block1 = Buffer.from(r.block1);
          if (r.size1 !== undefined) opts.size1 = r.size1;
          const a = await client.request(post(++messageId, r.path, Buffer.from(r.payload), opts));
          expect(a.raw.length).toBeLessThanOrEqual(a.sent.length);
        },
      ),
      { numRuns: 200 },
    );
  });

  it('drops the Alink body of a success reply rather than answer with more than the request', async () => {
    const { ingest, client } = await setup();
    ingest.outcome = () => ({ committed: 1, deadLettered: false, msgId: 'x'.repeat(60) });
    const r = await client.request(post(1, propertyPost('p', 'd'), Buffer.from('{}')));
    expect(r.packet.code).toBe('2.04');
    expect(r.packet.payload.length).toBe(0);
    expect(option(r.packet, 'Content-Format')).toBeUndefined();
    expect(r.raw.length).toBeLessThanOrEqual(r.sent.length);
  });

  it('answers a rate-limited bare header with no more than its 4 bytes (the Max-Age goes)', async () => {
    const { client } = await setup({ limits: { perSource: { perSecond: 0.001, burst: 1 }, perDevice: OFF, exemptLoopback: false } });
    await client.request(post(1, upRaw(), Buffer.from([1])));
    const r = await client.request(Buffer.from([0x40, 0x02, 0x00, 0x02])); // CON POST, no token, no options
    expect(r.raw).toEqual(Buffer.from([0x60, 0x9d, 0x00, 0x02])); // ACK 4.29, same message id
  });

  it('fits a separate response (slow ingest) to the request as well', async () => {
    const { ingest, client } = await setup({ tuning: { piggybackMs: 30 } });
    ingest.outcome = unknownDevice;
    ingest.delayMs = 120;
    const sent = client.send(post(1, upRaw('p', 'd'), Buffer.alloc(0)));
    const ack = await client.next();
    expect(ack.raw).toEqual(Buffer.from([0x60, 0x00, 0x00, 0x01])); // empty ACK
    const separate = await client.next();
    expect(separate.packet).toMatchObject({ code: '4.04', confirmable: true });
    expect(separate.raw.length).toBeLessThanOrEqual(sent.length);
    client.send(Buffer.from([0x60, 0x00, separate.raw[2]!, separate.raw[3]!])); // ACK it
  });

  it('does not repeat a cached response for a smaller datagram with the same message id and token', async () => {
    const { client, listener: l } = await setup();
    const request = post(0x1234, propertyPost(), Buffer.from('{"id":"7","params":{"temperature":21.5}}'), { token: Buffer.from([1, 2, 3, 4]) });
    const first = await client.request(request);
    expect(first.packet.code).toBe('2.04');
    expect(first.raw.length).toBeGreaterThan(8);
    // Header and token only: the same de-duplication key, far fewer bytes.
    client.send(Buffer.from([0x44, 0x02, 0x12, 0x34, 1, 2, 3, 4]));
    await client.nothingFor(200);
    expect(l.stats().refused).toMatchObject({ amplification: 1 });
    // The real retransmission still gets its answer.
    expect((await client.request(request)).raw).toEqual(first.raw);
  });
});

describe('refusals on /status and /metrics', () => {
  it('the gateway reassembles a Block1 property post and counts Block1 refusals by reason on /status and /metrics', async () => {
    const dir = tempDir('wanwu-coap-limits-');
    cleanupDir = dir.cleanup;
    gateway = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
    const { coap, http } = gateway.addresses();
    const client = await Client.open(coap.port);
    const { productKey, deviceName } = DEMO.tracker;
    // The gateway requires CoAP authentication by default: every block carries the token and a sequence number.
    const device = await client.authenticate({ productKey, deviceName, secret: await deviceSecret(productKey, deviceName) });
    const path = propertyPost(productKey, deviceName);
    const body = Buffer.from(
      JSON.stringify({ id: '2001', version: '1.0', method: 'thing.event.property.post', params: { longitude: 121.4737, latitude: 31.2304, speed: 42.5, workMode: 0 } }),
    );
    const blocks = Math.ceil(body.length / 64);
    let last: Answer | undefined;
    for (let n = 0; n < blocks; n++) {
      const more = n < blocks - 1;
      last = await client.request(post(10 + n, path, body.subarray(n * 64, n * 64 + 64), { block1: block(n, more, 2), size1: body.length, extra: device.options() }));
      expect(last.packet.code).toBe(more ? '2.31' : '2.04');
    }
    expect(JSON.parse(last!.packet.payload.toString())).toEqual({ id: '2001', code: 200, data: {}, message: 'success' });

    expect((await client.request(post(20, path, Buffer.alloc(16), { block1: block(1048575, true, 0), extra: device.options() }))).packet.code).toBe('4.13');
    expect((await client.request(post(21, path, Buffer.alloc(16), { block1: block(0, true, 7), extra: device.options() }))).packet.code).toBe('4.00');
    expect((await client.request(post(22, path, Buffer.alloc(16), { block1: block(5, true, 0), extra: device.options() }))).packet.code).toBe('4.08');
    // A device without a token is refused before the pipeline (4.01), and the answer is no larger than the request.
    const unknown = await client.request(post(23, upRaw(DEMO.meter.productKey, 'nobody'), Buffer.alloc(0), { token: Buffer.alloc(0) }));
    expect(unknown.packet.code).toBe('4.01');
    expect(unknown.raw.length).toBeLessThanOrEqual(unknown.sent.length);

    const status = (await getJson(http.port, '/status')).body;
    expect(status.ingest.accepted.coap).toBe(1);
    expect(status.listeners.coap.refused).toEqual({
      rateLimitedSource: 0, rateLimitedDevice: 0, tooLarge: 1, badBlock: 1, incomplete: 1, reassemblyLimit: 0, overloaded: 0, amplification: 0,
    });
    expect(status.listeners.coap).toMatchObject({ reassemblies: 0, reassemblyBytes: 0 });
    const metrics = (await getJson(http.port, '/metrics')).text;
    expect(metrics).toContain('wanwu_coap_refused_total{reason="tooLarge"} 1');
    expect(metrics).toContain('wanwu_coap_refused_total{reason="badBlock"} 1');
    expect(metrics).toContain('wanwu_coap_refused_total{reason="incomplete"} 1');
    expect(metrics).toMatch(/^wanwu_coap_reassemblies 0$/m);
  });

  it('the gateway passes coap.limits from its configuration to the listener', async () => {
    const dir = tempDir('wanwu-coap-limits-');
    cleanupDir = dir.cleanup;
    gateway = await startGateway(dir.path, [{ name: 'local', url: 'local' }], {
      coap: { host: '127.0.0.1', port: 0, limits: { perDevice: { perSecond: 0.001, burst: 1 }, exemptLoopback: false } },
    });
    const client = await Client.open(gateway.addresses().coap.port);
    const frame = Buffer.from('010000303904d20e10000929ffa6', 'hex');
    const { productKey, deviceName } = DEMO.meter;
    const device = await client.authenticate({ productKey, deviceName, secret: await deviceSecret(productKey, deviceName) });
    const path = upRaw(productKey, deviceName);
    expect((await client.request(post(1, path, frame, { extra: device.options() }))).packet.code).toBe('2.04');
    expect((await client.request(post(2, path, frame, { extra: device.options() }))).packet.code).toBe('4.29');
    expect((await getJson(gateway.addresses().http.port, '/status')).body.listeners.coap.refused.rateLimitedDevice).toBe(1);
    // A signed /auth has its own bucket per device (its uplinks' is empty, yet the first /auth passes):
    // the second within the same second is refused, so one device's secret cannot churn tokens.
    const again = await client.authenticate({ productKey, deviceName, secret: await deviceSecret(productKey, deviceName) }).then(
      () => 'issued',
      (err: Error) => err.message,
    );
    expect(again).toMatch(/4\.29/);
    expect((await getJson(gateway.addresses().http.port, '/status')).body.listeners.coap.refused.rateLimitedDevice).toBe(2);
  });

  it('/metrics counts rate-limit refusals by reason', async () => {
    const { client, listener: l } = await setup({ limits: { perSource: { perSecond: 0.001, burst: 2 }, perDevice: { perSecond: 0.001, burst: 1 }, exemptLoopback: false } });
    expect((await client.request(post(1, upRaw('pk', 'A'), Buffer.from([1])))).packet.code).toBe('2.04');
    expect((await client.request(post(2, upRaw('pk', 'A'), Buffer.from([1])))).packet.code).toBe('4.29'); // device
    expect((await client.request(post(3, upRaw('pk', 'B'), Buffer.from([1])))).packet.code).toBe('4.29'); // source
    expect((await client.request(post(4, upRaw('pk', 'B'), Buffer.from([1])))).packet.code).toBe('4.29'); // source
    const zero = new Proxy({}, { get: () => 0 });
    const sources = {
      version: 'test',
      startedAt: Date.now(),
      ready: () => true,
      coap: () => l.stats(),
      mqtt: () => null,
      pipeline: () => ({ accepted: { coap: 0, mqtt: 0 }, records: { coap: 0, mqtt: 0 }, rejected: { coap: 0, mqtt: 0 }, rejectedByCode: {}, inFlight: 0 }),
      buffer: () => zero,
      upstreams: () => [],
      registry: () => ({ products: 0, devices: 0 }),
    } as unknown as StatusSources;
    const text = await createMetricsRegistry(sources).metrics();
    expect(text).toContain('wanwu_coap_refused_total{reason="rateLimitedSource"} 2');
    expect(text).toContain('wanwu_coap_refused_total{reason="rateLimitedDevice"} 1');
    expect(text).toContain('wanwu_coap_responses_total{code="4.29"} 3');
  });
});

describe('coap.limits configuration', () => {
  it('has the documented defaults, takes partial overrides, and refuses bad values with their key paths', () => {
    expect(parseConfig({}).coap.limits).toEqual(COAP_LIMITS_DEFAULTS);
    expect(parseConfig({ coap: { limits: { perDevice: { burst: 5 } } } }).coap.limits.perDevice).toEqual({ perSecond: 10, burst: 5 });
    let err: unknown;
    try {
      parseConfig({ coap: { limits: { perSource: { perSecond: -1 }, maxPeers: 2, maxReassemblies: 0, bogus: 1 } } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(WanwuError);
    expect((err as WanwuError).code).toBe('WANWU_ERR_CONFIG');
    for (const key of ['coap.limits.perSource.perSecond', 'coap.limits.maxPeers', 'coap.limits.maxReassemblies', 'coap.limits.bogus: unknown key']) {
      expect((err as WanwuError).message).toContain(key);
    }
  });
});

describe('createCoapListener', () => {
  it('uses the configuration defaults of coap.limits when given none', async () => {
    const ingest = recorder();
    const l = createCoapListener({ host: '127.0.0.1', port: 0, maxPayloadBytes: 64, ingest: ingest.handler, logger: silentLogger });
    listener = l;
    await l.start();
    const client = await Client.open(l.address().port);
    // Loopback is exempt by default: a burst from one device far over the per-device burst (100) goes through.
    const burst = COAP_LIMITS_DEFAULTS.perDevice.burst + 50;
    for (let i = 0; i < burst; i++) client.send(post(i, upRaw(), Buffer.from([1])));
    const codes: string[] = [];
    for (let i = 0; i < burst; i++) codes.push((await client.next()).packet.code);
    expect(codes.filter((c) => c !== '2.04')).toEqual([]);
    expect(ingest.calls).toHaveLength(burst);
    expect(l.stats().tracked).toEqual({ sources: 0, devices: 0 });
  });
});
