// Device shadow over a real command queue (SQLite files in a temp folder) and the demo products.
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { createDownlink, PROPERTY_SET_METHOD, type Downlink } from '../../../src/downlink/index.js';
import { createShadow, type Shadow } from '../../../src/downlink/shadow.js';
import { loadRegistry } from '../../../src/registry/index.js';
import type { RawMessage, TelemetryRecord } from '../../../src/types.js';
import { DEVICES_DIR } from '../../helpers/gateway.js';
import { silentLogger, tempDir } from '../../helpers/index.js';

const registry = loadRegistry(DEVICES_DIR);
const PK = 'TrackerCat1';
const DN = 'tr-0001';

const raw = (over: Partial<RawMessage> = {}): RawMessage => ({
  transport: 'mqtt', productKey: PK, deviceName: DN, topic: `/sys/${PK}/${DN}/thing/event/property/post`, route: { type: 'property-post' },
  payload: Buffer.alloc(0), receivedAt: 1_700_000_000_000, peer: '10.0.0.2:40000', ...over,
});

const rec = (kind: TelemetryRecord['kind'], ts: number, data: Record<string, unknown>, dn = DN): TelemetryRecord => ({
  id: `r-${ts}`, productKey: PK, deviceName: dn, kind, ts, receivedAt: ts, transport: 'mqtt', rat: 'cat1', data,
});

describe('device shadow', () => {
  let dir: ReturnType<typeof tempDir>;
  let downlink: Downlink;
  let shadow: Shadow;

  const open = async () => {
    const s = createShadow({ path: join(dir.path, 'commands.db'), downlink, logger: silentLogger, flushMs: 60_000, maxOpenCommands: 100 });
    await s.start();
    return s;
  };

  beforeEach(async () => {
    dir = tempDir();
    downlink = createDownlink({
      path: join(dir.path, 'commands.db'), registry, records: { append: async () => {} }, logger: silentLogger,
      ttlS: 3600, maxTtlS: 86_400, maxPerDevice: 100, maxPayloadBytes: 1024, retainS: 3600, sweepMs: 60_000,
    });
    await downlink.start();
    shadow = await open();
  });
  afterEach(async () => {
    await shadow.stop();
    await downlink.stop();
    dir.cleanup();
  });

  it('keeps the newest reported value and time of each property; events do not touch properties', () => {
    shadow.observe(raw(), [rec('property', 1000, { batteryLevel: 80, speed: 12.5 }), rec('event', 1500, { batteryLevel: 5 })]);
    shadow.observe(raw(), [rec('property', 2000, { batteryLevel: 79, GeoLocation: { Longitude: 116.4, Latitude: 39.9 } })]);
    // Older values delivered late (a device's own store-and-forward) lose to newer ones.
    shadow.observe(raw(), [rec('property', 500, { batteryLevel: 99, charging: 1 })]);
    const want = {
      batteryLevel: { value: 79, time: 2000 },
      speed: { value: 12.5, time: 1000 },
      GeoLocation: { value: { Longitude: 116.4, Latitude: 39.9 }, time: 2000 },
      charging: { value: 1, time: 500 },
    };
    expect(shadow.reported(PK, DN)).toEqual(want);
    // The same after the values are written, and with a later, older update that the store must refuse.
    shadow.flush();
    expect(shadow.stats().pending).toBe(0);
    shadow.observe(raw(), [rec('property', 1500, { batteryLevel: 1 })]);
    shadow.flush();
    expect(shadow.reported(PK, DN)).toEqual(want);
    expect(shadow.reported(PK, 'tr-0002')).toEqual({});
  });

  it('counts a device time at most 5 minutes ahead of the gateway, so one value from a clock years ahead does not freeze the property', () => {
    const farAhead = { ...rec('property', 3_000_000_000_000, { batteryLevel: 10 }), receivedAt: 1000 };
    shadow.observe(raw(), [farAhead]);
    expect(shadow.reported(PK, DN)).toEqual({ batteryLevel: { value: 10, time: 1000 + 300_000 } });
    shadow.observe(raw(), [rec('property', 400_000, { batteryLevel: 11 })]);
    shadow.flush();
    expect(shadow.reported(PK, DN)).toEqual({ batteryLevel: { value: 11, time: 400_000 } });
  });

  it('survives a restart: reported values are on disk once flushed', async () => {
    shadow.observe(raw(), [rec('property', 1000, { speed: 3 })]);
    await shadow.stop(); // writes what is pending
    shadow = await open();
    expect(shadow.reported(PK, DN)).toEqual({ speed: { value: 3, time: 1000 } });
  });

  it('desired: a property set is desired until replied; its value becomes reported only when the device reports it', async () => {
    const c = downlink.submit(PK, DN, { method: PROPERTY_SET_METHOD, params: { workMode: 1 } }, 'api');
    expect(shadow.desired(PK, DN)).toEqual({ workMode: { value: 1, commandId: c.id, since: c.createdAt } });
    expect(shadow.commands(PK, DN)).toEqual([{ id: c.id, method: PROPERTY_SET_METHOD, state: 'queued', createdAt: c.createdAt, expiresAt: c.expiresAt, attempts: 0, params: { workMode: 1 } }]);

    // Sent and delivered: still desired (not answered yet).
    downlink.markSent(c.id, 'mqtt');
    downlink.markDelivered(c.id);
    expect(shadow.desired(PK, DN)).toEqual({ workMode: { value: 1, commandId: c.id, since: c.createdAt } });
    expect(shadow.commands(PK, DN).map((x) => x.state)).toEqual(['delivered']);

    // Replied ok: gone from desired and from the open queue; not reported yet.
    const reply = Buffer.from(JSON.stringify({ id: c.msgId, code: 200, data: {} }));
    await downlink.reply(raw({ topic: `/sys/${PK}/${DN}/thing/service/property/set_reply`, route: { type: 'command-reply', method: PROPERTY_SET_METHOD }, payload: reply }), registry.product(PK)!, PROPERTY_SET_METHOD);
    expect(shadow.desired(PK, DN)).toEqual({});
    expect(shadow.commands(PK, DN)).toEqual([]);
    expect(shadow.reported(PK, DN)).toEqual({});
    shadow.observe(raw(), [rec('property', 3000, { workMode: 1 })]);
    expect(shadow.reported(PK, DN)).toEqual({ workMode: { value: 1, time: 3000 } });
  });

  it('desired: the newest open set wins per property; cancelled and error-replied sets leave it', async () => {
    const older = downlink.submit(PK, DN, { method: PROPERTY_SET_METHOD, params: { workMode: 1 } }, 'api');
    const newer = downlink.submit(PK, DN, { method: PROPERTY_SET_METHOD, params: { workMode: 2 } }, 'api');
    const service = downlink.submit(PK, DN, { raw: '0102' }, 'api');
    expect(shadow.desired(PK, DN)).toEqual({ workMode: { value: 2, commandId: newer.id, since: newer.createdAt } });
    expect(shadow.commands(PK, DN).map((x) => x.id)).toEqual([older.id, newer.id, service.id]);

    // Cancelling the newer one brings the older, still open, value back.
    downlink.cancel(newer.id);
    expect(shadow.desired(PK, DN)).toEqual({ workMode: { value: 1, commandId: older.id, since: older.createdAt } });

    const refusal = Buffer.from(JSON.stringify({ id: older.msgId, code: 460, message: 'busy' }));
    await downlink.reply(raw({ topic: `/sys/${PK}/${DN}/thing/service/property/set_reply`, route: { type: 'command-reply', method: PROPERTY_SET_METHOD }, payload: refusal }), registry.product(PK)!, PROPERTY_SET_METHOD);
    expect(shadow.desired(PK, DN)).toEqual({});
    expect(shadow.commands(PK, DN).map((x) => x.id)).toEqual([service.id]);
  });
});
