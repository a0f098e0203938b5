import { describe, expect, it } from 'vitest';
import { GenerationalMap } from '../../../../src/transport/coap/dedup.js';

const LIFETIME = 247_000;

describe('GenerationalMap (RFC 7252 §4.5 de-duplication store)', () => {
  it('keeps an entry for at least the lifetime and drops it within lifetime + span', () => {
    // 3 generations: span = ceil(247 000 / 2) = 123 500 ms.
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, generations: 3, startMs: 0 });
    m.maintain(100_000);
    m.add('a', 'resp-a'); // added late in the first generation: the worst case for early expiry
    m.maintain(100_000 + LIFETIME);
    expect(m.get('a')).toBe('resp-a');
    m.maintain(3 * 123_500 - 1);
    expect(m.get('a')).toBe('resp-a');
    m.maintain(3 * 123_500);
    expect(m.get('a')).toBeUndefined();
    expect(m.size).toBe(0);
  });

  it('keeps an entry added at the very end of a generation for the full lifetime', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, generations: 3, startMs: 0 });
    m.maintain(123_499);
    m.add('late', 'x');
    m.maintain(123_499 + LIFETIME);
    expect(m.get('late')).toBe('x');
  });

  it('holds each generation for at most lifetime + span whatever the generation count', () => {
    for (const generations of [2, 3, 4, 8]) {
      const m = new GenerationalMap<number>({ lifetimeMs: 1_000, generations, startMs: 5_000 });
      const span = Math.ceil(1_000 / (generations - 1));
      m.maintain(5_000);
      m.add('k', 1);
      m.maintain(5_000 + 1_000);
      expect(m.get('k')).toBe(1);
      // (generations - 1) * span is the lifetime rounded up to whole milliseconds.
      m.maintain(5_000 + generations * span - 1);
      expect(m.get('k')).toBe(1);
      m.maintain(5_000 + generations * span);
      expect(m.get('k')).toBeUndefined();
    }
  });

  it('drops everything after a long idle gap in one step', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, startMs: 0 });
    m.add('a', '1');
    m.maintain(60_000);
    m.add('b', '2');
    m.maintain(10 * LIFETIME);
    expect(m.get('a')).toBeUndefined();
    expect(m.get('b')).toBeUndefined();
    // New entries after the gap live their full lifetime again.
    m.add('c', '3');
    m.maintain(10 * LIFETIME + LIFETIME);
    expect(m.get('c')).toBe('3');
  });

  it('ignores a clock that goes backwards', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, startMs: 1_000_000 });
    m.add('a', '1');
    m.maintain(0);
    expect(m.get('a')).toBe('1');
  });

  it('update keeps the entry in its generation (expiry counts from the first add)', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, generations: 3, startMs: 0 });
    m.add('a', '');
    m.maintain(200_000);
    m.update('a', 'done');
    expect(m.get('a')).toBe('done');
    expect(m.size).toBe(1);
    m.maintain(2 * 123_500 + 1); // first generation is now the oldest of three
    expect(m.get('a')).toBe('done');
    m.maintain(3 * 123_500);
    expect(m.get('a')).toBeUndefined();
  });

  it('update adds a key that was already dropped', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: 1_000, startMs: 0 });
    m.update('gone', 'v');
    expect(m.get('gone')).toBe('v');
  });

  it('touch counts distinct keys and renews them', () => {
    const m = new GenerationalMap<true>({ lifetimeMs: 1_000, generations: 3, startMs: 0 }); // span 500
    expect(m.touch('p1', true)).toBe(true);
    expect(m.touch('p1', true)).toBe(false);
    expect(m.touch('p2', true)).toBe(true);
    expect(m.size).toBe(2);
    m.maintain(600);
    expect(m.touch('p1', true)).toBe(false); // moved into the newest generation, not duplicated
    expect(m.size).toBe(2);
    m.maintain(1_500); // p2's generation is dropped, p1 was renewed at 600
    expect(m.get('p2')).toBeUndefined();
    expect(m.get('p1')).toBe(true);
    expect(m.size).toBe(1);
  });

  it('caps the entries at any rate by retiring the newest generation early', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: LIFETIME, generations: 3, maxEntries: 300, startMs: 0 });
    for (let i = 0; i < 10_000; i++) {
      m.maintain(i); // 10 000 entries in 10 s: far over the cap within one span
      m.add(`k${i}`, 'v');
      expect(m.size).toBeLessThanOrEqual(300);
    }
    // The newest entries are still there; the oldest were evicted and counted.
    expect(m.get('k9999')).toBe('v');
    expect(m.get('k9800')).toBe('v');
    expect(m.get('k0')).toBeUndefined();
    expect(m.evicted).toBeGreaterThanOrEqual(10_000 - 300);
    // Eviction drops one generation at a time, never everything at once.
    expect(m.size).toBeGreaterThanOrEqual(200);
  });

  it('rejects impossible settings', () => {
    expect(() => new GenerationalMap({ lifetimeMs: 1_000, generations: 1, startMs: 0 })).toThrow(RangeError);
    expect(() => new GenerationalMap({ lifetimeMs: 0, startMs: 0 })).toThrow(RangeError);
    expect(() => new GenerationalMap({ lifetimeMs: 1_000, maxEntries: 1, startMs: 0 })).toThrow(RangeError);
  });

  it('clear empties every generation', () => {
    const m = new GenerationalMap<string>({ lifetimeMs: 1_000, startMs: 0 });
    m.add('a', '1');
    m.maintain(600);
    m.add('b', '2');
    m.clear();
    expect(m.size).toBe(0);
    expect(m.get('a')).toBeUndefined();
  });
});
