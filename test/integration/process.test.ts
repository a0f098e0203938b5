// The `wanwu` command as a child process (bin/wanwu.js -> dist/, built by `npm test`/`npm install`):
// refusals at start, clean shutdown on SIGTERM/SIGINT, and no acknowledged record lost to `kill -9`.

import { mkdirSync, writeFileSync } from 'node:fs';
import { startGatewayProcess, writeConfigFile, type GatewayProcess } from '../../simulators/lib/gateway-process.js';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { CoapClient as CoapTestClient } from '../../simulators/lib/coap-client.js';
import { connectDevice, DEMO, deviceSecret, DEVICES_DIR, startGateway } from '../helpers/gateway.js';
import { tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

type Child = GatewayProcess;
const startChild = startGatewayProcess;
const writeConfig = (dir: string, config: Record<string, unknown>) => writeConfigFile(dir, config);

function baseConfig(dir: string, upstreamUrl: string) {
  return {
    coap: { host: '127.0.0.1', port: 0 },
    mqtt: { host: '127.0.0.1', port: 0 },
    http: { host: '127.0.0.1', port: 0 },
    storage: { path: join(dir, 'wanwu.db') },
    devicesDir: DEVICES_DIR,
    upstreams: [{ name: 'cloud', url: upstreamUrl, reconnectMinMs: 50, reconnectMaxMs: 200 }],
  };
}

describe('wanwu start (child process)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  const dir = () => {
    const d = tempDir();
    cleanups.push(() => d.cleanup());
    return d.path;
  };
  const track = (c: Child) => {
    cleanups.push(() => {
      if (c.proc.exitCode === null && c.proc.signalCode === null) c.proc.kill('SIGKILL');
    });
    return c;
  };

  it('refuses a bad configuration with WANWU_ERR_CONFIG and the key path, exit 1, no stack trace', async () => {
    const d = dir();
    const file = writeConfig(d, { coap: { port: 'fifty' }, upstreams: [{ name: 'x', url: 'local', qos: 3 }], mystery: true });
    const c = track(startChild(['start', '--config', file]));
    expect(await c.exit).toBe(1);
    expect(c.stderr).toContain('WANWU_ERR_CONFIG');
    expect(c.stderr).toContain('coap.port');
    expect(c.stderr).toContain('upstreams[0].qos');
    expect(c.stderr).toContain('mystery: unknown key');
    expect(c.stderr).not.toMatch(/\n\s+at /);
  });

  it('refuses an env override that is not a port (WANWU_MQTT_PORT)', async () => {
    const c = track(startChild(['start'], { WANWU_MQTT_PORT: '18x83' }));
    expect(await c.exit).toBe(1);
    expect(c.stderr).toContain('WANWU_ERR_CONFIG');
    expect(c.stderr).toContain('WANWU_MQTT_PORT (mqtt.port)');
  });

  it('refuses a broken product folder with WANWU_ERR_PRODUCT naming the file and key', async () => {
    const d = dir();
    const devices = join(d, 'devices');
    mkdirSync(join(devices, 'Broken'), { recursive: true });
    writeFileSync(join(devices, 'Broken', 'product.json'), JSON.stringify({ productKey: 'Broken', name: 'b', rat: 'lora', codec: { type: 'alink-json' } }));
    const file = writeConfig(d, { ...baseConfig(d, 'mqtt://127.0.0.1:1'), devicesDir: devices });
    const c = track(startChild(['start', '--config', file]));
    expect(await c.exit).toBe(1);
    expect(c.stderr).toContain('WANWU_ERR_PRODUCT');
    expect(c.stderr).toMatch(/Broken[/\\]product\.json: rat/);
    expect(c.stderr).not.toMatch(/\n\s+at /);
  });

  it('logs the chosen ports, serves /healthz, and exits 0 on SIGTERM and on SIGINT', async () => {
    for (const signal of ['SIGTERM', 'SIGINT'] as const) {
      const d = dir();
      const c = track(startChild(['start', '--config', writeConfig(d, baseConfig(d, 'mqtt://127.0.0.1:1'))]));
      const ports = await c.ready;
      expect(ports.coap).toBeGreaterThan(0);
      expect(ports.mqtt).toBeGreaterThan(0);
      const health = await fetch(`http://127.0.0.1:${ports.http}/healthz`);
      expect(health.status).toBe(200);
      c.proc.kill(signal);
      expect(await c.exit).toBe(0);
      expect(c.stdout).toContain('wanwu gateway stopped');
    }
  });

  it('kill -9 while devices publish: every acknowledged record reaches the upstream after restart', async () => {
    const d = dir();
    const upstream = new TestUpstream();
    await upstream.start();
    await upstream.stop(); // the upstream is down while the first gateway runs: everything stays in SQLite
    cleanups.push(() => upstream.stop());
    const c = track(startChild(['start', '--config', writeConfig(d, baseConfig(d, upstream.url))]));
    const ports = await c.ready;

    const acked = new Set<string>();
    let stop = false;
    const sensor = await connectDevice(ports.mqtt, DEMO.sensor.productKey, DEMO.sensor.deviceName);
    sensor.on('error', () => {});
    const coap = new CoapTestClient('127.0.0.1', ports.coap);
    cleanups.push(() => coap.close());
    await coap.authenticate({ ...DEMO.meter, deviceSecret: await deviceSecret(DEMO.meter.productKey, DEMO.meter.deviceName) });
    const topic = `/sys/${DEMO.sensor.productKey}/${DEMO.sensor.deviceName}/thing/event/property/post`;
    const mqttLoop = (async () => {
      // Several publishes in flight at once, like a device pipelining QoS 1.
      for (let i = 0; !stop; i += 8) {
        await Promise.all(
          Array.from({ length: 8 }, (_, k) => {
            const id = `m${i + k}`;
            return sensor.publishAsync(topic, JSON.stringify({ id, params: { temperature: 20 } }), { qos: 1 }).then(
              () => acked.add(id),
              () => {},
            );
          }),
        );
      }
    })();
    const frame = Buffer.from('010000303904d20e10000929ffa6', 'hex');
    const coapLoop = (async () => {
      for (let i = 0; !stop; i++) {
        const r = await coap.post(`/topic/sys/${DEMO.meter.productKey}/${DEMO.meter.deviceName}/thing/model/up_raw`, frame, { timeoutMs: 500 }).catch(() => null);
        if (r?.code === '2.04') acked.add(`coap-${i}`);
      }
    })();
    await waitUntil(() => acked.size >= 150, 15_000, 'some acknowledged publishes');
    c.proc.kill('SIGKILL');
    expect(await c.exit).toBe(null);
    stop = true;
    sensor.end(true);
    await Promise.all([mqttLoop, coapLoop]);
    const ackedMqtt = [...acked].filter((id) => id.startsWith('m'));
    const ackedCoap = [...acked].filter((id) => id.startsWith('coap-'));
    expect(ackedMqtt.length).toBeGreaterThan(0);
    expect(ackedCoap.length).toBeGreaterThan(0);

    // Restart on the same database with the upstream up.
    await upstream.start();
    const gw: Gateway = await startGateway(d, [{ name: 'cloud', url: upstream.url, reconnectMinMs: 50 }]);
    cleanups.push(() => gw.stop());
    await waitUntil(() => gw.status().buffer.pending === 0 && gw.status().upstreams[0]!.connected, 20_000, 'backlog drained');
    const arrived = upstream.records();
    const mqttIds = new Set(arrived.filter((r) => r.transport === 'mqtt').map((r) => r.msgId));
    for (const id of ackedMqtt) expect(mqttIds.has(id), `acknowledged ${id} arrived`).toBe(true);
    // CoAP frames carry no id: every acknowledged one is a distinct record.
    expect(arrived.filter((r) => r.transport === 'coap').length).toBeGreaterThanOrEqual(ackedCoap.length);
  });
});
