// wanwu-sim against a real gateway in this process: hundreds of simulated devices over CoAP and MQTT
// for a few seconds, end-to-end matching through the gateway's own upstream, zero loss expected.

import { fleetOptions } from '../helpers/fleet.js';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { main as sim } from '../../simulators/cli.js';
import { holdConnections, statusMemory } from '../../simulators/lib/connections.js';
import { runFleet, type FleetOptions } from '../../simulators/lib/fleet.js';
import { provisionDevices } from '../../simulators/lib/provision.js';
import { verdict } from '../../simulators/lib/report.js';
import { loadRegistry } from '../../src/registry/index.js';
import { tempDir } from '../helpers/index.js';
import { DEVICES_DIR, startGateway } from '../helpers/gateway.js';

describe('wanwu-sim fleet against an in-process gateway', () => {
  const dir = tempDir('wanwu-sim-');
  const devicesDir = join(dir.path, 'devices');
  let gw: Gateway;
  let base: FleetOptions;

  beforeAll(async () => {
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    provisionDevices(devicesDir, 120);
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], { devicesDir });
    base = fleetOptions(gw, devicesDir);
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  it('runs 390 devices on their schedules with every record upstream, matched to its device', async () => {
    const ticks: number[] = [];
    const r = await runFleet({ ...base, onTick: (t) => ticks.push(t.acked) });
    // NB-IoT: one wake per (uplink + active window) at most; MQTT devices every 0.5 s / 0.2 s.
    expect(r.sent).toBeGreaterThan(300 + 60 * 4 + 30 * 10);
    expect(r.acked).toBe(r.sent);
    expect(r.errors).toEqual({});
    expect(r.unanswered).toBe(0);
    expect(r.endToEnd).not.toBeNull();
    expect(r.endToEnd!.expected).toBe(r.acked);
    expect(r.endToEnd!.received).toBe(r.endToEnd!.expected);
    expect(r.endToEnd!.lost).toBe(0);
    expect(r.endToEnd!.foreign).toBe(0);
    expect(r.endToEnd!.latencyMs.count).toBe(r.endToEnd!.received);
    expect(r.ackLatencyMs.count).toBe(r.acked);
    expect(ticks.length).toBeGreaterThanOrEqual(3);
    expect(verdict(r, 0).pass).toBe(true);
    // The gateway saw the same traffic.
    const status = gw.status();
    expect(status.ingest.records.total).toBe(r.endToEnd!.received);
    // Every NB-IoT module authenticated once, at set-up, and kept its token across its wake-ups;
    // the /auth exchanges are counted apart from the uplinks (sent and acked above are uplinks only).
    expect(r.coapAuth).toMatchObject({ sent: 300, ok: 300, errors: {}, renewedAfter401: 0, latencyMs: { count: 300 } });
    const auth = status.listeners.coap!.auth!;
    expect(auth).toMatchObject({ mode: 'required', issued: 300, tokens: 300 });
    expect(auth.verified).toBeGreaterThan(300);
    expect(Object.values(auth.refused).reduce((a, b) => a + b, 0)).toBe(0);
  });

  it('counts injected faults by the gateway answer codes, and still loses nothing it accepted', async () => {
    const r = await runFleet({ ...base, fleet: { nbiot: 100, cat1: 20, redcap: 20 }, rate: 400, durationMs: 3000, faults: { invalidRate: 0.1, malformedRate: 0.1, duplicateRate: 0.1 } });
    const faults = (r.faults.invalid ?? 0) + (r.faults.malformed ?? 0);
    expect(faults).toBeGreaterThan(0);
    // Duplicates repeat the previous message, so a duplicate of a refused one is refused too.
    expect(r.refusalsExpected).toBeGreaterThanOrEqual(faults);
    expect(r.refusalsExpected).toBeLessThanOrEqual(faults + (r.faults.duplicate ?? 0));
    expect(r.faults.duplicate ?? 0).toBeGreaterThan(0);
    // CoAP refusals come back as 4.xx, MQTT ones as Alink reply codes.
    const refused = Object.entries(r.errors).filter(([code]) => code.startsWith('4.') || code.startsWith('alink-')).reduce((n, [, v]) => n + v, 0);
    expect(refused).toBe(r.refusalsExpected);
    expect(r.acked).toBe(r.sent - r.refusalsExpected);
    expect(r.unexpectedRefusals).toBe(0);
    expect(r.endToEnd!.lost).toBe(0);
    expect(r.endToEnd!.received).toBe(r.endToEnd!.expected);
    // Faults are refused on purpose: not loss.
    expect(verdict(r, 0).pass).toBe(true);
  });

  it('a fixed total rate is kept', async () => {
    const r = await runFleet({ ...base, fleet: { nbiot: 200, cat1: 0, redcap: 0 }, rate: 500, durationMs: 3000 });
    expect(r.sent).toBeGreaterThanOrEqual(1450);
    expect(r.sent).toBeLessThanOrEqual(1550);
    expect(r.endToEnd!.lost).toBe(0);
  });

  it('holds idle sessions and reads the gateway memory from /status', async () => {
    const a = gw.addresses();
    const devices = loadRegistry(devicesDir).products.flatMap((p) => [...p.devices.values()]);
    const r = await holdConnections({
      mqtt: `mqtt://127.0.0.1:${a.mqtt.port}`,
      devices,
      count: 300,
      localAddresses: ['127.0.0.2', '127.0.0.3'],
      connectRate: 3000,
      holdMs: 300,
      keepaliveS: 60,
      gatewayMemory: statusMemory(`http://127.0.0.1:${a.http.port}/status`),
    });
    expect(r.opened).toBe(300);
    expect(r.heldAtEnd).toBe(300);
    expect(r.failed).toEqual({});
    expect(r.gateway!.rssBeforeBytes).toBeGreaterThan(0);
    expect(r.gateway!.rssAfterBytes).toBeGreaterThan(0);
  });

  it('authenticates again after 4.01 when the gateway drops tokens, and loses nothing', async () => {
    // A second gateway that holds only 16 tokens for 24 modules: many uplinks find their token
    // evicted, get 4.01, and the module authenticates again and resends.
    const small = tempDir('wanwu-sim-tokens-');
    const tight = await startGateway(small.path, [{ name: 'local', url: 'local' }], { devicesDir, coap: { host: '127.0.0.1', port: 0, auth: { maxTokens: 16 } } });
    try {
      const r = await runFleet({
        ...fleetOptions(tight, devicesDir),
        fleet: { nbiot: 24, cat1: 0, redcap: 0 },
        rate: 60,
        durationMs: 1500,
      });
      expect(r.errors).toEqual({});
      expect(r.acked).toBe(r.sent);
      expect(r.endToEnd!.lost).toBe(0);
      const renewed = r.coapAuth!.renewedAfter401;
      expect(renewed).toBeGreaterThan(5);
      // One /auth per renewal, fewer when two uplinks of a module waited on the same one.
      expect(r.coapAuth!.ok).toBeGreaterThan(24);
      expect(r.coapAuth!.ok).toBeLessThanOrEqual(24 + renewed);
      const auth = tight.status().listeners.coap!.auth!;
      expect(auth.refused.unknownToken).toBe(renewed);
      expect(auth.evicted).toBeGreaterThan(0);
      expect(tight.status().ingest.records.coap).toBe(r.acked);
    } finally {
      await tight.stop();
      small.cleanup();
    }
  });

  it('--no-coap-auth sends plain uplinks, which a gateway with the default configuration refuses (4.01)', async () => {
    const r = await runFleet({ ...base, fleet: { nbiot: 10, cat1: 0, redcap: 0 }, rate: 50, durationMs: 500, drainMs: 2000, coapAuth: false });
    expect(r.coapAuth).toBeNull();
    expect(r.sent).toBeGreaterThan(0);
    expect(r.acked).toBe(0);
    expect(r.errors).toEqual({ '4.01': r.sent });
    expect(r.unexpectedSamples[0]).toMatchObject({ code: '4.01', message: expect.stringContaining('WANWU_ERR_TOKEN') });
    expect(verdict(r, 0).pass).toBe(false);
  });

  describe('the wanwu-sim command line', () => {
    const args = () => {
      const a = gw.addresses();
      return ['--coap', `coap://127.0.0.1:${a.coap.port}`, '--mqtt', `mqtt://127.0.0.1:${a.mqtt.port}`, '--upstream', `mqtt://127.0.0.1:${a.mqtt.port}`, '--devices', devicesDir, '--no-progress'];
    };

    it('run takes a profile file, writes the JSON report and exits 0 without loss', async () => {
      const profile = join(dir.path, 'profile.json');
      writeFileSync(profile, JSON.stringify({ nbiot: 20, cat1: 5, duration: '1s', interval: '300ms', activeWindow: '100ms', drain: '5s' }));
      const report = join(dir.path, 'report.json');
      const code = await sim(['node', 'wanwu-sim', 'run', ...args(), '--profile', profile, '--cat1', '3', '--report', report]);
      expect(code).toBe(0);
      const json = JSON.parse(readFileSync(report, 'utf8'));
      expect(json.mode).toBe('run');
      expect(json.pass).toBe(true);
      // The command line wins over the profile (cat1 3, not 5).
      expect(json.result.fleet).toEqual({ nbiot: 20, cat1: 3, redcap: 0 });
      expect(json.result.endToEnd.lost).toBe(0);
      expect(json.result.sent).toBeGreaterThan(20);
    });

    it('exits 1 when loss exceeds --max-loss (an upstream topic the records never reach)', async () => {
      const code = await sim(['node', 'wanwu-sim', 'run', ...args(), '--nbiot', '5', '--rate', '40', '--duration', '500ms', '--drain', '1s', '--upstream-topic', 'wanwu/nowhere/#', '--max-loss', '0.5']);
      expect(code).toBe(1);
    });

    it('exits 2 with a clear message on bad options', async () => {
      const code = await sim(['node', 'wanwu-sim', 'run', ...args(), '--nbiot', '5', '--duration', 'soon']);
      expect(code).toBe(2);
    });
  });
});
