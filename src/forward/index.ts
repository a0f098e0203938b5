// One forwarder per upstream broker: reads committed records from the buffer after its own cursor,
// publishes them with a bounded window of messages in flight, and advances the cursor only over a
// contiguous run of acknowledged records (PUBACK for QoS 1). A lost connection throws the window away
// and resumes from the cursor on a fresh connection, so delivery is at least once and, because records
// are re-sent in buffer order on one connection, in order per device.

import { hostname } from 'node:os';
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt';
import type { StoredRecord, RecordBuffer } from '../buffer/index.js';
import type { UpstreamConfig } from '../config/index.js';
import type { Logger, Stage } from '../types.js';

export interface ForwarderOptions {
  upstream: UpstreamConfig;
  /** The URL to connect to (config url, or the local broker's address when url is "local"). */
  url: string;
  /** Credentials that override the config's (used for the local broker's internal account). */
  username?: string | undefined;
  password?: string | undefined;
  buffer: RecordBuffer;
  logger: Logger;
  random?: () => number;
}

export interface ForwarderStats {
  name: string;
  url: string;
  connected: boolean;
  forwarded: number;
  inFlight: number;
  pending: number;
  cursor: number;
  reconnects: number;
  lastError: string | null;
  lastErrorAt: string | null;
}

export interface Forwarder extends Stage {
  stats(): ForwarderStats;
}

export function createForwarder(opts: ForwarderOptions): Forwarder {
  return new MqttForwarder(opts);
}

interface InFlight {
  seq: number;
  acked: boolean;
}

/** Renders `wanwu/{productKey}/{deviceName}/{kind}`-style templates; {event} falls back to the kind. */
export function compileTopic(template: string): (r: Pick<StoredRecord, 'productKey' | 'deviceName' | 'kind' | 'event'>) => string {
  const parts = template.split(/(\{[a-zA-Z]+\})/).filter((p) => p !== '');
  const getters = parts.map((p): ((r: Pick<StoredRecord, 'productKey' | 'deviceName' | 'kind' | 'event'>) => string) => {
    switch (p) {
      case '{productKey}': return (r) => r.productKey;
      case '{deviceName}': return (r) => r.deviceName;
      case '{kind}': return (r) => r.kind;
      case '{event}': return (r) => r.event ?? r.kind;
      default: return () => p;
    }
  });
  return (r) => {
    let s = '';
    for (const g of getters) s += g(r);
    return s;
  };
}

/**
 * Delay before reconnect attempt `attempt` (0-based): the ceiling doubles from minMs up to maxMs,
 * and the delay is drawn from [ceiling/2, ceiling] ("equal jitter"), so gateways that lost the same
 * broker do not all reconnect in the same instant, yet none retries sooner than half the ceiling.
 */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: () => number = Math.random): number {
  const ceiling = Math.min(maxMs, minMs * 2 ** Math.min(attempt, 30));
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

class MqttForwarder implements Forwarder {
  private client: MqttClient | null = null;
  private running = false;
  private connected = false;
  /** Records sent on the current connection, in send order; the head is the oldest unacknowledged. */
  private window: InFlight[] = [];
  private bySeq = new Map<number, InFlight>();
  /** Highest seq handed to the client on this connection. */
  private sentSeq = 0;
  private forwarded = 0;
  private reconnects = 0;
  private attempt = 0;
  private lastError: string | null = null;
  private lastErrorAt: string | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private unsubscribe: (() => void) | null = null;
  private pumping = false;
  private readonly topicOf: ReturnType<typeof compileTopic>;
  private readonly random: () => number;

  constructor(private readonly opts: ForwarderOptions) {
    this.topicOf = compileTopic(opts.upstream.topic);
    this.random = opts.random ?? Math.random;
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.unsubscribe = this.opts.buffer.onAppend(() => this.pump());
    this.connect();
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const client = this.client;
    if (client) {
      // Nothing new is sent (running is false); give acknowledgements already on the wire a moment so
      // the cursor is saved, then close cleanly with DISCONNECT.
      if (this.connected) await waitFor(() => this.window.length === 0, 2000);
      this.client = null;
      this.connected = false;
      client.removeAllListeners('close');
      await new Promise<void>((resolve) => client.end(false, {}, () => resolve()));
    }
    this.resetWindow();
  }

  stats(): ForwarderStats {
    const cursor = this.opts.buffer.cursor(this.opts.upstream.name);
    return {
      name: this.opts.upstream.name,
      url: redact(this.opts.url),
      connected: this.connected,
      forwarded: this.forwarded,
      inFlight: this.window.length,
      pending: Math.max(0, this.opts.buffer.lastSeq() - cursor),
      cursor,
      reconnects: this.reconnects,
      lastError: this.lastError,
      lastErrorAt: this.lastErrorAt,
    };
  }

  private connect(): void {
    const u = this.opts.upstream;
    const options: IClientOptions = {
      clientId: u.clientId ?? `wanwu-${u.name}-${hostname()}`.slice(0, 64),
      username: this.opts.username ?? u.username,
      password: this.opts.password ?? u.password,
      keepalive: u.keepaliveS,
      clean: true,
      // We own reconnection (exponential backoff with jitter) and re-sending (from the cursor).
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      queueQoSZero: false,
      resubscribe: false,
    };
    const client = mqtt.connect(this.opts.url, options);
    this.client = client;
    client.on('connect', () => {
      if (client !== this.client) return;
      this.connected = true;
      this.attempt = 0;
      this.opts.logger.info({ upstream: u.name, url: redact(this.opts.url) }, 'upstream connected');
      this.resetWindow();
      this.pump();
    });
    client.on('error', (err) => this.noteError(err));
    client.on('close', () => {
      if (client !== this.client) return;
      this.onConnectionLost(client);
    });
  }

  private onConnectionLost(client: MqttClient): void {
    const wasConnected = this.connected;
    this.connected = false;
    this.client = null;
    client.removeAllListeners();
    client.on('error', () => {});
    client.end(true);
    // Whatever was in flight is sent again from the cursor on the next connection.
    this.resetWindow();
    if (wasConnected) this.opts.logger.warn({ upstream: this.opts.upstream.name }, 'upstream connection lost');
    if (!this.running) return;
    const u = this.opts.upstream;
    const delay = backoffDelay(this.attempt, u.reconnectMinMs, u.reconnectMaxMs, this.random);
    this.attempt++;
    this.reconnects++;
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (this.running) this.connect();
    }, delay);
  }

  private resetWindow(): void {
    this.window = [];
    this.bySeq.clear();
    this.sentSeq = this.opts.buffer.cursor(this.opts.upstream.name);
  }

  /** Fills the window from the buffer. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const size = this.opts.upstream.window;
      while (this.running && this.connected && this.client && this.window.length < size) {
        const rows = this.opts.buffer.readAfter(this.sentSeq, size - this.window.length);
        if (rows.length === 0) break;
        for (const row of rows) this.send(this.client, row);
      }
    } finally {
      this.pumping = false;
    }
  }

  private send(client: MqttClient, row: StoredRecord): void {
    const entry: InFlight = { seq: row.seq, acked: false };
    this.window.push(entry);
    this.bySeq.set(row.seq, entry);
    this.sentSeq = row.seq;
    client.publish(this.topicOf(row), row.body, { qos: this.opts.upstream.qos }, (err) => {
      if (client !== this.client) return; // a closed connection's window was already dropped
      if (err) {
        this.noteError(err);
        return; // the connection will close; the record is sent again from the cursor
      }
      this.onAck(entry);
    });
  }

  private onAck(entry: InFlight): void {
    if (entry.acked || this.bySeq.get(entry.seq) !== entry) return;
    entry.acked = true;
    this.forwarded++;
    let cursor = -1;
    let drop = 0;
    while (drop < this.window.length && this.window[drop]!.acked) {
      cursor = this.window[drop]!.seq;
      this.bySeq.delete(cursor);
      drop++;
    }
    if (drop > 0) {
      this.window.splice(0, drop);
      this.opts.buffer.setCursor(this.opts.upstream.name, cursor);
      this.pump();
    }
  }

  private noteError(err: Error): void {
    this.lastError = err.message;
    this.lastErrorAt = new Date().toISOString();
    this.opts.logger.debug({ upstream: this.opts.upstream.name, err: err.message }, 'upstream error');
  }
}

function redact(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return url;
  }
}

async function waitFor(cond: () => boolean, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!cond() && Date.now() < until) await new Promise((r) => setTimeout(r, 10));
}
