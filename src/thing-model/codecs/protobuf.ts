// The `protobuf` codec (issue 3). Placeholder while it is written: a product choosing it is refused at load.

import type { JsonObject } from '../check.js';
import type { Codec } from '../types.js';
import type { CodecContext } from './index.js';

export function protobufCodecFromJson(_options: JsonObject, ctx: CodecContext): Codec {
  return ctx.reader.fail(`${ctx.path}.type`, 'the protobuf codec is not available yet');
}
