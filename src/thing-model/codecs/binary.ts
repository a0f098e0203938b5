// Declarative binary layouts for up_raw payloads (NB-IoT meters and alarms send a few packed
// bytes, not JSON). product.json:
//   "codec": {"type": "binary", "kind": "property", "fields": [
//     {"type": "u8", "const": 1, "name": "msgType"},
//     {"id": "cumulativeFlow", "type": "u32", "scale": 0.001}, ...]}
// or, for devices that send several kinds of frame, a header with a message-type field, one
// layout per message, and a trailer (see binary/compile.ts and devices/README.md):
//   {"type": "binary", "fields": [...header, {"name": "type", "type": "u8"}], "switch": "type",
//    "messages": [{"when": 1, "kind": "property", "fields": [...]}, {"when": 2, "kind": "event", "event": "alarm", ...}],
//    "trailer": [{"type": "crc16-modbus"}]}
// Field types: u8..u64, i8..i64, f32, f64, bits, bcd, string, bytes, group, crc16-modbus, sum8, xor8.
//
// The layout is compiled once at load (binary/compile.ts, binary/fields.ts) into per-field read
// and write closures, so decoding a frame is one length check and one pass over them.
//
// Alink JSON property/event posts to a binary product are still Alink JSON (Alibaba: the custom
// format only applies to up_raw), so those routes go to the alink-json codec.
//
// Commands (encodeCommand) go out on down_raw as frames of `codec.downlink`, a second layout in the
// same language whose messages name the Alink method they carry (binary/compile.ts):
//   "downlink": {"fields": [{"name": "msgType", "type": "u8"}, {"name": "msgId", "type": "u16", "msgId": true}],
//                "switch": "msgType",
//                "messages": [{"when": 129, "method": "thing.service.property.set", "fields": [{"id": "valveState", "type": "u8"}]},
//                             {"when": 130, "method": "thing.service.setReportInterval", "fields": [{"id": "interval", "type": "u32"}]}],
//                "trailer": [{"name": "sum", "type": "sum8"}]}
// A binary product always has encodeCommand, with or without `downlink`: without it src/downlink
// would send Alink JSON, which a device that speaks packed frames cannot read, so a command with
// no downlink message is refused at submission instead (raw bytes can still be sent).

import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import { keyPath, type JsonObject } from '../check.js';
import type { Codec, CommandMessage, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';
import { createAlinkJsonCodec, decodeAlinkJson } from './alink-json.js';
import { compileBinaryLayout, type LayoutContext } from './binary/compile.js';
import { decodeBinaryItem, encodeBinary, encodeBinaryItem } from './binary/frame.js';
import type { BinaryLayout } from './binary/types.js';

export { CHECKSUMS, crc16Modbus, sum8, xor8 } from './binary/checksum.js';
export { compileBinaryLayout, type LayoutContext } from './binary/compile.js';
export { decodeBinary, decodeBinaryItem, encodeBinary, encodeBinaryItem, type EncodeSelect } from './binary/frame.js';
export {
  decimalsOf,
  FIELD_KINDS,
  FIELD_TYPES,
  type BinaryLayout,
  type BinaryMessage,
  type BitSlice,
  type CompiledField,
  type FieldKind,
  type FieldTypeName,
} from './binary/types.js';

/** An Alink id the store assigns is digits; anything else cannot go in a "msgId" field. */
const NUMERIC_ID = /^\d{1,15}$/;

/** The binary codec: up_raw through the layout, Alink JSON posts through the alink-json codec, commands through `downlink`. */
export function createBinaryCodec(layout: BinaryLayout, opts: { productKey?: string; downlink?: BinaryLayout } = {}): Codec {
  const alink = createAlinkJsonCodec({ productKey: opts.productKey ?? '' });
  const product = opts.productKey ?? 'this product';
  const downlink = opts.downlink;
  const methods = new Set(downlink?.messages.map((m) => m.method) ?? []);
  const refuse = (message: string, detail: Record<string, unknown>, cause?: unknown): WanwuError =>
    new WanwuError('WANWU_ERR_COMMAND', message, cause === undefined ? { detail } : { detail, cause });
  return {
    type: 'binary',
    decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[] {
      if (route.type !== 'up-raw') return decodeAlinkJson(route, payload, envelope);
      return [decodeBinaryItem(layout, payload)];
    },
    encode(route: UplinkRoute, item: EncodeInput): Buffer {
      if (route.type === 'up-raw') return encodeBinaryItem(layout, item);
      if (alink.encode) return alink.encode(route, item);
      throw new WanwuError('WANWU_ERR_TOPIC', 'the binary codec encodes thing/model/up_raw frames; Alink JSON posts need the alink-json encoder');
    },
    encodeCommand(message: CommandMessage): Buffer {
      const { method } = message;
      if (!downlink || !methods.has(method)) {
        const have = [...methods].join(', ');
        throw refuse(
          `no downlink layout for ${method} in ${product}'s codec.downlink (${have === '' ? 'it has none' : `it has ${have}`}); send the bytes as raw instead`,
          { method, reason: 'no-layout' },
        );
      }
      const select = NUMERIC_ID.test(message.id) ? { method, msgId: Number(message.id) } : { method };
      try {
        return encodeBinary(downlink, message.params, select);
      } catch (err) {
        // The params passed the thing model but do not fit the frame (a u8 for an int up to 1000,
        // a param without a field): the command is refused, naming the field.
        if (!(err instanceof WanwuError) || err.code !== 'WANWU_ERR_INVALID') throw err;
        throw refuse(`${method}: ${err.message}`, { ...err.detail, method }, err);
      }
    },
  };
}

/** Builds the codec from product.json's `codec` object. */
export function binaryCodecFromJson(json: JsonObject, ctx: LayoutContext): Codec {
  const layout = compileBinaryLayout(json, ctx);
  const opts: { productKey?: string; downlink?: BinaryLayout } = ctx.productKey === undefined ? {} : { productKey: ctx.productKey };
  if (json.downlink !== undefined) {
    opts.downlink = compileBinaryLayout(json.downlink, { ...ctx, path: keyPath(ctx.path ?? 'codec', 'downlink'), direction: 'downlink' });
  }
  return createBinaryCodec(layout, opts);
}
