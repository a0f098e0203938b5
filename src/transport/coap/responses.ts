// Building the bytes the listener sends: responses (coap-packet's generate) and empty messages.

import { generate, type Option } from 'coap-packet';
import type { IngestOutcome } from '../../types.js';
import {
  CONTENT_FORMAT_JSON,
  diagnostic,
  encodeBlock,
  encodeUint,
  OPT_BLOCK1,
  OPT_CONTENT_FORMAT,
  OPT_MAX_AGE,
  OPT_SIZE1,
  TYPE_ACK,
  TYPE_RST,
  type BlockValue,
} from './protocol.js';

/** What to answer, independent of how it travels (piggybacked ACK, separate CON, NON). */
export interface ResponseSpec {
  /** Response code in dotted form, e.g. '2.04', '4.00'. */
  code: string;
  options?: Option[];
  payload?: Buffer;
}

/** How a response travels (RFC 7252 §5.2): in the ACK, as a separate CON, or as a NON. */
export type Carrier = 'ack' | 'con' | 'non';

const CONTENT_FORMAT_JSON_OPTION: Option = { name: OPT_CONTENT_FORMAT, value: encodeUint(CONTENT_FORMAT_JSON) };

/** The Alink reply without an `id` (the device sent none); shared, generate() copies it. */
const ALINK_SUCCESS_NO_ID = Buffer.from('{"code":200,"data":{},"message":"success"}');

/** Serializes a response. `token` is echoed from the request (RFC 7252 §5.3.2). */
export function encodeResponse(carrier: Carrier, messageId: number, token: Buffer, spec: ResponseSpec): Buffer {
  return generate({
    ack: carrier === 'ack',
    confirmable: carrier === 'con',
    code: spec.code,
    messageId,
    token,
    // generate() sorts the options array in place: hand it a copy, never a shared array.
    options: spec.options === undefined ? [] : spec.options.slice(),
    payload: spec.payload,
  });
}

/**
 * Serializes a response no larger than `maxBytes`: the size of the request it answers. RFC 7252 §11.3:
 * a response larger than its request lets anyone who spoofs a victim's address amplify traffic
 * towards it, and CoAP requests are not authenticated. Usually the response is far smaller and this
 * costs one length comparison. Otherwise, in turn: a diagnostic payload (class 4/5) is cut to fit on
 * a UTF-8 boundary, a success payload (the Alink reply) is dropped whole with its Content-Format (a
 * cut JSON document would be worse than none), and if the options alone still do not fit, they go
 * too. What is left (header and the echoed token) is never larger than the request.
 */
export function encodeFitted(carrier: Carrier, messageId: number, token: Buffer, spec: ResponseSpec, maxBytes: number): Buffer {
  const bytes = encodeResponse(carrier, messageId, token, spec);
  if (bytes.length <= maxBytes) return bytes;
  const success = spec.code.startsWith('2.');
  const options = success ? (spec.options ?? []).filter((o) => o.name !== OPT_CONTENT_FORMAT) : spec.options;
  const bare = encodeResponse(carrier, messageId, token, { code: spec.code, options });
  // The payload marker 0xFF takes one byte (§3).
  const room = maxBytes - bare.length - 1;
  if (!success && spec.payload !== undefined && room > 0) {
    const cut = diagnostic(spec.payload.toString('utf8'), room);
    if (cut.length > 0) return encodeResponse(carrier, messageId, token, { code: spec.code, options, payload: cut });
  }
  if (bare.length <= maxBytes) return bare;
  return encodeResponse(carrier, messageId, token, { code: spec.code });
}

/** An Empty message (code 0.00, no token, RFC 7252 §4.1): an empty ACK or a RST. */
export function encodeEmpty(type: typeof TYPE_ACK | typeof TYPE_RST, messageId: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b[0] = 0x40 | (type << 4); // Ver = 1, T = type, TKL = 0
  b[1] = 0; // 0.00
  b.writeUInt16BE(messageId, 2);
  return b;
}

/**
 * The answer to an ingest outcome. Success: 2.04 Changed, with the Alink reply
 * `{"id","code":200,"data":{},"message":"success"}` as application/json on Alink JSON topics and no
 * payload for up_raw. Refusal: the error's CoAP code with a diagnostic payload (RFC 7252 §5.5.2);
 * 5.03 also carries Max-Age (§5.9.3.4: the number of seconds after which to retry).
 */
export function outcomeResponse(outcome: IngestOutcome, alinkJson: boolean, retryAfterS: number): ResponseSpec {
  const error = outcome.error;
  if (error === undefined) {
    if (!alinkJson) return { code: '2.04' };
    const payload =
      outcome.msgId === undefined
        ? ALINK_SUCCESS_NO_ID
        : Buffer.from(`{"id":${JSON.stringify(String(outcome.msgId))},"code":200,"data":{},"message":"success"}`);
    return { code: '2.04', options: [CONTENT_FORMAT_JSON_OPTION], payload };
  }
  // The ingest contract hands a WanwuError; anything else is treated as an internal fault.
  const coapCode = typeof error.coapCode === 'string' ? error.coapCode : '5.00';
  const code = typeof error.code === 'string' ? error.code : 'WANWU_ERR_INTERNAL';
  return errorResponse(coapCode, `${code} ${error.message}`, retryAfterS);
}

/** An error response with a diagnostic payload; 5.03 gets a Max-Age of `retryAfterS` seconds. */
export function errorResponse(coapCode: string, text: string, retryAfterS: number, options?: Option[]): ResponseSpec {
  const opts = options === undefined ? [] : options.slice();
  if (coapCode === '5.03') opts.push({ name: OPT_MAX_AGE, value: encodeUint(retryAfterS) });
  return { code: coapCode, options: opts, payload: diagnostic(text) };
}

/** 2.31 Continue (RFC 7959 §2.9.1) for a stored non-final Block1 block, echoing its Block1 option (§2.3). */
export function continueResponse(block: BlockValue): ResponseSpec {
  return { code: '2.31', options: [block1Option(block)] };
}

/** The Block1 option of a response: which block it acknowledges (RFC 7959 §2.3). */
export function block1Option(block: BlockValue): Option {
  return { name: OPT_BLOCK1, value: encodeBlock(block) };
}

/** 4.29 Too Many Requests (RFC 8516 §3) with Max-Age: the seconds after which to retry. */
export function tooManyRequestsResponse(text: string, retryAfterS: number): ResponseSpec {
  return { code: '4.29', options: [{ name: OPT_MAX_AGE, value: encodeUint(retryAfterS) }], payload: diagnostic(text) };
}

/** 4.13 Request Entity Too Large with Size1 = the largest body we accept (RFC 7252 §5.9.2.9, §5.10.9). */
export function tooLargeResponse(text: string, maxPayloadBytes: number): ResponseSpec {
  return errorResponse('4.13', text, 0, [{ name: OPT_SIZE1, value: encodeUint(maxPayloadBytes) }]);
}
