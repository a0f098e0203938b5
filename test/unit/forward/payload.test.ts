import { describe, expect, it } from 'vitest';
import { encodePayload } from '../../../src/forward/payload.js';

describe('encodePayload', () => {
  it('json sends the stored body as it is', () => {
    expect(encodePayload('json', ['{"a":1}'])).toBe('{"a":1}');
  });

  it('json-batch writes one JSON array of the bodies, multi-byte text included', () => {
    const bodies = ['{"a":1}', '{"name":"水表 №7","emoji":"🚰"}', '{"b":[1,2,{"c":null}]}'];
    const payload = encodePayload('json-batch', bodies);
    expect(Buffer.isBuffer(payload)).toBe(true);
    const text = (payload as Buffer).toString('utf8');
    expect(text).toBe(`[${bodies.join(',')}]`);
    expect(JSON.parse(text)).toEqual(bodies.map((b) => JSON.parse(b)));
  });

  it('json-batch of one record is an array of one', () => {
    expect((encodePayload('json-batch', ['{"x":"é"}']) as Buffer).toString()).toBe('[{"x":"é"}]');
  });
});
