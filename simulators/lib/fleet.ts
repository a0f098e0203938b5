// A fleet of simulated modules run against a gateway for a while: NB-IoT over CoAP on PSM schedules,
// Cat-1 and RedCap over MQTT sessions. Devices and secrets come from a devices/ folder; payloads are
// made from each product's thing model and encoded by its codec (payload.ts), so every message is
// valid unless a fault rate says otherwise. Counts and latencies go to a RunStats; an UpstreamWatch
// (when an upstream is given) measures end-to-end latency and loss.
//
// NB-IoT devices authenticate as Wanwu requires by default (coap-auth.ts): each signs a POST /auth
// with its device secret while the fleet is set up, as a module that has been reporting for a while
// holds a token already (one lasts 48 h), then keeps token and sequence number across its wake-ups
// and authenticates again when the token expires or an uplink gets 4.01. /auth exchanges are counted
// apart from uplinks (RunStats.coapAuth), so throughput and latency stay those of the uplinks.
//
// Two ways to pace a fleet:
//   - schedules (default): every device reports on its own interval with jitter (PSM for NB-IoT);
//   - a fixed total rate (`rate`): sends are spread evenly over the fleet, round robin.

import type { Product, Registry } from '../../src/registry/index.js';
import { loadRegistry } from '../../src/registry/index.js';
import type { Rat } from '../../src/types.js';
import { AUTH_CONTENT_FORMAT, AUTH_PATH, CoapAuthSession, type AuthExchange, type UplinkCredentials } from './coap-auth.js';
import { keyFromAuthAnswer, openAnswer, sealUplink } from './coap-crypto.js';
import { commandInAnswer, commandInRequest, commandOwner, replyTo, type ReceivedCommand } from './coap-commands.js';
import { CoapTransport, socketsNeeded, type CoapExchange, type CoapTiming } from './coap-transport.js';
import { ECL_LINKS, type Ecl } from './link-model.js';
import { MqttDevice, type AlinkReply } from './mqtt-device.js';
import { createMessageFactory, type MessageFactory, type SimMessage } from './payload.js';
import { PsmDevice, PsmSchedule, RatePacer } from './schedule.js';
import { lossRatio, RunStats, type AuthSummary, type LatencySummary } from './stats.js';
import { UpstreamWatch } from './upstream-watch.js';

export interface FleetSize {
  nbiot: number;
  cat1: number;
  redcap: number;
}

export interface FaultRates {
  invalidRate: number;
  malformedRate: number;
  duplicateRate: number;
}

export interface UpstreamTarget {
  url: string;
  topic: string;
  username?: string;
  password?: string;
}

export interface FleetOptions {
  devicesDir: string;
  /** coap://host:port of the gateway's CoAP listener. */
  coap: string;
  /** mqtt://host:port of the gateway's MQTT listener. */
  mqtt: string;
  /** Subscribe here to measure end-to-end latency and loss. */
  upstream?: UpstreamTarget;
  fleet: FleetSize;
  durationMs: number;
  /** Fixed total rate in messages/s; without it every device follows its own schedule. */
  rate?: number;
  /** Report interval per device, by rat (ms). */
  intervalMs: Record<Rat, number>;
  /** ± fraction of the interval (0.1 = ±10%). */
  jitter: number;
  /** How long an NB-IoT device stays reachable after its uplink before PSM (ms). */
  activeWindowMs: number;
  /** CON (RFC 7252 retransmission) or NON. */
  confirmable: boolean;
  /** Coverage class link model for CoAP (latency, loss); none = loopback as it is. */
  ecl?: Ecl;
  /** CoAP retransmission parameters (RFC 7252 §4.8 defaults unless given). */
  coapTiming?: Partial<CoapTiming>;
  /** UDP source ports for CoAP (default: enough for the rate, see socketsNeeded, at least 8). */
  coapSockets?: number;
  /**
   * NB-IoT devices authenticate with POST /auth and send token and sequence number (default true).
   * false: plain uplinks, for an endpoint that does not authenticate (or Wanwu with coap.auth.mode "optional").
   */
  coapAuth?: boolean;
  qos: 0 | 1;
  keepaliveS: number;
  faults: FaultRates;
  seed: number;
  /** After the run: how long to wait for outstanding acks and upstream records (ms). */
  drainMs: number;
  /** Spread MQTT sessions over these local addresses (e.g. 127.0.0.2..127.0.0.9). */
  localAddresses?: string[];
  /** Called about once a second while running. */
  onTick?: (tick: FleetTick) => void;
}

export interface FleetTick {
  elapsedS: number;
  durationS: number;
  sent: number;
  acked: number;
  errors: number;
  /** Acknowledged in the last second. */
  ratePerS: number;
  /** Acknowledgement p99 over the last second (ms). */
  p99Ms: number;
}

export interface RunResult {
  fleet: FleetSize;
  durationS: number;
  sent: number;
  acked: number;
  errors: Record<string, number>;
  retransmissions: number;
  faults: Record<string, number>;
  /** Messages sent that the gateway should refuse: invalid and malformed ones, and duplicates of those. */
  refusalsExpected: number;
  /** Messages refused although they were generated valid (a gateway or generator bug worth a look). */
  unexpectedRefusals: number;
  /** The first few of those: product, device, the answer, and the payload in hex. */
  unexpectedSamples: Array<{ productKey: string; deviceName: string; code: string; message?: string; payloadHex: string }>;
  /** Messages still unanswered when the run ended (after the drain). */
  unanswered: number;
  throughput: { meanPerS: number; peakPerS: number; perSecond: number[] };
  ackLatencyMs: LatencySummary;
  /** CoAP POST /auth exchanges, not part of the counts above; null without NB-IoT devices or with coapAuth off. */
  coapAuth: AuthSummary | null;
  /** Commands the NB-IoT devices got over CoAP (coap-commands.ts); absent without NB-IoT devices. */
  commands?: { piggybacked: number; pushed: number; replied: number; replyErrors: number };
  endToEnd: null | {
    expected: number;
    received: number;
    lost: number;
    lossRatio: number;
    duplicates: number;
    foreign: number;
    latencyMs: LatencySummary;
  };
}

/** What the fleet runs on: a device of a product, over its rat's transport. */
interface SimDevice {
  product: Product;
  deviceName: string;
  deviceSecret: string;
  rat: Rat;
  factory: MessageFactory;
  /** CoAP source socket (NB-IoT). */
  socket: number;
  /** NB-IoT: token and sequence number, kept across wake-ups (null with coapAuth off). */
  auth: CoapAuthSession | null;
  /** NB-IoT: sends this device's /auth requests (made once, with the session). */
  authExchange: AuthExchange | null;
  /** NB-IoT, product with coapEncryption: the payload key of the current token (coap-crypto.ts); else null. */
  coapKey?: Buffer | null;
  mqtt: MqttDevice | null;
  /** Messages awaiting an Alink reply: by id, or in order when the payload has no id. */
  awaitingReply: Map<string, AwaitedReply>;
  awaitingRawReplies: AwaitedReply[];
}

interface AwaitedReply {
  records: number;
  payload: Buffer;
}

const RAT_OF: Record<keyof FleetSize, Rat> = { nbiot: 'nb-iot', cat1: 'cat1', redcap: 'redcap' };
/** MQTT sessions opened, or CoAP /auth exchanges made, at once while the fleet starts (a connect storm is not what `run` measures). */
const CONNECT_CONCURRENCY = 100;
/**
 * Times one uplink is sent again after 4.01 with a new token. More than once: a gateway whose token
 * table is full may drop the new token before the resend arrives. A device refused every time has
 * a real problem (a wrong secret gets no token at all), so the uplink then counts as refused.
 */
const RESENDS_AFTER_401 = 3;
/** Alink replies remembered per device; beyond it (an endpoint that never replies) the oldest go. */
const REPLY_MEMORY = 256;

/** Picks `count` devices of a rat from the products in the registry, round robin over the products. */
export function pickDevices(registry: Registry, rat: Rat, count: number): Array<{ product: Product; deviceName: string; deviceSecret: string }> {
  if (count <= 0) return [];
  const products = registry.products.filter((p) => p.rat === rat && p.devices.size > 0);
  const lists = products.map((p) => [...p.devices.values()].map((d) => ({ product: p, deviceName: d.deviceName, deviceSecret: d.deviceSecret })));
  const available = lists.reduce((n, l) => n + l.length, 0);
  if (available < count) {
    throw new Error(
      `the fleet needs ${count} ${rat} devices but the products in the devices folder have ${available}; add some with \`wanwu-sim provision --devices DIR --count N\` (and start the gateway on that folder)`,
    );
  }
  const out: Array<{ product: Product; deviceName: string; deviceSecret: string }> = [];
  for (let i = 0; out.length < count; i++) {
    const list = lists[i % lists.length]!;
    const d = list[Math.floor(i / lists.length)];
    if (d) out.push(d);
  }
  return out;
}

export class Fleet {
  readonly stats: RunStats;
  private readonly devices: SimDevice[] = [];
  private transport: CoapTransport | null = null;
  private watch: UpstreamWatch | null = null;
  private readonly psm: PsmDevice[] = [];
  /** NB-IoT devices by '{pk}/{dn}': whom a pushed command is for. */
  private readonly coapByKey = new Map<string, SimDevice>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private inFlight = 0;
  private running = false;
  private unexpectedRefusals = 0;
  private refusalsExpected = 0;
  private readonly unexpectedSamples: RunResult['unexpectedSamples'] = [];

  constructor(private readonly opts: FleetOptions) {
    this.stats = new RunStats(performance.now());
  }

  /** Loads devices, connects MQTT sessions, subscribes upstream. Throws on a setup problem. */
  async setup(): Promise<void> {
    const o = this.opts;
    const registry = loadRegistry(o.devicesDir);
    const factories = new Map<string, MessageFactory>();
    const factoryOf = (product: Product): MessageFactory => {
      let f = factories.get(product.productKey);
      if (!f) {
        f = createMessageFactory(product, { seed: o.seed + factories.size, ...o.faults, clock: Date.now });
        factories.set(product.productKey, f);
      }
      return f;
    };
    for (const key of ['nbiot', 'cat1', 'redcap'] as const) {
      for (const d of pickDevices(registry, RAT_OF[key], o.fleet[key])) {
        this.devices.push({ ...d, rat: RAT_OF[key], factory: factoryOf(d.product), socket: 0, auth: null, authExchange: null, mqtt: null, awaitingReply: new Map(), awaitingRawReplies: [] });
      }
    }
    if (o.upstream) {
      this.watch = new UpstreamWatch({ ...o.upstream, stats: this.stats });
      await this.watch.start();
      for (const d of this.devices) this.watch.track(d.product.productKey, d.deviceName);
    }
    const coapDevices = this.devices.filter((d) => d.rat === 'nb-iot');
    if (coapDevices.length > 0) {
      const url = new URL(o.coap);
      const expectedRate = o.rate ?? coapDevices.length * (1000 / o.intervalMs['nb-iot']);
      const sockets = o.coapSockets ?? Math.max(8, socketsNeeded(expectedRate));
      this.transport = new CoapTransport({
        host: url.hostname,
        port: Number(url.port || 5683),
        sockets,
        ...(o.ecl !== undefined ? { link: ECL_LINKS[o.ecl] } : {}),
        ...(o.coapTiming ? { timing: o.coapTiming } : {}),
        // Commands the gateway pushes (src/transport/coap/delivery.ts "push"): ACKed, counted, replied to.
        onRequest: (_socket, packet) => this.onPushedCommand(packet),
      });
      for (const d of coapDevices) this.coapByKey.set(`${d.product.productKey}/${d.deviceName}`, d);
      await this.transport.start();
      // A device keeps its source port between wake-ups, as a module behind the same NAT binding would.
      coapDevices.forEach((d, i) => (d.socket = i % sockets));
      if (o.coapAuth !== false) {
        for (const d of coapDevices) {
          d.auth = new CoapAuthSession({ productKey: d.product.productKey, deviceName: d.deviceName, deviceSecret: d.deviceSecret });
          d.authExchange = this.authExchange(d);
        }
        for (let i = 0; i < coapDevices.length; i += CONNECT_CONCURRENCY) {
          await Promise.all(coapDevices.slice(i, i + CONNECT_CONCURRENCY).map((d) => this.authenticate(d)));
        }
      }
    }
    const mqttDevices = this.devices.filter((d) => d.rat !== 'nb-iot');
    for (let i = 0; i < mqttDevices.length; i += CONNECT_CONCURRENCY) {
      await Promise.all(mqttDevices.slice(i, i + CONNECT_CONCURRENCY).map((d, k) => this.connect(d, i + k)));
    }
  }

  /**
   * The first /auth of a device, at set-up. A refusal is a set-up problem (wrong secrets, or an
   * endpoint without /auth); a timeout on a lossy link is not: the device tries again when it wakes.
   */
  private async authenticate(d: SimDevice): Promise<void> {
    const answer = await d.auth!.ensure(d.authExchange!);
    if (d.auth!.authenticated || answer === null || !/^\d\.\d\d$/.test(answer.code)) return;
    const hint = answer.code === '4.04' ? ' (does the endpoint authenticate CoAP devices? --no-coap-auth sends plain uplinks)' : '';
    throw new Error(`CoAP POST /auth of ${d.product.productKey}/${d.deviceName} answered ${answer.code} ${answer.payload.toString('utf8').slice(0, 120)}${hint}`);
  }

  /** Sends one /auth request of a device over the fleet's transport (CON, from the device's port), counted in stats.coapAuth. */
  private authExchange(d: SimDevice): AuthExchange {
    return async (body) => {
      const a = this.stats.coapAuth;
      a.sent++;
      const ex = await this.transport!.send({ path: AUTH_PATH, payload: body, confirmable: true, socket: d.socket, options: [AUTH_CONTENT_FORMAT] });
      a.answered(ex.code, ex.latencyMs, ex.retransmissions);
      if (ex.code === '2.05') d.coapKey = keyFromAuthAnswer(d.product, d.deviceSecret, ex);
      return { code: ex.code, payload: ex.payload };
    };
  }

  private async connect(d: SimDevice, index: number): Promise<void> {
    const o = this.opts;
    const local = o.localAddresses?.length ? o.localAddresses[index % o.localAddresses.length] : undefined;
    d.mqtt = new MqttDevice({
      url: o.mqtt,
      productKey: d.product.productKey,
      deviceName: d.deviceName,
      deviceSecret: d.deviceSecret,
      qos: o.qos,
      keepaliveS: o.keepaliveS,
      clean: false,
      reconnectMinMs: 500,
      reconnectMaxMs: 30_000,
      ...(local ? { localAddress: local } : {}),
      onReply: (reply) => this.onReply(d, reply),
    });
    try {
      await d.mqtt.start();
    } catch (err) {
      await d.mqtt.stop();
      throw err;
    }
  }

  /** Runs for the duration, then drains; returns the figures. */
  async run(): Promise<RunResult> {
    const o = this.opts;
    this.running = true;
    const start = performance.now();
    this.stats.begin(start);
    if (o.rate !== undefined) this.paceFixedRate(o.rate);
    else this.followSchedules();
    const tick = setInterval(() => this.tick(start), 1000);
    await new Promise<void>((resolve) => this.later(resolve, o.durationMs));
    this.running = false;
    clearInterval(tick);
    for (const p of this.psm) p.stop();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    const end = performance.now();
    await this.drain(o.drainMs);
    this.tick(start);
    return this.result((end - start) / 1000);
  }

  async stop(): Promise<void> {
    this.running = false;
    for (const p of this.psm) p.stop();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    await Promise.all(this.devices.map((d) => d.mqtt?.stop()));
    await this.transport?.stop();
    await this.watch?.stop();
  }

  private later(fn: () => void, ms: number): void {
    const t = setTimeout(() => {
      this.timers.delete(t);
      fn();
    }, ms);
    this.timers.add(t);
  }

  private followSchedules(): void {
    const o = this.opts;
    for (const d of this.devices) {
      const schedule = new PsmSchedule({ intervalMs: o.intervalMs[d.rat], jitter: o.jitter, activeWindowMs: d.rat === 'nb-iot' ? o.activeWindowMs : 0 });
      const device = new PsmDevice(schedule, () => this.send(d));
      this.psm.push(device);
      device.start();
    }
  }

  private paceFixedRate(rate: number): void {
    const pacer = new RatePacer(rate);
    let next = 0;
    const step = () => {
      if (!this.running) return;
      const due = pacer.due(performance.now());
      for (let i = 0; i < due && this.devices.length > 0; i++) {
        const d = this.devices[next++ % this.devices.length]!;
        void this.send(d);
      }
      this.later(step, 5);
    };
    pacer.due(performance.now());
    this.later(step, 5);
  }

  /** One uplink from one device; resolves when it is answered (or given up). Never rejects. */
  private async send(d: SimDevice): Promise<void> {
    const msg = d.factory.next(d.deviceName);
    const stats = this.stats;
    const pk = d.product.productKey;
    stats.sent++;
    if (msg.fault !== 'none') stats.fault(msg.fault);
    if (msg.records === 0) this.refusalsExpected++;
    const sentAt = performance.now();
    if (msg.records > 0) this.watch?.expect(pk, d.deviceName, msg.records, sentAt);
    this.inFlight++;
    try {
      if (d.mqtt) await this.sendMqtt(d, msg);
      else await this.sendCoap(d, msg);
    } finally {
      this.inFlight--;
    }
  }

  private async sendCoap(d: SimDevice, msg: SimMessage): Promise<void> {
    let ex: CoapExchange | undefined;
    for (let attempt = 0; ex === undefined; attempt++) {
      let creds: UplinkCredentials | undefined;
      if (d.auth) {
        await d.auth.ensure(d.authExchange!);
        if (!d.auth.authenticated) {
          // Never sent: the module could not get a token. An error of the uplink, under the /auth answer.
          this.stats.error(`auth:${d.auth.lastFailure?.code ?? 'failed'}`);
          if (msg.records > 0) this.watch?.unexpect(d.product.productKey, d.deviceName, msg.records);
          return;
        }
        creds = d.auth.next();
      }
      // A product with coapEncryption: payload and sequence number encrypted with the token's key.
      const out = creds && d.coapKey ? sealUplink(d.coapKey, creds.options, msg.payload) : { payload: msg.payload, options: creds?.options };
      const sent = await this.transport!.send({ path: `/topic${msg.topic}`, payload: out.payload, confirmable: this.opts.confirmable, socket: d.socket, ...(out.options ? { options: out.options } : {}) });
      this.stats.retransmissions += sent.retransmissions;
      // 4.01: the gateway lost the token (restart, expiry, eviction) or another uplink of this device
      // overtook this one's sequence number. Nothing was stored, so authenticate again and send it again.
      if (sent.code === '4.01' && creds && attempt < RESENDS_AFTER_401) {
        d.auth!.refused(creds.token);
        this.stats.coapAuth.renewedAfter401++;
        continue;
      }
      ex = sent;
    }
    if (ex.ok) {
      this.stats.acknowledged(performance.now(), ex.latencyMs);
      this.stats.expectedRecords += msg.records;
      this.takeCommand(d, commandInAnswer(ex.options, ex.payload, d.coapKey ?? null), 'piggybacked');
    } else {
      this.stats.error(ex.code);
      if (msg.records > 0) this.watch?.unexpect(d.product.productKey, d.deviceName, msg.records);
      if (msg.fault === 'none' && ex.code.startsWith('4.')) this.refusedValid(d, ex.code, openAnswer(d.coapKey ?? null, ex.payload).toString(), msg.payload);
    }
  }

  /** A CON POST the gateway pushed: true (ACK it) when it is a command for one of our modules. */
  private onPushedCommand(packet: Parameters<typeof commandInRequest>[0]): boolean {
    const topic = commandInRequest(packet, null)?.topic;
    const d = topic === undefined ? undefined : this.coapByKey.get(commandOwner(topic) ?? '');
    if (d === undefined) return false;
    this.takeCommand(d, commandInRequest(packet, d.coapKey ?? null), 'pushed');
    return true;
  }

  /** Counts a command a module got and, for an Alink JSON one, posts its reply (whose answer may carry the next). */
  private takeCommand(d: SimDevice, command: ReceivedCommand | null, via: 'piggybacked' | 'pushed'): void {
    if (command === null) return;
    this.stats.commands[via]++;
    const reply = replyTo(command);
    if (reply === null || !this.running) return;
    this.inFlight++;
    void this.sendReply(d, reply).finally(() => this.inFlight--);
  }

  private async sendReply(d: SimDevice, reply: { topic: string; payload: Buffer }): Promise<void> {
    let creds: UplinkCredentials | undefined;
    if (d.auth) {
      await d.auth.ensure(d.authExchange!);
      if (!d.auth.authenticated) {
        this.stats.commands.replyErrors++;
        return;
      }
      creds = d.auth.next();
    }
    const out = creds && d.coapKey ? sealUplink(d.coapKey, creds.options, reply.payload) : { payload: reply.payload, options: creds?.options };
    const ex = await this.transport!.send({ path: `/topic${reply.topic}`, payload: out.payload, confirmable: true, socket: d.socket, ...(out.options ? { options: out.options } : {}) });
    if (!ex.ok) {
      this.stats.commands.replyErrors++;
      return;
    }
    this.stats.commands.replied++;
    this.takeCommand(d, commandInAnswer(ex.options, ex.payload, d.coapKey ?? null), 'piggybacked');
  }

  private refusedValid(d: SimDevice, code: string, message: string | undefined, payload: Buffer | undefined): void {
    this.unexpectedRefusals++;
    if (this.unexpectedSamples.length < 5) {
      this.unexpectedSamples.push({ productKey: d.product.productKey, deviceName: d.deviceName, code, ...(message ? { message } : {}), payloadHex: payload?.toString('hex') ?? '' });
    }
  }

  private async sendMqtt(d: SimDevice, msg: SimMessage): Promise<void> {
    if (msg.msgId !== undefined) {
      d.awaitingReply.set(msg.msgId, { records: msg.records, payload: msg.payload });
      if (d.awaitingReply.size > REPLY_MEMORY) d.awaitingReply.delete(d.awaitingReply.keys().next().value!);
    } else {
      d.awaitingRawReplies.push({ records: msg.records, payload: msg.payload });
      if (d.awaitingRawReplies.length > REPLY_MEMORY) d.awaitingRawReplies.shift();
    }
    const r = await d.mqtt!.publish(msg.topic, msg.payload);
    if (r.ok) {
      this.stats.acknowledged(performance.now(), r.latencyMs);
      this.stats.expectedRecords += msg.records;
    } else {
      this.stats.error(r.code);
      if (msg.records > 0) this.watch?.unexpect(d.product.productKey, d.deviceName, msg.records);
    }
  }

  /** An Alink reply: a refusal is an error by its code; a refusal of a valid message also corrects what upstream should see. */
  private onReply(d: SimDevice, reply: AlinkReply): void {
    let awaited: AwaitedReply | undefined;
    if (reply.id !== undefined && d.awaitingReply.has(reply.id)) {
      awaited = d.awaitingReply.get(reply.id);
      d.awaitingReply.delete(reply.id);
    } else if (reply.id === undefined) {
      awaited = d.awaitingRawReplies.shift();
    }
    if (reply.code === 200) return;
    // The PUBACK came first and was counted as acknowledged; the reply says the gateway refused it.
    this.stats.acked--;
    this.stats.error(`alink-${reply.code}`);
    if (awaited !== undefined && awaited.records > 0) {
      this.refusedValid(d, `alink-${reply.code}`, reply.message, awaited.payload);
      this.stats.expectedRecords -= awaited.records;
      this.watch?.unexpect(d.product.productKey, d.deviceName, awaited.records);
    }
  }

  private async drain(ms: number): Promise<void> {
    const until = performance.now() + ms;
    while (performance.now() < until && (this.inFlight > 0 || (this.watch && this.stats.receivedRecords < this.stats.expectedRecords))) {
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  private tick(start: number): void {
    const s = this.stats;
    const now = performance.now();
    const series = s.ackedPerSecond.values(now);
    this.opts.onTick?.({
      elapsedS: Math.min(this.opts.durationMs, now - start) / 1000,
      durationS: this.opts.durationMs / 1000,
      sent: s.sent,
      acked: s.acked,
      errors: s.errorCount(),
      ratePerS: series.at(-1) ?? 0,
      p99Ms: s.window.percentileMs(99),
    });
    s.window.reset();
  }

  private result(durationS: number): RunResult {
    const s = this.stats;
    const perSecond = s.ackedPerSecond.values(s.startMs + durationS * 1000);
    const watch = this.watch;
    return {
      fleet: this.opts.fleet,
      durationS: Math.round(durationS * 10) / 10,
      sent: s.sent,
      acked: s.acked,
      errors: Object.fromEntries([...s.errors].sort()),
      retransmissions: s.retransmissions,
      faults: Object.fromEntries(s.faults),
      refusalsExpected: this.refusalsExpected,
      unexpectedRefusals: this.unexpectedRefusals,
      unexpectedSamples: this.unexpectedSamples,
      unanswered: this.inFlight,
      throughput: {
        meanPerS: durationS > 0 ? Math.round((s.acked / durationS) * 10) / 10 : 0,
        peakPerS: perSecond.length > 0 ? Math.max(...perSecond) : 0,
        perSecond,
      },
      ackLatencyMs: s.ack.summary(),
      coapAuth: this.devices.some((d) => d.auth !== null) ? s.coapAuth.summary() : null,
      ...(this.coapByKey.size > 0 ? { commands: { ...s.commands } } : {}),
      endToEnd: watch
        ? {
            expected: s.expectedRecords,
            received: s.receivedRecords,
            lost: Math.max(0, s.expectedRecords - s.receivedRecords),
            lossRatio: lossRatio(s.expectedRecords, s.receivedRecords),
            duplicates: s.duplicateRecords,
            foreign: watch.foreign,
            latencyMs: s.endToEnd.summary(),
          }
        : null,
    };
  }
}

/** Sets up a fleet, runs it, and always releases its sockets. */
export async function runFleet(opts: FleetOptions): Promise<RunResult> {
  const fleet = new Fleet(opts);
  try {
    await fleet.setup();
    return await fleet.run();
  } finally {
    await fleet.stop();
  }
}
