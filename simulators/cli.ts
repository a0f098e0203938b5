// The `wanwu-sim` command: fleets of simulated NB-IoT, Cat-1 and RedCap modules against Wanwu (or any
// CoAP/MQTT endpoint), and side-by-side benchmarks. Wires the command line to simulators/lib; nothing
// imports this file.

import { Command, CommanderError, Option } from 'commander';
import { loadRegistry } from '../src/registry/index.js';
import { VERSION } from '../src/util/version.js';
import { runBench } from './bench/all.js';
import { holdConnections, loopbackAddresses, statusMemory } from './lib/connections.js';
import { runFleet, type FleetOptions, type RunResult } from './lib/fleet.js';
import { parseEcl } from './lib/link-model.js';
import { parseCount, parseDuration, parseFraction, parsePositive, readProfile } from './lib/options.js';
import { createCountProgress, createProgress } from './lib/progress.js';
import { provisionDevices } from './lib/provision.js';
import { runRamp, formatRamp } from './lib/ramp.js';
import { formatRun, parseLoss, table, verdict, writeReport } from './lib/report.js';

/** Wanwu's embedded defaults (README "Configuration"): what the simulator aims at unless told otherwise. */
const DEFAULTS = {
  coap: 'coap://127.0.0.1:5683',
  mqtt: 'mqtt://127.0.0.1:1883',
  upstream: 'mqtt://127.0.0.1:1883',
  upstreamTopic: 'wanwu/#',
  // The local upstream's demo application account (README: demo credentials, not for production).
  upstreamUsername: 'app',
  upstreamPassword: 'wanwu-demo',
  status: 'http://127.0.0.1:8080/status',
};

type Opts = Record<string, string | boolean | undefined>;

/** Options every fleet mode (run, ramp) takes. */
function fleetOptions(cmd: Command): Command {
  return cmd
    .option('--coap <url>', 'CoAP endpoint for NB-IoT devices', DEFAULTS.coap)
    .option('--mqtt <url>', 'MQTT endpoint for Cat-1 and RedCap devices', DEFAULTS.mqtt)
    .option('--upstream <url>', 'broker the gateway forwards to: subscribed to measure end-to-end latency and loss', DEFAULTS.upstream)
    .option('--no-upstream', 'do not watch an upstream broker')
    .option('--upstream-topic <filter>', 'topic filter the records arrive on', DEFAULTS.upstreamTopic)
    .option('--upstream-username <name>', 'upstream login (default: Wanwu\'s demo app account)', DEFAULTS.upstreamUsername)
    .option('--upstream-password <secret>', 'upstream password', DEFAULTS.upstreamPassword)
    .option('--devices <dir>', 'products and device credentials', './devices')
    .option('--nbiot <n>', 'NB-IoT modules (CoAP, PSM)', '0')
    .option('--cat1 <n>', 'Cat-1 modules (MQTT)', '0')
    .option('--redcap <n>', 'RedCap modules (MQTT)', '0')
    .option('--profile <file>', 'JSON file of option: value defaults (e.g. {"nbiot": 5000, "nbiotInterval": "10m"})')
    .option('--interval <duration>', 'report interval of every device (unless a per-rat interval is given)', '60s')
    .option('--nbiot-interval <duration>', 'report interval of NB-IoT devices')
    .option('--cat1-interval <duration>', 'report interval of Cat-1 devices')
    .option('--redcap-interval <duration>', 'report interval of RedCap devices')
    .option('--jitter <fraction>', '± share of the interval each wake-up varies by', '0.1')
    .option('--active-window <duration>', 'NB-IoT: reachable after each uplink before PSM', '20s')
    .option('--non', 'NB-IoT: send NON instead of CON (no retransmission)')
    .addOption(new Option('--ecl <class>', 'NB-IoT coverage class link model: 0, 1 or 2 (added latency and loss)'))
    .option('--ack-timeout <duration>', 'CoAP ACK_TIMEOUT (RFC 7252 §4.8)', '2s')
    .option('--max-retransmit <n>', 'CoAP MAX_RETRANSMIT', '4')
    .option('--coap-sockets <n>', 'UDP source ports for CoAP (default: enough for the rate, at least 8)')
    .option('--no-coap-auth', 'NB-IoT: plain uplinks without POST /auth, token and sequence number (for an endpoint that does not authenticate)')
    .addOption(new Option('--qos <n>', 'MQTT publish QoS').choices(['0', '1']).default('1'))
    .option('--keepalive <seconds>', 'MQTT keepalive', '60')
    .option('--local-addresses <n>', 'spread MQTT sessions over 127.0.0.2..127.0.0.(n+1) (loopback targets only)', '0')
    .option('--invalid-rate <fraction>', 'share of messages with a value the thing model refuses', '0')
    .option('--malformed-rate <fraction>', 'share of messages the codec cannot decode', '0')
    .option('--duplicate-rate <fraction>', 'share of messages that repeat the previous one', '0')
    .option('--seed <n>', 'seed of the payload generator', '1')
    .option('--drain <duration>', 'after the run, wait this long for answers and upstream records', '10s')
    .option('--report <file>', 'write the JSON report here')
    .option('--max-loss <fraction>', 'exit 1 when loss exceeds this (0.001 or 0.1%)', '0')
    .option('--no-progress', 'no live progress line');
}

/** Options from the command line, with a profile's values for those left at their defaults. */
function withProfile(cmd: Command, opts: Opts): Opts {
  if (typeof opts.profile !== 'string') return opts;
  const profile = readProfile(opts.profile);
  const out: Opts = { ...opts };
  for (const [k, v] of Object.entries(profile)) {
    const source = cmd.getOptionValueSource(k);
    if (source === undefined || source === 'default') out[k] = v;
  }
  return out;
}

function toFleetOptions(o: Opts): FleetOptions {
  const str = (k: string) => String(o[k]);
  const interval = parseDuration(str('interval'), 'interval');
  const perRat = (k: string) => (typeof o[k] === 'string' ? parseDuration(o[k], k.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`)) : interval);
  const localAddresses = parseCount(str('localAddresses'), 'local-addresses');
  return {
    devicesDir: str('devices'),
    coap: str('coap'),
    mqtt: str('mqtt'),
    ...(o.upstream !== false
      ? {
          upstream: {
            url: str('upstream'),
            topic: str('upstreamTopic'),
            ...(o.upstreamUsername ? { username: str('upstreamUsername') } : {}),
            ...(o.upstreamPassword ? { password: str('upstreamPassword') } : {}),
          },
        }
      : {}),
    fleet: { nbiot: parseCount(str('nbiot'), 'nbiot'), cat1: parseCount(str('cat1'), 'cat1'), redcap: parseCount(str('redcap'), 'redcap') },
    durationMs: parseDuration(str('duration')),
    ...(typeof o.rate === 'string' ? { rate: parsePositive(o.rate, 'rate') } : {}),
    intervalMs: { 'nb-iot': perRat('nbiotInterval'), cat1: perRat('cat1Interval'), redcap: perRat('redcapInterval') },
    jitter: parseFraction(str('jitter'), 'jitter'),
    activeWindowMs: parseDuration(str('activeWindow'), 'active-window'),
    confirmable: o.non !== true,
    ...(typeof o.ecl === 'string' ? { ecl: parseEcl(o.ecl) } : {}),
    coapTiming: { ackTimeoutMs: parseDuration(str('ackTimeout'), 'ack-timeout'), maxRetransmit: parseCount(str('maxRetransmit'), 'max-retransmit') },
    ...(typeof o.coapSockets === 'string' ? { coapSockets: Math.max(1, parseCount(o.coapSockets, 'coap-sockets')) } : {}),
    // A profile's `"coapAuth": false` arrives as the string "false".
    coapAuth: o.coapAuth !== false && o.coapAuth !== 'false',
    qos: Number(o.qos) as 0 | 1,
    keepaliveS: parseCount(str('keepalive'), 'keepalive'),
    faults: {
      invalidRate: parseFraction(str('invalidRate'), 'invalid-rate'),
      malformedRate: parseFraction(str('malformedRate'), 'malformed-rate'),
      duplicateRate: parseFraction(str('duplicateRate'), 'duplicate-rate'),
    },
    seed: parseCount(str('seed'), 'seed'),
    drainMs: parseDuration(str('drain'), 'drain'),
    ...(localAddresses > 0 ? { localAddresses: loopbackAddresses(localAddresses) } : {}),
  };
}

function runReport(mode: string, opts: FleetOptions, result: RunResult, maxLoss: number, pass: boolean, reasons: string[]): Record<string, unknown> {
  return {
    tool: 'wanwu-sim',
    version: VERSION,
    mode,
    at: new Date().toISOString(),
    targets: { coap: opts.coap, mqtt: opts.mqtt, upstream: opts.upstream?.url ?? null },
    settings: { ...opts, upstream: opts.upstream ? { url: opts.upstream.url, topic: opts.upstream.topic } : null, onTick: undefined },
    maxLoss,
    pass,
    reasons,
    result,
  };
}

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const program = new Command()
    .name('wanwu-sim')
    .description('Load-test a CoAP/MQTT IoT gateway with simulated NB-IoT, Cat-1 and RedCap modules.')
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  const run = fleetOptions(
    program
      .command('run')
      .description('run a fleet for a while at per-device schedules (or a fixed total --rate) and report')
      .option('--duration <duration>', 'how long to send', '60s')
      .option('--rate <msgs/s>', 'fixed total rate instead of per-device schedules'),
  );
  run.action(async (raw: Opts) => {
    const o = withProfile(run, raw);
    const opts = toFleetOptions(o);
    const maxLoss = parseLoss(String(o.maxLoss));
    const progress = createProgress({ enabled: o.progress !== false, label: 'run' });
    const result = await runFleet({ ...opts, onTick: (t) => progress.update(t) });
    progress.stop();
    const v = verdict(result, maxLoss);
    process.stdout.write(`${formatRun(result, v)}\n`);
    if (typeof o.report === 'string') writeReport(o.report, runReport('run', opts, result, maxLoss, v.pass, v.reasons));
    exitCode = v.pass ? 0 : 1;
  });

  const ramp = fleetOptions(
    program
      .command('ramp')
      .description('step the total rate up until loss or latency passes a bound; report the saturation point')
      .option('--start-rate <msgs/s>', 'first step', '200')
      .option('--step-factor <x>', 'each step multiplies the rate by this', '1.5')
      .option('--max-rate <msgs/s>', 'stop here even if nothing broke', '200000')
      .option('--step-duration <duration>', 'how long each step sends', '10s')
      .option('--max-p99 <duration>', 'a step fails when its acknowledgement p99 exceeds this', '200ms'),
  );
  ramp.action(async (raw: Opts) => {
    const o = withProfile(ramp, raw);
    const base = toFleetOptions({ ...o, duration: String(o.stepDuration), drain: String(o.drain) });
    const maxLoss = parseLoss(String(o.maxLoss));
    const result = await runRamp({
      base,
      startRate: parsePositive(String(o.startRate), 'start-rate'),
      stepFactor: parsePositive(String(o.stepFactor), 'step-factor'),
      maxRate: parsePositive(String(o.maxRate), 'max-rate'),
      maxLoss,
      maxP99Ms: parseDuration(String(o.maxP99), 'max-p99'),
      log: o.progress === false ? () => {} : (line) => process.stderr.write(`${line}\n`),
    });
    process.stdout.write(`${formatRamp(result)}\n`);
    if (typeof o.report === 'string') writeReport(o.report, { tool: 'wanwu-sim', version: VERSION, mode: 'ramp', at: new Date().toISOString(), ...result });
    exitCode = result.saturation === null ? 1 : 0;
  });

  program
    .command('connections')
    .description("open and hold many idle MQTT sessions; report the gateway's memory per session")
    .option('--mqtt <url>', 'MQTT endpoint', DEFAULTS.mqtt)
    .option('--status <url>', "the gateway's /status (memory before and after); empty to skip", DEFAULTS.status)
    .option('--devices <dir>', 'device credentials (one device per session)', './devices')
    .option('--count <n>', 'sessions to open', '1000')
    .option('--connect-rate <n/s>', 'new sessions per second', '2000')
    .option('--hold <duration>', 'hold them open this long', '30s')
    .option('--keepalive <seconds>', 'MQTT keepalive of each session', '300')
    .option('--local-addresses <n>', 'source addresses 127.0.0.2..127.0.0.(n+1) (loopback targets)', '8')
    .option('--report <file>', 'write the JSON report here')
    .action(async (o: Opts) => {
      const registry = loadRegistry(String(o.devices));
      const devices = registry.products.flatMap((p) => [...p.devices.values()]);
      const count = parseCount(String(o.count), 'count');
      const status = typeof o.status === 'string' && o.status !== '' ? o.status : null;
      const progress = createCountProgress({ label: 'sessions opened', total: count });
      const result = await holdConnections({
        mqtt: String(o.mqtt),
        devices,
        count,
        localAddresses: loopbackAddresses(parseCount(String(o.localAddresses), 'local-addresses')),
        connectRate: parsePositive(String(o.connectRate), 'connect-rate'),
        holdMs: parseDuration(String(o.hold), 'hold'),
        keepaliveS: parseCount(String(o.keepalive), 'keepalive'),
        ...(status ? { gatewayMemory: statusMemory(status) } : {}),
        onProgress: (p) => progress.update(p.opened + p.failed, p.failed),
      });
      progress.stop();
      const kib = (b: number) => (b / 1024).toFixed(1);
      const rows = [
        ['sessions asked', String(result.target)],
        ['sessions opened', String(result.opened)],
        ['sessions held to the end', String(result.heldAtEnd)],
        ...Object.entries(result.failed).map(([code, n]) => [`failed: ${code}`, String(n)]),
        ['time to open (s)', String(result.openSeconds)],
        ['open-files limit here (soft/hard)', result.openFileLimit],
      ];
      if (result.gateway) {
        const g = result.gateway;
        rows.push(
          ['gateway RSS before (MiB)', (g.rssBeforeBytes / 2 ** 20).toFixed(1)],
          ['gateway RSS after (MiB)', (g.rssAfterBytes / 2 ** 20).toFixed(1)],
          ['gateway RSS per session (KiB)', kib(g.rssPerSessionBytes)],
          ['gateway heap per session (KiB)', kib(g.heapPerSessionBytes)],
        );
      }
      process.stdout.write(`${table(['measure', 'value'], rows)}\n`);
      if (typeof o.report === 'string') writeReport(o.report, { tool: 'wanwu-sim', version: VERSION, mode: 'connections', at: new Date().toISOString(), ...result });
      exitCode = result.heldAtEnd === count ? 0 : 1;
    });

  program
    .command('bench')
    .description('side by side: bare aedes, bare node-coap, Wanwu MQTT and CoAP, mosquitto; plus codec and buffer micro-benchmarks')
    .option('--quick', 'short runs (under a minute), for spot checks')
    .option('--devices <dir>', 'products folder', './devices')
    .option('--dir <dir>', 'scratch folder for databases (default: the OS temp folder)')
    .option('--report <file>', 'write the JSON report here')
    .action(async (o: Opts) => {
      const result = await runBench({
        quick: o.quick === true,
        devicesDir: String(o.devices),
        ...(typeof o.dir === 'string' ? { scratchDir: o.dir } : {}),
        log: (line) => process.stderr.write(`${line}\n`),
      });
      process.stdout.write(`${result.text}\n`);
      if (typeof o.report === 'string') writeReport(o.report, { tool: 'wanwu-sim', version: VERSION, mode: 'bench', at: new Date().toISOString(), ...result.json });
    });

  program
    .command('provision')
    .description('add N generated devices (names and secrets, for load tests) to every product in a devices folder')
    .requiredOption('--devices <dir>', 'products folder to add to (a copy of devices/, not the samples themselves)')
    .requiredOption('--count <n>', 'devices to add to each product')
    .action((o: Opts) => {
      const added = provisionDevices(String(o.devices), parseCount(String(o.count), 'count'));
      process.stdout.write(`${table(['product', 'added', 'devices'], added.map((a) => [a.productKey, String(a.added), String(a.total)]))}\n`);
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    process.stderr.write(`wanwu-sim: ${(err as Error).message}\n`);
    return 2;
  }
  return exitCode;
}
