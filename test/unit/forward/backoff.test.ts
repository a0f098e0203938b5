import { afterEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay } from '../../../src/forward/index.js';

describe('reconnect backoff', () => {
  it('doubles from the minimum up to the cap', () => {
    const top = (attempt: number) => backoffDelay(attempt, 500, 30_000, () => 1);
    expect([0, 1, 2, 3, 4, 5, 6, 7, 50].map(top)).toEqual([500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]);
  });

  it('jitters within [ceiling/2, ceiling]', () => {
    expect(backoffDelay(3, 500, 30_000, () => 0)).toBe(2000);
    expect(backoffDelay(3, 500, 30_000, () => 0.5)).toBe(3000);
    for (let i = 0; i < 1000; i++) {
      const d = backoffDelay(4, 500, 30_000);
      expect(d).toBeGreaterThanOrEqual(4000);
      expect(d).toBeLessThanOrEqual(8000);
    }
  });

  describe('with fake timers', () => {
    afterEach(() => {
      vi.useRealTimers();
    });
    it('a schedule built from it fires attempts at the expected times', () => {
      vi.useFakeTimers();
      const fired: number[] = [];
      const start = Date.now();
      let attempt = 0;
      const schedule = () => {
        setTimeout(() => {
          fired.push(Date.now() - start);
          if (++attempt < 5) schedule();
        }, backoffDelay(attempt, 100, 1000, () => 1));
      };
      schedule();
      vi.advanceTimersByTime(10_000);
      // 100, +200, +400, +800, +1000 (capped)
      expect(fired).toEqual([100, 300, 700, 1500, 2500]);
    });
  });
});
