// Commands to devices (ARCHITECTURE.md "downlink"): what the queue holds and what transports see.
//
// A command's life (Huawei IoTDA and OneNET name the same states; Wanwu keeps them at the edge):
//
//   queued --> sent --> delivered --> replied-ok | replied-error
//      |         |          |
//      '---------'----------'--> expired (TTL passed) | cancelled (DELETE while not final)
//
// `sent`: handed to the transport (MQTT PUBLISH written, CoAP response or CON request sent).
// `delivered`: the device acknowledged the transport message (MQTT PUBACK, CoAP ACK or the 2.xx
// response that carried it). A reply on `{topic}_reply` completes the command from any earlier state.

export const COMMAND_STATES = ['queued', 'sent', 'delivered', 'replied-ok', 'replied-error', 'expired', 'cancelled'] as const;
export type CommandState = (typeof COMMAND_STATES)[number];

/** States a command never leaves. */
export const FINAL_STATES: ReadonlySet<CommandState> = new Set<CommandState>(['replied-ok', 'replied-error', 'expired', 'cancelled']);
/** States of a command still owed to its device (delivered ones wait only for a reply, not for a transport). */
export const UNDELIVERED_STATES: readonly CommandState[] = ['queued', 'sent'];

/** Alink method of a property set. */
export const PROPERTY_SET_METHOD = 'thing.service.property.set';
/** Method name Wanwu gives a raw downlink (bytes the device's own protocol understands). */
export const DOWN_RAW_METHOD = 'thing.model.down_raw';

/** How the command reached (or will reach) its device. */
export type DeliveryVia = 'mqtt' | 'coap-piggyback' | 'coap-push' | 'coap-poll';

/** What the device answered on `{topic}_reply`. */
export interface CommandReply {
  /** Alink code: 200 = ok. */
  code: number;
  /** Service output data (validated against the service's outputData), or the raw reply as hex. */
  data?: unknown;
  message?: string;
  /**
   * Set when a code-200 reply's data breaks the service's outputData: the command is then
   * replied-error (the device did answer, so it is not sent again) and `data` is kept as received.
   */
  invalid?: { code: string; message: string };
}

export interface Command {
  /** UUIDv7: the command's id in the API, upstream state records and logs. */
  id: string;
  /** The Alink message id in the payload the device gets, echoed in its reply (digits; unique per gateway). */
  msgId: string;
  productKey: string;
  deviceName: string;
  /** thing.service.property.set, thing.service.{serviceId} or thing.model.down_raw. */
  method: string;
  /** Validated, normalized params (absent for raw commands). */
  params?: Record<string, unknown>;
  /** Device topic it is published or posted on, e.g. /sys/{pk}/{dn}/thing/service/property/set. */
  topic: string;
  /** The bytes the device gets: Alink JSON, or the product codec's encoding on down_raw. */
  payload: Buffer;
  state: CommandState;
  /** Who submitted it: "api" or "upstream:{name}". */
  source: string;
  /** The submitter's correlation id (up to 64 characters), echoed in every state record of the command. */
  requestId?: string;
  /** ms since the epoch. */
  createdAt: number;
  updatedAt: number;
  expiresAt: number;
  /** Times it was handed to a transport. */
  attempts: number;
  via?: DeliveryVia;
  sentAt?: number;
  deliveredAt?: number;
  repliedAt?: number;
  reply?: CommandReply;
}

/** What a submitter asks for (HTTP API body, upstream command topic payload). */
export type CommandRequest =
  | { method: string; params?: Record<string, unknown>; ttl?: number; requestId?: string }
  | { raw: string; ttl?: number; requestId?: string };

/** A state change, as listeners (transports, shadow, upstream records) get it. */
export interface CommandChange {
  command: Command;
  previous: CommandState | null;
}

/**
 * A transport that can deliver commands (MQTT listener, CoAP listener). `wake` is called when a
 * command is queued for a device; the channel delivers at once if it can reach the device now.
 */
export interface DeliveryChannel {
  readonly name: string;
  wake(productKey: string, deviceName: string): void;
}

/** The queue as transports and the pipeline use it (src/downlink/index.ts implements it). */
export interface DownlinkPort {
  /** Commands the device has not acknowledged yet (queued or sent), oldest first, at most `limit`. */
  undelivered(productKey: string, deviceName: string, limit?: number): Command[];
  /** Whether the device has any undelivered command (cheap: answered from memory). */
  hasUndelivered(productKey: string, deviceName: string): boolean;
  /** The command was handed to a transport. */
  markSent(id: string, via: DeliveryVia): void;
  /** The device acknowledged it at the transport level. */
  markDelivered(id: string): void;
  /** Registers a channel; returns a function that removes it. */
  attach(channel: DeliveryChannel): () => void;
}

/**
 * An MQTT device session opening or closing (the MQTT listener reports these; liveness.ts turns
 * them into online/offline). `at` is ms since the epoch. A session taken over by a new login of the
 * same device reports no offline in between.
 */
export interface PresenceEvent {
  productKey: string;
  deviceName: string;
  online: boolean;
  at: number;
  /** For offline: why the session ended (client disconnect, keepalive timeout, takeover ...), when known. */
  reason?: string;
}
