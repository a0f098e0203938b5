// A fleet of simulated modules run against a gateway for a while: NB-IoT over CoAP on PSM schedules,
// Cat-1 and RedCap over MQTT sessions. Devices and secrets come from a devices/ folder; payloads are
// made from each product's thing model and encoded by its codec (payload.ts), so every message is
// valid unless a fault rate says otherwise. Counts and latencies go to a RunStats; an UpstreamWatch
// (when an upstream is given) measures end-to-end latency and loss.
//
// Two ways to pace a fleet:
//   - schedules (default): every device reports on its own interval with jitter (PSM for NB-IoT);
//   - a fixed total rate (`rate`): sends are spread evenly over the fleet, round robin.

import type { Product, Registry } from '../../src/registry/index.js';
import { loadRegistry } from '../../src/registry/index.js';
import type { Rat } from '../../src/types.js';
import { CoapTransport, socketsNeeded, type CoapTiming } from './coap-transport.js';
import { ECL_LINKS, type Ecl } from './link-model.js';
import { MqttDevice, type AlinkReply } from './mqtt-device.js';
import { createMessageFactory, type MessageFactory, type SimMessage } from './payload.js';
import { PsmDevice, PsmSchedule, RatePacer } from './schedule.js';
import { lossRatio, RunStats, type LatencySummary } from './stats.js';
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
/** MQTT sessions opened at once while the fleet starts (a connect storm is not what `run` measures). */
const CONNECT_CONCURRENCY = 100;
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
        this.devices.push({ ...d, rat: RAT_OF[key], factory: factoryOf(d.product), socket: 0, mqtt: null, awaitingReply: new Map(), awaitingRawReplies: [] });
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
      });
      await this.transport.start();
      // A device keeps its source port between wake-ups, as a module behind the same NAT binding would.
      coapDevices.forEach((d, i) => (d.socket = i % sockets));
    }
    const mqttDevices = this.devices.filter((d) => d.rat !== 'nb-iot');
    for (let i = 0; i < mqttDevices.length; i += CONNECT_CONCURRENCY) {
      await Promise.all(mqttDevices.slice(i, i + CONNECT_CONCURRENCY).map((d, k) => this.connect(d, i + k)));
    }
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
    const ex = await this.transport!.send({ path: `/topic${msg.topic}`, payload: msg.payload, confirmable: this.opts.confirmable, socket: d.socket });
    this.stats.retransmissions += ex.retransmissions;
    if (ex.ok) {
      this.stats.acknowledged(performance.now(), ex.latencyMs);
      this.stats.expectedRecords += msg.records;
    } else {
      this.stats.error(ex.code);
      if (msg.records > 0) this.watch?.unexpect(d.product.productKey, d.deviceName, msg.records);
      if (msg.fault === 'none' && ex.code.startsWith('4.')) this.refusedValid(d, ex.code, ex.payload.toString(), msg.payload);
    }
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
