// The device store: one SQLite file (config registry.path) holding every device, seeded from devices/
// and changed by `wanwu devices` (src/commands/devices.ts), also while a gateway runs (WAL; the
// gateway's registry, live.ts, picks the changes up by their `rev`).
//
// Secrets at rest: Alibaba's MQTT sign is an HMAC keyed by the device secret (src/registry/sign.ts),
// so the gateway needs each secret in plain text and cannot keep a one-way hash. Secrets are stored
// encrypted with AES-256-GCM (NIST SP 800-38D: a fresh random 96-bit IV per secret, 128-bit tag),
// with the device's productKey/deviceName as additional authenticated data, so a ciphertext copied
// to another row does not open. The key is never in the database: it comes from the env
// WANWU_REGISTRY_KEY, or from a key file (registry.keyFile, default `{registry.path}.key`) created
// with mode 0600 when the registry is new. A stolen database alone does not reveal the secrets.
//
//   meta    key/value: schema version, the key check (a known text sealed with the key, so a wrong
//           key is refused at open instead of failing device by device)
//   devices one row per device; `origin` is 'file' while the row is what devices.json seeded and
//           'cli' once an operator changed it (seeding never overwrites those); `rev` grows with
//           every change, which is how a running gateway reloads only what changed
//   audit   refusals and operator actions; repeats of the same event within a minute are counted
//           on one row (`count`, `last_at`) instead of adding rows

import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { Config } from '../config/index.js';
import { WanwuError } from '../errors.js';
import type { AuditEntry, Device, DeviceStatus, Product } from './index.js';

export type DeviceOrigin = 'file' | 'cli';

/** A device row as tools show it: everything but the secret. */
export interface DeviceInfo {
  productKey: string;
  deviceName: string;
  status: DeviceStatus;
  imei: string | null;
  iccid: string | null;
  origin: DeviceOrigin;
  /** ms since the epoch. */
  createdAt: number;
  updatedAt: number;
  lastSeenAt: number | null;
}

export interface NewDevice {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  imei?: string | undefined;
  iccid?: string | undefined;
  status?: DeviceStatus;
}

export interface AuditRow extends AuditEntry {
  id: number;
  /** Times the same event was seen from `at` to `lastAt` (repeats within a minute share a row). */
  count: number;
  lastAt: number;
}

export interface SeedReport {
  /** `pk/dn` of devices inserted from devices.json. */
  added: string[];
  /** Seeded rows brought up to date with a changed devices.json entry (the operator never touched them). */
  updated: string[];
  /** Devices.json entries not inserted, with the reason (e.g. an IMEI another device holds). */
  skipped: Array<{ device: string; reason: string }>;
}

export interface StoreOptions {
  /** SQLite file; its folder is created. */
  path: string;
  /** Key file; default `${path}.key`. Not read when `env.WANWU_REGISTRY_KEY` is set. */
  keyFile?: string | null;
  /** Where WANWU_REGISTRY_KEY is read; default process.env. */
  env?: NodeJS.ProcessEnv;
  /** How long a statement waits for another connection's write lock, in ms. Default 5000. */
  busyTimeoutMs?: number;
  /** Told about a key file readable by others, and about a key file being created. */
  warn?: (message: string) => void;
  now?: () => number;
}

const SCHEMA_VERSION = '1';
const KEY_CHECK_TEXT = 'wanwu registry key check';
const KEY_CHECK_AAD = 'wanwu/registry/key-check';
const SEAL_VERSION = 1;
const IV_BYTES = 12; // NIST SP 800-38D §8.2: 96-bit IVs, random per message
const TAG_BYTES = 16;
/** Repeats of one audit event (same device, event and detail) within this window share a row. */
const AUDIT_COLLAPSE_MS = 60_000;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS devices (
  product_key  TEXT NOT NULL,
  device_name  TEXT NOT NULL,
  secret       BLOB NOT NULL,
  imei         TEXT,
  iccid        TEXT,
  status       TEXT NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
  origin       TEXT NOT NULL CHECK (origin IN ('file', 'cli')),
  created_at   INTEGER NOT NULL,
  updated_at   INTEGER NOT NULL,
  last_seen_at INTEGER,
  rev          INTEGER NOT NULL,
  PRIMARY KEY (product_key, device_name)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS devices_rev ON devices (rev);
CREATE UNIQUE INDEX IF NOT EXISTS devices_imei ON devices (imei) WHERE imei IS NOT NULL;
CREATE TABLE IF NOT EXISTS audit (
  id          INTEGER PRIMARY KEY,
  at          INTEGER NOT NULL,
  last_at     INTEGER NOT NULL,
  count       INTEGER NOT NULL DEFAULT 1,
  product_key TEXT NOT NULL,
  device_name TEXT NOT NULL,
  event       TEXT NOT NULL,
  detail      TEXT,
  source      TEXT
);
CREATE INDEX IF NOT EXISTS audit_device ON audit (product_key, device_name, id);
`;

interface DeviceRow {
  product_key: string;
  device_name: string;
  secret: Buffer;
  imei: string | null;
  iccid: string | null;
  status: DeviceStatus;
  origin: DeviceOrigin;
  created_at: number;
  updated_at: number;
  last_seen_at: number | null;
  rev: number;
}

/** Where the registry of a configuration lives: registry.path, else registry.db next to the buffer. */
export function registryPaths(config: Pick<Config, 'registry' | 'storage'>): { path: string; keyFile: string } {
  const file = config.registry.path ?? path.join(path.dirname(config.storage.path), 'registry.db');
  return { path: file, keyFile: config.registry.keyFile ?? `${file}.key` };
}

/** A 32-byte key from 64 hex digits or base64 (what WANWU_REGISTRY_KEY and the key file hold). */
export function parseKey(text: string, where: string): Buffer {
  const t = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(t)) return Buffer.from(t, 'hex');
  if (/^[A-Za-z0-9+/_-]{43}=?$/.test(t)) {
    const key = Buffer.from(t, t.includes('-') || t.includes('_') ? 'base64url' : 'base64');
    if (key.length === 32) return key;
  }
  throw new WanwuError('WANWU_ERR_REGISTRY', `${where}: expected a 32-byte key as 64 hex digits or base64 (e.g. from "openssl rand -hex 32")`);
}

function seal(key: Buffer, plain: string, aad: string): Buffer {
  const iv = randomBytes(IV_BYTES);
  const c = createCipheriv('aes-256-gcm', key, iv, { authTagLength: TAG_BYTES });
  c.setAAD(Buffer.from(aad, 'utf8'));
  const body = Buffer.concat([c.update(plain, 'utf8'), c.final()]);
  return Buffer.concat([Buffer.from([SEAL_VERSION]), iv, c.getAuthTag(), body]);
}

/** The plain text, or null when the key or the AAD does not fit (tampered, copied or another key). */
function open(key: Buffer, sealed: Buffer, aad: string): string | null {
  if (sealed.length < 1 + IV_BYTES + TAG_BYTES || sealed[0] !== SEAL_VERSION) return null;
  try {
    const d = createDecipheriv('aes-256-gcm', key, sealed.subarray(1, 1 + IV_BYTES), { authTagLength: TAG_BYTES });
    d.setAAD(Buffer.from(aad, 'utf8'));
    d.setAuthTag(sealed.subarray(1 + IV_BYTES, 1 + IV_BYTES + TAG_BYTES));
    return Buffer.concat([d.update(sealed.subarray(1 + IV_BYTES + TAG_BYTES)), d.final()]).toString('utf8');
  } catch {
    return null;
  }
}

const deviceAad = (productKey: string, deviceName: string) => `wanwu/registry/device/${productKey}/${deviceName}`;

/**
 * Opens (creating when needed) the store at `opts.path` and its key. Throws WANWU_ERR_REGISTRY when
 * the file cannot be opened, or the key is missing, malformed or not this registry's.
 */
export function openDeviceStore(opts: StoreOptions): DeviceStore {
  let db: Database.Database;
  try {
    mkdirSync(path.dirname(opts.path), { recursive: true });
    db = new Database(opts.path);
  } catch (err) {
    throw new WanwuError('WANWU_ERR_REGISTRY', `registry ${opts.path}: cannot open: ${(err as Error).message}`, { cause: err });
  }
  try {
    db.pragma('journal_mode = WAL');
    // Operator changes are rare and must survive power loss; a last-seen flush costs one fsync.
    db.pragma('synchronous = FULL');
    db.pragma(`busy_timeout = ${opts.busyTimeoutMs ?? 5000}`);
    db.exec(SCHEMA);
    const version = metaValue(db, 'schema');
    if (version === undefined) db.prepare('INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)').run('schema', SCHEMA_VERSION);
    else if (version !== SCHEMA_VERSION) throw new WanwuError('WANWU_ERR_REGISTRY', `registry ${opts.path}: schema version ${version}, this Wanwu reads ${SCHEMA_VERSION}`);
    return new DeviceStore(db, loadKey(db, opts), opts);
  } catch (err) {
    db.close();
    if (err instanceof WanwuError) throw err;
    throw new WanwuError('WANWU_ERR_REGISTRY', `registry ${opts.path}: ${(err as Error).message}`, { cause: err });
  }
}

function metaValue(db: Database.Database, key: string): string | undefined {
  return (db.prepare('SELECT value FROM meta WHERE key = ?').get(key) as { value: string } | undefined)?.value;
}

/**
 * The key: WANWU_REGISTRY_KEY, else the key file. A key file is created only for a registry that
 * holds no key check yet (a new one); for any other, a missing key would orphan every secret.
 */
function loadKey(db: Database.Database, opts: StoreOptions): Buffer {
  const env = opts.env ?? process.env;
  const keyFile = opts.keyFile ?? `${opts.path}.key`;
  const check = metaValue(db, 'key_check');
  let key: Buffer;
  let from: string;
  if (env.WANWU_REGISTRY_KEY) {
    key = parseKey(env.WANWU_REGISTRY_KEY, 'env WANWU_REGISTRY_KEY');
    from = 'env WANWU_REGISTRY_KEY';
  } else if (existsSync(keyFile)) {
    const mode = statSync(keyFile).mode & 0o777;
    if ((mode & 0o077) !== 0) opts.warn?.(`registry key file ${keyFile} is readable by others (mode ${mode.toString(8)}); chmod 600 it`);
    key = parseKey(readFileSync(keyFile, 'utf8'), `registry key file ${keyFile}`);
    from = `key file ${keyFile}`;
  } else if (check === undefined) {
    key = createKeyFile(keyFile, opts);
    from = `key file ${keyFile}`;
  } else {
    throw new WanwuError(
      'WANWU_ERR_REGISTRY',
      `registry ${opts.path}: its secrets key is missing: no key file ${keyFile} and no env WANWU_REGISTRY_KEY (restore the key; a new one cannot open the stored secrets)`,
    );
  }
  if (check === undefined) {
    db.prepare('INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)').run('key_check', seal(key, KEY_CHECK_TEXT, KEY_CHECK_AAD).toString('base64'));
  }
  if (open(key, Buffer.from(metaValue(db, 'key_check')!, 'base64'), KEY_CHECK_AAD) !== KEY_CHECK_TEXT) {
    throw new WanwuError('WANWU_ERR_REGISTRY', `registry ${opts.path}: the secrets key from ${from} is not the key this registry was made with`);
  }
  return key;
}

function createKeyFile(keyFile: string, opts: StoreOptions): Buffer {
  const key = randomBytes(32);
  try {
    mkdirSync(path.dirname(keyFile), { recursive: true });
    // 'wx': never replace a key another process created meanwhile; mode 0600: the owner only.
    writeFileSync(keyFile, `${key.toString('hex')}\n`, { mode: 0o600, flag: 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') return parseKey(readFileSync(keyFile, 'utf8'), `registry key file ${keyFile}`);
    throw new WanwuError('WANWU_ERR_REGISTRY', `registry key file ${keyFile}: cannot create: ${(err as Error).message}`, { cause: err });
  }
  chmodSync(keyFile, 0o600); // the umask can only take bits away; this makes the mode explicit
  opts.warn?.(`registry key created in ${keyFile} (mode 0600): back it up; without it the stored device secrets cannot be read`);
  return key;
}

export class DeviceStore {
  private readonly now: () => number;
  /** Audit rows still collecting repeats: key -> row id and the end of its window. */
  private readonly auditOpen = new Map<string, { id: number; until: number }>();
  private readonly stmts: Statements;

  /** Use openDeviceStore(). */
  constructor(
    private readonly db: Database.Database,
    private readonly key: Buffer,
    readonly opts: StoreOptions,
  ) {
    this.now = opts.now ?? Date.now;
    this.stmts = prepare(db);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private nextRev(): number {
    return (this.stmts.nextRev.get() as { rev: number }).rev;
  }

  /** `PRAGMA data_version`: changes when another connection commits (SQLite §pragma data_version). */
  dataVersion(): number {
    return this.db.pragma('data_version', { simple: true }) as number;
  }

  /** The highest `rev`: changedSince(maxRev()) returns only later changes. */
  maxRev(): number {
    return (this.stmts.maxRev.get() as { rev: number }).rev;
  }

  /**
   * Inserts the devices of devices.json not yet in the store, and brings seeded rows nobody changed
   * since up to date with their entry. Rows an operator changed (origin 'cli') are left alone.
   */
  seed(products: readonly Pick<Product, 'productKey' | 'devices'>[]): SeedReport {
    const report: SeedReport = { added: [], updated: [], skipped: [] };
    const now = this.now();
    const one = this.db.transaction((d: Device, rev: number) => {
      const row = this.stmts.get.get(d.productKey, d.deviceName) as DeviceRow | undefined;
      const values = { productKey: d.productKey, deviceName: d.deviceName, imei: d.imei ?? null, iccid: d.iccid ?? null, now, rev };
      if (!row) {
        this.stmts.insert.run({ ...values, secret: seal(this.key, d.deviceSecret, deviceAad(d.productKey, d.deviceName)), status: 'enabled', origin: 'file' });
        return 'added';
      }
      if (row.origin !== 'file') return 'kept';
      const same = row.imei === values.imei && row.iccid === values.iccid && open(this.key, row.secret, deviceAad(d.productKey, d.deviceName)) === d.deviceSecret;
      if (same) return 'kept';
      this.stmts.updateSeeded.run({ ...values, secret: seal(this.key, d.deviceSecret, deviceAad(d.productKey, d.deviceName)) });
      return 'updated';
    });
    this.db.transaction(() => {
      let rev = this.nextRev();
      for (const p of products) {
        for (const d of p.devices.values()) {
          const name = `${d.productKey}/${d.deviceName}`;
          try {
            const r = one(d, rev);
            if (r === 'added') report.added.push(name);
            else if (r === 'updated') report.updated.push(name);
            if (r !== 'kept') rev++;
          } catch (err) {
            // Savepoint rolled back: this device only (e.g. its IMEI belongs to a device added by the CLI).
            report.skipped.push({ device: name, reason: constraintReason(err) });
          }
        }
      }
    }).immediate(); // the write lock up front: a read transaction cannot always be upgraded in WAL mode
    return report;
  }

  /** Adds one device (operator: origin 'cli'). Throws WANWU_ERR_DEVICE_RECORD when it exists or its IMEI is taken. */
  add(d: NewDevice, origin: DeviceOrigin = 'cli'): void {
    const now = this.now();
    try {
      this.db.transaction(() => {
        this.stmts.insert.run({
          productKey: d.productKey,
          deviceName: d.deviceName,
          imei: d.imei ?? null,
          iccid: d.iccid ?? null,
          status: d.status ?? 'enabled',
          origin,
          now,
          rev: this.nextRev(),
          secret: seal(this.key, d.deviceSecret, deviceAad(d.productKey, d.deviceName)),
        });
      }).immediate();
    } catch (err) {
      if ((err as { code?: string }).code?.startsWith('SQLITE_CONSTRAINT')) {
        throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `${d.productKey}/${d.deviceName}: ${constraintReason(err)}`, { cause: err });
      }
      throw err;
    }
  }

  /** Sets enabled/disabled. False when the status was already that. Throws WANWU_ERR_DEVICE_RECORD for an unknown device. */
  setStatus(productKey: string, deviceName: string, status: DeviceStatus): boolean {
    return this.db.transaction(() => {
      const row = this.mustGet(productKey, deviceName);
      if (row.status === status) return false;
      this.stmts.setStatus.run({ productKey, deviceName, status, now: this.now(), rev: this.nextRev() });
      return true;
    }).immediate();
  }

  /** Replaces a device's secret. Throws WANWU_ERR_DEVICE_RECORD for an unknown device. */
  setSecret(productKey: string, deviceName: string, deviceSecret: string): void {
    this.db.transaction(() => {
      this.mustGet(productKey, deviceName);
      this.stmts.setSecret.run({ productKey, deviceName, now: this.now(), rev: this.nextRev(), secret: seal(this.key, deviceSecret, deviceAad(productKey, deviceName)) });
    }).immediate();
  }

  private mustGet(productKey: string, deviceName: string): DeviceRow {
    const row = this.stmts.get.get(productKey, deviceName) as DeviceRow | undefined;
    if (!row) throw new WanwuError('WANWU_ERR_DEVICE_RECORD', `no device ${productKey}/${deviceName} in the registry`);
    return row;
  }

  has(productKey: string, deviceName: string): boolean {
    return this.stmts.exists.get(productKey, deviceName) !== undefined;
  }

  /** One device with its secret, or undefined. Throws WANWU_ERR_REGISTRY when its secret does not open. */
  get(productKey: string, deviceName: string): (DeviceInfo & { deviceSecret: string }) | undefined {
    const row = this.stmts.get.get(productKey, deviceName) as DeviceRow | undefined;
    if (!row) return undefined;
    const secret = open(this.key, row.secret, deviceAad(productKey, deviceName));
    if (secret === null) throw new WanwuError('WANWU_ERR_REGISTRY', `registry ${this.opts.path}: the secret of ${productKey}/${deviceName} does not decrypt (tampered or copied row)`);
    return { ...info(row), deviceSecret: secret };
  }

  /** Devices without their secrets, sorted by product and name. */
  list(filter: { productKey?: string | undefined; status?: DeviceStatus | undefined } = {}): DeviceInfo[] {
    const where: string[] = [];
    const args: string[] = [];
    if (filter.productKey !== undefined) {
      where.push('product_key = ?');
      args.push(filter.productKey);
    }
    if (filter.status !== undefined) {
      where.push('status = ?');
      args.push(filter.status);
    }
    const sql = `SELECT product_key, device_name, imei, iccid, status, origin, created_at, updated_at, last_seen_at FROM devices${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY product_key, device_name`;
    return (this.db.prepare(sql).all(...args) as DeviceRow[]).map(info);
  }

  /**
   * Rows changed after `rev`, decrypted, with the highest rev seen. A row whose secret does not open
   * is reported in `broken` instead (the caller logs it; the device stays unknown).
   */
  changedSince(rev: number): { devices: Device[]; broken: string[]; rev: number } {
    const devices: Device[] = [];
    const broken: string[] = [];
    let max = rev;
    for (const row of this.stmts.since.iterate(rev) as IterableIterator<DeviceRow>) {
      max = Math.max(max, row.rev);
      const secret = open(this.key, row.secret, deviceAad(row.product_key, row.device_name));
      if (secret === null) broken.push(`${row.product_key}/${row.device_name}`);
      else devices.push(toDevice(row, secret));
    }
    return { devices, broken, rev: max };
  }

  /** Writes last-seen times (ms) in one transaction; a time never moves back. */
  touch(seen: ReadonlyMap<string, { productKey: string; deviceName: string; at: number }>): void {
    if (seen.size === 0) return;
    this.db.transaction(() => {
      for (const s of seen.values()) this.stmts.seen.run(s.at, s.productKey, s.deviceName);
    })();
  }

  /** Keeps an audit entry; the same device, event and detail again within a minute counts on the open row. */
  audit(e: AuditEntry): void {
    const key = `${e.productKey}/${e.deviceName}\u0000${e.event}\u0000${e.detail ?? ''}`;
    const current = this.auditOpen.get(key);
    if (current && e.at < current.until) {
      this.stmts.auditRepeat.run(e.at, current.id);
      return;
    }
    const r = this.stmts.auditInsert.run({ at: e.at, productKey: e.productKey, deviceName: e.deviceName, event: e.event, detail: e.detail ?? null, source: e.source ?? null });
    if (this.auditOpen.size >= 10_000) {
      for (const [k, v] of this.auditOpen) if (v.until <= e.at) this.auditOpen.delete(k);
      if (this.auditOpen.size >= 10_000) this.auditOpen.clear();
    }
    this.auditOpen.set(key, { id: Number(r.lastInsertRowid), until: e.at + AUDIT_COLLAPSE_MS });
  }

  /** Audit rows, newest first. */
  listAudit(filter: { productKey?: string | undefined; deviceName?: string | undefined; limit?: number } = {}): AuditRow[] {
    const where: string[] = [];
    const args: Array<string | number> = [];
    if (filter.productKey !== undefined) {
      where.push('product_key = ?');
      args.push(filter.productKey);
    }
    if (filter.deviceName !== undefined) {
      where.push('device_name = ?');
      args.push(filter.deviceName);
    }
    args.push(filter.limit ?? 100);
    const sql = `SELECT * FROM audit${where.length ? ` WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...args) as Array<Record<string, unknown>>).map((r) => {
      const row: AuditRow = {
        id: r.id as number,
        at: r.at as number,
        lastAt: r.last_at as number,
        count: r.count as number,
        productKey: r.product_key as string,
        deviceName: r.device_name as string,
        event: r.event as string,
      };
      if (r.detail !== null) row.detail = r.detail as string;
      if (r.source !== null) row.source = r.source as string;
      return row;
    });
  }
}

function prepare(db: Database.Database) {
  return {
    get: db.prepare('SELECT * FROM devices WHERE product_key = ? AND device_name = ?'),
    exists: db.prepare('SELECT 1 FROM devices WHERE product_key = ? AND device_name = ?'),
    nextRev: db.prepare('SELECT coalesce(max(rev), 0) + 1 AS rev FROM devices'),
    maxRev: db.prepare('SELECT coalesce(max(rev), 0) AS rev FROM devices'),
    insert: db.prepare(
      `INSERT INTO devices (product_key, device_name, secret, imei, iccid, status, origin, created_at, updated_at, rev)
       VALUES (@productKey, @deviceName, @secret, @imei, @iccid, @status, @origin, @now, @now, @rev)`,
    ),
    updateSeeded: db.prepare(
      `UPDATE devices SET secret = @secret, imei = @imei, iccid = @iccid, updated_at = @now, rev = @rev
       WHERE product_key = @productKey AND device_name = @deviceName AND origin = 'file'`,
    ),
    setStatus: db.prepare(
      `UPDATE devices SET status = @status, origin = 'cli', updated_at = @now, rev = @rev WHERE product_key = @productKey AND device_name = @deviceName`,
    ),
    setSecret: db.prepare(
      `UPDATE devices SET secret = @secret, origin = 'cli', updated_at = @now, rev = @rev WHERE product_key = @productKey AND device_name = @deviceName`,
    ),
    since: db.prepare('SELECT * FROM devices WHERE rev > ? ORDER BY rev'),
    seen: db.prepare('UPDATE devices SET last_seen_at = max(coalesce(last_seen_at, 0), ?) WHERE product_key = ? AND device_name = ?'),
    auditInsert: db.prepare(
      'INSERT INTO audit (at, last_at, product_key, device_name, event, detail, source) VALUES (@at, @at, @productKey, @deviceName, @event, @detail, @source)',
    ),
    auditRepeat: db.prepare('UPDATE audit SET count = count + 1, last_at = max(last_at, ?) WHERE id = ?'),
  };
}

type Statements = ReturnType<typeof prepare>;

function toDevice(row: DeviceRow, deviceSecret: string): Device {
  const d: Device = { productKey: row.product_key, deviceName: row.device_name, deviceSecret, status: row.status };
  if (row.imei !== null) d.imei = row.imei;
  if (row.iccid !== null) d.iccid = row.iccid;
  return Object.freeze(d);
}

function info(row: DeviceRow): DeviceInfo {
  return {
    productKey: row.product_key,
    deviceName: row.device_name,
    status: row.status,
    imei: row.imei,
    iccid: row.iccid,
    origin: row.origin,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    lastSeenAt: row.last_seen_at,
  };
}

/** A constraint failure in words an operator can act on. */
function constraintReason(err: unknown): string {
  const message = (err as Error).message ?? String(err);
  if (/devices\.imei/.test(message)) return 'its IMEI belongs to another device';
  if (/devices\.product_key|PRIMARY KEY|devices\.device_name/.test(message)) return 'the device is already registered';
  return message;
}
