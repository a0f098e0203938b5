// The data that flows through the pipeline (ARCHITECTURE.md "The pipeline"):
//   listener --RawMessage--> decoder --TelemetryRecord--> buffer --> forwarder
// Every stage imports its inputs from here, so no stage needs to import another stage's internals.

import type { WanwuError } from './errors.js';

export type Transport = 'coap' | 'mqtt';
export type Rat = 'nb-iot' | 'cat1' | 'redcap';
export const RATS: readonly Rat[] = ['nb-iot', 'cat1', 'redcap'];

/** What an uplink topic asks for, parsed once by the listener (src/thing-model/topic.ts). */
export type UplinkRoute =
  | { type: 'property-post' } //  /sys/{pk}/{dn}/thing/event/property/post
  | { type: 'event-post'; eventId: string } //  /sys/{pk}/{dn}/thing/event/{eventId}/post
  | { type: 'pack-post' } //  /sys/{pk}/{dn}/thing/event/property/pack/post (batched properties and events)
  | { type: 'batch-post' } //  /sys/{pk}/{dn}/thing/event/property/batch/post (the same, Link SDK's name)
  | { type: 'up-raw' } //  /sys/{pk}/{dn}/thing/model/up_raw
  /**
   * A device's reply to a command (src/downlink): /sys/{pk}/{dn}/thing/service/property/set_reply,
   * .../thing/service/{serviceId}_reply, .../thing/model/down_raw_reply. `method` is the command's.
   */
  | { type: 'command-reply'; method: string };

/** A packet from an identified device, before decoding. */
export interface RawMessage {
  transport: Transport;
  productKey: string;
  deviceName: string;
  /** The Alink topic, e.g. `/sys/a1Water/meter-0001/thing/model/up_raw` (for CoAP: the path without `/topic`). */
  topic: string;
  route: UplinkRoute;
  payload: Buffer;
  /** Milliseconds since the epoch, taken when the packet was read off the socket. */
  receivedAt: number;
  /** `address:port` of the sender. */
  peer: string;
}

/** property and event: device telemetry; command: a command's state change (src/downlink); state: a device's online/sleeping/offline change. */
export type RecordKind = 'property' | 'event' | 'command' | 'state';

/**
 * The normalized record (ARCHITECTURE.md "External contract"). Called `Record` there; named
 * TelemetryRecord here so it does not shadow TypeScript's `Record<K, V>`.
 */
export interface TelemetryRecord {
  /** Stable unique id (UUIDv7: time-ordered), kept across retries and restarts for de-duplication upstream. */
  id: string;
  productKey: string;
  deviceName: string;
  kind: RecordKind;
  /** Event identifier, for kind "event". */
  event?: string;
  /** Device time in ms since the epoch (the Alink `time`), or receivedAt when the device sent none. */
  ts: number;
  /** Gateway receive time in ms since the epoch. */
  receivedAt: number;
  transport: Transport;
  rat: Rat;
  /** TSL identifier -> normalized value. */
  data: Record<string, unknown>;
  /** The device's Alink message `id`, when it sent one. */
  msgId?: string;
  /** Present (and false) only when the product has no thing model, so the values were not checked. */
  validated?: false;
}

/** What the pipeline tells a listener about one uplink; the listener turns it into a CoAP code or an Alink reply. */
export interface IngestOutcome {
  /** Set when the message was refused; absent when every record was committed. */
  error?: WanwuError;
  /** The device's Alink `id`, echoed in the reply. */
  msgId?: string;
  /** The Alink method for the reply (`thing.event.property.post` ...). */
  method?: string;
  /** Records committed for this message. */
  committed: number;
  /** True when the raw payload was kept in the dead-letter table. */
  deadLettered: boolean;
}

/** The pipeline as the listeners see it: resolves after commit (or dead letter), never rejects. */
export type IngestHandler = (raw: RawMessage) => Promise<IngestOutcome>;

/** A structured logger (pino's calling convention). */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** The lifecycle every stage exposes (convention 1 and 6): idempotent start and stop. */
export interface Stage {
  start(): Promise<void>;
  stop(): Promise<void>;
}
