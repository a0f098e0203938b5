// CoAP payload encryption per product (product.json "coapEncryption": "aes-128-cbc"), as in Alibaba
// IoT's CoAP "symmetric encryption" mode (对称加密, its port 5682): confidentiality without DTLS, for
// modules that cannot afford a handshake at every wake-up. The facts, and where they come from:
//
//   [doc]  https://help.aliyun.com/document_detail/57697.html ("CoAP连接通信", 使用对称加密自主接入)
//   [java] https://help.aliyun.com/document_detail/148620.htm (IotCoapClientWithAes.java, the sample)
//   [c]    github.com/aliyun/iotkit-embedded src/coap/client/iotx_coap_api.c (the C device SDK)
//
// 1. POST /auth answers {"random","seqOffset","token"} [doc table 3; c iotx_parse_auth_from_json
//    fails the auth when seqOffset or random is missing, so both are sent].
// 2. key = SHA-256 over UTF-8 "{deviceSecret},{random}", hex, characters 16..47 decoded from hex:
//    16 bytes, i.e. bytes 8..23 of the digest [doc: "subString(16,48)", with a worked example;
//    java: Hex.decodeHex(shaKey.substring(16, 48)); c: memcpy(key, sha256 + 8, 16)].
// 3. AES-128-CBC, PKCS#5/7 padding, the fixed IV "543yhjy97ae7fyfg" (its 16 ASCII bytes) [doc,
//    java TRANSFORM/IV, c iotx_aes_cbc_encrypt].
// 4. Option 2089 carries the sequence number as its decimal ASCII digits, encrypted the same way
//    (16 bytes) [doc "使用AES加密该值"; java encrypt(String.valueOf(seq).getBytes("UTF-8")); c
//    snprintf("%d") then iotx_aes_cbc_encrypt]. Option 2088 (the token) stays in clear.
// 5. Response payloads are encrypted too: random is "用于后续上、下行加密" (for uplink and downlink)
//    [doc table 3]; java and c decrypt every response payload with the key.
//
// Where the sources disagree, our choice: the sequence number. [doc] wants one above seqOffset,
// never repeated within the token's life; [java] sends a random int per request; [c] starts AT
// seqOffset and counts up (seq++). Wanwu keeps its rule (auth.ts: strictly above the last one
// accepted for the token, so replays are refused) and answers seqOffset = that last one + 1: the
// first number it accepts. So [c] and [doc]-following devices work; [java]'s random numbers work only
// while they happen to rise, which its doc's own advice ("建议...递增") avoids.
//
// What this mode does not give: integrity. CBC without a MAC, a fixed IV (equal plaintexts under one
// key give equal ciphertexts), no binding of the payload to its sequence number. That is Alibaba's
// design, followed for compatibility; DTLS or OSCORE are the answer where integrity matters. A
// wrong key is still refused in practice: the sequence number must decrypt, with valid padding, to
// decimal digits, which random bytes almost never do.
//
// Cost per request: the key is derived once per token (at /auth, auth.ts) and kept with it; each
// uplink then costs two AES-CBC decryptions of a few blocks, and its response one encryption.

import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';
import type { Option } from 'coap-packet';
import { diagnostic } from './protocol.js';
import { encodeFitted, encodeResponse, type Carrier, type ResponseSpec } from './responses.js';

/** The fixed IV of Alibaba's CoAP symmetric mode: the 16 ASCII bytes of "543yhjy97ae7fyfg" ([doc], [java], [c]). */
export const ALIBABA_COAP_IV: Readonly<Buffer> = Buffer.from('543yhjy97ae7fyfg', 'latin1');

/** AES block size, bytes: a ciphertext is a whole number of blocks, padding always adds 1-16 bytes. */
export const AES_BLOCK_BYTES = 16;

const CIPHER = 'aes-128-cbc';
/** Largest sequence number (option 2089), as for the plain uint form (RFC 7252 §3.2, 4 bytes). */
const MAX_SEQ = 0xffffffff;
const DIGITS = /^\d{1,10}$/;

/**
 * The 16-byte AES key of a token: bytes 8..23 of SHA-256("{deviceSecret},{random}"), which is the
 * hex digest's characters 16..47 that Alibaba's doc cuts out (subString(16,48)) and decodes.
 */
export function deriveKey(deviceSecret: string, random: string): Buffer {
  const digest = createHash('sha256').update(`${deviceSecret},${random}`, 'utf8').digest();
  return Buffer.from(digest.subarray(8, 24));
}

/** AES-128-CBC with PKCS#7 padding and the fixed IV: what the device sends, and what the gateway answers. */
export function encryptPayload(key: Buffer, plain: Buffer): Buffer {
  const c = createCipheriv(CIPHER, key, ALIBABA_COAP_IV);
  return Buffer.concat([c.update(plain), c.final()]);
}

/** The plaintext, or null when `data` is not whole blocks or its padding is wrong (another key, or not encrypted). */
export function decryptPayload(key: Buffer, data: Buffer): Buffer | null {
  if (data.length === 0 || data.length % AES_BLOCK_BYTES !== 0) return null;
  try {
    const d = createDecipheriv(CIPHER, key, ALIBABA_COAP_IV);
    return Buffer.concat([d.update(data), d.final()]);
  } catch {
    return null; // OpenSSL's "bad decrypt": the PKCS#7 padding does not check out
  }
}

/** Option 2089's value: the decimal digits of `seq`, encrypted (16 bytes). */
export function encryptSeq(key: Buffer, seq: number): Buffer {
  if (!Number.isInteger(seq) || seq < 0 || seq > MAX_SEQ) throw new RangeError(`sequence number out of range: ${seq}`);
  return encryptPayload(key, Buffer.from(String(seq), 'latin1'));
}

/** The sequence number in an encrypted option 2089, or NaN when it does not decrypt to 1-10 digits of at most 2^32 - 1. */
export function decryptSeq(key: Buffer, value: Buffer): number {
  const plain = decryptPayload(key, value);
  if (plain === null) return Number.NaN;
  const text = plain.toString('latin1');
  if (!DIGITS.test(text)) return Number.NaN;
  const n = Number(text);
  return n <= MAX_SEQ ? n : Number.NaN;
}

/**
 * Serializes a response to a device of an encrypting product: its payload (if any) encrypted with
 * `key`, the whole no larger than `maxBytes`, the request's size (RFC 7252 §11.3, as encodeFitted).
 * Options stay in clear, Content-Format naming the plaintext's format as Alibaba's sample does for
 * its encrypted requests. A success payload that does not fit is dropped whole (encodeFitted); a
 * diagnostic is cut, before encryption, to the most whole blocks that fit, since a cut ciphertext
 * would not decrypt. Without a key this is encodeFitted.
 */
export function encodeSealed(carrier: Carrier, messageId: number, token: Buffer, spec: ResponseSpec, maxBytes: number, key: Buffer | undefined): Buffer {
  if (key === undefined || spec.payload === undefined || spec.payload.length === 0) return encodeFitted(carrier, messageId, token, spec, maxBytes);
  const sealed: ResponseSpec = { ...spec, payload: encryptPayload(key, spec.payload) };
  const bytes = encodeResponse(carrier, messageId, token, sealed);
  if (bytes.length <= maxBytes) return bytes;
  if (spec.code.startsWith('2.')) return encodeFitted(carrier, messageId, token, sealed, maxBytes); // payload dropped whole
  const options: Option[] | undefined = spec.options;
  const bare = encodeResponse(carrier, messageId, token, { code: spec.code, ...(options === undefined ? {} : { options }) });
  // The payload marker takes one byte (§3); n plaintext bytes encrypt to (floor(n / 16) + 1) * 16.
  const room = maxBytes - bare.length - 1;
  const plainRoom = Math.floor(room / AES_BLOCK_BYTES) * AES_BLOCK_BYTES - 1;
  if (plainRoom > 0) {
    const cut = diagnostic(spec.payload.toString('utf8'), plainRoom);
    if (cut.length > 0) return encodeResponse(carrier, messageId, token, { ...spec, payload: encryptPayload(key, cut) });
  }
  return encodeFitted(carrier, messageId, token, { code: spec.code, ...(options === undefined ? {} : { options }) }, maxBytes);
}
