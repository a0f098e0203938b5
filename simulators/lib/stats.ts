// What a load run counts and measures: sent, acknowledged, errors by code, retransmissions, a
// throughput series per second, and latency distributions as HDR histograms (hdr-histogram-js: a
// fixed-size log-linear histogram, 3 significant digits, so a million samples cost no more memory
// than ten). Latencies are recorded in microseconds and reported in milliseconds.

import * as hdr from 'hdr-histogram-js';

/** 1 µs .. 10 min at 3 significant digits. */
const HIGHEST_US = 600_000_000;

export interface LatencySummary {
  count: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
  mean: number;
}

/** A latency distribution in microseconds, summarized in milliseconds. */
export class Latency {
  private readonly h = hdr.build({ lowestDiscernibleValue: 1, highestTrackableValue: HIGHEST_US, numberOfSignificantValueDigits: 3 });

  /** Records one sample given in milliseconds (fractions kept to the microsecond). */
  recordMs(ms: number): void {
    const us = Math.round(ms * 1000);
    this.h.recordValue(Math.min(HIGHEST_US, Math.max(1, us)));
  }

  add(other: Latency): void {
    this.h.add(other.h);
  }

  reset(): void {
    this.h.reset();
  }

  get count(): number {
    return this.h.totalCount;
  }

  /** Percentile in ms (0 when empty). */
  percentileMs(p: number): number {
    return this.h.totalCount === 0 ? 0 : this.h.getValueAtPercentile(p) / 1000;
  }

  summary(): LatencySummary {
    const ms = (us: number) => Math.round(us) / 1000;
    if (this.h.totalCount === 0) return { count: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0, mean: 0 };
    return {
      count: this.h.totalCount,
      p50: ms(this.h.getValueAtPercentile(50)),
      p90: ms(this.h.getValueAtPercentile(90)),
      p99: ms(this.h.getValueAtPercentile(99)),
      p999: ms(this.h.getValueAtPercentile(99.9)),
      max: ms(this.h.maxValue),
      mean: ms(this.h.mean),
    };
  }
}

/** Per-second counts over a run (index 0 = the first second after start). */
export class RateSeries {
  private readonly buckets: number[] = [];

  constructor(private readonly startMs: number) {}

  mark(nowMs: number, n = 1): void {
    const i = Math.max(0, Math.floor((nowMs - this.startMs) / 1000));
    while (this.buckets.length <= i) this.buckets.push(0);
    this.buckets[i]! += n;
  }

  /** Whole seconds only: the last, partial second is left out unless `includePartial`. */
  values(nowMs: number, includePartial = false): number[] {
    const whole = Math.floor((nowMs - this.startMs) / 1000);
    const n = includePartial ? this.buckets.length : Math.min(this.buckets.length, whole);
    const out = this.buckets.slice(0, n);
    while (out.length < (includePartial ? 0 : whole)) out.push(0);
    return out;
  }
}

/** CoAP POST /auth exchanges of a run (see AuthStats). */
export interface AuthSummary {
  /** /auth requests sent (each exchange once, however often it was retransmitted). */
  sent: number;
  /** Answered 2.05. */
  ok: number;
  /** The others, by code: a CoAP response code, or the transport's `timeout`, `reset`... */
  errors: Record<string, number>;
  retransmissions: number;
  /** Uplinks that got 4.01 and were sent again after a new /auth (token gone or sequence overtaken). */
  renewedAfter401: number;
  /** Request -> 2.05, in ms. */
  latencyMs: LatencySummary;
}

/**
 * The CoAP authentication exchanges of a run. Counted apart from the uplinks, so `sent`, `acked`,
 * throughput and acknowledgement latency measure uplinks only and stay comparable with runs against
 * an endpoint that does not authenticate.
 */
export class AuthStats {
  sent = 0;
  ok = 0;
  readonly errors = new Map<string, number>();
  retransmissions = 0;
  renewedAfter401 = 0;
  readonly latency = new Latency();

  answered(code: string, latencyMs: number, retransmissions: number): void {
    this.retransmissions += retransmissions;
    if (code === '2.05') {
      this.ok++;
      this.latency.recordMs(latencyMs);
    } else this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  summary(): AuthSummary {
    return {
      sent: this.sent,
      ok: this.ok,
      errors: Object.fromEntries([...this.errors].sort()),
      retransmissions: this.retransmissions,
      renewedAfter401: this.renewedAfter401,
      latencyMs: this.latency.summary(),
    };
  }
}

/** The counters of one run, shared by every simulated device and the upstream watcher. */
export class RunStats {
  sent = 0;
  /**
   * Accepted by the gateway: CoAP 2.xx; MQTT PUBACK (QoS 1) or written (QoS 0), less those an Alink
   * reply then refused (MQTT 3.1.1 cannot refuse a PUBLISH, so the refusal follows the PUBACK).
   */
  acked = 0;
  /** Refused or failed, by code (CoAP response code, Alink reply code, `timeout`, `connect`...). */
  readonly errors = new Map<string, number>();
  retransmissions = 0;
  /** Deliberate faults sent (--invalid-rate, --malformed-rate, --duplicate-rate), by kind. */
  readonly faults = new Map<string, number>();
  readonly ack = new Latency();
  readonly endToEnd = new Latency();
  /** Records expected upstream (from acknowledged messages) and records seen there (distinct ids). */
  expectedRecords = 0;
  receivedRecords = 0;
  duplicateRecords = 0;
  ackedPerSecond: RateSeries;
  /** Acknowledgement latency of the current second, for the progress bar's p99. */
  readonly window = new Latency();
  /** CoAP POST /auth exchanges: not uplinks, so none of the counters above include them. */
  readonly coapAuth = new AuthStats();
  /** Commands NB-IoT devices got over CoAP (in answers, or pushed), and their replies: not uplinks either. */
  readonly commands = { piggybacked: 0, pushed: 0, replied: 0, replyErrors: 0 };

  constructor(public startMs: number) {
    this.ackedPerSecond = new RateSeries(startMs);
  }

  /** Starts the clock of the per-second series (after set-up, which is not part of the run). */
  begin(nowMs: number): void {
    this.startMs = nowMs;
    this.ackedPerSecond = new RateSeries(nowMs);
  }

  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  fault(kind: string): void {
    this.faults.set(kind, (this.faults.get(kind) ?? 0) + 1);
  }

  acknowledged(nowMs: number, latencyMs: number): void {
    this.acked++;
    this.ack.recordMs(latencyMs);
    this.window.recordMs(latencyMs);
    this.ackedPerSecond.mark(nowMs);
  }

  errorCount(): number {
    let n = 0;
    for (const v of this.errors.values()) n += v;
    return n;
  }
}

/**
 * Loss to the upstream: expected records that never arrived, as a fraction of expected (0 when nothing
 * was expected). Records seen upstream beyond the expected count (duplicates are already removed) do
 * not make loss negative.
 */
export function lossRatio(expected: number, received: number): number {
  if (expected <= 0) return 0;
  return Math.max(0, expected - received) / expected;
}
