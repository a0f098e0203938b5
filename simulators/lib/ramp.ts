// `wanwu-sim ramp`: runs the fleet at a fixed total rate in steps (each `stepFactor` times the last)
// until a step breaks a bound, and reports the saturation point: the highest rate the gateway
// acknowledged while keeping loss, latency and pace within the bounds.

import { runFleet, type FleetOptions, type RunResult } from './fleet.js';
import { table } from './report.js';

export interface RampOptions {
  /** The fleet and targets; `rate` and `durationMs` are set per step. */
  base: FleetOptions;
  startRate: number;
  stepFactor: number;
  maxRate: number;
  maxLoss: number;
  maxP99Ms: number;
  log: (line: string) => void;
  /** Runs one step; runFleet unless a test gives its own. */
  runStep?: (opts: FleetOptions) => Promise<RunResult>;
}

export interface RampStep {
  offeredPerS: number;
  achievedPerS: number;
  p99Ms: number;
  lossRatio: number;
  errors: number;
  ok: boolean;
  /** Why the step failed. */
  broke: string[];
}

export interface RampResult {
  steps: RampStep[];
  /** The last step within every bound (null when even the first failed). */
  saturation: RampStep | null;
  /** False when every step up to maxRate passed: the saturation point is above what was tried. */
  found: boolean;
}

/** A step keeps pace when at least this share of the offered rate was acknowledged. */
export const KEEP_PACE = 0.95;

/** Judges one step against the bounds. */
export function judgeStep(offered: number, r: RunResult, maxLoss: number, maxP99Ms: number): RampStep {
  const achieved = r.durationS > 0 ? r.acked / r.durationS : 0;
  const errors = Object.values(r.errors).reduce((a, b) => a + b, 0);
  const lossRatio = r.endToEnd ? r.endToEnd.lossRatio : r.sent > 0 ? (r.sent - r.acked) / r.sent : 0;
  const broke: string[] = [];
  if (lossRatio > maxLoss) broke.push(`loss ${(lossRatio * 100).toFixed(3)}% > ${(maxLoss * 100).toFixed(3)}%`);
  if (r.ackLatencyMs.p99 > maxP99Ms) broke.push(`p99 ${r.ackLatencyMs.p99} ms > ${maxP99Ms} ms`);
  if (achieved < offered * KEEP_PACE) broke.push(`acknowledged ${Math.round(achieved)}/s of ${Math.round(offered)}/s offered`);
  return { offeredPerS: Math.round(offered), achievedPerS: Math.round(achieved), p99Ms: r.ackLatencyMs.p99, lossRatio, errors, ok: broke.length === 0, broke };
}

export async function runRamp(o: RampOptions): Promise<RampResult> {
  const steps: RampStep[] = [];
  const runStep = o.runStep ?? runFleet;
  for (let rate = o.startRate; rate <= o.maxRate; rate *= o.stepFactor) {
    const r = await runStep({ ...o.base, rate });
    const step = judgeStep(rate, r, o.maxLoss, o.maxP99Ms);
    steps.push(step);
    o.log(`ramp ${step.offeredPerS}/s: ${step.achievedPerS}/s acknowledged, p99 ${step.p99Ms} ms${step.ok ? '' : ` - ${step.broke.join(', ')}`}`);
    if (!step.ok) break;
  }
  const passing = steps.filter((s) => s.ok);
  return { steps, saturation: passing.at(-1) ?? null, found: steps.some((s) => !s.ok) };
}

export function formatRamp(r: RampResult): string {
  const rows = r.steps.map((s) => [String(s.offeredPerS), String(s.achievedPerS), s.p99Ms.toFixed(1), `${(s.lossRatio * 100).toFixed(3)}%`, String(s.errors), s.ok ? 'ok' : s.broke.join('; ')]);
  const head = table(['offered/s', 'acked/s', 'p99 ms', 'loss', 'errors', 'verdict'], rows);
  const tail = !r.found && r.saturation
    ? `no bound broken up to ${r.saturation.offeredPerS} msgs/s: saturation is above it (raise --max-rate)`
    : r.saturation ? `saturation: ${r.saturation.achievedPerS} msgs/s (p99 ${r.saturation.p99Ms} ms)` : 'saturation: not found (the first step already broke a bound)';
  return `${head}\n\n${tail}`;
}
