// Products and devices, loaded once at start from devices/ (ARCHITECTURE.md "Products live in devices/"):
//   devices/<productKey>/product.json   {"productKey", "name", "rat", "codec": {"type", ...}, "description"?}
//   devices/<productKey>/model.json     Alibaba TSL thing model (optional: without it values pass unvalidated)
//   devices/<productKey>/devices.json   [{"deviceName", "deviceSecret", "imei"?, "iccid"?}] (optional)
// Anything broken is refused with WANWU_ERR_PRODUCT naming the file and key path.
// loadRegistry() reads devices from devices.json only (tools, simulator). The gateway's registry
// (live.ts) keeps products from here and devices from the SQLite device store (store.ts), which
// devices.json seeds; deviceRefusal() and checkCard() are the checks every entry point applies.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { WanwuError } from '../errors.js';
import { DefinitionReader, keyPath } from '../thing-model/check.js';
import { buildCodec } from '../thing-model/codecs/index.js';
import { parseThingModel, type ThingModel } from '../thing-model/tsl.js';
import type { Codec } from '../thing-model/types.js';
import { compileModel } from '../thing-model/validate.js';
import { RATS, type Rat } from '../types.js';
import { COAP_DELIVERY_MODES, COAP_WINDOW_MAX_S, type CoapDeliveryMode } from '../config/schema.js';

export type DeviceStatus = 'enabled' | 'disabled';

export interface Device {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  imei?: string;
  iccid?: string;
  /** Absent = enabled (devices.json has no status). A disabled device stays known but is refused: see deviceRefusal(). */
  status?: DeviceStatus;
}

export interface Product {
  productKey: string;
  name: string;
  rat: Rat;
  /** The product's folder, as given to loadRegistry. */
  dir: string;
  model: ThingModel | null;
  /** Built once at load. */
  codec: Codec;
  devices: ReadonlyMap<string, Device>;
  /**
   * Card binding (机卡绑定): a device with an ICCID on record must present that ICCID. product.json
   * `"cardBinding": false` turns it off for the product; absent = on.
   */
  cardBinding?: boolean;
  /**
   * CoAP authentication (src/transport/coap/auth.ts): 'sign' (absent = 'sign') requires a token from
   * POST /auth when coap.auth.mode is 'required'; 'none' lets the product's devices post without
   * one (lab use; the gateway warns at start).
   */
  auth?: ProductAuth;
  /**
   * CoAP payload encryption (src/transport/coap/encryption.ts, Alibaba's symmetric mode): the
   * product's CoAP devices encrypt payloads and sequence numbers with a key from their token's
   * `random`, and get encrypted answers. product.json `"coapEncryption": "aes-128-cbc"`; absent (or
   * "none") = off, and then the field is absent.
   */
  coapEncryption?: CoapEncryption;
  /**
   * Dynamic registration (Alibaba's 一型一密, with pre-registration): a device listed in the registry
   * that knows this product secret may fetch its device secret once, over MQTT on TLS, until it is
   * first seen. Absent = off (the default).
   */
  productSecret?: string;
  /**
   * Device liveness (src/downlink/liveness.ts): product.json `"liveness": {"activeWindowS"?,
   * "reportIntervalS"?, "toleranceS"?, "toleranceRatio"?}`, each overriding config
   * downlink.liveness for the product's devices. Absent = the config's values.
   */
  liveness?: ProductLiveness;
  /**
   * Commands to the product's CoAP devices (src/transport/coap/delivery.ts): product.json
   * `"downlink": {"coap"?: "piggyback" | "push", "windowS"?: 1-3600}`, each overriding config
   * downlink.coap (delivery, windowS). Absent = the config's values.
   */
  downlink?: ProductDownlink;
}

/** product.json `downlink`: how commands reach the product's CoAP devices. */
export interface ProductDownlink {
  coap?: CoapDeliveryMode;
  /** push: s after each uplink during which the gateway pushes. */
  windowS?: number;
}

/** product.json `liveness`: seconds, except toleranceRatio (a share of the report interval). */
export interface ProductLiveness {
  activeWindowS?: number;
  reportIntervalS?: number;
  toleranceS?: number;
  toleranceRatio?: number;
}

/** product.json `auth`: how the product's CoAP devices authenticate. */
export const PRODUCT_AUTH = ['sign', 'none'] as const;
export type ProductAuth = (typeof PRODUCT_AUTH)[number];

/** product.json `coapEncryption`: "none" (the default) or Alibaba's CoAP symmetric mode. */
export const PRODUCT_COAP_ENCRYPTION = ['none', 'aes-128-cbc'] as const;
export type CoapEncryption = Exclude<(typeof PRODUCT_COAP_ENCRYPTION)[number], 'none'>;

/** Something the registry keeps in its audit table (store.ts), e.g. a refused card. */
export interface AuditEntry {
  /** ms since the epoch. */
  at: number;
  productKey: string;
  deviceName: string;
  /** What happened: 'card-mismatch', or an operator action ('added', 'disabled', 'enabled', 'secret-rotated'). */
  event: string;
  /** The presented value or other detail. Never a secret. */
  detail?: string;
  /** Where it came from: `mqtt 10.0.0.5:51234`, `cli`. */
  source?: string;
}

export interface Registry {
  product(productKey: string): Product | undefined;
  device(productKey: string, deviceName: string): Device | undefined;
  /** Sorted by productKey. */
  readonly products: readonly Product[];
  readonly deviceCount: number;
  /** Things worth an operator's eye that do not stop the start (e.g. TSL keys Wanwu ignores), one line each. */
  readonly warnings: readonly string[];
  /** Notes an accepted uplink (the gateway's registry batches these into last-seen times). */
  seen?(productKey: string, deviceName: string, at: number): void;
  /** Keeps an audit entry and logs it (rate-limited). Registries without a store ignore it. */
  audit?(entry: AuditEntry): void;
  /**
   * Dynamic registration: gives a device a new secret and returns it, once per activation: refused
   * with WANWU_ERR_REGISTRATION once the device has been seen. Registries without a store lack it.
   */
  register?(productKey: string, deviceName: string): string;
}

/** The parsed contents of one product folder (what loadRegistry reads; tests build products from it directly). */
export interface ProductSource {
  /** The product's folder; its last segment must equal product.json's productKey. Files are named under it in errors. */
  dir: string;
  product: unknown;
  /** model.json; null or undefined when the product has none. */
  model?: unknown;
  /** devices.json; null or undefined when the product has none. */
  devices?: unknown;
}

// Keys end up in topics (/sys/{productKey}/{deviceName}/...): the same alphabet src/thing-model/topic.ts accepts.
const TOPIC_NAME = { re: /^[A-Za-z0-9_.:@\-]{1,64}$/, what: 'a name of 1-64 letters, digits or _ . : @ -' };
const IMEI = { re: /^\d{15}$/, what: 'a 15-digit IMEI' };
const PRODUCT_SECRET = { re: /^[\x21-\x7e]{16,64}$/, what: 'a product secret of 16-64 printable characters' };
const ICCID = { re: /^\d{18,19}[\dFf]$/, what: 'a 19-20 digit ICCID' };
// Alibaba IoT's DeviceSecret is 32 characters; any printable ASCII without spaces, up to 128, is taken.
const SECRET = { re: /^[\x21-\x7e]{1,128}$/, what: 'a secret of 1-128 printable ASCII characters without spaces' };
/** The formats of a device record's fields, shared by devices.json and `wanwu devices`. */
export const DEVICE_FIELD_FORMATS = Object.freeze({ deviceName: TOPIC_NAME, deviceSecret: SECRET, imei: IMEI, iccid: ICCID });
const PRODUCT_KEYS = ['productKey', 'name', 'rat', 'codec', 'description', 'cardBinding', 'auth', 'coapEncryption', 'dynamicRegistration', 'liveness', 'downlink'] as const;

/**
 * Why a known device may not send: null when it may. Called by the pipeline for every uplink (and
 * meant for the listeners' logins), so `wanwu devices disable` takes effect on every entry point.
 */
export function deviceRefusal(device: Device): WanwuError | null {
  if (device.status === 'disabled') {
    return new WanwuError('WANWU_ERR_DEVICE_DISABLED', `device ${device.productKey}/${device.deviceName} is disabled`);
  }
  return null;
}

/**
 * An ICCID in one canonical form: upper case, without the "F" padding some modules append to a
 * 19-digit ICCID (ITU-T E.118 numbers are at most 19 digits plus the Luhn check digit; AT+CCID
 * answers vary between modules).
 */
export function normalizeIccid(iccid: string): string {
  return iccid.trim().toUpperCase().replace(/F+$/, '');
}

/**
 * Card binding (机卡绑定, required by MIIT for IoT cards): a device whose record holds an ICCID must
 * present that ICCID (at a CoAP auth, or as its `iccid` property). Null when it does, when the record
 * holds none, or when the product turns binding off ("cardBinding": false in product.json). A
 * presented ICCID without its check digit (19 digits) matches the 20-digit one on record it begins.
 */
export function checkCard(device: Device, presentedIccid: string, product?: Pick<Product, 'cardBinding'>): WanwuError | null {
  if (device.iccid === undefined || product?.cardBinding === false) return null;
  const want = normalizeIccid(device.iccid);
  const got = normalizeIccid(presentedIccid);
  if (got === want) return null;
  if (/^\d{19}$/.test(got) && want.length === 20 && want.startsWith(got)) return null;
  if (/^\d{19}$/.test(want) && got.length === 20 && got.startsWith(want)) return null;
  return new WanwuError('WANWU_ERR_CARD_MISMATCH', `device ${device.productKey}/${device.deviceName} presented ICCID ${JSON.stringify(presentedIccid.slice(0, 32))}, not the card bound to it`, {
    detail: { presented: presentedIccid.slice(0, 32) },
  });
}

/**
 * Checks one product's definition and builds its codec and validators. Throws WANWU_ERR_PRODUCT.
 * `warn` receives what does not stop the load: keys model.json carries that Wanwu does not use (one
 * line per key name), and an export's profile.productKey that differs from this product's.
 */
export function createProduct(src: ProductSource, warn?: (line: string) => void): Product {
  const dir = src.dir;
  const r = new DefinitionReader(path.join(dir, 'product.json'));
  const p = r.object(src.product, '');
  // product.json is Wanwu's own format: an unknown key is most likely a typo, so it is refused.
  r.onlyKeys(p, '', PRODUCT_KEYS);
  const productKey = r.string(p.productKey, 'productKey', TOPIC_NAME);
  const folder = path.basename(path.resolve(dir));
  if (productKey !== folder) r.fail('productKey', `"${productKey}" does not match its folder name "${folder}"`);
  const name = r.string(p.name, 'name');
  const rat = r.oneOf(p.rat, 'rat', RATS);
  r.optionalString(p.description, 'description');
  const cardBinding = p.cardBinding === undefined ? true : r.boolean(p.cardBinding, 'cardBinding');
  const auth: ProductAuth = p.auth === undefined ? 'sign' : r.oneOf(p.auth, 'auth', PRODUCT_AUTH);
  const encryption = p.coapEncryption === undefined ? 'none' : r.oneOf(p.coapEncryption, 'coapEncryption', PRODUCT_COAP_ENCRYPTION);
  // The key comes from the token's `random` (POST /auth): a product without tokens has no key.
  if (encryption !== 'none' && auth === 'none') r.fail('coapEncryption', `"${encryption}" needs the key that POST /auth hands out, so it cannot go with "auth": "none"`);
  let productSecret: string | undefined;
  if (p.dynamicRegistration !== undefined) {
    const d = r.object(p.dynamicRegistration, 'dynamicRegistration');
    r.onlyKeys(d, 'dynamicRegistration', ['productSecret'] as const);
    // Checked by hand: the reader's messages quote the value, and a secret must not end up in a log.
    if (typeof d.productSecret !== 'string' || !PRODUCT_SECRET.re.test(d.productSecret)) {
      r.fail('dynamicRegistration.productSecret', `expected ${PRODUCT_SECRET.what} (the value is not shown)`);
    }
    productSecret = d.productSecret as string;
  }
  const liveness = p.liveness === undefined ? undefined : parseLiveness(r, p.liveness);
  const downlink = p.downlink === undefined ? undefined : parseDownlink(r, p.downlink);

  const modelFile = path.join(dir, 'model.json');
  const model = src.model === undefined || src.model === null ? null : parseThingModel(src.model, modelFile, warn);
  if (model) {
    compileModel(model);
    // An export keeps the productKey it was made from; importing it under another product is fine.
    const exported = model.profile?.productKey;
    if (warn && typeof exported === 'string' && exported !== productKey) {
      warn(`${modelFile}: profile.productKey: "${exported}" is not this product's "${productKey}" (an export from another product? kept; Wanwu uses the folder's productKey)`);
    }
  }
  const codec = buildCodec(p.codec, { productKey, model, reader: r, path: 'codec', dir });
  const devices = src.devices === undefined || src.devices === null ? new Map<string, Device>() : parseDevices(src.devices, productKey, dir);

  return Object.freeze({ productKey, name, rat, dir, model, codec, devices, cardBinding, auth, ...(encryption === 'none' ? {} : { coapEncryption: encryption }), ...(productSecret ? { productSecret } : {}), ...(liveness ? { liveness } : {}), ...(downlink ? { downlink } : {}) });
}

/** product.json `downlink`: the same values as config downlink.coap (src/config/schema.ts). */
function parseDownlink(r: DefinitionReader, value: unknown): ProductDownlink {
  const o = r.object(value, 'downlink');
  r.onlyKeys(o, 'downlink', ['coap', 'windowS'] as const);
  const out: ProductDownlink = {};
  if (o.coap !== undefined) out.coap = r.oneOf(o.coap, 'downlink.coap', COAP_DELIVERY_MODES);
  if (o.windowS !== undefined) out.windowS = r.integer(o.windowS, 'downlink.windowS', { min: 1, max: COAP_WINDOW_MAX_S });
  return Object.freeze(out);
}

/** product.json `liveness`: the same bounds as config downlink.liveness (src/config/schema.ts). */
function parseLiveness(r: DefinitionReader, value: unknown): ProductLiveness {
  const o = r.object(value, 'liveness');
  r.onlyKeys(o, 'liveness', ['activeWindowS', 'reportIntervalS', 'toleranceS', 'toleranceRatio'] as const);
  const out: ProductLiveness = {};
  const month = 31 * 86_400;
  if (o.activeWindowS !== undefined) out.activeWindowS = r.integer(o.activeWindowS, 'liveness.activeWindowS', { min: 1, max: 86_400 });
  if (o.reportIntervalS !== undefined) out.reportIntervalS = r.integer(o.reportIntervalS, 'liveness.reportIntervalS', { min: 10, max: month });
  if (o.toleranceS !== undefined) out.toleranceS = r.integer(o.toleranceS, 'liveness.toleranceS', { min: 0, max: month });
  if (o.toleranceRatio !== undefined) {
    const ratio = r.number(o.toleranceRatio, 'liveness.toleranceRatio');
    if (ratio < 0 || ratio > 10) r.fail('liveness.toleranceRatio', `${ratio} is not between 0 and 10`);
    out.toleranceRatio = ratio;
  }
  return Object.freeze(out);
}

function parseDevices(json: unknown, productKey: string, dir: string): Map<string, Device> {
  const r = new DefinitionReader(path.join(dir, 'devices.json'));
  const devices = new Map<string, Device>();
  const index = new Map<string, number>();
  r.array(json, '').forEach((entry, i) => {
    const at = keyPath('', i);
    // Extra keys (notes, SIM vendor ...) are tolerated: only these are read.
    const o = r.object(entry, at);
    const deviceName = r.string(o.deviceName, keyPath(at, 'deviceName'), TOPIC_NAME);
    const first = index.get(deviceName);
    if (first !== undefined) r.fail(keyPath(at, 'deviceName'), `duplicate deviceName "${deviceName}" (also [${first}])`);
    index.set(deviceName, i);
    const device: Device = { productKey, deviceName, deviceSecret: r.string(o.deviceSecret, keyPath(at, 'deviceSecret'), SECRET) };
    if (o.imei !== undefined) device.imei = r.string(o.imei, keyPath(at, 'imei'), IMEI);
    if (o.iccid !== undefined) device.iccid = r.string(o.iccid, keyPath(at, 'iccid'), ICCID);
    devices.set(deviceName, Object.freeze(device));
  });
  return devices;
}

/** Every product folder checked, broken ones included: what `wanwu models check` reports. */
export interface ProductReport {
  products: Product[];
  /** One WANWU_ERR_PRODUCT per broken folder (file and key named). */
  errors: WanwuError[];
  warnings: string[];
}

/**
 * Checks every product folder under `devicesDir` without stopping at the first broken one. Throws
 * WANWU_ERR_PRODUCT only when the folder itself is missing or holds no product.
 */
export function inspectProducts(devicesDir: string): ProductReport {
  const shown = displayPath(devicesDir);
  let names: string[];
  try {
    names = readdirSync(devicesDir, { withFileTypes: true })
      .filter((d) => d.isDirectory() && !d.name.startsWith('.'))
      .map((d) => d.name)
      .sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'directory not found' : code === 'ENOTDIR' ? 'not a directory' : (err as Error).message;
    throw new WanwuError('WANWU_ERR_PRODUCT', `${shown}: ${why} (expected ${shown}/<productKey>/product.json)`, { cause: err, detail: { file: shown } });
  }
  if (names.length === 0) {
    throw new WanwuError('WANWU_ERR_PRODUCT', `${shown}: no products (expected ${shown}/<productKey>/product.json)`, { detail: { file: shown } });
  }

  const report: ProductReport = { products: [], errors: [], warnings: [] };
  const imeis = new Map<string, string>();
  for (const folder of names) {
    const dir = path.join(shown, folder);
    try {
      const product = createProduct(readProductSource(devicesDir, folder), (line) => report.warnings.push(line));
      // NB-IoT platforms identify devices by IMEI: one IMEI must not name two devices.
      let i = 0;
      for (const d of product.devices.values()) {
        if (d.imei !== undefined) {
          const other = imeis.get(d.imei);
          if (other !== undefined) {
            new DefinitionReader(path.join(dir, 'devices.json')).fail(`[${i}].imei`, `"${d.imei}" is already used by ${other}`);
          }
          imeis.set(d.imei, `${d.productKey}/${d.deviceName}`);
        }
        i++;
      }
      report.products.push(product);
    } catch (err) {
      report.errors.push(err instanceof WanwuError ? err : new WanwuError('WANWU_ERR_PRODUCT', `${dir}: ${(err as Error).message}`, { cause: err }));
    }
  }
  report.products.sort((a, b) => (a.productKey < b.productKey ? -1 : a.productKey > b.productKey ? 1 : 0));
  return report;
}

/** Loads every product folder under `devicesDir` (synchronously, at start). Throws the first WANWU_ERR_PRODUCT. */
export function loadRegistry(devicesDir: string): Registry {
  const { products, errors, warnings } = inspectProducts(devicesDir);
  if (errors.length > 0) throw errors[0]!;
  const byKey = new Map(products.map((p) => [p.productKey, p]));
  const deviceCount = products.reduce((n, p) => n + p.devices.size, 0);
  return Object.freeze({
    products: Object.freeze(products),
    deviceCount,
    warnings: Object.freeze(warnings),
    product: (productKey: string) => byKey.get(productKey),
    device: (productKey: string, deviceName: string) => byKey.get(productKey)?.devices.get(deviceName),
  });
}

/** The JSON files of one product folder, read and parsed (not yet checked). Throws WANWU_ERR_PRODUCT. */
export function readProductSource(devicesDir: string, folder: string): ProductSource {
  const dir = path.join(displayPath(devicesDir), folder);
  return {
    dir,
    product: readJson(path.join(devicesDir, folder, 'product.json'), path.join(dir, 'product.json'), true),
    model: readJson(path.join(devicesDir, folder, 'model.json'), path.join(dir, 'model.json'), false),
    devices: readJson(path.join(devicesDir, folder, 'devices.json'), path.join(dir, 'devices.json'), false),
  };
}

/** Parsed JSON, or null when an optional file is absent. */
function readJson(file: string, shown: string, required: boolean): unknown {
  let text: string;
  try {
    if (!statSync(file).isFile()) throw Object.assign(new Error('not a file'), { code: 'EISDIR' });
    text = readFileSync(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !required) return null;
    const why = (err as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing (every folder in devices/ is a product)' : (err as Error).message;
    throw new WanwuError('WANWU_ERR_PRODUCT', `${shown}: ${why}`, { cause: err, detail: { file: shown } });
  }
  try {
    return JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text); // tolerate a BOM from Windows editors
  } catch (err) {
    throw new WanwuError('WANWU_ERR_PRODUCT', `${shown}: invalid JSON (${(err as Error).message})`, { cause: err, detail: { file: shown } });
  }
}

/** Relative to the working directory when under it, else as given. */
function displayPath(p: string): string {
  const rel = path.relative(process.cwd(), path.resolve(p));
  return rel !== '' && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : p;
}
