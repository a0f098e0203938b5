import { describe, expect, it } from 'vitest';
import type { FleetOptions, RunResult } from '../../../simulators/lib/fleet.js';
import { judgeStep, runRamp } from '../../../simulators/lib/ramp.js';
import { Latency } from '../../../simulators/lib/stats.js';

/** A pretend gateway that acknowledges up to `capacity` msgs/s with latency growing near it. */
function fakeGateway(capacity: number) {
  const offered: number[] = [];
  const runStep = async (o: FleetOptions): Promise<RunResult> => {
    const rate = o.rate!;
    offered.push(rate);
    const achieved = Math.min(rate, capacity);
    const lat = new Latency();
    lat.recordMs(rate > capacity ? 500 : 5);
    const durationS = o.durationMs / 1000;
    return {
      fleet: o.fleet, durationS, sent: Math.round(rate * durationS), acked: Math.round(achieved * durationS), errors: {}, retransmissions: 0,
      faults: {}, refusalsExpected: 0, unexpectedRefusals: 0, unexpectedSamples: [], unanswered: 0, throughput: { meanPerS: achieved, peakPerS: achieved, perSecond: [] },
      ackLatencyMs: lat.summary(), coapAuth: null, endToEnd: null,
    };
  };
  return { offered, runStep };
}

const base = { fleet: { nbiot: 1, cat1: 0, redcap: 0 }, durationMs: 10_000 } as FleetOptions;

describe('ramp', () => {
  it('steps up by the factor and stops at the first step that breaks a bound', async () => {
    const gw = fakeGateway(1000);
    const r = await runRamp({ base, startRate: 100, stepFactor: 2, maxRate: 100_000, maxLoss: 0, maxP99Ms: 200, log: () => {}, runStep: gw.runStep });
    expect(gw.offered).toEqual([100, 200, 400, 800, 1600]);
    expect(r.found).toBe(true);
    expect(r.saturation?.offeredPerS).toBe(800);
    expect(r.steps.at(-1)!.ok).toBe(false);
    expect(r.steps.at(-1)!.broke.join()).toMatch(/p99 500(\.\d+)? ms > 200 ms/);
  });

  it('says the saturation is above max-rate when nothing broke', async () => {
    const gw = fakeGateway(1e9);
    const r = await runRamp({ base, startRate: 100, stepFactor: 10, maxRate: 10_000, maxLoss: 0, maxP99Ms: 200, log: () => {}, runStep: gw.runStep });
    expect(gw.offered).toEqual([100, 1000, 10_000]);
    expect(r.found).toBe(false);
  });

  it('a step that falls behind the offered rate fails even with low latency', () => {
    const lat = new Latency();
    lat.recordMs(1);
    const r = { durationS: 10, acked: 9000, sent: 10_000, errors: {}, endToEnd: null, ackLatencyMs: lat.summary() } as unknown as RunResult;
    const step = judgeStep(1000, r, 1, 200);
    expect(step.achievedPerS).toBe(900);
    expect(step.ok).toBe(false);
    expect(step.broke[0]).toMatch(/acknowledged 900\/s of 1000\/s/);
  });
});
