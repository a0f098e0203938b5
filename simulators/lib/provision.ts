// `wanwu-sim provision`: adds generated devices to every product of a devices folder, so a load
// test can run fleets larger than the handful of sample devices.
//
// THE GENERATED SECRETS ARE FOR LOAD TESTS ONLY. They are written in clear text to devices.json,
// next to the demo devices; never provision production devices this way.
//
// For each product folder (every non-hidden folder holding a product.json, as the registry reads
// them) devices.json is rewritten with the existing entries first, unchanged and in their order,
// then `count` new ones:
//   deviceName    {prefix}-{short}-{n}: short = the productKey lower-cased (cut to fit 64
//                 characters), n = 6 digits (more when needed) continuing after the highest
//                 {prefix}-{short}-n already there, so a second run adds more instead of repeating.
//   deviceSecret  32 hex digits (16 bytes of crypto randomBytes, or `random` when given: tests).
//   imei          15 digits: the product's TAC (its first device's first 8 digits, else 86 + 6
//                 random digits), 6 serial digits and the Luhn check digit (3GPP TS 23.003 §6.2.1).
//                 Unique across the whole folder: the registry refuses an IMEI used twice.
//   iccid         20 digits: 89 (telecom) 86 (China, ITU-T E.118) + the issuer digits of the
//                 product's first ICCID (else 00), serial digits and the Luhn check digit.
// The file is replaced atomically (written beside it, then renamed), so a gateway loading the
// folder meanwhile reads either the old or the new list, never half of one.

import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, renameSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface ProvisionOptions {
  /** First part of generated names. Default "sim". */
  prefix?: string;
  /** Uniform in [0, 1): replaces crypto randomness (reproducible tests). */
  random?: () => number;
}

export interface ProvisionResult {
  productKey: string;
  added: number;
  /** Devices in devices.json afterwards. */
  total: number;
}

interface DeviceEntry {
  deviceName?: unknown;
  imei?: unknown;
  iccid?: unknown;
  [key: string]: unknown;
}

const NAME_MAX = 64;
const NAME_CHARS = /[^A-Za-z0-9_.:@-]/g;
const SERIAL_DIGITS = 6;

/** Adds `count` generated devices to every product folder in `devicesDir`. */
export function provisionDevices(devicesDir: string, count: number, opts: ProvisionOptions = {}): ProvisionResult[] {
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`count must be a non-negative integer, got ${count}`);
  const prefix = (opts.prefix ?? 'sim').replace(NAME_CHARS, '');
  if (prefix === '') throw new RangeError('prefix must contain letters, digits or _ . : @ -');
  const draw = opts.random ?? cryptoRandom();
  const folders = productFolders(devicesDir);
  const lists = folders.map((folder) => ({ folder, devices: readDevices(path.join(devicesDir, folder, 'devices.json')) }));

  // IMEIs must be unique across products (the registry checks); ICCIDs are kept unique too.
  const imeis = new Set<string>();
  const iccids = new Set<string>();
  for (const { devices } of lists) {
    for (const d of devices) {
      if (typeof d.imei === 'string') imeis.add(d.imei);
      if (typeof d.iccid === 'string') iccids.add(d.iccid);
    }
  }

  return lists.map(({ folder, devices }) => {
    const stem = nameStem(prefix, folder);
    const names = new Set(devices.map((d) => d.deviceName).filter((n): n is string => typeof n === 'string'));
    const tac = prefixOf(devices, 'imei', 8) ?? `86${digits(draw, 6)}`;
    const issuer = prefixOf(devices, 'iccid', 6)?.slice(4) ?? '00';
    let n = highestSerial(names, stem);
    const added: DeviceEntry[] = [];
    for (let i = 0; i < count; i++) {
      let deviceName: string;
      do deviceName = `${stem}${String(++n).padStart(SERIAL_DIGITS, '0')}`;
      while (names.has(deviceName));
      if (deviceName.length > NAME_MAX) throw new RangeError(`${folder}: device name ${deviceName} is longer than ${NAME_MAX} characters`);
      names.add(deviceName);
      added.push({
        deviceName,
        deviceSecret: opts.random ? hex(opts.random, 32) : randomBytes(16).toString('hex'),
        imei: unique(imeis, () => withLuhn(tac + digits(draw, 14 - tac.length))),
        iccid: unique(iccids, () => withLuhn(`8986${issuer}${digits(draw, 19 - 4 - issuer.length)}`)),
      });
    }
    const all = [...devices, ...added];
    writeAtomically(path.join(devicesDir, folder, 'devices.json'), `${JSON.stringify(all, null, 2)}\n`);
    return { productKey: folder, added: added.length, total: all.length };
  });
}

/** Folders the registry reads as products (it requires product.json in each; the folder name is the productKey). */
function productFolders(devicesDir: string): string[] {
  return readdirSync(devicesDir, { withFileTypes: true })
    .filter((d) => d.isDirectory() && !d.name.startsWith('.') && existsSync(path.join(devicesDir, d.name, 'product.json')))
    .map((d) => d.name)
    .sort();
}

function readDevices(file: string): DeviceEntry[] {
  if (!existsSync(file)) return [];
  const text = readFileSync(file, 'utf8');
  let json: unknown;
  try {
    json = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
  } catch (err) {
    throw new Error(`${file}: invalid JSON (${(err as Error).message})`, { cause: err });
  }
  if (json === null) return [];
  if (!Array.isArray(json)) throw new Error(`${file}: expected an array of devices`);
  return json as DeviceEntry[];
}

/** `{prefix}-{short}-`, cut so that a name with its serial stays within 64 characters. */
function nameStem(prefix: string, productKey: string): string {
  const short = productKey.toLowerCase().replace(NAME_CHARS, '');
  const room = NAME_MAX - SERIAL_DIGITS - prefix.length - 2;
  return `${prefix}-${short.slice(0, Math.max(1, Math.min(16, room)))}-`;
}

function highestSerial(names: Iterable<string>, stem: string): number {
  let max = 0;
  for (const name of names) {
    if (!name.startsWith(stem)) continue;
    const tail = name.slice(stem.length);
    if (/^\d+$/.test(tail)) max = Math.max(max, Number(tail));
  }
  return max;
}

/** The first `length` characters of the first device's digit string `key`, if any device has one. */
function prefixOf(devices: DeviceEntry[], key: 'imei' | 'iccid', length: number): string | undefined {
  for (const d of devices) {
    const v = d[key];
    if (typeof v === 'string' && /^\d+$/.test(v.slice(0, length)) && v.length > length) return v.slice(0, length);
  }
  return undefined;
}

function unique(seen: Set<string>, make: () => string): string {
  for (let i = 0; i < 1000; i++) {
    const v = make();
    if (!seen.has(v)) {
      seen.add(v);
      return v;
    }
  }
  throw new Error('could not generate a unique IMEI/ICCID (the number space is nearly full)');
}

/** The Luhn check digit appended (IMEI, ICCID). */
export function withLuhn(body: string): string {
  let sum = 0;
  for (let i = 0; i < body.length; i++) {
    // Doubling starts from the digit next to the check digit, i.e. the last one of the body.
    let d = body.charCodeAt(body.length - 1 - i) - 48;
    if (i % 2 === 0) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return body + String((10 - (sum % 10)) % 10);
}

function digits(draw: () => number, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += String(Math.floor(draw() * 10));
  return s;
}

function hex(draw: () => number, n: number): string {
  let s = '';
  for (let i = 0; i < n; i++) s += '0123456789abcdef'[Math.floor(draw() * 16)];
  return s;
}

/** Uniform in [0, 1) from crypto randomness (48 bits a draw), buffered. */
function cryptoRandom(): () => number {
  let buf = randomBytes(0);
  let at = 0;
  return () => {
    if (at + 6 > buf.length) {
      buf = randomBytes(6 * 256);
      at = 0;
    }
    const v = buf.readUIntBE(at, 6) / 2 ** 48;
    at += 6;
    return v;
  };
}

/** Writes beside the target, then renames over it (atomic on one file system). */
function writeAtomically(file: string, text: string): void {
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.${Date.now()}.tmp`);
  try {
    writeFileSync(tmp, text, { mode: existsSync(file) ? statSync(file).mode & 0o777 : 0o644 });
    renameSync(tmp, file);
  } catch (err) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw err;
  }
}
