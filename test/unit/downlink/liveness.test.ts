// Device liveness with fake timers: the sweep timer runs on vitest's clock, the store is a real
// SQLite file (the restart case reopens it), the record buffer is a list.
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createLiveness, learnedInterval, timedState, type Liveness, type LivenessParams, type LivenessRecords } from '../../../src/downlink/liveness.js';
import { createProduct, type Product, type ProductLiveness, type Registry } from '../../../src/registry/index.js';
import type { Rat, RawMessage, TelemetryRecord, Transport } from '../../../src/types.js';
import { silentLogger, tempDir } from '../../helpers/index.js';

const T0 = Date.UTC(2025, 0, 1, 0, 0, 0);
const S = 1000;

function product(productKey: string, rat: Rat, liveness?: ProductLiveness, devices = ['d1', 'd2']): Product {
  return createProduct({
    dir: `devices/${productKey}`,
    product: { productKey, name: productKey, rat, codec: { type: 'alink-json' }, ...(liveness ? { liveness } : {}) },
    devices: devices.map((deviceName) => ({ deviceName, deviceSecret: `secret-${deviceName}` })),
  });
}

// MeterNB declares its schedule: every 600 s, offline 60 s after a missed report.
// ProbeNB declares nothing: its interval is learned (or the default). TrackerC1 keeps MQTT sessions.
const PRODUCTS = [
  product('MeterNB', 'nb-iot', { reportIntervalS: 600, toleranceS: 60, toleranceRatio: 0 }),
  product('ProbeNB', 'nb-iot'),
  product('TrackerC1', 'cat1', undefined, ['t1', 't2', 't3']),
];
const registry: Registry = {
  products: PRODUCTS,
  deviceCount: 7,
  warnings: [],
  product: (pk) => PRODUCTS.find((p) => p.productKey === pk),
  device: (pk, dn) => PRODUCTS.find((p) => p.productKey === pk)?.devices.get(dn),
};

// Config defaults except the learned-interval tolerance, kept small so times are easy to read.
const DEFAULTS: LivenessParams = { activeWindowS: 20, reportIntervalS: 86_400, toleranceS: 60, toleranceRatio: 0.5 };

const uplink = (productKey: string, deviceName: string, transport: Transport = 'coap'): RawMessage => ({
  transport, productKey, deviceName, topic: `/sys/${productKey}/${deviceName}/thing/model/up_raw`, route: { type: 'up-raw' },
  payload: Buffer.alloc(1), receivedAt: Date.now(), peer: '10.0.0.1:5683',
});

describe('device liveness', () => {
  let dir: ReturnType<typeof tempDir>;
  let records: TelemetryRecord[];
  const running: Liveness[] = [];

  const make = async (recordsMode?: LivenessRecords): Promise<Liveness> => {
    const l = createLiveness({
      ...(recordsMode === undefined ? {} : { recordChanges: recordsMode }),
      path: join(dir.path, 'commands.db'),
      registry,
      records: { append: async (rs) => void records.push(...rs) },
      logger: silentLogger,
      defaults: DEFAULTS,
      sweepMs: S,
    });
    await l.start();
    running.push(l);
    return l;
  };
  /** The records as `previous->state@since:reason` (seconds after T0), of one device or all. */
  const states = (pk?: string, dn?: string) => records.filter((r) => pk === undefined || (r.productKey === pk && r.deviceName === dn)).map((r) => `${r.data.previous}->${r.data.state}@${((r.data.since as number) - T0) / S}s:${r.data.reason}`);
  const at = (s: number) => vi.setSystemTime(T0 + s * S);
  /** Moves the fake clock to T0 + s seconds, running the sweep timer on the way. */
  const advanceTo = (s: number) => vi.advanceTimersByTime(T0 + s * S - Date.now());

  beforeEach(() => {
    vi.useFakeTimers({ now: T0 });
    dir = tempDir();
    records = [];
  });
  afterEach(async () => {
    for (const l of running.splice(0)) await l.stop();
    vi.useRealTimers();
    dir.cleanup();
  });

  it('the timed rule: online for the window, sleeping until the report is overdue by the tolerance, then offline', () => {
    const t = { windowMs: 20 * S, intervalMs: 600 * S, toleranceMs: 60 * S };
    expect(timedState(0, t, 19_999)).toEqual({ state: 'online', until: 20 * S });
    expect(timedState(0, t, 20 * S)).toEqual({ state: 'sleeping', until: 660 * S });
    expect(timedState(0, t, 660 * S - 1).state).toBe('sleeping');
    expect(timedState(0, t, 660 * S)).toEqual({ state: 'offline', until: Infinity });
    // An interval shorter than the window: straight from online to offline when the window ends.
    expect(timedState(0, { windowMs: 20 * S, intervalMs: 5 * S, toleranceMs: 0 }, 20 * S).state).toBe('offline');
  });

  it('the learned interval is the median of the last gaps, once there are three', () => {
    expect(learnedInterval([300, 300])).toBeNull();
    // One missed report (a double gap) and one alarm-triggered extra wake-up do not move it.
    expect(learnedInterval([300, 600, 300])).toBe(300);
    expect(learnedInterval([300, 40, 300, 600, 300])).toBe(300);
    expect(learnedInterval([100, 200, 300, 400])).toBe(250);
  });

  it('a CoAP device with a product interval: online -> sleeping -> offline at the right times, one record per change', async () => {
    const l = await make();
    expect(l.get('MeterNB', 'd1')).toEqual({ state: 'offline', since: null, lastSeen: null });

    l.observe(uplink('MeterNB', 'd1'));
    expect(l.get('MeterNB', 'd1')).toMatchObject({ state: 'online', since: T0, lastSeen: T0, expectedNextAt: T0 + 600 * S, intervalS: 600, intervalSource: 'product', mode: 'timed' });
    advanceTo(19);
    expect(l.get('MeterNB', 'd1').state).toBe('online');
    advanceTo(20);
    expect(l.get('MeterNB', 'd1')).toMatchObject({ state: 'sleeping', since: T0 + 20 * S });
    advanceTo(659);
    expect(l.get('MeterNB', 'd1').state).toBe('sleeping');
    advanceTo(660);
    expect(l.get('MeterNB', 'd1')).toMatchObject({ state: 'offline', since: T0 + 660 * S, lastSeen: T0 });
    expect(states()).toEqual(['offline->online@0s:uplink', 'online->sleeping@20s:window-ended', 'sleeping->offline@660s:report-overdue']);

    // The exact record: kind "state", its time the change's time, the device's transport and rat.
    expect(records[1]).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/), productKey: 'MeterNB', deviceName: 'd1', kind: 'state',
      ts: T0 + 20 * S, receivedAt: T0 + 20 * S, transport: 'coap', rat: 'nb-iot',
      data: { state: 'sleeping', previous: 'online', since: T0 + 20 * S, lastSeen: T0, reason: 'window-ended', expectedNextAt: T0 + 600 * S, intervalS: 600, intervalSource: 'product' },
    });

    // Back online with the next uplink; a second message in the window changes nothing.
    advanceTo(1000);
    l.observe(uplink('MeterNB', 'd1'));
    advanceTo(1010);
    l.observe(uplink('MeterNB', 'd1'));
    advanceTo(1025);
    expect(l.get('MeterNB', 'd1').state).toBe('online'); // the window restarted at 1010
    advanceTo(1030);
    expect(states().slice(3)).toEqual(['offline->online@1000s:uplink', 'online->sleeping@1030s:window-ended']);
    // The product's interval wins over the device's own gaps.
    expect(l.get('MeterNB', 'd1')).toMatchObject({ intervalSource: 'product', expectedNextAt: T0 + 1610 * S });
  });

  it('downlink.liveness.records "offline" sends only changes to and from offline upstream, "none" sends none; the states change all the same', async () => {
    for (const [mode, dn] of [['offline', 'd1'], ['none', 'd2']] as const) {
      records = [];
      const l = await make(mode);
      l.observe(uplink('MeterNB', dn));
      advanceTo(20);
      expect(l.get('MeterNB', dn).state).toBe('sleeping');
      advanceTo(660);
      expect(l.get('MeterNB', dn).state).toBe('offline');
      expect(states('MeterNB', dn)).toEqual(mode === 'offline' ? ['offline->online@0s:uplink', 'sleeping->offline@660s:report-overdue'] : []);
      await l.stop();
      running.splice(running.indexOf(l), 1);
      vi.setSystemTime(T0);
    }
  });

  it('a CoAP device without a product interval learns its own from its uplink gaps', async () => {
    const l = await make();
    // Wake-ups every 300 s; the message 5 s after the first belongs to the same wake-up.
    for (const s of [0, 5, 305, 605]) {
      advanceTo(s);
      l.observe(uplink('ProbeNB', 'd1'));
      l.observe(uplink('MeterNB', 'd2'));
    }
    // Two gaps so far: not trusted yet, the default (24 h) applies.
    expect(l.get('ProbeNB', 'd1')).toMatchObject({ intervalSource: 'default', intervalS: 86_400 });
    advanceTo(905);
    l.observe(uplink('ProbeNB', 'd1'));
    l.observe(uplink('MeterNB', 'd2'));
    expect(l.get('ProbeNB', 'd1')).toMatchObject({ state: 'online', intervalSource: 'learned', intervalS: 300, expectedNextAt: T0 + 1205 * S });
    // The same gaps on a product that declares its interval: the declared one is kept.
    expect(l.get('MeterNB', 'd2')).toMatchObject({ state: 'online', intervalSource: 'product', intervalS: 600, expectedNextAt: T0 + 1505 * S });

    // Tolerance: max(60 s, 0.5 x 300 s) = 150 s, so offline at 905 + 300 + 150 = 1355 s.
    records.length = 0;
    advanceTo(1354);
    expect(l.get('ProbeNB', 'd1').state).toBe('sleeping');
    advanceTo(1355);
    expect(states('ProbeNB', 'd1')).toEqual(['online->sleeping@925s:window-ended', 'sleeping->offline@1355s:report-overdue']);
    expect(records.filter((r) => r.productKey === 'ProbeNB').at(-1)!.data).toMatchObject({ intervalS: 300, intervalSource: 'learned', expectedNextAt: T0 + 1205 * S });
  });

  it('an MQTT device is online while its session is open, whatever the time, and offline when it ends', async () => {
    const l = await make();
    l.presence({ productKey: 'TrackerC1', deviceName: 't1', online: true, at: T0 });
    expect(l.get('TrackerC1', 't1')).toEqual({ state: 'online', since: T0, lastSeen: T0, mode: 'session' });
    advanceTo(2 * 3600);
    l.observe(uplink('TrackerC1', 't1', 'mqtt'));
    expect(l.get('TrackerC1', 't1')).toMatchObject({ state: 'online', since: T0, lastSeen: T0 + 2 * 3600 * S });
    // A takeover reports a second online without an offline between: no change.
    l.presence({ productKey: 'TrackerC1', deviceName: 't1', online: true, at: Date.now() });
    advanceTo(2 * 3600 + 30);
    l.presence({ productKey: 'TrackerC1', deviceName: 't1', online: false, at: Date.now(), reason: 'keepalive-timeout' });
    expect(l.get('TrackerC1', 't1')).toMatchObject({ state: 'offline', since: T0 + (2 * 3600 + 30) * S });
    // A publish whose commit finished after the session ended does not bring it back.
    l.observe(uplink('TrackerC1', 't1', 'mqtt'));
    expect(l.get('TrackerC1', 't1').state).toBe('offline');
    expect(states('TrackerC1', 't1')).toEqual(['offline->online@0s:session-open', `online->offline@${2 * 3600 + 30}s:keepalive-timeout`]);
    expect(records.every((r) => r.transport === 'mqtt' && r.rat === 'cat1' && !('expectedNextAt' in r.data))).toBe(true);
  });

  it('counts every registered device by state and rat, never-seen ones as offline', async () => {
    const l = await make();
    l.observe(uplink('MeterNB', 'd1'));
    l.observe(uplink('ProbeNB', 'd1'));
    l.presence({ productKey: 'TrackerC1', deviceName: 't1', online: true, at: T0 });
    advanceTo(30);
    l.observe(uplink('ProbeNB', 'd1'));
    // An unknown device is not tracked.
    l.observe(uplink('MeterNB', 'nobody'));
    expect(l.stats()).toEqual({
      byState: { online: 2, sleeping: 1, offline: 4 },
      byRat: { 'nb-iot': { online: 1, sleeping: 1, offline: 2 }, cat1: { online: 1, sleeping: 0, offline: 2 }, redcap: { online: 0, sleeping: 0, offline: 0 } },
      recordErrors: 0,
    });
  });

  it('a restart keeps sleeping devices sleeping, makes the changes that fell due while down, and ends MQTT sessions', async () => {
    const first = await make();
    first.observe(uplink('MeterNB', 'd1')); // online at 0 -> sleeping at 20 -> offline at 660
    first.observe(uplink('ProbeNB', 'd1')); // default interval 24 h: sleeping until long after the restart
    first.presence({ productKey: 'TrackerC1', deviceName: 't1', online: true, at: T0 });
    // ProbeNB d2 wakes every 25 s: learned after three gaps (tolerance max(60, 12.5) = 60 s).
    for (const s of [0, 25, 50, 75]) {
      advanceTo(s);
      first.observe(uplink('ProbeNB', 'd2'));
    }
    first.observe(uplink('MeterNB', 'd2')); // online when the gateway stops at 80
    advanceTo(80);
    await first.stop();
    running.splice(0);

    records = [];
    at(1000); // down for 920 s: no timer ran
    const second = await make();
    // MeterNB d1 slept through the restart and fell overdue at 660; d2 went through both changes, each at its time.
    expect(states('MeterNB', 'd1')).toEqual(['sleeping->offline@660s:report-overdue']);
    expect(states('MeterNB', 'd2')).toEqual(['online->sleeping@95s:window-ended', 'sleeping->offline@735s:report-overdue']);
    // ProbeNB d1 is still sleeping (no flip to offline and back), since the time it fell asleep.
    expect(states('ProbeNB', 'd1')).toEqual([]);
    expect(second.get('ProbeNB', 'd1')).toMatchObject({ state: 'sleeping', since: T0 + 20 * S, lastSeen: T0 });
    // ProbeNB d2 kept its learned interval: overdue at 75 + 25 + 60 = 160.
    expect(second.get('ProbeNB', 'd2')).toMatchObject({ state: 'offline', since: T0 + 160 * S, intervalSource: 'learned', intervalS: 25 });
    expect(states('TrackerC1', 't1')).toEqual(['online->offline@1000s:gateway-restart']);
  });

  it('a state record the buffer refuses (full) is counted; the state changes all the same', async () => {
    const l = createLiveness({
      path: join(dir.path, 'commands.db'), registry, logger: silentLogger, defaults: DEFAULTS, sweepMs: S,
      records: { append: () => Promise.reject(new Error('WANWU_ERR_BUFFER_FULL')) },
    });
    await l.start();
    running.push(l);
    l.observe(uplink('MeterNB', 'd1'));
    advanceTo(20);
    await vi.waitFor(() => expect(l.stats().recordErrors).toBe(2));
    expect(l.get('MeterNB', 'd1').state).toBe('sleeping');
  });

  it('writes liveness within a sweep, so a crash (no stop) loses at most one sweep', async () => {
    const first = await make();
    first.observe(uplink('MeterNB', 'd1'));
    advanceTo(1); // one sweep: written
    // Simulate kill -9: no stop(); the next process opens the same file.
    running.splice(0);
    records = [];
    at(21);
    await make();
    expect(states('MeterNB', 'd1')).toEqual(['online->sleeping@20s:window-ended']);
    await first.stop();
  });
});
