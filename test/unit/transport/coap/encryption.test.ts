// Alibaba IoT's CoAP symmetric-encryption mode (src/transport/coap/encryption.ts): key derivation,
// AES-128-CBC with the fixed IV, the encrypted sequence number, and encrypted answers that still fit
// the request (RFC 7252 §11.3).
//
// Alibaba's doc (https://help.aliyun.com/document_detail/57697.html) shows the derivation only with
// masked values (secret "zPwChiLh0EaifR809D5Rc6LDIC6A****", digest "59ea5ac1...f268****"), which
// cannot be recomputed. So the vectors below were computed independently of Wanwu, with coreutils
// and OpenSSL 3, and are annotated with the commands:
//
//   SECRET=demo-secret-WaterMeterNB-0001          # devices/WaterMeterNB/devices.json, wm-0001
//   RND=ad2b3a5eb51d64f7                          # the `random` of Alibaba's example /auth answer
//   printf '%s' "$SECRET,$RND" | sha256sum
//     -> 3cdad7c2cd94b7bc 938fb12fd4a32f1c66327bc54ce9c83f f7f18d83117d139a   (spaces added)
//   KEY=$(printf '%s' "$SECRET,$RND" | sha256sum | cut -c17-48)   -> 938fb12fd4a32f1c66327bc54ce9c83f
//   IV=$(printf 543yhjy97ae7fyfg | xxd -p)                        -> 35343379686a79393761653766796667
//   printf 010012d68701f40e10000866ffa1 | xxd -r -p | openssl enc -aes-128-cbc -K $KEY -iv $IV | xxd -p
//     -> bda852dd7b44cfe6e09ea8d4c43fc499
//   printf 11 | openssl enc -aes-128-cbc -K $KEY -iv $IV | xxd -p     -> 8ac24423ccddfdbfcdfddd33d4d4dc78
//   printf '' | openssl enc -aes-128-cbc -K $KEY -iv $IV | xxd -p     -> 4a1e73275541e21b104b03ebae52cd62

import { parse } from 'coap-packet';
import { describe, expect, it } from 'vitest';
import {
  ALIBABA_COAP_IV,
  decryptPayload,
  decryptSeq,
  deriveKey,
  encodeSealed,
  encryptPayload,
  encryptSeq,
} from '../../../../src/transport/coap/encryption.js';
import { encodeFitted, encodeResponse, errorResponse, outcomeResponse } from '../../../../src/transport/coap/responses.js';
import { unseal } from '../../../helpers/alibaba-coap.js';

const SECRET = 'demo-secret-WaterMeterNB-0001';
const RANDOM = 'ad2b3a5eb51d64f7';
const KEY_HEX = '938fb12fd4a32f1c66327bc54ce9c83f';
const KEY = Buffer.from(KEY_HEX, 'hex');
// Water meter report, 14 bytes (devices/WaterMeterNB/product.json): 01 type | 0012d687 cumulativeFlow
// 1234.567 | 01f4 instantFlow 0.5 | 0e10 battery 3.6 V | 00 valve open | 0866 21.5 C | ffa1 rsrp -95
const FRAME = Buffer.from('010012d68701f40e10000866ffa1', 'hex');
const FRAME_ENC = Buffer.from('bda852dd7b44cfe6e09ea8d4c43fc499', 'hex'); // 14 bytes + 2 bytes of padding 02 02
const SEQ_11_ENC = Buffer.from('8ac24423ccddfdbfcdfddd33d4d4dc78', 'hex'); // "11" + 14 bytes of padding 0e
const EMPTY_ENC = Buffer.from('4a1e73275541e21b104b03ebae52cd62', 'hex'); // a whole block of padding 10
const TOKEN = Buffer.from([0xde, 0xad, 0xbe, 0xef]);

/** Decrypts with the test's own device side (not the module under test), for checking answers. */
const device = (data: Buffer): Buffer => unseal(KEY, data);

describe('key derivation (Alibaba: SHA-256("{deviceSecret},{random}"), hex characters 16..47)', () => {
  it('matches the vector computed with sha256sum | cut -c17-48', () => {
    expect(deriveKey(SECRET, RANDOM).toString('hex')).toBe(KEY_HEX);
  });

  it('depends on both the secret and the random', () => {
    expect(deriveKey('demo-secret-WaterMeterNB-0002', RANDOM).equals(KEY)).toBe(false);
    // printf '%s' "$SECRET,ad2b3a5eb51d64f8" | sha256sum | cut -c17-48
    expect(deriveKey(SECRET, 'ad2b3a5eb51d64f8').toString('hex')).toBe('f627245139ca3f4d9d534680037ddf4e');
    expect(deriveKey(SECRET, RANDOM)).toHaveLength(16);
  });

  it('uses the 16 ASCII bytes of "543yhjy97ae7fyfg" as the IV', () => {
    expect(ALIBABA_COAP_IV.toString('hex')).toBe('35343379686a79393761653766796667');
  });
});

describe('AES-128-CBC payloads', () => {
  it('encrypts the meter frame to the OpenSSL vector and back', () => {
    expect(encryptPayload(KEY, FRAME).toString('hex')).toBe(FRAME_ENC.toString('hex'));
    expect(decryptPayload(KEY, FRAME_ENC)).toEqual(FRAME);
  });

  it('encrypts an empty payload to one block of padding (as Alibaba\'s C SDK does)', () => {
    expect(encryptPayload(KEY, Buffer.alloc(0))).toEqual(EMPTY_ENC);
    expect(decryptPayload(KEY, EMPTY_ENC)).toEqual(Buffer.alloc(0));
  });

  it('refuses what is not encrypted with this key: no bytes, not whole blocks, bad padding', () => {
    expect(decryptPayload(KEY, Buffer.alloc(0))).toBeNull();
    expect(decryptPayload(KEY, FRAME)).toBeNull(); // the plaintext frame: 14 bytes
    expect(decryptPayload(KEY, FRAME_ENC.subarray(0, 15))).toBeNull();
    // Another key (random ...f8): it decrypts to e2341b45...6d99f632 (openssl enc -d -nopad), whose
    // last byte 0x32 is no valid PKCS#7 padding.
    expect(decryptPayload(deriveKey(SECRET, 'ad2b3a5eb51d64f8'), FRAME_ENC)).toBeNull();
    // A flipped bit in the last byte breaks the padding.
    const flipped = Buffer.from(FRAME_ENC);
    flipped[15] = flipped[15]! ^ 0x01;
    expect(decryptPayload(KEY, flipped)).toBeNull();
  });

  it('round-trips payloads of every length around the block size', () => {
    for (let n = 0; n <= 48; n++) {
      const plain = Buffer.alloc(n, n);
      const sealed = encryptPayload(KEY, plain);
      expect(sealed.length).toBe((Math.floor(n / 16) + 1) * 16);
      expect(device(sealed)).toEqual(plain);
      expect(decryptPayload(KEY, sealed)).toEqual(plain);
    }
  });
});

describe('the encrypted sequence number (option 2089)', () => {
  it('is the decimal digits, encrypted: the OpenSSL vector for 11', () => {
    expect(encryptSeq(KEY, 11)).toEqual(SEQ_11_ENC);
    expect(decryptSeq(KEY, SEQ_11_ENC)).toBe(11);
    expect(decryptSeq(KEY, encryptSeq(KEY, 0))).toBe(0);
    expect(decryptSeq(KEY, encryptSeq(KEY, 0xffffffff))).toBe(0xffffffff);
  });

  it('is NaN for a plain uint, another key, anything but 1-10 digits, or more than 2^32 - 1', () => {
    expect(decryptSeq(KEY, Buffer.from([11]))).toBeNaN();
    // With the other key it decrypts to bf169cf9...96921c4c (openssl enc -d -nopad): bad padding.
    expect(decryptSeq(deriveKey(SECRET, 'ad2b3a5eb51d64f8'), SEQ_11_ENC)).toBeNaN();
    expect(decryptSeq(KEY, encryptPayload(KEY, Buffer.from('-1')))).toBeNaN();
    expect(decryptSeq(KEY, encryptPayload(KEY, Buffer.from('1 ')))).toBeNaN();
    expect(decryptSeq(KEY, encryptPayload(KEY, Buffer.from('')))).toBeNaN();
    expect(decryptSeq(KEY, encryptPayload(KEY, Buffer.from('4294967296')))).toBeNaN();
    expect(decryptSeq(KEY, encryptPayload(KEY, Buffer.from('12345678901')))).toBeNaN();
    expect(() => encryptSeq(KEY, -1)).toThrow(RangeError);
  });
});

describe('encodeSealed: encrypted answers no larger than the request (RFC 7252 §11.3)', () => {
  const reply = outcomeResponse({ committed: 1, deadLettered: false, msgId: '7' }, true, 30);

  it('encrypts the Alink reply and keeps the options in clear', () => {
    const p = parse(encodeSealed('ack', 1, TOKEN, reply, 1024, KEY));
    expect(p.code).toBe('2.04');
    expect(p.options.find((o) => o.name === 'Content-Format')?.value).toEqual(Buffer.from([50]));
    expect(JSON.parse(device(p.payload).toString())).toEqual({ id: '7', code: 200, data: {}, message: 'success' });
  });

  it('is encodeFitted without a key, and for an answer without a payload', () => {
    expect(encodeSealed('ack', 1, TOKEN, reply, 1024, undefined)).toEqual(encodeFitted('ack', 1, TOKEN, reply, 1024));
    expect(encodeSealed('ack', 1, TOKEN, { code: '2.04' }, 1024, KEY)).toEqual(encodeResponse('ack', 1, TOKEN, { code: '2.04' }));
  });

  it('drops a success payload that does not fit, whole', () => {
    const full = encodeSealed('ack', 1, TOKEN, reply, 1024, KEY);
    const fitted = parse(encodeSealed('ack', 1, TOKEN, reply, full.length - 1, KEY));
    expect(fitted.code).toBe('2.04');
    expect(fitted.payload.length).toBe(0);
  });

  it('cuts a diagnostic before encrypting it, to whole blocks that fit', () => {
    const spec = errorResponse('4.00', `WANWU_ERR_MALFORMED ${'x'.repeat(100)}`, 0);
    const full = encodeSealed('ack', 1, TOKEN, spec, 1024, KEY);
    for (const maxBytes of [full.length - 1, 60, 40, 26]) {
      const bytes = encodeSealed('ack', 1, TOKEN, spec, maxBytes, KEY);
      expect(bytes.length).toBeLessThanOrEqual(maxBytes);
      const p = parse(bytes);
      expect(p.code).toBe('4.00');
      expect(p.payload.length % 16).toBe(0);
      expect(p.payload.length).toBeGreaterThan(0);
      const text = device(p.payload).toString();
      expect(spec.payload!.toString().startsWith(text)).toBe(true);
    }
    // Header (4) + token (4) + marker (1) + one block (16) = 25: with less, no payload at all.
    const bare = parse(encodeSealed('ack', 1, TOKEN, spec, 24, KEY));
    expect(bare.code).toBe('4.00');
    expect(bare.payload.length).toBe(0);
  });
});
