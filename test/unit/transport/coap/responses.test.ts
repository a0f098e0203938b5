import { parse } from 'coap-packet';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../../src/errors.js';
import { diagnostic, encodeUint } from '../../../../src/transport/coap/protocol.js';
import { encodeEmpty, encodeResponse, outcomeResponse } from '../../../../src/transport/coap/responses.js';
import type { IngestOutcome } from '../../../../src/types.js';

const TOKEN = Buffer.from([0xde, 0xad, 0xbe, 0xef]);
const ok = (extra: Partial<IngestOutcome> = {}): IngestOutcome => ({ committed: 1, deadLettered: false, ...extra });

function optionValue(p: ReturnType<typeof parse>, name: string): Buffer | undefined {
  return p.options.find((o) => o.name === name)?.value;
}

describe('outcomeResponse + encodeResponse', () => {
  it('builds a piggybacked 2.04 with the Alink JSON reply and Content-Format 50', () => {
    const bytes = encodeResponse('ack', 0x1234, TOKEN, outcomeResponse(ok({ msgId: '42' }), true, 30));
    const p = parse(bytes);
    expect(p).toMatchObject({ code: '2.04', ack: true, confirmable: false, reset: false, messageId: 0x1234 });
    expect(p.token).toEqual(TOKEN);
    expect(optionValue(p, 'Content-Format')).toEqual(Buffer.from([50]));
    expect(JSON.parse(p.payload.toString())).toEqual({ id: '42', code: 200, data: {}, message: 'success' });
  });

  it('omits id when the device sent none and escapes ids safely', () => {
    const noId = outcomeResponse(ok(), true, 30);
    expect(JSON.parse(noId.payload!.toString())).toEqual({ code: 200, data: {}, message: 'success' });
    const weird = outcomeResponse(ok({ msgId: 'a"b\\c' }), true, 30);
    expect(JSON.parse(weird.payload!.toString()).id).toBe('a"b\\c');
  });

  it('answers up_raw with a bare 2.04', () => {
    const p = parse(encodeResponse('non', 7, TOKEN, outcomeResponse(ok(), false, 30)));
    expect(p).toMatchObject({ code: '2.04', confirmable: false, ack: false, reset: false, messageId: 7 });
    expect(p.options).toEqual([]);
    expect(p.payload.length).toBe(0);
  });

  it('maps an error to its CoAP code with a text diagnostic and no Content-Format', () => {
    const err = new WanwuError('WANWU_ERR_INVALID', 'temperature: 130 above max 120');
    const p = parse(encodeResponse('con', 9, TOKEN, outcomeResponse(ok({ error: err, committed: 0, deadLettered: true }), true, 30)));
    expect(p).toMatchObject({ code: '4.00', confirmable: true });
    expect(p.payload.toString()).toBe('WANWU_ERR_INVALID temperature: 130 above max 120');
    expect(optionValue(p, 'Content-Format')).toBeUndefined();
    const notFound = outcomeResponse(ok({ error: new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', 'no device pk/dn') }), false, 30);
    expect(notFound.code).toBe('4.04');
  });

  it('adds Max-Age to 5.03 so the device retries later', () => {
    const spec = outcomeResponse(ok({ error: new WanwuError('WANWU_ERR_BUFFER_FULL', 'buffer full'), committed: 0 }), true, 30);
    const p = parse(encodeResponse('ack', 1, TOKEN, spec));
    expect(p.code).toBe('5.03');
    expect(optionValue(p, 'Max-Age')).toEqual(Buffer.from([30]));
  });

  it('caps the diagnostic payload at 128 bytes', () => {
    const spec = outcomeResponse(ok({ error: new WanwuError('WANWU_ERR_MALFORMED', 'x'.repeat(500)) }), true, 30);
    expect(spec.payload!.length).toBe(128);
  });

  it('does not mutate shared option arrays (generate sorts in place)', () => {
    const spec = outcomeResponse(ok({ error: new WanwuError('WANWU_ERR_BUFFER_FULL', 'full') }), true, 30);
    const before = spec.options!.slice();
    encodeResponse('ack', 1, TOKEN, spec);
    expect(spec.options).toEqual(before);
  });
});

describe('encodeEmpty', () => {
  it('builds 4-byte empty ACK and RST messages (RFC 7252 §4.1)', () => {
    expect(encodeEmpty(2, 0xabcd)).toEqual(Buffer.from([0x60, 0x00, 0xab, 0xcd]));
    expect(encodeEmpty(3, 0x0001)).toEqual(Buffer.from([0x70, 0x00, 0x00, 0x01]));
    expect(parse(encodeEmpty(3, 5))).toMatchObject({ code: '0.00', reset: true, messageId: 5 });
  });
});

describe('protocol helpers', () => {
  it('encodes uint option values minimally (RFC 7252 §3.2)', () => {
    expect(encodeUint(0)).toEqual(Buffer.alloc(0));
    expect(encodeUint(30)).toEqual(Buffer.from([30]));
    expect(encodeUint(1024)).toEqual(Buffer.from([4, 0]));
    expect(encodeUint(0x01020304)).toEqual(Buffer.from([1, 2, 3, 4]));
    expect(() => encodeUint(-1)).toThrow(RangeError);
  });

  it('cuts diagnostics on a UTF-8 character boundary', () => {
    const text = 'é'.repeat(100); // 200 bytes, 2 per character
    const d = diagnostic(text, 127);
    expect(d.length).toBe(126);
    expect(d.toString('utf8')).toBe('é'.repeat(63));
    expect(diagnostic('short').toString()).toBe('short');
  });
});
