// CoAP protocol constants and small helpers (RFC 7252), shared by the listener's internal files.
// Nothing here does I/O.

/** Message types, RFC 7252 §3 (the 2-bit T field). */
export const TYPE_CON = 0;
export const TYPE_NON = 1;
export const TYPE_ACK = 2;
export const TYPE_RST = 3;

/** Request method codes (class 0), RFC 7252 §12.1.1 and RFC 8132. */
export const METHOD_NAMES: readonly string[] = ['0.00', 'GET', 'POST', 'PUT', 'DELETE', 'FETCH', 'PATCH', 'iPATCH'];

/** Option numbers, RFC 7252 §5.10 and §12.2, RFC 7959 (Block), RFC 7967 (No-Response). */
export const OPT_URI_PATH = 11;
export const OPT_CONTENT_FORMAT = 12;
export const OPT_MAX_AGE = 14;
export const OPT_BLOCK1 = 27;
export const OPT_PROXY_URI = 35;
export const OPT_PROXY_SCHEME = 39;
export const OPT_SIZE1 = 60;

/** Content-Format registry, RFC 7252 §12.3: application/json. */
export const CONTENT_FORMAT_JSON = 50;

/**
 * Transmission parameters, RFC 7252 §4.8 (defaults). EXCHANGE_LIFETIME and NON_LIFETIME are the
 * derived values of §4.8.2 for those defaults.
 */
export const ACK_TIMEOUT_MS = 2_000;
export const ACK_RANDOM_FACTOR = 1.5;
export const MAX_RETRANSMIT = 4;
export const EXCHANGE_LIFETIME_MS = 247_000;
export const NON_LIFETIME_MS = 145_000;
/**
 * RFC 7252 §4.8.2 MAX_TRANSMIT_SPAN: the longest time from the first transmission of a CON message
 * to its last retransmission (45 s with the defaults). It bounds the gap between two blocks of a
 * Block1 transfer that is still alive, so it is how long a reassembly waits for its next block.
 */
export const MAX_TRANSMIT_SPAN_MS = 45_000;

/**
 * Option numbers by the names coap-packet's parser reports (it names the options it knows and
 * reports any other as a decimal string). Must list every name coap-packet 1.1 uses.
 */
const OPTION_NUMBERS: ReadonlyMap<string, number> = new Map([
  ['If-Match', 1],
  ['Uri-Host', 3],
  ['ETag', 4],
  ['If-None-Match', 5],
  ['Observe', 6],
  ['Uri-Port', 7],
  ['Location-Path', 8],
  ['OSCORE', 9],
  ['Uri-Path', 11],
  ['Content-Format', 12],
  ['Max-Age', 14],
  ['Uri-Query', 15],
  ['Hop-Limit', 16],
  ['Accept', 17],
  ['Q-Block1', 19],
  ['Location-Query', 20],
  ['Block2', 23],
  ['Block1', 27],
  ['Size2', 28],
  ['Q-Block2', 31],
  ['Proxy-Uri', 35],
  ['Proxy-Scheme', 39],
  ['Size1', 60],
  ['No-Response', 258],
  ['OCF-Accept-Content-Format-Version', 2049],
  ['OCF-Content-Format-Version', 2053],
]);

/** The option number for a name as coap-packet's parser reports it; NaN when it is neither. */
export function optionNumber(name: string | number): number {
  if (typeof name === 'number') return name;
  return OPTION_NUMBERS.get(name) ?? Number.parseInt(name, 10);
}

/**
 * Critical options (odd numbers, RFC 7252 §5.4.1) this server understands in a request. Any other
 * critical option makes a CON request fail with 4.02 Bad Option. Uri-Host/Uri-Port/Uri-Query are
 * accepted and ignored (one virtual host, no query parameters); Accept is ignored because every
 * response is either the Alink JSON reply or a diagnostic; Block2 (early negotiation, RFC 7959
 * §2.4) is ignored because responses are far smaller than any block size worth negotiating.
 * Block1 is reassembled (RFC 7959, block1.ts); Proxy-Uri/Proxy-Scheme are answered 5.05.
 */
const UNDERSTOOD_CRITICAL: ReadonlySet<number> = new Set([3, 7, 11, 15, 17, 23, 27, 35, 39]);

export function isUnsupportedCritical(option: number): boolean {
  return (option & 1) === 1 && !UNDERSTOOD_CRITICAL.has(option);
}

/** A Block1/Block2 option value, RFC 7959 §2.2: NUM (4, 12 or 20 bits) | M (1 bit) | SZX (3 bits). */
export interface BlockValue {
  /** Block number: the block's offset is num x size. */
  num: number;
  /** More flag: further blocks follow. */
  more: boolean;
  /** Size exponent: the block size is 2 ** (szx + 4); 7 is reserved (BERT, RFC 8323 only). */
  szx: number;
}

/** Largest Block1/Block2 option value length (RFC 7959 §2.2: 0-3 bytes, NUM up to 2^20 - 1). */
export const BLOCK_OPTION_MAX_BYTES = 3;

/** Decodes a Block option value of 0-3 bytes (the caller checks the length). 0 bytes = num 0, M 0, SZX 0. */
export function decodeBlock(value: Buffer): BlockValue {
  let v = 0;
  for (let i = 0; i < value.length; i++) v = v * 256 + value[i]!;
  return { num: Math.floor(v / 16), more: (v & 0x08) !== 0, szx: v & 0x07 };
}

/** Encodes a Block option value minimally (RFC 7252 §3.2 uint). */
export function encodeBlock(b: BlockValue): Buffer {
  return encodeUint(b.num * 16 + (b.more ? 0x08 : 0) + b.szx);
}

/** Reads a uint option value (RFC 7252 §3.2) of up to 4 bytes; longer values give NaN. */
export function decodeUint(value: Buffer): number {
  if (value.length > 4) return Number.NaN;
  let v = 0;
  for (let i = 0; i < value.length; i++) v = v * 256 + value[i]!;
  return v;
}

/** Minimal big-endian encoding of an unsigned option value (RFC 7252 §3.2 "uint"): 0 is zero bytes. */
export function encodeUint(value: number): Buffer {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) throw new RangeError(`uint option out of range: ${value}`);
  const bytes: number[] = [];
  for (let v = value; v > 0; v = Math.floor(v / 256)) bytes.unshift(v % 256);
  return Buffer.from(bytes);
}

/** Largest diagnostic payload we send (RFC 7252 §5.5.2: "brief" and human-readable). */
export const DIAGNOSTIC_MAX_BYTES = 128;

/**
 * A diagnostic payload (RFC 7252 §5.5.2: UTF-8 text, sent without Content-Format), cut to
 * DIAGNOSTIC_MAX_BYTES without splitting a UTF-8 sequence.
 */
export function diagnostic(text: string, maxBytes = DIAGNOSTIC_MAX_BYTES): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length <= maxBytes) return bytes;
  let end = maxBytes;
  // Back off over continuation bytes (10xxxxxx) so the cut lands on a character boundary.
  while (end > 0 && (bytes[end]! & 0xc0) === 0x80) end--;
  return bytes.subarray(0, end);
}
