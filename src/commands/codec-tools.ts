// `wanwu decode` and `wanwu encode`: a product's codec and thing model, offline, for people writing
// or debugging a product definition. Decode prints the normalized record(s) a gateway would forward;
// encode prints the bytes a device would send.

import { readFileSync } from 'node:fs';
import { asWanwuError, WanwuError } from '../errors.js';
import { toRecords } from '../pipeline.js';
import { createProduct, loadRegistry, readProductSource, type Product } from '../registry/index.js';
import { decodeUplink } from '../thing-model/index.js';
import { parseUplinkTopic } from '../thing-model/topic.js';
import type { Transport, UplinkRoute } from '../types.js';

export interface CommandResult {
  exitCode: number;
  output: string;
}

export interface DecodeOptions {
  devices: string;
  product: string;
  device?: string;
  topic?: string;
  transport?: string;
  /** For script codecs: input.fPort given to decodeUplink (LoRaWAN-style codecs switch on it). */
  fport?: string;
  hex?: string;
  base64?: string;
  file?: string;
}

export interface EncodeOptions {
  devices: string;
  product: string;
  device?: string;
  topic?: string;
  event?: string;
  data: string;
  time?: string;
  id?: string;
  format?: string;
}

/** Decodes one payload; the output is the record (or an array when the payload yields several). */
export function decodeCommand(opts: DecodeOptions): CommandResult {
  try {
    const product = opts.fport === undefined ? productOf(opts.devices, opts.product) : withFPort(opts.devices, opts.product, opts.fport);
    const deviceName = opts.device ?? firstDevice(product);
    const { topic, route } = resolveTopic(product, deviceName, opts.topic);
    const payload = readPayload(opts);
    const result = decodeUplink(product, route, payload);
    if (!result.ok) return failure(result.error);
    const transport = transportOf(product, opts.transport);
    const records = toRecords({ transport, productKey: product.productKey, deviceName, topic, receivedAt: Date.now(), peer: 'wanwu-decode' }, product, result.items, result.msgId);
    return { exitCode: 0, output: `${JSON.stringify(records.length === 1 ? records[0] : records, null, 2)}\n` };
  } catch (err) {
    return failure(asWanwuError(err));
  }
}

/** Encodes one item with the product's codec; prints hex (default) or base64. */
export function encodeCommand(opts: EncodeOptions): CommandResult {
  try {
    const product = productOf(opts.devices, opts.product);
    const deviceName = opts.device ?? firstDevice(product);
    const topicOption = opts.topic ?? (opts.event ? `thing/event/${opts.event}/post` : undefined);
    const { route } = resolveTopic(product, deviceName, topicOption);
    if (!product.codec.encode) throw new WanwuError('WANWU_ERR_CONFIG', `the ${product.codec.type} codec of ${product.productKey} cannot encode`);
    let data: unknown;
    try {
      data = JSON.parse(opts.data);
    } catch (err) {
      throw new WanwuError('WANWU_ERR_CONFIG', `--data is not JSON: ${(err as Error).message}`);
    }
    if (data === null || typeof data !== 'object' || Array.isArray(data)) throw new WanwuError('WANWU_ERR_CONFIG', '--data must be a JSON object of identifier: value');
    const event = opts.event ?? (route.type === 'event-post' ? route.eventId : undefined);
    const item = { kind: event ? ('event' as const) : ('property' as const), data: data as Record<string, unknown>, ...(event ? { event } : {}) };
    if (opts.time !== undefined) Object.assign(item, { ts: Number(opts.time) });
    if (opts.id !== undefined) Object.assign(item, { msgId: opts.id });
    const bytes = product.codec.encode(route, item);
    const format = opts.format ?? 'hex';
    if (format !== 'hex' && format !== 'base64') throw new WanwuError('WANWU_ERR_CONFIG', '--format must be hex or base64');
    return { exitCode: 0, output: `${bytes.toString(format)}\n` };
  } catch (err) {
    return failure(asWanwuError(err));
  }
}

function failure(error: WanwuError): CommandResult {
  return { exitCode: 1, output: `${JSON.stringify({ error: { code: error.code, message: error.message } })}\n` };
}

function productOf(devicesDir: string, productKey: string): Product {
  const product = loadRegistry(devicesDir).product(productKey);
  if (!product) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `no product ${productKey} in ${devicesDir}`);
  return product;
}

/** The product as loaded, but with its script codec's fPort replaced. */
function withFPort(devicesDir: string, productKey: string, fport: string): Product {
  productOf(devicesDir, productKey); // refuses unknown products and broken folders with the usual errors
  const fPort = Number(fport);
  if (!Number.isInteger(fPort) || fPort < 0 || fPort > 255) throw new WanwuError('WANWU_ERR_CONFIG', '--fport must be an integer 0-255');
  const src = readProductSource(devicesDir, productKey);
  const product = src.product as { codec?: { type?: string } };
  if (product.codec?.type !== 'script') throw new WanwuError('WANWU_ERR_CONFIG', `--fport applies to script codecs; ${productKey} uses ${product.codec?.type}`);
  return createProduct({ ...src, product: { ...product, codec: { ...product.codec, fPort } } });
}

function firstDevice(product: Product): string {
  return product.devices.keys().next().value ?? 'device';
}

/**
 * A full topic (/sys/...), a topic suffix (thing/event/property/post), or by default the product's
 * natural uplink: up_raw for byte codecs, the property post for Alink JSON.
 */
function resolveTopic(product: Product, deviceName: string, topic: string | undefined): { topic: string; route: UplinkRoute } {
  const suffix = topic ?? (product.codec.type === 'alink-json' ? 'thing/event/property/post' : 'thing/model/up_raw');
  const full = suffix.startsWith('/sys/') ? suffix : `/sys/${product.productKey}/${deviceName}/${suffix.replace(/^\/+/, '')}`;
  return { topic: full, route: parseUplinkTopic(full).route };
}

function readPayload(opts: DecodeOptions): Buffer {
  const given = [opts.hex, opts.base64, opts.file].filter((x) => x !== undefined).length;
  if (given !== 1) throw new WanwuError('WANWU_ERR_CONFIG', 'give the payload once: --hex H, --base64 B or --file F');
  if (opts.hex !== undefined) {
    const hex = opts.hex.replace(/\s+/g, '').replace(/^0x/i, '');
    if (!/^([0-9a-fA-F]{2})*$/.test(hex)) throw new WanwuError('WANWU_ERR_CONFIG', '--hex must be an even number of hex digits');
    return Buffer.from(hex, 'hex');
  }
  if (opts.base64 !== undefined) return Buffer.from(opts.base64, 'base64');
  try {
    return readFileSync(opts.file!);
  } catch (err) {
    throw new WanwuError('WANWU_ERR_CONFIG', `--file ${opts.file}: ${(err as Error).message}`);
  }
}

function transportOf(product: Product, given: string | undefined): Transport {
  if (given === 'coap' || given === 'mqtt') return given;
  if (given !== undefined) throw new WanwuError('WANWU_ERR_CONFIG', '--transport must be coap or mqtt');
  return product.rat === 'nb-iot' ? 'coap' : 'mqtt';
}
