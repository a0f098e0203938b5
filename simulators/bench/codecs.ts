// Codec micro-benchmark: decode + validate per second on one core, for each codec, next to the bare
// library doing the least the same job needs, in the same run. Run: `npm run bench:codecs`
// (`-- --seconds 2` for a longer measurement, `-- --json` for machine-readable output).
// The simulator's `wanwu-sim bench` will gather this with the end-to-end benchmarks.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import protobuf from 'protobufjs';
import { loadRegistry, type Product } from '../../src/registry/index.js';
import { decodeUplink } from '../../src/thing-model/index.js';
import type { UplinkRoute } from '../../src/types.js';

export interface CodecCase {
  codec: string;
  product: string;
  route: UplinkRoute;
  payload: Buffer;
  /** The bare library doing the parsing alone (no mapping, no validation), for the ratio. */
  bare?: { name: string; run: (payload: Buffer) => unknown };
  /** Target: an absolute rate (msgs/s), or a minimum ratio to the bare baseline. */
  target: { rate?: number; ratio?: number };
}

export interface CodecResult {
  codec: string;
  product: string;
  bytes: number;
  ratePerS: number;
  bare?: string;
  bareRatePerS?: number;
  ratio?: number;
  target: string;
  met: boolean;
}

/** Calls fn as often as it can for `ms` (after a warm-up), returns calls per second. */
export function measure(fn: () => unknown, ms: number): number {
  const warmUntil = performance.now() + Math.min(200, ms / 2);
  while (performance.now() < warmUntil) for (let i = 0; i < 100; i++) fn();
  let calls = 0;
  const start = performance.now();
  let now = start;
  while (now - start < ms) {
    for (let i = 0; i < 1000; i++) fn();
    calls += 1000;
    now = performance.now();
  }
  return Math.round((calls * 1000) / (now - start));
}

export function runCodecBench(cases: readonly CodecCase[], products: (pk: string) => Product, ms: number): CodecResult[] {
  return cases.map((c) => {
    const product = products(c.product);
    const check = decodeUplink(product, c.route, c.payload);
    if (!check.ok) throw new Error(`bench payload for ${c.product} does not decode: ${check.error.message}`);
    const ratePerS = measure(() => decodeUplink(product, c.route, c.payload), ms);
    const result: CodecResult = { codec: c.codec, product: c.product, bytes: c.payload.length, ratePerS, target: '', met: true };
    if (c.bare) {
      result.bare = c.bare.name;
      result.bareRatePerS = measure(() => c.bare!.run(c.payload), ms);
      result.ratio = Math.round((ratePerS / result.bareRatePerS) * 100) / 100;
    }
    const parts: string[] = [];
    if (c.target.rate !== undefined) {
      parts.push(`>= ${c.target.rate.toLocaleString('en')}/s`);
      result.met &&= ratePerS >= c.target.rate;
    }
    if (c.target.ratio !== undefined) {
      parts.push(`>= ${c.target.ratio}x bare`);
      result.met &&= (result.ratio ?? 0) >= c.target.ratio;
    }
    result.target = parts.join(', ');
    return result;
  });
}

export function formatCodecTable(results: readonly CodecResult[]): string {
  const rows = [['codec', 'product', 'bytes', 'decode+validate/s', 'bare baseline', 'bare/s', 'ratio', 'target', 'met']];
  for (const r of results) {
    rows.push([
      r.codec, r.product, String(r.bytes), r.ratePerS.toLocaleString('en'), r.bare ?? '-',
      r.bareRatePerS?.toLocaleString('en') ?? '-', r.ratio === undefined ? '-' : `${r.ratio}x`, r.target, r.met ? 'yes' : 'NO',
    ]);
  }
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((row) => row[i]!.length)));
  const line = (row: string[]) => `| ${row.map((cell, i) => cell.padEnd(widths[i]!)).join(' | ')} |`;
  return [line(rows[0]!), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.slice(1).map(line)].join('\n');
}

/** The cases for the sample products in devices/. */
export function sampleCases(): CodecCase[] {
  const tracker = Buffer.from(
    JSON.stringify({ id: '1001', version: '1.0', method: 'thing.event.property.post', params: { longitude: 116.397128, latitude: 39.916527, speed: 35.5, batteryLevel: 78, charging: 0, workMode: 0 } }),
  );
  return [
    {
      codec: 'binary',
      product: 'WaterMeterNB',
      route: { type: 'up-raw' },
      payload: Buffer.from('010000303904d20e10000929ffa6', 'hex'),
      // Hand-written reads of the same 14-byte layout: what a decoder costs at the least.
      bare: {
        name: 'hand-written Buffer reads',
        run: (b) => ({ t: b.readUInt8(0), f: b.readUInt32BE(1) / 1000, i: b.readUInt16BE(5) / 1000, v: b.readUInt16BE(7) / 1000, s: b.readUInt8(9), c: b.readInt16BE(10) / 100, r: b.readInt16BE(12) }),
      },
      target: { rate: 500_000 },
    },
    {
      codec: 'alink-json',
      product: 'TrackerCat1',
      route: { type: 'property-post' },
      payload: tracker,
      bare: { name: 'JSON.parse', run: (b) => JSON.parse(b.toString('utf8')) },
      target: { ratio: 0.5 },
    },
    {
      codec: 'protobuf',
      product: 'VehicleRedCap',
      route: { type: 'up-raw' },
      // devices/README.md, VehicleRedCap telemetry (type byte 1, then wanwu.vehicle.Telemetry).
      payload: Buffer.from(VEHICLE_HEX, 'hex'),
      bare: {
        name: 'protobufjs decode + toObject',
        run: (b) => {
          const T = vehicleTelemetry();
          return T.toObject(T.decode(b.subarray(1)), { enums: Number, longs: Number, bytes: String });
        },
      },
      target: { ratio: 0.5 },
    },
    {
      codec: 'script',
      product: 'SoilNB',
      route: { type: 'up-raw' },
      // devices/README.md, SoilNB report.
      payload: Buffer.from('0101a9089805140e42ff9c00', 'hex'),
      // The same codec.js called directly in the host: what the sandbox costs on top.
      bare: { name: 'decodeUplink called unsandboxed', run: (b) => soilDecodeUplink()({ bytes: Array.from(b), fPort: 1, recvTime: new Date(), variables: {} }) },
      target: { rate: 100_000 },
    },
  ];
}

const VEHICLE_HEX =
  '010d00009142121c09a379008bfc3a3f401148c5ff1d515e5e401d00004841250000af421a1000006643000068430000644300006743200328013d0000994242130a0c636f6f6c616e745f74656d70150000b14248cec2f10550bd01';

let telemetryType: protobuf.Type | null = null;
function vehicleTelemetry(): protobuf.Type {
  telemetryType ??= new protobuf.Root().loadSync(join(devicesDir, 'VehicleRedCap', 'vehicle.proto'), { keepCase: true }).lookupType('wanwu.vehicle.Telemetry');
  return telemetryType;
}

type DecodeUplinkFn = (input: { bytes: number[]; fPort: number; recvTime: Date; variables: object }) => unknown;
let soilDecode: DecodeUplinkFn | null = null;
function soilDecodeUplink(): DecodeUplinkFn {
  soilDecode ??= new Function(`${readFileSync(join(devicesDir, 'SoilNB', 'codec.js'), 'utf8')}\nreturn decodeUplink;`)() as DecodeUplinkFn;
  return soilDecode;
}

let devicesDir = './devices';
/** Where sampleCases() finds the sample products' assets (.proto, codec.js). */
export function setDevicesDir(dir: string): void {
  devicesDir = dir;
}

async function main(argv: string[]): Promise<void> {
  const seconds = Number(argv[argv.indexOf('--seconds') + 1]) || 1;
  const json = argv.includes('--json');
  const devices = argv.includes('--devices') ? argv[argv.indexOf('--devices') + 1]! : './devices';
  setDevicesDir(devices);
  const registry = loadRegistry(devices);
  const results = runCodecBench(sampleCases(), (pk) => {
    const p = registry.product(pk);
    if (!p) throw new Error(`no sample product ${pk}`);
    return p;
  }, seconds * 1000);
  process.stdout.write(json ? `${JSON.stringify(results, null, 2)}\n` : `${formatCodecTable(results)}\n`);
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  await main(process.argv.slice(2));
}
