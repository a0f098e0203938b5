import { cpSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { modelsCheck } from '../../../src/commands/models.js';
import { loadRegistry } from '../../../src/registry/index.js';
import { DEVICES_DIR } from '../../helpers/gateway.js';
import { tempDir } from '../../helpers/index.js';

describe('wanwu models check', () => {
  it('reports every sample product and exits 0', () => {
    const r = modelsCheck(DEVICES_DIR, { json: true });
    expect(r.exitCode).toBe(0);
    const report = JSON.parse(r.output);
    const registry = loadRegistry(DEVICES_DIR);
    expect(report.products.map((p: { productKey: string }) => p.productKey)).toEqual(registry.products.map((p) => p.productKey));
    expect(report.products.find((p: { productKey: string }) => p.productKey === 'WaterMeterNB')).toEqual({
      productKey: 'WaterMeterNB', name: expect.any(String), rat: 'nb-iot', codec: 'binary', model: { properties: 6, events: 0, services: 1 }, devices: 3,
    });
    expect(report.errors).toEqual([]);
  });

  it('lists every broken product (not only the first), keeps the good ones, exits 1', () => {
    const dir = tempDir();
    try {
      cpSync(join(DEVICES_DIR, 'WaterMeterNB'), join(dir.path, 'WaterMeterNB'), { recursive: true });
      for (const [name, product] of [['BadA', { productKey: 'BadA', name: 'a', rat: 'lora', codec: { type: 'alink-json' } }], ['BadB', { productKey: 'Other', name: 'b', rat: 'cat1', codec: { type: 'alink-json' } }]] as const) {
        mkdirSync(join(dir.path, name));
        writeFileSync(join(dir.path, name, 'product.json'), JSON.stringify(product));
      }
      const r = modelsCheck(dir.path);
      expect(r.exitCode).toBe(1);
      expect(r.output).toMatch(/^ok {4}WaterMeterNB/m);
      expect(r.output).toMatch(/^error WANWU_ERR_PRODUCT: .*BadA[/\\]product\.json: rat/m);
      expect(r.output).toMatch(/^error WANWU_ERR_PRODUCT: .*BadB[/\\]product\.json: productKey/m);
      expect(r.output).toMatch(/1 products, 3 devices, \d+ warnings, 2 errors/);
    } finally {
      dir.cleanup();
    }
  });

  it('a missing folder is an error too', () => {
    const r = modelsCheck('/nonexistent/devices');
    expect(r.exitCode).toBe(1);
    expect(r.output).toContain('WANWU_ERR_PRODUCT');
  });
});
