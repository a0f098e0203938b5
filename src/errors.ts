// Every error code Wanwu emits, in one place (convention 2 of ARCHITECTURE.md).
// A code is a stable string; the README lists them all. Each says whose fault it was:
//   device   - bad input from a device: rejected, counted, dead-lettered, never retried
//   config   - bad configuration or product definition: refused at start
//   storage  - the local buffer failed: the device is not acknowledged and retries
//   capacity - the local buffer is full (reject-new): the device is told to retry later
//   upstream - an upstream broker failed: the forwarder retries with backoff
//   internal - a bug: logged, the device gets a 5xx-class reply, the process keeps running

export type Fault = 'device' | 'config' | 'storage' | 'capacity' | 'upstream' | 'internal';

/** CoAP response codes used for errors (RFC 7252 §5.9, §12.1.2). */
export type CoapErrorCode = '4.00' | '4.01' | '4.03' | '4.04' | '4.08' | '4.13' | '4.29' | '5.00' | '5.03';

interface CodeInfo {
  fault: Fault;
  /** Alink reply `code` sent to the device (Alibaba IoT's device error codes where one exists). */
  alink: number;
  /** CoAP response code for a device request that fails with this error. */
  coap: CoapErrorCode;
  summary: string;
}

export const ERROR_CODES = {
  WANWU_ERR_CONFIG: { fault: 'config', alink: 500, coap: '5.00', summary: 'configuration refused at start (the key path is named)' },
  WANWU_ERR_PRODUCT: { fault: 'config', alink: 500, coap: '5.00', summary: 'a product definition in devices/ is broken (file and key named)' },
  WANWU_ERR_UNKNOWN_DEVICE: { fault: 'device', alink: 6100, coap: '4.04', summary: 'unknown product or device' },
  WANWU_ERR_AUTH: { fault: 'device', alink: 401, coap: '4.01', summary: 'device authentication failed (bad client id, username or sign)' },
  WANWU_ERR_FORBIDDEN: { fault: 'device', alink: 403, coap: '4.03', summary: "topic outside the device's own /sys/{pk}/{dn}/ namespace" },
  // CoAP authentication (src/transport/coap/auth.ts): POST /auth issues a token; uplinks carry it in option 2088 and a sequence number in 2089.
  WANWU_ERR_TOKEN: { fault: 'device', alink: 401, coap: '4.01', summary: 'CoAP token missing, unknown, expired or revoked: authenticate again with POST /auth' },
  WANWU_ERR_REPLAY: { fault: 'device', alink: 401, coap: '4.01', summary: 'CoAP sequence number (option 2089) missing or not above the last one accepted for the token, or a /auth sign used twice' },
  // CoAP payload encryption (src/transport/coap/encryption.ts): 4.01, so a device whose key is stale authenticates again (Alibaba's C SDK does on 4.01).
  WANWU_ERR_DECRYPT: { fault: 'device', alink: 401, coap: '4.01', summary: 'CoAP payload or sequence number (option 2089) of a product with coapEncryption does not decrypt with the key of its token (not encrypted, or another key)' },
  WANWU_ERR_TOPIC: { fault: 'device', alink: 6203, coap: '4.04', summary: 'unknown or unsupported topic or CoAP path' },
  WANWU_ERR_TOO_LARGE: { fault: 'device', alink: 460, coap: '4.13', summary: 'payload larger than the configured limit' },
  WANWU_ERR_MALFORMED: { fault: 'device', alink: 6207, coap: '4.00', summary: 'payload cannot be decoded (not JSON, wrong Alink shape, short binary frame)' },
  WANWU_ERR_METHOD: { fault: 'device', alink: 6300, coap: '4.00', summary: 'Alink method missing or does not match the topic' },
  WANWU_ERR_INVALID: { fault: 'device', alink: 460, coap: '4.00', summary: 'a value does not satisfy the thing model (type, range, enum, length)' },
  WANWU_ERR_UNKNOWN_IDENTIFIER: { fault: 'device', alink: 6320, coap: '4.00', summary: 'a property or event identifier the thing model does not define' },
  WANWU_ERR_BUFFER_FULL: { fault: 'capacity', alink: 503, coap: '5.03', summary: 'the local buffer refuses new records; retry later' },
  WANWU_ERR_STORAGE: { fault: 'storage', alink: 500, coap: '5.03', summary: 'the local SQLite buffer failed to commit; the device was not acknowledged' },
  WANWU_ERR_UPSTREAM: { fault: 'upstream', alink: 500, coap: '5.00', summary: 'an upstream broker refused or dropped the connection (retried)' },
  WANWU_ERR_RATE_LIMITED: { fault: 'device', alink: 429, coap: '4.29', summary: 'too many requests from this device or source; retry after Max-Age (RFC 8516)' },
  WANWU_ERR_BLOCKWISE: { fault: 'device', alink: 460, coap: '4.00', summary: 'invalid CoAP Block1 option: reserved SZX 7, or a block payload that is not the block size (RFC 7959 §2.2)' },
  WANWU_ERR_INCOMPLETE: { fault: 'device', alink: 460, coap: '4.08', summary: 'CoAP Block1 block out of order, or for a transfer that expired or never started (RFC 7959 §2.9.2)' },
  WANWU_ERR_OVERLOADED: { fault: 'capacity', alink: 503, coap: '5.03', summary: 'the CoAP listener is at a limit on work in progress (requests with ingest, Block1 transfers); retry after Max-Age' },
  WANWU_ERR_PROTOCOL: { fault: 'device', alink: 400, coap: '4.00', summary: 'MQTT CONNECT outside the device contract: keepalive out of range, or +, #, / or NUL in the client id or username' },
  WANWU_ERR_BANNED: { fault: 'device', alink: 429, coap: '4.29', summary: 'too many MQTT connects from this identity in a minute: refused for the ban period (CONNACK 5)' },
  WANWU_ERR_TOO_MANY_CONNECTIONS: { fault: 'capacity', alink: 503, coap: '5.03', summary: 'the MQTT listener holds mqtt.limits.maxConnections connections; new ones are closed at once' },
  // Device registry (src/registry/store.ts, `wanwu devices`). 6204 is Alibaba IoT's "device disabled".
  WANWU_ERR_REGISTRATION: { fault: 'device', alink: 403, coap: '4.03', summary: 'dynamic registration refused: off for the product, not over TLS, or the device is already active' },
  WANWU_ERR_DEVICE_DISABLED: { fault: 'device', alink: 6204, coap: '4.03', summary: 'the device is disabled in the registry (wanwu devices disable); refused until enabled again' },
  WANWU_ERR_CARD_MISMATCH: { fault: 'device', alink: 403, coap: '4.03', summary: 'the device presented an ICCID other than the one bound to it (card binding, 机卡绑定); refused and audited' },
  WANWU_ERR_REGISTRY: { fault: 'config', alink: 500, coap: '5.00', summary: 'the device registry database cannot be opened, or its secrets key is missing, malformed or wrong' },
  WANWU_ERR_DEVICE_RECORD: { fault: 'config', alink: 460, coap: '4.00', summary: 'a device record given to wanwu devices is refused: unknown product or device, duplicate device or IMEI, bad name, secret, IMEI or ICCID' },
  // Commands to devices (src/downlink): refused at submission, or a device reply that matches nothing.
  WANWU_ERR_COMMAND: { fault: 'device', alink: 460, coap: '4.00', summary: 'a command is refused at submission: unknown method or service, a property that is not rw, params or raw bytes that do not satisfy the thing model or the codec, bad ttl' },
  WANWU_ERR_QUEUE_FULL: { fault: 'capacity', alink: 503, coap: '5.03', summary: "the device's command queue holds downlink.maxPerDevice open commands; retry once some complete" },
  WANWU_ERR_COMMAND_STATE: { fault: 'device', alink: 409, coap: '4.00', summary: 'the command is already final (replied, expired or cancelled) and cannot be cancelled' },
  WANWU_ERR_UNKNOWN_COMMAND: { fault: 'device', alink: 6300, coap: '4.04', summary: 'no such command: an unknown id in the API, or a device reply whose id matches no open command of that device' },
  WANWU_ERR_INTERNAL: { fault: 'internal', alink: 500, coap: '5.00', summary: 'unexpected internal error (a bug; please report it)' },
} as const satisfies Record<string, CodeInfo>;

export type ErrorCode = keyof typeof ERROR_CODES;

export class WanwuError extends Error {
  readonly code: ErrorCode;
  /** Extra machine-readable detail (identifier, rule, value, key path ...). */
  readonly detail: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options?: { cause?: unknown; detail?: Record<string, unknown> }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'WanwuError';
    this.code = code;
    this.detail = options?.detail;
  }

  get fault(): Fault {
    return ERROR_CODES[this.code].fault;
  }

  get alinkCode(): number {
    return ERROR_CODES[this.code].alink;
  }

  get coapCode(): CoapErrorCode {
    return ERROR_CODES[this.code].coap;
  }

  toJSON(): { code: ErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}

export function isWanwuError(err: unknown): err is WanwuError {
  return err instanceof WanwuError;
}

/** Wraps anything thrown into a WanwuError, keeping the original as `cause`. */
export function asWanwuError(err: unknown, fallback: ErrorCode = 'WANWU_ERR_INTERNAL'): WanwuError {
  if (err instanceof WanwuError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new WanwuError(fallback, message, { cause: err });
}
