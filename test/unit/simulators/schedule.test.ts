// PSM wake-up schedule, the PsmDevice driver (fake timers) and the fixed-rate pacer.
import { afterEach, describe, expect, it, vi } from 'vitest';
import { PSM_NEXT, PsmDevice, PsmSchedule, RatePacer, type PsmState } from '../../../simulators/lib/schedule.js';

/** A deterministic uniform [0, 1) sequence (LCG), so jitter takes many different values. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1_664_525) + 1_013_904_223) >>> 0) / 2 ** 32;
}

describe('PsmSchedule', () => {
  it('spreads first wakes over one interval and keeps later ones within ±jitter', () => {
    const s = new PsmSchedule({ intervalMs: 60_000, jitter: 0.1, activeWindowMs: 10_000, random: lcg(1) });
    const first = Array.from({ length: 1000 }, () => s.firstWakeDelay());
    expect(Math.min(...first)).toBeGreaterThanOrEqual(0);
    expect(Math.max(...first)).toBeLessThan(60_000);
    expect(Math.max(...first) - Math.min(...first)).toBeGreaterThan(50_000); // actually spread
    const next = Array.from({ length: 1000 }, () => s.nextWakeDelay());
    expect(Math.min(...next)).toBeGreaterThanOrEqual(54_000);
    expect(Math.max(...next)).toBeLessThanOrEqual(66_000);
    expect(Math.max(...next) - Math.min(...next)).toBeGreaterThan(10_000);
  });

  it('maps random 0 and 1 to the jitter bounds', () => {
    expect(new PsmSchedule({ intervalMs: 1000, jitter: 0.2, activeWindowMs: 0, random: () => 0 }).nextWakeDelay()).toBe(800);
    expect(new PsmSchedule({ intervalMs: 1000, jitter: 0.2, activeWindowMs: 0, random: () => 0.5 }).nextWakeDelay()).toBe(1000);
  });

  it('rejects nonsense', () => {
    expect(() => new PsmSchedule({ intervalMs: 0, jitter: 0, activeWindowMs: 0 })).toThrow(RangeError);
    expect(() => new PsmSchedule({ intervalMs: 10, jitter: 1.5, activeWindowMs: 0 })).toThrow(RangeError);
  });

  it('cycles psm → connected → active → psm', () => {
    const seen: PsmState[] = ['psm'];
    for (let i = 0; i < 3; i++) seen.push(PSM_NEXT[seen[i]!]);
    expect(seen).toEqual(['psm', 'connected', 'active', 'psm']);
  });
});

describe('PsmDevice', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('wakes at firstWakeDelay, then wake-to-wake every interval ± jitter, through connected → active → psm', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const interval = 10_000;
    const schedule = new PsmSchedule({ intervalMs: interval, jitter: 0.1, activeWindowMs: 2_000, random: lcg(7) });
    const first = new PsmSchedule({ intervalMs: interval, jitter: 0.1, activeWindowMs: 2_000, random: lcg(7) }).firstWakeDelay();
    const wakesAt: number[] = [];
    let device: PsmDevice;
    const states: PsmState[] = [];
    device = new PsmDevice(schedule, async () => {
      wakesAt.push(performance.now());
      states.push(device.state);
      await new Promise((r) => setTimeout(r, 500)); // the uplink takes 500 ms
    });
    const t0 = performance.now();
    device.start();
    device.start(); // idempotent: still one loop
    expect(device.state).toBe('psm');

    await vi.advanceTimersByTimeAsync(first - 1);
    expect(device.wakes).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    expect(device.wakes).toBe(1);
    expect(device.state).toBe('connected');
    await vi.advanceTimersByTimeAsync(500);
    expect(device.state).toBe('active');
    await vi.advanceTimersByTimeAsync(1_999);
    expect(device.state).toBe('active');
    await vi.advanceTimersByTimeAsync(1);
    expect(device.state).toBe('psm');

    await vi.advanceTimersByTimeAsync(20 * interval);
    device.stop();
    expect(wakesAt[0]! - t0).toBeCloseTo(first, 3);
    expect(states.every((s) => s === 'connected')).toBe(true);
    const gaps = wakesAt.slice(1).map((w, i) => w - wakesAt[i]!);
    expect(gaps.length).toBeGreaterThanOrEqual(18);
    for (const g of gaps) {
      expect(g).toBeGreaterThanOrEqual(interval * 0.9);
      expect(g).toBeLessThanOrEqual(interval * 1.1);
    }
    expect(new Set(gaps).size).toBeGreaterThan(1); // jitter is applied
  });

  it('wakes immediately when uplink plus active window overrun the interval', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const schedule = new PsmSchedule({ intervalMs: 1_000, jitter: 0, activeWindowMs: 800, random: () => 0 });
    const wakesAt: number[] = [];
    const device = new PsmDevice(schedule, async () => {
      wakesAt.push(performance.now());
      await new Promise((r) => setTimeout(r, 700));
    });
    device.start();
    await vi.advanceTimersByTimeAsync(6_000);
    device.stop();
    // Each wake follows the previous one by uplink + window (1500 ms), not by the 1000 ms interval;
    // a zero delay still goes through setTimeout, which Node (and the fake) rounds up to 1 ms.
    expect(wakesAt.length).toBeGreaterThanOrEqual(4);
    const gaps = wakesAt.slice(1).map((w, i) => w - wakesAt[i]!);
    for (const g of gaps) {
      expect(g).toBeGreaterThanOrEqual(1_500);
      expect(g).toBeLessThanOrEqual(1_501);
    }
  });

  it('counts failing uplinks (throwing or rejecting) and keeps cycling', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const schedule = new PsmSchedule({ intervalMs: 1_000, jitter: 0, activeWindowMs: 100, random: () => 0 });
    let n = 0;
    const device = new PsmDevice(schedule, () => {
      n++;
      if (n % 2 === 0) throw new Error('sync failure');
      return Promise.reject(new Error('async failure'));
    });
    device.start();
    await vi.advanceTimersByTimeAsync(3_500);
    expect(device.wakes).toBe(4);
    expect(device.failures).toBe(4);
    expect(device.state).toBe('psm');
    device.stop();
  });

  it('stop() cancels its timers, including while an uplink is in flight', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const schedule = new PsmSchedule({ intervalMs: 1_000, jitter: 0, activeWindowMs: 100, random: () => 0.5 });
    let release: () => void = () => {};
    const device = new PsmDevice(schedule, () => new Promise<void>((r) => (release = r)));
    device.start();
    expect(vi.getTimerCount()).toBe(1);
    device.stop();
    expect(vi.getTimerCount()).toBe(0);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(device.wakes).toBe(0);

    device.start(); // restartable
    await vi.advanceTimersByTimeAsync(500);
    expect(device.state).toBe('connected');
    device.stop();
    release(); // the in-flight uplink finishing after stop() schedules nothing
    await vi.advanceTimersByTimeAsync(0);
    expect(vi.getTimerCount()).toBe(0);
    expect(device.state).toBe('psm');
    expect(device.wakes).toBe(1);
  });

  it('uses injected timers', () => {
    const calls: number[] = [];
    const timers = { setTimeout: (_fn: () => void, ms: number) => (calls.push(ms), calls.length), clearTimeout: (h: unknown) => calls.push(-(h as number)), now: () => 0 };
    const device = new PsmDevice(new PsmSchedule({ intervalMs: 1_000, jitter: 0, activeWindowMs: 0, random: () => 0.25 }), async () => {}, timers);
    device.start();
    device.stop();
    expect(calls).toEqual([250, -1]);
  });
});

describe('RatePacer', () => {
  it('yields 1234 ± 1 sends over 10 simulated seconds at 123.4/s, ticking irregularly', () => {
    const pacer = new RatePacer(123.4);
    const step = lcg(3);
    let total = pacer.due(0);
    let now = 0;
    while (now < 10_000) {
      now = Math.min(10_000, now + 1 + step() * 20);
      total += pacer.due(now);
    }
    expect(Math.abs(total - 1234)).toBeLessThanOrEqual(1);
  });

  it('does not burst more than one second worth after a stall', () => {
    const pacer = new RatePacer(100);
    pacer.due(0);
    expect(pacer.due(10)).toBe(1);
    expect(pacer.due(60_010)).toBe(100); // 60 s stall: one second's worth, not 6000
    expect(pacer.due(60_020)).toBe(1); // then back to the steady rate
  });

  it('carries fractions for rates below one per second, and ignores a clock step back', () => {
    const pacer = new RatePacer(0.5);
    pacer.due(0);
    expect(pacer.due(1_000)).toBe(0);
    expect(pacer.due(2_000)).toBe(1);
    expect(pacer.due(1_000)).toBe(0);
    expect(pacer.due(4_000)).toBe(1);
    expect(() => new RatePacer(0)).toThrow(RangeError);
  });
});
