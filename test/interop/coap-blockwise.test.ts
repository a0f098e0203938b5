// Interop: libcoap's coap-client-notls uploading block-wise (RFC 7959 Block1, `-b`) to an in-process
// gateway. libcoap changes the token on every block and sends Size1 and Request-Tag (RFC 9175), so
// this checks the reassembly against a real peer, including the early 4.13 from Size1.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { DEMO, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';
import { coapClientAuth, run, skipInterop, tool } from './helpers.js';

describe.skipIf(skipInterop)('coap-client-notls -b: Block1 uploads', () => {
  const dir = tempDir('wanwu-interop-block1-');
  let gw: Gateway;

  beforeAll(async () => {
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  const url = (path: string) => `coap://127.0.0.1:${gw.addresses().coap.port}${path}`;
  const coapStatus = async () => (await getJson(gw.addresses().http.port, '/status')).body;

  it('posts a 143-byte property post in 64-byte blocks: 2.31 twice, then 2.04 with the Alink reply, one record', async () => {
    const { productKey, deviceName } = DEMO.tracker;
    const body = JSON.stringify({ id: '3001', version: '1.0', method: 'thing.event.property.post', params: { longitude: 121.4737, latitude: 31.2304, speed: 42.5, workMode: 0 } });
    expect(body.length).toBe(143);
    const file = join(dir.path, 'post.json');
    writeFileSync(file, body);
    // Authenticated (the default coap.auth.mode "required"): libcoap repeats the options on every
    // block, which the gateway allows for the blocks after the first.
    const tracker = await coapClientAuth(url(''), { productKey, deviceName, secret: await deviceSecret(productKey, deviceName) });
    const res = await run(tool('coap-client-notls'), [
      '-m', 'post', '-b', '64', '-t', 'application/json', '-f', file, '-B', '10', ...tracker.args(),
      url(`/topic/sys/${productKey}/${deviceName}/thing/event/property/post`),
    ]);
    expect(res.code).toBe(0);
    expect(`${res.stdout}${res.stderr}`).not.toMatch(/[45]\.\d\d/);
    expect(JSON.parse(res.stdout.trim())).toEqual({ id: '3001', code: 200, data: {}, message: 'success' });
    const s = await coapStatus();
    expect(s.ingest.accepted.coap).toBe(1);
    expect(s.listeners.coap.responses).toMatchObject({ '2.31': 2, '2.04': 1 });
    expect(s.listeners.coap.reassemblies).toBe(0);
    // Each of the three blocks carried the token and was verified.
    expect(s.listeners.coap.auth).toMatchObject({ issued: 1, verified: 3, refused: { replay: 0, unauthenticated: 0 } });
  });

  it('gets 4.13 with the limit for a body over coap.maxPayloadBytes, at the first block (Size1)', async () => {
    const { productKey, deviceName } = DEMO.meter;
    const file = join(dir.path, 'big.bin');
    writeFileSync(file, Buffer.alloc(1100, 0x55));
    const before = await coapStatus();
    const res = await run(tool('coap-client-notls'), [
      '-m', 'post', '-b', '64', '-f', file, '-B', '10',
      url(`/topic/sys/${productKey}/${deviceName}/thing/model/up_raw`),
    ]);
    const out = `${res.stdout}${res.stderr}`;
    expect(out).toMatch(/4\.13/);
    expect(out).toContain('WANWU_ERR_TOO_LARGE');
    const after = await coapStatus();
    expect(after.listeners.coap.refused.tooLarge).toBe(before.listeners.coap.refused.tooLarge + 1);
    // Refused at block 0: nothing was continued or stored.
    expect(after.listeners.coap.responses['2.31']).toBe(before.listeners.coap.responses['2.31']);
    expect(after.ingest.accepted.coap).toBe(before.ingest.accepted.coap);
  });
});
