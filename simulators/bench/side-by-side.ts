// `wanwu-sim bench`, side by side: the same load, one server after another on the same machine.
//
//   1. bare aedes           QoS 1 PUBLISH -> PUBACK, nothing else       (servers/bare-aedes.ts)
//   2. Wanwu MQTT           login check, decode, validate, durable commit, then PUBACK
//   3. mosquitto            when installed, QoS 1 ingest as a C reference
//   4. bare node-coap       CON POST -> 2.04, nothing else             (servers/bare-coap.ts)
//   5. Wanwu CoAP           token check, decode, validate, durable commit, then 2.04
//
// Each server is a child process of its own, so its peak RSS (VmHWM) is its own and it never shares
// an event loop with the load generator (simulators/lib/load.ts), which runs in this process. The
// MQTT rows get identical CONNECT and PUBLISH bytes (Wanwu's signed device logins and Alink JSON
// property posts); the CoAP rows the same CON POSTs (WaterMeterNB binary frames on up_raw), which
// for Wanwu also carry each socket's token and sequence number (options 2088 and 2089, 31 bytes more),
// as its default coap.auth.mode "required" asks; each socket does its POST /auth before the run.
//
//   node dist/simulators/bench/side-by-side.js --quick      (about 40 s; without --quick about 3 min)

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { signMqttLogin } from '../../src/registry/sign.js';
import { startWanwuChild } from '../lib/gateway-process.js';
import { coapLoad, mqttLoad, type LoadResult } from '../lib/load.js';
import { freePort, which } from '../lib/mosquitto.js';

export interface SideBySideOptions {
  /** About 5 s per server instead of about 30 s. */
  quick: boolean;
  /** Product folders (the repository's devices/): the demo devices the load logs in as. */
  devicesDir: string;
  /** Scratch folder for configs and databases; a subfolder is made and removed. */
  workDir: string;
  log?: (line: string) => void;
  /** Overrides of the measured period and warm-up per server, in ms (tests use short ones). */
  durationMs?: number;
  warmupMs?: number;
}

export interface SideBySideRow {
  name: string;
  protocol: 'mqtt' | 'coap';
  /** Acknowledged messages per second over the measured period. */
  ratePerS: number;
  p50Ms: number;
  p99Ms: number;
  /** The server process's peak resident set (VmHWM), or null where /proc is not available. */
  peakRssMiB: number | null;
  /** Failed requests by reason (see LoadResult.errors), plus Wanwu's own rejections ('rejected:<code>'). */
  errors: Record<string, number>;
  sent: number;
  acked: number;
  /** Why the row was not run (e.g. mosquitto not installed). */
  skipped?: string;
  /** Wanwu rows: what the gateway reports in /status after the run. */
  gateway?: { accepted: number; records: number; rejected: number; deadLetters: number; commits: number };
}

export interface SideBySide {
  rows: SideBySideRow[];
  /** Wanwu's rate over the bare server's in the same run (0 when a row has no rate). */
  ratios: { mqtt: number; coap: number };
  targets: Array<{ name: string; value: number; target: string; met: boolean }>;
  /** The load every row of a protocol got. */
  load: {
    warmupMs: number;
    durationMs: number;
    mqtt: { connections: number; window: number; payloadBytes: number[] };
    coap: { sockets: number; window: number; payloadBytes: number };
  };
  durationS: number;
}

/**
 * Load shapes. MQTT: one connection per alink-json demo device (a device has one session; devices/
 * holds six), each with 128 QoS 1 publishes in flight, which keeps bare aedes busy (it reads the
 * next chunk of a connection only once every packet of the last one is handled). CoAP: 16 source
 * ports x 8 requests in flight. More in flight does not raise node-coap's rate (it saturates at
 * about 64), and above about 200 outstanding datagrams the server's default 208 KiB UDP receive
 * buffer overflows on loopback and requests are lost (timeouts), which would measure the kernel.
 */
const MQTT_WINDOW = 128;
const MQTT_MAX_CONNECTIONS = 20;
const COAP_SOCKETS = 16;
const COAP_WINDOW = 8;

/** Alink JSON property posts that decode to one valid record each (devices/README.md). */
const MQTT_PRODUCTS: Record<string, object> = {
  TrackerCat1: {
    id: '1001',
    version: '1.0',
    method: 'thing.event.property.post',
    params: { longitude: 116.397128, latitude: 39.916527, speed: 35.5, batteryLevel: 78, charging: false, workMode: 0 },
  },
  SensorRedCap: {
    id: '2001',
    version: '1.0',
    method: 'thing.event.property.post',
    params: { temperature: 23.5, humidity: 45.2, vibration: 1.25, pressure: 101.325, status: 0 },
  },
};

/** WaterMeterNB's documented frame (devices/README.md), on thing/model/up_raw. */
const COAP_PRODUCT = 'WaterMeterNB';
const COAP_FRAME = Buffer.from('010000303904d20e10000929ffa6', 'hex');

/** Compiled server programs: next to this file in dist/, or in dist/ when run from the TS source. */
const SERVERS_DIR = (() => {
  const here = fileURLToPath(new URL('.', import.meta.url));
  return here.includes(join('dist', 'simulators')) ? join(here, 'servers') : join(here, '..', '..', 'dist', 'simulators', 'bench', 'servers');
})();

interface Device {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
}

function devicesOf(devicesDir: string, productKey: string): Device[] {
  const file = join(devicesDir, productKey, 'devices.json');
  if (!existsSync(file)) return [];
  const list = JSON.parse(readFileSync(file, 'utf8')) as Array<{ deviceName: string; deviceSecret: string }>;
  return list.map((d) => ({ productKey, deviceName: d.deviceName, deviceSecret: d.deviceSecret }));
}

/** Peak resident set of a live process from /proc/<pid>/status (Linux), in MiB. */
export function peakRssMiB(pid: number | undefined): number | null {
  if (pid === undefined) return null;
  try {
    const m = /^VmHWM:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) / 1024 : null;
  } catch {
    return null;
  }
}

/** A server under test: its pid and port, and a stop that waits for the exit. */
export interface ServerUnderTest {
  pid: number | undefined;
  port: number;
  stop(): Promise<void>;
}

/** SIGTERM and wait; SIGKILL after `graceMs`. Resolves once the process has exited. */
async function terminate(proc: ChildProcess, graceMs = 10_000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const timer = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

/** Starts servers/<name>.js (built, in dist/) and reads its {"ready":true,"port":N} line. */
export async function startBareServer(name: 'bare-aedes' | 'bare-coap'): Promise<ServerUnderTest> {
  const file = join(SERVERS_DIR, `${name}.js`);
  if (!existsSync(file)) throw new Error(`${file} is missing: build first (npx tsc -p .)`);
  const proc = spawn(process.execPath, [file], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const port = await new Promise<number>((resolve, reject) => {
    let out = '';
    const onData = (d: Buffer) => {
      out += d.toString();
      const nl = out.indexOf('\n');
      if (nl < 0) return;
      proc.stdout!.off('data', onData);
      proc.off('exit', onExit);
      try {
        resolve((JSON.parse(out.slice(0, nl)) as { port: number }).port);
      } catch (err) {
        reject(new Error(`${name} printed ${JSON.stringify(out.slice(0, nl))}`, { cause: err }));
      }
    };
    const onExit = (code: number | null) => reject(new Error(`${name} exited with ${code} before it was ready: ${stderr}`));
    proc.stdout!.on('data', onData);
    proc.once('exit', onExit);
  }).catch(async (err: unknown) => {
    await terminate(proc);
    throw err;
  });
  proc.stdout!.resume();
  return { pid: proc.pid, port, stop: () => terminate(proc) };
}

/**
 * mosquitto on a free loopback port. Started here rather than with lib/mosquitto.ts's Mosquitto
 * because the bench needs the broker's pid (for VmHWM) and a graceful SIGTERM stop; the settings are
 * the same (anonymous, no persistence) with logging limited to errors and warnings.
 */
async function startMosquitto(bin: string, dir: string): Promise<ServerUnderTest> {
  const port = await freePort();
  const conf = join(dir, `mosquitto-${port}.conf`);
  const lines = [`listener ${port} 127.0.0.1`, 'allow_anonymous true', 'persistence false', 'log_dest stderr', 'log_type error', 'log_type warning', ''];
  if (process.getuid?.() === 0) lines.unshift('user root');
  writeFileSync(conf, lines.join('\n'));
  const proc = spawn(bin, ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  proc.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
  const until = Date.now() + 10_000;
  for (;;) {
    const up = await new Promise<boolean>((resolve) => {
      const c = createConnection({ port, host: '127.0.0.1' });
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (up) break;
    if (proc.exitCode !== null || Date.now() > until) {
      await terminate(proc);
      throw new Error(`mosquitto did not start on ${port}: ${stderr}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return { pid: proc.pid, port, stop: () => terminate(proc) };
}

/** The gateway as a child process (bin/wanwu.js on dist/), durable storage, default local upstream. */
async function startWanwu(dir: string, devicesDir: string): Promise<ServerUnderTest & { ports: { mqtt: number; coap: number; http: number } }> {
  mkdirSync(dir, { recursive: true });
  // The per-device publish rate (100/s by default) is a policy, not the path's cost: off here, where a
  // handful of connections carry the whole load. Every other limit stays at its default.
  const w = await startWanwuChild(dir, { devicesDir, mqtt: { limits: { publishRate: { perSecond: 0 } } } });
  return { pid: w.gw.proc.pid, port: 0, ports: w.ports, stop: w.stop };
}

async function gatewayStatus(http: number): Promise<SideBySideRow['gateway'] & { rejectedByCode: Record<string, number> }> {
  const s = (await (await fetch(`http://127.0.0.1:${http}/status`)).json()) as {
    ingest: { accepted: { total: number }; records: { total: number }; rejected: { total: number }; rejectedByCode: Record<string, number> };
    buffer: { deadLetters: number; commits: number };
  };
  return {
    accepted: s.ingest.accepted.total,
    records: s.ingest.records.total,
    rejected: s.ingest.rejected.total,
    rejectedByCode: s.ingest.rejectedByCode ?? {},
    deadLetters: s.buffer.deadLetters,
    commits: s.buffer.commits,
  };
}

function row(name: string, protocol: 'mqtt' | 'coap', r: LoadResult, rss: number | null): SideBySideRow {
  return { name, protocol, ratePerS: r.ratePerS, p50Ms: r.latency.p50, p99Ms: r.latency.p99, peakRssMiB: rss, errors: { ...r.errors }, sent: r.sent, acked: r.acked };
}

function skippedRow(name: string, protocol: 'mqtt' | 'coap', reason: string): SideBySideRow {
  return { name, protocol, ratePerS: 0, p50Ms: 0, p99Ms: 0, peakRssMiB: null, errors: {}, sent: 0, acked: 0, skipped: reason };
}

export async function runSideBySide(opts: SideBySideOptions): Promise<SideBySide> {
  const started = Date.now();
  const log = opts.log ?? (() => {});
  const warmupMs = opts.warmupMs ?? (opts.quick ? 1000 : 5000);
  const durationMs = opts.durationMs ?? (opts.quick ? 4000 : 25_000);

  // MQTT: one connection per alink-json demo device, each with its own signed login.
  const mqttDevices = Object.keys(MQTT_PRODUCTS)
    .flatMap((pk) => devicesOf(opts.devicesDir, pk))
    .slice(0, MQTT_MAX_CONNECTIONS);
  if (mqttDevices.length === 0) throw new Error(`no ${Object.keys(MQTT_PRODUCTS).join(' or ')} devices in ${opts.devicesDir}`);
  const coapDevices = devicesOf(opts.devicesDir, COAP_PRODUCT);
  if (coapDevices.length === 0) throw new Error(`no ${COAP_PRODUCT} devices in ${opts.devicesDir}`);
  // Signed once: every MQTT server gets byte-identical CONNECTs (the bare brokers ignore the login).
  const logins = mqttDevices.map((d) => ({ ...signMqttLogin(d), topic: `/sys/${d.productKey}/${d.deviceName}/thing/event/property/post` }));
  const payloads = mqttDevices.map((d) => Buffer.from(JSON.stringify(MQTT_PRODUCTS[d.productKey])));
  const mqttShape = { connections: mqttDevices.length, window: MQTT_WINDOW };
  // CoAP is connectionless: the lanes share the meters (lane i speaks as meter i mod n).
  const coapShape = { sockets: COAP_SOCKETS, window: COAP_WINDOW };
  const runMqtt = (port: number) =>
    mqttLoad({ host: '127.0.0.1', port, ...mqttShape, warmupMs, durationMs, login: (i) => logins[i]!, payload: (i) => payloads[i]! });
  const runCoap = (port: number, authenticate: boolean) =>
    coapLoad({
      host: '127.0.0.1',
      port,
      ...coapShape,
      warmupMs,
      durationMs,
      path: (i) => {
        const d = coapDevices[i % coapDevices.length]!;
        return `/topic/sys/${d.productKey}/${d.deviceName}/thing/model/up_raw`;
      },
      payload: () => COAP_FRAME,
      // Sockets share the meters, so each needs a client id of its own for its token.
      ...(authenticate ? { auth: (i: number) => ({ ...coapDevices[i % coapDevices.length]!, clientId: `${coapDevices[i % coapDevices.length]!.deviceName}.s${i}` }) } : {}),
    });

  const work = mkdtempSync(join(opts.workDir, 'wanwu-side-by-side-'));
  const rows: SideBySideRow[] = [];
  /** Runs one server: start, load, read VmHWM, stop (always). */
  const measure = async (name: string, protocol: 'mqtt' | 'coap', start: () => Promise<ServerUnderTest>, load: (s: ServerUnderTest) => Promise<SideBySideRow>) => {
    log(`${name}: starting`);
    const server = await start();
    try {
      const r = await load(server);
      rows.push(r);
      log(`${name}: ${Math.round(r.ratePerS).toLocaleString('en')} msgs/s, p50 ${r.p50Ms} ms, p99 ${r.p99Ms} ms, peak RSS ${r.peakRssMiB?.toFixed(0) ?? '-'} MiB`);
    } finally {
      await server.stop();
    }
  };
  /** A Wanwu row: the load's errors plus what the gateway refused (it PUBACKs refused MQTT posts). */
  const wanwuRow = async (name: string, protocol: 'mqtt' | 'coap', r: LoadResult, s: ServerUnderTest & { ports: { http: number } }) => {
    const rss = peakRssMiB(s.pid);
    const { rejectedByCode, ...gateway } = await gatewayStatus(s.ports.http);
    const out = row(name, protocol, r, rss);
    out.gateway = gateway;
    for (const [code, n] of Object.entries(rejectedByCode)) if (n > 0) out.errors[`rejected:${code}`] = n;
    return out;
  };

  try {
    await measure('bare aedes', 'mqtt', () => startBareServer('bare-aedes'), async (s) => {
      const r = await runMqtt(s.port);
      return row('bare aedes', 'mqtt', r, peakRssMiB(s.pid));
    });
    await measure('Wanwu MQTT', 'mqtt', () => startWanwu(join(work, 'mqtt'), opts.devicesDir), async (s) => {
      const w = s as ServerUnderTest & { ports: { mqtt: number; http: number } };
      return wanwuRow('Wanwu MQTT', 'mqtt', await runMqtt(w.ports.mqtt), w);
    });
    const mosquitto = which('mosquitto');
    if (mosquitto) {
      await measure('mosquitto', 'mqtt', () => startMosquitto(mosquitto, work), async (s) => row('mosquitto', 'mqtt', await runMqtt(s.port), peakRssMiB(s.pid)));
    } else {
      rows.push(skippedRow('mosquitto', 'mqtt', 'mosquitto is not installed (apt-get install -y mosquitto)'));
      log('mosquitto: skipped (not installed)');
    }
    await measure('bare node-coap', 'coap', () => startBareServer('bare-coap'), async (s) => row('bare node-coap', 'coap', await runCoap(s.port, false), peakRssMiB(s.pid)));
    await measure('Wanwu CoAP', 'coap', () => startWanwu(join(work, 'coap'), opts.devicesDir), async (s) => {
      const w = s as ServerUnderTest & { ports: { coap: number; http: number } };
      return wanwuRow('Wanwu CoAP', 'coap', await runCoap(w.ports.coap, true), w);
    });
  } finally {
    rmSync(work, { recursive: true, force: true });
  }

  const rate = (name: string) => rows.find((r) => r.name === name)?.ratePerS ?? 0;
  const ratio = (a: number, b: number) => (b > 0 ? a / b : 0);
  const ratios = { mqtt: ratio(rate('Wanwu MQTT'), rate('bare aedes')), coap: ratio(rate('Wanwu CoAP'), rate('bare node-coap')) };
  return {
    rows,
    ratios,
    targets: [
      { name: 'MQTT QoS 1 uplink, Wanwu / bare aedes', value: ratios.mqtt, target: '>= 0.8x', met: ratios.mqtt >= 0.8 },
      { name: 'CoAP CON uplink, Wanwu / bare node-coap', value: ratios.coap, target: '>= 1.0x', met: ratios.coap >= 1.0 },
    ],
    load: {
      warmupMs,
      durationMs,
      mqtt: { ...mqttShape, payloadBytes: [...new Set(payloads.map((p) => p.length))] },
      coap: { ...coapShape, payloadBytes: COAP_FRAME.length },
    },
    durationS: (Date.now() - started) / 1000,
  };
}

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]) => `| ${r.map((c, i) => c.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(rows[0]!), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

/** The comparison as two markdown tables (servers, then the Wanwu/bare ratios and targets). */
export function formatSideBySide(s: SideBySide): string {
  const n = (v: number) => Math.round(v).toLocaleString('en');
  const ms = (v: number) => v.toFixed(2);
  const errors = (e: Record<string, number>) =>
    Object.entries(e)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || '0';
  const servers = [['server', 'protocol', 'msgs/s', 'p50 ms', 'p99 ms', 'peak RSS MiB', 'errors']];
  for (const r of s.rows) {
    if (r.skipped) servers.push([r.name, r.protocol, '-', '-', '-', '-', `skipped: ${r.skipped}`]);
    else servers.push([r.name, r.protocol, n(r.ratePerS), ms(r.p50Ms), ms(r.p99Ms), r.peakRssMiB === null ? '-' : n(r.peakRssMiB), errors(r.errors)]);
  }
  const ratios = [['ratio', 'value', 'target', 'met']];
  for (const t of s.targets) ratios.push([t.name, `${t.value.toFixed(2)}x`, t.target, t.met ? 'yes' : '**no**']);
  const { mqtt, coap } = s.load;
  const settings =
    `Load: MQTT ${mqtt.connections} connections x ${mqtt.window} QoS 1 publishes in flight (${mqtt.payloadBytes.join('/')}-byte Alink JSON); ` +
    `CoAP ${coap.sockets} sockets x ${coap.window} CON POSTs in flight (${coap.payloadBytes}-byte frame; to Wanwu with token and sequence number); ` +
    `${s.load.warmupMs / 1000} s warm-up + ${s.load.durationMs / 1000} s measured per server; run took ${s.durationS.toFixed(0)} s.`;
  return `${table(servers)}\n\n${table(ratios)}\n\n${settings}\n`;
}

async function main(argv: string[]): Promise<void> {
  const arg = (name: string) => (argv.includes(name) ? argv[argv.indexOf(name) + 1] : undefined);
  const devicesDir = arg('--devices') ?? join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..', 'devices');
  const result = await runSideBySide({
    quick: argv.includes('--quick'),
    devicesDir,
    workDir: arg('--dir') ?? tmpdir(),
    log: (line) => process.stderr.write(`${line}\n`),
  });
  process.stdout.write(argv.includes('--json') ? `${JSON.stringify(result, null, 2)}\n` : formatSideBySide(result));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
