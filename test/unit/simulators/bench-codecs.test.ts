// The benchmark harness itself (not the speed: figures come from `npm run bench:codecs`).
import { describe, expect, it } from 'vitest';
import { loadRegistry } from '../../../src/registry/index.js';
import { formatCodecTable, measure, runCodecBench, sampleCases, setDevicesDir } from '../../../simulators/bench/codecs.js';
import { DEVICES_DIR } from '../../helpers/gateway.js';

describe('codec bench harness', () => {
  setDevicesDir(DEVICES_DIR);
  it('measures every sample case against its baseline and judges the target', () => {
    const registry = loadRegistry(DEVICES_DIR);
    const results = runCodecBench(sampleCases(), (pk) => registry.product(pk)!, 20);
    expect(results.map((r) => r.codec)).toEqual(sampleCases().map((c) => c.codec));
    for (const r of results) {
      expect(r.ratePerS).toBeGreaterThan(0);
      if (r.bare) expect(r.ratio).toBeCloseTo(r.ratePerS / r.bareRatePerS!, 1);
    }
    const table = formatCodecTable(results).split('\n');
    expect(table[0]).toMatch(/^\| codec +\| product/);
    expect(table).toHaveLength(results.length + 2);
  });

  it('refuses a bench payload that does not decode', () => {
    const registry = loadRegistry(DEVICES_DIR);
    const broken = [{ ...sampleCases()[0]!, payload: Buffer.from('01', 'hex') }];
    expect(() => runCodecBench(broken, (pk) => registry.product(pk)!, 5)).toThrow(/does not decode/);
  });

  it('measure counts calls per second', () => {
    let n = 0;
    const rate = measure(() => n++, 30);
    expect(rate).toBeGreaterThan(0);
    expect(n).toBeGreaterThan(0);
  });
});
