// CoAP device authentication without DTLS, in Alibaba IoT's CoAP form: an NB-IoT module cannot
// afford a DTLS handshake at every wake-up from PSM, so it signs once and then carries a token.
//
//   POST /auth  {"productKey","deviceName","clientId","timestamp","signmethod","sign","iccid"?,"seq"?}
//     sign = hex HMAC over "clientId{id}deviceName{dn}productKey{pk}timestamp{ts}" keyed with the
//     device secret (the MQTT sign, src/registry/sign.ts); signmethod hmacsha256, hmacsha1 or hmacmd5.
//     -> 2.05 {"token","expiresIn","random"}
//   POST /topic/sys/{pk}/{dn}/...  with option 2088 = the token and 2089 = a sequence number
//     (uint, RFC 7252 §3.2) strictly above the last one accepted for that token.
//
// Identity comes from the token, never from the source address or port, so a module whose NAT
// binding changed between wake-ups keeps its token. The token only proves that whoever asked for it
// knew the device secret: it travels in clear, like Alibaba's, so an on-path observer could use it
// (the sequence number stops replays of captured datagrams, not that). A product with
// "coapEncryption" (encryption.ts) also gets its payloads and sequence numbers encrypted with a key
// from the device secret and the answer's `random`: derived here once per token, kept with it.
//
// Memory is bounded: tokens (coap.auth.maxTokens, oldest dropped first) and /auth signs already used
// (same cap) live in insertion-ordered Maps swept by the listener's maintenance timer.

import { randomBytes, timingSafeEqual } from 'node:crypto';
import { WanwuError } from '../../errors.js';
import { checkCard, deviceRefusal, type Registry } from '../../registry/index.js';
import { computeSign, SIGN_METHODS, verifySign, type SignMethod } from '../../registry/sign.js';
import type { Logger } from '../../types.js';
import { AuditLog } from '../audit.js';
import { decryptSeq, deriveKey } from './encryption.js';
import { decodeUint } from './protocol.js';

/**
 * Alibaba IoT's CoAP option numbers: the token (2088, even: elective) and the sequence number (2089, odd:
 * critical, RFC 7252 §5.4.1, so a server that does not know it must refuse the request rather than ignore it).
 */
export const OPT_AUTH_TOKEN = 2088;
export const OPT_AUTH_SEQ = 2089;
/** The Uri-Path of the authentication request: POST /auth. */
export const AUTH_PATH_SEGMENT = 'auth';
/** Largest /auth body, in bytes: the JSON form with an ICCID and long names fits in ~400. */
export const AUTH_MAX_BODY_BYTES = 512;
/** Token size: 128 random bits, sent as 22 base64url characters (or accepted as the 16 raw bytes). */
const TOKEN_BYTES = 16;
/**
 * Live tokens one device may hold. More than one, so a module that authenticates again while an
 * uplink with its previous token is still on the way does not lose it, and a load generator may give
 * one device to each of its 16 sockets (simulators/lib/load.ts). Bounded, so one device's secret
 * cannot fill the table.
 */
export const TOKENS_PER_DEVICE = 16;

/** Bytes of the `random` in the answer (hex): 16 hex digits, as in Alibaba's example answer (encryption.ts [doc]). */
const RANDOM_BYTES = 8;

export type CoapAuthMode = 'required' | 'optional';

/** coap.auth of the configuration (src/config/schema.ts has the defaults and units). */
export interface CoapAuthConfig {
  mode: CoapAuthMode;
  /** Token lifetime, s. */
  tokenTtlS: number;
  /** Largest distance between a /auth timestamp and the clock, s; 0 = not checked. */
  timestampWindowS: number;
  /** Tokens held at once; also the cap on remembered /auth signs. */
  maxTokens: number;
}

export interface CoapAuthOptions extends CoapAuthConfig {
  /** Products (their `auth` opt-out) and devices (secret, status, ICCID); audit receives card mismatches. */
  registry: Pick<Registry, 'product' | 'device' | 'audit'>;
  /** Where refused /auth requests and tokens are audited (rate-limited, src/transport/audit.ts); absent: not logged. */
  logger?: Logger;
}

/** Why an /auth or an uplink was refused, as counted on /status (listeners.coap.auth.refused). */
export const AUTH_REFUSAL_REASONS = [
  'malformed', // /auth body that is not the JSON form (4.00)
  'badSign', // /auth sign does not verify (4.01)
  'expired', // /auth timestamp outside coap.auth.timestampWindowS (4.01)
  'unknownDevice', // /auth for a device the registry lacks: answered like a bad sign (4.01)
  'disabled', // /auth of a disabled device (4.03)
  'cardMismatch', // /auth with another ICCID than the device's (4.03, audited)
  'tooSmall', // /auth request smaller than its answer would be (RFC 7252 §11.3; 4.00)
  'replay', // sequence number missing or not increasing, or a /auth sign used twice (4.01)
  'unknownToken', // token never issued, dropped at the cap, or revoked (device removed, secret rotated) (4.01)
  'tokenExpired', // token older than coap.auth.tokenTtlS (4.01)
  'tokenMismatch', // token of one device on another device's path (4.03)
  'unauthenticated', // no token while coap.auth.mode is 'required', or for a product with coapEncryption (4.01)
  'undecryptable', // coapEncryption: sequence number or payload does not decrypt with the token's key (4.01)
] as const;
export type AuthRefusalReason = (typeof AUTH_REFUSAL_REASONS)[number];

export interface CoapAuthStats {
  mode: CoapAuthMode;
  /** Tokens issued by POST /auth. */
  issued: number;
  /** Uplinks accepted with a valid token and sequence number. */
  verified: number;
  /** Refusals by reason. */
  refused: Record<AuthRefusalReason, number>;
  /** Tokens held now (at most coap.auth.maxTokens). */
  tokens: number;
  /** Tokens dropped before their expiry because the table was full. */
  evicted: number;
  /** Refusals left out of the audit log by its rate limit. */
  auditSuppressed: number;
}

export type AuthRefusal = { ok: false; reason: AuthRefusalReason; error: WanwuError };

/**
 * An uplink that may proceed. accept() consumes its sequence number once the request is taken.
 * `key`: the product has coapEncryption; the payload is decrypted with it (and refused as
 * 'undecryptable' when it does not) and every answer from then on is encrypted with it.
 */
export interface AuthVerdict {
  ok: true;
  accept(): void;
  key: Buffer | undefined;
}

/** A verified /auth, not yet issued (the listener first checks that the answer fits, RFC 7252 §11.3). */
export interface AuthGrant {
  productKey: string;
  deviceName: string;
  token: string;
  random: string;
  expiresInS: number;
  /** The first sequence number the device may use is above this (the body's `seq`, else -1). */
  lastSeq: number;
  secret: string;
  signKey: string;
  signExpiresAt: number;
  /** The AES key (encryption.ts) when the product has coapEncryption; the answer then carries seqOffset too. */
  key?: Buffer;
}

interface Session {
  productKey: string;
  deviceName: string;
  /** The secret the token was signed for: rotating it (or removing the device) revokes the token. */
  secret: string;
  expiresAt: number;
  lastSeq: number;
  /** coapEncryption: the key derived at /auth, so no request pays for the derivation. */
  key: Buffer | undefined;
}

/** Parameters Alibaba leaves out of the CoAP sign content. */
const SIGN_EXCLUDED: ReadonlySet<string> = new Set(['sign', 'signmethod', 'version']);

/** Constant-time comparison of two hex signs (case-insensitive). */
function sameHex(expected: string, given: string): boolean {
  const a = Buffer.from(expected.toLowerCase(), 'utf8');
  const b = Buffer.from(given.toLowerCase(), 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

interface AuthBody {
  productKey: string;
  deviceName: string;
  clientId: string;
  timestamp: string;
  signMethod: SignMethod;
  sign: string;
  iccid?: string;
  seq?: number;
  /**
   * Alibaba's sign content for CoAP is every submitted parameter except sign, signmethod and version,
   * sorted by name and joined as name+value (help.aliyun.com/document_detail/57697.html), so a device
   * that also sends `seq` (Alibaba's C SDK does) signs it too. Set only when the body has parameters
   * beyond the four of the MQTT form; check() accepts a sign over either content.
   */
  fullContent?: string;
}

export class CoapAuthenticator {
  private readonly tokens = new Map<string, Session>();
  /** `pk/dn` -> the device's tokens, oldest first (may name tokens already swept: filtered at issue). */
  private readonly byDevice = new Map<string, string[]>();
  /** /auth signs already answered, until their timestamp leaves the window: `pk\0dn\0ts\0clientId` -> expiry ms. */
  private readonly usedSigns = new Map<string, number>();
  private readonly counters = {
    issued: 0,
    verified: 0,
    evicted: 0,
    refused: Object.fromEntries(AUTH_REFUSAL_REASONS.map((r) => [r, 0])) as Record<AuthRefusalReason, number>,
  };

  private readonly auditLog: AuditLog | null;

  constructor(
    private readonly opts: CoapAuthOptions,
    private readonly now: () => number,
    private readonly random: (bytes: number) => Buffer = randomBytes,
  ) {
    this.auditLog = opts.logger ? new AuditLog(opts.logger, 'coap', now) : null;
  }

  /**
   * Writes a refusal to the audit log (at most 20 lines per 10 s, the rest counted), with the sender
   * and, for an uplink, the device its path names. The listener calls it for every refusal it answers.
   */
  audit(refusal: AuthRefusal, peer: string, device?: { productKey: string; deviceName: string }): void {
    this.auditLog?.write({ reason: refusal.reason, code: refusal.error.code, peer, ...device }, `coap auth refused: ${refusal.error.message}`);
  }

  /** Writes the audit log's last summary line (listener stop). */
  close(): void {
    this.auditLog?.close();
  }

  get mode(): CoapAuthMode {
    return this.opts.mode;
  }

  /** Checks a POST /auth body. On success the grant still has to be issued with issue(). */
  check(body: Buffer, source: string): { ok: true; grant: AuthGrant } | AuthRefusal {
    const parsed = parseAuthBody(body);
    if (typeof parsed === 'string') return this.refuse('malformed', new WanwuError('WANWU_ERR_MALFORMED', `/auth body: ${parsed}`));
    const { productKey, deviceName } = parsed;
    const product = this.opts.registry.product(productKey);
    const device = product && this.opts.registry.device(productKey, deviceName);
    // An unknown device gets the answer of a bad sign, so nobody can probe which device names exist
    // (as at MQTT login: CONNACK 4 for both).
    const badSign = () => new WanwuError('WANWU_ERR_AUTH', `/auth of ${productKey}/${deviceName}: unknown device or bad sign`);
    if (!device) return this.refuse('unknownDevice', badSign());
    const login = { id: parsed.clientId, productKey, deviceName, signMethod: parsed.signMethod, timestamp: parsed.timestamp };
    const signed =
      verifySign(login, device.deviceSecret, parsed.sign) ||
      (parsed.fullContent !== undefined && sameHex(computeSign(parsed.signMethod, device.deviceSecret, parsed.fullContent), parsed.sign));
    if (!signed) return this.refuse('badSign', badSign());

    const t = this.now();
    const windowMs = this.opts.timestampWindowS * 1000;
    const ts = Number(parsed.timestamp);
    if (windowMs > 0 && !(Math.abs(t - ts) <= windowMs)) {
      return this.refuse('expired', new WanwuError('WANWU_ERR_AUTH', `/auth timestamp ${parsed.timestamp} is more than ${this.opts.timestampWindowS} s from the gateway's clock (ms since the epoch)`));
    }
    const signKey = `${productKey}\u0000${deviceName}\u0000${parsed.timestamp}\u0000${parsed.clientId}`;
    if (windowMs > 0 && this.usedSigns.has(signKey)) {
      // A captured /auth replayed within the window would hand its sender a fresh token.
      return this.refuse('replay', new WanwuError('WANWU_ERR_REPLAY', `/auth sign of ${productKey}/${deviceName} was already used; sign a new timestamp`));
    }
    const refusal = deviceRefusal(device);
    if (refusal) return this.refuse('disabled', refusal);
    if (parsed.iccid !== undefined) {
      const mismatch = checkCard(device, parsed.iccid, product);
      if (mismatch) {
        this.opts.registry.audit?.({ at: t, productKey, deviceName, event: 'card-mismatch', detail: parsed.iccid.slice(0, 32), source: `coap ${source}` });
        return this.refuse('cardMismatch', mismatch);
      }
    }
    const random = this.random(RANDOM_BYTES).toString('hex');
    const grant: AuthGrant = {
      productKey,
      deviceName,
      token: this.random(TOKEN_BYTES).toString('base64url'),
      random,
      expiresInS: this.opts.tokenTtlS,
      lastSeq: parsed.seq ?? -1,
      secret: device.deviceSecret,
      signKey,
      signExpiresAt: Math.max(t, ts) + windowMs,
    };
    if (product.coapEncryption !== undefined) grant.key = deriveKey(device.deviceSecret, random);
    return { ok: true, grant };
  }

  /** Stores a granted token (dropping the oldest at the cap) and remembers its sign. */
  issue(grant: AuthGrant): void {
    const t = this.now();
    // At most TOKENS_PER_DEVICE live tokens per device, its oldest dropped first: one device's secret
    // (pulled out of one module) cannot fill the table and push every other device's token out.
    const device = `${grant.productKey}/${grant.deviceName}`;
    const own = (this.byDevice.get(device) ?? []).filter((tok) => this.tokens.has(tok));
    while (own.length >= TOKENS_PER_DEVICE) {
      this.tokens.delete(own.shift()!);
      this.counters.evicted++;
    }
    own.push(grant.token);
    this.byDevice.set(device, own);
    while (this.tokens.size >= this.opts.maxTokens) {
      const oldest = this.tokens.keys().next().value as string;
      this.tokens.delete(oldest);
      this.counters.evicted++;
    }
    this.tokens.set(grant.token, {
      productKey: grant.productKey,
      deviceName: grant.deviceName,
      secret: grant.secret,
      expiresAt: t + grant.expiresInS * 1000,
      lastSeq: grant.lastSeq,
      key: grant.key,
    });
    if (this.opts.timestampWindowS > 0) {
      while (this.usedSigns.size >= this.opts.maxTokens) this.usedSigns.delete(this.usedSigns.keys().next().value as string);
      this.usedSigns.set(grant.signKey, grant.signExpiresAt);
    }
    this.counters.issued++;
  }

  /**
   * The 2.05 body of a grant: `{"token","expiresIn","random"}`, plus `"seqOffset"` for a product with
   * coapEncryption: the first sequence number accepted (encryption.ts explains the choice).
   */
  static answer(grant: AuthGrant): Buffer {
    const seqOffset = grant.key === undefined ? '' : `,"seqOffset":${grant.lastSeq + 1}`;
    return Buffer.from(`{"token":"${grant.token}","expiresIn":${grant.expiresInS},"random":"${grant.random}"${seqOffset}}`);
  }

  /**
   * Checks an uplink to `target` carrying `token` (option 2088) and `seq` (option 2089), either
   * possibly absent. `continuation`: a Block1 block after the first, which may repeat the sequence
   * number its transfer began with (libcoap repeats every option on each block). On success the
   * caller calls accept() once the request is taken (not refused at a rate limit or capacity), which
   * consumes the sequence number: a retransmission of a request refused later, e.g. with 5.03, gets
   * that refusal again rather than a replay refusal.
   */
  verify(target: { productKey: string; deviceName: string }, token: Buffer | undefined, seq: Buffer | undefined, continuation: boolean): AuthVerdict | AuthRefusal {
    if (token === undefined) {
      const product = this.opts.registry.product(target.productKey);
      // An encrypting product's payload needs its token's key, whatever the mode.
      if (product?.coapEncryption !== undefined) {
        return this.refuse('unauthenticated', new WanwuError('WANWU_ERR_TOKEN', `no token for a product with coapEncryption (CoAP option 2088): authenticate with POST /auth for the key of ${target.productKey}'s payloads`));
      }
      if (this.opts.mode === 'optional' || product?.auth === 'none') return PASS;
      return this.refuse('unauthenticated', new WanwuError('WANWU_ERR_TOKEN', 'no token (CoAP option 2088): authenticate with POST /auth'));
    }
    // The token as the answer gave it (22 base64url characters), or its 16 raw bytes.
    const key = token.length === TOKEN_BYTES ? token.toString('base64url') : token.toString('latin1');
    const session = this.tokens.get(key);
    if (session === undefined) return this.refuse('unknownToken', new WanwuError('WANWU_ERR_TOKEN', 'unknown token: authenticate again with POST /auth'));
    if (session.expiresAt <= this.now()) {
      this.tokens.delete(key);
      return this.refuse('tokenExpired', new WanwuError('WANWU_ERR_TOKEN', 'token expired: authenticate again with POST /auth'));
    }
    const device = this.opts.registry.device(session.productKey, session.deviceName);
    if (device === undefined || device.deviceSecret !== session.secret) {
      this.tokens.delete(key);
      return this.refuse('unknownToken', new WanwuError('WANWU_ERR_TOKEN', 'token revoked (device removed or secret rotated): authenticate again with POST /auth'));
    }
    if (session.productKey !== target.productKey || session.deviceName !== target.deviceName) {
      return this.refuse('tokenMismatch', new WanwuError('WANWU_ERR_FORBIDDEN', `the token belongs to another device than ${target.productKey}/${target.deviceName}`));
    }
    const payloadKey = session.key;
    // RFC 7252 §3.2 uint of at most 4 bytes, or with coapEncryption its decimal digits encrypted
    // (encryption.ts); §5.4.5: only the first occurrence counts (the caller passes it).
    const n = seq === undefined ? Number.NaN : payloadKey === undefined ? decodeUint(seq) : decryptSeq(payloadKey, seq);
    if (Number.isNaN(n)) {
      if (payloadKey === undefined) return this.refuse('replay', new WanwuError('WANWU_ERR_REPLAY', 'a token needs a sequence number (CoAP option 2089, uint of at most 4 bytes)'));
      if (seq === undefined) return this.refuse('replay', new WanwuError('WANWU_ERR_REPLAY', 'a token needs a sequence number (CoAP option 2089, its decimal digits encrypted)'));
      return this.refuse('undecryptable', new WanwuError('WANWU_ERR_DECRYPT', "sequence number (CoAP option 2089) does not decrypt with this token's key to decimal digits; encrypt it like the payload"));
    }
    if (continuation ? n < session.lastSeq : n <= session.lastSeq) {
      // With coapEncryption the numbers stay out of the (clear) diagnostic: it would tell whoever
      // replays a captured datagram what its encrypted option 2089 decrypts to.
      const detail = payloadKey === undefined ? `sequence number ${n} is not above ${session.lastSeq}, the last one accepted for this token` : 'sequence number not above the last one accepted for this token';
      return this.refuse('replay', new WanwuError('WANWU_ERR_REPLAY', detail));
    }
    return {
      ok: true,
      accept: () => {
        if (n > session.lastSeq) session.lastSeq = n;
        this.counters.verified++;
      },
      key: payloadKey,
    };
  }

  /** Counts a refusal decided by the listener around the authenticator (e.g. tooSmall). */
  refuse(reason: AuthRefusalReason, error: WanwuError): AuthRefusal {
    this.counters.refused[reason]++;
    return { ok: false, reason, error };
  }

  /** Drops expired tokens and signs whose timestamp has left the window. */
  sweep(t: number): void {
    // Constant TTL: insertion order is expiry order, so the scan stops at the first live token.
    for (const [key, s] of this.tokens) {
      if (s.expiresAt > t) break;
      this.tokens.delete(key);
    }
    for (const [key, expiresAt] of this.usedSigns) if (expiresAt <= t) this.usedSigns.delete(key);
  }

  clear(): void {
    this.tokens.clear();
    this.byDevice.clear();
    this.usedSigns.clear();
  }

  stats(): CoapAuthStats {
    return {
      mode: this.opts.mode,
      issued: this.counters.issued,
      verified: this.counters.verified,
      refused: { ...this.counters.refused },
      tokens: this.tokens.size,
      evicted: this.counters.evicted,
      auditSuppressed: this.auditLog?.suppressed ?? 0,
    };
  }
}

/** The verdict for an uplink without a token where none is needed. */
const PASS: AuthVerdict = Object.freeze({ ok: true as const, accept: () => {}, key: undefined });

const NAME = /^[A-Za-z0-9_.:@\-]{1,64}$/;

/** Parses the /auth JSON body; a string says what is wrong. */
function parseAuthBody(body: Buffer): AuthBody | string {
  let json: unknown;
  try {
    json = JSON.parse(body.toString('utf8'));
  } catch {
    return 'not JSON; expected {"productKey","deviceName","clientId","timestamp","signmethod","sign"}';
  }
  if (json === null || typeof json !== 'object' || Array.isArray(json)) return 'expected a JSON object';
  const o = json as Record<string, unknown>;
  const str = (k: string, re?: RegExp): string | undefined => {
    const v = o[k];
    return typeof v === 'string' && v.length > 0 && v.length <= 128 && (re === undefined || re.test(v)) ? v : undefined;
  };
  const productKey = str('productKey', NAME);
  if (productKey === undefined) return 'productKey: expected a name of 1-64 letters, digits or _ . : @ -';
  const deviceName = str('deviceName', NAME);
  if (deviceName === undefined) return 'deviceName: expected a name of 1-64 letters, digits or _ . : @ -';
  const clientId = str('clientId');
  if (clientId === undefined) return 'clientId: expected a string of 1-128 characters';
  // Alibaba's form sends the timestamp as a string of ms since the epoch; a number is taken too.
  const rawTs = o.timestamp;
  const timestamp = typeof rawTs === 'number' && Number.isSafeInteger(rawTs) && rawTs >= 0 ? String(rawTs) : typeof rawTs === 'string' && /^\d{1,16}$/.test(rawTs) ? rawTs : undefined;
  if (timestamp === undefined) return 'timestamp: expected ms since the epoch';
  const signMethod = o.signmethod;
  if (typeof signMethod !== 'string' || !Object.hasOwn(SIGN_METHODS, signMethod)) return `signmethod: expected one of ${Object.keys(SIGN_METHODS).join(', ')}`;
  const sign = str('sign', /^[0-9A-Fa-f]{32,128}$/);
  if (sign === undefined) return 'sign: expected the hex HMAC';
  const result: AuthBody = { productKey, deviceName, clientId, timestamp, signMethod: signMethod as SignMethod, sign };
  if (o.iccid !== undefined) {
    const iccid = str('iccid');
    if (iccid === undefined) return 'iccid: expected a string';
    result.iccid = iccid;
  }
  if (o.seq !== undefined) {
    // Alibaba's C SDK sends it as a string of digits.
    const seq = typeof o.seq === 'string' && /^\d{1,10}$/.test(o.seq) ? Number(o.seq) : o.seq;
    if (typeof seq !== 'number' || !Number.isInteger(seq) || seq < 0 || seq > 0xffffffff) return 'seq: expected an integer 0-4294967295';
    result.seq = seq;
  }
  const extra = Object.keys(o).filter((k) => !SIGN_EXCLUDED.has(k) && !['productKey', 'deviceName', 'clientId', 'timestamp'].includes(k));
  if (extra.length > 0) {
    const parts: string[] = [];
    for (const k of Object.keys(o).filter((k) => !SIGN_EXCLUDED.has(k)).sort()) {
      const v = o[k];
      if (typeof v !== 'string' && typeof v !== 'number') return `${k}: expected a string or a number`;
      parts.push(`${k}${String(v)}`);
    }
    result.fullContent = parts.join('');
  }
  return result;
}
