// `wanwu devices list|add|import|disable|enable|rotate-secret|audit`: the device registry
// (src/registry/store.ts) from the command line. Every command reads registry.path, registry.keyFile
// and devicesDir from the configuration (--config / WANWU_CONFIG) and first seeds the store from
// devices/ as the gateway does at start, so a fresh install lists the sample devices. Changes land in
// SQLite (WAL) and a running gateway picks them up within registry.reloadMs (1 s by default), so
// `wanwu devices disable` needs no restart.
//
// Output: text for people, --json for scripts ({"error": {"code", "message"}} on failure). Exit codes:
// 0 done, 1 refused (bad input, unknown device, registry or product problem), 2 an import that
// added some rows and refused others.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import type { Config } from '../config/index.js';
import { asWanwuError, WanwuError } from '../errors.js';
import { DEVICE_FIELD_FORMATS, loadRegistry, type DeviceStatus } from '../registry/index.js';
import { openDeviceStore, registryPaths, type AuditRow, type DeviceInfo, type DeviceStore, type NewDevice } from '../registry/store.js';

export interface DevicesResult {
  exitCode: number;
  /** For stdout. */
  output: string;
  /** For stderr (text-mode errors). */
  errors?: string;
}

export interface DevicesContext {
  config: Readonly<Config>;
  /** Where WANWU_REGISTRY_KEY is read; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** Source of generated secrets (tests); default crypto randomBytes. */
  random?: (bytes: number) => Buffer;
}

interface Target {
  product: string;
  device: string;
  json?: boolean | undefined;
}

/** A new device secret: 16 random bytes as 32 hex digits (the length of Alibaba IoT's DeviceSecret). */
function newSecret(ctx: DevicesContext): string {
  return (ctx.random ?? randomBytes)(16).toString('hex');
}

/** Opens the store, seeded from devices/, and runs `fn`; errors become exit 1 with their code. */
function withStore(ctx: DevicesContext, json: boolean | undefined, fn: (store: DeviceStore, productKeys: ReadonlySet<string>) => DevicesResult): DevicesResult {
  let store: DeviceStore | null = null;
  const notes: string[] = [];
  try {
    const products = loadRegistry(ctx.config.devicesDir).products;
    const paths = registryPaths(ctx.config);
    store = openDeviceStore({ path: paths.path, keyFile: paths.keyFile, env: ctx.env, warn: (m) => notes.push(m) });
    store.seed(products);
    const result = fn(store, new Set(products.map((p) => p.productKey)));
    // Notes (a key file created, or readable by others) go to stderr so stdout stays parseable.
    if (notes.length > 0) result.errors = `${notes.map((n) => `wanwu: ${n}`).join('\n')}\n${result.errors ?? ''}`;
    return result;
  } catch (err) {
    return failure(asWanwuError(err), json);
  } finally {
    store?.close();
  }
}

function failure(e: WanwuError, json: boolean | undefined): DevicesResult {
  if (json) return { exitCode: 1, output: `${JSON.stringify({ error: { code: e.code, message: e.message } })}\n` };
  return { exitCode: 1, output: '', errors: `wanwu: ${e.code}: ${e.message}\n` };
}

const iso = (ms: number | null) => (ms === null ? null : new Date(ms).toISOString());

function show(d: DeviceInfo) {
  return {
    productKey: d.productKey,
    deviceName: d.deviceName,
    status: d.status,
    imei: d.imei,
    iccid: d.iccid,
    origin: d.origin,
    createdAt: iso(d.createdAt),
    updatedAt: iso(d.updatedAt),
    lastSeenAt: iso(d.lastSeenAt),
  };
}

/** Checks one field of a device record against the devices.json formats. */
function checkField(field: keyof typeof DEVICE_FIELD_FORMATS, value: string): string {
  const f = DEVICE_FIELD_FORMATS[field];
  if (!f.re.test(value)) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${field}: ${JSON.stringify(value.slice(0, 80))} is not ${f.what}`);
  return value;
}

/** A device record from command-line or CSV values; throws WANWU_ERR_DEVICE_RECORD. */
function record(productKeys: ReadonlySet<string>, devicesDir: string, v: { productKey: string; deviceName: string; deviceSecret: string; imei?: string | undefined; iccid?: string | undefined }): NewDevice {
  if (!productKeys.has(v.productKey)) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `productKey: no product ${JSON.stringify(v.productKey)} in ${devicesDir}`);
  const d: NewDevice = { productKey: v.productKey, deviceName: checkField('deviceName', v.deviceName), deviceSecret: checkField('deviceSecret', v.deviceSecret) };
  if (v.imei) d.imei = checkField('imei', v.imei);
  if (v.iccid) d.iccid = checkField('iccid', v.iccid);
  return d;
}

/** `wanwu devices list [--product PK] [--status enabled|disabled] [--json]` */
export function devicesList(ctx: DevicesContext, opts: { product?: string; status?: string; json?: boolean }): DevicesResult {
  if (opts.status !== undefined && opts.status !== 'enabled' && opts.status !== 'disabled') {
    return failure(new WanwuError('WANWU_ERR_DEVICE_RECORD', `--status must be enabled or disabled, got ${JSON.stringify(opts.status)}`), opts.json);
  }
  return withStore(ctx, opts.json, (store) => {
    const rows = store.list({ productKey: opts.product, status: opts.status as DeviceStatus | undefined });
    if (opts.json) return { exitCode: 0, output: `${JSON.stringify(rows.map(show), null, 2)}\n` };
    const table = [['productKey', 'deviceName', 'status', 'imei', 'iccid', 'lastSeenAt']];
    for (const r of rows) table.push([r.productKey, r.deviceName, r.status, r.imei ?? '-', r.iccid ?? '-', iso(r.lastSeenAt) ?? 'never']);
    const widths = table[0]!.map((_, i) => Math.max(...table.map((row) => row[i]!.length)));
    const lines = table.map((row) => row.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd());
    lines.push(`${rows.length} devices, ${rows.filter((r) => r.status === 'disabled').length} disabled`);
    return { exitCode: 0, output: `${lines.join('\n')}\n` };
  });
}

/** `wanwu devices add --product PK --device DN [--secret S] [--imei N] [--iccid N] [--json]`: a generated secret is printed once. */
export function devicesAdd(ctx: DevicesContext, opts: Target & { secret?: string; imei?: string; iccid?: string }): DevicesResult {
  return withStore(ctx, opts.json, (store, productKeys) => {
    const generated = opts.secret === undefined;
    const d = record(productKeys, ctx.config.devicesDir, { productKey: opts.product, deviceName: opts.device, deviceSecret: opts.secret ?? newSecret(ctx), imei: opts.imei, iccid: opts.iccid });
    store.add(d);
    store.audit({ at: Date.now(), productKey: d.productKey, deviceName: d.deviceName, event: 'added', source: 'cli' });
    const out = { productKey: d.productKey, deviceName: d.deviceName, status: 'enabled', imei: d.imei ?? null, iccid: d.iccid ?? null, ...(generated ? { deviceSecret: d.deviceSecret } : {}) };
    if (opts.json) return { exitCode: 0, output: `${JSON.stringify(out, null, 2)}\n` };
    const lines = [`added ${d.productKey}/${d.deviceName}`];
    if (generated) lines.push(`deviceSecret ${d.deviceSecret}`, '(shown once: the registry keeps it encrypted; put it on the device now)');
    return { exitCode: 0, output: `${lines.join('\n')}\n` };
  });
}

/** `wanwu devices disable|enable --product PK --device DN [--json]` */
export function devicesSetStatus(ctx: DevicesContext, status: DeviceStatus, opts: Target): DevicesResult {
  return withStore(ctx, opts.json, (store) => {
    const changed = store.setStatus(opts.product, opts.device, status);
    if (changed) store.audit({ at: Date.now(), productKey: opts.product, deviceName: opts.device, event: status, source: 'cli' });
    if (opts.json) return { exitCode: 0, output: `${JSON.stringify({ productKey: opts.product, deviceName: opts.device, status, changed }, null, 2)}\n` };
    return { exitCode: 0, output: changed ? `${status} ${opts.product}/${opts.device}\n` : `${opts.product}/${opts.device} was already ${status}\n` };
  });
}

/** `wanwu devices rotate-secret --product PK --device DN [--secret S] [--json]`: the new secret is printed once. */
export function devicesRotateSecret(ctx: DevicesContext, opts: Target & { secret?: string }): DevicesResult {
  return withStore(ctx, opts.json, (store) => {
    const secret = checkField('deviceSecret', opts.secret ?? newSecret(ctx));
    store.setSecret(opts.product, opts.device, secret);
    store.audit({ at: Date.now(), productKey: opts.product, deviceName: opts.device, event: 'secret-rotated', source: 'cli' });
    const generated = opts.secret === undefined;
    if (opts.json) return { exitCode: 0, output: `${JSON.stringify({ productKey: opts.product, deviceName: opts.device, ...(generated ? { deviceSecret: secret } : {}) }, null, 2)}\n` };
    const lines = [`rotated the secret of ${opts.product}/${opts.device}; its old secret no longer logs in`];
    if (generated) lines.push(`deviceSecret ${secret}`, '(shown once: put it on the device now)');
    return { exitCode: 0, output: `${lines.join('\n')}\n` };
  });
}

/** `wanwu devices audit [--product PK] [--device DN] [--limit N] [--json]`: newest first. */
export function devicesAudit(ctx: DevicesContext, opts: { product?: string; device?: string; limit?: number; json?: boolean }): DevicesResult {
  return withStore(ctx, opts.json, (store) => {
    const rows = store.listAudit({ productKey: opts.product, deviceName: opts.device, limit: opts.limit ?? 100 });
    const shown = rows.map((r: AuditRow) => ({ ...r, at: iso(r.at), lastAt: iso(r.lastAt) }));
    if (opts.json) return { exitCode: 0, output: `${JSON.stringify(shown, null, 2)}\n` };
    const lines = shown.map((r) => `${r.at}  ${r.productKey}/${r.deviceName}  ${r.event}${r.detail ? ` ${r.detail}` : ''}${r.count > 1 ? ` (x${r.count}, last ${r.lastAt})` : ''}${r.source ? `  [${r.source}]` : ''}`);
    lines.push(`${rows.length} audit entries`);
    return { exitCode: 0, output: `${lines.join('\n')}\n` };
  });
}

export interface ImportReport {
  added: number;
  /** Rows naming a device already in the registry (left as it is: the import never overwrites). */
  skipped: Array<{ line: number; device: string; reason: string }>;
  errors: Array<{ line: number; device: string; code: string; message: string }>;
}

const CSV_COLUMNS = ['productKey', 'deviceName', 'deviceSecret', 'imei', 'iccid'] as const;
const CSV_REQUIRED = ['productKey', 'deviceName', 'deviceSecret'] as const;

/**
 * `wanwu devices import FILE.csv [--json]`: a header line naming the columns productKey, deviceName,
 * deviceSecret, imei, iccid (any order; imei and iccid may be left out or empty; other columns are
 * ignored), then one device a line. Each row is added on its own: bad rows are reported with their
 * line number and the rest still go in. Exit 0 when every row was added or already there, 2 when
 * some rows were refused, 1 when the file itself cannot be read.
 */
export function devicesImport(ctx: DevicesContext, file: string, opts: { json?: boolean } = {}): DevicesResult {
  let rows: CsvRow[];
  try {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: cannot read: ${(err as Error).message}`, { cause: err });
    }
    rows = parseCsv(text, file);
  } catch (err) {
    return failure(asWanwuError(err), opts.json);
  }
  return withStore(ctx, opts.json, (store, productKeys) => {
    const header = rows[0];
    if (!header) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: empty (expected a header line: ${CSV_COLUMNS.join(',')})`);
    const names = header.fields.map((f) => f.trim());
    const col = new Map<string, number>();
    names.forEach((n, i) => {
      if ((CSV_COLUMNS as readonly string[]).includes(n)) {
        if (col.has(n)) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: line ${header.line}: column ${n} appears twice`);
        col.set(n, i);
      }
    });
    const missing = CSV_REQUIRED.filter((c) => !col.has(c));
    if (missing.length > 0) {
      throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: line ${header.line}: the header lacks ${missing.join(', ')} (expected ${CSV_COLUMNS.join(',')})`);
    }
    const report: ImportReport = { added: 0, skipped: [], errors: [] };
    const cell = (row: CsvRow, name: string) => {
      const i = col.get(name);
      return i === undefined ? undefined : (row.fields[i] ?? '').trim();
    };
    for (const row of rows.slice(1)) {
      if (row.fields.every((f) => f.trim() === '')) continue; // blank line
      const productKey = cell(row, 'productKey') ?? '';
      const deviceName = cell(row, 'deviceName') ?? '';
      try {
        if (row.fields.length > names.length) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${row.fields.length} fields, the header has ${names.length}`);
        const d = record(productKeys, ctx.config.devicesDir, { productKey, deviceName, deviceSecret: cell(row, 'deviceSecret') ?? '', imei: cell(row, 'imei'), iccid: cell(row, 'iccid') });
        if (store.has(productKey, deviceName)) {
          report.skipped.push({ line: row.line, device: `${productKey}/${deviceName}`, reason: 'already registered (import never overwrites; use enable, disable or rotate-secret)' });
          continue;
        }
        store.add(d);
        store.audit({ at: Date.now(), productKey, deviceName, event: 'added', detail: `import ${file}:${row.line}`, source: 'cli' });
        report.added++;
      } catch (err) {
        const e = asWanwuError(err);
        report.errors.push({ line: row.line, device: `${productKey}/${deviceName}`, code: e.code, message: e.message });
      }
    }
    const exitCode = report.errors.length > 0 ? 2 : 0;
    if (opts.json) return { exitCode, output: `${JSON.stringify(report, null, 2)}\n` };
    const lines = [`${report.added} added, ${report.skipped.length} skipped, ${report.errors.length} refused`];
    for (const s of report.skipped) lines.push(`skipped ${file}:${s.line}: ${s.device}: ${s.reason}`);
    for (const e of report.errors) lines.push(`error ${file}:${e.line}: ${e.device}: ${e.code}: ${e.message}`);
    return { exitCode, output: `${lines.join('\n')}\n` };
  });
}

interface CsvRow {
  /** 1-based line number where the record starts. */
  line: number;
  fields: string[];
}

/**
 * RFC 4180 CSV: fields separated by commas, records by CRLF or LF; a field in double quotes may hold
 * commas, line breaks and "" for a quote. A UTF-8 BOM (spreadsheet exports) is dropped.
 */
export function parseCsv(text: string, file = 'CSV'): CsvRow[] {
  const rows: CsvRow[] = [];
  let i = text.charCodeAt(0) === 0xfeff ? 1 : 0;
  let line = 1;
  while (i < text.length) {
    const start = line;
    const fields: string[] = [];
    for (;;) {
      let value = '';
      if (text[i] === '"') {
        i++;
        for (;;) {
          if (i >= text.length) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: line ${start}: a quoted field is not closed`);
          const ch = text[i]!;
          if (ch === '"') {
            if (text[i + 1] === '"') {
              value += '"';
              i += 2;
              continue;
            }
            i++;
            break;
          }
          if (ch === '\n') line++;
          value += ch;
          i++;
        }
        if (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') {
          throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${file}: line ${line}: text after a closing quote`);
        }
      } else {
        while (i < text.length && text[i] !== ',' && text[i] !== '\n' && text[i] !== '\r') value += text[i++];
      }
      fields.push(value);
      if (text[i] === ',') {
        i++;
        continue;
      }
      break;
    }
    if (text[i] === '\r') i++;
    if (text[i] === '\n') {
      i++;
      line++;
    }
    rows.push({ line: start, fields });
  }
  return rows;
}
