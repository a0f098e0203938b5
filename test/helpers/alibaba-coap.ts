// The device side of Alibaba IoT's CoAP symmetric-encryption mode, written here with node:crypto
// straight from Alibaba's doc (https://help.aliyun.com/document_detail/57697.html, 使用对称加密自主接入)
// and not with the gateway's src/transport/coap/encryption.ts, so tests check one against the other.

import { createCipheriv, createDecipheriv, createHash } from 'node:crypto';

/** The doc's IV: "543yhjy97ae7fyfg" as 16 ASCII bytes. */
const IV = Buffer.from('543yhjy97ae7fyfg', 'latin1');

/** The doc's key: SHA-256 over UTF-8 "{deviceSecret},{random}", hex, subString(16, 48), as 16 bytes. */
export function alibabaKey(deviceSecret: string, random: string): Buffer {
  return Buffer.from(createHash('sha256').update(`${deviceSecret},${random}`, 'utf8').digest('hex').substring(16, 48), 'hex');
}

/** AES/CBC/PKCS5Padding with the doc's IV. */
export function seal(key: Buffer, plain: Buffer): Buffer {
  const c = createCipheriv('aes-128-cbc', key, IV);
  return Buffer.concat([c.update(plain), c.final()]);
}

/** The inverse of seal(); throws on a wrong key or a plaintext. */
export function unseal(key: Buffer, data: Buffer): Buffer {
  const d = createDecipheriv('aes-128-cbc', key, IV);
  return Buffer.concat([d.update(data), d.final()]);
}

/** Option 2089 in this mode: the sequence number's decimal digits, sealed. */
export function sealSeq(key: Buffer, seq: number): Buffer {
  return seal(key, Buffer.from(String(seq), 'latin1'));
}
