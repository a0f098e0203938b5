// Dead letters: a payload refused by today's thing model is kept; after the model is fixed,
// `wanwu deadletters replay` turns it into a record, which the running gateway forwards.

import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { listDeadLetters, replayDeadLetters } from '../../src/commands/deadletters.js';
import type { Gateway } from '../../src/gateway.js';
import { connectDevice, DEMO, DEVICES_DIR, gatewayConfig, startGateway } from '../helpers/gateway.js';
import { tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

describe('dead letters (real gateway, real SQLite)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('lists refused payloads and replays them after a model fix, while the gateway runs', async () => {
    const dir = tempDir();
    cleanups.push(() => dir.cleanup());
    const devices = join(dir.path, 'devices');
    cpSync(DEVICES_DIR, devices, { recursive: true });
    const upstream = new TestUpstream();
    await upstream.start();
    cleanups.push(() => upstream.stop());
    const upstreams = [{ name: 'cloud', url: upstream.url, reconnectMinMs: 50 }];
    const gw: Gateway = await startGateway(dir.path, upstreams, { devicesDir: devices });
    cleanups.push(() => gw.stop());

    const { productKey, deviceName } = DEMO.tracker;
    const device = await connectDevice(gw.addresses().mqtt.port, productKey, deviceName);
    cleanups.push(() => device.end(true));
    const topic = `/sys/${productKey}/${deviceName}/thing/event/property/post`;
    await device.publishAsync(topic, JSON.stringify({ id: 'a1', params: { batteryLevel: 130 } }), { qos: 1 });
    await device.publishAsync(topic, JSON.stringify({ id: 'a2', params: { speed: 'fast' } }), { qos: 1 });
    await waitUntil(() => gw.status().buffer.deadLetters === 2, 5000, 'two dead letters');

    const config = gatewayConfig(dir.path, upstreams, { devicesDir: devices });
    const listed = await listDeadLetters(config, { product: productKey });
    expect(listed.exitCode).toBe(0);
    const rows = listed.output.trim().split('\n').map((l) => JSON.parse(l));
    expect(rows).toEqual([
      expect.objectContaining({ id: 1, productKey, deviceName, topic, transport: 'mqtt', code: 'WANWU_ERR_INVALID', message: 'batteryLevel: 130 above max 100' }),
      expect.objectContaining({ id: 2, code: 'WANWU_ERR_INVALID' }),
    ]);
    expect(Buffer.from(rows[0].payloadHex, 'hex').toString()).toBe(JSON.stringify({ id: 'a1', params: { batteryLevel: 130 } }));
    expect((await listDeadLetters(config, { product: 'NoSuchProduct' })).output).toBe('');

    // The product owner widens the range: batteryLevel now goes to 200 (a 2-cell pack).
    const modelFile = join(devices, productKey, 'model.json');
    const model = JSON.parse(readFileSync(modelFile, 'utf8'));
    const battery = model.properties.find((p: { identifier: string }) => p.identifier === 'batteryLevel');
    battery.dataType.specs.max = '200';
    writeFileSync(modelFile, JSON.stringify(model));

    const replay = await replayDeadLetters(config, { product: productKey });
    expect(replay.exitCode).toBe(2); // one still fails: "fast" is not a float
    expect(JSON.parse(replay.output)).toEqual({
      replayed: 1,
      records: 1,
      stillFailing: [{ id: 2, code: 'WANWU_ERR_INVALID', message: expect.stringContaining('speed') }],
      skipped: [],
    });

    // The running gateway notices the new record within its next tick and forwards it.
    await waitUntil(() => upstream.records().some((r) => r.msgId === 'a1'), 5000, 'replayed record upstream');
    const record = upstream.records().find((r) => r.msgId === 'a1')!;
    expect(record).toMatchObject({ productKey, deviceName, kind: 'property', transport: 'mqtt', rat: 'cat1', data: { batteryLevel: 130 } });
    await waitUntil(() => gw.status().buffer.deadLetters === 1, 3000, 'one dead letter left');
    const left = (await listDeadLetters(config, {})).output.trim().split('\n').map((l) => JSON.parse(l));
    expect(left.map((r) => r.id)).toEqual([2]);
  });
});
