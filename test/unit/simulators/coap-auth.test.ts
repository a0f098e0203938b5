// The simulated module's CoAP authentication state (simulators/lib/coap-auth.ts), with a scripted
// /auth exchange and an injected clock: one /auth for concurrent uplinks, renewal before expiry and
// after 4.01, never the same sign twice, sequence numbers across wake-ups.

import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { CoapAuthSession, seqOption4, type AuthAnswer } from '../../../simulators/lib/coap-auth.js';

const DEVICE = { productKey: 'WaterMeterNB', deviceName: 'wm-0001', deviceSecret: 'demo-secret-WaterMeterNB-0001' };

/** A scripted gateway: answers each /auth with the next of `answers` (default a fresh token), and keeps the bodies. */
function gateway(answers: AuthAnswer[] = []) {
  const bodies: Array<Record<string, unknown>> = [];
  let issued = 0;
  const exchange = async (body: Buffer): Promise<AuthAnswer> => {
    bodies.push(JSON.parse(body.toString()) as Record<string, unknown>);
    await new Promise((r) => setTimeout(r, 5));
    return answers.shift() ?? { code: '2.05', payload: Buffer.from(JSON.stringify({ token: `token-${++issued}`.padEnd(22, '_'), expiresIn: 3600, random: '00' })) };
  };
  return { bodies, exchange };
}

/** The uint in an option value (RFC 7252 §3.2). */
const uint = (b: Buffer) => [...b].reduce((v, x) => v * 256 + x, 0);

describe('CoapAuthSession', () => {
  it('signs /auth like the MQTT login, shares one exchange between concurrent uplinks, then numbers them 1, 2, 3', async () => {
    const now = 1_700_000_000_000;
    const s = new CoapAuthSession(DEVICE, () => now);
    const g = gateway();
    expect(s.authenticated).toBe(false);
    const answers = await Promise.all([s.ensure(g.exchange), s.ensure(g.exchange), s.ensure(g.exchange)]);
    expect(g.bodies).toHaveLength(1);
    expect(answers.map((a) => a?.code)).toEqual(['2.05', '2.05', '2.05']);
    const sign = createHmac('sha256', DEVICE.deviceSecret).update(`clientIdwm-0001deviceNamewm-0001productKeyWaterMeterNBtimestamp${now}`).digest('hex');
    expect(g.bodies[0]).toEqual({ productKey: 'WaterMeterNB', deviceName: 'wm-0001', clientId: 'wm-0001', timestamp: String(now), signmethod: 'hmacsha256', sign });

    expect(s.authenticated).toBe(true);
    expect(await s.ensure(g.exchange)).toBeNull(); // a token is held: no exchange
    const seqs = [s.next(), s.next(), s.next()].map((c) => {
      expect(c.token.toString()).toBe('token-1'.padEnd(22, '_'));
      expect(c.options.map((o) => o.name)).toEqual([2088, 2089]);
      expect(c.options[0]!.value.toString()).toBe('token-1'.padEnd(22, '_'));
      return uint(c.options[1]!.value);
    });
    expect(seqs).toEqual([1, 2, 3]);
    // Smallest encoding (RFC 7252 §3.2): 1 byte for 3; a pinned number is repeated as given.
    expect(s.next().options[1]!.value).toEqual(Buffer.from([4]));
    expect(uint(s.next(4).options[1]!.value)).toBe(4);
    expect(uint(s.next().options[1]!.value)).toBe(5);
    expect(g.bodies).toHaveLength(1);
  });

  it('authenticates again a minute before the token expires, with a new timestamp, and restarts the numbers', async () => {
    let now = 1_700_000_000_000;
    const s = new CoapAuthSession(DEVICE, () => now);
    const g = gateway();
    await s.ensure(g.exchange);
    s.next();
    s.next();
    now += 3_540_000 - 1; // expiresIn 3600 s, renewed 60 s early
    expect(s.authenticated).toBe(true);
    now += 1;
    expect(s.authenticated).toBe(false);
    await s.ensure(g.exchange);
    expect(g.bodies.map((b) => b.timestamp)).toEqual([String(1_700_000_000_000), String(now)]);
    expect(s.next().token.toString()).toBe('token-2'.padEnd(22, '_'));
    expect(s.sequence).toBe(1);
  });

  it('after 4.01 drops the token it was sent with, not a newer one, and never signs the same timestamp twice', async () => {
    const now = 1_700_000_000_000; // a frozen clock: the timestamps must still differ
    const s = new CoapAuthSession(DEVICE, () => now);
    const g = gateway();
    await s.ensure(g.exchange);
    const first = s.next();
    s.refused(first.token);
    expect(s.authenticated).toBe(false);
    await s.ensure(g.exchange);
    const second = s.next();
    s.refused(first.token); // a late 4.01 for an uplink of the old token
    expect(s.authenticated).toBe(true);
    expect(second.token.toString()).toBe('token-2'.padEnd(22, '_'));
    expect(g.bodies.map((b) => b.timestamp)).toEqual([String(now), String(now + 1)]);
  });

  it('reports a refused or unusable /auth and tries again on the next ensure()', async () => {
    const s = new CoapAuthSession(DEVICE, () => 1_700_000_000_000);
    const g = gateway([
      { code: '4.01', payload: Buffer.from('WANWU_ERR_AUTH bad sign') },
      { code: '2.05', payload: Buffer.from('{"token":""}') },
      { code: 'timeout', payload: Buffer.alloc(0) },
    ]);
    expect((await s.ensure(g.exchange))?.code).toBe('4.01');
    expect(s.authenticated).toBe(false);
    expect(s.lastFailure?.payload.toString()).toContain('bad sign');
    expect((await s.ensure(g.exchange))?.code).toBe('bad-answer');
    expect((await s.ensure(g.exchange))?.code).toBe('timeout');
    expect(() => s.next()).toThrow(/not authenticated/);
    expect((await s.ensure(g.exchange))?.code).toBe('2.05');
    expect(s.authenticated).toBe(true);
    expect(g.bodies).toHaveLength(4);
  });

  it('writes a fixed 4-byte sequence number for templates patched in place', () => {
    expect(seqOption4(1)).toEqual({ name: 2089, value: Buffer.from([0, 0, 0, 1]) });
    expect(seqOption4(0xfffffffe).value).toEqual(Buffer.from([0xff, 0xff, 0xff, 0xfe]));
  });
});
