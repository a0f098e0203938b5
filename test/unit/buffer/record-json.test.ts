import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { recordJson } from '../../../src/buffer/record-json.js';
import type { TelemetryRecord } from '../../../src/types.js';

// Any string, including quotes, backslashes, controls and non-ASCII, so the escaping fallback is exercised.
const text = fc.oneof(fc.stringMatching(/^[A-Za-z0-9_.:@-]{1,20}$/), fc.string({ unit: 'grapheme', maxLength: 20 }), fc.string({ unit: 'binary', maxLength: 8 }));
const num = fc.oneof(fc.integer(), fc.double(), fc.constant(Number.NaN));

const record = fc
  .record({
    id: fc.uuid(),
    productKey: text,
    deviceName: text,
    kind: fc.constantFrom('property', 'event', 'raw'),
    event: fc.option(text, { nil: undefined }),
    ts: num,
    receivedAt: num,
    transport: fc.constantFrom('coap', 'mqtt'),
    rat: fc.constantFrom('nbiot', 'cat1', 'redcap'),
    data: fc.dictionary(text, fc.jsonValue()),
    msgId: fc.option(text, { nil: undefined }),
    validated: fc.option(fc.constant(false as const), { nil: undefined }),
  })
  .map((r) => {
    // Key order as the pipeline builds a record (toRecords), with optional keys absent rather than undefined.
    const out: Record<string, unknown> = {};
    for (const k of ['id', 'productKey', 'deviceName', 'kind', 'ts', 'receivedAt', 'transport', 'rat', 'data'] as const) out[k] = r[k];
    if (r.event !== undefined) out.event = r.event;
    if (r.msgId !== undefined) out.msgId = r.msgId;
    if (r.validated !== undefined) out.validated = r.validated;
    return out as unknown as TelemetryRecord;
  });

describe('recordJson', () => {
  it('writes the same JSON value as JSON.stringify for any record', () => {
    fc.assert(
      fc.property(record, (r) => {
        const ours = recordJson(r);
        expect(JSON.parse(ours)).toEqual(JSON.parse(JSON.stringify(r)));
      }),
      { numRuns: 2000 },
    );
  });

  it('escapes what needs escaping in identifiers', () => {
    const r = { id: 'a', productKey: 'p"k', deviceName: 'd\\n\u0001', kind: 'property', ts: 1, receivedAt: 2, transport: 'coap', rat: 'nbiot', data: {} } as unknown as TelemetryRecord;
    expect(JSON.parse(recordJson(r))).toMatchObject({ productKey: 'p"k', deviceName: 'd\\n\u0001' });
  });
});
