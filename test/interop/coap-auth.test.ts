// Interop: libcoap's coap-client-notls as an NB-IoT module doing Alibaba-style CoAP authentication
// against an in-process gateway with coap.auth.mode "required": POST /auth for a token, then uplinks
// carrying it in option 2088 and a sequence number in option 2089 (`-O num,value`; a 0x value is sent
// as bytes).

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { DEMO, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';
import { run, skipInterop, tool } from './helpers.js';

describe.skipIf(skipInterop)('coap-client-notls: /auth, then uplinks with token and sequence number', () => {
  const dir = tempDir('wanwu-interop-coap-auth-');
  let gw: Gateway;
  const frame = join(dir.path, 'frame.bin');

  beforeAll(async () => {
    writeFileSync(frame, Buffer.from('010000303904d20e10000929ffa6', 'hex'));
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], { coap: { host: '127.0.0.1', port: 0, auth: { mode: 'required' } } });
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  const url = (path: string) => `coap://127.0.0.1:${gw.addresses().coap.port}${path}`;
  const records = async () => (await getJson(gw.addresses().http.port, '/status')).body.ingest.records.coap as number;

  it('gets a token from /auth and posts with it; a replayed sequence number and a missing token get 4.01', async () => {
    const { productKey, deviceName } = DEMO.meter;
    const timestamp = Date.now();
    const login = signMqttLogin({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName), timestamp });
    const authFile = join(dir.path, 'auth.json');
    writeFileSync(authFile, JSON.stringify({ productKey, deviceName, clientId: deviceName, timestamp: String(timestamp), signmethod: 'hmacsha256', sign: login.password }));
    const auth = await run(tool('coap-client-notls'), ['-m', 'post', '-t', 'application/json', '-f', authFile, url('/auth')]);
    expect(auth.code).toBe(0);
    const { token, expiresIn } = JSON.parse(auth.stdout.trim()) as { token: string; expiresIn: number };
    expect(token).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(expiresIn).toBeGreaterThan(0);

    const path = url(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`);
    const post = (seq: string, withToken = true) =>
      run(tool('coap-client-notls'), ['-m', 'post', ...(withToken ? ['-O', `2088,${token}`] : []), '-O', `2089,${seq}`, '-f', frame, path]);
    const first = await post('0x01');
    expect(`${first.stdout}${first.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(1);
    const second = await post('0x02');
    expect(`${second.stdout}${second.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(2);

    const replay = await post('0x02');
    expect(`${replay.stdout}${replay.stderr}`).toMatch(/4\.01/);
    const anonymous = await post('0x03', false);
    expect(`${anonymous.stdout}${anonymous.stderr}`).toMatch(/4\.01/);
    expect(await records()).toBe(2);
  });
});
