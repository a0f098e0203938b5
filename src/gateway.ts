// Composition root: builds every stage from the configuration and starts and stops them in order.
//   start: registry -> buffer -> downlink -> liveness, shadow -> MQTT listener -> CoAP listener -> forwarders -> status
//   stop:  listeners stop accepting -> in-flight commits finish -> shadow, liveness -> registry (last seen) -> forwarders close -> downlink -> buffer -> status

import { randomBytes } from 'node:crypto';
import { createBuffer, type RecordBuffer } from './buffer/index.js';
import { commandsPath, createDownlink, type Downlink } from './downlink/index.js';
import { createCommandApi } from './downlink/api.js';
import { createDevicesApi } from './downlink/devices-api.js';
import { createLiveness, type Liveness } from './downlink/liveness.js';
import { createShadow, type Shadow } from './downlink/shadow.js';
import type { Config } from './config/index.js';
import { createForwarder, type Forwarder } from './forward/index.js';
import { createPipeline, type Pipeline } from './pipeline.js';
import { createLiveRegistry, type LiveRegistry } from './registry/live.js';
import { registryPaths } from './registry/store.js';
import { buildStatus, createStatusServer, type StatusServer, type StatusSources } from './status/index.js';
import { createCoapListener, type CoapDownlinkMode, type CoapListener } from './transport/coap/index.js';
import { createMqttListener, type MqttAccount, type MqttListener } from './transport/mqtt/index.js';
import type { Logger } from './types.js';
import { VERSION } from './util/version.js';

export interface Addresses {
  coap: { address: string; port: number };
  mqtt: { address: string; port: number };
  /** MQTT over TLS, when mqtt.tls is configured. */
  mqtts: { address: string; port: number } | null;
  http: { address: string; port: number };
}

export interface Gateway {
  start(): Promise<void>;
  stop(): Promise<void>;
  addresses(): Addresses;
  status(): ReturnType<typeof buildStatus>;
  /** The command queue while running (tests and embedders submit commands through it). */
  downlink(): Downlink | null;
}

export function createGateway(config: Readonly<Config>, logger: Logger): Gateway {
  let registry: LiveRegistry | null = null;
  let buffer: RecordBuffer | null = null;
  let downlink: Downlink | null = null;
  let liveness: Liveness | null = null;
  let shadow: Shadow | null = null;
  let pipeline: Pipeline | null = null;
  let mqtt: MqttListener | null = null;
  let coap: CoapListener | null = null;
  let forwarders: Forwarder[] = [];
  let status: StatusServer | null = null;
  let ready = false;
  let startedAt = Date.now();
  let starting: Promise<void> | null = null;
  let stopping: Promise<void> | null = null;

  const sources: StatusSources = {
    version: VERSION,
    get startedAt() {
      return startedAt;
    },
    ready: () => ready,
    coap: () => coap?.stats() ?? null,
    mqtt: () => mqtt?.stats() ?? null,
    pipeline: () => pipeline!.stats(),
    buffer: () => buffer!.stats(),
    upstreams: () => forwarders.map((f) => f.stats()),
    registry: () => ({ products: registry?.products.length ?? 0, devices: registry?.deviceCount ?? 0 }),
    devices: () => liveness?.stats() ?? null,
    commands: () => downlink?.stats() ?? null,
  };

  async function doStart(): Promise<void> {
    startedAt = Date.now();
    const paths = registryPaths(config);
    registry = createLiveRegistry({
      devicesDir: config.devicesDir,
      path: paths.path,
      keyFile: paths.keyFile,
      logger,
      reloadMs: config.registry.reloadMs,
      lastSeenFlushMs: config.registry.lastSeenFlushMs,
    });
    registry.start();
    for (const p of registry.products) {
      logger.info({ productKey: p.productKey, rat: p.rat, codec: p.codec.type, devices: p.devices.size }, 'product loaded');
    }
    for (const warning of registry.warnings) logger.warn({ warning }, 'product definition');
    // CoAP authentication (src/transport/coap/auth.ts): say at start where the port is open.
    if (config.coap.auth.mode === 'optional') {
      logger.warn({ mode: 'optional' }, 'coap.auth.mode is "optional": CoAP uplinks without a token are accepted; set "required" before exposing the port');
    }
    for (const p of registry.products) {
      if (p.auth === 'none') logger.warn({ productKey: p.productKey, auth: 'none' }, 'product opts out of CoAP authentication: its devices may post without a token');
    }
    buffer = createBuffer({
      path: config.storage.path,
      sync: config.storage.sync,
      logger,
      upstreams: config.upstreams.map((u) => u.name),
      maxBytes: config.storage.maxBytes,
      maxRecords: config.storage.maxRecords,
      whenFull: config.storage.whenFull,
      ttlS: config.storage.ttl,
    });
    await buffer.start();
    downlink = createDownlink({
      path: commandsPath(config.downlink.path, config.storage.path),
      registry,
      records: buffer,
      logger,
      ttlS: config.downlink.ttlS,
      maxTtlS: config.downlink.maxTtlS,
      maxPerDevice: config.downlink.maxPerDevice,
      maxPayloadBytes: config.downlink.maxPayloadBytes,
      retainS: config.downlink.retainS,
      sweepMs: config.downlink.sweepMs,
    });
    await downlink.start();
    const commands = downlink;
    // The HTTP API (src/status/api.ts apiAccessRefusal): say at start who may send commands.
    if (config.http.apiToken === null) {
      logger.warn({ http: `${config.http.host}:${config.http.port}` }, 'http.apiToken is not set: /api/ reads are open to anyone who reaches the port and commands are taken from loopback only; set http.apiToken (or WANWU_HTTP_API_TOKEN) to use the API remotely');
    }
    // Liveness and shadow share the queue's file (tables of their own) and watch every accepted uplink.
    const stateFile = commandsPath(config.downlink.path, config.storage.path);
    liveness = createLiveness({ path: stateFile, registry, records: buffer, logger, defaults: config.downlink.liveness, sweepMs: config.downlink.liveness.sweepMs, recordChanges: config.downlink.liveness.records });
    await liveness.start();
    shadow = createShadow({ path: stateFile, downlink, logger, flushMs: config.downlink.shadow.flushMs, maxOpenCommands: config.downlink.maxPerDevice });
    await shadow.start();
    const live = liveness;
    const shade = shadow;
    pipeline = createPipeline({
      downlink,
      registry,
      buffer,
      logger,
      observers: [(raw) => live.observe(raw), (raw, records) => shade.observe(raw, records)],
      maxPayloadBytes: { coap: config.coap.maxPayloadBytes, mqtt: config.mqtt.maxPayloadBytes },
    });

    // The "local" upstream publishes into our own broker under an internal account made for this run.
    const localAccount: MqttAccount = { username: '$wanwu-local-forwarder', password: randomBytes(24).toString('hex') };
    mqtt = createMqttListener({
      host: config.mqtt.host,
      port: config.mqtt.port,
      registry,
      ingest: pipeline.ingest,
      refuse: pipeline.refuse,
      apps: config.mqtt.apps,
      publishers: config.upstreams.some((u) => u.url === 'local') ? [localAccount] : [],
      logger,
      maxPayloadBytes: config.mqtt.maxPayloadBytes,
      limits: config.mqtt.limits,
      ...(config.mqtt.tls ? { tls: config.mqtt.tls } : {}),
      downlink: commands,
      presence: (e) => live.presence(e),
    });
    await mqtt.start();
    coap = createCoapListener({
      host: config.coap.host,
      port: config.coap.port,
      maxPayloadBytes: config.coap.maxPayloadBytes,
      limits: config.coap.limits,
      auth: { ...config.coap.auth, registry },
      ingest: pipeline.ingest,
      refuse: pipeline.refuse,
      logger,
      downlink,
      downlinkMode: coapDownlinkMode(registry),
    });
    await coap.start();

    const mqttAddr = mqtt.address();
    const localHost = mqttAddr.address === '0.0.0.0' || mqttAddr.address === '::' ? '127.0.0.1' : mqttAddr.address;
    forwarders = config.upstreams.map((u) => {
      const local = u.url === 'local';
      return createForwarder({
        upstream: u,
        url: local ? `mqtt://${localHost.includes(':') ? `[${localHost}]` : localHost}:${mqttAddr.port}` : u.url,
        username: local ? localAccount.username : undefined,
        password: local ? localAccount.password : undefined,
        buffer: buffer!,
        logger,
        // upstreams[].commands: what the cloud publishes on the command topic joins the queue.
        submitCommand: (productKey, deviceName, payload, source) => commands.submitMessage(productKey, deviceName, payload, source),
      });
    });
    for (const f of forwarders) await f.start();

    // /api/ handlers, asked in order (src/status/api.ts).
    const api = [createCommandApi(commands), createDevicesApi({ registry, liveness: live, shadow: shade })];
    status = createStatusServer({ host: config.http.host, port: config.http.port, sources, logger, api, apiToken: config.http.apiToken });
    await status.start();
    ready = true;
    const a = addresses();
    logger.info(
      { coap: `${a.coap.address}:${a.coap.port}/udp`, mqtt: `${a.mqtt.address}:${a.mqtt.port}`, ...(a.mqtts ? { mqtts: `${a.mqtts.address}:${a.mqtts.port}` } : {}), http: `${a.http.address}:${a.http.port}`, storage: config.storage.path, registry: paths.path },
      'wanwu gateway ready',
    );
  }

  /** product.json "downlink" over config downlink.coap, per product (src/transport/coap/delivery.ts). */
  function coapDownlinkMode(products: Pick<LiveRegistry, 'product'>): (productKey: string) => CoapDownlinkMode {
    const fallback: CoapDownlinkMode = Object.freeze({ ...config.downlink.coap });
    return (productKey) => {
      const own = products.product(productKey)?.downlink;
      if (own === undefined) return fallback;
      return { delivery: own.coap ?? fallback.delivery, windowS: own.windowS ?? fallback.windowS };
    };
  }

  async function doStop(): Promise<void> {
    ready = false;
    // Stop intake first; commits already under way finish before the buffer closes.
    await coap?.stop();
    await mqtt?.stop();
    await pipeline?.drain();
    // After the listeners (whose session ends are the last presence events), before the buffer.
    await shadow?.stop();
    await liveness?.stop();
    registry?.stop();
    // Forwarders first: they queue commands from the upstreams' command topics until they close.
    for (const f of forwarders) await f.stop();
    await downlink?.stop();
    await buffer?.stop();
    await status?.stop();
    logger.info({}, 'wanwu gateway stopped');
  }

  function addresses(): Addresses {
    return {
      coap: coap?.address() ?? { address: '', port: 0 },
      mqtt: mqtt?.address() ?? { address: '', port: 0 },
      mqtts: mqtt?.tlsAddress() ?? null,
      http: status?.address() ?? { address: '', port: 0 },
    };
  }

  return {
    start() {
      starting ??= doStart().catch(async (err: unknown) => {
        // Release whatever did start, so a failed start leaves no socket or file open.
        await doStop().catch(() => {});
        throw err;
      });
      return starting;
    },
    stop() {
      if (!starting) return Promise.resolve();
      stopping ??= starting.catch(() => {}).then(doStop);
      return stopping;
    },
    addresses,
    status: () => buildStatus(sources, status?.address() ?? { address: '', port: 0 }),
    downlink: () => downlink,
  };
}
