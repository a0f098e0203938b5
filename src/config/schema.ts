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

/** Default topic of an upstream's command subscription (upstreams[].commands). */
export const DEFAULT_COMMAND_TOPIC = 'wanwu/cmd/{productKey}/{deviceName}';

/**
 * A command topic template: {productKey} and {deviceName} each once, each a whole topic level (the
 * subscription puts "+" there and reads the values back from the same levels); no other placeholder.
 */
const commandTopicTemplate = z
  .string()
  .min(1)
  .refine((t) => !/[+#]/.test(t), 'a topic template cannot contain MQTT wildcards (+ or #)')
  .refine((t) => {
    const levels = t.split('/');
    const count = (p: string) => levels.filter((l) => l === p).length;
    return count('{productKey}') === 1 && count('{deviceName}') === 1 && levels.every((l) => !/[{}]/.test(l) || l === '{productKey}' || l === '{deviceName}');
  }, 'a command topic has {productKey} and {deviceName} once each, each a whole level (e.g. "wanwu/cmd/{productKey}/{deviceName}"), and no other placeholder');

/** The values {kind} takes in a record topic (src/types.ts RecordKind). */
export const RECORD_KINDS = ['property', 'event', 'command', 'state'] as const;

/**
 * Whether a record topic of this template could arrive on the command subscription. The forwarder
 * would then read its own records as commands (MQTT 3.1.1 echoes a client's own publishes) and
 * publish a "refused" record for each, which it would read again, without end. Level by level: a
 * command placeholder takes any value; a command literal meets a record literal equal to it, or
 * {kind} (and {event}, which falls back to the kind) when it is one of the kinds. Record
 * {productKey} and {deviceName} are taken to match no command literal: they are names from
 * devices/, and the forwarder also ignores, at run time, any command topic that one of its own
 * records could have (recordTopicMatcher).
 */
export function commandTopicOverlaps(commandTopic: string, recordTopic: string): boolean {
  const a = commandTopic.split('/');
  const b = recordTopic.split('/');
  const isPlaceholder = (l: string) => /^\{[A-Za-z]+\}$/.test(l);
  const kinds: readonly string[] = RECORD_KINDS;
  return (
    a.length === b.length &&
    a.every((c, i) => {
      const r = b[i]!;
      if (isPlaceholder(c)) return true;
      if (r === '{kind}' || r === '{event}') return kinds.includes(c);
      return c === r;
    })
  );
}

/**
 * A test of whether a topic could be one of this record template's topics, with any names and
 * {kind} one of RECORD_KINDS.
 */
export function recordTopicMatcher(recordTopic: string): (topic: string) => boolean {
  const escape = (s: string) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const pattern = recordTopic
    .split(/(\{[A-Za-z]+\})/)
    .filter((p) => p !== '')
    .map((p) => (p === '{kind}' ? `(?:${RECORD_KINDS.join('|')})` : /^\{[A-Za-z]+\}$/.test(p) ? '[^/]+' : escape(p)))
    .join('');
  const re = new RegExp(`^${pattern}$`);
  return (topic) => re.test(topic);
}

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
  /**
   * Commands from this upstream (README "Commands (downlink)"): the forwarder subscribes (QoS 1) to
   * this topic with "+" for {productKey} and {deviceName} and queues each message as a command.
   * Off (false) by default; true or {} = {"topic": "wanwu/cmd/{productKey}/{deviceName}"}. The
   * default upstream list turns it on for "local".
   */
  commands: z
    .union([z.boolean(), z.strictObject({ topic: commandTopicTemplate.default(DEFAULT_COMMAND_TOPIC) })])
    .default(false)
    .transform((c): { topic: string } | null => (c === false ? null : c === true ? { topic: DEFAULT_COMMAND_TOPIC } : c)),
}).superRefine((u, ctx) => {
  if (!u.commands) return;
  if (commandTopicOverlaps(u.commands.topic, u.topic)) {
    ctx.addIssue({ code: 'custom', path: ['commands', 'topic'], message: `overlaps the record topic "${u.topic}": the upstream's own records would come back as commands` });
  }
  // Application accounts may publish under wanwu/cmd/ only (src/transport/mqtt): elsewhere on the
  // local broker nobody could send a command.
  if (u.url === 'local' && !u.commands.topic.startsWith('wanwu/cmd/')) {
    ctx.addIssue({ code: 'custom', path: ['commands', 'topic'], message: 'the local upstream\'s command topic must start with "wanwu/cmd/" (where application accounts may publish)' });
  }
});

const account = z.strictObject({ username: z.string().min(1), password: z.string().min(1) });

/**
 * Defaults of coap.limits (also what the CoAP listener uses when it is given none). Sized for a
 * carrier-facing gateway: an NB-IoT module sends a few messages an hour, so 10/s with a burst of 100
 * per device only stops a runaway; 1000/s per source address leaves room for thousands of modules
 * behind one carrier NAT address. Loopback is exempt: a local process (wanwu-sim, benchmarks, an
 * agent on the host) cannot be spoofed from outside and may drive thousands of messages per second.
 */
export const COAP_LIMITS_DEFAULTS = Object.freeze({
  perDevice: Object.freeze({ perSecond: 10, burst: 100 }),
  perSource: Object.freeze({ perSecond: 1000, burst: 2000 }),
  maxPeers: 100_000,
  maxReassemblies: 1000,
  exemptLoopback: true,
});

/**
 * Defaults of coap.auth (src/transport/coap/auth.ts). 'required': every product's uplinks need a
 * token unless the product opts out with "auth": "none" (lab use; the gateway warns at start), so an
 * out-of-the-box gateway has no unauthenticated CoAP path. 'optional' stays available as an explicit
 * setting for a migration (it also warns at start). Token lifetime 48 h like Alibaba IoT's CoAP
 * token, so a module reporting once a day authenticates at most every other wake-up. A /auth timestamp more than 300 s from the gateway's
 * clock is refused (a captured /auth cannot be replayed later). 100,000 tokens hold ~20 MB.
 */
export const COAP_AUTH_DEFAULTS = Object.freeze({
  mode: 'required' as 'required' | 'optional',
  tokenTtlS: 172_800,
  timestampWindowS: 300,
  maxTokens: 100_000,
});

/** How commands reach CoAP devices (src/transport/coap/delivery.ts). */
export const COAP_DELIVERY_MODES = ['piggyback', 'push'] as const;
export type CoapDeliveryMode = (typeof COAP_DELIVERY_MODES)[number];
/** Longest push window, s: a module listens for seconds after an uplink, not for hours. */
export const COAP_WINDOW_MAX_S = 3600;

/**
 * Defaults of downlink.coap (also what the CoAP listener uses when it is given no mode lookup).
 * 'piggyback' by default: the command rides in the response to the device's own uplink, which
 * reaches the device through any NAT or carrier firewall (it answers a request the device sent, RFC
 * 7252 §5.2.1) and needs nothing of the module but reading the response. 'push' sends CON requests
 * to the address and port the uplink came from: that works only when the module keeps listening on
 * its source port after the uplink and the NAT binding still lets datagrams in, which many modules
 * and carrier NATs do, but not all. 20 s is about an NB-IoT module's RRC inactivity timer after its
 * last uplink (EMQX's LwM2M gateway waits 22 s), so a push lands while the radio is still up; with
 * RFC 7252 §4.8's timers it leaves room for the first transmission and 2-3 retransmissions.
 */
export const COAP_DOWNLINK_DEFAULTS = Object.freeze({
  delivery: 'piggyback' as CoapDeliveryMode,
  windowS: 20,
});

/** A token bucket: `perSecond` sustained (0 = no limit), up to `burst` at once. */
const rateLimit = (d: { perSecond: number; burst: number }) =>
  z
    .strictObject({
      /** Sustained rate in requests per second; 0 switches this limit off. */
      perSecond: z.number().min(0).max(1_000_000).default(d.perSecond),
      /** Bucket size in requests: how many are accepted at once after a quiet period. */
      burst: z.number().int().min(1).max(1_000_000).default(d.burst),
    })
    .prefault({});

/**
 * MQTT listener limits. 64 KiB packets: the MQTT payload limit's default, so every packet a device
 * is allowed to send fits, and one socket can make the gateway buffer no more than that. Topics:
 * 256 bytes like AWS IoT Core; 16 levels covers the longest Alink topic (9 levels:
 * /sys/{pk}/{dn}/thing/event/property/pack/post) with room. Keepalive 30-1200 s is Alibaba IoT
 * Platform's device range. Publish rate: 100 messages/s per device sustained (a RedCap vehicle or PLC
 * gateway reporting every 10 ms), a burst of 200; a device over it is first slowed down (its publishes
 * held up to 2 s, its socket not read meanwhile), then refused. Connect flood: EMQX's flapping
 * detection defaults (more than 15 logins in a minute bans the identity for 5 minutes).
 */
export const MQTT_LIMITS_DEFAULTS = Object.freeze({
  maxPacketBytes: 64 * 1024,
  maxTopicLength: 256,
  maxTopicLevels: 16,
  keepaliveMinS: 30,
  keepaliveMaxS: 1200,
  maxConnections: 100_000,
  publishRate: Object.freeze({ perSecond: 100, burst: 200, maxDelayMs: 2000 }),
  connectFlood: Object.freeze({ maxPerMinute: 15, banS: 300 }),
});

export const configSchema = z.strictObject({
  coap: z
    .strictObject({
      host: host.default('0.0.0.0'),
      /** UDP port; 0 = any free port. */
      port: port.default(5683),
      /** Largest request body in bytes, in one message or reassembled from Block1 blocks; larger requests get 4.13. */
      maxPayloadBytes: z.number().int().min(16).max(1024 * 1024).default(1024),
      /** Refusals beyond these get 4.29 (rate), 5.03 (reassemblies); caps bound memory. See COAP_LIMITS_DEFAULTS. */
      limits: z
        .strictObject({
          /** Requests per device named by the path (a plain request or a Block1 transfer counts once). */
          perDevice: rateLimit(COAP_LIMITS_DEFAULTS.perDevice),
          /** Request datagrams per source IP address (all ports together). */
          perSource: rateLimit(COAP_LIMITS_DEFAULTS.perSource),
          /** Entries tracked per table (peers, source addresses, device names); beyond it the oldest go. */
          maxPeers: z.number().int().min(16).max(10_000_000).default(COAP_LIMITS_DEFAULTS.maxPeers),
          /** Block1 transfers in progress at once (count); memory is at most this x maxPayloadBytes. */
          maxReassemblies: z.number().int().min(1).max(1_000_000).default(COAP_LIMITS_DEFAULTS.maxReassemblies),
          /** true: requests from 127.0.0.0/8 and ::1 skip the rate limits (set false behind a local proxy). */
          exemptLoopback: z.boolean().default(COAP_LIMITS_DEFAULTS.exemptLoopback),
        })
        .prefault({}),
      /** Token authentication (POST /auth, options 2088/2089). See COAP_AUTH_DEFAULTS. */
      auth: z
        .strictObject({
          /**
           * "required": an uplink without a valid token gets 4.01 (products with "auth": "none" excepted).
           * "optional": an uplink with a token is verified (a bad one is refused), one without proceeds.
           */
          mode: z.enum(['required', 'optional']).default(COAP_AUTH_DEFAULTS.mode),
          /** Lifetime of a token issued by POST /auth, in seconds. */
          tokenTtlS: z.number().int().min(60).max(30 * 86_400).default(COAP_AUTH_DEFAULTS.tokenTtlS),
          /** Largest distance in seconds between a /auth timestamp and the gateway's clock; 0 = not checked (modules without a clock). */
          timestampWindowS: z.number().int().min(0).max(86_400).default(COAP_AUTH_DEFAULTS.timestampWindowS),
          /** Tokens held at once (count); beyond it the oldest is dropped and its device must authenticate again. */
          maxTokens: z.number().int().min(16).max(10_000_000).default(COAP_AUTH_DEFAULTS.maxTokens),
        })
        .prefault({}),
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
      /**
       * MQTT over TLS, a second listener on the same broker with the same login and limits (absent =
       * none). cert and key are PEM files; ca (optional) is sent as the certificate chain's issuer.
       */
      tls: z
        .strictObject({
          host: host.default('0.0.0.0'),
          /** TCP port; 0 = any free port. */
          port: port.default(8883),
          cert: z.string().min(1),
          key: z.string().min(1),
          ca: z.string().min(1).optional(),
        })
        .optional(),
      /** Abuse limits of the MQTT listener (src/transport/mqtt/limits.ts, guard.ts). See MQTT_LIMITS_DEFAULTS. */
      limits: z
        .strictObject({
          /**
           * Largest MQTT packet in bytes, fixed header included, judged from its announced Remaining
           * Length before any of it is buffered; a larger one closes the connection. A logged-in
           * device's PUBLISH is cut to maxPayloadBytes + 1 payload bytes instead (Alink 460 reply).
           */
          maxPacketBytes: z.number().int().min(1024).max(268_435_460).default(MQTT_LIMITS_DEFAULTS.maxPacketBytes),
          /** Longest topic name or filter in bytes (UTF-8) a device or application may use. */
          maxTopicLength: z.number().int().min(64).max(65_535).default(MQTT_LIMITS_DEFAULTS.maxTopicLength),
          /** Most topic levels (parts between "/"; a leading "/" counts one). At most 100, aedes' own ceiling. */
          maxTopicLevels: z.number().int().min(4).max(100).default(MQTT_LIMITS_DEFAULTS.maxTopicLevels),
          /** Keepalive range in seconds a device's CONNECT must ask for; outside it gets CONNACK 2. */
          keepaliveMinS: z.number().int().min(0).max(65_535).default(MQTT_LIMITS_DEFAULTS.keepaliveMinS),
          keepaliveMaxS: z.number().int().min(1).max(65_535).default(MQTT_LIMITS_DEFAULTS.keepaliveMaxS),
          /** Open TCP connections (count), every role included; beyond it a new socket is closed at once. */
          maxConnections: z.number().int().min(1).max(10_000_000).default(MQTT_LIMITS_DEFAULTS.maxConnections),
          /** Per-device publish rate (token bucket, keyed by device, kept across reconnects). */
          publishRate: z
            .strictObject({
              /** Sustained messages per second per device; 0 switches the limit off. */
              perSecond: z.number().min(0).max(1_000_000).default(MQTT_LIMITS_DEFAULTS.publishRate.perSecond),
              /** Bucket size in messages: how many a quiet device may send at once. */
              burst: z.number().int().min(1).max(1_000_000).default(MQTT_LIMITS_DEFAULTS.publishRate.burst),
              /** ms a publish over the rate may be held for its token; one that would wait longer is refused (Alink 429). */
              maxDelayMs: z.number().int().min(0).max(60_000).default(MQTT_LIMITS_DEFAULTS.publishRate.maxDelayMs),
            })
            .prefault({}),
          /** Connect-flood ban per device identity (EMQX flapping detection defaults). */
          connectFlood: z
            .strictObject({
              /** Logins allowed per identity in any 60 s; the next is refused (CONNACK 5) and bans it. 0 switches the ban off. */
              maxPerMinute: z.number().int().min(0).max(1_000_000).default(MQTT_LIMITS_DEFAULTS.connectFlood.maxPerMinute),
              /** Ban length in seconds. */
              banS: z.number().int().min(1).max(86_400).default(MQTT_LIMITS_DEFAULTS.connectFlood.banS),
            })
            .prefault({}),
        })
        .refine((l) => l.keepaliveMinS <= l.keepaliveMaxS, { message: 'keepaliveMinS must not exceed keepaliveMaxS', path: ['keepaliveMinS'] })
        .prefault({}),
    })
    .prefault({}),
  http: z
    .strictObject({
      host: host.default('0.0.0.0'),
      /** TCP port of /status, /metrics, /healthz and the /api/ resources; 0 = any free port. */
      port: port.default(8080),
      /**
       * Bearer token of the HTTP API (/api/...; at least 16 characters). Set: every /api/ request
       * needs "Authorization: Bearer <token>" (else 401). null (default): /api/ reads are open and
       * changes (POST, DELETE: commands reach devices) are taken from loopback only (else 403).
       */
      apiToken: z.string().min(16, 'at least 16 characters').max(256).nullable().default(null),
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
  /**
   * The device registry (src/registry/store.ts): devices, encrypted secrets, status, IMEI/ICCID,
   * last seen and the audit table, in a SQLite file of its own. Seeded from devices/ at start;
   * changed by `wanwu devices`, which a running gateway picks up within reloadMs.
   */
  registry: z
    .strictObject({
      /** SQLite file; its folder is created. null = registry.db in the folder of storage.path (./data/registry.db by default). */
      path: z.string().min(1).nullable().default(null),
      /**
       * File holding the 32-byte key that encrypts device secrets (AES-256-GCM), as hex. null = the
       * registry path + ".key". Created with mode 0600 when the registry is new. Not read when the
       * env WANWU_REGISTRY_KEY holds the key.
       */
      keyFile: z.string().min(1).nullable().default(null),
      /** How often a running gateway checks the registry for changes made by `wanwu devices`, in ms. */
      reloadMs: z.number().int().min(50).max(60_000).default(1000),
      /** How often devices' last-seen times are written, in ms (batched: one transaction per flush). */
      lastSeenFlushMs: z.number().int().min(100).max(3_600_000).default(5000),
    })
    .prefault({}),
  /**
   * Commands to devices (src/downlink): a durable queue per device, delivered when the device can be
   * reached (at once to an online MQTT device; on a CoAP device's next uplink).
   */
  downlink: z
    .strictObject({
      /** SQLite file of the command queue; its folder is created. null = commands.db in the folder of storage.path. */
      path: z.string().min(1).nullable().default(null),
      /** TTL of a command that names none, in seconds (48 h: what Huawei IoTDA and OneNET keep a command for a sleeping device). */
      ttlS: z.number().int().min(1).default(172_800),
      /** Longest TTL a command may ask for, in seconds (default 30 days). */
      maxTtlS: z.number().int().min(1).default(2_592_000),
      /** Open (not final) commands one device may have; more are refused with WANWU_ERR_QUEUE_FULL. */
      maxPerDevice: z.number().int().min(1).max(100_000).default(100),
      /** Largest encoded command in bytes (1024: one CoAP message without Block2 on an NB-IoT link). */
      maxPayloadBytes: z.number().int().min(16).max(256 * 1024).default(1024),
      /** How long replied, expired and cancelled commands stay queryable, in seconds (default 7 days). */
      retainS: z.number().int().min(0).default(604_800),
      /** How often command TTLs are checked, in ms. */
      sweepMs: z.number().int().min(10).max(60_000).default(1000),
      /**
       * Delivery to CoAP devices (src/transport/coap/delivery.ts); a product's product.json
       * `"downlink": {"coap", "windowS"}` overrides either key. See COAP_DOWNLINK_DEFAULTS for why.
       */
      coap: z
        .strictObject({
          /** "piggyback": in the response to the device's uplink; "push": CON requests to the device after its uplink. */
          delivery: z.enum(COAP_DELIVERY_MODES).default(COAP_DOWNLINK_DEFAULTS.delivery),
          /** push: s after each authenticated uplink during which the device is taken to be listening on its source port. */
          windowS: z.number().int().min(1).max(COAP_WINDOW_MAX_S).default(COAP_DOWNLINK_DEFAULTS.windowS),
        })
        .prefault({}),
      /**
       * Device liveness (src/downlink/liveness.ts). MQTT devices are online while their session is
       * open. CoAP devices are online for activeWindowS after an uplink, then sleeping until their
       * next report is due (product.json liveness.reportIntervalS, else the interval learned from the
       * device's own uplinks, else reportIntervalS here), then offline once it is overdue by the
       * tolerance: the larger of toleranceS and toleranceRatio x the interval. A product's
       * "liveness" keys override these.
       */
      liveness: z
        .strictObject({
          /** s. How long a CoAP device stays reachable after an uplink (NB-IoT RRC release + PSM active timer T3324); 20 = the CoAP push window. */
          activeWindowS: z.number().int().min(1).max(86_400).default(20),
          /** s. Expected report interval when neither the product nor the device's own history gives one (24 h: the usual NB-IoT meter schedule). */
          reportIntervalS: z.number().int().min(10).max(31 * 86_400).default(86_400),
          /** s. Least lateness before a sleeping device is offline (300: above CoAP's EXCHANGE_LIFETIME of 247 s, RFC 7252 §4.8.2, so retransmissions never flap it). */
          toleranceS: z.number().int().min(0).max(31 * 86_400).default(300),
          /** Lateness as a share of the interval (0.5: a daily meter is offline 36 h after its last report; covers the randomized report slot meters use against cell congestion). */
          toleranceRatio: z.number().min(0).max(10).default(0.5),
          /** ms. How often due state changes are applied and liveness is written to disk. */
          sweepMs: z.number().int().min(10).max(60_000).default(1000),
          /**
           * Which changes go upstream as state records: "all"; "offline" (to or from offline only: a PSM
           * device's online/sleeping cycle, two records per report, stays local); "none". The states
           * themselves are kept either way (API, /status).
           */
          records: z.enum(['all', 'offline', 'none']).default('all'),
        })
        .prefault({}),
      /** Device shadow (src/downlink/shadow.ts): last reported property values. */
      shadow: z
        .strictObject({
          /** ms. Reported values are kept in memory this long, then written in one transaction. */
          flushMs: z.number().int().min(10).max(60_000).default(1000),
        })
        .prefault({}),
    })
    .refine((d) => d.ttlS <= d.maxTtlS, { message: 'ttlS must not exceed maxTtlS (every command without a ttl would be refused)', path: ['ttlS'] })
    .prefault({}),
  /**
   * Where normalized records go. The default sends them to the gateway's own broker under wanwu/#
   * and takes commands from it on wanwu/cmd/{productKey}/{deviceName} (published by mqtt.apps accounts).
   */
  upstreams: z
    .array(upstreamSchema)
    .prefault([{ name: 'local', url: 'local', commands: true }])
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
