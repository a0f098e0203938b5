// Store-and-forward benchmark, against a real mosquitto on loopback:
//   append   - buffer appends with sync "full" group commit from 2,000 devices that each append their
//              next record once the previous is durable, next to bare better-sqlite3 batched inserts
//              of the same rows in the same run (target >= 200k records/s, ratio >= 0.7)
//   forward  - draining a backlog to mosquitto as single QoS 1 messages (>= 30k/s) and as
//              json-batch (>= 150k/s)
//   drain    - a backlog built at a steady ingest rate while the upstream is down drains at
//              >= 5x that rate once it is back
//   backlog  - (--backlog N, e.g. 10000000) RSS while N records fill and drain, and the file size after
//
//   npm run bench:store -- [--records 200000] [--backlog 10000000] [--append-only] [--json]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { createBuffer, type RecordBuffer } from '../../src/buffer/index.js';
import { parseConfig } from '../../src/config/index.js';
import { createForwarder } from '../../src/forward/index.js';
import type { Logger, TelemetryRecord } from '../../src/types.js';
import { uuidv7 } from '../../src/util/uuidv7.js';
import { Mosquitto, which } from '../lib/mosquitto.js';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

export interface BenchFigure {
  name: string;
  value: number;
  unit: string;
  target?: string;
  met?: boolean;
  note?: string;
}

/** A typical RedCap sensor record (about 300 bytes of JSON). */
export function sampleRecord(n: number, now = Date.now()): TelemetryRecord {
  return {
    id: uuidv7(now),
    productKey: 'SensorRedCap',
    deviceName: `rs-${String(n % 1000).padStart(4, '0')}`,
    kind: 'property',
    ts: now,
    receivedAt: now,
    transport: 'mqtt',
    rat: 'redcap',
    data: { temperature: 21.5 + (n % 10), humidity: 48.2, pressure: 101.325, vibration: 0.42, status: 0 },
    msgId: String(n),
  };
}

async function openBuffer(dir: string, name: string, upstreams: string[]): Promise<RecordBuffer> {
  const b = createBuffer({ path: join(dir, `${name}.db`), sync: 'full', logger: quiet, upstreams, maxBytes: null });
  await b.start();
  return b;
}

/**
 * Appends `total` records, `perTurn` concurrent single-record appends per event-loop turn, made turn by
 * turn: only one turn's records are alive at a time, so the process's memory is the buffer's, not a
 * pile of generated records (the RSS figures of the backlog benchmark depend on it).
 */
async function fill(buffer: RecordBuffer, total: number, perTurn: number): Promise<void> {
  for (let done = 0; done < total; done += perTurn) {
    const n = Math.min(perTurn, total - done);
    const promises = new Array<Promise<void>>(n);
    for (let i = 0; i < n; i++) promises[i] = buffer.append([sampleRecord(done + i)]);
    await Promise.all(promises);
  }
}

/**
 * Appends `total` records as a fleet of `devices` would: each device appends its next record as soon as
 * its previous one is durable (acknowledged), and the devices start over a few event-loop turns, as
 * real arrivals are spread out. Records are made beforehand, so the figure is the buffer's cost.
 * Returns records/s.
 */
async function fillAsDevices(buffer: RecordBuffer, total: number, devices: number): Promise<number> {
  const records = Array.from({ length: total }, (_, i) => sampleRecord(i));
  let next = 0;
  const start = performance.now();
  await Promise.all(
    Array.from({ length: devices }, async (_, d) => {
      for (let k = 0; k < d % 4; k++) await new Promise((r) => setImmediate(r));
      while (next < total) await buffer.append([records[next++]!]);
    }),
  );
  return (total * 1000) / (performance.now() - start);
}

export async function benchAppend(dir: string, records: number): Promise<BenchFigure[]> {
  const perTurn = 1000;
  const buffer = await openBuffer(dir, 'append', ['x']);
  const ours = await fillAsDevices(buffer, records, 2000);
  await buffer.stop();

  // Bare better-sqlite3: the same table, the same rows serialized the same way, one INSERT per row
  // (the usual idiom), one transaction per 1000 rows, WAL with synchronous=FULL.
  const db = new Database(join(dir, 'bare.db'));
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = FULL');
  db.exec('CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, route TEXT NOT NULL, received_at INTEGER NOT NULL, body TEXT NOT NULL)');
  const insert = db.prepare('INSERT INTO outbox (route, received_at, body) VALUES (?, ?, ?)');
  const batch = db.transaction((rows: TelemetryRecord[]) => {
    for (const r of rows) insert.run(`${r.productKey}\u001f${r.deviceName}\u001f${r.kind}\u001f${r.event ?? ''}`, r.receivedAt, JSON.stringify(r));
  });
  const all = Array.from({ length: records }, (_, i) => sampleRecord(i));
  const start = performance.now();
  for (let done = 0; done < records; done += perTurn) batch(all.slice(done, done + perTurn));
  const bare = (records * 1000) / (performance.now() - start);
  db.close();
  const ratio = Math.round((ours / bare) * 100) / 100;
  return [
    { name: 'buffer append (sync full, group commit, 2,000 devices)', value: Math.round(ours), unit: 'records/s', target: '>= 200,000', met: ours >= 200_000 },
    { name: 'bare better-sqlite3 batched inserts', value: Math.round(bare), unit: 'records/s' },
    { name: 'append ratio wanwu/bare', value: ratio, unit: 'x', target: '>= 0.7', met: ratio >= 0.7 },
  ];
}

/** Drains a prepared backlog to the broker; returns records/s. */
async function drain(dir: string, name: string, records: number, brokerUrl: string, upstream: Record<string, unknown>): Promise<number> {
  const buffer = await openBuffer(dir, name, ['bench']);
  await fill(buffer, records, 5000);
  const cfg = parseConfig({ upstreams: [{ name: 'bench', url: brokerUrl, ...upstream }] }).upstreams[0]!;
  const forwarder = createForwarder({ upstream: cfg, url: brokerUrl, buffer, logger: quiet });
  const start = performance.now();
  await forwarder.start();
  while (buffer.cursor('bench') < buffer.lastSeq()) await new Promise((r) => setTimeout(r, 5));
  const rate = (records * 1000) / (performance.now() - start);
  await forwarder.stop();
  await buffer.stop();
  return rate;
}

export async function benchForward(dir: string, records: number, brokerUrl: string): Promise<BenchFigure[]> {
  const single = await drain(dir, 'fwd-single', records, brokerUrl, { format: 'json', window: 1024, topic: 'bench/{deviceName}' });
  const batched = await drain(dir, 'fwd-batch', records * 2, brokerUrl, { format: 'json-batch', window: 64, batchMaxRecords: 500, topic: 'bench/all' });
  return [
    { name: 'forward to mosquitto, one QoS 1 message per record', value: Math.round(single), unit: 'records/s', target: '>= 30,000', met: single >= 30_000 },
    { name: 'forward to mosquitto, json-batch (500 per message)', value: Math.round(batched), unit: 'records/s', target: '>= 150,000', met: batched >= 150_000 },
  ];
}

/** Ingest at `rate`/s for `seconds` while the upstream is down, then bring it up and time the drain. */
export async function benchBacklogDrain(dir: string, rate: number, seconds: number, broker: Mosquitto): Promise<BenchFigure[]> {
  await broker.stop();
  const buffer = await openBuffer(dir, 'drain', ['bench']);
  const cfg = parseConfig({ upstreams: [{ name: 'bench', url: broker.url, reconnectMinMs: 50, reconnectMaxMs: 100, window: 1024, topic: 'bench/{deviceName}' }] }).upstreams[0]!;
  const forwarder = createForwarder({ upstream: cfg, url: broker.url, buffer, logger: quiet });
  await forwarder.start();
  let n = 0;
  let ingesting = true;
  // Steady ingest: rate/100 records every 10 ms, for the whole test.
  const ingest = (async () => {
    const t0 = performance.now();
    while (ingesting) {
      const due = Math.floor(((performance.now() - t0) / 1000) * rate);
      const appends: Promise<void>[] = [];
      while (n < due) appends.push(buffer.append([sampleRecord(n++)]));
      await Promise.all(appends);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await new Promise((r) => setTimeout(r, seconds * 1000));
  const backlog = buffer.lastSeq() - buffer.cursor('bench');
  const upAt = performance.now();
  await broker.start(broker.port);
  while (buffer.cursor('bench') < buffer.lastSeq() - rate / 20) await new Promise((r) => setTimeout(r, 5));
  const drainS = (performance.now() - upAt) / 1000;
  ingesting = false;
  await ingest;
  await forwarder.stop();
  await buffer.stop();
  // While draining, new records kept arriving at `rate`: the forwarder moved backlog + rate*drainS.
  const drainRate = (backlog + rate * drainS) / drainS;
  const ratio = Math.round((drainRate / rate) * 10) / 10;
  return [
    { name: `backlog of ${backlog.toLocaleString('en')} built at ${rate.toLocaleString('en')}/s drained in`, value: Math.round(drainS * 10) / 10, unit: 's' },
    { name: 'backlog drain rate / ingest rate', value: ratio, unit: 'x', target: '>= 5', met: ratio >= 5 },
  ];
}

/** N records fill and drain (json-batch) while RSS is sampled; the file should shrink back. */
export async function benchLargeBacklog(dir: string, records: number, brokerUrl: string): Promise<BenchFigure[]> {
  const buffer = await openBuffer(dir, 'large', ['bench']);
  let peakRss = 0;
  const rssAt: number[] = [];
  const sampler = setInterval(() => {
    const rss = process.memoryUsage().rss;
    peakRss = Math.max(peakRss, rss);
    rssAt.push(rss);
  }, 250);
  const baseRss = process.memoryUsage().rss;
  await fill(buffer, records, 5000);
  const fullFile = buffer.stats().fileBytes;
  const rssFull = process.memoryUsage().rss;
  const cfg = parseConfig({ upstreams: [{ name: 'bench', url: brokerUrl, format: 'json-batch', window: 64, batchMaxRecords: 500, topic: 'bench/all' }] }).upstreams[0]!;
  const forwarder = createForwarder({ upstream: cfg, url: brokerUrl, buffer, logger: quiet });
  const start = performance.now();
  await forwarder.start();
  while (buffer.cursor('bench') < buffer.lastSeq()) await new Promise((r) => setTimeout(r, 50));
  const drainRate = (records * 1000) / (performance.now() - start);
  await forwarder.stop();
  // Housekeeping deletes 50k records a second; wait for it to catch up and give the pages back.
  while (buffer.stats().records > 0) await new Promise((r) => setTimeout(r, 200));
  await new Promise((r) => setTimeout(r, 1500));
  const afterFile = buffer.stats().fileBytes;
  clearInterval(sampler);
  await buffer.stop();
  const mb = (b: number) => Math.round(b / 1024 / 1024);
  return [
    { name: `${records.toLocaleString('en')}-record backlog: file when full`, value: mb(fullFile), unit: 'MiB' },
    { name: 'file after the drain', value: mb(afterFile), unit: 'MiB', target: 'shrinks back', met: afterFile < fullFile / 20 },
    { name: 'RSS at start / full / peak', value: mb(peakRss), unit: 'MiB', note: `${mb(baseRss)} / ${mb(rssFull)} / ${mb(peakRss)}`, target: 'flat (< start + 200 MiB)', met: peakRss < baseRss + 200 * 1024 * 1024 },
    { name: 'drain rate (json-batch)', value: Math.round(drainRate), unit: 'records/s' },
  ];
}

export function formatFigures(figures: readonly BenchFigure[]): string {
  const rows = [['measure', 'value', 'target', 'met']];
  for (const f of figures) rows.push([f.name, `${f.value.toLocaleString('en')} ${f.unit}${f.note ? ` (${f.note})` : ''}`, f.target ?? '', f.met === undefined ? '' : f.met ? 'yes' : 'NO']);
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(rows[0]!), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

/** The rows that need a mosquitto upstream (none, with a note, when it is not installed). */
async function benchUpstream(dir: string, records: number, backlog: number): Promise<BenchFigure[]> {
  if (!which('mosquitto')) {
    process.stderr.write('mosquitto is not installed: skipping the forwarding figures (apt-get install -y mosquitto)\n');
    return [];
  }
  const broker = new Mosquitto(dir);
  await broker.start();
  try {
    const figures = [...(await benchForward(dir, records, broker.url)), ...(await benchBacklogDrain(dir, 5000, 10, broker))];
    if (backlog > 0) figures.push(...(await benchLargeBacklog(dir, backlog, broker.url)));
    return figures;
  } finally {
    await broker.stop();
  }
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const records = Number(arg('--records') ?? 200_000);
  const backlog = arg('--backlog') === undefined ? 0 : Number(arg('--backlog'));
  const dir = mkdtempSync(join(arg('--dir') ?? tmpdir(), 'wanwu-bench-'));
  const figures: BenchFigure[] = [];
  try {
    figures.push(...(await benchAppend(dir, records)));
    // --append-only: just those rows, for repeating them in fresh processes (README, Benchmarks).
    if (!argv.includes('--append-only')) figures.push(...(await benchUpstream(dir, records, backlog)));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  process.stdout.write(argv.includes('--json') ? `${JSON.stringify(figures, null, 2)}\n` : `${formatFigures(figures)}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
