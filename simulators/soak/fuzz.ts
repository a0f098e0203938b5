// Fuzz soak: millions of random and mutated MQTT packets and CoAP datagrams (simulators/lib/fuzz.ts)
// against a gateway, in rounds; after each round a well-behaved device must still get its PUBACK
// and its 2.04, and one line reports packets sent, crashes, hangs and RSS.
//
//   npm run soak:fuzz -- --packets 10000000 [--seed N]           an in-process gateway (temporary folder)
//   npm run soak:fuzz -- --mqtt mqtt://host:1883 --coap coap://host:5683 [--http http://host:8080]
//   npm run soak:fuzz -- --seed N --dump mqtt:1234                prints one input (hex) and how to replay it
//
// Exit status 1 on a crash (an exception that escaped in the in-process gateway, or a remote gateway
// that stops accepting connections), a hang (a well-formed session left unanswered, a device not
// served after a round), or RSS growth over --max-rss-growth MB (default 300) after a 5-minute
// warm-up. RSS is that of the whole process when the gateway runs in-process (the fuzzer's share is
// small), or /status's with --http. The CI run of the same generator is
// test/security/fuzz.test.ts (100k of each).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import mqtt from 'mqtt';
import { parseConfig } from '../../src/config/index.js';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { signMqttLogin } from '../../src/registry/sign.js';
import type { Logger } from '../../src/types.js';
import { CoapClient } from '../lib/coap-client.js';
import {
  coapDatagram,
  demoDevice,
  KNOWN_ISSUES,
  loadFuzzCorpus,
  mergeFuzzReports,
  mqttStream,
  runFuzz,
  type FuzzCorpus,
  type FuzzDevice,
  type FuzzReport,
  type FuzzTarget,
} from '../lib/fuzz.js';

export interface FuzzSoakOptions {
  /** MQTT packets, and CoAP datagrams, to send (each). */
  packets: number;
  seed: number;
  devicesDir: string;
  /** A running gateway; without both, an in-process gateway is started. */
  mqtt?: FuzzTarget;
  coap?: FuzzTarget;
  /** Its HTTP status endpoint, for /healthz and the remote RSS (optional). */
  http?: FuzzTarget;
  /** Packets (and datagrams) per round; a probe and a report line follow each. Default 100,000. */
  round?: number;
  /** Labels left out (default: the KNOWN_ISSUES classes). */
  exclude?: ReadonlySet<string>;
  /** RSS may grow by this many bytes over its figure after the warm-up (5 min). Default 300 MiB. */
  maxRssGrowth?: number;
  log?: (line: string) => void;
}

export interface FuzzSoakResult {
  seed: number;
  mqttPackets: number;
  mqttConnections: number;
  coapDatagrams: number;
  crashes: string[];
  hangs: string[];
  /** [minutes since start, RSS MB, live heap MB (in-process) or null] per round. */
  rss: Array<[number, number, number | null]>;
  rssExceeded: boolean;
  durationS: number;
  report: FuzzReport | null;
}

/** Minutes before the RSS baseline is taken. */
const WARM_UP_MIN = 5;

/** The device the probe speaks as after each round; the fuzzer never uses it (no flood ban, no session takeover). */
const PROBE_MQTT = { productKey: 'TrackerCat1', deviceName: 'tr-0001' };
const PROBE_COAP = { productKey: 'WaterMeterNB', deviceName: 'wm-0001' };
// Water meter report: 01 type | 00003039 flow | 04d2 instant | 0e10 battery | 00 valve | 0929 temp | ffa6 rsrp
const METER_FRAME = Buffer.from('010000303904d20e10000929ffa6', 'hex');

/** The demo devices and uplinks, without the probe's device. */
function soakCorpus(devicesDir: string, seed: number): FuzzCorpus {
  const full = loadFuzzCorpus(devicesDir, { seed });
  const isProbe = (d: FuzzDevice) => d.productKey === PROBE_MQTT.productKey && d.deviceName === PROBE_MQTT.deviceName;
  return {
    devices: full.devices.filter((d) => !isProbe(d)),
    uplinks: full.uplinks.filter((u) => !isProbe(u.device)),
    uplinksOf: full.uplinksOf,
  };
}

export async function runFuzzSoak(opts: FuzzSoakOptions): Promise<FuzzSoakResult> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const round = opts.round ?? 100_000;
  const exclude = opts.exclude ?? new Set(Object.keys(KNOWN_ISSUES));
  const corpus = soakCorpus(opts.devicesDir, opts.seed);
  const probeDevice = demoDevice(opts.devicesDir, PROBE_MQTT.productKey, PROBE_MQTT.deviceName);

  const crashes: string[] = [];
  const hangs: string[] = [];
  const recent = { mqtt: [] as number[], coap: [] as number[] };
  const onUnit = (lane: 'mqtt' | 'coap', index: number) => {
    const list = recent[lane];
    list.push(index);
    if (list.length > 256) list.shift();
  };
  const onCrash = (kind: string) => (err: unknown) => {
    crashes.push(`${kind}: ${(err as Error)?.stack ?? String(err)}`);
    log(`CRASH ${kind}: ${(err as Error)?.stack ?? String(err)}`);
    log(`  in flight: MQTT connections ${recent.mqtt.slice(-64).join(' ')}; CoAP datagrams ${recent.coap.slice(-32).join(' ')} (seed ${opts.seed}; replay one with --dump mqtt:N)`);
  };
  const onException = onCrash('uncaughtException');
  const onRejection = onCrash('unhandledRejection');

  let gw: Gateway | null = null;
  let workDir: string | null = null;
  let targets: { mqtt?: FuzzTarget; coap?: FuzzTarget; http?: FuzzTarget };
  const loggedErrors: string[] = [];
  if (opts.mqtt || opts.coap) {
    targets = { ...(opts.mqtt ? { mqtt: opts.mqtt } : {}), ...(opts.coap ? { coap: opts.coap } : {}), ...(opts.http ? { http: opts.http } : {}) };
  } else {
    workDir = mkdtempSync(join(tmpdir(), 'wanwu-fuzz-soak-'));
    const config = parseConfig({
      coap: { host: '127.0.0.1', port: 0 },
      // The connect-flood ban and the publish rate limit volume per device identity: with them on,
      // nearly every fuzzed session would be refused at CONNECT (see test/security/fuzz.test.ts).
      mqtt: { host: '127.0.0.1', port: 0, limits: { connectFlood: { maxPerMinute: 0 }, publishRate: { perSecond: 0 } } },
      http: { host: '127.0.0.1', port: 0 },
      storage: { path: join(workDir, 'wanwu.db') },
      devicesDir: opts.devicesDir,
      upstreams: [{ name: 'local', url: 'local' }],
      log: { level: 'silent' },
    });
    // Errors the gateway logs are worth a look after a soak: kept (the first 20) and printed.
    const logger: Logger = {
      debug() {},
      info() {},
      warn() {},
      error(obj, msg) {
        if (loggedErrors.length < 20) loggedErrors.push(`${msg ?? ''} ${JSON.stringify(obj).slice(0, 300)}`);
      },
    };
    gw = createGateway(config, logger);
    process.on('uncaughtException', onException);
    process.on('unhandledRejection', onRejection);
    await gw.start();
    const a = gw.addresses();
    targets = { mqtt: { host: '127.0.0.1', port: a.mqtt.port }, coap: { host: '127.0.0.1', port: a.coap.port }, http: { host: '127.0.0.1', port: a.http.port } };
  }
  log(
    `fuzz soak: seed ${opts.seed}, ${opts.packets.toLocaleString('en')} MQTT packets and CoAP datagrams each, ` +
      `${gw ? 'in-process gateway' : 'remote gateway'} (MQTT ${fmt(targets.mqtt)}, CoAP ${fmt(targets.coap)}); excluded: ${[...exclude].join(', ') || 'none'}`,
  );

  let total: FuzzReport | null = null;
  const rss: FuzzSoakResult['rss'] = [];
  let rssBase: number | null = null;
  let warm = false;
  let rssExceeded = false;
  try {
    let mqttSent = 0;
    let coapSent = 0;
    while ((targets.mqtt && mqttSent < opts.packets) || (targets.coap && coapSent < opts.packets)) {
      const r = await runFuzz({
        corpus,
        seed: opts.seed,
        exclude,
        mqttPackets: targets.mqtt ? Math.min(round, opts.packets - mqttSent) : 0,
        coapDatagrams: targets.coap ? Math.min(round, opts.packets - coapSent) : 0,
        mqttStart: total?.mqtt.nextIndex ?? 0,
        coapStart: total?.coap.nextIndex ?? 0,
        ...(targets.mqtt ? { mqtt: targets.mqtt } : {}),
        ...(targets.coap ? { coap: targets.coap } : {}),
        onUnit,
      });
      total = total ? mergeFuzzReports(total, r) : r;
      mqttSent = total.mqtt.packets;
      coapSent = total.coap.packets;
      if (r.mqtt.connectErrors > 0) crashes.push(`${r.mqtt.connectErrors} MQTT connections refused: the gateway is down`);
      for (const i of r.mqtt.timedOut) hangs.push(`MQTT connection ${i}: a well-formed session left unanswered`);
      const probe = await probeGateway(targets, probeDevice, opts.devicesDir);
      if (probe.error) hangs.push(`after ${mqttSent} packets: ${probe.error}`);

      const mem = await memory(gw, targets.http);
      const minutes = (Date.now() - started) / 60_000;
      if (mem.rss !== null) {
        rss.push([Math.round(minutes * 10) / 10, mb(mem.rss), mem.heap === null ? null : mb(mem.heap)]);
        // The baseline is the first round after WARM_UP_MIN (caches filled, the CoAP de-duplication
        // window of 247 s passed); a shorter run uses its first round.
        if (rssBase === null || (!warm && minutes >= WARM_UP_MIN)) {
          rssBase = mem.rss;
          warm = minutes >= WARM_UP_MIN;
        } else if (mem.rss - rssBase > (opts.maxRssGrowth ?? 300 * 1024 * 1024)) {
          rssExceeded = true;
        }
      }
      log(
        `[${minutes.toFixed(1).padStart(6)} min] MQTT ${mqttSent.toLocaleString('en')} packets (${total.mqtt.units.toLocaleString('en')} connections), ` +
          `CoAP ${coapSent.toLocaleString('en')} datagrams; RSS ${mem.rss === null ? 'n/a' : `${mb(mem.rss)} MB`}` +
          `${mem.heap === null ? '' : `, live heap ${mb(mem.heap)} MB`}; probe ${probe.error ? 'FAILED' : `MQTT ${probe.mqttMs} ms, CoAP ${probe.coapMs} ms`}; ` +
          `crashes ${crashes.length}, hangs ${hangs.length}`,
      );
      if (crashes.length > 0 || (targets.mqtt && r.mqtt.connectErrors > 0)) break;
    }
  } finally {
    process.off('uncaughtException', onException);
    process.off('unhandledRejection', onRejection);
    await gw?.stop();
    if (workDir) rmSync(workDir, { recursive: true, force: true });
  }
  for (const line of loggedErrors) log(`gateway logged an error: ${line}`);
  return {
    seed: opts.seed,
    mqttPackets: total?.mqtt.packets ?? 0,
    mqttConnections: total?.mqtt.units ?? 0,
    coapDatagrams: total?.coap.packets ?? 0,
    crashes,
    hangs,
    rss,
    rssExceeded,
    durationS: Math.round((Date.now() - started) / 100) / 10,
    report: total,
  };
}

/** A signed MQTT QoS 1 publish must get its PUBACK and a CoAP CON POST its 2.04, each within 5 s. */
async function probeGateway(
  targets: { mqtt?: FuzzTarget; coap?: FuzzTarget; http?: FuzzTarget },
  device: FuzzDevice,
  devicesDir: string,
): Promise<{ error?: string; mqttMs?: number; coapMs?: number }> {
  const out: { error?: string; mqttMs?: number; coapMs?: number } = {};
  if (targets.mqtt) {
    const t = Date.now();
    const client = mqtt.connect(`mqtt://${hostPart(targets.mqtt.host)}:${targets.mqtt.port}`, {
      ...signMqttLogin(device),
      protocolVersion: 4,
      reconnectPeriod: 0,
      connectTimeout: 5000,
      keepalive: 60,
    });
    client.on('error', () => {});
    try {
      await withTimeout(
        (async () => {
          await new Promise<void>((res, rej) => {
            client.once('connect', () => res());
            client.once('error', rej);
            client.once('close', () => rej(new Error('closed before CONNACK')));
          });
          await client.publishAsync(`/sys/${device.productKey}/${device.deviceName}/thing/event/property/post`, JSON.stringify({ id: 'probe', params: { batteryLevel: 50 } }), { qos: 1 });
        })(),
        5000,
      );
      out.mqttMs = Date.now() - t;
    } catch (err) {
      out.error = `MQTT probe: ${(err as Error).message}`;
    } finally {
      client.end(true);
    }
  }
  if (targets.coap) {
    const t = Date.now();
    const coap = new CoapClient(targets.coap.host, targets.coap.port);
    try {
      const meter = demoDevice(devicesDir, PROBE_COAP.productKey, PROBE_COAP.deviceName);
      // A real uplink, authenticated as the gateway requires by default.
      await coap.authenticate(meter, { timeoutMs: 5000 });
      const res = await coap.post(`/topic/sys/${meter.productKey}/${meter.deviceName}/thing/model/up_raw`, METER_FRAME, { confirmable: true, timeoutMs: 5000 });
      if (res.code === '2.04') out.coapMs = Date.now() - t;
      else out.error = `${out.error ? `${out.error}; ` : ''}CoAP probe: ${res.code} ${res.payload.toString().slice(0, 100)}`;
    } catch (err) {
      out.error = `${out.error ? `${out.error}; ` : ''}CoAP probe: ${(err as Error).message}`;
    } finally {
      coap.close();
    }
  }
  if (targets.http) {
    try {
      const res = await withTimeout(fetch(`http://${hostPart(targets.http.host)}:${targets.http.port}/healthz`), 5000);
      if (res.status !== 200) out.error = `${out.error ? `${out.error}; ` : ''}/healthz ${res.status}`;
    } catch (err) {
      out.error = `${out.error ? `${out.error}; ` : ''}/healthz: ${(err as Error).message}`;
    }
  }
  return out;
}

/** RSS (and live heap after a full GC, in-process) of the gateway's process. */
async function memory(gw: Gateway | null, http: FuzzTarget | undefined): Promise<{ rss: number | null; heap: number | null }> {
  if (gw) {
    setFlagsFromString('--expose-gc');
    (runInNewContext('gc') as () => void)();
    const m = process.memoryUsage();
    return { rss: m.rss, heap: m.heapUsed };
  }
  if (!http) return { rss: null, heap: null };
  try {
    const res = await withTimeout(fetch(`http://${hostPart(http.host)}:${http.port}/status`), 5000);
    const body = (await res.json()) as { process?: { rssBytes?: number } };
    return { rss: body.process?.rssBytes ?? null, heap: null };
  } catch {
    return { rss: null, heap: null };
  }
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    }),
  ]);
}

function hostPart(host: string): string {
  return host.includes(':') ? `[${host}]` : host;
}

function fmt(t: FuzzTarget | undefined): string {
  return t ? `${t.host}:${t.port}` : 'off';
}

function mb(bytes: number): number {
  return Math.round(bytes / 1024 / 1024);
}

function parseTarget(url: string, defaultPort: number): FuzzTarget {
  const u = new URL(url);
  return { host: u.hostname.replace(/^\[|\]$/g, ''), port: u.port === '' ? defaultPort : Number(u.port) };
}

/** `--dump mqtt:N` / `coap:N`: the bytes of one input, and a one-line replay. */
function dump(spec: string, seed: number, devicesDir: string, exclude: ReadonlySet<string>): string {
  const [lane, n] = spec.split(':');
  const index = Number(n);
  if ((lane !== 'mqtt' && lane !== 'coap') || !Number.isInteger(index) || index < 0) throw new Error(`--dump wants mqtt:N or coap:N, got ${spec}`);
  const corpus = soakCorpus(devicesDir, seed);
  const unit = lane === 'mqtt' ? mqttStream(corpus, seed, index, { exclude }) : coapDatagram(corpus, seed, index, { exclude });
  const hex = unit.bytes.toString('hex');
  const replay =
    lane === 'mqtt'
      ? `node -e "require('net').connect(1883,'127.0.0.1',function(){this.end(Buffer.from(process.argv[1],'hex'))}).resume()" ${hex}`
      : `node -e "const s=require('dgram').createSocket('udp4');s.send(Buffer.from(process.argv[1],'hex'),5683,'127.0.0.1',()=>s.close())" ${hex}`;
  return [`${lane} unit ${index} of seed ${seed}: ${unit.bytes.length} bytes, ${unit.packets} packet(s)`, `labels: ${unit.labels.join(', ')}`, `hex: ${hex}`, `replay: ${replay}`].join('\n');
}

async function main(argv: string[]): Promise<number> {
  const arg = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const seed = Number(arg('--seed') ?? Math.floor(Math.random() * 2 ** 31));
  const devicesDir = resolve(arg('--devices') ?? './devices');
  const exclude = new Set<string>([...(argv.includes('--include-known') ? [] : Object.keys(KNOWN_ISSUES)), ...(arg('--exclude')?.split(',').filter(Boolean) ?? [])]);
  const dumpSpec = arg('--dump');
  if (dumpSpec) {
    process.stdout.write(`${dump(dumpSpec, seed, devicesDir, exclude)}\n`);
    return 0;
  }
  const packets = Number(arg('--packets') ?? 10_000_000);
  if (!Number.isInteger(packets) || packets <= 0) throw new Error(`--packets must be a positive integer, got ${arg('--packets')}`);
  const mqttUrl = arg('--mqtt');
  const coapUrl = arg('--coap');
  const httpUrl = arg('--http');
  const result = await runFuzzSoak({
    packets,
    seed,
    devicesDir,
    exclude,
    ...(arg('--round') ? { round: Number(arg('--round')) } : {}),
    ...(arg('--max-rss-growth') ? { maxRssGrowth: Number(arg('--max-rss-growth')) * 1024 * 1024 } : {}),
    ...(mqttUrl ? { mqtt: parseTarget(mqttUrl, 1883) } : {}),
    ...(coapUrl ? { coap: parseTarget(coapUrl, 5683) } : {}),
    ...(httpUrl ? { http: parseTarget(httpUrl, 8080) } : {}),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  const { report, ...summary } = result;
  process.stdout.write(
    `${JSON.stringify(
      {
        ...summary,
        rss: summary.rss.map(([min, rss, heap]) => `${min} min: ${rss} MB${heap === null ? '' : ` (live heap ${heap} MB)`}`),
        mqtt: report && { answered: report.mqtt.answered, closedByGateway: report.mqtt.closedByPeer, leftWaiting: report.mqtt.stalled, timeouts: report.mqtt.timeouts },
        coapAnswers: report?.coap.responses,
        pingTimeouts: report?.coap.pingTimeouts,
      },
      null,
      2,
    )}\n`,
  );
  return result.crashes.length === 0 && result.hangs.length === 0 && !result.rssExceeded ? 0 : 1;
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  process.exitCode = await main(process.argv.slice(2));
}
