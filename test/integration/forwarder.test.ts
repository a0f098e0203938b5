// Forwarder against a real in-process aedes upstream on port 0 and a real SQLite buffer.
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createBuffer, type RecordBuffer } from '../../src/buffer/index.js';
import { parseConfig } from '../../src/config/index.js';
import { compileTopic, createForwarder, decodeRecordProtobuf, type Forwarder } from '../../src/forward/index.js';
import type { TelemetryRecord } from '../../src/types.js';
import { makeCertificates, silentLogger, tempDir, TestUpstream, waitUntil } from '../helpers/index.js';

function record(n: number, deviceName: string, kind: 'property' | 'event' = 'property'): TelemetryRecord {
  const r: TelemetryRecord = {
    id: `rec-${n}`, productKey: 'P1', deviceName, kind, ts: n, receivedAt: n, transport: 'mqtt', rat: 'cat1', data: { n },
  };
  if (kind === 'event') r.event = 'alarm';
  return r;
}

function upstreamConfig(url: string, extra: Record<string, unknown> = {}) {
  return parseConfig({ upstreams: [{ name: 'up', url, reconnectMinMs: 50, reconnectMaxMs: 200, ...extra }] }).upstreams[0]!;
}

describe('topic templates', () => {
  it('fills every placeholder; {event} falls back to the kind', () => {
    const t = compileTopic('x/{productKey}/{deviceName}/{kind}/{event}');
    expect(t({ productKey: 'P', deviceName: 'D', kind: 'event', event: 'alarm' })).toBe('x/P/D/event/alarm');
    expect(t({ productKey: 'P', deviceName: 'D', kind: 'property', event: null })).toBe('x/P/D/property/property');
  });
});

describe('forwarder (real aedes upstream, real SQLite)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  async function setup(opts: { startUpstream?: boolean; extra?: Record<string, unknown>; tls?: { key: Buffer; cert: Buffer } } = {}) {
    const dir = tempDir();
    cleanups.push(() => dir.cleanup());
    const upstream = new TestUpstream(opts.tls);
    if (opts.startUpstream !== false) await upstream.start();
    else {
      // Reserve a port number, then free it: the upstream is "down" at that address.
      await upstream.start();
      await upstream.stop();
    }
    cleanups.push(() => upstream.stop());
    const buffer: RecordBuffer = createBuffer({ path: join(dir.path, 'w.db'), sync: 'full', logger: silentLogger, upstreams: ['up'] });
    await buffer.start();
    cleanups.push(() => buffer.stop());
    const cfg = upstreamConfig(upstream.url, opts.extra);
    const forwarder: Forwarder = createForwarder({ upstream: cfg, url: upstream.url, buffer, logger: silentLogger });
    await forwarder.start();
    cleanups.push(() => forwarder.stop());
    return { upstream, buffer, forwarder };
  }

  it('delivers committed records as their stored JSON on the template topic and advances the cursor', async () => {
    const { upstream, buffer, forwarder } = await setup();
    await buffer.append([record(1, 'd1'), record(2, 'd2', 'event')]);
    await waitUntil(() => upstream.messages.length === 2, 5000, 'two records upstream');
    expect(upstream.messages.map((m) => m.topic)).toEqual(['wanwu/P1/d1/property', 'wanwu/P1/d2/event']);
    expect(upstream.messages[0]!.json).toEqual(record(1, 'd1'));
    expect(upstream.messages[0]!.qos).toBe(1);
    await waitUntil(() => buffer.cursor('up') === 2, 2000, 'cursor at 2');
    expect(forwarder.stats()).toMatchObject({ connected: true, forwarded: 2, pending: 0, inFlight: 0 });
  });

  it('holds records while the upstream is down and delivers them when it comes up', async () => {
    const { upstream, buffer, forwarder } = await setup({ startUpstream: false });
    await buffer.append([record(1, 'd1'), record(2, 'd1'), record(3, 'd1')]);
    await waitUntil(() => forwarder.stats().reconnects >= 2, 5000, 'reconnect attempts');
    expect(forwarder.stats()).toMatchObject({ connected: false, pending: 3 });
    expect(forwarder.stats().lastError).toMatch(/ECONNREFUSED/);
    await upstream.start();
    await waitUntil(() => upstream.messages.length === 3, 5000, 'backlog delivered');
    expect(upstream.records().map((r) => r.id)).toEqual(['rec-1', 'rec-2', 'rec-3']);
  });

  it('an upstream outage in the middle of a stream loses nothing and keeps order per device', async () => {
    const { upstream, buffer } = await setup({ extra: { window: 16 } });
    const devices = ['a', 'b', 'c'];
    let n = 0;
    const appendSome = async (count: number) => {
      for (let i = 0; i < count; i++) {
        n++;
        await buffer.append([record(n, devices[n % 3]!)]);
      }
    };
    await appendSome(200);
    await upstream.stop();
    await appendSome(200);
    await upstream.start();
    await appendSome(200);
    const want = new Set(Array.from({ length: 600 }, (_, i) => `rec-${i + 1}`));
    await waitUntil(() => want.size === new Set(upstream.records().map((r) => r.id)).size && buffer.cursor("up") === 600, 15_000, "all 600 records upstream");
    const got = upstream.records().map((r) => r.id as string);
    expect(new Set(got)).toEqual(want);
    // At least once: duplicates are only re-sends of records in flight at the outage.
    expect(got.length - want.size).toBeLessThanOrEqual(16);
    // Order per device, judged by first arrival.
    for (const d of devices) {
      const firsts: number[] = [];
      const seen = new Set<string>();
      for (const r of upstream.records()) {
        if (r.deviceName !== d || seen.has(r.id as string)) continue;
        seen.add(r.id as string);
        firsts.push((r.data as { n: number }).n);
      }
      expect(firsts).toEqual([...firsts].sort((x, y) => x - y));
    }
  });

  it('json-batch: one JSON array per message, up to batchMaxRecords, grouped by topic, in order', async () => {
    const { upstream, buffer } = await setup({ extra: { format: 'json-batch', batchMaxRecords: 100, topic: 'wanwu/{productKey}/{deviceName}' } });
    const records = Array.from({ length: 250 }, (_, i) => record(i + 1, i % 2 === 0 ? 'even' : 'odd'));
    await buffer.append(records);
    await waitUntil(() => buffer.cursor('up') === 250, 5000, 'all acknowledged');
    const arrays = upstream.messages.map((m) => ({ topic: m.topic, records: JSON.parse(m.payload.toString()) as Array<{ id: string; deviceName: string }> }));
    expect(arrays.every((a) => Array.isArray(a.records) && a.records.length <= 100)).toBe(true);
    expect(arrays.length).toBeLessThanOrEqual(4); // 125 per device -> 100 + 25 each
    for (const device of ['even', 'odd']) {
      const got = arrays.filter((a) => a.topic === `wanwu/P1/${device}`).flatMap((a) => a.records.map((r) => r.id));
      expect(got).toEqual(records.filter((r) => r.deviceName === device).map((r) => r.id));
    }
  });

  it('json-batch: a partly filled batch goes out after batchMaxDelayMs', async () => {
    const { upstream, buffer } = await setup({ extra: { format: 'json-batch', batchMaxRecords: 100, batchMaxDelayMs: 50, topic: 'wanwu/all' } });
    await buffer.append([record(1, 'a'), record(2, 'b'), record(3, 'c')]);
    await waitUntil(() => upstream.messages.length === 1, 3000, 'one batch');
    expect(JSON.parse(upstream.messages[0]!.payload.toString()).map((r: { id: string }) => r.id)).toEqual(['rec-1', 'rec-2', 'rec-3']);
  });

  it('protobuf: each message is a wanwu.v1.Record that decodes back to the record', async () => {
    const { upstream, buffer } = await setup({ extra: { format: 'protobuf' } });
    const r = { ...record(1, 'd1', 'event'), data: { level: 3, label: 'smoke', pos: { lat: 31.2, lon: 121.5 }, samples: [1, 2.5] }, msgId: '77' };
    await buffer.append([r]);
    await waitUntil(() => upstream.messages.length === 1, 3000, 'protobuf record');
    expect(decodeRecordProtobuf(upstream.messages[0]!.payload)).toEqual(r);
  });

  it('TLS: verifies the broker against the configured CA; insecure only when configured', async () => {
    const certDir = tempDir();
    cleanups.push(() => certDir.cleanup());
    const certs = makeCertificates(certDir.path);
    const verified = await setup({ tls: certs, extra: { tls: { ca: certs.caFile } } });
    await verified.buffer.append([record(1, 'd1')]);
    await waitUntil(() => verified.upstream.messages.length === 1, 5000, 'record over TLS');

    const unverified = await setup({ tls: certs });
    await unverified.buffer.append([record(1, 'd1')]);
    await waitUntil(() => (unverified.forwarder.stats().lastError ?? '').length > 0, 5000, 'TLS failure');
    expect(unverified.forwarder.stats().lastError).toMatch(/self[- ]signed|unable to verify|certificate/i);
    expect(unverified.upstream.messages).toHaveLength(0);

    const insecure = await setup({ tls: certs, extra: { tls: { insecure: true } } });
    await insecure.buffer.append([record(1, 'd1')]);
    await waitUntil(() => insecure.upstream.messages.length === 1, 5000, 'record over unverified TLS');
  });
});
