// A simulated NB-IoT module's side of CoAP authentication (Alibaba IoT's CoAP form; the gateway's side
// is src/transport/coap/auth.ts). The module signs once with POST /auth, keeps the token and its
// sequence number across PSM wake-ups (a real module keeps them in RAM through PSM), carries them in
// options 2088 and 2089, and authenticates again when the token is about to expire or an uplink gets
// 4.01. This file holds that state and builds the bytes; the caller's transport (the fleet's
// CoapTransport, CoapClient, coapLoad) does the exchange, so it also decides how /auth is counted.

import { signCoapAuth, type SignMethod } from '../../src/registry/sign.js';
import { AUTH_PATH_SEGMENT, OPT_AUTH_SEQ, OPT_AUTH_TOKEN } from '../../src/transport/coap/auth.js';
import { CONTENT_FORMAT_JSON, encodeUint } from '../../src/transport/coap/protocol.js';

export { OPT_AUTH_SEQ, OPT_AUTH_TOKEN };
/** Uri-Path of the authentication request. */
export const AUTH_PATH = `/${AUTH_PATH_SEGMENT}`;
/** Content-Format option of the /auth request: application/json (RFC 7252 §12.3). */
export const AUTH_CONTENT_FORMAT = Object.freeze({ name: 'Content-Format', value: encodeUint(CONTENT_FORMAT_JSON) });

/** What a module needs to authenticate: its triple, and optionally the client id and sign method it uses. */
export interface CoapDeviceIdentity {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  /** Default: the device name (Alibaba lets a module use its IMEI). */
  clientId?: string;
  signMethod?: SignMethod;
}

/** An option as coap-packet takes it (2088 and 2089 have no name there). */
export interface CoapOption {
  name: string | number;
  value: Buffer;
}

/** The answer to one /auth exchange: a CoAP response code, or the transport's 'timeout', 'reset'... */
export interface AuthAnswer {
  code: string;
  payload: Buffer;
}

/** Sends a /auth body (POST /auth, JSON) and returns the answer. Must not reject. */
export type AuthExchange = (body: Buffer) => Promise<AuthAnswer>;

/** The credentials of one uplink: the options to add, and the token they carry (to invalidate it after 4.01). */
export interface UplinkCredentials {
  options: CoapOption[];
  token: Buffer;
}

/** Renew this long before the token's expiry: an uplink sent just before it would arrive too late. */
const RENEW_MARGIN_MS = 60_000;
/** Largest sequence number (option 2089 is a uint of at most 4 bytes); past it the module authenticates again. */
const MAX_SEQ = 0xffffffff;

/**
 * One module's authentication state. Concurrent uplinks of the same module (a fleet at a fixed rate)
 * share one /auth exchange. Sequence numbers are handed out in send order; the gateway takes any
 * number above the last one it accepted, so a request overtaken on a jittery link gets 4.01; the
 * caller then calls refused() and sends it again after a new /auth (the fleet does).
 */
export class CoapAuthSession {
  private token: Buffer | null = null;
  private expiresAt = 0;
  private seq = 0;
  private lastTimestamp = 0;
  private pending: Promise<AuthAnswer> | null = null;
  /** The last /auth answer that gave no token (the fleet reports an uplink it could not send under its code). */
  lastFailure: AuthAnswer | null = null;

  constructor(
    readonly device: CoapDeviceIdentity,
    private readonly now: () => number = Date.now,
  ) {}

  /** A token is held, not within RENEW_MARGIN_MS (or half its lifetime) of its expiry, and sequence numbers remain. */
  get authenticated(): boolean {
    return this.token !== null && this.now() < this.expiresAt && this.seq < MAX_SEQ;
  }

  /**
   * The next /auth body: the MQTT sign over a timestamp that is never repeated for this module (the
   * gateway takes each sign once within its window).
   */
  authBody(): Buffer {
    const timestamp = Math.max(this.now(), this.lastTimestamp + 1);
    this.lastTimestamp = timestamp;
    return Buffer.from(JSON.stringify(signCoapAuth({ ...this.device, timestamp })));
  }

  /**
   * Authenticates unless a usable token is held. Resolves with the /auth answer, or null when no
   * exchange was needed; callers waiting on the same exchange all get its answer.
   */
  ensure(exchange: AuthExchange): Promise<AuthAnswer | null> {
    if (this.authenticated) return Promise.resolve(null);
    this.pending ??= this.authenticate(exchange).finally(() => (this.pending = null));
    return this.pending;
  }

  private async authenticate(exchange: AuthExchange): Promise<AuthAnswer> {
    const sentAt = this.now();
    const answer = await exchange(this.authBody());
    if (answer.code !== '2.05') {
      this.lastFailure = answer;
      return answer;
    }
    let parsed: { token?: unknown; expiresIn?: unknown };
    try {
      parsed = JSON.parse(answer.payload.toString('utf8')) as typeof parsed;
    } catch {
      parsed = {};
    }
    if (typeof parsed.token !== 'string' || parsed.token === '' || typeof parsed.expiresIn !== 'number' || !(parsed.expiresIn > 0)) {
      const bad = { code: 'bad-answer', payload: answer.payload };
      this.lastFailure = bad;
      return bad;
    }
    const lifetimeMs = parsed.expiresIn * 1000;
    this.token = Buffer.from(parsed.token);
    // Counted from the request, not the answer: the gateway's clock started when it issued the token.
    this.expiresAt = sentAt + lifetimeMs - Math.min(RENEW_MARGIN_MS, lifetimeMs / 2);
    // No `seq` in the body: the first uplink may use any number from 0; start at 1.
    this.seq = 0;
    return answer;
  }

  /**
   * Options 2088 (the token) and 2089 (the next sequence number) for one uplink. Call after ensure().
   * `seq` pins the number instead (a test repeating a request byte for byte); later ones continue above it.
   */
  next(seq?: number): UplinkCredentials {
    if (this.token === null) throw new Error(`${this.device.productKey}/${this.device.deviceName} is not authenticated: call ensure() first`);
    const n = seq ?? this.seq + 1;
    this.seq = Math.max(this.seq, n);
    return {
      token: this.token,
      options: [
        { name: OPT_AUTH_TOKEN, value: this.token },
        { name: OPT_AUTH_SEQ, value: encodeUint(n) },
      ],
    };
  }

  /**
   * An uplink sent with `token` got 4.01: the token is unknown to the gateway (restart, expiry,
   * eviction, secret rotated) or the sequence number was overtaken. Either way the next ensure()
   * authenticates again, unless another uplink already did since.
   */
  refused(token: Buffer): void {
    if (this.token !== null && this.token.equals(token)) this.token = null;
  }

  /** The token held (its 22 characters as bytes), for a caller that numbers requests itself (coapLoad). */
  get currentToken(): Buffer | null {
    return this.token;
  }

  /** The sequence number last handed out (0 right after /auth). */
  get sequence(): number {
    return this.seq;
  }
}

/**
 * A sequence number as a fixed 4-byte option value, for a request template patched in place
 * (coapLoad). RFC 7252 §3.2 asks senders for the shortest form but makes receivers take leading zeros.
 */
export function seqOption4(seq: number): CoapOption {
  const value = Buffer.alloc(4);
  value.writeUInt32BE(seq >>> 0);
  return { name: OPT_AUTH_SEQ, value };
}
