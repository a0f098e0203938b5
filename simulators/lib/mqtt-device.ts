// A simulated Cat-1 or RedCap module on MQTT (mqtt.js): Alibaba-signed login, a persistent session
// (clean: false) with keepalive, QoS 0 or 1 publishes, and reconnects with exponential backoff and
// jitter after the connection drops. Alink replies ({topic}_reply, `{"id", "code"}`) tell refused
// messages apart: MQTT 3.1.1 cannot refuse a PUBLISH [MQTT-3.3.5-2], so Wanwu acknowledges it and
// answers with the error code in the reply.

import mqtt, { type MqttClient } from 'mqtt';
import { backoffDelay } from '../../src/forward/index.js';
import { signMqttLogin } from '../../src/registry/sign.js';

export interface MqttDeviceOptions {
  url: string;
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  qos: 0 | 1;
  /** Seconds; Alibaba's Link SDK uses 60-300 for cellular modules. */
  keepaliveS: number;
  /** false keeps the session (and the QoS 1 messages in flight) across reconnects. */
  clean: boolean;
  reconnectMinMs: number;
  reconnectMaxMs: number;
  /** Local address to connect from (127.0.0.x spreads sessions over more ephemeral ports). */
  localAddress?: string;
  /** Called with every Alink reply the device receives: its id (when the reply has one) and code. */
  onReply?: (reply: AlinkReply) => void;
}

export interface AlinkReply {
  id?: string;
  code: number;
  message?: string;
  topic: string;
}

export interface PublishResult {
  ok: boolean;
  /** 'puback' (QoS 1), 'sent' (QoS 0), or the failure: 'closed', 'stopped', an mqtt.js error code. */
  code: string;
  latencyMs: number;
}

export class MqttDevice {
  private client: MqttClient | null = null;
  private reconnectTimer: NodeJS.Timeout | null = null;
  private attempt = 0;
  private stopped = false;
  /** Connections made (the first and every reconnect). */
  connects = 0;
  disconnects = 0;

  constructor(private readonly opts: MqttDeviceOptions) {}

  get connected(): boolean {
    return this.client?.connected ?? false;
  }

  /** Connects; resolves once the first CONNACK arrives, rejects when the first attempt fails. */
  start(timeoutMs = 10_000): Promise<void> {
    if (this.client) return Promise.resolve();
    this.stopped = false;
    const o = this.opts;
    const login = signMqttLogin({ productKey: o.productKey, deviceName: o.deviceName, deviceSecret: o.deviceSecret });
    const client = mqtt.connect(o.url, {
      clientId: login.clientId,
      username: login.username,
      password: login.password,
      keepalive: o.keepaliveS,
      clean: o.clean,
      protocolVersion: 4,
      // Our own backoff (below) instead of mqtt.js's fixed period, so a fleet does not reconnect in lockstep.
      reconnectPeriod: 0,
      connectTimeout: timeoutMs,
      ...(o.localAddress ? { localAddress: o.localAddress } : {}),
    });
    this.client = client;
    client.on('message', (topic, payload) => this.reply(topic, payload));
    client.on('close', () => {
      this.disconnects++;
      this.scheduleReconnect();
    });
    client.on('error', () => {}); // surfaced through 'close' and the publish callbacks
    return new Promise<void>((resolve, reject) => {
      const onConnect = () => {
        client.off('close', onClose);
        resolve();
      };
      const onClose = () => {
        client.off('connect', onConnect);
        reject(new Error(`${o.productKey}/${o.deviceName}: could not connect to ${o.url}`));
      };
      client.once('connect', onConnect);
      client.once('close', onClose);
      client.on('connect', (connack) => {
        this.connects++;
        this.attempt = 0;
        // With a kept session the subscription survives; subscribe anyway (cheap, and needed when clean).
        if (!connack.sessionPresent || o.clean) {
          const base = `/sys/${o.productKey}/${o.deviceName}/thing`;
          client.subscribe([`${base}/event/+/post_reply`, `${base}/model/up_raw_reply`], { qos: 0 }, () => {});
        }
      });
    });
  }

  publish(topic: string, payload: Buffer): Promise<PublishResult> {
    const client = this.client;
    const start = performance.now();
    if (!client || this.stopped) return Promise.resolve({ ok: false, code: 'stopped', latencyMs: 0 });
    return new Promise<PublishResult>((resolve) => {
      // QoS 1: the callback runs on PUBACK; while disconnected mqtt.js keeps the message and sends it
      // after the reconnect, so the latency includes the outage (as a device's would).
      client.publish(topic, payload, { qos: this.opts.qos }, (err) => {
        const latencyMs = performance.now() - start;
        if (err) resolve({ ok: false, code: (err as { code?: string }).code ?? 'closed', latencyMs });
        else resolve({ ok: true, code: this.opts.qos === 1 ? 'puback' : 'sent', latencyMs });
      });
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.reconnectTimer) clearTimeout(this.reconnectTimer);
    this.reconnectTimer = null;
    const client = this.client;
    this.client = null;
    if (client) await new Promise<void>((resolve) => client.end(true, {}, () => resolve()));
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer || !this.client) return;
    const delay = backoffDelay(this.attempt++, this.opts.reconnectMinMs, this.opts.reconnectMaxMs);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = null;
      if (!this.stopped && this.client && !this.client.connected) this.client.reconnect();
    }, delay);
  }

  private reply(topic: string, payload: Buffer): void {
    if (!this.opts.onReply) return;
    try {
      const body = JSON.parse(payload.toString()) as { id?: unknown; code?: unknown; message?: unknown };
      if (typeof body.code !== 'number') return;
      this.opts.onReply({
        topic,
        code: body.code,
        ...(typeof body.id === 'string' ? { id: body.id } : {}),
        ...(typeof body.message === 'string' ? { message: body.message } : {}),
      });
    } catch {
      // Not an Alink reply: ignored.
    }
  }
}
