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
export type CoapErrorCode = '4.00' | '4.01' | '4.03' | '4.04' | '4.13' | '5.00' | '5.03';

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
  WANWU_ERR_TOPIC: { fault: 'device', alink: 6203, coap: '4.04', summary: 'unknown or unsupported topic or CoAP path' },
  WANWU_ERR_TOO_LARGE: { fault: 'device', alink: 460, coap: '4.13', summary: 'payload larger than the configured limit' },
  WANWU_ERR_MALFORMED: { fault: 'device', alink: 6207, coap: '4.00', summary: 'payload cannot be decoded (not JSON, wrong Alink shape, short binary frame)' },
  WANWU_ERR_METHOD: { fault: 'device', alink: 6300, coap: '4.00', summary: 'Alink method missing or does not match the topic' },
  WANWU_ERR_INVALID: { fault: 'device', alink: 460, coap: '4.00', summary: 'a value does not satisfy the thing model (type, range, enum, length)' },
  WANWU_ERR_UNKNOWN_IDENTIFIER: { fault: 'device', alink: 6320, coap: '4.00', summary: 'a property or event identifier the thing model does not define' },
  WANWU_ERR_BUFFER_FULL: { fault: 'capacity', alink: 503, coap: '5.03', summary: 'the local buffer refuses new records; retry later' },
  WANWU_ERR_STORAGE: { fault: 'storage', alink: 500, coap: '5.03', summary: 'the local SQLite buffer failed to commit; the device was not acknowledged' },
  WANWU_ERR_UPSTREAM: { fault: 'upstream', alink: 500, coap: '5.00', summary: 'an upstream broker refused or dropped the connection (retried)' },
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
