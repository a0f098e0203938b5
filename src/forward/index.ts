// One forwarder per upstream broker: reads committed records from the buffer after its own cursor,
// publishes them with a bounded window of messages in flight, and advances the cursor only over a
// contiguous run of acknowledged records (PUBACK for QoS 1). A lost connection throws the window away
// and resumes from the cursor on a fresh connection, so delivery is at least once and, because records
// are re-sent in buffer order, in order per device and topic.
//
// A slow or dead upstream never slows ingest or another upstream: each forwarder only reads the buffer.

import { readFileSync } from 'node:fs';
import { hostname } from 'node:os';
import mqtt, { type IClientOptions, type IPublishPacket, type MqttClient } from 'mqtt';
import type { StoredRecord, RecordBuffer } from '../buffer/index.js';
import type { UpstreamConfig } from '../config/index.js';
import { recordTopicMatcher } from '../config/schema.js';
import { WanwuError } from '../errors.js';
import type { Logger, Stage } from '../types.js';
import { encodePayload } from './payload.js';

export { decodeRecordProtobuf, encodeRecordProtobuf, recordProtoPath } from './payload.js';

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
  /**
   * Takes the messages of the upstream's command topic (upstream.commands), with the productKey and
   * deviceName read from the topic and source "upstream:{name}". The message is acknowledged
   * (PUBACK) once the promise settles, when the command, or its refusal, is stored. The gateway
   * passes the downlink's submitMessage; without it no command topic is subscribed.
   */
  submitCommand?: (productKey: string, deviceName: string, payload: Buffer, source: string) => Promise<unknown>;
}

export interface ForwarderStats {
  name: string;
  url: string;
  format: UpstreamConfig['format'];
  connected: boolean;
  /** Records acknowledged by the upstream since start. */
  forwarded: number;
  /** MQTT messages published and awaiting acknowledgement. */
  inFlight: number;
  /** Records this upstream has not acknowledged yet. */
  pending: number;
  oldestPendingAgeS: number;
  /** Records it never got: deleted when the buffer was full (drop-oldest). */
  dropped: number;
  /** Records it never got: older than storage.ttl. */
  expired: number;
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

type TopicFields = Pick<StoredRecord, 'productKey' | 'deviceName' | 'kind' | 'event'>;

/** Renders `wanwu/{productKey}/{deviceName}/{kind}`-style templates; {event} falls back to the kind. */
export function compileTopic(template: string): (r: TopicFields) => string {
  const parts = template.split(/(\{[a-zA-Z]+\})/).filter((p) => p !== '');
  const getters = parts.map((p): ((r: TopicFields) => string) => {
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
 * The subscription of a command topic template (config upstreams[].commands.topic): the filter, with
 * "+" for {productKey} and {deviceName}, and a parser that reads them back from a topic.
 */
export function commandSubscription(template: string): { filter: string; parse(topic: string): { productKey: string; deviceName: string } | null } {
  const levels = template.split('/');
  const pk = levels.indexOf('{productKey}');
  const dn = levels.indexOf('{deviceName}');
  return {
    filter: levels.map((l, i) => (i === pk || i === dn ? '+' : l)).join('/'),
    parse(topic) {
      const got = topic.split('/');
      if (got.length !== levels.length || !levels.every((l, i) => i === pk || i === dn || l === got[i])) return null;
      const productKey = got[pk]!;
      const deviceName = got[dn]!;
      return productKey !== '' && deviceName !== '' ? { productKey, deviceName } : null;
    },
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

/** MQTT client options for TLS (mqtts://, wss://): PEM files read at start, verification on unless insecure. */
export function tlsOptions(upstream: UpstreamConfig): Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized'> {
  const tls = upstream.tls;
  if (!tls) return {};
  const read = (key: 'ca' | 'cert' | 'key') => {
    const file = tls[key];
    if (file === undefined) return undefined;
    try {
      return readFileSync(file);
    } catch (err) {
      throw new WanwuError('WANWU_ERR_CONFIG', `upstreams[${upstream.name}].tls.${key}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
    }
  };
  const out: Pick<IClientOptions, 'ca' | 'cert' | 'key' | 'rejectUnauthorized'> = { rejectUnauthorized: !tls.insecure };
  const ca = read('ca');
  const cert = read('cert');
  const key = read('key');
  if (ca) out.ca = ca;
  if (cert) out.cert = cert;
  if (key) out.key = key;
  return out;
}

/** Records fetched from the buffer per query. */
const READ_AHEAD = 2048;

/** One record in the window: its seq and whether the message carrying it was acknowledged. */
interface InFlight {
  seq: number;
  acked: boolean;
}

class MqttForwarder implements Forwarder {
  private client: MqttClient | null = null;
  private running = false;
  private connected = false;
  /** Records sent on the current connection, in seq order; the head is the oldest unacknowledged. */
  private window: InFlight[] = [];
  /** Messages (one record, or a batch) published and not yet acknowledged. */
  private messagesInFlight = 0;
  /** Highest seq handed to the client on this connection. */
  private sentSeq = 0;
  private forwarded = 0;
  private reconnects = 0;
  private attempt = 0;
  private lastError: string | null = null;
  private lastErrorAt: string | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private batchTimer: NodeJS.Timeout | null = null;
  /** Set when a partly filled batch has waited batchMaxDelayMs: send it as it is. */
  private batchDue = false;
  private unsubscribe: (() => void) | null = null;
  private pumping = false;
  private pumpScheduled = false;
  /** Records read ahead from the buffer and not yet sent (one query serves many sends). */
  private ahead: StoredRecord[] = [];
  private aheadPos = 0;
  private readonly topicOf: ReturnType<typeof compileTopic>;
  private readonly random: () => number;
  private readonly tls: ReturnType<typeof tlsOptions>;
  /** The command topic's subscription, when the upstream sends commands and the gateway takes them. */
  private readonly commands: ReturnType<typeof commandSubscription> | null;
  private readonly isRecordTopic: (topic: string) => boolean;

  constructor(private readonly opts: ForwarderOptions) {
    this.topicOf = compileTopic(opts.upstream.topic);
    this.random = opts.random ?? Math.random;
    this.tls = tlsOptions(opts.upstream);
    this.commands = opts.upstream.commands && opts.submitCommand ? commandSubscription(opts.upstream.commands.topic) : null;
    this.isRecordTopic = recordTopicMatcher(opts.upstream.topic);
  }

  async start(): Promise<void> {
    if (this.running) return;
    this.running = true;
    this.unsubscribe = this.opts.buffer.onAppend(() => this.schedulePump());
    this.connect();
  }

  async stop(): Promise<void> {
    if (!this.running) return;
    this.running = false;
    this.unsubscribe?.();
    this.unsubscribe = null;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    this.clearBatchTimer();
    const client = this.client;
    if (client) {
      // Nothing new is sent (running is false); give acknowledgements already on the wire a moment so
      // the cursor is saved, then close cleanly with DISCONNECT.
      if (this.connected) await waitFor(() => this.messagesInFlight === 0, 2000);
      this.client = null;
      this.connected = false;
      client.removeAllListeners('close');
      // end(false) waits for every outgoing packet to be answered: one that still is not (a publish
      // after the wait, or the command topic's SUBSCRIBE to a broker that is going away) would hold
      // stop() forever, so then the connection is dropped without DISCONNECT.
      const force = Object.keys(client.outgoing).length > 0;
      await new Promise<void>((resolve) => client.end(force, {}, () => resolve()));
    }
    this.resetWindow();
  }

  stats(): ForwarderStats {
    const b = this.opts.buffer.upstreamStats(this.opts.upstream.name);
    return {
      name: this.opts.upstream.name,
      url: redact(this.opts.url),
      format: this.opts.upstream.format,
      connected: this.connected,
      forwarded: this.forwarded,
      inFlight: this.messagesInFlight,
      pending: b.pending,
      oldestPendingAgeS: b.oldestPendingAgeS,
      dropped: b.dropped,
      expired: b.expired,
      cursor: b.cursor,
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
      clean: u.clean,
      // We own reconnection (exponential backoff with jitter) and re-sending (from the cursor).
      reconnectPeriod: 0,
      connectTimeout: 10_000,
      queueQoSZero: false,
      resubscribe: false,
      ...this.tls,
    };
    const client = mqtt.connect(this.opts.url, options);
    this.client = client;
    // mqtt.js sends the PUBACK of an incoming message when handleMessage calls back: commands are
    // acknowledged only once stored, and the next incoming packet waits, so they queue in order.
    if (this.commands) client.handleMessage = (packet, callback) => this.onCommand(packet, callback);
    client.on('connect', () => {
      if (client !== this.client) return;
      this.connected = true;
      this.attempt = 0;
      this.opts.logger.info({ upstream: u.name, url: redact(this.opts.url) }, 'upstream connected');
      this.subscribeCommands(client);
      this.resetWindow();
      this.pump();
    });
    client.on('error', (err) => this.noteError(err));
    client.on('close', () => {
      if (client !== this.client) return;
      this.onConnectionLost(client);
    });
  }

  /** Every connection subscribes again: a clean session (the default) forgets subscriptions. */
  private subscribeCommands(client: MqttClient): void {
    if (!this.commands) return;
    const filter = this.commands.filter;
    client.subscribe(filter, { qos: 1 }, (err, granted) => {
      // SUBACK 0x80 [MQTT-3.9.3]: the broker's ACL refused it; records still flow, commands do not.
      const refused = err ?? (granted?.[0]?.qos === 128 ? new Error(`subscription to ${filter} refused by the broker`) : null);
      if (!refused || client !== this.client) return;
      this.noteError(refused);
      this.opts.logger.error({ upstream: this.opts.upstream.name, topic: filter, err: refused.message }, 'upstream command topic not subscribed');
    });
  }

  private onCommand(packet: IPublishPacket, callback: (err?: Error) => void): void {
    const where = this.commands?.parse(packet.topic);
    if (!where || !this.opts.submitCommand) return callback();
    // A topic one of our own records could have is never taken as a command: MQTT 3.1.1 echoes our
    // publishes back, and a refusal record on it would come back again, without end.
    if (this.isRecordTopic(packet.topic)) {
      this.opts.logger.debug({ upstream: this.opts.upstream.name, topic: packet.topic }, 'message on the command topic ignored: it could be one of our records');
      return callback();
    }
    // A retained message is replayed by the broker at every (re)subscription [MQTT-3.3.1-6]: taken,
    // it would queue the same command again after every reconnect. A live publish arrives with
    // retain 0 [MQTT-3.3.1-9] and is taken once.
    if (packet.retain) {
      this.opts.logger.warn({ upstream: this.opts.upstream.name, topic: packet.topic }, 'retained message on the command topic ignored: publish commands without retain');
      return callback();
    }
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    this.opts.submitCommand(where.productKey, where.deviceName, payload, `upstream:${this.opts.upstream.name}`).then(
      () => callback(),
      (err: Error) => {
        // Not even its refusal could be stored: no PUBACK, so a persistent session gets it again.
        this.noteError(err);
        this.opts.logger.error({ upstream: this.opts.upstream.name, topic: packet.topic, err: err.message }, 'upstream command not stored');
        callback(err);
      },
    );
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
    this.messagesInFlight = 0;
    this.sentSeq = this.opts.buffer.cursor(this.opts.upstream.name);
    this.ahead = [];
    this.aheadPos = 0;
    this.clearBatchTimer();
  }

  /**
   * Up to `limit` records after sentSeq, from the read-ahead (refilled from the buffer when used up).
   * Records at or below the cursor are skipped: already sent, or dropped/expired by the buffer.
   */
  private next(limit: number): StoredRecord[] {
    const floor = Math.max(this.sentSeq, this.opts.buffer.cursor(this.opts.upstream.name));
    while (this.aheadPos < this.ahead.length && this.ahead[this.aheadPos]!.seq <= floor) this.aheadPos++;
    if (this.aheadPos >= this.ahead.length) {
      const last = this.ahead.length > 0 ? this.ahead[this.ahead.length - 1]!.seq : 0;
      this.ahead = this.opts.buffer.readAfter(Math.max(last, floor), READ_AHEAD);
      this.aheadPos = 0;
    }
    return this.ahead.slice(this.aheadPos, this.aheadPos + limit);
  }

  /** Acks and commits arriving in one I/O turn lead to one pump, so sends leave in one write. */
  private schedulePump(): void {
    if (this.pumpScheduled) return;
    this.pumpScheduled = true;
    setImmediate(() => {
      this.pumpScheduled = false;
      this.pump();
    });
  }

  private clearBatchTimer(): void {
    if (this.batchTimer) clearTimeout(this.batchTimer);
    this.batchTimer = null;
    this.batchDue = false;
  }

  /** Fills the window from the buffer. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      const u = this.opts.upstream;
      const perMessage = u.format === 'json-batch' ? u.batchMaxRecords : 1;
      while (this.running && this.connected && this.client && this.messagesInFlight < u.window) {
        const room = u.window - this.messagesInFlight;
        const rows = this.next(Math.min(room * perMessage, READ_AHEAD));
        if (rows.length === 0) break;
        if (perMessage === 1) {
          for (const row of rows) this.send(this.client, this.topicOf(row), [row]);
          this.aheadPos += rows.length;
          continue;
        }
        if (!this.sendBatches(this.client, rows, room, perMessage)) break;
      }
    } finally {
      this.pumping = false;
    }
  }

  /**
   * json-batch: records are grouped by topic (so each topic keeps its order), full batches go at once,
   * and a partly filled batch waits up to batchMaxDelayMs for company. Returns false to stop pumping.
   */
  private sendBatches(client: MqttClient, rows: StoredRecord[], room: number, perMessage: number): boolean {
    const groups = new Map<string, StoredRecord[]>();
    for (const row of rows) {
      const topic = this.topicOf(row);
      let g = groups.get(topic);
      if (!g) groups.set(topic, (g = []));
      g.push(row);
    }
    const full = [...groups.values()].some((g) => g.length >= perMessage);
    if (!full && !this.batchDue) {
      if (!this.batchTimer) {
        this.batchTimer = setTimeout(() => {
          this.batchTimer = null;
          this.batchDue = true;
          this.pump();
        }, this.opts.upstream.batchMaxDelayMs);
      }
      return false;
    }
    this.clearBatchTimer();
    const before = this.sentSeq;
    // Send in seq order of each batch's first record; stop at the first record not sent, so that
    // sentSeq stays a prefix and nothing is skipped.
    const batches: StoredRecord[][] = [];
    for (const g of groups.values()) for (let i = 0; i < g.length; i += perMessage) batches.push(g.slice(i, i + perMessage));
    batches.sort((a, b) => a[0]!.seq - b[0]!.seq);
    const sendable = batches.slice(0, room);
    const sent = new Set<number>();
    for (const b of sendable) for (const r of b) sent.add(r.seq);
    let prefixEnd = this.sentSeq;
    for (const row of rows) {
      if (!sent.has(row.seq)) break;
      prefixEnd = row.seq;
    }
    for (const b of sendable) {
      const inPrefix = b.filter((r) => r.seq <= prefixEnd);
      if (inPrefix.length > 0) this.send(client, this.topicOf(inPrefix[0]!), inPrefix);
    }
    return prefixEnd > before;
  }

  private send(client: MqttClient, topic: string, rows: StoredRecord[]): void {
    const entries = rows.map((row) => ({ seq: row.seq, acked: false }));
    // Entries join the window in seq order (rows of a prefix; batches may interleave, so insert sorted).
    for (const e of entries) {
      const w = this.window;
      if (w.length === 0 || w[w.length - 1]!.seq < e.seq) w.push(e);
      else w.splice(w.findIndex((x) => x.seq > e.seq), 0, e);
    }
    this.sentSeq = Math.max(this.sentSeq, rows[rows.length - 1]!.seq);
    this.messagesInFlight++;
    let payload: string | Buffer;
    try {
      payload = encodePayload(this.opts.upstream.format, rows.map((r) => r.body));
    } catch (err) {
      // Should not happen (bodies are our own JSON); report loudly and keep the window consistent.
      this.noteError(err as Error);
      this.opts.logger.error({ upstream: this.opts.upstream.name, err: (err as Error).message }, 'cannot encode records for upstream');
      this.onAck(entries);
      return;
    }
    client.publish(topic, payload, { qos: this.opts.upstream.qos }, (err) => {
      if (client !== this.client) return; // a closed connection's window was already dropped
      if (err) {
        this.noteError(err);
        return; // the connection will close; the records are sent again from the cursor
      }
      this.onAck(entries);
    });
  }

  private onAck(entries: InFlight[]): void {
    this.messagesInFlight--;
    for (const e of entries) {
      if (e.acked) continue;
      e.acked = true;
      this.forwarded++;
    }
    let cursor = -1;
    let drop = 0;
    while (drop < this.window.length && this.window[drop]!.acked) {
      cursor = this.window[drop]!.seq;
      drop++;
    }
    if (drop > 0) {
      this.window.splice(0, drop);
      this.opts.buffer.setCursor(this.opts.upstream.name, cursor);
    }
    this.schedulePump();
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
