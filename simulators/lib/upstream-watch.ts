// Watches the upstream broker the gateway forwards to, and matches what arrives there with what the
// simulated devices sent: end-to-end latency (device send -> record at the upstream) and loss.
//
// Matching: the gateway gives every record its own id (UUIDv7), so the device cannot know it in
// advance. Records are matched per device in send order instead, which the gateway keeps per device
// and topic (ARCHITECTURE.md, forwarder): every message the simulator expects to be committed pushes
// its send time onto its device's queue, once per record it carries; every distinct record id seen
// upstream pops one. Record ids seen twice are upstream duplicates (at-least-once), counted and not
// matched again. A device sending on two topics (properties and events) can see them interleave
// differently; the loss count is exact either way, the latency of such a pair approximate.

import mqtt, { type MqttClient } from 'mqtt';
import type { RunStats } from './stats.js';

export interface UpstreamWatchOptions {
  url: string;
  /** Topic filter the gateway's records arrive on (Wanwu's default template: wanwu/{productKey}/{deviceName}/{kind}). */
  topic: string;
  username?: string;
  password?: string;
  stats: RunStats;
}

interface Pending {
  times: number[];
  head: number;
}

export class UpstreamWatch {
  private client: MqttClient | null = null;
  private readonly pending = new Map<string, Pending>();
  private readonly seen = new Set<string>();
  /** Records upstream from devices outside this run (other traffic on the broker). */
  foreign = 0;
  /** Messages that were not a record (unparseable JSON, no id). */
  unreadable = 0;

  constructor(private readonly opts: UpstreamWatchOptions) {}

  async start(): Promise<void> {
    if (this.client) return;
    const o = this.opts;
    const client = mqtt.connect(o.url, {
      clientId: `wanwu-sim-watch-${process.pid}-${Date.now().toString(36)}`,
      ...(o.username !== undefined ? { username: o.username } : {}),
      ...(o.password !== undefined ? { password: o.password } : {}),
      clean: true,
      reconnectPeriod: 1000,
      connectTimeout: 10_000,
    });
    this.client = client;
    client.on('message', (_topic, payload) => this.onMessage(payload));
    await new Promise<void>((resolve, reject) => {
      client.once('connect', () => {
        client.subscribe(o.topic, { qos: 1 }, (err, granted) => {
          if (err) reject(err);
          else if (granted?.[0]?.qos === 128) reject(new Error(`the upstream ${o.url} refused the subscription to ${o.topic}`));
          else resolve();
        });
      });
      client.once('error', (err) => reject(new Error(`upstream ${o.url}: ${err.message}`)));
    });
  }

  /** A device is part of the run: its records count (others are `foreign`). */
  track(productKey: string, deviceName: string): void {
    const key = `${productKey}/${deviceName}`;
    if (!this.pending.has(key)) this.pending.set(key, { times: [], head: 0 });
  }

  /** A message the gateway is expected to commit as `records` records, sent at `sentAt` (performance.now()). */
  expect(productKey: string, deviceName: string, records: number, sentAt: number): void {
    const p = this.pending.get(`${productKey}/${deviceName}`);
    if (!p) return;
    for (let i = 0; i < records; i++) p.times.push(sentAt);
  }

  /** An expectation turned out wrong (the gateway refused the message): forget its most recent records. */
  unexpect(productKey: string, deviceName: string, records: number): void {
    const p = this.pending.get(`${productKey}/${deviceName}`);
    if (!p) return;
    p.times.length = Math.max(p.head, p.times.length - records);
  }

  /** Records still awaited upstream. */
  outstanding(): number {
    let n = 0;
    for (const p of this.pending.values()) n += p.times.length - p.head;
    return n;
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = null;
    if (client) await new Promise<void>((resolve) => client.end(true, {}, () => resolve()));
  }

  private onMessage(payload: Buffer): void {
    let parsed: unknown;
    try {
      parsed = JSON.parse(payload.toString());
    } catch {
      this.unreadable++;
      return;
    }
    // json (one record) or json-batch (an array of records).
    const records = Array.isArray(parsed) ? parsed : [parsed];
    const now = performance.now();
    for (const r of records) this.onRecord(r as { id?: unknown; productKey?: unknown; deviceName?: unknown; kind?: unknown }, now);
  }

  private onRecord(r: { id?: unknown; productKey?: unknown; deviceName?: unknown; kind?: unknown }, now: number): void {
    // The gateway's own records (device liveness, command states) answer no device message.
    if (r.kind === 'state' || r.kind === 'command') return;
    if (typeof r.id !== 'string' || typeof r.productKey !== 'string' || typeof r.deviceName !== 'string') {
      this.unreadable++;
      return;
    }
    const p = this.pending.get(`${r.productKey}/${r.deviceName}`);
    if (!p) {
      this.foreign++;
      return;
    }
    const stats = this.opts.stats;
    if (this.seen.has(r.id)) {
      stats.duplicateRecords++;
      return;
    }
    this.seen.add(r.id);
    stats.receivedRecords++;
    if (p.head < p.times.length) {
      stats.endToEnd.recordMs(now - p.times[p.head]!);
      p.head++;
      // Drop the consumed prefix now and then so a long run does not keep every send time.
      if (p.head > 1024 && p.head * 2 > p.times.length) {
        p.times.splice(0, p.head);
        p.head = 0;
      }
    }
  }
}
