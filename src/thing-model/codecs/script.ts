// The `script` codec: the product's own JavaScript decodes up_raw payloads, as on LoRaWAN network
// servers and on Alibaba IoT. product.json:
//   "codec": {"type": "script", "file": "codec.js", "timeoutMs"?: 100, "fPort"?: 1, "variables"?: {...}}
// codec.js is written for one of two platforms and runs unchanged (sandbox.ts runs it):
//
// (a) ChirpStack v4 / The Things Stack:
//       decodeUplink({bytes: number[] (0..255), fPort, recvTime: Date, variables})
//         -> {data: {identifier: value}, errors?: string[], warnings?: string[]}
//       encodeDownlink({data, variables}) -> {bytes: number[], fPort?, errors?, warnings?}
//     Wanwu reads two more optional keys of the result: `event` (an event identifier: `data`
//     holds its output data) and `time` (device time, ms since the epoch or a Date). encode
//     passes them back the same way: {data, variables, event?, time?}. A non-empty `errors`
//     refuses the payload with the first error; `warnings` are ignored.
//     encodeCommand (a command to the device) calls encodeDownlink({data: params, variables,
//     method, id}): `data` is what ChirpStack passes (the object the application queued), and
//     the Alink `method` ("thing.service.property.set", "thing.service.{id}") and message `id`
//     are added beside it, so a script tells a command from the uplink form by `method`.
// (b) Alibaba IoT: rawDataToProtocol(bytes: number[], Java-style signed -128..127) returns an
//     Alink message {id, version, method, params}: method thing.event.property.post (params as in
//     Alink JSON, {value, time} allowed) or thing.event.{eventId}.post ({value: {...}, time?});
//     `id` becomes the record's msgId. encode calls protocolToRawData(message) with the same
//     message and takes the byte array it returns. encodeCommand calls protocolToRawData with the
//     Alink downlink message {id, version: "1.0", method, params}, method
//     "thing.service.property.set" or "thing.service.{id}": what Alibaba IoT passes it for a
//     property set or a service call (its sample script switches on method).
//
// Script faults are the product's, not the gateway's, but they are triggered by a payload and
// the payload is kept as a dead letter (to replay once the script is fixed), so decode reports
// them as WANWU_ERR_MALFORMED with detail.reason threw | errors | shape | timeout; encode
// reports them as WANWU_ERR_INVALID, and encodeCommand as WANWU_ERR_COMMAND (the command is
// refused at submission, with the script's own message). A broken file (syntax, top-level exception, neither
// function defined) is WANWU_ERR_PRODUCT at load, naming the file and line.
// Alink JSON posts to a script product are still Alink JSON, as for the binary codec.

import { readFileSync } from 'node:fs';
import path from 'node:path';
import { WanwuError, type ErrorCode } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, show, type JsonObject } from '../check.js';
import type { Codec, CommandMessage, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';
import { createAlinkJsonCodec, decodeAlinkJson, PROPERTY_POST_METHOD } from './alink-json.js';
import type { CodecContext } from './index.js';
import { LoadedScript, scriptSandbox, type CallResult, type ScriptFault } from './sandbox.js';

const SCRIPT_KEYS = ['type', 'file', 'timeoutMs', 'fPort', 'variables'] as const;
const DEFAULT_TIMEOUT_MS = 100;
const EVENT_METHOD = /^thing\.event\.([A-Za-z0-9_]{1,128})\.post$/;

export interface ScriptCodecOptions {
  /** The script's source text. */
  source: string;
  /** Its path as shown in messages and stack traces (relative to the working directory). */
  filename: string;
  /** Time budget of one decode or encode call, in ms (default 100, as ChirpStack). */
  timeoutMs?: number;
  /** input.fPort for decodeUplink (CoAP and MQTT have no port; default 1). */
  fPort?: number;
  /** input.variables (ChirpStack device variables), frozen; default {}. */
  variables?: Record<string, unknown>;
  productKey?: string;
}

/** Builds the codec from product.json's `codec` object; reads and loads the script once. */
export function scriptCodecFromJson(options: JsonObject, ctx: CodecContext): Codec {
  const r = ctx.reader;
  r.onlyKeys(options, ctx.path, SCRIPT_KEYS);
  const fileKey = keyPath(ctx.path, 'file');
  const file = r.string(options.file, fileKey);
  if (path.isAbsolute(file) || file.split(/[\\/]/).includes('..')) r.fail(fileKey, `${show(file)} must name a file inside the product's folder`);
  const timeoutMs = options.timeoutMs === undefined ? DEFAULT_TIMEOUT_MS : r.integer(options.timeoutMs, keyPath(ctx.path, 'timeoutMs'), { min: 1, max: 10_000 });
  const fPort = options.fPort === undefined ? 1 : r.integer(options.fPort, keyPath(ctx.path, 'fPort'), { min: 0, max: 255 });
  const variables = options.variables === undefined ? {} : r.object(options.variables, keyPath(ctx.path, 'variables'));
  const filename = path.join(ctx.dir, file);
  let source = '';
  try {
    source = readFileSync(filename, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    r.fail(fileKey, `cannot read ${filename} (${code === 'ENOENT' ? 'no such file' : (err as Error).message})`);
  }
  return createScriptCodec({ source, filename, timeoutMs, fPort, variables, productKey: ctx.productKey });
}

/** Loads a script into the sandbox and wraps it as a codec. Throws WANWU_ERR_PRODUCT naming the file and line. */
export function createScriptCodec(opts: ScriptCodecOptions): Codec {
  const { source, filename } = opts;
  const budget = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  refuseImport(source, filename);
  const loaded = scriptSandbox().load({ source, filename, fPort: opts.fPort ?? 1, variables: JSON.stringify(opts.variables ?? {}) });
  if (!(loaded instanceof LoadedScript)) throw productError(filename, loaded);
  const script = loaded;
  const alibaba = script.info.style === 'alibaba';
  const name = path.basename(filename);
  const decodeName = alibaba ? 'rawDataToProtocol' : 'decodeUplink';
  const encodeName = alibaba ? 'protocolToRawData' : 'encodeDownlink';
  const alink = createAlinkJsonCodec({ productKey: opts.productKey ?? '' });

  /** A coded error for a failed call, e.g. "codec.js:12: decodeUplink threw TypeError: ...". */
  const callError = (code: ErrorCode, fn: string, result: Exclude<CallResult, { ok: true }>): WanwuError => {
    if ('overrun' in result) {
      return new WanwuError(code, `${name}: ${fn} was stopped after its ${budget} ms budget`, { detail: { script: name, function: fn, reason: 'timeout' } });
    }
    const f = result.fault;
    const where = f.line > 0 ? `${name}:${f.line}` : name;
    const what = f.reason === 'threw' ? `${fn} threw ${f.message}` : f.reason === 'errors' ? `${fn}: ${f.message}` : f.message;
    const detail: Record<string, unknown> = { script: name, function: fn, reason: f.reason };
    if (f.line > 0) detail.line = f.line;
    return new WanwuError(code, `${where}: ${what}`, { detail });
  };
  const shapeError = (code: ErrorCode, fn: string, message: string): WanwuError =>
    new WanwuError(code, `${name}: ${fn} returned ${message}`, { detail: { script: name, function: fn, reason: 'shape' } });

  return {
    type: 'script',
    decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
      if (route.type !== 'up-raw') return decodeAlinkJson(route, payload, envelope);
      const result = script.decode(payload, budget);
      if (!result.ok) throw callError('WANWU_ERR_MALFORMED', decodeName, result);
      if (!('text' in result)) throw shapeError('WANWU_ERR_MALFORMED', decodeName, 'bytes');
      return alibaba ? alinkItems(result.text, envelope) : chirpstackItem(result.text);
    },
    encode(route: UplinkRoute, item: EncodeInput): Buffer {
      if (route.type !== 'up-raw') {
        if (!alink.encode) throw new WanwuError('WANWU_ERR_INVALID', `${name}: Alink JSON encoding is not available`);
        return alink.encode(route, item);
      }
      if (!script.info.encode) {
        throw new WanwuError('WANWU_ERR_INVALID', `${name} defines no ${encodeName}, so ${opts.productKey ?? 'this product'} cannot encode`, {
          detail: { script: name, function: encodeName, reason: 'missing' },
        });
      }
      // Alibaba: the Alink message the device would have posted, i.e. what rawDataToProtocol returns.
      const input = alibaba ? alinkText(item) : JSON.stringify(chirpstackInput(item));
      const result = script.encode(input, budget);
      if (!result.ok) throw callError('WANWU_ERR_INVALID', encodeName, result);
      if (!('bytes' in result)) throw shapeError('WANWU_ERR_INVALID', encodeName, 'no bytes');
      return result.bytes;
    },
    // Defined even when the script has no encoder: without encodeCommand the device would get
    // Alink JSON, which a device that needs a codec script cannot read; the command is refused.
    encodeCommand(message: CommandMessage): Buffer {
      if (!script.info.encode) {
        throw new WanwuError('WANWU_ERR_COMMAND', `${name} defines no ${encodeName}, so commands to ${opts.productKey ?? 'this product'} cannot be encoded; send the bytes as raw instead`, {
          detail: { script: name, function: encodeName, reason: 'missing', method: message.method },
        });
      }
      const { id, version, method, params } = message;
      const input = alibaba ? JSON.stringify({ id, version, method, params }) : JSON.stringify({ data: params, method, id });
      const result = script.encode(input, budget);
      if (!result.ok) throw callError('WANWU_ERR_COMMAND', encodeName, result);
      if (!('bytes' in result)) throw shapeError('WANWU_ERR_COMMAND', encodeName, 'no bytes');
      return result.bytes;
    },
  };

  function alinkText(item: EncodeInput): string {
    if (!alink.encode) throw new WanwuError('WANWU_ERR_INVALID', `${name}: Alink JSON encoding is not available`);
    const route: UplinkRoute = item.kind === 'event' ? { type: 'event-post', eventId: item.event ?? '' } : { type: 'property-post' };
    return alink.encode(route, item).toString('utf8');
  }

  /** decodeUplink's {data, errors?, event?, time?} (as JSON made inside the sandbox) -> one item. */
  function chirpstackItem(text: string): DecodedItem[] {
    const r = JSON.parse(text) as { data?: unknown; errors?: unknown; event?: unknown; time?: unknown };
    const { data, errors, event, time } = r;
    if (errors !== undefined && errors !== null) {
      if (!Array.isArray(errors)) throw shapeError('WANWU_ERR_MALFORMED', decodeName, `errors = ${show(errors)}; expected an array`);
      if (errors.length > 0) {
        const first = errors[0];
        throw new WanwuError('WANWU_ERR_MALFORMED', `${name}: ${decodeName}: ${typeof first === 'string' ? first : show(first)}`, {
          detail: { script: name, function: decodeName, reason: 'errors', errors },
        });
      }
    }
    if (!isObject(data)) throw shapeError('WANWU_ERR_MALFORMED', decodeName, `data = ${show(data)}; expected an object of identifier: value`);
    if (Object.hasOwn(data, '__proto__')) throw shapeError('WANWU_ERR_MALFORMED', decodeName, 'data with the reserved key "__proto__"');
    let item: DecodedItem;
    if (event === undefined || event === null) {
      if (Object.keys(data).length === 0) throw shapeError('WANWU_ERR_MALFORMED', decodeName, 'no data');
      item = { kind: 'property', data };
    } else {
      if (typeof event !== 'string' || event === '') throw shapeError('WANWU_ERR_MALFORMED', decodeName, `event = ${show(event)}; expected an event identifier`);
      item = { kind: 'event', event, data };
    }
    if (time !== undefined && time !== null) {
      if (typeof time !== 'number' || !Number.isSafeInteger(time) || time < 0) {
        throw shapeError('WANWU_ERR_MALFORMED', decodeName, `time = ${show(time)}; expected ms since the epoch`);
      }
      item.ts = time;
    }
    return [item];
  }

  /** rawDataToProtocol's Alink message -> items, read by the alink-json codec for the method it names. */
  function alinkItems(text: string, envelope: DecodeEnvelope): DecodedItem[] {
    const msg = JSON.parse(text) as { method?: unknown };
    const method = msg.method;
    let route: Exclude<UplinkRoute, { type: 'up-raw' }>;
    if (method === PROPERTY_POST_METHOD) route = { type: 'property-post' };
    else if (typeof method === 'string' && EVENT_METHOD.test(method)) route = { type: 'event-post', eventId: EVENT_METHOD.exec(method)![1]! };
    else {
      throw new WanwuError('WANWU_ERR_METHOD', `${name}: ${decodeName} returned method ${show(method)}; up_raw takes "${PROPERTY_POST_METHOD}" or "thing.event.{eventId}.post"`, {
        detail: { script: name, function: decodeName, reason: 'shape', method },
      });
    }
    try {
      return decodeAlinkJson(route, Buffer.from(text, 'utf8'), envelope);
    } catch (err) {
      if (!(err instanceof WanwuError)) throw err;
      throw new WanwuError(err.code, `${name}: ${decodeName} returned a message with ${err.message}`, { cause: err, detail: { ...err.detail, script: name, function: decodeName } });
    }
  }
}

function chirpstackInput(item: EncodeInput): Record<string, unknown> {
  const input: Record<string, unknown> = { data: item.data };
  if (item.kind === 'event') input.event = item.event;
  if (item.ts !== undefined) input.time = item.ts;
  return input;
}

/**
 * import() is refused at load: Node answers it from the host realm (a rejection whose error
 * object's constructor chain reaches the host's Function). With eval and Function disabled the
 * source text is all the code a script has, so refusing the word is sound, if blunt.
 */
function refuseImport(source: string, filename: string): void {
  const m = /\bimport\b/.exec(source);
  if (!m) return;
  const line = source.slice(0, m.index).split('\n').length;
  throw new WanwuError('WANWU_ERR_PRODUCT', `${filename}:${line}: "import" is not allowed in a codec script (modules cannot be loaded; rename the identifier or reword the comment)`, {
    detail: { file: filename, line },
  });
}

function productError(filename: string, f: ScriptFault): WanwuError {
  const where = f.line > 0 ? `${filename}:${f.line}` : filename;
  const message = f.reason === 'threw' && !/^\w*Error: /.test(f.message) ? `the top level threw ${f.message}` : f.message;
  const detail: Record<string, unknown> = { file: filename };
  if (f.line > 0) detail.line = f.line;
  return new WanwuError('WANWU_ERR_PRODUCT', `${where}: ${message}`, { detail });
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
