// The simulated module's side of CoAP payload encryption (simulators/lib/coap-crypto.ts), checked
// against the test's own device side written from Alibaba's doc (test/helpers/alibaba-coap.ts).

import { describe, expect, it } from 'vitest';
import { keyFromAuthAnswer, openAnswer, sealUplink } from '../../../simulators/lib/coap-crypto.js';
import { alibabaKey, seal, unseal } from '../../helpers/alibaba-coap.js';

const SECRET = 'demo-secret-WaterMeterNB-0001';
const ANSWER = { code: '2.05', payload: Buffer.from('{"token":"keK8FKf70u3YXrfijLD70Q","expiresIn":172800,"random":"0666af58c8148b57","seqOffset":0}') };
const ENCRYPTING = { coapEncryption: 'aes-128-cbc' as const };

describe('simulated module: CoAP payload encryption', () => {
  it('takes the key from a 2.05 /auth answer of an encrypting product only', () => {
    expect(keyFromAuthAnswer(ENCRYPTING, SECRET, ANSWER)).toEqual(alibabaKey(SECRET, '0666af58c8148b57'));
    expect(keyFromAuthAnswer({}, SECRET, ANSWER)).toBeNull();
    expect(keyFromAuthAnswer(ENCRYPTING, SECRET, { code: '4.01', payload: Buffer.from('WANWU_ERR_AUTH x') })).toBeNull();
    expect(keyFromAuthAnswer(ENCRYPTING, SECRET, { code: '2.05', payload: Buffer.from('{"token":"t","expiresIn":1}') })).toBeNull();
    expect(keyFromAuthAnswer(ENCRYPTING, SECRET, { code: '2.05', payload: Buffer.from('not json') })).toBeNull();
  });

  it('encrypts the payload and the number in option 2089, and leaves the token in clear', () => {
    const key = alibabaKey(SECRET, '0666af58c8148b57');
    const token = { name: 2088, value: Buffer.from('keK8FKf70u3YXrfijLD70Q') };
    const out = sealUplink(key, [token, { name: 2089, value: Buffer.from([0x01, 0x2c]) }], Buffer.from('010000303904d20e10000929ffa6', 'hex'));
    expect(out.options[0]).toEqual(token);
    expect(out.options[1]!.name).toBe(2089);
    expect(unseal(key, out.options[1]!.value).toString()).toBe('300'); // 0x012c
    expect(unseal(key, out.payload).toString('hex')).toBe('010000303904d20e10000929ffa6');
  });

  it('reads encrypted answers, and diagnostics sent in clear as they are', () => {
    const key = alibabaKey(SECRET, '0666af58c8148b57');
    expect(openAnswer(key, seal(key, Buffer.from('{"code":200}'))).toString()).toBe('{"code":200}');
    expect(openAnswer(key, Buffer.from('WANWU_ERR_DECRYPT payload')).toString()).toBe('WANWU_ERR_DECRYPT payload');
    expect(openAnswer(null, Buffer.from('x')).toString()).toBe('x');
  });
});
