// An upstream's command topic at the forwarder (src/forward, config upstreams[].commands): a real
// in-process aedes upstream on port 0, a real SQLite buffer, and a fake submitCommand in place of the
// downlink, so what the forwarder hands over, in what order, and when, is seen directly.
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import mqtt, { type MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { createBuffer } from '../../src/buffer/index.js';
import { parseConfig } from '../../src/config/index.js';
import { createForwarder, type ForwarderOptions } from '../../src/forward/index.js';
import { silentLogger, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

interface Submitted {
  productKey: string;
  deviceName: string;
  payload: string;
  source: string;
  settle: { resolve(): void; reject(err: Error): void };
}

describe('forwarder: upstream command topic', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function forwarderTo(url: string, commands: unknown, submitted: Submitted[], topic?: string) {
    const dir = tempDir();
    cleanups.push(() => dir.cleanup());
    const buffer = createBuffer({ path: join(dir.path, 'w.db'), sync: 'full', logger: silentLogger, upstreams: ['cloud'] });
    await buffer.start();
    cleanups.push(() => buffer.stop());
    const upstream = parseConfig({ upstreams: [{ name: 'cloud', url, reconnectMinMs: 50, reconnectMaxMs: 200, commands, ...(topic === undefined ? {} : { topic }) }] }).upstreams[0]!;
    const submitCommand: NonNullable<ForwarderOptions['submitCommand']> = (productKey, deviceName, payload, source) =>
      new Promise<void>((resolve, reject) => submitted.push({ productKey, deviceName, payload: payload.toString(), source, settle: { resolve, reject } }));
    const forwarder = createForwarder({ upstream, url, buffer, logger: silentLogger, submitCommand });
    await forwarder.start();
    cleanups.push(() => forwarder.stop());
    return forwarder;
  }

  async function cloudApp(port: number): Promise<MqttClient> {
    const client = mqtt.connect(`mqtt://127.0.0.1:${port}`, { reconnectPeriod: 0, protocolVersion: 4 });
    cleanups.push(() => client.end(true));
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => resolve());
      client.once('error', reject);
    });
    return client;
  }

  /**
   * Publishes probes on `topic` until one reaches the forwarder (its subscription is then in place),
   * then takes every probe that arrives in the next 300 ms out of `submitted`.
   */
  async function subscribed(app: MqttClient, topic: string, submitted: Submitted[]): Promise<void> {
    await waitUntil(async () => {
      if (submitted.length === 0) await app.publishAsync(topic, 'probe', { qos: 1 });
      return submitted.length > 0;
    }, 5000, 'the command subscription');
    const probes = () => submitted.filter((x) => x.payload === 'probe');
    for (let i = 0; i < 3; i++) {
      for (const p of probes()) p.settle.resolve();
      await new Promise((r) => setTimeout(r, 100));
    }
    for (const p of probes()) p.settle.resolve();
    submitted.splice(0, submitted.length, ...submitted.filter((x) => x.payload !== 'probe'));
  }

  it('ignores retained messages (replayed at every resubscription) and topics its own records could have', async () => {
    const broker = new TestUpstream();
    await broker.start();
    cleanups.push(() => broker.stop());
    const app = await cloudApp(broker.port);
    // Retained before the forwarder subscribes: the broker replays it with retain set.
    await app.publishAsync('acme/cmd/P9/d9', '{"raw":"09"}', { qos: 1, retain: true });
    const submitted: Submitted[] = [];
    // Records go to acme/{productKey}/{deviceName}/{kind}: acme/cmd/P1/state could be the record of
    // a product "cmd", device "P1"; such a message is never taken as a command.
    await forwarderTo(broker.url, { topic: 'acme/cmd/{productKey}/{deviceName}' }, submitted, 'acme/{productKey}/{deviceName}/{kind}');
    await subscribed(app, 'acme/cmd/P0/probe', submitted);
    await app.publishAsync('acme/cmd/P1/state', '{"raw":"01"}', { qos: 1 });
    await app.publishAsync('acme/cmd/P1/d1', '{"raw":"02"}', { qos: 1 });
    await waitUntil(() => submitted.length === 1, 5000, 'the live command');
    await new Promise((r) => setTimeout(r, 200));
    expect(submitted.map((x) => [x.productKey, x.deviceName, x.payload])).toEqual([['P1', 'd1', '{"raw":"02"}']]);
    submitted[0]!.settle.resolve();
  });

  it('hands over each message with the productKey and deviceName of its topic, one at a time, in order', async () => {
    const broker = new TestUpstream();
    await broker.start();
    cleanups.push(() => broker.stop());
    const app = await cloudApp(broker.port);
    const submitted: Submitted[] = [];
    await forwarderTo(broker.url, { topic: 'acme/{deviceName}/{productKey}/down' }, submitted);
    await subscribed(app, 'acme/probe/P0/down', submitted);

    await app.publishAsync('acme/d1/P1/down', '{"raw":"01"}', { qos: 1 });
    await app.publishAsync('acme/d2/P1/down', '{"raw":"02"}', { qos: 1 });
    await waitUntil(() => submitted.length === 1, 5000, 'the first command');
    expect(submitted[0]).toMatchObject({ productKey: 'P1', deviceName: 'd1', payload: '{"raw":"01"}', source: 'upstream:cloud' });
    // The next message waits until the first is stored: its PUBACK, and the queue's order, depend on it.
    await new Promise((r) => setTimeout(r, 200));
    expect(submitted).toHaveLength(1);
    submitted[0]!.settle.resolve();
    await waitUntil(() => submitted.length === 2, 5000, 'the second command');
    expect(submitted[1]).toMatchObject({ productKey: 'P1', deviceName: 'd2', payload: '{"raw":"02"}' });
    submitted[1]!.settle.resolve();
  });

  it('subscribes to nothing when the upstream does not enable commands', async () => {
    const broker = new TestUpstream();
    await broker.start();
    cleanups.push(() => broker.stop());
    const submitted: Submitted[] = [];
    const forwarder = await forwarderTo(broker.url, false, submitted);
    await waitUntil(() => forwarder.stats().connected, 5000, 'the forwarder');
    const app = await cloudApp(broker.port);
    await app.publishAsync('wanwu/cmd/P1/d1', '{"raw":"01"}', { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    expect(submitted).toEqual([]);
  });

  it('stops promptly while its SUBSCRIBE is unanswered (a broker going away)', async () => {
    // A broker that accepts the login and never answers anything else.
    const sockets = new Set<Socket>();
    const server: Server = createServer((s) => {
      sockets.add(s);
      s.once('data', () => s.write(Buffer.from([0x20, 0x02, 0x00, 0x00]))); // CONNACK, accepted
      s.on('error', () => {});
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
    cleanups.push(() => new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    }));
    const port = (server.address() as { port: number }).port;
    const forwarder = await forwarderTo(`mqtt://127.0.0.1:${port}`, true, []);
    await waitUntil(() => forwarder.stats().connected, 5000, 'the forwarder');
    await new Promise((r) => setTimeout(r, 100));
    const stopped = await Promise.race([forwarder.stop().then(() => 'stopped'), new Promise((r) => setTimeout(() => r('hung'), 5000))]);
    expect(stopped).toBe('stopped');
  });
});
