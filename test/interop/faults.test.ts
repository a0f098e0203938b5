// Fault tests: real mosquitto upstreams, the gateway as a child process.
import { afterEach, describe, expect, it } from 'vitest';
import { runKill9Soak } from '../../simulators/soak/kill9.js';
import { DEVICES_DIR } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';
import { Mosquitto, skipInterop } from './helpers.js';

describe.skipIf(skipInterop)('faults (real mosquitto, gateway as a child process)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  it('kill -9 at random moments during ingest, 20 times: zero acknowledged records lost', { timeout: 120_000 }, async () => {
    const dir = tempDir('wanwu-kill9-');
    cleanups.push(() => dir.cleanup());
    const broker = new Mosquitto(dir.path);
    await broker.start();
    cleanups.push(() => broker.stop());
    const result = await runKill9Soak({ cycles: 20, workDir: dir.path, devicesDir: DEVICES_DIR, upstreamUrl: broker.url });
    expect(result.acked).toBeGreaterThan(200);
    expect(result.lost).toEqual([]);
    expect(result.received).toBe(result.acked);
  });
});
