// The one configuration schema (convention 3): every option with its unit and default.
// Unknown keys are refused (strict objects) so a typo never silently falls back to a default.

import { z } from 'zod';

const port = z.number().int().min(0).max(65535);
const host = z.string().min(1);
const ident = z.string().regex(/^[A-Za-z0-9_.-]{1,64}$/, 'letters, digits, "_", "." or "-" (1-64 characters)');

/** Placeholders an upstream topic template may use. */
export const TOPIC_PLACEHOLDERS = ['productKey', 'deviceName', 'kind', 'event'] as const;

const topicTemplate = z
  .string()
  .min(1)
  .refine((t) => !/[+#]/.test(t), 'a topic template cannot contain MQTT wildcards (+ or #)')
  .refine(
    (t) => [...t.matchAll(/\{([^}]*)\}/g)].every((m) => (TOPIC_PLACEHOLDERS as readonly string[]).includes(m[1]!)),
    `placeholders must be one of ${TOPIC_PLACEHOLDERS.map((p) => `{${p}}`).join(' ')}`,
  );

const upstreamUrl = z.string().refine((u) => {
  if (u === 'local') return true;
  try {
    const url = new URL(u);
    return ['mqtt:', 'mqtts:', 'tcp:', 'ssl:', 'ws:', 'wss:'].includes(url.protocol) && url.hostname !== '';
  } catch {
    return false;
  }
}, '"local" (the gateway\'s own broker) or a URL mqtt://host:port, mqtts://, ws:// or wss://');

export const upstreamSchema = z.strictObject({
  /** Unique name; keys the upstream's cursor in the buffer, so renaming an upstream restarts its delivery. */
  name: ident,
  /** "local" = the gateway's own MQTT listener (records under wanwu/#), or mqtt[s]://host:port. */
  url: upstreamUrl,
  /** Topic template over {productKey} {deviceName} {kind} {event}. */
  topic: topicTemplate.default('wanwu/{productKey}/{deviceName}/{kind}'),
  /** MQTT QoS of forwarded records; the cursor advances on PUBACK (QoS 1), PUBCOMP (QoS 2) or write (QoS 0). */
  qos: z.union([z.literal(0), z.literal(1), z.literal(2)]).default(1),
  username: z.string().optional(),
  password: z.string().optional(),
  /** MQTT client id; default `wanwu-{name}-{hostname}`. */
  clientId: z.string().min(1).max(128).optional(),
  /** Records in flight (published, not yet acknowledged) at once. */
  window: z.number().int().min(1).max(65535).default(256),
  /** Reconnect backoff: first delay and cap, in ms (exponential with jitter). */
  reconnectMinMs: z.number().int().min(10).default(500),
  reconnectMaxMs: z.number().int().min(10).default(30_000),
  /** MQTT keepalive in seconds. */
  keepaliveS: z.number().int().min(0).max(65535).default(60),
  /** false = persistent session (the broker keeps our subscriptions and in-flight state across reconnects). */
  clean: z.boolean().default(true),
  /**
   * Payload: "json" (one record per message), "json-batch" (a JSON array of records that share a
   * topic, up to batchMaxRecords or batchMaxDelayMs), "protobuf" (one wanwu.v1.Record per message,
   * proto/wanwu/v1/record.proto).
   */
  format: z.enum(['json', 'json-batch', 'protobuf']).default('json'),
  /** json-batch: most records per message. */
  batchMaxRecords: z.number().int().min(1).max(10_000).default(100),
  /** json-batch: how long a partly filled batch waits for more records, in ms. */
  batchMaxDelayMs: z.number().int().min(0).max(60_000).default(20),
  /** TLS for mqtts:// and wss://: PEM file paths; the server certificate is verified unless insecure is true. */
  tls: z
    .strictObject({
      ca: z.string().min(1).optional(),
      cert: z.string().min(1).optional(),
      key: z.string().min(1).optional(),
      /** Skip server certificate verification (lab use only). */
      insecure: z.boolean().default(false),
    })
    .optional(),
});

const account = z.strictObject({ username: z.string().min(1), password: z.string().min(1) });

export const configSchema = z.strictObject({
  coap: z
    .strictObject({
      host: host.default('0.0.0.0'),
      /** UDP port; 0 = any free port. */
      port: port.default(5683),
      /** Largest request payload in bytes; larger requests get 4.13. */
      maxPayloadBytes: z.number().int().min(16).max(1024 * 1024).default(1024),
    })
    .prefault({}),
  mqtt: z
    .strictObject({
      host: host.default('0.0.0.0'),
      /** TCP port; 0 = any free port. */
      port: port.default(1883),
      /** Largest PUBLISH payload in bytes accepted from a device. */
      maxPayloadBytes: z.number().int().min(16).max(256 * 1024 * 1024).default(64 * 1024),
      /**
       * Application accounts on the gateway's own broker: they may subscribe to wanwu/# (the local
       * upstream) and nothing else. The default is a demo account; change it before exposing the port.
       */
      apps: z.array(account).default([{ username: 'app', password: 'wanwu-demo' }]),
    })
    .prefault({}),
  http: z
    .strictObject({
      host: host.default('0.0.0.0'),
      /** TCP port of /status, /metrics and /healthz; 0 = any free port. */
      port: port.default(8080),
    })
    .prefault({}),
  storage: z
    .strictObject({
      /** SQLite database file; its folder is created. */
      path: z.string().min(1).default('./data/wanwu.db'),
      /** "full": fsync at every group commit (power-loss safe). "normal": WAL synced at checkpoints (crash safe, may lose the last commits on power loss). */
      sync: z.enum(['full', 'normal']).default('full'),
      /** Most bytes the database may use (pages in use), or null for no limit. Default 1 GiB. */
      maxBytes: z.number().int().min(64 * 1024).nullable().default(1024 * 1024 * 1024),
      /** Most records it may hold, or null for no limit. */
      maxRecords: z.number().int().min(1).nullable().default(null),
      /** At a limit: "reject-new" (devices get 5.03 / an Alink 503 reply and retry; nothing accepted is lost) or "drop-oldest" (counted per upstream). */
      whenFull: z.enum(['reject-new', 'drop-oldest']).default('reject-new'),
      /** Seconds a record may wait for its upstreams before it is deleted (counted as expired); 0 = no limit. */
      ttl: z.number().int().min(0).default(0),
    })
    .prefault({}),
  /** Folder of product definitions (devices/<productKey>/...). */
  devicesDir: z.string().min(1).default('./devices'),
  /** Where normalized records go. The default sends them to the gateway's own broker under wanwu/#. */
  upstreams: z
    .array(upstreamSchema)
    .prefault([{ name: 'local', url: 'local' }])
    .refine((list) => new Set(list.map((u) => u.name)).size === list.length, 'upstream names must be unique'),
  log: z
    .strictObject({
      level: z.enum(['silent', 'error', 'warn', 'info', 'debug']).default('info'),
    })
    .prefault({}),
});

export type Config = z.output<typeof configSchema>;
export type ConfigInput = z.input<typeof configSchema>;
export type UpstreamConfig = z.output<typeof upstreamSchema>;
