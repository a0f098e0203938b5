// The end of a run: a text table for people, a JSON report for machines (--report out.json), and the
// pass/fail verdict against --max-loss.

import { writeFileSync } from 'node:fs';
import type { RunResult } from './fleet.js';
import type { LatencySummary } from './stats.js';

/** `--max-loss`: a fraction (0.001) or a percentage ("0.1%"). */
export function parseLoss(text: string): number {
  const t = text.trim();
  const pct = t.endsWith('%');
  const n = Number(pct ? t.slice(0, -1) : t);
  if (!Number.isFinite(n) || n < 0 || (pct ? n > 100 : n > 1)) {
    throw new Error(`--max-loss: expected a fraction 0..1 or a percentage such as 0.1%, got ${JSON.stringify(text)}`);
  }
  return pct ? n / 100 : n;
}

export interface Verdict {
  pass: boolean;
  reasons: string[];
}

/**
 * Loss is judged only when the upstream was watched. A run without an upstream can still fail: every
 * message unanswered or refused although it was generated valid is loss as far as devices can tell.
 */
export function verdict(result: RunResult, maxLoss: number): Verdict {
  const reasons: string[] = [];
  if (result.endToEnd) {
    if (result.endToEnd.lossRatio > maxLoss) {
      reasons.push(`loss ${pct(result.endToEnd.lossRatio)} (${result.endToEnd.lost} of ${result.endToEnd.expected} records) exceeds --max-loss ${pct(maxLoss)}`);
    }
  }
  if (result.sent > 0) {
    const failed = result.sent - result.acked - result.refusalsExpected;
    const ratio = Math.max(0, failed) / result.sent;
    if (ratio > maxLoss) reasons.push(`${Math.max(0, failed)} of ${result.sent} messages were not acknowledged (${pct(ratio)}), above --max-loss ${pct(maxLoss)}`);
  }
  return { pass: reasons.length === 0, reasons };
}

function pct(x: number): string {
  return `${Math.round(x * 1e6) / 1e4}%`;
}

function latencyRow(name: string, l: LatencySummary): string[] {
  return [name, String(l.count), ms(l.p50), ms(l.p90), ms(l.p99), ms(l.p999), ms(l.max)];
}

function ms(v: number): string {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

/** A plain text table: columns padded to their widest cell. */
export function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.map(line)].join('\n');
}

/** The same as a markdown table (for the README). */
export function markdownTable(header: string[], rows: string[][]): string {
  const line = (cells: string[]) => `| ${cells.join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}

export function formatRun(result: RunResult, v: Verdict): string {
  const f = result.fleet;
  const out: string[] = [];
  out.push(`fleet: ${f.nbiot} NB-IoT (CoAP), ${f.cat1} Cat-1 (MQTT), ${f.redcap} RedCap (MQTT) for ${result.durationS} s`);
  out.push('');
  const counts: string[][] = [
    ['sent', String(result.sent)],
    ['acknowledged', String(result.acked)],
    ['errors', String(Object.values(result.errors).reduce((a, b) => a + b, 0))],
    ...Object.entries(result.errors).map(([code, n]) => [`  ${code}`, String(n)]),
    ['retransmissions', String(result.retransmissions)],
    ...Object.entries(result.faults).map(([kind, n]) => [`faults sent: ${kind}`, String(n)]),
    ['refusals expected (faults)', String(result.refusalsExpected)],
    ['refused although valid', String(result.unexpectedRefusals)],
    ['unanswered at the end', String(result.unanswered)],
    ['throughput mean (ack/s)', String(result.throughput.meanPerS)],
    ['throughput peak (ack/s)', String(result.throughput.peakPerS)],
  ];
  if (result.coapAuth) {
    // Not uplinks: kept out of sent, acknowledged and throughput above.
    const a = result.coapAuth;
    counts.push(
      ['CoAP /auth exchanges (not uplinks)', String(a.sent)],
      ['  answered 2.05', String(a.ok)],
      ...Object.entries(a.errors).map(([code, n]) => [`  ${code}`, String(n)]),
      ['  retransmissions', String(a.retransmissions)],
      ['uplinks sent again after 4.01', String(a.renewedAfter401)],
    );
  }
  if (result.endToEnd) {
    const e = result.endToEnd;
    counts.push(['records expected upstream', String(e.expected)], ['records received upstream', String(e.received)], ['records lost', `${e.lost} (${pct(e.lossRatio)})`], ['duplicate records upstream', String(e.duplicates)]);
  }
  out.push(table(['measure', 'value'], counts));
  out.push('');
  const lat = [latencyRow('acknowledgement', result.ackLatencyMs)];
  if (result.coapAuth && result.coapAuth.ok > 0) lat.push(latencyRow('CoAP /auth', result.coapAuth.latencyMs));
  if (result.endToEnd) lat.push(latencyRow('device -> upstream', result.endToEnd.latencyMs));
  out.push(table(['latency (ms)', 'count', 'p50', 'p90', 'p99', 'p99.9', 'max'], lat));
  out.push('');
  for (const u of result.unexpectedSamples) out.push(`refused although valid: ${u.productKey}/${u.deviceName} ${u.code}${u.message ? ` ${u.message}` : ''} payload ${u.payloadHex}`);
  if (result.unexpectedSamples.length > 0) out.push('');
  out.push(v.pass ? 'PASS' : `FAIL: ${v.reasons.join('; ')}`);
  return out.join('\n');
}

/** Writes the JSON report; the shape is documented in simulators/README.md. */
export function writeReport(path: string, report: Record<string, unknown>): void {
  writeFileSync(path, `${JSON.stringify(report, null, 2)}\n`);
}
