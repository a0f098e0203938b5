// A simulated NB-IoT module's side of CoAP payload encryption: a device of a product with
// "coapEncryption" (Alibaba IoT's symmetric mode) encrypts its payload and its sequence number with a
// key from the /auth answer's `random`, and reads the answers with it. The gateway's side, and the
// Alibaba sources the format comes from, are src/transport/coap/encryption.ts, whose functions this
// reuses. Apart from coap-auth.ts (token and sequence number), which it leaves as it is: the caller
// runs an uplink's credentials and payload through sealUplink() where it builds the request.

import type { Product } from '../../src/registry/index.js';
import { decryptPayload, deriveKey, encryptPayload, encryptSeq } from '../../src/transport/coap/encryption.js';
import { decodeUint } from '../../src/transport/coap/protocol.js';
import { OPT_AUTH_SEQ, type AuthAnswer, type CoapOption } from './coap-auth.js';

/**
 * The payload key a 2.05 /auth answer gives a device of a product with coapEncryption; null for a
 * product without it, or an answer that is not a 2.05 with a `random`.
 */
export function keyFromAuthAnswer(product: Pick<Product, 'coapEncryption'>, deviceSecret: string, answer: AuthAnswer): Buffer | null {
  if (product.coapEncryption === undefined || answer.code !== '2.05') return null;
  try {
    const random = (JSON.parse(answer.payload.toString('utf8')) as { random?: unknown }).random;
    return typeof random === 'string' && random !== '' ? deriveKey(deviceSecret, random) : null;
  } catch {
    return null;
  }
}

/** An uplink as such a device sends it: the payload encrypted, and option 2089's number as its encrypted decimal digits. */
export function sealUplink(key: Buffer, options: readonly CoapOption[], payload: Buffer): { options: CoapOption[]; payload: Buffer } {
  return {
    options: options.map((o) => (o.name === OPT_AUTH_SEQ ? { name: o.name, value: encryptSeq(key, decodeUint(o.value)) } : o)),
    payload: encryptPayload(key, payload),
  };
}

/**
 * An answer's payload in clear, for reports: decrypted with the device's key, or as received when it
 * does not decrypt (the gateway answers authentication refusals in clear).
 */
export function openAnswer(key: Buffer | null, payload: Buffer): Buffer {
  if (key === null || payload.length === 0) return payload;
  return decryptPayload(key, payload) ?? payload;
}
