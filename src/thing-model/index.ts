// The decoder stage (ARCHITECTURE.md "The pipeline", step 2): the product's codec turns bytes
// into items, then every item is validated and normalized against the thing model.

import { asWanwuError } from '../errors.js';
import type { Product } from '../registry/index.js';
import type { UplinkRoute } from '../types.js';
import type { DecodedItem, DecodeEnvelope, DecodeResult } from './types.js';
import { validateItem } from './validate.js';

/**
 * Decodes and validates one uplink payload. Pure and never throws: failures come back as
 * `ok: false` with a WanwuError, and with the Alink `id`/`method` when they could be read. For
 * Alink JSON routes `method` is the payload's method, or the one the topic implies when absent.
 */
export function decodeUplink(product: Product, route: UplinkRoute, payload: Buffer): DecodeResult {
  const envelope: DecodeEnvelope = {};
  try {
    const items: DecodedItem[] = product.codec.decode(route, payload, envelope);
    const model = product.model;
    if (model) {
      for (const item of items) item.data = validateItem(model, product.productKey, item);
    }
    return withEnvelope({ ok: true, items }, envelope);
  } catch (err) {
    return withEnvelope({ ok: false, error: asWanwuError(err) }, envelope);
  }
}

function withEnvelope<T extends DecodeResult>(result: T, envelope: DecodeEnvelope): T {
  if (envelope.msgId !== undefined) result.msgId = envelope.msgId;
  if (envelope.method !== undefined) result.method = envelope.method;
  return result;
}

export type { Codec, CommandMessage, DecodedItem, DecodeEnvelope, DecodeResult, EncodeInput } from './types.js';
export { compileModel, validateItem, validateParams } from './validate.js';
export { parseThingModel, TSL_TYPE_ALIASES, TSL_TYPES } from './tsl.js';
export type {
  NumberSpecs,
  ThingModel,
  TslArrayItem,
  TslArrayType,
  TslBoolType,
  TslDataType,
  TslDateType,
  TslEnumType,
  TslEvent,
  TslFunctionBlock,
  TslNumberType,
  TslParam,
  TslProperty,
  TslScalarDataType,
  TslService,
  TslStructMember,
  TslStructType,
  TslTextType,
  TslType,
} from './tsl.js';
export { BATCH_POST_METHOD, encodeAlinkJson, PACK_POST_METHOD, type AlinkRoute } from './codecs/alink-json.js';
export {
  alinkMethod,
  buildCodec,
  CODECS,
  compileBinaryLayout,
  decodeBinary,
  encodeBinary,
  FIELD_TYPES,
  PROPERTY_POST_METHOD,
  type BinaryLayout,
  type CodecContext,
  type CodecFactory,
  type CompiledField,
  type FieldTypeName,
} from './codecs/index.js';
