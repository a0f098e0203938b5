// wanwu-sim's NB-IoT devices take commands over CoAP (simulators/lib/coap-commands.ts): a small fleet
// against an in-process gateway with commands queued before the run. WaterMeterNB gets them pushed
// (product.json "downlink": {"coap": "push"}); a copy of TrackerCat1 turned NB-IoT (Alink JSON over
// CoAP) gets them piggybacked in the answers to its uplinks and replies {"id","code":200}.

import { fleetOptions } from '../helpers/fleet.js';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { runFleet } from '../../simulators/lib/fleet.js';
import { tempDir } from '../helpers/index.js';
import { DEVICES_DIR, startGateway } from '../helpers/gateway.js';

function patchProduct(devicesDir: string, productKey: string, patch: Record<string, unknown>): void {
  const file = join(devicesDir, productKey, 'product.json');
  writeFileSync(file, JSON.stringify({ ...JSON.parse(readFileSync(file, 'utf8')), ...patch }));
}

describe('wanwu-sim NB-IoT devices and commands', () => {
  const dir = tempDir('wanwu-sim-commands-');
  const devicesDir = join(dir.path, 'devices');
  let gw: Gateway;

  beforeAll(async () => {
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    patchProduct(devicesDir, 'WaterMeterNB', { downlink: { coap: 'push', windowS: 2 } });
    patchProduct(devicesDir, 'TrackerCat1', { rat: 'nb-iot' });
    gw = await startGateway(dir.path, [], { devicesDir });
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  it('acknowledges pushed commands, reads piggybacked ones, and replies to the Alink JSON ones', async () => {
    const downlink = gw.downlink()!;
    const raw = downlink.submit('WaterMeterNB', 'wm-0001', { raw: '0102' }, 'api');
    const sets = ['tr-0001', 'tr-0002', 'tr-0003'].map((dn) => downlink.submit('TrackerCat1', dn, { method: 'thing.service.property.set', params: { workMode: 1 } }, 'api'));
    const r = await runFleet(
      // The 12 NB-IoT devices: 3 each of AlarmNB, SoilNB, TrackerCat1 (here NB-IoT) and WaterMeterNB.
      fleetOptions(gw, devicesDir, { upstream: undefined, fleet: { nbiot: 12, cat1: 0, redcap: 0 }, durationMs: 1500, intervalMs: { 'nb-iot': 300, cat1: 1000, redcap: 1000 }, activeWindowMs: 100, seed: 5, drainMs: 5_000 }),
    );
    expect(r.errors).toEqual({});
    expect(r.acked).toBe(r.sent);
    expect(r.commands).toMatchObject({ piggybacked: 3, pushed: 1, replied: 3, replyErrors: 0 });
    for (const c of sets) expect(downlink.get(c.id)).toMatchObject({ state: 'replied-ok', via: 'coap-piggyback' });
    expect(downlink.get(raw.id)).toMatchObject({ state: 'delivered', via: 'coap-push' });
  });
});
