// The audit log of refused logins, shared by the listeners (issue 6: "auth failures go to a
// rate-limited audit log"): MQTT CONNECT refusals (transport/mqtt) and CoAP /auth and token refusals
// (transport/coap/auth.ts).

import type { Logger } from '../types.js';

/** At most AUDIT_MAX_LINES audit lines per AUDIT_WINDOW_MS; the rest are counted and summed up in one line. */
export const AUDIT_WINDOW_MS = 10_000;
export const AUDIT_MAX_LINES = 20;

/**
 * logger.warn for every refused login (MQTT CONNECT, CoAP /auth and token checks), but at most
 * maxLines per window, so a flood of bad logins cannot flood the log too. What is left out is
 * counted; when the window ends one line says how many. Each line carries `audit: {source}`.
 */
export class AuditLog {
  private windowStart = -Infinity;
  private lines = 0;
  private suppressedInWindow = 0;
  /** Lines left out since start. */
  suppressed = 0;
  private timer: NodeJS.Timeout | null = null;

  constructor(
    private readonly logger: Logger,
    /** Which listener's refusals: 'mqtt' or 'coap'. */
    private readonly source: 'mqtt' | 'coap',
    private readonly now: () => number = Date.now,
    private readonly windowMs = AUDIT_WINDOW_MS,
    private readonly maxLines = AUDIT_MAX_LINES,
  ) {}

  write(fields: Record<string, unknown>, msg: string): void {
    const now = this.now();
    if (now - this.windowStart >= this.windowMs) {
      this.summarize();
      this.windowStart = now;
      this.lines = 0;
    }
    if (this.lines < this.maxLines) {
      this.lines++;
      this.logger.warn({ audit: this.source, ...fields }, msg);
      return;
    }
    this.suppressed++;
    this.suppressedInWindow++;
    // Say how many were left out as soon as the window closes, even if no further refusal comes.
    this.timer ??= setTimeout(() => {
      this.timer = null;
      this.summarize();
    }, Math.max(0, this.windowStart + this.windowMs - now)).unref();
  }

  /** Writes the summary line of the window, if anything was left out. */
  summarize(): void {
    if (this.timer) {
      clearTimeout(this.timer);
      this.timer = null;
    }
    if (this.suppressedInWindow === 0) return;
    this.logger.warn({ audit: this.source, suppressed: this.suppressedInWindow, windowS: this.windowMs / 1000 }, `${this.source} login refusals left out of the audit log`);
    this.suppressedInWindow = 0;
  }

  /** Flushes the summary and clears the timer (listener stop). */
  close(): void {
    this.summarize();
  }
}
