// Interop: libcoap's coap-client-notls as an NB-IoT module doing Alibaba-style CoAP authentication
// against an in-process gateway with the default configuration (coap.auth.mode "required"): POST
// /auth for a token, then uplinks carrying it in option 2088 and a sequence number in option 2089
// (`-O num,value`; a 0x value is sent as bytes). The /auth body comes from `wanwu sign --coap`, and
// the first test runs README's Quick start commands, only with the test gateway's port.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { DEMO, DEVICES_DIR, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';
import { hexUint, run, skipInterop, tool } from './helpers.js';

const WANWU = join(import.meta.dirname, '..', '..', 'bin', 'wanwu.js');

describe.skipIf(skipInterop)('coap-client-notls: /auth, then uplinks with token and sequence number', () => {
  const dir = tempDir('wanwu-interop-coap-auth-');
  let gw: Gateway;
  const frame = join(dir.path, 'frame.bin');

  beforeAll(async () => {
    writeFileSync(frame, Buffer.from('010000303904d20e10000929ffa6', 'hex'));
    // No coap.auth in the configuration: the default must require authentication.
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  const url = (path: string) => `coap://127.0.0.1:${gw.addresses().coap.port}${path}`;
  const records = async () => (await getJson(gw.addresses().http.port, '/status')).body.ingest.records.coap as number;
  const { productKey, deviceName } = DEMO.meter;
  const uplink = (args: string[]) => run(tool('coap-client-notls'), ['-m', 'post', ...args, '-f', frame, '-B', '10', url(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`)]);

  it("README's Quick start: wanwu sign --coap | coap-client POST /auth, then the uplink with the token's bytes", async () => {
    const before = await records();
    // The README's pipe, run by a shell; the token comes out as 0x + its 16 bytes in hex.
    const pipe = await run('sh', [
      '-c',
      `node ${WANWU} sign --product ${productKey} --device ${deviceName} --devices ${DEVICES_DIR} --coap ` +
        `| ${tool('coap-client-notls')} -m post -t application/json -f - ${url('/auth')} ` +
        `| node -pe '"0x" + Buffer.from(JSON.parse(require("fs").readFileSync(0)).token, "base64url").toString("hex")'`,
    ]);
    expect(pipe.code, pipe.stderr).toBe(0);
    const token = pipe.stdout.trim();
    expect(token).toMatch(/^0x[0-9a-f]{32}$/);
    const first = await uplink(['-O', `2088,${token}`, '-O', '2089,0x01']);
    expect(`${first.stdout}${first.stderr}`).not.toMatch(/[45]\.\d\d/);
    const second = await uplink(['-O', `2088,${token}`, '-O', '2089,0x02']);
    expect(`${second.stdout}${second.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(before + 2);
  });

  it('gets a token from /auth (body from a file) and posts with it; a replayed sequence number and a missing token get 4.01', async () => {
    const before = await records();
    const signed = await run(process.execPath, [WANWU, 'sign', '--product', productKey, '--device', deviceName, '--devices', DEVICES_DIR, '--coap']);
    expect(signed.code).toBe(0);
    const authFile = join(dir.path, 'auth.json');
    writeFileSync(authFile, signed.stdout);
    const auth = await run(tool('coap-client-notls'), ['-m', 'post', '-t', 'application/json', '-f', authFile, '-B', '10', url('/auth')]);
    expect(auth.code).toBe(0);
    const { token, expiresIn } = JSON.parse(auth.stdout.trim()) as { token: string; expiresIn: number };
    expect(token).toMatch(/^[A-Za-z0-9_-]{22}$/);
    expect(expiresIn).toBe(172_800);
    // The token as its 22 characters, as the answer gives it (libcoap would take one starting 0x as hex).
    const asText = token.startsWith('0x') ? `0x${Buffer.from(token, 'base64url').toString('hex')}` : token;
    const post = (seq: number, withToken = true) => uplink([...(withToken ? ['-O', `2088,${asText}`] : []), '-O', `2089,${hexUint(seq)}`]);
    const first = await post(1);
    expect(`${first.stdout}${first.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(before + 1);
    const second = await post(0x102); // a 2-byte sequence number
    expect(`${second.stdout}${second.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(await records()).toBe(before + 2);

    const replay = await post(0x102);
    expect(`${replay.stdout}${replay.stderr}`).toMatch(/4\.01/);
    const anonymous = await post(0x103, false);
    expect(`${anonymous.stdout}${anonymous.stderr}`).toMatch(/4\.01/);
    // The same signed body again: each sign is taken once.
    const again = await run(tool('coap-client-notls'), ['-m', 'post', '-t', 'application/json', '-f', authFile, '-B', '10', url('/auth')]);
    expect(`${again.stdout}${again.stderr}`).toMatch(/4\.01/);
    expect(await records()).toBe(before + 2);
  });
});
