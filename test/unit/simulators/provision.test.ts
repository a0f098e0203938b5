// `wanwu-sim provision` (simulators/lib/provision.ts) on a copy of the sample products.
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { loadRegistry, type Registry } from '../../../src/registry/index.js';
import { seededRandom } from '../../../simulators/lib/payload.js';
import { provisionDevices, withLuhn } from '../../../simulators/lib/provision.js';

const DEVICES = fileURLToPath(new URL('../../../devices', import.meta.url));
const dirs: string[] = [];

function copyOfDevices(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'wanwu-sim-provision-'));
  dirs.push(dir);
  const copy = path.join(dir, 'devices');
  cpSync(DEVICES, copy, { recursive: true });
  return copy;
}

afterEach(() => {
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function sizes(registry: Registry): Record<string, number> {
  return Object.fromEntries(registry.products.map((p) => [p.productKey, p.devices.size]));
}

function luhnOk(digits: string): boolean {
  return withLuhn(digits.slice(0, -1)) === digits;
}

describe('provisionDevices', () => {
  it('adds 50 valid, unique devices to every product and keeps the existing ones first', () => {
    const dir = copyOfDevices();
    const before = loadRegistry(dir);
    const original = JSON.parse(readFileSync(path.join(dir, 'TrackerCat1', 'devices.json'), 'utf8')) as unknown[];
    const result = provisionDevices(dir, 50, { random: seededRandom(3) });
    expect(result).toEqual(before.products.map((p) => ({ productKey: p.productKey, added: 50, total: p.devices.size + 50 })));

    const after = loadRegistry(dir); // throws on any schema problem, a duplicate name or a reused IMEI
    expect(sizes(after)).toEqual(Object.fromEntries(Object.entries(sizes(before)).map(([pk, n]) => [pk, n + 50])));
    const secrets = new Set<string>();
    for (const p of after.products) {
      const added = [...p.devices.values()].slice(-50);
      const short = p.productKey.toLowerCase();
      expect(added.map((d) => d.deviceName)).toEqual(Array.from({ length: 50 }, (_, i) => `sim-${short}-${String(i + 1).padStart(6, '0')}`));
      for (const d of added) {
        expect(d.deviceName.length).toBeLessThanOrEqual(64);
        expect(d.deviceSecret).toMatch(/^[0-9a-f]{32}$/);
        secrets.add(d.deviceSecret);
        expect(d.imei).toMatch(/^\d{15}$/);
        expect(luhnOk(d.imei!)).toBe(true);
        expect(d.iccid).toMatch(/^8986\d{16}$/);
        expect(luhnOk(d.iccid!)).toBe(true);
      }
      // The product's TAC (first 8 IMEI digits) is kept.
      const tac = [...before.product(p.productKey)!.devices.values()][0]!.imei!.slice(0, 8);
      expect(added.every((d) => d.imei!.startsWith(tac))).toBe(true);
    }
    expect(secrets.size).toBe(50 * after.products.length);
    // Existing entries are kept as they were, in their order.
    const rewritten = JSON.parse(readFileSync(path.join(dir, 'TrackerCat1', 'devices.json'), 'utf8')) as unknown[];
    expect(rewritten.slice(0, original.length)).toEqual(original);
  });

  it('running twice adds twice, continuing the numbering', () => {
    const dir = copyOfDevices();
    const before = sizes(loadRegistry(dir));
    provisionDevices(dir, 50, { random: seededRandom(1) });
    const second = provisionDevices(dir, 50, { random: seededRandom(1) }); // even the same random stream makes no duplicates
    const after = loadRegistry(dir);
    for (const r of second) expect(r).toEqual({ productKey: r.productKey, added: 50, total: before[r.productKey]! + 100 });
    expect(sizes(after)).toEqual(Object.fromEntries(Object.entries(before).map(([pk, n]) => [pk, n + 100])));
    const names = [...after.product('WaterMeterNB')!.devices.keys()];
    expect(names.at(-1)).toBe('sim-watermeternb-000100');
    expect(new Set(names).size).toBe(names.length);
  });

  it('gives a product without devices.json one', () => {
    const dir = copyOfDevices();
    rmSync(path.join(dir, 'SoilNB', 'devices.json'));
    expect(loadRegistry(dir).product('SoilNB')!.devices.size).toBe(0);
    const result = provisionDevices(dir, 50);
    expect(result.find((r) => r.productKey === 'SoilNB')).toEqual({ productKey: 'SoilNB', added: 50, total: 50 });
    const soil = loadRegistry(dir).product('SoilNB')!;
    expect(soil.devices.size).toBe(50);
    // Without an existing device to copy from: a plausible Chinese TAC and ICCID all the same.
    for (const d of soil.devices.values()) {
      expect(d.imei).toMatch(/^86\d{13}$/);
      expect(d.iccid).toMatch(/^898600\d{14}$/);
      expect(d.deviceSecret).toMatch(/^[0-9a-f]{32}$/); // crypto randomBytes
    }
  });

  it('takes a name prefix and leaves no temporary file behind', () => {
    const dir = copyOfDevices();
    provisionDevices(dir, 3, { prefix: 'load' });
    expect([...loadRegistry(dir).product('AlarmNB')!.devices.keys()].slice(-3)).toEqual(['load-alarmnb-000001', 'load-alarmnb-000002', 'load-alarmnb-000003']);
    for (const folder of readdirSync(dir, { withFileTypes: true }).filter((d) => d.isDirectory())) {
      expect(readdirSync(path.join(dir, folder.name)).filter((f) => f.endsWith('.tmp'))).toEqual([]);
    }
  });

  it('refuses a count that is not a non-negative integer', () => {
    const dir = copyOfDevices();
    expect(() => provisionDevices(dir, -1)).toThrow(RangeError);
    expect(() => provisionDevices(dir, 1.5)).toThrow(RangeError);
  });
});
