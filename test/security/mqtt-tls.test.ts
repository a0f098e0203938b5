// MQTT over TLS (mqtt.tls): a second listener on the same broker, with the same login, limits and
// ack-after-commit as plain TCP. Certificates are made for the test by openssl (test/helpers).

import { createHmac } from 'node:crypto';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import mqtt from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { makeCertificates, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';
import { DEMO, DEVICES_DIR, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';

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

  describe('dynamic registration (one secret per product, with pre-registration)', () => {
    const PRODUCT_SECRET = 'demo-product-secret-TrackerCat1';

    async function registrationGateway() {
      const dir = tempDir('wanwu-register-');
      cleanups.push(() => dir.cleanup());
      const devicesDir = join(dir.path, 'devices');
      cpSync(DEVICES_DIR, devicesDir, { recursive: true });
      const productFile = join(devicesDir, 'TrackerCat1', 'product.json');
      writeFileSync(productFile, JSON.stringify({ ...JSON.parse(readFileSync(productFile, 'utf8')), dynamicRegistration: { productSecret: PRODUCT_SECRET } }));
      const certs = makeCertificates(dir.path);
      const gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], {
        devicesDir,
        mqtt: { host: '127.0.0.1', port: 0, tls: { host: '127.0.0.1', port: 0, cert: join(dir.path, 'server.pem'), key: join(dir.path, 'server.key') } },
      });
      cleanups.push(() => gw.stop());
      return { gw, ca: certs.ca };
    }

    function registrationLogin(deviceName: string, secret = PRODUCT_SECRET) {
      const random = 'a1b2c3';
      const password = createHmac('sha256', secret).update(`deviceName${deviceName}productKeyTrackerCat1random${random}`).digest('hex');
      return { clientId: `${deviceName}|securemode=2,authType=register,random=${random},signmethod=hmacsha256|`, username: `${deviceName}&TrackerCat1`, password };
    }

    /** Connects with a registration login; resolves with the /ext/register payload or the connection error. */
    function register(url: string, ca: Buffer, deviceName: string, secret?: string): Promise<{ secret?: string; error?: string }> {
      const client = mqtt.connect(url, { ...registrationLogin(deviceName, secret), ca, reconnectPeriod: 0, protocolVersion: 4 });
      cleanups.push(() => void client.end(true));
      return new Promise((resolve) => {
        client.on('message', (topic, payload) => {
          if (topic === '/ext/register') resolve({ secret: (JSON.parse(payload.toString()) as { deviceSecret: string }).deviceSecret });
        });
        client.once('error', (err) => resolve({ error: err.message }));
      });
    }

    it('gives a pre-registered device its secret once over TLS; it then logs in with it, and cannot register again once active', async () => {
      const { gw, ca } = await registrationGateway();
      const tls = `mqtts://localhost:${gw.addresses().mqtts!.port}`;
      const got = await register(tls, ca, 'tr-0003');
      expect(got.secret).toMatch(/^[0-9a-f]{32}$/);

      const { productKey } = DEMO.tracker;
      const login = signMqttLogin({ productKey, deviceName: 'tr-0003', deviceSecret: got.secret! });
      const device = mqtt.connect(tls, { ...login, ca, reconnectPeriod: 0, protocolVersion: 4 });
      cleanups.push(() => void device.end(true));
      await new Promise<void>((resolve, reject) => {
        device.once('connect', () => resolve());
        device.once('error', reject);
      });
      await device.publishAsync('/sys/TrackerCat1/tr-0003/thing/event/property/post', JSON.stringify({ id: '1', params: { batteryLevel: 60 } }), { qos: 1 });
      // The demo secret from devices.json no longer opens the device.
      const old = signMqttLogin({ productKey, deviceName: 'tr-0003', deviceSecret: await deviceSecret(productKey, 'tr-0003') });
      const stale = mqtt.connect(tls, { ...old, ca, reconnectPeriod: 0, protocolVersion: 4 });
      cleanups.push(() => void stale.end(true));
      expect((await new Promise<Error>((resolve) => stale.once('error', resolve))).message).toMatch(/Bad username or password/i);
      // Active now (it has sent an uplink): a second registration is refused.
      expect((await register(tls, ca, 'tr-0003')).error).toMatch(/Not authorized/i);
      expect((await getJson(gw.addresses().http.port, '/status')).body.ingest.records.mqtt).toBe(1);
    });

    it('refuses a bad product-secret sign, an unknown device, plain TCP, and products without dynamic registration', async () => {
      const { gw, ca } = await registrationGateway();
      const tls = `mqtts://localhost:${gw.addresses().mqtts!.port}`;
      expect((await register(tls, ca, 'tr-0002', 'not-the-product-secret')).error).toMatch(/Bad username or password/i);
      expect((await register(tls, ca, 'tr-9999')).error).toMatch(/Not authorized/i);
      expect((await register(`mqtt://127.0.0.1:${gw.addresses().mqtt.port}`, ca, 'tr-0002')).error).toMatch(/Not authorized/i);
      // SensorRedCap has no dynamicRegistration in product.json.
      const random = 'ff';
      const password = createHmac('sha256', PRODUCT_SECRET).update(`deviceNamers-0001productKeySensorRedCaprandom${random}`).digest('hex');
      const other = mqtt.connect(tls, { clientId: `rs-0001|securemode=2,authType=register,random=${random},signmethod=hmacsha256|`, username: 'rs-0001&SensorRedCap', password, ca, reconnectPeriod: 0, protocolVersion: 4 });
      cleanups.push(() => void other.end(true));
      expect((await new Promise<Error>((resolve) => other.once('error', resolve))).message).toMatch(/Not authorized/i);
      // tr-0002 still logs in with its old secret: nothing was registered.
      const { productKey } = DEMO.tracker;
      const login = signMqttLogin({ productKey, deviceName: 'tr-0002', deviceSecret: await deviceSecret(productKey, 'tr-0002') });
      const device = mqtt.connect(tls, { ...login, ca, reconnectPeriod: 0, protocolVersion: 4 });
      cleanups.push(() => void device.end(true));
      await new Promise<void>((resolve, reject) => {
        device.once('connect', () => resolve());
        device.once('error', reject);
      });
    });
  });
});
