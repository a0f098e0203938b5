// `wanwu-sim bench`: every figure the project promises, in one run on one machine.
//   1. codecs      decode + validate per codec (bench/codecs.ts)
//   2. buffer      append with sync full next to bare better-sqlite3; forwarding to mosquitto (bench/store-forward.ts)
//   3. side by side  bare aedes, Wanwu MQTT, mosquitto, bare node-coap, Wanwu CoAP under the same load (bench/side-by-side.ts)
//   4. end to end  a ramp finds the rate at which a CoAP fleet still gets every record to the upstream
//                  broker with ack p99 under 200 ms; then device -> upstream p99 at half that rate
//   5. soak        CoAP at 5k msgs/s: the gateway's RSS over time (5 minutes; 20 s with --quick)
// Steps 4 and 5 forward to a mosquitto upstream (as a deployment would), where the simulator
// subscribes; without mosquitto they use the gateway's local upstream.
//   6. sessions    idle MQTT sessions held, the gateway's memory per session (lib/connections.ts)
// Each Wanwu under test is a child process (bin/wanwu.js) on a provisioned copy of the devices folder,
// so its RSS is its own. --quick finishes in about a minute; the full run in under ten.

import { cpSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadRegistry } from '../../src/registry/index.js';
import { holdConnections, loopbackAddresses, openFileLimit, statusMemory } from '../lib/connections.js';
import { runFleet, type FleetOptions } from '../lib/fleet.js';
import { startWanwuChild, stopGatewayProcess, type GatewayProcess } from '../lib/gateway-process.js';
import { Mosquitto, which } from '../lib/mosquitto.js';
import { provisionDevices } from '../lib/provision.js';
import { formatRamp, runRamp } from '../lib/ramp.js';
import { markdownTable } from '../lib/report.js';
import { formatCodecTable, runCodecBench, sampleCases, setDevicesDir, type CodecResult } from './codecs.js';
import { formatSideBySide, runSideBySide, type SideBySide } from './side-by-side.js';
import { benchAppend, benchForward, formatFigures, type BenchFigure } from './store-forward.js';

export interface BenchOptions {
  quick: boolean;
  devicesDir: string;
  /** Parent of the scratch folder (databases, configs); the OS temp folder by default. */
  scratchDir?: string;
  log: (line: string) => void;
}

export interface Target {
  name: string;
  value: string;
  target: string;
  met: boolean;
}

export interface BenchResult {
  text: string;
  json: Record<string, unknown>;
}

interface WanwuTarget {
  gw: GatewayProcess;
  coap: string;
  mqtt: string;
  status: string;
  /** Where its records arrive, and how to subscribe there. */
  upstream: { url: string; topic: string; username?: string; password?: string };
}

/** A Wanwu child process on `devicesDir` forwarding to `upstreamUrl` (or its local upstream); ports chosen by the OS. */
export async function startWanwu(workDir: string, devicesDir: string, name: string, upstreamUrl?: string): Promise<WanwuTarget> {
  const upstreams = upstreamUrl ? [{ name: 'bench', url: upstreamUrl, clientId: `wanwu-bench-${name}`, window: 1024 }] : undefined;
  const { gw, ports } = await startWanwuChild(workDir, { devicesDir, name, ...(upstreams ? { upstreams } : {}) });
  const mqtt = `mqtt://127.0.0.1:${ports.mqtt}`;
  return {
    gw,
    coap: `coap://127.0.0.1:${ports.coap}`,
    mqtt,
    status: `http://127.0.0.1:${ports.http}/status`,
    upstream: upstreamUrl ? { url: upstreamUrl, topic: 'wanwu/#' } : { url: mqtt, topic: 'wanwu/#', username: 'app', password: 'wanwu-demo' },
  };
}

/** A fleet at a fixed rate of NB-IoT CoAP devices, watching the gateway's upstream. */
function coapFleet(target: WanwuTarget, devicesDir: string, devices: number, rate: number, durationMs: number): FleetOptions {
  return {
    devicesDir,
    coap: target.coap,
    mqtt: target.mqtt,
    upstream: target.upstream,
    fleet: { nbiot: devices, cat1: 0, redcap: 0 },
    durationMs,
    rate,
    intervalMs: { 'nb-iot': 60_000, cat1: 60_000, redcap: 60_000 },
    jitter: 0.1,
    activeWindowMs: 0,
    confirmable: true,
    qos: 1,
    keepaliveS: 60,
    faults: { invalidRate: 0, malformedRate: 0, duplicateRate: 0 },
    seed: 1,
    drainMs: 10_000,
  };
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const started = performance.now();
  const work = mkdtempSync(join(o.scratchDir ?? tmpdir(), 'wanwu-sim-bench-'));
  const targets: Target[] = [];
  const sections: string[] = [];
  const json: Record<string, unknown> = { quick: o.quick };
  try {
    // A copy of the products with enough devices for fleets and sessions (the samples hold a handful).
    const devicesDir = join(work, 'devices');
    cpSync(o.devicesDir, devicesDir, { recursive: true });
    const sessions = o.quick ? 2000 : sessionBudget();
    const products = loadRegistry(devicesDir).products.length;
    provisionDevices(devicesDir, Math.max(400, Math.ceil(sessions / products) + 10));

    o.log('bench: codecs');
    setDevicesDir(devicesDir);
    const registry = loadRegistry(devicesDir);
    const codecs: CodecResult[] = runCodecBench(sampleCases(), (pk) => registry.product(pk)!, o.quick ? 300 : 1000);
    sections.push(`### Codecs: decode + validate\n\n${formatCodecTable(codecs)}`);
    json.codecs = codecs;

    o.log('bench: buffer and forwarding');
    const store: BenchFigure[] = await benchAppend(work, o.quick ? 30_000 : 200_000);
    if (which('mosquitto')) {
      const broker = new Mosquitto(work);
      await broker.start();
      try {
        store.push(...(await benchForward(work, o.quick ? 10_000 : 100_000, broker.url)));
      } finally {
        await broker.stop();
      }
    }
    sections.push(`### Buffer and forwarding\n\n${formatFigures(store)}`);
    json.store = store;

    o.log('bench: side by side');
    const side: SideBySide = await runSideBySide({ quick: o.quick, devicesDir, workDir: work, log: o.log, ...(o.quick ? { warmupMs: 500, durationMs: 2500 } : {}) });
    sections.push(`### Side by side (same load, one after another)\n\n${formatSideBySide(side)}`);
    json.sideBySide = side;
    for (const t of side.targets) targets.push({ name: t.name, value: `${t.value.toFixed(2)}x`, target: t.target, met: t.met });

    // 4. End to end: the saturation of the whole path (ingest, commit, forward, upstream), then half of it.
    let upstream: Mosquitto | null = null;
    if (which('mosquitto')) {
      upstream = new Mosquitto(work);
      await upstream.start();
    } else o.log('bench: mosquitto is not installed; steps 4-5 forward to the gateway\'s local upstream');
    try {
      {
        const w = await startWanwu(work, devicesDir, 'e2e', upstream?.url);
        try {
          o.log('bench: ramp to the end-to-end saturation rate (CoAP, zero loss, ack p99 < 200 ms)');
          const ramp = await runRamp({
            base: { ...coapFleet(w, devicesDir, 300, 1000, o.quick ? 1500 : 5000), drainMs: 5000 },
            startRate: o.quick ? 2000 : 1000,
            stepFactor: o.quick ? 1.6 : 1.4,
            maxRate: 40_000,
            maxLoss: 0,
            maxP99Ms: 200,
            log: o.log,
          });
          sections.push(`### End-to-end saturation (CoAP fleet -> Wanwu -> ${upstream ? 'mosquitto' : 'local upstream'})\n\n${formatRamp(ramp)}`);
          const saturation = ramp.saturation?.achievedPerS ?? 1000;
          const half = Math.round(saturation / 2);
          o.log(`bench: end to end at ${half} msgs/s`);
          const r = await runFleet(coapFleet(w, devicesDir, 300, half, o.quick ? 3000 : 20_000));
          const e = r.endToEnd!;
          targets.push({ name: `end-to-end p99 at ${half} msgs/s (half of ${saturation})`, value: `${e.latencyMs.p99} ms`, target: '< 50 ms', met: e.latencyMs.p99 < 50 });
          targets.push({ name: 'end-to-end loss in that run', value: `${e.lost} of ${e.expected}`, target: '0', met: e.lost === 0 });
          json.ramp = ramp;
          json.endToEnd = r;
        } finally {
          await stopGatewayProcess(w.gw);
        }
      }

      // 5. RSS over a long CoAP run at 5k msgs/s.
      const soakMs = o.quick ? 10_000 : 300_000;
      o.log(`bench: CoAP at 5000 msgs/s for ${soakMs / 1000} s`);
      const w = await startWanwu(work, devicesDir, 'soak', upstream?.url);
      const memory = statusMemory(w.status);
      const samples: number[] = [];
      const sampler = setInterval(() => {
        memory().then((m) => samples.push(m.rssBytes), () => {});
      }, 1000);
      try {
        const r = await runFleet(coapFleet(w, devicesDir, 1000, 5000, soakMs));
        const mib = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;
        const peak = Math.max(...samples);
        // Flat: the last fifth of the run holds no more than 10% above the second fifth (after warm-up).
        const fifth = Math.max(1, Math.floor(samples.length / 5));
        const early = avg(samples.slice(fifth, 2 * fifth));
        const late = avg(samples.slice(-fifth));
        const growth = early > 0 ? late / early - 1 : 0;
        targets.push({ name: `gateway RSS, CoAP 5k msgs/s for ${soakMs / 1000} s`, value: `peak ${mib(peak)} MiB`, target: '< 500 MiB', met: peak < 500 * 2 ** 20 });
        targets.push({ name: 'RSS growth, last fifth vs second fifth', value: `${(growth * 100).toFixed(1)}%`, target: '< 10% (flat)', met: growth < 0.1 });
        targets.push({ name: 'achieved rate in that run', value: `${r.throughput.meanPerS} msgs/s`, target: '>= 4,750', met: r.throughput.meanPerS >= 4750 });
        targets.push({ name: 'loss in that run', value: `${r.endToEnd!.lost} of ${r.endToEnd!.expected}`, target: '0', met: r.endToEnd!.lost === 0 });
        json.soak = { rssMiB: samples.map(mib), result: r };
      } finally {
        clearInterval(sampler);
        await stopGatewayProcess(w.gw);
      }
    } finally {
      await upstream?.stop();
    }

    // 6. Idle sessions.
    o.log(`bench: ${sessions} idle MQTT sessions`);
    {
      const w = await startWanwu(work, devicesDir, 'sessions');
      try {
        const devices = loadRegistry(devicesDir).products.flatMap((p) => [...p.devices.values()]);
        const r = await holdConnections({
          mqtt: w.mqtt,
          devices,
          count: sessions,
          localAddresses: loopbackAddresses(8),
          connectRate: 2000,
          holdMs: o.quick ? 2000 : 10_000,
          keepaliveS: 300,
          gatewayMemory: statusMemory(w.status),
        });
        const perSession = r.gateway ? r.gateway.rssPerSessionBytes : 0;
        targets.push({ name: `idle MQTT sessions held (asked ${sessions}; open-files limit ${r.openFileLimit})`, value: String(r.heldAtEnd), target: '100,000', met: r.heldAtEnd >= 100_000 });
        targets.push({ name: 'gateway RSS per idle session', value: `${(perSession / 1024).toFixed(1)} KiB`, target: '< 10 KB', met: perSession < 10_000 });
        json.sessions = r;
      } finally {
        await stopGatewayProcess(w.gw);
      }
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
  const seconds = Math.round((performance.now() - started) / 1000);
  const summary = markdownTable(
    ['target', 'measured', 'goal', 'met'],
    targets.map((t) => [t.name, t.value, t.target, t.met ? 'yes' : '**no**']),
  );
  json.targets = targets;
  json.seconds = seconds;
  return { text: `${sections.join('\n\n')}\n\n### Targets\n\n${summary}\n\nbench took ${seconds} s`, json };
}

function avg(xs: readonly number[]): number {
  return xs.length === 0 ? 0 : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/**
 * Sessions the full bench asks for: 100k is the goal, but both this process and the gateway need one
 * file descriptor per session, and neither may exceed its open-files limit (`ulimit -n`).
 */
function sessionBudget(): number {
  const soft = Number(openFileLimit().split('/')[0]);
  return Number.isFinite(soft) ? Math.min(100_000, Math.max(1000, soft - 1000)) : 10_000;
}
