// When simulated devices send: the PSM wake-up cycle of an NB-IoT module (one device), and a
// fixed-rate pacer (a whole fleet at a target request rate).

export interface PsmScheduleOptions {
  /** Wake-to-wake interval (the periodic TAU / reporting period), ms. */
  intervalMs: number;
  /** Spread of each interval as a fraction: 0.1 = ±10 %. */
  jitter: number;
  /** How long the module stays reachable after its uplink (the T3324 active timer), ms. */
  activeWindowMs: number;
  /** Uniform [0, 1) source (default Math.random). */
  random?: () => number;
}

export class PsmSchedule {
  readonly intervalMs: number;
  readonly jitter: number;
  readonly activeWindowMs: number;
  private readonly random: () => number;

  constructor(opts: PsmScheduleOptions) {
    if (!(opts.intervalMs > 0)) throw new RangeError(`intervalMs must be > 0, got ${opts.intervalMs}`);
    if (!(opts.jitter >= 0 && opts.jitter <= 1)) throw new RangeError(`jitter must be a fraction in 0..1, got ${opts.jitter}`);
    if (!(opts.activeWindowMs >= 0)) throw new RangeError(`activeWindowMs must be >= 0, got ${opts.activeWindowMs}`);
    this.intervalMs = opts.intervalMs;
    this.jitter = opts.jitter;
    this.activeWindowMs = opts.activeWindowMs;
    this.random = opts.random ?? Math.random;
  }

  /** Uniform in [0, intervalMs): a fleet started at once spreads its first wakes over one interval. */
  firstWakeDelay(): number {
    return this.random() * this.intervalMs;
  }

  /** intervalMs * (1 + uniform(-jitter, +jitter)): real modules drift, so a fleet does not re-align. */
  nextWakeDelay(): number {
    return this.intervalMs * (1 + (2 * this.random() - 1) * this.jitter);
  }
}

/**
 * PSM states of an NB-IoT module (3GPP TS 24.301 §5.3.11, TS 23.682 §4.5.4), as the simulator
 * sees them: 'psm' asleep and unreachable, 'connected' awake and sending its uplink, 'active'
 * reachable for downlinks until the active timer (T3324) expires, then back to 'psm'.
 */
export type PsmState = 'psm' | 'connected' | 'active';

/** The cycle: psm → connected → active → psm. */
export const PSM_NEXT: Readonly<Record<PsmState, PsmState>> = Object.freeze({ psm: 'connected', connected: 'active', active: 'psm' });

/** The timer functions PsmDevice uses; injectable, defaults to the globals (looked up per call). */
export interface PsmTimers {
  setTimeout(fn: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
  /** Monotonic clock, ms (default performance.now()). */
  now?(): number;
}

const globalTimers: Required<PsmTimers> = {
  setTimeout: (fn, ms) => setTimeout(fn, ms),
  clearTimeout: (h) => clearTimeout(h as NodeJS.Timeout),
  now: () => performance.now(),
};

/** Drives one simulated device through its PSM cycle, calling `uplink` at each wake. */
export class PsmDevice {
  private _state: PsmState = 'psm';
  private _wakes = 0;
  private _failures = 0;
  private timer: unknown;
  /** Bumped by stop(): a cycle that was in flight (an awaited uplink) sees it and ends. */
  private generation = 0;
  private running = false;

  constructor(
    private readonly schedule: PsmSchedule,
    private readonly uplink: () => Promise<unknown>,
    private readonly timers: PsmTimers = globalTimers,
  ) {}

  get state(): PsmState {
    return this._state;
  }

  /** Wake-ups so far. */
  get wakes(): number {
    return this._wakes;
  }

  /** Uplinks that threw or rejected. */
  get failures(): number {
    return this._failures;
  }

  start(): void {
    if (this.running) return;
    this.running = true;
    this._state = 'psm';
    this.sleep(this.schedule.firstWakeDelay(), this.generation);
  }

  stop(): void {
    if (!this.running) return;
    this.running = false;
    this.generation++;
    if (this.timer !== undefined) this.timers.clearTimeout(this.timer);
    this.timer = undefined;
    this._state = 'psm';
  }

  private now(): number {
    return this.timers.now ? this.timers.now() : performance.now();
  }

  private sleep(ms: number, gen: number): void {
    this.timer = this.timers.setTimeout(() => {
      this.timer = undefined;
      if (gen === this.generation) void this.wake(gen);
    }, ms);
  }

  private async wake(gen: number): Promise<void> {
    const wokeAt = this.now();
    this._wakes++;
    this._state = 'connected';
    try {
      await this.uplink();
    } catch {
      this._failures++; // counted, never rethrown: one device's failure must not stop the fleet
    }
    if (gen !== this.generation) return;
    this._state = 'active';
    this.timer = this.timers.setTimeout(() => {
      this.timer = undefined;
      if (gen !== this.generation) return;
      this._state = 'psm';
      // The interval is wake-to-wake; if uplink + active window overran it, wake at once.
      this.sleep(Math.max(0, this.schedule.nextWakeDelay() - (this.now() - wokeAt)), gen);
    }, this.schedule.activeWindowMs);
  }
}

/**
 * Spreads a fixed total rate over time, token-bucket style: `due(now)` returns how many sends are
 * owed since the previous call, carrying fractions over so the long-run rate is exact. Credit is
 * capped at one second's worth (at least 1), so a stalled event loop does not release a burst.
 */
export class RatePacer {
  private last: number | undefined;
  private credit = 0;
  private readonly cap: number;

  constructor(readonly ratePerS: number) {
    if (!(Number.isFinite(ratePerS) && ratePerS > 0)) throw new RangeError(`rate must be a finite number > 0, got ${ratePerS}`);
    this.cap = Math.max(1, ratePerS);
  }

  /** Sends due since the last call; the first call only sets the origin and returns 0. */
  due(nowMs: number): number {
    if (this.last === undefined) {
      this.last = nowMs;
      return 0;
    }
    const elapsed = Math.max(0, nowMs - this.last); // a clock step backwards owes nothing
    this.last = Math.max(this.last, nowMs);
    this.credit = Math.min(this.cap, this.credit + (elapsed * this.ratePerS) / 1000);
    const n = Math.floor(this.credit);
    this.credit -= n;
    return n;
  }
}
