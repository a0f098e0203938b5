// wanwu-sim's NB-IoT devices of a product with "coapEncryption": "aes-128-cbc" encrypt their uplinks
// (simulators/lib/coap-crypto.ts): a small fleet against an in-process gateway in coap.auth.mode
// "required", whose WaterMeterNB encrypts; every uplink is accepted and every record arrives. A
// device sending in clear would get 4.01 WANWU_ERR_DECRYPT, which the run counts as an error.

import { fleetOptions } from '../helpers/fleet.js';
import { cpSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Gateway } from '../../src/gateway.js';
import { runFleet } from '../../simulators/lib/fleet.js';
import { tempDir } from '../helpers/index.js';
import { DEVICES_DIR, startGateway } from '../helpers/gateway.js';

describe('wanwu-sim fleet with an encrypting NB-IoT product', () => {
  const dir = tempDir('wanwu-sim-encryption-');
  const devicesDir = join(dir.path, 'devices');
  let gw: Gateway;

  beforeAll(async () => {
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    const productFile = join(devicesDir, 'WaterMeterNB', 'product.json');
    writeFileSync(productFile, JSON.stringify({ ...JSON.parse(readFileSync(productFile, 'utf8')), coapEncryption: 'aes-128-cbc' }));
    gw = await startGateway(dir.path, [{ name: 'local', url: 'local' }], { devicesDir, coap: { host: '127.0.0.1', port: 0, auth: { mode: 'required' } } });
  });

  afterAll(async () => {
    await gw?.stop();
    dir.cleanup();
  });

  it('encrypts the uplinks of that product, and the gateway takes every one', async () => {
    const r = await runFleet(
      // The 9 demo NB-IoT devices: 3 each of WaterMeterNB (encrypting), AlarmNB and SoilNB (in clear).
      fleetOptions(gw, devicesDir, { fleet: { nbiot: 9, cat1: 0, redcap: 0 }, durationMs: 2000, intervalMs: { 'nb-iot': 300, cat1: 1000, redcap: 1000 }, activeWindowMs: 100, seed: 11 }),
    );
    expect(r.errors).toEqual({});
    expect(r.sent).toBeGreaterThan(9);
    expect(r.acked).toBe(r.sent);
    expect(r.endToEnd!.lost).toBe(0);
    const status = gw.status();
    expect(status.listeners.coap!.auth!.refused.undecryptable).toBe(0);
    expect(status.ingest.records.total).toBe(r.endToEnd!.received);
  });
});
