// Codecs by `codec.type` in product.json. Adding a codec is one line in CODECS.

import { DefinitionReader, keyPath, type JsonObject } from '../check.js';
import type { ThingModel } from '../tsl.js';
import type { Codec } from '../types.js';
import { createAlinkJsonCodec } from './alink-json.js';
import { binaryCodecFromJson } from './binary.js';
import { cborCodecFromJson } from './cbor.js';
import { protobufCodecFromJson } from './protobuf.js';
import { scriptCodecFromJson } from './script.js';

export interface CodecContext {
  productKey: string;
  model: ThingModel | null;
  /** Reports errors against product.json. */
  reader: DefinitionReader;
  /** Key path of the codec object (normally "codec"). */
  path: string;
  /** The product's folder on disk, for codec assets (x.proto, codec.js) named relative to it. */
  dir: string;
}

/** Checks the codec's options (throwing WANWU_ERR_PRODUCT) and builds it once. */
export type CodecFactory = (options: JsonObject, ctx: CodecContext) => Codec;

export const CODECS: Readonly<Record<string, CodecFactory>> = {
  'alink-json': (options, ctx) => {
    ctx.reader.onlyKeys(options, ctx.path, ['type']);
    return createAlinkJsonCodec({ productKey: ctx.productKey });
  },
  binary: (options, ctx) => binaryCodecFromJson(options, { model: ctx.model, reader: ctx.reader, path: ctx.path, productKey: ctx.productKey }),
  protobuf: protobufCodecFromJson,
  script: scriptCodecFromJson,
  cbor: cborCodecFromJson,
};

export function buildCodec(json: unknown, ctx: CodecContext): Codec {
  const options = ctx.reader.object(json, ctx.path);
  const type = ctx.reader.oneOf(options.type, keyPath(ctx.path, 'type'), Object.keys(CODECS));
  return CODECS[type]!(options, ctx);
}

export { alinkMethod, createAlinkJsonCodec, decodeAlinkJson, PROPERTY_POST_METHOD } from './alink-json.js';
export {
  compileBinaryLayout,
  crc16Modbus,
  createBinaryCodec,
  decodeBinary,
  decodeBinaryItem,
  encodeBinary,
  encodeBinaryItem,
  FIELD_KINDS,
  FIELD_TYPES,
  sum8,
  xor8,
  type BinaryLayout,
  type BinaryMessage,
  type CompiledField,
  type EncodeSelect,
  type FieldKind,
  type FieldTypeName,
  type LayoutContext,
} from './binary.js';
