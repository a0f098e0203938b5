import { generate, parse, type Option, type Packet } from 'coap-packet';
import { describe, expect, it } from 'vitest';
import { inspectRequest, type RequestVerdict } from '../../../../src/transport/coap/request.js';

const MAX = 1024;

function request(path: string[], extra: Partial<Packet> = {}, extraOptions: Option[] = []): ReturnType<typeof parse> {
  const options: Option[] = path.map((seg) => ({ name: 'Uri-Path', value: Buffer.from(seg) }));
  return parse(generate({ code: 'POST', confirmable: true, messageId: 1, token: Buffer.from([1, 2]), ...extra, options: [...options, ...extraOptions] }));
}

function respond(v: RequestVerdict): { code: string; text: string; options: Option[] } {
  if (v.kind !== 'respond') throw new Error(`expected a response, got ${v.kind}`);
  return { code: v.response.code, text: v.response.payload?.toString('utf8') ?? '', options: v.response.options ?? [] };
}

const PROP = ['topic', 'sys', 'a1Water', 'meter-0001', 'thing', 'event', 'property', 'post'];

describe('inspectRequest: path', () => {
  it('maps /topic + Alink property post to the topic and route', () => {
    const v = inspectRequest(request(PROP, { payload: Buffer.from('{}') }), true, MAX);
    expect(v).toEqual({
      kind: 'ingest',
      target: {
        productKey: 'a1Water',
        deviceName: 'meter-0001',
        topic: '/sys/a1Water/meter-0001/thing/event/property/post',
        route: { type: 'property-post' },
      },
    });
  });

  it('maps event post and up_raw', () => {
    const ev = inspectRequest(request(['topic', 'sys', 'pk1', 'dn1', 'thing', 'event', 'lowBattery', 'post']), true, MAX);
    expect(ev.kind === 'ingest' && ev.target.route).toEqual({ type: 'event-post', eventId: 'lowBattery' });
    const raw = inspectRequest(request(['topic', 'sys', 'pk1', 'dn1', 'thing', 'model', 'up_raw']), false, MAX);
    expect(raw.kind === 'ingest' && raw.target).toEqual({
      productKey: 'pk1',
      deviceName: 'dn1',
      topic: '/sys/pk1/dn1/thing/model/up_raw',
      route: { type: 'up-raw' },
    });
  });

  it('answers 4.04 for paths outside /topic/sys/{pk}/{dn}/ and unknown topics', () => {
    for (const path of [[], ['topic'], ['sys', 'pk', 'dn', 'thing', 'model', 'up_raw'], ['topic', 'sys', 'pk', 'dn', 'thing', 'model', 'down_raw'], ['.well-known', 'core'], ['topic', 'sys', 'p k', 'dn', 'thing', 'model', 'up_raw']]) {
      const r = respond(inspectRequest(request(path), true, MAX));
      expect(r.code, path.join('/')).toBe('4.04');
      expect(r.text).toMatch(/^WANWU_ERR_TOPIC /);
    }
  });

  it("treats a '/' inside one Uri-Path option as part of the segment, not a separator", () => {
    const r = respond(inspectRequest(request(['topic', 'sys/pk1/dn1/thing/model/up_raw']), true, MAX));
    expect(r.code).toBe('4.04');
  });
});

describe('inspectRequest: method, size, options', () => {
  it('answers 4.05 for GET/PUT/DELETE on an uplink topic and 4.04 for GET on an unknown path', () => {
    for (const code of ['GET', 'PUT', 'DELETE', 'FETCH']) {
      const r = respond(inspectRequest(request(PROP, { code }), true, MAX));
      expect(r.code).toBe('4.05');
      expect(r.text).toContain(code);
    }
    expect(respond(inspectRequest(request(['nope'], { code: 'GET' }), true, MAX)).code).toBe('4.04');
  });

  it('answers 4.13 with Size1 for a payload over the limit, and accepts one at the limit', () => {
    const r = respond(inspectRequest(request(PROP, { payload: Buffer.alloc(MAX + 1, 0x61) }), true, MAX));
    expect(r.code).toBe('4.13');
    expect(r.options).toContainEqual({ name: 60, value: Buffer.from([0x04, 0x00]) });
    expect(r.text).toContain('1025');
    expect(inspectRequest(request(PROP, { payload: Buffer.alloc(MAX, 0x61) }), true, MAX).kind).toBe('ingest');
  });

  it('passes a valid Block1 block on with its NUM, M and size; refuses SZX 7 (4.00) and a body past the limit (4.13) from the header', () => {
    const block1: Option = { name: 'Block1', value: Buffer.from([0x0a]) }; // NUM 0, M=1, SZX 2 (64 bytes)
    const v = inspectRequest(request(PROP, { payload: Buffer.alloc(64) }, [block1]), true, MAX);
    expect(v.kind === 'ingest' && v.block1).toEqual({ num: 0, more: true, szx: 2, size: 64 });
    const szx7: Option = { name: 'Block1', value: Buffer.from([0x0f]) }; // NUM 0, M=1, SZX 7 (reserved)
    expect(respond(inspectRequest(request(PROP, { payload: Buffer.alloc(16) }, [szx7]), true, MAX)).code).toBe('4.00');
    const far: Option = { name: 'Block1', value: Buffer.from([0xff, 0xff, 0xf6]) }; // NUM 1048575, M=0, SZX 6
    const r = respond(inspectRequest(request(PROP, { payload: Buffer.alloc(16) }, [far]), true, MAX));
    expect(r.code).toBe('4.13');
    expect(r.options).toContainEqual({ name: 60, value: Buffer.from([0x04, 0x00]) });
    expect(r.text).toContain('Block1');
  });

  it('answers 4.02 to a CON and rejects a NON carrying an unknown critical option (RFC 7252 §5.4.1)', () => {
    const oscore: Option = { name: 'OSCORE', value: Buffer.from([0x09]) };
    const unknownCritical: Option = { name: '2051', value: Buffer.from([1]) };
    const ocf: Option = { name: 'OCF-Accept-Content-Format-Version', value: Buffer.from([1]) }; // 2049
    expect(respond(inspectRequest(request(PROP, {}, [oscore]), true, MAX)).code).toBe('4.02');
    expect(respond(inspectRequest(request(PROP, {}, [unknownCritical]), true, MAX)).text).toContain('2051');
    expect(respond(inspectRequest(request(PROP, {}, [ocf]), true, MAX)).text).toContain('2049');
    expect(inspectRequest(request(PROP, { confirmable: false }, [oscore]), false, MAX)).toEqual({ kind: 'reject' });
  });

  it('ignores elective options and understood critical ones', () => {
    const opts: Option[] = [
      { name: 'Uri-Host', value: Buffer.from('gw.example') },
      { name: 'Content-Format', value: Buffer.from([50]) },
      { name: 'Uri-Query', value: Buffer.from('x=1') },
      { name: 'Accept', value: Buffer.from([50]) },
      { name: '2048', value: Buffer.from([1]) }, // unknown elective
    ];
    expect(inspectRequest(request(PROP, {}, opts), true, MAX).kind).toBe('ingest');
  });

  it('answers 5.05 to a proxy request', () => {
    const r = respond(inspectRequest(request([], {}, [{ name: 'Proxy-Uri', value: Buffer.from('coap://elsewhere/x') }]), true, MAX));
    expect(r.code).toBe('5.05');
  });
});
