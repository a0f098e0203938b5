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

import { WanwuError } from '../../errors.js';
import type { UplinkRoute } from '../../types.js';
import type { JsonObject } from '../check.js';
import type { Codec, DecodeEnvelope, DecodedItem, EncodeInput } from '../types.js';
import { createAlinkJsonCodec, decodeAlinkJson } from './alink-json.js';
import { compileBinaryLayout, type LayoutContext } from './binary/compile.js';
import { decodeBinaryItem, encodeBinaryItem } from './binary/frame.js';
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

/** The binary codec: up_raw through the layout, Alink JSON posts through the alink-json codec. */
export function createBinaryCodec(layout: BinaryLayout, opts: { productKey?: string } = {}): Codec {
  const alink = createAlinkJsonCodec({ productKey: opts.productKey ?? '' });
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
  };
}

/** Builds the codec from product.json's `codec` object. */
export function binaryCodecFromJson(json: JsonObject, ctx: LayoutContext): Codec {
  const opts = ctx.productKey === undefined ? {} : { productKey: ctx.productKey };
  return createBinaryCodec(compileBinaryLayout(json, ctx), opts);
}
