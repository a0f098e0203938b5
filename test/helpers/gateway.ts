// Starts a real gateway in-process: CoAP, MQTT and HTTP on 127.0.0.1 port 0, a real SQLite file.

import { join } from 'node:path';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import { parseConfig, type ConfigInput } from '../../src/config/index.js';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import { silentLogger } from './index.js';

export const DEVICES_DIR = join(import.meta.dirname, '..', '..', 'devices');

/** Demo devices from devices/ used across tests. */
export const DEMO = {
  tracker: { productKey: 'TrackerCat1', deviceName: 'tr-0001' },
  sensor: { productKey: 'SensorRedCap', deviceName: 'rs-0001' },
  meter: { productKey: 'WaterMeterNB', deviceName: 'wm-0001' },
} as const;

export function gatewayConfig(storageDir: string, upstreams: ConfigInput['upstreams'], extra: Partial<ConfigInput> = {}) {
  return parseConfig({
    coap: { host: '127.0.0.1', port: 0 },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    storage: { path: join(storageDir, 'wanwu.db') },
    devicesDir: DEVICES_DIR,
    upstreams,
    log: { level: 'silent' },
    ...extra,
  });
}

export async function startGateway(storageDir: string, upstreams: ConfigInput['upstreams'], extra: Partial<ConfigInput> = {}): Promise<Gateway> {
  const gw = createGateway(gatewayConfig(storageDir, upstreams, extra), silentLogger);
  await gw.start();
  return gw;
}

/** The demo secret of a device, read from devices/<pk>/devices.json. */
export async function deviceSecret(productKey: string, deviceName: string): Promise<string> {
  const { readFileSync } = await import('node:fs');
  const list = JSON.parse(readFileSync(join(DEVICES_DIR, productKey, 'devices.json'), 'utf8')) as Array<{ deviceName: string; deviceSecret: string }>;
  const d = list.find((x) => x.deviceName === deviceName);
  if (!d) throw new Error(`no demo device ${productKey}/${deviceName}`);
  return d.deviceSecret;
}

/** Connects an mqtt.js client as a device with an Alibaba-signed login (`options`: e.g. clean, customHandleAcks). */
export async function connectDevice(port: number, productKey: string, deviceName: string, secret?: string, options: IClientOptions = {}): Promise<MqttClient> {
  const creds = signMqttLogin({ productKey, deviceName, deviceSecret: secret ?? (await deviceSecret(productKey, deviceName)) });
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { ...creds, reconnectPeriod: 0, protocolVersion: 4, ...options });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

/** Connects an mqtt.js client as the demo application account (app / wanwu-demo, devices/README.md), which reads wanwu/#. */
export async function connectApp(port: number): Promise<MqttClient> {
  const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { username: 'app', password: 'wanwu-demo', reconnectPeriod: 0, protocolVersion: 4 });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
  });
  return client;
}

export async function getJson(port: number, path: string): Promise<{ status: number; body: any; text: string }> {
  const res = await fetch(`http://127.0.0.1:${port}${path}`);
  const text = await res.text();
  let body: unknown = null;
  try {
    body = JSON.parse(text);
  } catch {
    /* not JSON */
  }
  return { status: res.status, body, text };
}
