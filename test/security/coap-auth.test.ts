// CoAP token authentication (src/transport/coap/auth.ts): POST /auth in Alibaba IoT's CoAP form,
// then uplinks carrying the token (option 2088) and a strictly increasing sequence number (2089).
// Every refusal commits zero records, and no answer to an unauthenticated or refused request is
// larger than the request (RFC 7252 §11.3). Raw dgram + coap-packet clients against an in-process
// gateway, and against the listener alone where the test needs a clock.

import { createHmac } from 'node:crypto';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate, parse, type Option, type Packet, type ParsedPacket } from 'coap-packet';
import { afterEach, describe, expect, it } from 'vitest';
import { authBody, authPacket as helperAuthPacket, OPT_SEQ, OPT_TOKEN, RawCoapClient, uint, type AuthFields, type Received } from '../helpers/coap.js';
import { devicesSetStatus } from '../../src/commands/devices.js';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { loadRegistry, type Device, type Registry } from '../../src/registry/index.js';
import { openDeviceStore, registryPaths } from '../../src/registry/store.js';
import { COAP_LIMITS_DEFAULTS } from '../../src/config/schema.js';
import { createCoapListener, type CoapLimits, type CoapListener } from '../../src/transport/coap/index.js';
import { TOKENS_PER_DEVICE } from '../../src/transport/coap/auth.js';
import type { IngestOutcome, Logger, RawMessage } from '../../src/types.js';
import { DEVICES_DIR, gatewayConfig, getJson } from '../helpers/gateway.js';
import { silentLogger, tempDir } from '../helpers/index.js';

// Water meter report, 14 bytes big endian (devices/WaterMeterNB/product.json):
// 01 type | 0012d687 cumulativeFlow 1234.567 | 01f4 instantFlow 0.5 | 0e10 battery 3.6 V | 00 valve open | 0866 21.5 C | ffa1 rsrp -95
const METER_FRAME = Buffer.from('010012d68701f40e10000866ffa1', 'hex');
// devices/WaterMeterNB/devices.json
const WM1 = { productKey: 'WaterMeterNB', deviceName: 'wm-0001', secret: 'demo-secret-WaterMeterNB-0001', iccid: '89861110000000000014' };
const WM2 = { productKey: 'WaterMeterNB', deviceName: 'wm-0002', secret: 'demo-secret-WaterMeterNB-0002' };
const TR1 = { productKey: 'TrackerCat1', deviceName: 'tr-0001' };

type Answer = Received;

const clients: RawCoapClient[] = [];
const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  for (const f of cleanups.splice(0).reverse()) await f();
});

/** A raw client (a new source port each), closed after each test. */
const Client = {
  async open(serverPort: number): Promise<RawCoapClient> {
    const c = await RawCoapClient.open(serverPort);
    clients.push(c);
    return c;
  },
};

let nextMid = 1;
function mid(): number {
  nextMid = (nextMid + 1) & 0xffff;
  return nextMid;
}

/** POST /auth (test/helpers/coap.ts) with this file's message ids. */
function authPacket(body: Record<string, unknown> | Buffer, token?: Buffer): Packet {
  return helperAuthPacket(body, token, mid());
}

/** POST /auth; returns the token on 2.05, else throws with the answer. */
async function authenticate(c: RawCoapClient, f: AuthFields): Promise<string> {
  return (await c.authenticate(f)).token;
}

interface UplinkAuth {
  token?: string | Buffer;
  seq?: number | Buffer;
  messageId?: number;
  coapToken?: Buffer;
}

function meterPacket(deviceName: string, a: UplinkAuth = {}, productKey = 'WaterMeterNB'): Packet {
  const options: Option[] = ['topic', 'sys', productKey, deviceName, 'thing', 'model', 'up_raw'].map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
  if (a.token !== undefined) options.push({ name: OPT_TOKEN, value: Buffer.isBuffer(a.token) ? a.token : Buffer.from(a.token) });
  if (a.seq !== undefined) options.push({ name: OPT_SEQ, value: Buffer.isBuffer(a.seq) ? a.seq : uint(a.seq) });
  const messageId = a.messageId ?? mid();
  return { code: 'POST', confirmable: true, messageId, token: a.coapToken ?? Buffer.from([0x5a, messageId & 0xff]), options, payload: METER_FRAME };
}

function text(a: Answer): string {
  return a.packet.payload.toString('utf8');
}

/** A logger that keeps warn lines (the start warnings). */
function recordingLogger(): Logger & { warnings: Array<{ obj: object; msg?: string | undefined }> } {
  const warnings: Array<{ obj: object; msg?: string | undefined }> = [];
  return { ...silentLogger, warnings, warn: (obj: object, msg?: string) => warnings.push({ obj, msg }) };
}

/** A copy of devices/ in which WaterMeterNB opts out of CoAP authentication ("auth": "none"). */
function devicesWithOptOut(): string {
  const dir = tempDir('wanwu-coap-auth-devices-');
  cleanups.push(() => dir.cleanup());
  const devicesDir = join(dir.path, 'devices');
  cpSync(DEVICES_DIR, devicesDir, { recursive: true });
  const productFile = join(devicesDir, 'WaterMeterNB', 'product.json');
  writeFileSync(productFile, JSON.stringify({ ...JSON.parse(readFileSync(productFile, 'utf8')), auth: 'none' }));
  return devicesDir;
}

async function gateway(mode: 'required' | 'optional' | undefined, opts: { devicesDir?: string; logger?: Logger } = {}) {
  const dir = tempDir('wanwu-coap-auth-');
  const config = gatewayConfig(dir.path, [{ name: 'local', url: 'local' }], {
    coap: { host: '127.0.0.1', port: 0, ...(mode === undefined ? {} : { auth: { mode } }) },
    devicesDir: opts.devicesDir ?? DEVICES_DIR,
    registry: { reloadMs: 50 },
  });
  const gw: Gateway = createGateway(config, opts.logger ?? silentLogger);
  cleanups.push(() => dir.cleanup());
  cleanups.push(() => gw.stop());
  await gw.start();
  const port = gw.addresses().coap.port;
  return {
    gw,
    config,
    port,
    client: () => Client.open(port),
    committed: () => gw.status().ingest.records.total,
    auth: () => gw.status().listeners.coap!.auth!,
  };
}

describe('CoAP authentication on a gateway with coap.auth.mode "required"', () => {
  it('keeps at most 16 live tokens per device, so one device secret cannot push the others\' tokens out', async () => {
    const g = await gateway('required');
    const c = await g.client();
    const tokenOf = async (f: { productKey: string; deviceName: string; secret: string; iccid?: string }, n: number) => {
      const a = await c.request(authPacket(authBody({ ...f, timestamp: Date.now() + n })));
      expect(a.packet.code).toBe('2.05');
      return (JSON.parse(text(a)) as { token: string }).token;
    };
    const other = await tokenOf({ productKey: WM1.productKey, deviceName: 'wm-0002', secret: 'demo-secret-WaterMeterNB-0002' }, 0);
    const mine: string[] = [];
    for (let i = 1; i <= TOKENS_PER_DEVICE + 2; i++) mine.push(await tokenOf(WM1, i));
    // The two oldest of wm-0001 are gone; its newest 16 and the other device's token still work.
    expect((await c.request(meterPacket('wm-0001', { token: mine[0]!, seq: 1 }))).packet.code).toBe('4.01');
    expect((await c.request(meterPacket('wm-0001', { token: mine[1]!, seq: 1 }))).packet.code).toBe('4.01');
    for (const token of mine.slice(2)) expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    expect((await c.request(meterPacket('wm-0002', { token: other, seq: 1 }))).packet.code).toBe('2.04');
    expect(g.auth()).toMatchObject({ tokens: TOKENS_PER_DEVICE + 1, evicted: 2 });
  });

  it('writes refused /auth requests and tokens to a rate-limited audit log (20 lines per 10 s, the rest counted)', async () => {
    const logger = recordingLogger();
    const g = await gateway('required', { logger });
    const c = await g.client();
    expect((await c.request(authPacket(authBody({ ...WM1, secret: 'not-the-secret' })))).packet.code).toBe('4.01');
    expect((await c.request(meterPacket('wm-0001', {}))).packet.code).toBe('4.01');
    const audited = () => logger.warnings.filter((w) => (w.obj as { audit?: string }).audit === 'coap');
    expect(audited().map((w) => w.obj)).toEqual([
      expect.objectContaining({ audit: 'coap', reason: 'badSign', code: 'WANWU_ERR_AUTH', peer: expect.stringMatching(/^127\.0\.0\.1:\d+$/) }),
      expect.objectContaining({ audit: 'coap', reason: 'unauthenticated', code: 'WANWU_ERR_TOKEN', productKey: 'WaterMeterNB', deviceName: 'wm-0001' }),
    ]);
    // A flood of bad /auth requests: 18 more lines fill the window, the rest are only counted.
    for (let i = 0; i < 30; i++) await c.request(authPacket(authBody({ ...WM1, secret: 'not-the-secret' })));
    expect(audited()).toHaveLength(20);
    expect(g.auth()).toMatchObject({ auditSuppressed: 12, refused: { badSign: 31 } });
  });

  it("takes Alibaba's full sign content: every parameter but sign and signmethod, sorted, with seq as a string (the C SDK's form)", async () => {
    const g = await gateway('required');
    const c = await g.client();
    const timestamp = String(Date.now());
    const fields = { productKey: WM1.productKey, deviceName: WM1.deviceName, clientId: 'wm-0001-sdk', timestamp, seq: '41' };
    // help.aliyun.com/document_detail/57697.html: names ascending, name+value joined with nothing between.
    const content = `clientId${fields.clientId}deviceName${fields.deviceName}productKey${fields.productKey}seq41timestamp${timestamp}`;
    const sign = createHmac('sha256', WM1.secret).update(content).digest('hex');
    const a = await c.request(authPacket({ ...fields, signmethod: 'hmacsha256', sign }));
    expect(a.packet.code).toBe('2.05');
    const { token } = JSON.parse(text(a)) as { token: string };
    // The body's seq (41, given as a string) is where the device's numbering starts.
    expect((await c.request(meterPacket('wm-0001', { token, seq: 41 }))).packet.code).toBe('4.01');
    expect((await c.request(meterPacket('wm-0001', { token, seq: 42 }))).packet.code).toBe('2.04');
    // The same body with a sign over the content without seq is accepted too (Wanwu's MQTT-form sign),
    // but a sign over anything else is not.
    const wrong = createHmac('sha256', WM1.secret).update(content.replace('seq41', 'seq40')).digest('hex');
    const refused = await c.request(authPacket({ ...fields, timestamp: String(Number(timestamp) + 1), signmethod: 'hmacsha256', sign: wrong }));
    expect(refused.packet.code).toBe('4.01');
    expect(g.committed()).toBe(1);
  });

  it('authenticates, then accepts posts with the token and increasing sequence numbers, from any source port', async () => {
    const g = await gateway('required');
    const c = await g.client();
    const req = authPacket(authBody({ ...WM1, seq: 10 }));
    const a = await c.request(req);
    expect(a.packet.code).toBe('2.05');
    expect(a.packet.options.find((o) => o.name === 'Content-Format')?.value).toEqual(uint(50));
    const answer = JSON.parse(text(a)) as { token: string; expiresIn: number; random: string };
    expect(answer).toEqual({ token: expect.stringMatching(/^[A-Za-z0-9_-]{22}$/), expiresIn: 172_800, random: expect.stringMatching(/^[0-9a-f]{16}$/) });
    expect(a.raw.length).toBeLessThanOrEqual(a.sent.length); // RFC 7252 §11.3
    const token = answer.token;

    // seq 10 was the body's starting point: the first post must be above it.
    expect((await c.request(meterPacket('wm-0001', { token, seq: 10 }))).packet.code).toBe('4.01');
    const ok = await c.request(meterPacket('wm-0001', { token, seq: 11 }));
    expect(ok.packet.code).toBe('2.04');
    expect(g.committed()).toBe(1);

    // A NAT rebinding: another source port, same token, next sequence number.
    const moved = await g.client();
    expect((await moved.request(meterPacket('wm-0001', { token, seq: 12 }))).packet.code).toBe('2.04');
    // The token as its 16 raw bytes works too, and a 4-byte sequence number.
    expect((await moved.request(meterPacket('wm-0001', { token: Buffer.from(token, 'base64url'), seq: 0x01000000 }))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(3);

    expect(g.auth()).toMatchObject({ mode: 'required', issued: 1, verified: 3, tokens: 1, refused: { replay: 1 } });
    // A retransmission (same message id and CoAP token, same socket) gets the cached 2.04 and is stored once.
    const again = meterPacket('wm-0001', { token, seq: 0x01000001 });
    const first = await moved.request(again);
    const second = await moved.request(again);
    expect([first.packet.code, second.packet.code]).toEqual(['2.04', '2.04']);
    expect(g.committed()).toBe(4);
  });

  it('refuses bad /auth requests: bad sign, stale timestamp, unknown device, reused sign, malformed, wrong ICCID, disabled; zero records', async () => {
    const g = await gateway('required');
    const c = await g.client();
    const code = async (body: Record<string, unknown> | Buffer) => {
      const a = await c.request(authPacket(body));
      expect(a.raw.length, 'no amplification').toBeLessThanOrEqual(a.sent.length);
      return { code: a.packet.code, text: text(a) };
    };

    const badSign = await code(authBody({ ...WM1, sign: 'ab'.repeat(32) }));
    expect(badSign).toEqual({ code: '4.01', text: expect.stringMatching(/^WANWU_ERR_AUTH /) });
    expect(await code(authBody({ ...WM1, secret: 'not-the-secret' }))).toMatchObject({ code: '4.01' });
    expect(await code(authBody({ ...WM1, timestamp: Date.now() - 301_000 }))).toMatchObject({ code: '4.01', text: expect.stringContaining('WANWU_ERR_AUTH') });
    expect(await code(authBody({ ...WM1, timestamp: Date.now() + 301_000 }))).toMatchObject({ code: '4.01' });
    // An unknown device gets the answer of a bad sign: nobody learns which names exist.
    const unknown = await code(authBody({ ...WM1, deviceName: 'wm-9999' }));
    expect(unknown.code).toBe('4.01');
    expect(unknown.text.replace('wm-9999', 'X')).toBe(badSign.text.replace('wm-0001', 'X'));
    expect(await code(authBody({ ...WM1, productKey: 'NoSuchProduct' }))).toMatchObject({ code: '4.01' });
    expect(await code(Buffer.from('{"productKey":"WaterMeterNB"'))).toMatchObject({ code: '4.00', text: expect.stringMatching(/^WANWU_ERR_MALFORMED/) });
    expect(await code({ ...authBody(WM1), signmethod: 'hmacsha512' })).toMatchObject({ code: '4.00' });

    // A captured /auth replayed within the window would hand its sender a fresh token.
    const body = authBody({ ...WM1, signmethod: 'hmacsha1' });
    expect((await code(body)).code).toBe('2.05');
    expect(await code(body)).toMatchObject({ code: '4.01', text: expect.stringMatching(/^WANWU_ERR_REPLAY/) });

    // Card binding: another ICCID is refused and audited; the right one (without its check digit) is accepted.
    expect(await code(authBody({ ...WM1, iccid: '89861110000000000022' }))).toMatchObject({ code: '4.03', text: expect.stringMatching(/^WANWU_ERR_CARD_MISMATCH/) });
    expect((await code(authBody({ ...WM1, iccid: WM1.iccid.slice(0, 19), clientId: 'imei-1' }))).code).toBe('2.05');
    const paths = registryPaths(g.config);
    const store = openDeviceStore({ path: paths.path, keyFile: paths.keyFile, env: {} });
    try {
      const audit = store.listAudit({ productKey: 'WaterMeterNB', deviceName: 'wm-0001' });
      expect(audit).toHaveLength(1);
      expect(audit[0]).toMatchObject({ event: 'card-mismatch', detail: '89861110000000000022', source: expect.stringMatching(/^coap 127\.0\.0\.1:\d+$/) });
    } finally {
      store.close();
    }

    // A disabled device is refused once its sign verifies.
    expect(devicesSetStatus({ config: g.config, env: {} }, 'disabled', { product: 'WaterMeterNB', device: 'wm-0002' }).exitCode).toBe(0);
    await new Promise((r) => setTimeout(r, 400)); // several registry.reloadMs
    expect(await code(authBody(WM2))).toMatchObject({ code: '4.03', text: expect.stringMatching(/^WANWU_ERR_DEVICE_DISABLED/) });

    expect(g.committed()).toBe(0);
    expect(g.auth()).toMatchObject({
      issued: 2,
      tokens: 2,
      refused: { badSign: 2, expired: 2, unknownDevice: 2, malformed: 2, replay: 1, cardMismatch: 1, disabled: 1 },
    });
  });

  it('refuses uplinks without a token, with an unknown token, a replayed or missing sequence number, or another device\'s token; zero records', async () => {
    const g = await gateway('required');
    const c = await g.client();
    const token = await authenticate(c, WM1);
    const refused = async (p: Packet, code: string, errorCode: string) => {
      const a = await c.request(p);
      expect(a.packet.code, text(a)).toBe(code);
      expect(text(a)).toMatch(new RegExp(`^${errorCode}`));
      expect(a.raw.length, 'no amplification').toBeLessThanOrEqual(a.sent.length);
    };

    await refused(meterPacket('wm-0001'), '4.01', 'WANWU_ERR_TOKEN');
    // Refused before the product is even looked at: an unknown device gets the same 4.01.
    await refused(meterPacket('wm-9999'), '4.01', 'WANWU_ERR_TOKEN');
    await refused(meterPacket('wm-0001', { token: 'AAAAAAAAAAAAAAAAAAAAAA', seq: 1 }), '4.01', 'WANWU_ERR_TOKEN');
    await refused(meterPacket('wm-0001', { token }), '4.01', 'WANWU_ERR_REPLAY'); // no 2089
    await refused(meterPacket('wm-0001', { token, seq: Buffer.from([1, 2, 3, 4, 5]) }), '4.01', 'WANWU_ERR_REPLAY'); // not a 4-byte uint
    // Another device's path with wm-0001's token.
    await refused(meterPacket('wm-0002', { token, seq: 1 }), '4.03', 'WANWU_ERR_FORBIDDEN');
    expect(g.committed()).toBe(0);

    expect((await c.request(meterPacket('wm-0001', { token, seq: 5 }))).packet.code).toBe('2.04');
    // The same datagram replayed later with a new message id (past de-duplication): same sequence number.
    await refused(meterPacket('wm-0001', { token, seq: 5 }), '4.01', 'WANWU_ERR_REPLAY');
    await refused(meterPacket('wm-0001', { token, seq: 4 }), '4.01', 'WANWU_ERR_REPLAY');
    // From another socket too: identity and sequence belong to the token, not the address.
    const other = await g.client();
    const a = await other.request(meterPacket('wm-0001', { token, seq: 5 }));
    expect(a.packet.code).toBe('4.01');
    expect(g.committed()).toBe(1);
    expect(g.auth().refused).toMatchObject({ unauthenticated: 2, unknownToken: 1, replay: 5, tokenMismatch: 1 });

    // Status and metrics show the refusals by reason.
    const http = g.gw.addresses().http.port;
    const status = await getJson(http, '/status');
    expect(status.body.listeners.coap.auth).toMatchObject({ mode: 'required', issued: 1, tokens: 1, refused: { replay: 5 } });
    const metrics = (await getJson(http, '/metrics')).text;
    expect(metrics).toContain('wanwu_coap_auth_refused_total{reason="replay"} 5');
    expect(metrics).toContain('wanwu_coap_auth_issued_total 1');
    expect(metrics).toContain('wanwu_coap_auth_tokens 1');
  });

  it('answers an /auth probe and an unauthenticated post no larger than the request (RFC 7252 §11.3)', async () => {
    const g = await gateway('required');
    const c = await g.client();
    // The smallest request with no CoAP token: 4-byte header, Uri-Path "auth", no payload.
    const bare = await c.request({ code: 'POST', confirmable: true, messageId: mid(), token: Buffer.alloc(0), options: [{ name: 'Uri-Path', value: Buffer.from('auth') }], payload: Buffer.alloc(0) });
    expect(bare.packet.code).toBe('4.00');
    expect(bare.raw.length).toBeLessThanOrEqual(bare.sent.length);
    // The shortest valid /auth (hmacmd5, a one-letter client id, no CoAP token) still holds its 2.05 answer.
    const shortest = await c.request(authPacket(authBody({ ...WM1, clientId: 'x', signmethod: 'hmacmd5' }), Buffer.alloc(0)));
    expect(shortest.packet.code).toBe('2.05');
    expect(JSON.parse(text(shortest)).token).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(shortest.raw.length).toBeLessThanOrEqual(shortest.sent.length);
    // An uplink with a one-byte body and no CoAP token gets a 4.01 cut to its size.
    const tiny = await c.request({ code: 'POST', confirmable: false, messageId: mid(), token: Buffer.alloc(0), options: meterPacket('wm-0001').options, payload: Buffer.from([1]) });
    expect(tiny.packet.code).toBe('4.01');
    expect(tiny.raw.length).toBeLessThanOrEqual(tiny.sent.length);
    expect(g.committed()).toBe(0);
  });

  it('lets a product that opts out ("auth": "none") post without a token, and warns at start', async () => {
    const devicesDir = devicesWithOptOut();
    const logger = recordingLogger();
    const g = await gateway('required', { devicesDir, logger });

    const optOut = logger.warnings.filter((w) => w.msg?.includes('opts out of CoAP authentication'));
    expect(optOut.map((w) => w.obj)).toEqual([{ productKey: 'WaterMeterNB', auth: 'none' }]);
    expect(logger.warnings.some((w) => w.msg?.includes('"optional"'))).toBe(false);

    const c = await g.client();
    expect((await c.request(meterPacket('wm-0001'))).packet.code).toBe('2.04');
    // A token it does carry is still checked, never ignored.
    expect((await c.request(meterPacket('wm-0001', { token: 'AAAAAAAAAAAAAAAAAAAAAA', seq: 1 }))).packet.code).toBe('4.01');
    // Other products still need a token.
    const tracker = meterPacket('tr-0001', {}, TR1.productKey);
    expect((await c.request(tracker)).packet.code).toBe('4.01');
    expect(g.committed()).toBe(1);
  });
});

describe('CoAP authentication with the default configuration (no coap.auth given)', () => {
  it('is required: a tokenless uplink gets 4.01 and commits nothing, an authenticated one is stored, and nothing is warned', async () => {
    const logger = recordingLogger();
    const g = await gateway(undefined, { logger });
    expect(g.config.coap.auth.mode).toBe('required');
    expect(g.auth().mode).toBe('required');
    expect(logger.warnings.filter((w) => /CoAP|coap\.auth/.test(w.msg ?? ''))).toEqual([]);

    const c = await g.client();
    for (const dn of ['wm-0001', 'wm-0002']) {
      const a = await c.request(meterPacket(dn));
      expect(a.packet.code).toBe('4.01');
      expect(text(a)).toMatch(/^WANWU_ERR_TOKEN /);
    }
    // NON too: refused before the pipeline, whatever the message type.
    const non = await c.request({ ...meterPacket('wm-0001'), confirmable: false });
    expect(non.packet.code).toBe('4.01');
    expect(g.committed()).toBe(0);
    expect(g.gw.status().ingest.accepted.total).toBe(0);
    // Not dead-lettered either: anyone could fill the table.
    expect(g.gw.status().buffer.deadLetters).toBe(0);
    expect(g.auth().refused.unauthenticated).toBe(3);

    const token = await authenticate(c, WM1);
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(1);
  });

  it('still lets a product with "auth": "none" post without a token, warns about it at start, and guards every other product', async () => {
    const devicesDir = devicesWithOptOut();
    const logger = recordingLogger();
    const g = await gateway(undefined, { devicesDir, logger });

    // One warning, naming the product; none about the mode, which is the default "required".
    expect(logger.warnings.filter((w) => w.msg?.includes('opts out of CoAP authentication')).map((w) => w.obj)).toEqual([{ productKey: 'WaterMeterNB', auth: 'none' }]);
    expect(logger.warnings.some((w) => w.msg?.includes('coap.auth.mode'))).toBe(false);

    const c = await g.client();
    expect((await c.request(meterPacket('wm-0001'))).packet.code).toBe('2.04');
    expect((await c.request(meterPacket('wm-0002'))).packet.code).toBe('2.04');
    expect(g.committed()).toBe(2);
    // Every other product keeps its guard.
    const tracker = await c.request(meterPacket('tr-0001', {}, TR1.productKey));
    expect(tracker.packet.code).toBe('4.01');
    expect(g.committed()).toBe(2);
    expect(g.auth()).toMatchObject({ mode: 'required', refused: { unauthenticated: 1 } });
  });
});

describe('CoAP authentication with coap.auth.mode "optional" (set explicitly)', () => {
  it('accepts posts without a token, verifies those with one, and warns at start', async () => {
    const logger = recordingLogger();
    const g = await gateway('optional', { logger });
    expect(g.auth().mode).toBe('optional');
    expect(logger.warnings.some((w) => w.msg?.includes('coap.auth.mode is "optional"'))).toBe(true);
    const c = await g.client();
    expect((await c.request(meterPacket('wm-0001'))).packet.code).toBe('2.04');
    // A bad token is refused, never downgraded to an unauthenticated post.
    expect((await c.request(meterPacket('wm-0001', { token: 'AAAAAAAAAAAAAAAAAAAAAA', seq: 1 }))).packet.code).toBe('4.01');
    const token = await authenticate(c, WM1);
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('4.01');
    expect((await c.request(meterPacket('wm-0002', { token, seq: 2 }))).packet.code).toBe('4.03');
    expect(g.committed()).toBe(2);
  });
});

describe('CoAP authentication on the listener alone, with an injected clock', () => {
  const T0 = 1_750_000_000_000;

  async function listener(overrides: { tokenTtlS?: number; maxTokens?: number; registry?: Registry; limits?: CoapLimits } = {}) {
    let clock = T0;
    const calls: RawMessage[] = [];
    const ingest = async (raw: RawMessage): Promise<IngestOutcome> => {
      calls.push(raw);
      return { committed: 1, deadLettered: false };
    };
    const l: CoapListener = createCoapListener({
      host: '127.0.0.1',
      port: 0,
      maxPayloadBytes: 1024,
      ingest,
      logger: silentLogger,
      now: () => clock,
      ...(overrides.limits === undefined ? {} : { limits: overrides.limits }),
      auth: { mode: 'required', tokenTtlS: overrides.tokenTtlS ?? 3600, timestampWindowS: 300, maxTokens: overrides.maxTokens ?? 1000, registry: overrides.registry ?? loadRegistry(DEVICES_DIR) },
    });
    await l.start();
    cleanups.push(() => l.stop());
    return {
      l,
      calls,
      client: () => Client.open(l.address().port),
      advance: (ms: number) => {
        clock += ms;
      },
      now: () => clock,
    };
  }

  it('refuses a token past its lifetime (4.01) and accepts a new one', async () => {
    const t = await listener({ tokenTtlS: 60 });
    const c = await t.client();
    const token = await authenticate(c, { ...WM1, timestamp: t.now() });
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    t.advance(59_000);
    expect((await c.request(meterPacket('wm-0001', { token, seq: 2 }))).packet.code).toBe('2.04');
    t.advance(1_000);
    const expired = await c.request(meterPacket('wm-0001', { token, seq: 3 }));
    expect(expired.packet.code).toBe('4.01');
    expect(text(expired)).toMatch(/^WANWU_ERR_TOKEN token expired/);
    // Each /auth sign is taken once: authenticating again needs a new timestamp.
    const fresh = await authenticate(c, { ...WM1, timestamp: t.now() });
    expect((await c.request(meterPacket('wm-0001', { token: fresh, seq: 1 }))).packet.code).toBe('2.04');
    expect(t.calls).toHaveLength(3);
    expect(t.l.stats().auth).toMatchObject({ issued: 2, tokens: 1, refused: { tokenExpired: 1 } });
  });

  it('judges the /auth timestamp against the gateway clock', async () => {
    const t = await listener();
    const c = await t.client();
    const signedAt = t.now();
    t.advance(300_001);
    const a = await c.request(authPacket(authBody({ ...WM1, timestamp: signedAt })));
    expect(a.packet.code).toBe('4.01');
    expect(text(a)).toContain('300 s');
    expect((await c.request(authPacket(authBody({ ...WM1, timestamp: signedAt + 1 })))).packet.code).toBe('2.05');
    expect(t.l.stats().auth!.refused.expired).toBe(1);
  });

  it('keeps at most maxTokens tokens: the oldest goes first', async () => {
    // 3 in all, fewer than the 16 one device may hold: the table's own limit decides.
    const t = await listener({ maxTokens: 3 });
    const c = await t.client();
    const tokens: string[] = [];
    for (let i = 0; i < 4; i++) tokens.push(await authenticate(c, { ...WM1, clientId: `c${i}`, timestamp: t.now() }));
    expect(t.l.stats().auth).toMatchObject({ tokens: 3, evicted: 1 });
    expect((await c.request(meterPacket('wm-0001', { token: tokens[0]!, seq: 1 }))).packet.code).toBe('4.01');
    expect((await c.request(meterPacket('wm-0001', { token: tokens[1]!, seq: 1 }))).packet.code).toBe('2.04');
  });

  it('revokes a token when the device secret is rotated', async () => {
    const base = loadRegistry(DEVICES_DIR);
    let rotated: Device | undefined;
    const registry: Registry = { ...base, product: base.product, device: (pk, dn) => (rotated && pk === WM1.productKey && dn === WM1.deviceName ? rotated : base.device(pk, dn)) };
    const t = await listener({ registry });
    const c = await t.client();
    const token = await authenticate(c, { ...WM1, timestamp: t.now() });
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    rotated = { ...base.device(WM1.productKey, WM1.deviceName)!, deviceSecret: 'rotated-secret' };
    const a = await c.request(meterPacket('wm-0001', { token, seq: 2 }));
    expect(a.packet.code).toBe('4.01');
    expect(text(a)).toContain('revoked');
    expect(t.calls).toHaveLength(1);
  });

  it('lets the later blocks of a Block1 upload repeat the first block\'s sequence number, and no earlier one', async () => {
    const t = await listener();
    const c = await t.client();
    const token = await authenticate(c, { ...WM1, timestamp: t.now() });
    // RFC 7959 §2.2 Block1 value: NUM << 4 | M << 3 | SZX; SZX 0 = 16-byte blocks.
    const blockPacket = (num: number, more: boolean, seq: number) => {
      const p = meterPacket('wm-0001', { token, seq });
      p.options!.push({ name: 'Block1', value: Buffer.from([(num << 4) | (more ? 8 : 0)]) });
      p.payload = Buffer.alloc(16, num + 1);
      return p;
    };
    expect((await c.request(blockPacket(0, true, 7))).packet.code).toBe('2.31');
    expect((await c.request(blockPacket(1, false, 7))).packet.code).toBe('2.04');
    expect(t.calls.map((r) => r.payload.length)).toEqual([32]);
    // A new transfer needs a new number; a later block may not go back below the last one.
    expect((await c.request(blockPacket(0, true, 7))).packet.code).toBe('4.01');
    expect((await c.request(blockPacket(0, true, 8))).packet.code).toBe('2.31');
    expect((await c.request(blockPacket(1, false, 6))).packet.code).toBe('4.01');
    expect(t.calls).toHaveLength(1);
  });

  it('does not consume the sequence number of a request refused at the device rate limit (4.29)', async () => {
    const t = await listener({ limits: { ...COAP_LIMITS_DEFAULTS, perDevice: { perSecond: 1, burst: 1 }, exemptLoopback: false } });
    const c = await t.client();
    const token = await authenticate(c, { ...WM1, timestamp: t.now() });
    expect((await c.request(meterPacket('wm-0001', { token, seq: 1 }))).packet.code).toBe('2.04');
    const retry = meterPacket('wm-0001', { token, seq: 2 });
    expect((await c.request(retry)).packet.code).toBe('4.29');
    expect((await c.request(retry)).packet.code).toBe('4.29'); // a retransmission: the same refusal, not a replay
    t.advance(1_000);
    expect((await c.request(retry)).packet.code).toBe('2.04');
    expect((await c.request(meterPacket('wm-0001', { token, seq: 2 }))).packet.code).toBe('4.01');
    expect(t.calls).toHaveLength(2);
  });

  it('serves no /auth when the listener has no coap.auth', async () => {
    const l = createCoapListener({ host: '127.0.0.1', port: 0, maxPayloadBytes: 1024, ingest: async () => ({ committed: 1, deadLettered: false }), logger: silentLogger });
    await l.start();
    cleanups.push(() => l.stop());
    const c = await Client.open(l.address().port);
    expect((await c.request(authPacket(authBody(WM1)))).packet.code).toBe('4.04');
    expect(l.stats().auth).toBeNull();
  });
});
