import { describe, expect, it } from 'vitest';
import type { RunResult } from '../../../simulators/lib/fleet.js';
import { formatRun, parseLoss, verdict } from '../../../simulators/lib/report.js';
import { AuthStats, Latency, lossRatio, RateSeries, RunStats } from '../../../simulators/lib/stats.js';
import { parseDuration, parseFraction } from '../../../simulators/lib/options.js';

function result(over: Partial<RunResult> = {}): RunResult {
  return {
    fleet: { nbiot: 10, cat1: 2, redcap: 1 },
    durationS: 10,
    sent: 1000,
    acked: 1000,
    errors: {},
    retransmissions: 0,
    faults: {},
    refusalsExpected: 0,
    unexpectedRefusals: 0,
    unexpectedSamples: [],
    unanswered: 0,
    throughput: { meanPerS: 100, peakPerS: 110, perSecond: [] },
    ackLatencyMs: new Latency().summary(),
    coapAuth: null,
    endToEnd: null,
    ...over,
  };
}

describe('Latency (HDR histogram)', () => {
  it('reports percentiles of 1..1000 ms within 0.1%', () => {
    const l = new Latency();
    for (let i = 1; i <= 1000; i++) l.recordMs(i);
    const s = l.summary();
    expect(s.count).toBe(1000);
    expect(s.p50).toBeCloseTo(500, -0.5);
    expect(Math.abs(s.p99 - 990) / 990).toBeLessThan(0.001);
    expect(Math.abs(s.p999 - 999) / 999).toBeLessThan(0.001);
    expect(Math.abs(s.max - 1000) / 1000).toBeLessThan(0.001);
    expect(s.mean).toBeCloseTo(500.5, 0);
  });

  it('keeps sub-millisecond samples to the microsecond and merges histograms', () => {
    const a = new Latency();
    const b = new Latency();
    a.recordMs(0.25);
    b.recordMs(0.75);
    a.add(b);
    expect(a.count).toBe(2);
    expect(a.summary().max).toBeCloseTo(0.75, 3);
    expect(a.summary().p50).toBeCloseTo(0.25, 3);
  });

  it('is all zeros when empty', () => {
    expect(new Latency().summary()).toEqual({ count: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0 });
  });
});

describe('RateSeries and RunStats', () => {
  it('buckets marks per whole second and fills silent seconds with 0', () => {
    const r = new RateSeries(1000);
    r.mark(1000);
    r.mark(1999);
    r.mark(3500, 3);
    expect(r.values(4000)).toEqual([2, 0, 3]);
    expect(r.values(4200)).toEqual([2, 0, 3]);
    expect(r.values(5000)).toEqual([2, 0, 3, 0]);
  });

  it('counts errors by code', () => {
    const s = new RunStats(0);
    s.error('5.03');
    s.error('5.03');
    s.error('timeout');
    expect(s.errorCount()).toBe(3);
    expect(s.errors.get('5.03')).toBe(2);
  });

  it('loss never goes negative and is 0 with nothing expected', () => {
    expect(lossRatio(100, 97)).toBeCloseTo(0.03);
    expect(lossRatio(100, 120)).toBe(0);
    expect(lossRatio(0, 5)).toBe(0);
  });
});

describe('--max-loss and the verdict', () => {
  it('parses fractions and percentages, and refuses nonsense', () => {
    expect(parseLoss('0')).toBe(0);
    expect(parseLoss('0.001')).toBe(0.001);
    expect(parseLoss('0.5%')).toBeCloseTo(0.005);
    expect(() => parseLoss('2')).toThrow(/fraction/);
    expect(() => parseLoss('-1%')).toThrow();
    expect(() => parseLoss('lots')).toThrow();
  });

  it('fails on upstream loss above the bound and passes at it', () => {
    const e2e = { expected: 1000, received: 999, lost: 1, lossRatio: 0.001, duplicates: 0, foreign: 0, latencyMs: new Latency().summary() };
    expect(verdict(result({ endToEnd: e2e }), 0).pass).toBe(false);
    expect(verdict(result({ endToEnd: e2e }), 0).reasons[0]).toMatch(/loss 0\.1% \(1 of 1000 records\)/);
    expect(verdict(result({ endToEnd: e2e }), 0.001).pass).toBe(true);
  });

  it('counts unacknowledged messages as loss, except those sent to be refused', () => {
    expect(verdict(result({ acked: 990 }), 0).pass).toBe(false);
    expect(verdict(result({ acked: 990, faults: { invalid: 6, malformed: 4 }, refusalsExpected: 10 }), 0).pass).toBe(true);
    expect(verdict(result({ acked: 990, faults: { invalid: 6, malformed: 4 }, refusalsExpected: 9 }), 0).pass).toBe(false);
    expect(verdict(result({ acked: 990, faults: { duplicate: 10 } }), 0).pass).toBe(false);
  });

  it('prints counts, errors by code, latency rows and the verdict', () => {
    const text = formatRun(result({ acked: 998, errors: { '5.03': 2 } }), { pass: false, reasons: ['x'] });
    expect(text).toMatch(/acknowledged\s+998/);
    expect(text).toMatch(/ {2}5\.03\s+2/);
    expect(text).toMatch(/acknowledgement/);
    expect(text.trim().endsWith('FAIL: x')).toBe(true);
    expect(text).not.toMatch(/\/auth/);
  });

  it('prints the CoAP /auth exchanges apart from the uplinks', () => {
    const auth = new AuthStats();
    auth.sent = 12;
    auth.answered('2.05', 3, 0);
    for (let i = 0; i < 10; i++) auth.answered('2.05', 1, 1);
    auth.answered('timeout', 93_000, 4);
    auth.renewedAfter401 = 2;
    const summary = auth.summary();
    expect(summary).toMatchObject({ sent: 12, ok: 11, errors: { timeout: 1 }, retransmissions: 14, renewedAfter401: 2, latencyMs: { count: 11 } });
    const text = formatRun(result({ coapAuth: summary }), { pass: true, reasons: [] });
    expect(text).toMatch(/CoAP \/auth exchanges \(not uplinks\)\s+12/);
    expect(text).toMatch(/answered 2\.05\s+11/);
    expect(text).toMatch(/ {2}timeout\s+1/);
    expect(text).toMatch(/uplinks sent again after 4\.01\s+2/);
    expect(text).toMatch(/CoAP \/auth\s+11\s/);
    // The uplink counts are untouched by the /auth exchanges.
    expect(text).toMatch(/sent\s+1000/);
    expect(text).toMatch(/acknowledged\s+1000/);
  });
});

describe('option parsing', () => {
  it('reads durations with units, bare numbers as seconds', () => {
    expect(parseDuration('60s')).toBe(60_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('250ms')).toBe(250);
    expect(parseDuration('2')).toBe(2000);
    expect(() => parseDuration('soon')).toThrow(/--duration/);
  });

  it('refuses fractions out of 0..1', () => {
    expect(parseFraction('0.25', 'jitter')).toBe(0.25);
    expect(() => parseFraction('1.5', 'jitter')).toThrow(/--jitter/);
  });
});
