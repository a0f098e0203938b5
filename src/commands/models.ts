// `wanwu models check [DIR]`: loads every product folder, reports products, devices, warnings and
// errors, and exits non-zero when any product is broken, so a CI job can gate changes to devices/.

import { asWanwuError } from '../errors.js';
import { inspectProducts } from '../registry/index.js';
import type { CommandResult } from './codec-tools.js';

export function modelsCheck(dir: string, opts: { json?: boolean } = {}): CommandResult {
  let report;
  try {
    report = inspectProducts(dir);
  } catch (err) {
    const e = asWanwuError(err, 'WANWU_ERR_PRODUCT');
    return { exitCode: 1, output: opts.json ? `${JSON.stringify({ products: [], warnings: [], errors: [{ code: e.code, message: e.message }] }, null, 2)}\n` : `error ${e.code}: ${e.message}\n` };
  }
  const products = report.products.map((p) => ({
    productKey: p.productKey,
    name: p.name,
    rat: p.rat,
    codec: p.codec.type,
    model: p.model ? { properties: p.model.properties.length, events: p.model.events.length, services: p.model.services.length } : null,
    devices: p.devices.size,
  }));
  const errors = report.errors.map((e) => ({ code: e.code, message: e.message }));
  const exitCode = errors.length > 0 ? 1 : 0;
  if (opts.json) return { exitCode, output: `${JSON.stringify({ products, warnings: report.warnings, errors }, null, 2)}\n` };
  const lines: string[] = [];
  for (const p of products) {
    const model = p.model ? `${p.model.properties} properties, ${p.model.events} events, ${p.model.services} services` : 'no model (values pass unvalidated)';
    lines.push(`ok    ${p.productKey} (${p.name}): ${p.rat}, ${p.codec} codec, ${model}, ${p.devices} devices`);
  }
  for (const w of report.warnings) lines.push(`warn  ${w}`);
  for (const e of errors) lines.push(`error ${e.code}: ${e.message}`);
  lines.push(`${products.length} products, ${products.reduce((n, p) => n + p.devices, 0)} devices, ${report.warnings.length} warnings, ${errors.length} errors`);
  return { exitCode, output: `${lines.join('\n')}\n` };
}
