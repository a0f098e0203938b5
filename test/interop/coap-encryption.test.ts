// Interop: libcoap's coap-client-notls as an NB-IoT module of a product with "coapEncryption":
// "aes-128-cbc" (Alibaba IoT's CoAP symmetric mode, src/transport/coap/encryption.ts): POST /auth,
// then uplinks whose payload file (-f) and option 2089 (-O 2089,0x<hex>) were encrypted beforehand
// with the key from the answer's random, and an answer (-o file) that decrypts to the Alink reply.
// The README's "CoAP payload encryption" commands do the same with openssl.

import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { alibabaKey, seal, sealSeq, unseal } from '../helpers/alibaba-coap.js';
import { DEMO, DEVICES_DIR, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';
import { run, skipInterop, tool } from './helpers.js';

describe.skipIf(skipInterop)('coap-client-notls: encrypted uplinks ("coapEncryption": "aes-128-cbc")', () => {
  const dir = tempDir('wanwu-interop-coap-encryption-');
  let gw: Gateway;
  // Water meter report, 14 bytes (devices/WaterMeterNB/product.json; annotated in test/security/coap-encryption.test.ts).
  const frame = Buffer.from('010012d68701f40e10000866ffa1', 'hex');

  beforeAll(async () => {
    const devicesDir = join(dir.path, 'devices');
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    const productFile = join(devicesDir, 'WaterMeterNB', 'product.json');
    writeFileSync(productFile, JSON.stringify({ ...JSON.parse(readFileSync(productFile, 'utf8')), coapEncryption: 'aes-128-cbc' }));
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], { coap: { host: '127.0.0.1', port: 0, auth: { mode: 'required' } }, devicesDir });
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  const url = (path: string) => `coap://127.0.0.1:${gw.addresses().coap.port}${path}`;
  const records = async () => (await getJson(gw.addresses().http.port, '/status')).body.ingest.records.coap as number;
  const file = (name: string, content: Buffer) => {
    const f = join(dir.path, name);
    writeFileSync(f, content);
    return f;
  };

  it('authenticates, posts a pre-encrypted payload file and sequence number, and decrypts the answer', async () => {
    const { productKey, deviceName } = DEMO.meter;
    const secret = await deviceSecret(productKey, deviceName);
    const timestamp = Date.now();
    const login = signMqttLogin({ productKey, deviceName, deviceSecret: secret, timestamp });
    const authFile = file('auth.json', Buffer.from(JSON.stringify({ productKey, deviceName, clientId: deviceName, timestamp: String(timestamp), signmethod: 'hmacsha256', sign: login.password, seq: 10 })));
    const auth = await run(tool('coap-client-notls'), ['-m', 'post', '-t', 'application/json', '-f', authFile, url('/auth')]);
    expect(auth.code).toBe(0);
    const answer = JSON.parse(auth.stdout.trim()) as { token: string; random: string; seqOffset: number };
    expect(answer.seqOffset).toBe(11);
    const key = alibabaKey(secret, answer.random);
    const opts = (seq: number) => ['-O', `2088,${answer.token}`, '-O', `2089,0x${sealSeq(key, seq).toString('hex')}`];

    const upRaw = url(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`);
    const first = await run(tool('coap-client-notls'), ['-m', 'post', ...opts(11), '-f', file('frame.enc', seal(key, frame)), upRaw]);
    expect(`${first.stdout}${first.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(1);

    // An Alink JSON post: the answer, written with -o, is the encrypted Alink reply.
    const replyFile = join(dir.path, 'reply.enc');
    const post = seal(key, Buffer.from(JSON.stringify({ id: '77', params: { valveState: 1 } })));
    const json = await run(tool('coap-client-notls'), ['-m', 'post', ...opts(12), '-f', file('post.enc', post), '-o', replyFile, url(`/topic/sys/${productKey}/${deviceName}/thing/event/property/post`)]);
    expect(`${json.stdout}${json.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(JSON.parse(unseal(key, readFileSync(replyFile)).toString())).toEqual({ id: '77', code: 200, data: {}, message: 'success' });
    expect(await records()).toBe(2);

    // The plaintext frame, and a replayed sequence number, are refused with 4.01.
    const plain = await run(tool('coap-client-notls'), ['-m', 'post', ...opts(13), '-f', file('frame.bin', frame), upRaw]);
    expect(`${plain.stdout}${plain.stderr}`).toMatch(/4\.01/);
    const replay = await run(tool('coap-client-notls'), ['-m', 'post', ...opts(12), '-f', file('frame.enc', seal(key, frame)), upRaw]);
    expect(`${replay.stdout}${replay.stderr}`).toMatch(/4\.01/);
    expect(await records()).toBe(2);
  });
});
