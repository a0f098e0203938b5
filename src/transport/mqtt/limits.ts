// Per-device limits of the MQTT listener: the publish-rate token buckets, the connect-flood ban, the
// topic and identifier checks, and the rate-limited audit log for refused logins. Plain data
// structures with an injected clock; the listener owns their timers (start/stop).


/** Why the listener refused something; the keys of listeners.mqtt.refused on /status. */
export const MQTT_REFUSALS = [
  'packetTooLarge',
  'malformedPacket',
  'publishTruncated',
  'maxConnections',
  'clientIdChars',
  'usernameChars',
  'keepalive',
  'topicLength',
  'topicLevels',
  'connectFlood',
  'banned',
  'rateLimited',
] as const;
export type MqttRefusal = (typeof MQTT_REFUSALS)[number];

// ---------------------------------------------------------------------------------------------------
// Identifiers and topics

/**
 * Characters refused in client ids and usernames: the wildcards `+` and `#` and the level separator
 * `/`, so an identity can never widen a topic pattern built from it (mosquitto's CVE-2017-7650: a
 * `+` or `#` in a username or client id let a client escape its %u / %c ACL pattern), and U+0000,
 * which MQTT strings must not contain [MQTT-1.5.3-2].
 */
const IDENTIFIER_REFUSED = /[+#/\u0000]/;

export function identifierRefused(value: string | undefined): boolean {
  return value !== undefined && IDENTIFIER_REFUSED.test(value);
}

/** 'topicLength' or 'topicLevels' when a topic name or filter breaks the limits, else null. */
export function topicRefusal(topic: string, limits: { maxTopicLength: number; maxTopicLevels: number }): 'topicLength' | 'topicLevels' | null {
  // Levels first: they are what crashed brokers (a 65,400-slash topic overflowed mosquitto's stack;
  // over 100 levels made aedes' qlobber throw). Counted without splitting the string.
  let levels = 1;
  for (let i = 0; i < topic.length; i++) {
    if (topic.charCodeAt(i) === 47) {
      levels++;
      if (levels > limits.maxTopicLevels) return 'topicLevels';
    }
  }
  // Length in bytes of its UTF-8 encoding, as MQTT measures strings [MQTT-1.5.3].
  if (topic.length > limits.maxTopicLength || Buffer.byteLength(topic, 'utf8') > limits.maxTopicLength) return 'topicLength';
  return null;
}

// ---------------------------------------------------------------------------------------------------
// Publish rate: one token bucket per device

export interface PublishRateLimits {
  /** Tokens added per second (messages per second, sustained). */
  perSecond: number;
  /** Bucket size: messages a device may send at once after being quiet. */
  burst: number;
  /** Longest a publish is held waiting for its token, in ms; beyond that it is refused. */
  maxDelayMs: number;
}

interface Bucket {
  tokens: number;
  at: number;
}

/**
 * Token buckets keyed by device. reserve() takes a token and answers how long the publish must wait
 * for it (0 = now). The balance may go negative (publishes already waiting their turn), so waits
 * queue up in order, as in GCRA. A publish that would wait longer than maxDelayMs is refused and
 * takes no token.
 */
export class PublishRateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(private readonly limits: PublishRateLimits) {}

  /**
   * allowed: the publish may go on after delayMs (0 = at once); its token is taken.
   * Refused (it would wait longer than maxDelayMs): no token is taken; delayMs is how long until the
   * publishes already waiting have had their turn, so the refusal can be answered after them.
   */
  reserve(key: string, now: number): { allowed: boolean; delayMs: number } {
    const { perSecond, burst, maxDelayMs } = this.limits;
    let b = this.buckets.get(key);
    if (!b) {
      b = { tokens: burst, at: now };
      this.buckets.set(key, b);
    } else {
      b.tokens = Math.min(burst, b.tokens + ((now - b.at) * perSecond) / 1000);
      b.at = now;
    }
    if (b.tokens >= 1) {
      b.tokens -= 1;
      return { allowed: true, delayMs: 0 };
    }
    const waitMs = Math.ceil(((1 - b.tokens) * 1000) / perSecond);
    if (waitMs > maxDelayMs) return { allowed: false, delayMs: Math.max(0, Math.ceil((-b.tokens * 1000) / perSecond)) };
    b.tokens -= 1;
    return { allowed: true, delayMs: waitMs };
  }

  /** Forgets buckets that have refilled completely (they would start full anyway). */
  sweep(now: number): void {
    const { perSecond, burst } = this.limits;
    for (const [key, b] of this.buckets) {
      if (b.tokens + ((now - b.at) * perSecond) / 1000 >= burst) this.buckets.delete(key);
    }
  }

  get size(): number {
    return this.buckets.size;
  }
}

// ---------------------------------------------------------------------------------------------------
// Connect flood: too many connects in a minute bans the identity for a while

export interface ConnectFloodLimits {
  /** Connects allowed per identity in any 60 s window; the next one is refused and starts the ban. */
  maxPerMinute: number;
  /** Ban length in seconds. */
  banS: number;
}

const FLOOD_WINDOW_MS = 60_000;

interface FloodEntry {
  /** Times of the recent connects, oldest first (at most maxPerMinute). */
  times: number[];
  bannedUntil: number;
}

/**
 * Flapping detection as EMQX does it (max_count 15, window_time 1m, ban_time 5m), keyed by identity.
 * Keys are caller-chosen strings; when more than maxKeys are tracked the oldest are forgotten first
 * (a key's entry moves to the end whenever it is touched), so attacker-chosen keys cannot grow it
 * without bound.
 */
export class ConnectFloodDetector {
  private readonly entries = new Map<string, FloodEntry>();

  constructor(
    private readonly limits: ConnectFloodLimits,
    private readonly maxKeys = 100_000,
  ) {}

  /** Milliseconds of ban left for this key (0 = not banned). */
  bannedFor(key: string, now: number): number {
    const e = this.entries.get(key);
    return e && e.bannedUntil > now ? e.bannedUntil - now : 0;
  }

  /** Counts one connect; true when it is one too many (the key is banned from now on). */
  record(key: string, now: number): boolean {
    let e = this.entries.get(key);
    if (e) this.entries.delete(key);
    else e = { times: [], bannedUntil: 0 };
    this.entries.set(key, e);
    while (e.times.length > 0 && e.times[0]! <= now - FLOOD_WINDOW_MS) e.times.shift();
    if (e.times.length >= this.limits.maxPerMinute) {
      e.times.length = 0;
      e.bannedUntil = now + this.limits.banS * 1000;
      return true;
    }
    e.times.push(now);
    if (this.entries.size > this.maxKeys) {
      const oldest = this.entries.keys().next().value;
      if (oldest !== undefined) this.entries.delete(oldest);
    }
    return false;
  }

  /** Bans in force now. */
  activeBans(now: number): number {
    let n = 0;
    for (const e of this.entries.values()) if (e.bannedUntil > now) n++;
    return n;
  }

  /** Forgets keys with no connect in the window and no ban in force. */
  sweep(now: number): void {
    for (const [key, e] of this.entries) {
      if (e.bannedUntil <= now && (e.times.length === 0 || e.times[e.times.length - 1]! <= now - FLOOD_WINDOW_MS)) this.entries.delete(key);
    }
  }

  get size(): number {
    return this.entries.size;
  }
}

