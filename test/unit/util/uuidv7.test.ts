import { describe, expect, it } from 'vitest';
import { uuidv7 } from '../../../src/util/uuidv7.js';

describe('uuidv7', () => {
  it('has the RFC 9562 layout: version 7, variant 10, the timestamp in the first 48 bits', () => {
    const ms = 1_700_000_000_123;
    const id = uuidv7(ms);
    expect(id).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(parseInt(id.slice(0, 8) + id.slice(9, 13), 16)).toBe(ms);
  });

  it('is unique and sorts in creation order, also many times within one millisecond', () => {
    const ms = Date.now() + 10_000;
    const ids = Array.from({ length: 10_000 }, () => uuidv7(ms));
    expect(new Set(ids).size).toBe(ids.length);
    expect([...ids].sort()).toEqual(ids);
  });
});
