// The device store (src/registry/store.ts), the gateway's live registry over it (live.ts), the card and
// status checks (index.ts) and `wanwu devices` (src/commands/devices.ts), on real SQLite files.

import { chmodSync, cpSync, existsSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { main } from '../../../src/cli.js';
import { devicesAdd, devicesAudit, devicesImport, devicesList, devicesRotateSecret, devicesSetStatus, parseCsv } from '../../../src/commands/devices.js';
import { parseConfig } from '../../../src/config/index.js';
import { isWanwuError, WanwuError } from '../../../src/errors.js';
import { checkCard, deviceRefusal, loadRegistry, normalizeIccid, type Device } from '../../../src/registry/index.js';
import { createLiveRegistry } from '../../../src/registry/live.js';
import { parseMqttLogin, verifySign } from '../../../src/registry/sign.js';
import { openDeviceStore, parseKey, registryPaths } from '../../../src/registry/store.js';
import { DEVICES_DIR } from '../../helpers/gateway.js';
import { silentLogger, tempDir } from '../../helpers/index.js';

const KEY_HEX = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff';
const noEnv = {} as NodeJS.ProcessEnv;

function codeOf(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    if (isWanwuError(err)) return err.code;
    throw err;
  }
  throw new Error('expected a WanwuError');
}

/** Every byte SQLite keeps for the registry: the database and, if still there, its WAL. */
function fileBytes(path: string): Buffer {
  return Buffer.concat([path, `${path}-wal`].filter((f) => existsSync(f)).map((f) => readFileSync(f)));
}

describe('device store', () => {
  let dir: ReturnType<typeof tempDir>;
  let dbPath: string;
  beforeEach(() => {
    dir = tempDir('wanwu-registry-');
    dbPath = join(dir.path, 'data', 'registry.db');
  });
  afterEach(() => dir.cleanup());

  it('keeps secrets encrypted at rest: neither the database nor its WAL holds a secret in plain text', () => {
    const products = loadRegistry(DEVICES_DIR).products;
    const secrets = products.flatMap((p) => [...p.devices.values()].map((d) => d.deviceSecret));
    expect(secrets.length).toBeGreaterThan(10);
    const store = openDeviceStore({ path: dbPath, env: noEnv });
    store.seed(products);
    store.add({ productKey: 'TrackerCat1', deviceName: 'tr-new', deviceSecret: 'a-very-recognisable-secret-42' });
    // While open (WAL not yet checkpointed) and after close.
    const open = fileBytes(dbPath);
    store.close();
    const closed = fileBytes(dbPath);
    for (const bytes of [open, closed]) {
      expect(bytes.includes('tr-new')).toBe(true); // the right file: names are stored in clear
      expect(bytes.includes('a-very-recognisable-secret-42')).toBe(false);
      for (const s of secrets) expect(bytes.includes(s), s).toBe(false);
    }
    // ... yet the store gives them back with the key.
    const again = openDeviceStore({ path: dbPath, env: noEnv });
    expect(again.get('TrackerCat1', 'tr-new')?.deviceSecret).toBe('a-very-recognisable-secret-42');
    expect(again.get('TrackerCat1', 'tr-0001')?.deviceSecret).toBe('demo-secret-TrackerCat1-0001');
    again.close();
  });

  it('creates a 0600 key file next to a new database, and refuses to go on without it', () => {
    const notes: string[] = [];
    openDeviceStore({ path: dbPath, env: noEnv, warn: (m) => notes.push(m) }).close();
    const keyFile = `${dbPath}.key`;
    expect(statSync(keyFile).mode & 0o777).toBe(0o600);
    expect(readFileSync(keyFile, 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
    expect(notes.join('\n')).toContain('registry key created');
    // The database holds no key, only a check value.
    expect(fileBytes(dbPath).includes(readFileSync(keyFile, 'utf8').trim())).toBe(false);

    rmSync(keyFile);
    expect(codeOf(() => openDeviceStore({ path: dbPath, env: noEnv }))).toBe('WANWU_ERR_REGISTRY');
    expect(existsSync(keyFile)).toBe(false); // not silently replaced by a new key
  });

  it('warns about a key file others can read', () => {
    openDeviceStore({ path: dbPath, env: noEnv }).close();
    chmodSync(`${dbPath}.key`, 0o644);
    const notes: string[] = [];
    openDeviceStore({ path: dbPath, env: noEnv, warn: (m) => notes.push(m) }).close();
    expect(notes.join('\n')).toMatch(/readable by others \(mode 644\)/);
  });

  it('takes the key from WANWU_REGISTRY_KEY (hex or base64), writes no key file, and refuses a wrong key', () => {
    const env = { WANWU_REGISTRY_KEY: KEY_HEX };
    const store = openDeviceStore({ path: dbPath, env });
    store.add({ productKey: 'P', deviceName: 'd1', deviceSecret: 's3cret' });
    store.close();
    expect(existsSync(`${dbPath}.key`)).toBe(false);
    const b64 = Buffer.from(KEY_HEX, 'hex').toString('base64');
    const again = openDeviceStore({ path: dbPath, env: { WANWU_REGISTRY_KEY: b64 } });
    expect(again.get('P', 'd1')?.deviceSecret).toBe('s3cret');
    again.close();
    const wrong = KEY_HEX.replace(/^00/, '01');
    let err: unknown;
    try {
      openDeviceStore({ path: dbPath, env: { WANWU_REGISTRY_KEY: wrong } });
    } catch (e) {
      err = e;
    }
    expect((err as WanwuError).code).toBe('WANWU_ERR_REGISTRY');
    expect((err as WanwuError).message).toContain('not the key this registry was made with');
    expect(codeOf(() => openDeviceStore({ path: dbPath, env: { WANWU_REGISTRY_KEY: 'short' } }))).toBe('WANWU_ERR_REGISTRY');
  });

  it('parses keys as 64 hex digits or base64 of 32 bytes only', () => {
    expect(parseKey(KEY_HEX, 'x').toString('hex')).toBe(KEY_HEX);
    expect(parseKey(`  ${Buffer.from(KEY_HEX, 'hex').toString('base64url')}\n`, 'x').toString('hex')).toBe(KEY_HEX);
    expect(codeOf(() => parseKey(KEY_HEX.slice(2), 'x'))).toBe('WANWU_ERR_REGISTRY');
    expect(codeOf(() => parseKey(Buffer.alloc(16).toString('base64'), 'x'))).toBe('WANWU_ERR_REGISTRY');
  });

  it('binds each ciphertext to its device: a secret copied to another row does not open', () => {
    const store = openDeviceStore({ path: dbPath, env: noEnv });
    store.add({ productKey: 'P', deviceName: 'a', deviceSecret: 'secret-a' });
    store.add({ productKey: 'P', deviceName: 'b', deviceSecret: 'secret-b' });
    store.close();
    const db = new Database(dbPath);
    db.prepare("UPDATE devices SET secret = (SELECT secret FROM devices WHERE device_name = 'a') WHERE device_name = 'b'").run();
    db.close();
    const again = openDeviceStore({ path: dbPath, env: noEnv });
    expect(again.get('P', 'a')?.deviceSecret).toBe('secret-a');
    expect(codeOf(() => again.get('P', 'b'))).toBe('WANWU_ERR_REGISTRY');
    const { devices, broken } = again.changedSince(0);
    expect(devices.map((d) => d.deviceName)).toEqual(['a']);
    expect(broken).toEqual(['P/b']);
    again.close();
  });

  it('seeds devices.json once, follows edits of untouched rows, and never overwrites what an operator changed', () => {
    const devicesDir = join(dir.path, 'devices');
    cpSync(DEVICES_DIR, devicesDir, { recursive: true });
    const store = openDeviceStore({ path: dbPath, env: noEnv });
    const first = store.seed(loadRegistry(devicesDir).products);
    expect(first.added).toHaveLength(loadRegistry(devicesDir).deviceCount);
    expect(first.added).toContain('TrackerCat1/tr-0001');
    expect(store.seed(loadRegistry(devicesDir).products)).toEqual({ added: [], updated: [], skipped: [] });

    // The operator disables tr-0001; then devices.json changes the secrets of tr-0001 and tr-0002.
    store.setStatus('TrackerCat1', 'tr-0001', 'disabled');
    const file = join(devicesDir, 'TrackerCat1', 'devices.json');
    const list = JSON.parse(readFileSync(file, 'utf8')) as Array<{ deviceName: string; deviceSecret: string }>;
    for (const d of list) if (d.deviceName === 'tr-0001' || d.deviceName === 'tr-0002') d.deviceSecret = `${d.deviceSecret}-new`;
    list.push({ deviceName: 'tr-0100', deviceSecret: 'demo-secret-TrackerCat1-0100' });
    writeFileSync(file, JSON.stringify(list));
    const second = store.seed(loadRegistry(devicesDir).products);
    expect(second).toEqual({ added: ['TrackerCat1/tr-0100'], updated: ['TrackerCat1/tr-0002'], skipped: [] });
    expect(store.get('TrackerCat1', 'tr-0002')?.deviceSecret).toBe('demo-secret-TrackerCat1-0002-new');
    expect(store.get('TrackerCat1', 'tr-0001')).toMatchObject({ deviceSecret: 'demo-secret-TrackerCat1-0001', status: 'disabled', origin: 'cli' });
    store.close();
  });

  it('skips a devices.json entry whose IMEI another device already holds, and seeds the rest', () => {
    const store = openDeviceStore({ path: dbPath, env: noEnv });
    const tr1 = loadRegistry(DEVICES_DIR).device('TrackerCat1', 'tr-0001')!;
    store.add({ productKey: 'TrackerCat1', deviceName: 'other', deviceSecret: 'x', imei: tr1.imei });
    const report = store.seed(loadRegistry(DEVICES_DIR).products);
    expect(report.skipped).toEqual([{ device: 'TrackerCat1/tr-0001', reason: 'its IMEI belongs to another device' }]);
    expect(report.added).toContain('TrackerCat1/tr-0002');
    store.close();
  });

  it('collapses repeats of one audit event within a minute onto one row', () => {
    let t = 1_000_000;
    const store = openDeviceStore({ path: dbPath, env: noEnv, now: () => t });
    const e = { productKey: 'P', deviceName: 'd', event: 'card-mismatch', detail: '89860000000000000000', source: 'mqtt 1.2.3.4:5' };
    store.audit({ ...e, at: t });
    store.audit({ ...e, at: t + 10 });
    store.audit({ ...e, at: t + 20, detail: '89860000000000000001' });
    t += 61_000;
    store.audit({ ...e, at: t });
    const rows = store.listAudit();
    expect(rows.map((r) => [r.detail, r.count])).toEqual([
      ['89860000000000000000', 1],
      ['89860000000000000001', 1],
      ['89860000000000000000', 2],
    ]);
    expect(rows[2]).toMatchObject({ at: 1_000_000, lastAt: 1_000_010, source: 'mqtt 1.2.3.4:5' });
    store.close();
  });
});

describe('registry paths (config registry.*)', () => {
  it('defaults to registry.db next to the buffer, with the key file beside it', () => {
    expect(registryPaths(parseConfig({}))).toEqual({ path: join('data', 'registry.db'), keyFile: join('data', 'registry.db.key') });
    expect(registryPaths(parseConfig({ storage: { path: '/var/lib/wanwu/buffer.db' } }))).toEqual({ path: '/var/lib/wanwu/registry.db', keyFile: '/var/lib/wanwu/registry.db.key' });
    expect(registryPaths(parseConfig({ registry: { path: '/srv/r.db', keyFile: '/etc/wanwu/registry.key' } }))).toEqual({ path: '/srv/r.db', keyFile: '/etc/wanwu/registry.key' });
    const c = parseConfig({});
    expect(c.registry).toEqual({ path: null, keyFile: null, reloadMs: 1000, lastSeenFlushMs: 5000 });
    expect(() => parseConfig({ registry: { reloadMs: 10 } })).toThrow(/registry\.reloadMs/);
  });
});

describe('deviceRefusal and checkCard', () => {
  const device: Device = { productKey: 'P', deviceName: 'd', deviceSecret: 's', iccid: '89860420000000000011' };

  it('refuses a disabled device only', () => {
    expect(deviceRefusal(device)).toBeNull();
    expect(deviceRefusal({ ...device, status: 'enabled' })).toBeNull();
    const e = deviceRefusal({ ...device, status: 'disabled' });
    expect(e?.code).toBe('WANWU_ERR_DEVICE_DISABLED');
    expect([e?.alinkCode, e?.coapCode, e?.fault]).toEqual([6204, '4.03', 'device']);
  });

  it('accepts the bound card in the forms modules report it, and refuses another', () => {
    expect(checkCard(device, '89860420000000000011')).toBeNull();
    expect(checkCard(device, '8986042000000000001')).toBeNull(); // without its check digit
    expect(checkCard({ ...device, iccid: '8986042000000000001F' }, '89860420000000000011')).toBeNull(); // F-padded on record
    expect(checkCard({ ...device, iccid: '8986042000000000001f' }, '8986042000000000001F')).toBeNull();
    expect(normalizeIccid(' 8986042000000000001f ')).toBe('8986042000000000001');
    const e = checkCard(device, '89860420000000000029');
    expect(e?.code).toBe('WANWU_ERR_CARD_MISMATCH');
    expect([e?.alinkCode, e?.coapCode]).toEqual([403, '4.03']);
    expect(checkCard(device, '898604200000000000')).not.toBeNull(); // a shorter prefix is not the card
  });

  it('does not check a device without an ICCID on record, or a product with cardBinding false', () => {
    expect(checkCard({ ...device, iccid: undefined }, '89860420000000000029')).toBeNull();
    expect(checkCard(device, '89860420000000000029', { cardBinding: false })).toBeNull();
    expect(checkCard(device, '89860420000000000029', { cardBinding: true })).not.toBeNull();
  });

  it('reads "cardBinding" from product.json, on by default', () => {
    const registry = loadRegistry(DEVICES_DIR);
    expect(registry.product('TrackerCat1')?.cardBinding).toBe(true);
  });
});

describe('live registry (the gateway\'s view of the store)', () => {
  let dir: ReturnType<typeof tempDir>;
  beforeEach(() => {
    dir = tempDir('wanwu-live-');
  });
  afterEach(() => dir.cleanup());

  const create = () =>
    createLiveRegistry({ devicesDir: DEVICES_DIR, path: join(dir.path, 'registry.db'), env: noEnv, logger: silentLogger, reloadMs: 60_000, lastSeenFlushMs: 60_000 });

  it('serves the seeded devices, and picks up changes made by another connection', () => {
    const live = create();
    live.start();
    try {
      expect(live.deviceCount).toBe(loadRegistry(DEVICES_DIR).deviceCount);
      expect(live.device('TrackerCat1', 'tr-0001')).toMatchObject({ deviceSecret: 'demo-secret-TrackerCat1-0001', status: 'enabled' });
      expect(live.product('TrackerCat1')?.devices.get('tr-0001')?.status).toBe('enabled');
      expect(live.reload()).toBe(false);

      const other = openDeviceStore({ path: join(dir.path, 'registry.db'), env: noEnv });
      other.setStatus('TrackerCat1', 'tr-0001', 'disabled');
      other.add({ productKey: 'TrackerCat1', deviceName: 'tr-cli', deviceSecret: 'cli-secret' });
      other.add({ productKey: 'NoSuchProduct', deviceName: 'x', deviceSecret: 'y' });
      other.close();

      expect(live.reload()).toBe(true);
      expect(live.device('TrackerCat1', 'tr-0001')?.status).toBe('disabled');
      expect(live.device('TrackerCat1', 'tr-cli')?.deviceSecret).toBe('cli-secret');
      expect(live.product('NoSuchProduct')).toBeUndefined();
      expect(live.device('NoSuchProduct', 'x')).toBeUndefined();
      expect(live.deviceCount).toBe(loadRegistry(DEVICES_DIR).deviceCount + 1);
      expect(live.reload()).toBe(false);

      // A row whose secret no longer opens (another device's ciphertext pasted in) is dropped, not kept with its old secret.
      const db = new Database(join(dir.path, 'registry.db'));
      db.prepare(
        "UPDATE devices SET secret = (SELECT secret FROM devices WHERE device_name = 'tr-0002'), rev = (SELECT max(rev) + 1 FROM devices) WHERE device_name = 'tr-0003'",
      ).run();
      db.close();
      live.reload();
      expect(live.device('TrackerCat1', 'tr-0003')).toBeUndefined();
      expect(live.device('TrackerCat1', 'tr-0002')?.deviceSecret).toBe('demo-secret-TrackerCat1-0002');
      expect(live.deviceCount).toBe(loadRegistry(DEVICES_DIR).deviceCount);
    } finally {
      live.stop();
    }
  });

  it('batches last-seen times and writes them on flush and at stop', () => {
    const live = create();
    live.start();
    live.seen!('TrackerCat1', 'tr-0001', 1_700_000_000_000);
    live.seen!('TrackerCat1', 'tr-0001', 1_700_000_005_000);
    live.seen!('TrackerCat1', 'tr-0001', 1_700_000_001_000); // older: ignored
    const peek = () => {
      const s = openDeviceStore({ path: join(dir.path, 'registry.db'), env: noEnv });
      try {
        return s.list({ productKey: 'TrackerCat1' }).find((d) => d.deviceName === 'tr-0001')?.lastSeenAt;
      } finally {
        s.close();
      }
    };
    expect(peek()).toBeNull();
    live.flush();
    expect(peek()).toBe(1_700_000_005_000);
    live.seen!('TrackerCat1', 'tr-0001', 1_700_000_009_000);
    live.stop();
    expect(peek()).toBe(1_700_000_009_000);
  });
});

describe('wanwu devices (command functions)', () => {
  let dir: ReturnType<typeof tempDir>;
  let config: ReturnType<typeof parseConfig>;
  const env = noEnv;
  let n = 0;
  const random = (bytes: number) => Buffer.alloc(bytes, ++n);
  beforeEach(() => {
    dir = tempDir('wanwu-devices-cli-');
    config = parseConfig({ storage: { path: join(dir.path, 'wanwu.db') }, devicesDir: DEVICES_DIR });
  });
  afterEach(() => dir.cleanup());
  const ctx = () => ({ config, env, random });
  const json = (r: { output: string }) => JSON.parse(r.output);

  it('lists the seeded devices of a fresh registry, never with secrets', () => {
    const r = devicesList(ctx(), { json: true });
    expect(r.exitCode).toBe(0);
    const rows = json(r) as Array<Record<string, unknown>>;
    expect(rows).toHaveLength(loadRegistry(DEVICES_DIR).deviceCount);
    expect(rows[0]).toEqual({
      productKey: 'AlarmNB', deviceName: 'al-0001', status: 'enabled', imei: '869143060000013', iccid: '89861130000000000010', origin: 'file',
      createdAt: expect.any(String), updatedAt: expect.any(String), lastSeenAt: null,
    });
    expect(r.output).not.toContain('demo-secret');
    expect(r.errors).toContain('registry key created'); // told on stderr, once
    expect(devicesList(ctx(), {}).errors ?? '').not.toContain('registry key created');
    const text = devicesList(ctx(), { product: 'TrackerCat1' }).output;
    expect(text).toMatch(/^productKey\s+deviceName\s+status\s+imei\s+iccid\s+lastSeenAt\n/);
    expect(text).toMatch(/TrackerCat1\s+tr-0001\s+enabled\s+864376060000014\s+89860420000000000011\s+never/);
    expect(text).toMatch(/\n3 devices, 0 disabled\n$/);
  });

  it('add: generates a secret and prints it once; refuses duplicates, unknown products and bad fields', () => {
    const added = devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0042', imei: '864376060000428', iccid: '89860420000000000425', json: true });
    expect(added.exitCode).toBe(0);
    const out = json(added);
    expect(out).toEqual({ productKey: 'TrackerCat1', deviceName: 'tr-0042', status: 'enabled', imei: '864376060000428', iccid: '89860420000000000425', deviceSecret: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const paths = registryPaths(config);
    const store = openDeviceStore({ path: paths.path, env });
    expect(store.get('TrackerCat1', 'tr-0042')?.deviceSecret).toBe(out.deviceSecret);
    store.close();
    expect(devicesList(ctx(), { json: true }).output).not.toContain(out.deviceSecret);

    const given = devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0043', secret: 'my-own-secret' });
    expect(given.output).toBe('added TrackerCat1/tr-0043\n'); // a given secret is not echoed

    const refusals = [
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0042', json: true }),
      devicesAdd(ctx(), { product: 'Nope', device: 'x', json: true }),
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'bad/name', json: true }),
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0044', imei: '12345', json: true }),
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0045', iccid: 'abc', json: true }),
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0046', imei: '864376060000428', json: true }),
      devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0047', secret: 'has space', json: true }),
    ];
    expect(refusals.map((r) => [r.exitCode, json(r).error.code])).toEqual(Array(7).fill([1, 'WANWU_ERR_DEVICE_RECORD']));
    expect(json(refusals[0]!).error.message).toContain('already registered');
    expect(json(refusals[1]!).error.message).toContain('no product "Nope"');
    expect(json(refusals[5]!).error.message).toContain('IMEI belongs to another device');
    const text = devicesAdd(ctx(), { product: 'Nope', device: 'x' });
    expect([text.exitCode, text.output, text.errors]).toEqual([1, '', expect.stringMatching(/^wanwu: WANWU_ERR_DEVICE_RECORD: productKey: no product "Nope"/)]);
  });

  it('disable, enable and rotate-secret change the registry and leave audit entries', () => {
    const target = { product: 'WaterMeterNB', device: 'wm-0002' };
    expect(devicesSetStatus(ctx(), 'disabled', target).output).toBe('disabled WaterMeterNB/wm-0002\n');
    expect(devicesSetStatus(ctx(), 'disabled', target).output).toBe('WaterMeterNB/wm-0002 was already disabled\n');
    const disabled = json(devicesList(ctx(), { status: 'disabled', json: true }));
    expect(disabled.map((d: { deviceName: string }) => d.deviceName)).toEqual(['wm-0002']);
    expect(json(devicesSetStatus(ctx(), 'enabled', { ...target, json: true }))).toEqual({ productKey: 'WaterMeterNB', deviceName: 'wm-0002', status: 'enabled', changed: true });

    const rotated = json(devicesRotateSecret(ctx(), { ...target, json: true }));
    expect(rotated.deviceSecret).toMatch(/^[0-9a-f]{32}$/);
    const store = openDeviceStore({ path: registryPaths(config).path, env });
    expect(store.get('WaterMeterNB', 'wm-0002')?.deviceSecret).toBe(rotated.deviceSecret);
    store.close();

    const missing = devicesSetStatus(ctx(), 'disabled', { product: 'WaterMeterNB', device: 'wm-9999', json: true });
    expect([missing.exitCode, json(missing).error.code]).toEqual([1, 'WANWU_ERR_DEVICE_RECORD']);
    expect(json(devicesRotateSecret(ctx(), { product: 'WaterMeterNB', device: 'wm-9999', json: true })).error.code).toBe('WANWU_ERR_DEVICE_RECORD');

    const audit = json(devicesAudit(ctx(), { product: 'WaterMeterNB', json: true }));
    expect(audit.map((a: { event: string }) => a.event)).toEqual(['secret-rotated', 'enabled', 'disabled']);
    expect(audit[0]).toMatchObject({ deviceName: 'wm-0002', source: 'cli', count: 1 });
    expect(JSON.stringify(audit)).not.toContain(rotated.deviceSecret);
  });

  it('import: adds good rows, skips registered ones, reports bad ones with their line numbers (exit 2)', () => {
    const csv = join(dir.path, 'devices.csv');
    writeFileSync(
      csv,
      [
        '\ufeffdeviceName,productKey,deviceSecret,imei,iccid,note', //   1 header: any order, extra column ignored, BOM
        'wm-1001,WaterMeterNB,s-1001,867751050010016,89861110000000010017,first', // 2 ok
        'wm-1002,WaterMeterNB,"s,1002""quoted""",,,', //                  3 ok: quoted comma and quotes
        '', //                                                            4 blank
        'wm-0001,WaterMeterNB,whatever,,,', //                            5 seeded already: skipped
        'wm-1003,WaterMeterNB,s-1003,123,,', //                           6 bad IMEI
        'x-1,NoSuchProduct,s,,,', //                                      7 unknown product
        'wm-1004,WaterMeterNB,,,,', //                                    8 empty secret
        'wm-1005,WaterMeterNB,s-1005,867751050010016,,', //              9 IMEI of line 2
        '"wm-1006",WaterMeterNB,s-1006,,,"a note', //                    10-11 a quoted line break is one record
        'on two lines"', //
        'wm-1007,WaterMeterNB,s-1007,,,,,', //                            12 more fields than the header
      ].join('\r\n'),
    );
    const r = devicesImport(ctx(), csv, { json: true });
    expect(r.exitCode).toBe(2);
    const report = json(r);
    expect(report.added).toBe(3);
    expect(report.skipped).toEqual([{ line: 5, device: 'WaterMeterNB/wm-0001', reason: expect.stringContaining('already registered') }]);
    expect(report.errors.map((e: { line: number; code: string }) => [e.line, e.code])).toEqual([
      [6, 'WANWU_ERR_DEVICE_RECORD'],
      [7, 'WANWU_ERR_DEVICE_RECORD'],
      [8, 'WANWU_ERR_DEVICE_RECORD'],
      [9, 'WANWU_ERR_DEVICE_RECORD'],
      [12, 'WANWU_ERR_DEVICE_RECORD'],
    ]);
    expect(report.errors[0].message).toContain('imei');
    expect(report.errors[3].message).toContain('IMEI belongs to another device');
    const store = openDeviceStore({ path: registryPaths(config).path, env });
    expect(store.get('WaterMeterNB', 'wm-1002')?.deviceSecret).toBe('s,1002"quoted"');
    expect(store.get('WaterMeterNB', 'wm-1006')?.deviceSecret).toBe('s-1006');
    expect(store.get('WaterMeterNB', 'wm-0001')?.deviceSecret).toBe('demo-secret-WaterMeterNB-0001'); // not overwritten
    expect(store.get('WaterMeterNB', 'wm-1003')).toBeUndefined();
    store.close();

    // Importing the same file again adds nothing more.
    const again = json(devicesImport(ctx(), csv, { json: true }));
    expect([again.added, again.skipped.length]).toEqual([0, 4]);

    const text = devicesImport(ctx(), csv);
    expect(text.output).toMatch(/^0 added, 4 skipped, 5 refused\n/);
    expect(text.output).toContain(`error ${csv}:6: WaterMeterNB/wm-1003: WANWU_ERR_DEVICE_RECORD: imei:`);
  });

  it('import: refuses a file without the required columns, or that cannot be read (exit 1)', () => {
    const csv = join(dir.path, 'bad.csv');
    writeFileSync(csv, 'productKey,deviceName\nWaterMeterNB,wm-2000\n');
    const r = devicesImport(ctx(), csv, { json: true });
    expect([r.exitCode, json(r).error.code]).toEqual([1, 'WANWU_ERR_DEVICE_RECORD']);
    expect(json(r).error.message).toContain('line 1: the header lacks deviceSecret');
    const missing = devicesImport(ctx(), join(dir.path, 'none.csv'), { json: true });
    expect([missing.exitCode, json(missing).error.code]).toEqual([1, 'WANWU_ERR_DEVICE_RECORD']);
    writeFileSync(csv, 'productKey,deviceName,deviceSecret\nWaterMeterNB,"wm-2000,s\n');
    expect(json(devicesImport(ctx(), csv, { json: true })).error.message).toContain('line 2: a quoted field is not closed');
  });

  it('wanwu sign --config signs with the registry\'s secret (added or rotated with wanwu devices), as an MQTT login or a CoAP /auth body', async () => {
    devicesAdd(ctx(), { product: 'TrackerCat1', device: 'tr-0300', secret: 'registry-only-secret' });
    const file = join(dir.path, 'config.json');
    writeFileSync(file, JSON.stringify({ storage: { path: join(dir.path, 'wanwu.db') }, devicesDir: DEVICES_DIR }));
    const out: string[] = [];
    const write = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    let code: number;
    try {
      code = await main(['node', 'wanwu', 'sign', '--config', file, '--product', 'TrackerCat1', '--device', 'tr-0300', '--json']);
    } finally {
      write.mockRestore();
    }
    expect(code).toBe(0);
    const creds = JSON.parse(out.join('')) as { clientId: string; username: string; password: string };
    const login = parseMqttLogin(creds.clientId, creds.username);
    expect(verifySign(login, 'registry-only-secret', creds.password)).toBe(true);

    // --coap: the body of a CoAP POST /auth, with the same sign over the same content.
    out.length = 0;
    const write2 = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
      out.push(String(chunk));
      return true;
    });
    const before = Date.now();
    try {
      code = await main(['node', 'wanwu', 'sign', '--config', file, '--product', 'TrackerCat1', '--device', 'tr-0300', '--coap', '--method', 'hmacsha1']);
    } finally {
      write2.mockRestore();
    }
    expect(code).toBe(0);
    const body = JSON.parse(out.join('')) as Record<string, string>;
    expect(Object.keys(body)).toEqual(['productKey', 'deviceName', 'clientId', 'timestamp', 'signmethod', 'sign']);
    expect(body).toMatchObject({ productKey: 'TrackerCat1', deviceName: 'tr-0300', clientId: 'tr-0300', signmethod: 'hmacsha1' });
    expect(Number(body.timestamp)).toBeGreaterThanOrEqual(before);
    const coapLogin = { id: body.clientId!, productKey: body.productKey!, deviceName: body.deviceName!, signMethod: 'hmacsha1' as const, timestamp: body.timestamp! };
    expect(verifySign(coapLogin, 'registry-only-secret', body.sign)).toBe(true);
    expect(verifySign(coapLogin, 'another-secret', body.sign)).toBe(false);
  });

  it('parses RFC 4180 CSV', () => {
    expect(parseCsv('a,b\n"x,1","y""z"\n\n1,\n')).toEqual([
      { line: 1, fields: ['a', 'b'] },
      { line: 2, fields: ['x,1', 'y"z'] },
      { line: 3, fields: [''] },
      { line: 4, fields: ['1', ''] },
    ]);
  });
});
