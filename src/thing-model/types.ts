// What the decoder hands the pipeline, and the contract every codec implements.

import type { WanwuError } from '../errors.js';
import type { UplinkRoute } from '../types.js';

/** One record's worth of data; the pipeline adds id, productKey, deviceName, receivedAt, transport and rat. */
export interface DecodedItem {
  kind: 'property' | 'event';
  /** Event identifier, for kind "event". */
  event?: string;
  /** Device time in ms since the epoch; undefined when the device sent none (the pipeline uses receivedAt). */
  ts?: number;
  /** TSL identifier -> value (normalized once validated). */
  data: Record<string, unknown>;
}

export type DecodeResult =
  | { ok: true; msgId?: string; method?: string; items: DecodedItem[] }
  | { ok: false; error: WanwuError; msgId?: string; method?: string };

/**
 * Filled by a codec as soon as it has read them, so that the Alink reply can echo `id` and
 * `method` even when the rest of the message turns out to be broken.
 */
export interface DecodeEnvelope {
  msgId?: string;
  method?: string;
}

/** What encode turns into bytes: one item in the uplink form (the simulator, round-trip tests, `wanwu encode`). */
export interface EncodeInput extends DecodedItem {
  /** The Alink message id to put in the payload, where the format has one. */
  msgId?: string;
}

/**
 * A product's codec, built once when the registry loads (options checked, assets such as .proto or
 * codec.js files read then). Pure afterwards: decode and encode do no I/O.
 */
export interface Codec {
  readonly type: string;
  /** Bytes -> items before thing-model validation. Throws WanwuError (MALFORMED, METHOD, TOPIC ...). */
  decode(route: UplinkRoute, payload: Buffer, envelope: DecodeEnvelope): DecodedItem[];
  /**
   * Item -> the bytes a device would send on `route`, so that decode(route, encode(route, item))
   * gives the item back. Throws WanwuError (WANWU_ERR_INVALID when the item cannot be expressed).
   * Optional while codecs are being extended; every codec in CODECS implements it.
   */
  encode?(route: UplinkRoute, item: EncodeInput): Buffer;
  /**
   * A command (property set or service call, as the Alink message a device on Alink JSON would get)
   * -> the bytes a device of this product understands, sent on /sys/{pk}/{dn}/thing/model/down_raw
   * (Alibaba's protocolToRawData). Absent: the product's devices get Alink JSON on the service topic.
   * Throws WanwuError (WANWU_ERR_COMMAND when the command cannot be expressed).
   */
  encodeCommand?(message: CommandMessage): Buffer;
}

/** An Alink downlink message: `{"id","version","method","params"}` (Alibaba's service call form). */
export interface CommandMessage {
  id: string;
  version: '1.0';
  method: string;
  params: Record<string, unknown>;
}
