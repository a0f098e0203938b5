// kill -9 soak: start the gateway, let devices publish over MQTT (QoS 1) and CoAP (CON) for a random
// moment, kill it with SIGKILL, again and again on the same database; then run it once more until the
// backlog drains and check that every acknowledged message reached the upstream broker.
//
//   npm run soak:kill9 -- --cycles 1000              (starts its own mosquitto on a free port)
//   npm run soak:kill9 -- --cycles 1000 --upstream mqtt://127.0.0.1:1883
//
// The test suite runs the same code with 20 cycles (test/interop/faults.test.ts).

import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import mqtt, { type MqttClient } from 'mqtt';
import { signMqttLogin } from '../../src/registry/sign.js';
import { CoapClient } from '../lib/coap-client.js';
import { startGatewayProcess, writeConfigFile, type GatewayPorts } from '../lib/gateway-process.js';
import { Mosquitto } from '../lib/mosquitto.js';

export interface Kill9Options {
  cycles: number;
  /** Folder for the config file and the database. */
  workDir: string;
  devicesDir: string;
  /** The upstream broker the gateway forwards to (and this soak subscribes to). */
  upstreamUrl: string;
  /** How long each run lives before SIGKILL, in ms (random in [min, max]). */
  minRunMs?: number;
  maxRunMs?: number;
  random?: () => number;
  log?: (line: string) => void;
}

export interface Kill9Result {
  cycles: number;
  /** Messages the gateway acknowledged (PUBACK or 2.04) across all runs. */
  acked: number;
  /** Of those, how many arrived upstream at least once. */
  received: number;
  /** Acknowledged but never arrived: must be empty. */
  lost: string[];
  /** Extra copies upstream (at-least-once re-sends after a kill). */
  duplicates: number;
  durationS: number;
}

/** The demo devices the soak speaks as (an MQTT RedCap sensor and a CoAP-speaking tracker). */
const MQTT_DEVICE = { productKey: 'SensorRedCap', deviceName: 'rs-0001' };
const COAP_DEVICE = { productKey: 'TrackerCat1', deviceName: 'tr-0002' };

function secretOf(devicesDir: string, productKey: string, deviceName: string): string {
  const list = JSON.parse(readFileSync(join(devicesDir, productKey, 'devices.json'), 'utf8')) as Array<{ deviceName: string; deviceSecret: string }>;
  const d = list.find((x) => x.deviceName === deviceName);
  if (!d) throw new Error(`no device ${productKey}/${deviceName} in ${devicesDir}`);
  return d.deviceSecret;
}

async function connectMqtt(url: string, options: mqtt.IClientOptions): Promise<MqttClient> {
  const client = mqtt.connect(url, { reconnectPeriod: 0, ...options });
  await new Promise<void>((resolve, reject) => {
    client.once('connect', () => resolve());
    client.once('error', reject);
    client.once('close', () => reject(new Error('closed before CONNACK')));
  });
  client.on('error', () => {});
  return client;
}

/** Devices publish with unique ids until `stop()`; `acked` collects what the gateway acknowledged. */
function startDevices(ports: GatewayPorts, devicesDir: string, prefix: string, acked: Set<string>) {
  let running = true;
  const loops: Promise<void>[] = [];
  loops.push(
    (async () => {
      const creds = signMqttLogin({ ...MQTT_DEVICE, deviceSecret: secretOf(devicesDir, MQTT_DEVICE.productKey, MQTT_DEVICE.deviceName) });
      let client: MqttClient;
      try {
        client = await connectMqtt(`mqtt://127.0.0.1:${ports.mqtt}`, creds);
      } catch {
        return;
      }
      const topic = `/sys/${MQTT_DEVICE.productKey}/${MQTT_DEVICE.deviceName}/thing/event/property/post`;
      // Publishes queued while the connection is gone never settle: stop waiting when it closes.
      const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
      for (let n = 0; running && client.connected; n += 8) {
        // Eight in flight at once, like a module pipelining QoS 1 publishes.
        const batch = Array.from({ length: 8 }, (_, k) => {
          const id = `${prefix}m${n + k}`;
          return client.publishAsync(topic, JSON.stringify({ id, params: { temperature: 20 + ((n + k) % 10) } }), { qos: 1 }).then(
            () => void acked.add(id),
            () => {},
          );
        });
        await Promise.race([Promise.all(batch), closed]);
      }
      client.end(true);
    })(),
  );
  loops.push(
    (async () => {
      const coap = new CoapClient('127.0.0.1', ports.coap);
      const path = `/topic/sys/${COAP_DEVICE.productKey}/${COAP_DEVICE.deviceName}/thing/event/property/post`;
      // Tokens live in the gateway's memory, so each run starts with POST /auth (as a module after a
      // gateway restart, once its old token gets 4.01). A run killed before it answers sends nothing.
      const authed = await coap.authenticate({ ...COAP_DEVICE, deviceSecret: secretOf(devicesDir, COAP_DEVICE.productKey, COAP_DEVICE.deviceName) }, { timeoutMs: 1000 }).then(
        () => true,
        () => false,
      );
      for (let n = 0; running && authed; n++) {
        const id = `${prefix}c${n}`;
        const r = await coap.post(path, Buffer.from(JSON.stringify({ id, params: { speed: n % 100 } })), { timeoutMs: 300 }).catch(() => null);
        if (r?.code === '2.04') acked.add(id);
        if (!r) break; // the gateway is gone
      }
      coap.close();
    })(),
  );
  return {
    async stop() {
      running = false;
      await Promise.all(loops);
    },
  };
}

async function status(httpPort: number): Promise<{ buffer: { pending: number }; upstreams: Array<{ connected: boolean; pending: number }> }> {
  const res = await fetch(`http://127.0.0.1:${httpPort}/status`);
  return (await res.json()) as never;
}

export async function runKill9Soak(opts: Kill9Options): Promise<Kill9Result> {
  const started = Date.now();
  const random = opts.random ?? Math.random;
  const log = opts.log ?? (() => {});
  const minRun = opts.minRunMs ?? 150;
  const maxRun = opts.maxRunMs ?? 600;
  const config = writeConfigFile(opts.workDir, {
    coap: { host: '127.0.0.1', port: 0 },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    storage: { path: join(opts.workDir, 'wanwu.db') },
    devicesDir: opts.devicesDir,
    upstreams: [{ name: 'soak', url: opts.upstreamUrl, reconnectMinMs: 100, reconnectMaxMs: 1000 }],
    log: { level: 'info' }, // the "ready" line carries the ports
  });

  // The application side: count every record that reaches the upstream broker, by device message id.
  const seen = new Map<string, number>();
  const app = await connectMqtt(opts.upstreamUrl, { clientId: `kill9-soak-${process.pid}`, clean: true });
  await app.subscribeAsync('wanwu/#', { qos: 1 });
  app.on('message', (_topic, payload) => {
    const id = (JSON.parse(payload.toString()) as { msgId?: string }).msgId;
    if (id) seen.set(id, (seen.get(id) ?? 0) + 1);
  });

  const acked = new Set<string>();
  try {
    for (let cycle = 1; cycle <= opts.cycles; cycle++) {
      const gw = startGatewayProcess(['start', '--config', config]);
      const ports = await gw.ready.catch(async (err: unknown) => {
        await gw.kill9();
        throw err;
      });
      const devices = startDevices(ports, opts.devicesDir, `k${cycle}-`, acked);
      await new Promise((r) => setTimeout(r, minRun + Math.floor(random() * (maxRun - minRun))));
      await gw.kill9();
      await devices.stop();
      if (cycle % 50 === 0 || cycle === opts.cycles || process.env.WANWU_SOAK_DEBUG) log(`cycle ${cycle}/${opts.cycles}: ${acked.size} acknowledged so far`);
    }
    // A last, clean run drains the backlog.
    const gw = startGatewayProcess(['start', '--config', config]);
    try {
      const ports = await gw.ready;
      const until = Date.now() + 60_000;
      for (;;) {
        const s = await status(ports.http);
        const arrived = [...acked].every((id) => seen.has(id));
        if ((s.buffer.pending === 0 && arrived) || Date.now() > until) break;
        await new Promise((r) => setTimeout(r, 100));
      }
      gw.proc.kill('SIGTERM');
      await gw.exit;
    } finally {
      await gw.kill9();
    }
  } finally {
    app.end(true);
  }
  const lost = [...acked].filter((id) => !seen.has(id));
  let duplicates = 0;
  for (const n of seen.values()) duplicates += n - 1;
  return {
    cycles: opts.cycles,
    acked: acked.size,
    received: acked.size - lost.length,
    lost,
    duplicates,
    durationS: Math.round((Date.now() - started) / 100) / 10,
  };
}

async function main(argv: string[]): Promise<number> {
  const arg = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const cycles = Number(arg('--cycles') ?? 1000);
  const workDir = mkdtempSync(join(tmpdir(), 'wanwu-kill9-'));
  let broker: Mosquitto | null = null;
  let upstreamUrl = arg('--upstream');
  if (!upstreamUrl) {
    broker = new Mosquitto(workDir);
    await broker.start();
    upstreamUrl = broker.url;
  }
  try {
    const result = await runKill9Soak({
      cycles,
      workDir,
      devicesDir: resolve(arg('--devices') ?? './devices'),
      upstreamUrl,
      log: (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(`${JSON.stringify({ ...result, lost: result.lost.slice(0, 20), lostCount: result.lost.length }, null, 2)}\n`);
    return result.lost.length === 0 ? 0 : 1;
  } finally {
    await broker?.stop();
    rmSync(workDir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
