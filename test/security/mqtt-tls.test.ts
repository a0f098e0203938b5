// MQTT over TLS (mqtt.tls): a second listener on the same broker, with the same login, limits and
// ack-after-commit as plain TCP. Certificates are made for the test by openssl (test/helpers).

import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { makeCertificates, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';
import { DEMO, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';

describe('MQTT over TLS', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function gatewayWithTls(): Promise<{ gw: Gateway; ca: Buffer; upstream: TestUpstream }> {
    const dir = tempDir('wanwu-tls-');
    cleanups.push(() => dir.cleanup());
    const certs = makeCertificates(dir.path);
    const upstream = new TestUpstream();
    await upstream.start();
    cleanups.push(() => upstream.stop());
    const gw = await startGateway(dir.path, [{ name: 'up', url: upstream.url }], {
      mqtt: { host: '127.0.0.1', port: 0, tls: { host: '127.0.0.1', port: 0, cert: join(dir.path, 'server.pem'), key: join(dir.path, 'server.key') } },
    });
    cleanups.push(() => gw.stop());
    return { gw, ca: certs.ca, upstream };
  }

  it('accepts a signed device over TLS, commits before the PUBACK and forwards the record; plain TCP still works', async () => {
    const { gw, ca, upstream } = await gatewayWithTls();
    const tls = gw.addresses().mqtts!;
    expect(tls.port).toBeGreaterThan(0);
    const { productKey, deviceName } = DEMO.tracker;
    const login = signMqttLogin({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName) });
    const client = mqtt.connect(`mqtts://localhost:${tls.port}`, { ...login, ca, reconnectPeriod: 0, protocolVersion: 4 });
    cleanups.push(() => void client.end(true));
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    const payload = JSON.stringify({ id: '1', version: '1.0', method: 'thing.event.property.post', params: { batteryLevel: 77 } });
    await client.publishAsync(`/sys/${productKey}/${deviceName}/thing/event/property/post`, payload, { qos: 1 });
    await waitUntil(() => upstream.messages.length === 1, 5000, 'the record upstream');
    expect(upstream.messages[0]!.json).toMatchObject({ productKey, deviceName, data: { batteryLevel: 77 } });
    const status = (await getJson(gw.addresses().http.port, '/status')).body;
    expect(status.listeners.mqtt.tls).toEqual(tls);
    expect(status.ingest.records.mqtt).toBe(1);
  });

  it('refuses a bad sign over TLS as over TCP, and a client that does not trust the certificate never logs in', async () => {
    const { gw, ca } = await gatewayWithTls();
    const port = gw.addresses().mqtts!.port;
    const { productKey, deviceName } = DEMO.tracker;
    const bad = signMqttLogin({ productKey, deviceName, deviceSecret: 'not-the-secret' });
    const refused = mqtt.connect(`mqtts://localhost:${port}`, { ...bad, ca, reconnectPeriod: 0, protocolVersion: 4 });
    cleanups.push(() => void refused.end(true));
    const err = await new Promise<Error>((resolve) => refused.once('error', resolve));
    expect(err.message).toMatch(/Bad username or password/i);

    const good = signMqttLogin({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName) });
    const untrusting = mqtt.connect(`mqtts://localhost:${port}`, { ...good, reconnectPeriod: 0, protocolVersion: 4 });
    cleanups.push(() => void untrusting.end(true));
    const tlsErr = await new Promise<Error>((resolve) => untrusting.once('error', resolve));
    expect(tlsErr.message).toMatch(/self[- ]signed|unable to verify|certificate/i);
    expect((await getJson(gw.addresses().http.port, '/status')).body.ingest.records.mqtt).toBe(0);
  });

  it('refuses to start with a certificate file that cannot be read, naming the key', async () => {
    const dir = tempDir('wanwu-tls-');
    cleanups.push(() => dir.cleanup());
    await expect(
      startGateway(dir.path, [{ name: 'local', url: 'local' }], {
        mqtt: { host: '127.0.0.1', port: 0, tls: { host: '127.0.0.1', port: 0, cert: join(dir.path, 'missing.pem'), key: join(dir.path, 'missing.key') } },
      }),
    ).rejects.toMatchObject({ code: 'WANWU_ERR_CONFIG', message: expect.stringContaining('mqtt.tls.cert') });
  });
});
