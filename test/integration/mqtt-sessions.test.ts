// One MQTT session per device, keyed by the device rather than the Alibaba client id (which carries a
// fresh timestamp per login): a kept session (clean = 0) is resumed, and a second login takes over.

import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { tempDir, waitUntil } from '../helpers/index.js';
import { DEMO, deviceSecret, getJson, startGateway } from '../helpers/gateway.js';

describe('MQTT sessions are per device', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function login(gw: Gateway, timestamp: number, clean: boolean): Promise<{ client: MqttClient; sessionPresent: boolean }> {
    const { productKey, deviceName } = DEMO.tracker;
    const creds = signMqttLogin({ productKey, deviceName, deviceSecret: await deviceSecret(productKey, deviceName), timestamp });
    const client = mqtt.connect(`mqtt://127.0.0.1:${gw.addresses().mqtt.port}`, { ...creds, clean, reconnectPeriod: 0, protocolVersion: 4 });
    cleanups.push(() => void client.end(true));
    const sessionPresent = await new Promise<boolean>((resolve, reject) => {
      client.once('connect', (connack) => resolve(connack.sessionPresent));
      client.once('error', reject);
    });
    return { client, sessionPresent };
  }

  it('resumes a kept session across logins with different timestamps, and a second login takes over the first', async () => {
    const dir = tempDir('wanwu-sessions-');
    cleanups.push(() => dir.cleanup());
    const gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }]);
    cleanups.push(() => gw.stop());

    const first = await login(gw, 1_700_000_000_000, false);
    expect(first.sessionPresent).toBe(false);
    await first.client.subscribeAsync(`/sys/${DEMO.tracker.productKey}/${DEMO.tracker.deviceName}/thing/event/+/post_reply`, { qos: 1 });
    const closed = new Promise<void>((resolve) => first.client.once('close', () => resolve()));

    // Another timestamp, so another client id: still the same device, so the same session.
    const second = await login(gw, 1_700_000_060_000, false);
    expect(second.sessionPresent).toBe(true);
    await closed; // [MQTT-3.1.4-2]: the older connection of the same session is closed
    await waitUntil(async () => (await getJson(gw.addresses().http.port, '/status')).body.listeners.mqtt.devices === 1, 5000, 'one device session');
  });
});
