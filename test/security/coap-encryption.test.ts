// CoAP payload encryption per product (product.json "coapEncryption": "aes-128-cbc"), in Alibaba IoT's
// symmetric mode (src/transport/coap/encryption.ts has the sources): /auth answers random and
// seqOffset, the device encrypts its payload and its sequence number (option 2089) with
// key = SHA-256("{deviceSecret},{random}") hex characters 16..47, AES-128-CBC, IV "543yhjy97ae7fyfg",
// and the gateway encrypts its answers. A real gateway on port 0 with WaterMeterNB switched to
// encryption (a copy of devices/), an in-process aedes upstream for the committed records, and raw
// dgram + coap-packet clients. The device side (key, AES) is test/helpers/alibaba-coap.ts, written
// from Alibaba's doc, not the gateway's module.

import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type Option, type Packet } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { listDeadLetters } from '../../src/commands/deadletters.js';
import { createGateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { alibabaKey, seal, sealSeq, unseal } from '../helpers/alibaba-coap.js';
import { RawCoapClient, type Received } from '../helpers/coap.js';
import { DEVICES_DIR, gatewayConfig, getJson } from '../helpers/gateway.js';
import { silentLogger, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

// devices/WaterMeterNB/devices.json
const WM1 = { productKey: 'WaterMeterNB', deviceName: 'wm-0001', secret: 'demo-secret-WaterMeterNB-0001' };
// devices/TrackerCat1/devices.json: a product without coapEncryption
const TR1 = { productKey: 'TrackerCat1', deviceName: 'tr-0001', secret: 'demo-secret-TrackerCat1-0001' };
// Water meter report, 14 bytes big endian (devices/WaterMeterNB/product.json):
// 01 type | 0012d687 cumulativeFlow 1234.567 | 01f4 instantFlow 0.5 | 0e10 battery 3.6 V | 00 valve open | 0866 21.5 C | ffa1 rsrp -95
const METER_FRAME = Buffer.from('010012d68701f40e10000866ffa1', 'hex');
const METER_DATA = { cumulativeFlow: 1234.567, instantFlow: 0.5, batteryVoltage: 3.6, valveState: 0, temperature: 21.5, rsrp: -95 };
const UP_RAW = ['thing', 'model', 'up_raw'];
const PROPERTY_POST = ['thing', 'event', 'property', 'post'];

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** RFC 7252 §3.2 uint, for the plain sequence number of a product without encryption. */
function uint(v: number): Buffer {
  const out: number[] = [];
  for (let x = v; x > 0; x = Math.floor(x / 256)) out.unshift(x % 256);
  return Buffer.from(out);
}

let nextMid = 100;
const mid = () => (nextMid = (nextMid + 1) & 0xffff);

interface Session {
  token: string;
  random: string;
  seqOffset?: number;
  expiresIn: number;
  key: Buffer;
}

/** POST /auth with the MQTT sign of the device (src/registry/sign.ts; verified independently in coap-auth.test.ts). */
async function authenticate(c: RawCoapClient, d: { productKey: string; deviceName: string; secret: string }, seq?: number): Promise<Session> {
  const timestamp = Date.now();
  const login = signMqttLogin({ productKey: d.productKey, deviceName: d.deviceName, deviceSecret: d.secret, timestamp, id: `${d.deviceName}-${mid()}` });
  const clientId = login.clientId.slice(0, login.clientId.indexOf('|'));
  const body = { productKey: d.productKey, deviceName: d.deviceName, clientId, timestamp: String(timestamp), signmethod: 'hmacsha256', sign: login.password, ...(seq === undefined ? {} : { seq }) };
  const a = await c.request({
    code: 'POST',
    confirmable: true,
    messageId: mid(),
    token: Buffer.from([0xa1, 0xa2]),
    options: [{ name: 'Uri-Path', value: Buffer.from('auth') }],
    payload: Buffer.from(JSON.stringify(body)),
  });
  if (a.packet.code !== '2.05') throw new Error(`/auth answered ${a.packet.code} ${a.packet.payload.toString()}`);
  const answer = JSON.parse(a.packet.payload.toString()) as Omit<Session, 'key'>;
  return { ...answer, key: alibabaKey(d.secret, answer.random) };
}

interface Uplink {
  token?: string;
  /** Option 2089 as given (a Buffer), or a number: encrypted with `seqKey`, else a plain uint. */
  seq?: number | Buffer;
  seqKey?: Buffer;
  payload: Buffer;
  path?: string[];
  messageId?: number;
  extra?: Option[];
}

function uplink(d: { productKey: string; deviceName: string }, u: Uplink): Packet {
  const options: Option[] = ['topic', 'sys', d.productKey, d.deviceName, ...(u.path ?? UP_RAW)].map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
  if (u.token !== undefined) options.push({ name: '2088', value: Buffer.from(u.token) });
  if (u.seq !== undefined) {
    const value = Buffer.isBuffer(u.seq) ? u.seq : u.seqKey ? sealSeq(u.seqKey, u.seq) : uint(u.seq);
    options.push({ name: '2089', value });
  }
  options.push(...(u.extra ?? []));
  const messageId = u.messageId ?? mid();
  return { code: 'POST', confirmable: true, messageId, token: Buffer.from([0x5a, messageId & 0xff]), options, payload: u.payload };
}

/** An encrypted uplink: payload and sequence number sealed with `key`. */
function sealed(d: { productKey: string; deviceName: string }, s: { token: string; key: Buffer }, seq: number, plain: Buffer, path?: string[]): Packet {
  return uplink(d, { token: s.token, seq, seqKey: s.key, payload: seal(s.key, plain), ...(path === undefined ? {} : { path }) });
}

const text = (a: Received) => a.packet.payload.toString('utf8');

/** A gateway whose WaterMeterNB has "coapEncryption": "aes-128-cbc", forwarding to an aedes upstream. */
async function gateway(mode: 'required' | 'optional' = 'required') {
  const dir = tempDir('wanwu-coap-encryption-');
  cleanups.push(() => dir.cleanup());
  const devicesDir = join(dir.path, 'devices');
  cpSync(DEVICES_DIR, devicesDir, { recursive: true });
  const productFile = join(devicesDir, 'WaterMeterNB', 'product.json');
  writeFileSync(productFile, JSON.stringify({ ...JSON.parse(readFileSync(productFile, 'utf8')), coapEncryption: 'aes-128-cbc' }));
  const upstream = new TestUpstream();
  await upstream.start();
  cleanups.push(() => upstream.stop());
  const upstreams = [{ name: 'cloud', url: upstream.url, reconnectMinMs: 50 }];
  const config = gatewayConfig(dir.path, upstreams, { coap: { host: '127.0.0.1', port: 0, auth: { mode } }, devicesDir });
  const gw = createGateway(config, silentLogger);
  cleanups.push(() => gw.stop());
  await gw.start();
  const port = gw.addresses().coap.port;
  return {
    gw,
    config,
    upstream,
    client: async () => {
      const c = await RawCoapClient.open(port);
      cleanups.push(() => c.close());
      return c;
    },
    committed: () => gw.status().ingest.records.total,
    auth: () => gw.status().listeners.coap!.auth!,
  };
}

describe('CoAP payload encryption ("coapEncryption": "aes-128-cbc") on a gateway', () => {
  it('answers /auth with random and seqOffset, commits an encrypted uplink decoded, and encrypts the reply', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, WM1, 10);
    expect(s).toMatchObject({ token: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/), random: expect.stringMatching(/^[0-9a-f]{16}$/), seqOffset: 11, expiresIn: 172_800 });

    // seqOffset is the first number accepted (Alibaba's C SDK starts there).
    const raw = await c.request(sealed(WM1, s, 11, METER_FRAME));
    expect(raw.packet.code, text(raw)).toBe('2.04');
    expect(raw.packet.payload.length).toBe(0); // up_raw: a bare 2.04
    expect(g.committed()).toBe(1);
    await waitUntil(() => g.upstream.records().length === 1, 15_000, 'the record upstream');
    expect(g.upstream.records()[0]).toMatchObject({ productKey: 'WaterMeterNB', deviceName: 'wm-0001', transport: 'coap', data: METER_DATA });

    // An Alink JSON post: its reply travels encrypted and decrypts to the usual Alink reply.
    const post = Buffer.from(JSON.stringify({ id: '42', version: '1.0', method: 'thing.event.property.post', params: { valveState: 1 } }));
    const json = await c.request(sealed(WM1, s, 12, post, PROPERTY_POST));
    expect(json.packet.code, text(json)).toBe('2.04');
    expect(json.packet.payload.length % 16).toBe(0);
    expect(() => JSON.parse(text(json))).toThrow();
    expect(JSON.parse(unseal(s.key, json.packet.payload).toString())).toEqual({ id: '42', code: 200, data: {}, message: 'success' });
    expect(json.raw.length).toBeLessThanOrEqual(json.sent.length); // RFC 7252 §11.3
    await waitUntil(() => g.upstream.records().length === 2, 15_000, 'the second record upstream');
    expect(g.upstream.records()[1]).toMatchObject({ msgId: '42', data: { valveState: 1 } });
    expect(g.auth()).toMatchObject({ verified: 2, refused: { undecryptable: 0 } });
  });

  it('leaves products without coapEncryption as they were: no seqOffset, plain sequence number and payload', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, TR1);
    expect(Object.keys(s).filter((k) => k !== 'key').sort()).toEqual(['expiresIn', 'random', 'token']);
    const post = Buffer.from(JSON.stringify({ id: '1', params: { batteryLevel: 87 } }));
    const a = await c.request(uplink(TR1, { token: s.token, seq: 1, payload: post, path: PROPERTY_POST }));
    expect(a.packet.code, text(a)).toBe('2.04');
    expect(JSON.parse(text(a))).toEqual({ id: '1', code: 200, data: {}, message: 'success' });
    expect(g.committed()).toBe(1);
  });

  it('refuses plaintext from an encrypting product with WANWU_ERR_DECRYPT (4.01), commits nothing and counts it', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, WM1);
    const refused = async (p: Packet, code: string, errorCode: string) => {
      const a = await c.request(p);
      expect(a.packet.code, text(a)).toBe(code);
      // In clear: the sender may not hold the key.
      expect(text(a)).toMatch(new RegExp(`^${errorCode} `));
      expect(a.raw.length, 'no amplification').toBeLessThanOrEqual(a.sent.length);
    };
    // All plaintext, as for a product without encryption: the plain uint 2089 does not decrypt.
    await refused(uplink(WM1, { token: s.token, seq: 1, payload: METER_FRAME }), '4.01', 'WANWU_ERR_DECRYPT');
    // An encrypted sequence number with a plaintext payload (14 bytes: not whole AES blocks).
    await refused(uplink(WM1, { token: s.token, seq: 1, seqKey: s.key, payload: METER_FRAME }), '4.01', 'WANWU_ERR_DECRYPT');
    // No token at all: no key to decrypt with.
    await refused(uplink(WM1, { payload: METER_FRAME }), '4.01', 'WANWU_ERR_TOKEN');
    // An encrypted sequence number and no option 2089 at all.
    await refused(uplink(WM1, { token: s.token, payload: seal(s.key, METER_FRAME) }), '4.01', 'WANWU_ERR_REPLAY');
    expect(g.committed()).toBe(0);
    expect(g.gw.status().buffer.deadLetters).toBe(0);
    expect(g.auth().refused).toMatchObject({ undecryptable: 2, unauthenticated: 1, replay: 1 });

    // The payload that did not decrypt came under a sequence number that did (1, encrypted): that
    // number is used up, so one captured datagram cannot be tried with padding after padding (a CBC
    // padding oracle). The others used none. 1 is now a replay; 2, properly encrypted, is accepted.
    expect(text(await c.request(sealed(WM1, s, 1, METER_FRAME)))).toMatch(/^WANWU_ERR_REPLAY /);
    expect((await c.request(sealed(WM1, s, 2, METER_FRAME))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(1);

    const http = g.gw.addresses().http.port;
    const status = await getJson(http, '/status');
    expect(status.body.listeners.coap.auth.refused.undecryptable).toBe(2);
    expect((await getJson(http, '/metrics')).text).toContain('wanwu_coap_auth_refused_total{reason="undecryptable"} 2');
  });

  it('refuses a payload encrypted with another key: a stale random, or another secret', async () => {
    const g = await gateway();
    const c = await g.client();
    const old = await authenticate(c, WM1);
    const s = await authenticate(c, WM1);
    expect(s.random).not.toBe(old.random);
    // The new token with the key of the previous /auth (a device that kept its old random).
    const stale = await c.request(sealed(WM1, { token: s.token, key: old.key }, 1, METER_FRAME));
    expect(stale.packet.code).toBe('4.01');
    expect(text(stale)).toMatch(/^WANWU_ERR_DECRYPT /);
    const otherSecret = await c.request(sealed(WM1, { token: s.token, key: alibabaKey('demo-secret-WaterMeterNB-0002', s.random) }, 1, METER_FRAME));
    expect(text(otherSecret)).toMatch(/^WANWU_ERR_DECRYPT /);
    // The right sequence number with a payload under another key.
    const mixed = await c.request(uplink(WM1, { token: s.token, seq: 1, seqKey: s.key, payload: seal(old.key, METER_FRAME) }));
    expect(mixed.packet.code).toBe('4.01');
    expect(text(mixed)).toMatch(/^WANWU_ERR_DECRYPT payload of 16 bytes/);
    expect(g.committed()).toBe(0);
    expect(g.auth().refused.undecryptable).toBe(3);
    // Each token keeps its own key. (The mixed one used up the new token's 1: its 2089 decrypted.)
    expect((await c.request(sealed(WM1, old, 1, METER_FRAME))).packet.code).toBe('2.04');
    expect((await c.request(sealed(WM1, s, 2, METER_FRAME))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(2);
  });

  it('still refuses replayed sequence numbers; a retransmission gets its cached answer', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, WM1);
    expect(s.seqOffset).toBe(0); // no "seq" in the /auth body: from 0
    const first = sealed(WM1, s, 5, METER_FRAME);
    expect((await c.request(first)).packet.code).toBe('2.04');
    // The same datagram again (same message id and CoAP token): the de-duplication cache answers.
    expect((await c.request(first)).packet.code).toBe('2.04');
    expect(g.committed()).toBe(1);
    // The captured datagram replayed later under a new message id: its encrypted 2089 is used up.
    const replay = await c.request({ ...first, messageId: mid() });
    expect(replay.packet.code).toBe('4.01');
    // Without the numbers: they would tell the replayer what the encrypted option decrypts to.
    expect(text(replay)).toMatch(/^WANWU_ERR_REPLAY sequence number not above the last one accepted/);
    expect(text(replay)).not.toMatch(/\d/);
    expect(text(await c.request(sealed(WM1, s, 4, METER_FRAME)))).toMatch(/^WANWU_ERR_REPLAY/);
    expect((await c.request(sealed(WM1, s, 6, METER_FRAME))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(2);
    expect(g.auth().refused).toMatchObject({ replay: 2, undecryptable: 0 });
  });

  it('dead-letters a decrypted payload the codec refuses, and encrypts the 4.00 diagnostic', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, WM1);
    const short = METER_FRAME.subarray(0, 9);
    const a = await c.request(sealed(WM1, s, 1, short));
    expect(a.packet.code).toBe('4.00');
    expect(unseal(s.key, a.packet.payload).toString()).toMatch(/^WANWU_ERR_MALFORMED /);
    expect(a.raw.length).toBeLessThanOrEqual(a.sent.length);
    await waitUntil(() => g.gw.status().buffer.deadLetters === 1, 15_000, 'one dead letter');
    const rows = (await listDeadLetters(g.config, { product: 'WaterMeterNB' })).output.trim().split('\n').map((l) => JSON.parse(l) as { payloadHex: string; code: string });
    // Kept decrypted: the key lives only as long as the token, and a replay must be able to read it.
    expect(rows).toEqual([expect.objectContaining({ code: 'WANWU_ERR_MALFORMED', payloadHex: short.toString('hex') })]);
    expect(g.committed()).toBe(0);
  });

  it('decrypts a Block1 upload once it is whole', async () => {
    const g = await gateway();
    const c = await g.client();
    const s = await authenticate(c, WM1);
    const post = Buffer.from(JSON.stringify({ id: '9', params: { temperature: 19.5, rsrp: -101 } }));
    const body = seal(s.key, post);
    expect(body.length).toBeGreaterThan(32);
    const blocks = Math.ceil(body.length / 16);
    let last: Received | undefined;
    for (let num = 0; num < blocks; num++) {
      const more = num < blocks - 1;
      // RFC 7959 §2.2 Block1 value: NUM << 4 | M << 3 | SZX; SZX 0 = 16-byte blocks. Every block repeats the first's 2089.
      const p = uplink(WM1, { token: s.token, seq: 3, seqKey: s.key, payload: body.subarray(num * 16, num * 16 + 16), path: PROPERTY_POST, extra: [{ name: 'Block1', value: uint((num << 4) | (more ? 8 : 0)) }] });
      last = await c.request(p);
      expect(last.packet.code, text(last)).toBe(more ? '2.31' : '2.04');
    }
    expect(JSON.parse(unseal(s.key, last!.packet.payload).toString())).toEqual({ id: '9', code: 200, data: {}, message: 'success' });
    await waitUntil(() => g.upstream.records().length === 1, 15_000, 'the record upstream');
    expect(g.upstream.records()[0]).toMatchObject({ msgId: '9', data: { temperature: 19.5, rsrp: -101 } });
  });

  it('needs a token for an encrypting product even in coap.auth.mode "optional"; other products post without one', async () => {
    const g = await gateway('optional');
    const c = await g.client();
    // (Padded so that the whole diagnostic fits the answer: no answer is larger than its request.)
    const a = await c.request(uplink(WM1, { payload: Buffer.concat([METER_FRAME, Buffer.alloc(64)]) }));
    expect(a.packet.code).toBe('4.01');
    expect(text(a)).toMatch(/^WANWU_ERR_TOKEN no token for a product with coapEncryption /);
    const post = Buffer.from(JSON.stringify({ id: '1', params: { batteryLevel: 87 } }));
    expect((await c.request(uplink(TR1, { payload: post, path: PROPERTY_POST }))).packet.code).toBe('2.04');
    const s = await authenticate(c, WM1);
    expect((await c.request(sealed(WM1, s, 1, METER_FRAME))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(2);
  });
});
