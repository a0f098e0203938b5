// Turns a submitted command into what the queue stores: checked against the device's thing model
// (only rw properties can be set; service inputs by the service's inputData) and encoded for the
// device. A bad command is refused here, at submission, with WANWU_ERR_COMMAND (or the model's own
// WANWU_ERR_INVALID / WANWU_ERR_UNKNOWN_IDENTIFIER naming the value), never queued.
//
// Topics and payloads (Alibaba IoT Alink, "设备服务调用" / "设置设备属性"):
//   property set   /sys/{pk}/{dn}/thing/service/property/set    {"id","version":"1.0","params":{...},"method":"thing.service.property.set"}
//   service call   /sys/{pk}/{dn}/thing/service/{serviceId}     {"id","version":"1.0","params":{...},"method":"thing.service.{serviceId}"}
//   raw            /sys/{pk}/{dn}/thing/model/down_raw          the bytes given, or the codec's encodeCommand of the Alink message
// A product whose codec has encodeCommand (binary or script products: devices that do not speak
// JSON) gets its property sets and service calls on down_raw, encoded by that codec.

import { WanwuError } from '../errors.js';
import type { Device, Product } from '../registry/index.js';
import { validateParams, type CommandMessage, type TslService } from '../thing-model/index.js';
import { compileModel } from '../thing-model/index.js';
import { DOWN_RAW_METHOD, PROPERTY_SET_METHOD, type CommandRequest } from './types.js';

/** A command ready to be stored: `encode` gets the Alink message id the store assigns. */
export interface BuiltCommand {
  method: string;
  params?: Record<string, unknown>;
  topic: string;
  encode(msgId: string): Buffer;
}

const SERVICE_METHOD = /^thing\.service\.([A-Za-z0-9_:\-]{1,128})$/;
const HEX = /^(?:[0-9a-fA-F]{2})+$/;
/** Longest requestId: room for a UUID or a cloud platform's own message id, small enough for every state record. */
export const REQUEST_ID_MAX = 64;

function refuse(message: string, detail?: Record<string, unknown>): never {
  throw new WanwuError('WANWU_ERR_COMMAND', message, detail ? { detail } : undefined);
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks the request's shape (from JSON: anything may come) and returns it typed. */
export function parseCommandRequest(body: unknown): CommandRequest {
  if (!isObject(body)) refuse('a command is a JSON object: {"method","params","ttl"} or {"raw","ttl"}');
  for (const key of Object.keys(body)) {
    if (!['method', 'params', 'ttl', 'raw', 'requestId'].includes(key)) refuse(`unknown key "${key}" (expected method, params, ttl, raw or requestId)`);
  }
  const { method, params, ttl, raw, requestId } = body;
  if (ttl !== undefined && (typeof ttl !== 'number' || !Number.isInteger(ttl) || ttl < 1)) refuse('ttl is a whole number of seconds, at least 1');
  if (requestId !== undefined && (typeof requestId !== 'string' || requestId.length < 1 || requestId.length > REQUEST_ID_MAX)) {
    refuse(`requestId is a string of 1 to ${REQUEST_ID_MAX} characters`);
  }
  const extra = { ...(ttl === undefined ? {} : { ttl }), ...(requestId === undefined ? {} : { requestId }) };
  if (raw !== undefined) {
    if (method !== undefined || params !== undefined) refuse('a raw command has no method or params');
    if (typeof raw !== 'string' || !HEX.test(raw)) refuse('raw is the payload as an even number of hex digits');
    return { raw, ...extra };
  }
  if (typeof method !== 'string') refuse('method is required: "thing.service.property.set" or "thing.service.{serviceId}" (or send {"raw": "hex"})');
  if (params !== undefined && !isObject(params)) refuse('params is a JSON object of identifier: value');
  return { method, ...(params === undefined ? {} : { params }), ...extra };
}

/** The service a `thing.service.{id}` method names: by identifier, or by a model service's own `method`. */
function findService(product: Product, method: string, serviceId: string): TslService | undefined {
  const services = product.model?.services ?? [];
  return services.find((s) => s.method === method) ?? services.find((s) => s.identifier === serviceId && (s.method === undefined || s.method === method));
}

/**
 * Builds a command for a known, enabled device. `maxPayloadBytes` bounds the encoded payload (the
 * device must be able to take it in one message).
 */
export function buildCommand(product: Product, device: Device, req: CommandRequest, maxPayloadBytes: number): BuiltCommand {
  const base = `/sys/${device.productKey}/${device.deviceName}/thing`;
  const sized = (bytes: Buffer): Buffer => {
    if (bytes.length > maxPayloadBytes) refuse(`the command's payload of ${bytes.length} bytes exceeds downlink.maxPayloadBytes ${maxPayloadBytes}`);
    return bytes;
  };
  if ('raw' in req) {
    const bytes = sized(Buffer.from(req.raw, 'hex'));
    return { method: DOWN_RAW_METHOD, topic: `${base}/model/down_raw`, encode: () => bytes };
  }
  const { method } = req;
  const input = req.params ?? {};
  const model = product.model;
  let params: Record<string, unknown>;
  if (method === PROPERTY_SET_METHOD) {
    if (Object.keys(input).length === 0) refuse('a property set needs at least one property in params');
    if (model) {
      const props = new Map(model.properties.map((p) => [p.identifier, p]));
      for (const key of Object.keys(input)) {
        const p = props.get(key);
        if (p === undefined) throw new WanwuError('WANWU_ERR_UNKNOWN_IDENTIFIER', `${key}: not a property of ${product.productKey}`, { detail: { identifier: key } });
        if (p.accessMode !== 'rw') refuse(`${key}: read-only property (accessMode "${p.accessMode}"); only rw properties can be set`, { identifier: key });
      }
      params = {};
      const checks = compileModel(model).properties;
      for (const [key, value] of Object.entries(input)) params[key] = checks.get(key)!(value, -1);
    } else {
      params = { ...input };
    }
  } else {
    const m = SERVICE_METHOD.exec(method);
    if (!m || m[1] === 'property') refuse(`unknown method "${method}": expected "thing.service.property.set" or "thing.service.{serviceId}"`);
    const serviceId = m[1]!;
    if (model) {
      const service = findService(product, method, serviceId);
      if (!service) refuse(`${serviceId}: not a service of ${product.productKey}`, { identifier: serviceId });
      params = validateParams(model, serviceId, service.inputData, input, true);
    } else {
      params = { ...input };
    }
  }
  const message = (msgId: string): CommandMessage => ({ id: msgId, version: '1.0', method, params });
  const codec = product.codec;
  if (codec.encodeCommand) {
    const encodeCommand = codec.encodeCommand.bind(codec);
    // Encoded once now, so an inexpressible command is refused at submission; the id is patched in
    // at insert (the codec may or may not carry it: a binary frame usually has no room for it).
    sized(encodeCommand(message('0')));
    return { method, params, topic: `${base}/model/down_raw`, encode: (msgId) => sized(encodeCommand(message(msgId))) };
  }
  const topic = method === PROPERTY_SET_METHOD ? `${base}/service/property/set` : `${base}/service/${method.slice('thing.service.'.length)}`;
  return { method, params, topic, encode: (msgId) => sized(Buffer.from(JSON.stringify(message(msgId)))) };
}
