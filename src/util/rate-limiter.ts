// Token buckets keyed by a string (a source address, a device, an upstream), used for the CoAP
// listener's request limits (4.29) and for the command path's refusal records.
//
// A bucket holds up to `burst` tokens and refills at `perSecond`; a request takes one token or is
// refused, and the answer says how many seconds until a token is there (CoAP's 4.29 puts that in
// Max-Age, RFC 8516 §3). Refill is computed on lookup from the bucket's last reading (no timer per
// key), so a request costs one Map lookup and a few arithmetic operations.
//
// Memory is bounded by `maxKeys`. Keys live in two generations (Maps): a bucket left alone for
// `burst / perSecond` seconds is full again, which is exactly what a forgotten key gets, so the older
// generation can be dropped every such span without changing any answer. If the newer generation
// fills up first, the older one is dropped early (counted in `evicted`): those keys restart with a
// full bucket, which loosens the limit for them but never refuses anyone wrongly.

export interface RateSpec {
  /** Sustained rate, requests per second; 0 switches the limit off. */
  perSecond: number;
  /** Bucket size: requests accepted at once after a quiet period. */
  burst: number;
}

interface Bucket {
  tokens: number;
  /** Clock reading (ms) the token count was computed at. */
  at: number;
}

export class RateLimiter {
  private current = new Map<string, Bucket>();
  private previous = new Map<string, Bucket>();
  private readonly perMs: number;
  private readonly burst: number;
  private readonly spanMs: number;
  private readonly generationCap: number;
  private generationStart: number;
  /** Keys forgotten before their bucket was full again, because `maxKeys` was reached. */
  evicted = 0;

  constructor(spec: RateSpec, maxKeys: number, startMs: number) {
    if (!(spec.perSecond > 0)) throw new RangeError(`perSecond must be > 0, got ${spec.perSecond}`);
    if (!(spec.burst >= 1)) throw new RangeError(`burst must be >= 1, got ${spec.burst}`);
    if (!(maxKeys >= 2)) throw new RangeError(`maxKeys must be >= 2, got ${maxKeys}`);
    this.perMs = spec.perSecond / 1000;
    this.burst = spec.burst;
    this.spanMs = Math.max(1, Math.ceil(spec.burst / this.perMs));
    this.generationCap = Math.floor(maxKeys / 2);
    this.generationStart = startMs;
  }

  /**
   * Takes one token for `key` at clock reading `now` (ms). Returns 0 when the request may go on,
   * else the whole seconds (>= 1) until a token is available: the Max-Age of the 4.29 (RFC 8516 §3).
   */
  take(key: string, now: number): number {
    this.maintain(now);
    let b = this.current.get(key);
    if (b === undefined) {
      b = this.previous.get(key);
      if (b !== undefined) this.previous.delete(key);
      else b = { tokens: this.burst, at: now };
      if (this.current.size >= this.generationCap) this.rotateEarly(now);
      this.current.set(key, b);
    }
    // A clock that went backwards refills nothing.
    const elapsed = now - b.at;
    if (elapsed > 0) {
      b.tokens = Math.min(this.burst, b.tokens + elapsed * this.perMs);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return 0;
    }
    return Math.max(1, Math.ceil((1 - b.tokens) / this.perMs / 1000));
  }

  /** Keys tracked now (both generations). */
  get size(): number {
    return this.current.size + this.previous.size;
  }

  /** Forgets the keys whose buckets are full again; take() calls it, a timer may too when traffic stops. */
  maintain(now: number): void {
    const elapsed = now - this.generationStart;
    if (elapsed < this.spanMs) return;
    // Two or more spans without traffic: every bucket is full, so both generations go.
    this.previous = elapsed >= 2 * this.spanMs ? new Map() : this.current;
    this.current = new Map();
    this.generationStart = now;
  }

  private rotateEarly(now: number): void {
    this.evicted += this.previous.size;
    this.previous = this.current;
    this.current = new Map();
    this.generationStart = now;
  }
}
