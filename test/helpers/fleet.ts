// Fleet options for the simulator tests that run `runFleet` against an in-process gateway: the
// gateway's addresses, the demo application account upstream, and short PSM timings, so a test
// states only what it is about (fleet size, duration, seed ...).

import type { FleetOptions } from '../../simulators/lib/fleet.js';
import type { Gateway } from '../../src/gateway.js';

export function fleetOptions(gw: Gateway, devicesDir: string, overrides: Partial<FleetOptions> = {}): FleetOptions {
  const a = gw.addresses();
  return {
    devicesDir,
    coap: `coap://127.0.0.1:${a.coap.port}`,
    mqtt: `mqtt://127.0.0.1:${a.mqtt.port}`,
    upstream: { url: `mqtt://127.0.0.1:${a.mqtt.port}`, topic: 'wanwu/#', username: 'app', password: 'wanwu-demo' },
    fleet: { nbiot: 300, cat1: 60, redcap: 30 },
    durationMs: 4000,
    intervalMs: { 'nb-iot': 1000, cat1: 500, redcap: 200 },
    jitter: 0.2,
    activeWindowMs: 500,
    confirmable: true,
    coapTiming: { ackTimeoutMs: 1000 },
    qos: 1,
    keepaliveS: 60,
    faults: { invalidRate: 0, malformedRate: 0, duplicateRate: 0 },
    seed: 7,
    drainMs: 10_000,
    ...overrides,
  };
}
