// Commands to CoAP devices (issue 7; ARCHITECTURE.md "downlink ... delivered on the device's next
// contact"). An NB-IoT module in PSM is reachable only for seconds after it speaks, so every delivery
// hangs off a request the device sends with a valid token (auth.ts); an unauthenticated sender gets no
// command, and nothing here ever answers one with more bytes than it sent (RFC 7252 §11.3).
//
// Three ways, per product (product.json "downlink": {"coap", "windowS"}, config downlink.coap):
//
//   piggyback  The 2.xx response to the device's uplink carries its oldest undelivered command
//              (RFC 7252 §5.2.1 when piggybacked in the ACK, §5.2.2 when ingest was slow and the
//              response travels as a separate CON). Works through any NAT: it is an answer.
//   push       For windowS after each authenticated uplink, the gateway sends the device's commands
//              as CON POST requests to the address and port that uplink came from, one at a time
//              (NSTART 1, §4.7), retransmitted per §4.2 but never past the window's end.
//   poll       GET /topic/sys/{pk}/{dn}/thing/service[/...] or .../thing/model/down_raw answers 2.05
//              with the oldest undelivered command under that path, or 2.05 with no payload (any mode).
//
// What the device sees (the same in a piggybacked response, a poll answer and a pushed request):
//   payload         the command's bytes: Alink JSON {"id","version","params","method"}, or the raw /
//                   codec-encoded bytes of a down_raw command (encrypted like every answer for a
//                   product with coapEncryption, encryption.ts)
//   Content-Format  50 application/json for a thing/service/... topic, 42 application/octet-stream
//                   for thing/model/down_raw (RFC 7252 §5.10.3, §12.3)
//   Location-Path   in a response: "topic" + the command topic's segments, i.e. the path the device
//                   POSTs its reply to once "_reply" is appended (§5.10.7 defines Location-Path as a
//                   response's relative URI; here it names the command's resource). Elective (§5.4.1):
//                   a module that ignores it still gets payload and Content-Format. Its presence is
//                   also what tells a command apart from the usual Alink reply in a 2.04.
//   Uri-Path        in a pushed request: the same segments (the mirror of the uplink's Uri-Path)
//   option 65000    COMMANDS_PENDING, uint: 1 when more commands wait after this one, so the device
//                   can stay awake and poll (or just send its reply, whose answer carries the next).
//                   Elective, from the experimental range (§12.2: 65000-65535).
//
// When a command counts as delivered (DownlinkPort.markDelivered):
//   - piggyback/poll in the ACK of a CON request: an ACK is never acknowledged (§4.2), so the proof is
//     the device's next new request with its token: a CON client starts a new exchange only once the
//     previous one completed (NSTART 1, §4.7), i.e. once our ACK with the command arrived. (Only if all
//     ~5 ACKs of an exchange were lost and the device gave up would that be wrong.) A retransmission
//     of the carrying request is answered from the de-duplication cache with the same command.
//   - in a separate CON response: the device's ACK of it.
//   - in the answer to a NON request: nothing proves it, so the command stays `sent` and goes again in
//     the answer to the next request until the device replies ({topic}_reply) or it expires.
//   - push: the device's ACK (empty, or carrying a 2.xx response).
//   A reply completes a command from any state. After a restart or an eviction (below) a `sent`
//   command simply goes out again at the next wake-up: delivery is at least once, and the Alink "id"
//   lets the device drop a repeat.
//
// RST to a pushed request (§4.2: the device could not process it): the command stays queued (`sent`),
// and nothing more is pushed in that window (a module that rejects one will reject the next); it goes
// again after the next uplink. A device that never takes it lets it expire at its TTL.
//
// Memory: one small entry per device that is inside its push window, has a push or a separate
// response in flight, or has a command handed out awaiting proof; at most maxDevices (coap.limits.
// maxPeers), least recently seen dropped first (its command then goes again at the next wake-up).
// Devices without commands in piggyback mode cost nothing.

import { randomBytes } from 'node:crypto';
import { generate, parse, type Option, type ParsedPacket } from 'coap-packet';
import { COAP_DOWNLINK_DEFAULTS, type CoapDeliveryMode } from '../../config/schema.js';
import type { Command, DeliveryVia, DownlinkPort } from '../../downlink/types.js';
import { DOWN_RAW_METHOD } from '../../downlink/types.js';
import { parseUplinkTopic } from '../../thing-model/topic.js';
import type { IngestHandler, Logger, RawMessage } from '../../types.js';
import { decryptPayload, encodeSealed, encryptPayload } from './encryption.js';
import { CONTENT_FORMAT_JSON, encodeUint, OPT_CONTENT_FORMAT, OPT_URI_PATH, TYPE_ACK, TYPE_RST } from './protocol.js';
import { TOPIC_PREFIX_SEGMENT, type PollTarget } from './request.js';
import { encodeEmpty, type Carrier, type ResponseSpec } from './responses.js';

/** RFC 7252 §5.10.7 Location-Path. */
export const OPT_LOCATION_PATH = 8;
/** Wanwu's elective option (RFC 7252 §12.2 experimental range): 1 = more commands wait after this one. */
export const OPT_COMMANDS_PENDING = 65000;
/** RFC 7252 §12.3: application/octet-stream, for down_raw commands. */
export const CONTENT_FORMAT_OCTET_STREAM = 42;
/**
 * Largest datagram a command goes out in: coap-packet's limit, about an IPv6 minimum MTU (RFC 7252
 * §4.6). downlink.maxPayloadBytes' default (1024) fits with its options; a larger command would need
 * Block2 (RFC 7959), which Wanwu does not send: it stays queued and is counted as tooLarge.
 */
const MAX_DATAGRAM_BYTES = 1280;

/** How one product's devices get commands. */
export interface CoapDownlinkMode {
  delivery: CoapDeliveryMode;
  /** push: s after each authenticated uplink. */
  windowS: number;
}

export const DEFAULT_DOWNLINK_MODE: Readonly<CoapDownlinkMode> = COAP_DOWNLINK_DEFAULTS;

/** A device that presented a valid token. */
export interface DeviceRef {
  productKey: string;
  deviceName: string;
}

export interface CoapCommandStats {
  /** Commands handed out in the answer to an uplink, by poll, and by push (first transmissions). */
  piggybacked: number;
  polled: number;
  pushed: number;
  /** Retransmissions of pushed requests (RFC 7252 §4.2). */
  pushRetransmissions: number;
  /** Commands marked delivered: an ACK of a push or separate response, or the next request after an ACK carried one. */
  delivered: number;
  /** Pushed requests the device answered with RST (the command stays queued). */
  resets: number;
  /** Pushes given up unacknowledged at the window's end (or after MAX_RETRANSMIT); the command goes at the next wake-up. */
  unacknowledged: number;
  /** Replies taken from a device's response to a push (fed to the pipeline as {topic}_reply). */
  repliesInResponse: number;
  /** Commands too large for one datagram (left queued). */
  tooLarge: number;
  /** Devices tracked now (at most coap.limits.maxPeers), and those dropped at that cap. */
  devices: number;
  evicted: number;
}

export interface DeliveryOptions {
  port: DownlinkPort;
  mode: (productKey: string) => CoapDownlinkMode;
  /** The listener's socket send. */
  send: (bytes: Buffer, port: number, address: string) => void;
  /** The listener's message ids (RFC 7252 §4.4), shared with its separate responses. */
  allocMessageId: () => number;
  /** The pipeline: a reply carried in a device's response to a push is fed to it. */
  ingest: IngestHandler;
  logger: Logger;
  /** RFC 7252 §4.8 transmission parameters and clocks (the listener's tuning). */
  ackTimeoutMs: number;
  ackRandomFactor: number;
  maxRetransmit: number;
  exchangeLifetimeMs: number;
  random: () => number;
  monotonic: () => number;
  /** Wall clock (receivedAt of replies). */
  now: () => number;
  /** Cap on devices tracked. */
  maxDevices: number;
}

/** A command placed in a response, ready to send. */
export interface Carry {
  spec: ResponseSpec;
  command: Command;
}

interface Push {
  commandId: string;
  topic: string;
  messageId: number;
  token: Buffer;
  bytes: Buffer;
  /** `${address}|${port}|${messageId}`: how its ACK or RST is found. */
  key: string;
  retransmits: number;
  timeoutMs: number;
  /** The pending timer ends the window rather than retransmitting. */
  closing: boolean;
  timer: NodeJS.Timeout | undefined;
}

interface Entry {
  key: string;
  productKey: string;
  deviceName: string;
  address: string;
  port: number;
  /** coapEncryption key of the token the latest request carried. */
  payloadKey: Buffer | undefined;
  /** Monotonic ms at which the push window closes (0: none). */
  windowEnd: number;
  /** No more pushes in this window (RST, or MAX_RETRANSMIT spent). */
  paused: boolean;
  push: Push | null;
  /** A command handed out in an answer, awaiting proof (the next request or an ACK). */
  carried: { commandId: string; confirmable: boolean; dedupKey: string | undefined; requestBytes: number } | null;
  /** After an empty ACK to a push: the device's separate response may follow (§5.2.2). */
  awaiting: { key: string; topic: string; at: number; answered: boolean } | null;
}

export class CommandDelivery {
  private readonly devices = new Map<string, Entry>();
  private readonly pushes = new Map<string, Entry>();
  /** De-duplication key of a request whose cached answer carries a command -> its device. */
  private readonly repeatable = new Map<string, Entry>();
  /** `${address}|${port}|${token}` of a push answered with an empty ACK -> its device. */
  private readonly awaiting = new Map<string, Entry>();
  private detach: (() => void) | null = null;
  private readonly counters = {
    piggybacked: 0,
    polled: 0,
    pushed: 0,
    pushRetransmissions: 0,
    delivered: 0,
    resets: 0,
    unacknowledged: 0,
    repliesInResponse: 0,
    tooLarge: 0,
    evicted: 0,
  };

  constructor(private readonly o: DeliveryOptions) {}

  /** Registers with the queue, so a command submitted while its device is in its push window goes at once. */
  start(): void {
    this.detach ??= this.o.port.attach({ name: 'coap', wake: (pk, dn) => this.wake(pk, dn) });
  }

  /** Forgets every device and clears every timer (pushed commands stay `sent` and go again later). */
  stop(): void {
    this.detach?.();
    this.detach = null;
    for (const e of this.devices.values()) if (e.push) clearTimeout(e.push.timer);
    this.devices.clear();
    this.pushes.clear();
    this.repeatable.clear();
    this.awaiting.clear();
  }

  /**
   * A new request (not a retransmission: those are answered from the de-duplication cache) from a
   * device with a valid token: it proves an earlier CON exchange completed, so a command carried in its
   * ACK is delivered; it refreshes the device's address (a NAT rebinding between wake-ups changes it);
   * in push mode it opens the push window.
   */
  seen(device: DeviceRef, address: string, port: number, payloadKey: Buffer | undefined): void {
    const key = deviceKey(device);
    let e = this.devices.get(key);
    if (e !== undefined) {
      if (e.carried !== null) {
        const c = e.carried;
        this.dropCarried(e);
        if (c.confirmable) this.delivered(c.commandId);
      }
      // Least recently seen first: move to the end.
      this.devices.delete(key);
      this.devices.set(key, e);
    }
    const mode = this.o.mode(device.productKey);
    if (mode.delivery !== 'push') {
      if (e !== undefined) {
        this.moveTo(e, address, port, payloadKey);
        this.dropIfIdle(e);
      }
      return;
    }
    e ??= this.create(key, device, address, port);
    this.moveTo(e, address, port, payloadKey);
    e.windowEnd = this.o.monotonic() + mode.windowS * 1000;
    e.paused = false;
  }

  /**
   * In piggyback mode, the device's oldest undelivered command placed in `spec` (the 2.xx answer to its
   * uplink), or null. `token`/`payloadKey`: the request's, to check the answer fits one datagram.
   */
  forUplink(device: DeviceRef, spec: ResponseSpec, token: Buffer, payloadKey: Buffer | undefined): Carry | null {
    if (!this.o.port.hasUndelivered(device.productKey, device.deviceName)) return null;
    if (this.o.mode(device.productKey).delivery !== 'piggyback') return null;
    const list = this.read(() => this.o.port.undelivered(device.productKey, device.deviceName, 2));
    const command = list[0];
    if (command === undefined) return null;
    return this.fitCarry(commandSpec(spec.code, command, list.length > 1, spec.options), command, token, payloadKey);
  }

  /** A poll (GET on a command topic): the oldest undelivered command under the polled topic, as a 2.05 answer, or null. */
  forPoll(target: PollTarget, token: Buffer, payloadKey: Buffer | undefined): Carry | null {
    if (!this.o.port.hasUndelivered(target.productKey, target.deviceName)) return null;
    const under = (c: Command) => c.topic === target.topic || c.topic.startsWith(`${target.topic}/`);
    // A command being pushed in this window is on its way already: a poll meanwhile gets the next one.
    const pushing = this.devices.get(`${target.productKey}/${target.deviceName}`)?.push?.commandId;
    const list = this.read(() => this.o.port.undelivered(target.productKey, target.deviceName, 100)).filter((c) => under(c) && c.id !== pushing);
    const command = list[0];
    if (command === undefined) return null;
    return this.fitCarry(commandSpec('2.05', command, list.length > 1), command, token, payloadKey);
  }

  /**
   * A command went out in an answer: it is `sent`, and proven delivered by the device's next request
   * (CON) or by the ACK of a separate response. `dedupKey`/`requestBytes`: the request whose cached
   * answer now carries it, which a retransmission of that request may get again (mayRepeat).
   */
  handedOut(device: DeviceRef, command: Command, via: DeliveryVia, confirmable: boolean, dedupKey: string | undefined, requestBytes: number, address: string, port: number): void {
    this.write(() => this.o.port.markSent(command.id, via));
    if (via === 'coap-poll') this.counters.polled++;
    else this.counters.piggybacked++;
    // Stopping (an answer sent while the listener drains): nothing is tracked; the command, still
    // `sent`, goes again at the device's next wake-up.
    if (this.detach === null) return;
    const key = deviceKey(device);
    const e = this.devices.get(key) ?? this.create(key, device, address, port);
    this.dropCarried(e);
    e.carried = { commandId: command.id, confirmable, dedupKey, requestBytes };
    if (dedupKey !== undefined) this.repeatable.set(dedupKey, e);
  }

  /** The device ACKed (or reset) a separate CON response that carried `commandId` (RFC 7252 §5.2.2). */
  separateAnswered(device: DeviceRef, commandId: string, acknowledged: boolean): void {
    const e = this.devices.get(deviceKey(device));
    if (e?.carried?.commandId === commandId) this.dropCarried(e);
    if (acknowledged) this.delivered(commandId);
    if (e !== undefined) this.dropIfIdle(e);
  }

  /**
   * Whether a duplicate of `dedupKey` of `size` bytes may get its cached answer although that answer is
   * larger: only when the answer carries a command for a token-authenticated request and the duplicate
   * is as large as that request (a real retransmission repeats it byte for byte, RFC 7252 §4.2).
   */
  mayRepeat(dedupKey: string, size: number): boolean {
    const c = this.repeatable.get(dedupKey)?.carried;
    return c !== undefined && c !== null && c.dedupKey === dedupKey && size >= c.requestBytes;
  }

  /** After the answer to an authenticated uplink went out: in push mode, push while the window is open. */
  afterUplink(device: DeviceRef): void {
    const e = this.devices.get(deviceKey(device));
    if (e !== undefined) this.pushNext(e);
  }

  /** DeliveryChannel.wake: a command was queued; push at once if the device is in its window. */
  wake(productKey: string, deviceName: string): void {
    const e = this.devices.get(`${productKey}/${deviceName}`);
    if (e !== undefined) this.pushNext(e);
  }

  /** An ACK or RST (RFC 7252 §4.2): true when it answers one of our pushes. */
  onAckOrReset(type: number, messageId: number, address: string, port: number, msg: Buffer): boolean {
    if (this.pushes.size === 0) return false;
    const e = this.pushes.get(`${address}|${port}|${messageId}`);
    const p = e?.push;
    if (e === undefined || p == null) return false;
    this.endPush(e);
    if (type === TYPE_RST) {
      // The device could not process it: keep the command for the next wake-up, push nothing more now.
      this.counters.resets++;
      e.paused = true;
      this.o.logger.debug({ device: e.key, command: p.commandId }, 'CoAP push rejected with RST; the command stays queued');
      this.dropIfIdle(e);
      return true;
    }
    this.delivered(p.commandId);
    if (msg[1] === 0) {
      // Empty ACK: the device may send its response separately (§5.2.2), matched by our token (§5.3.2).
      if (e.awaiting !== null) this.awaiting.delete(e.awaiting.key);
      const key = `${address}|${port}|${p.token.toString('latin1')}`;
      e.awaiting = { key, topic: p.topic, at: this.o.monotonic(), answered: false };
      this.awaiting.set(key, e);
    } else {
      const packet = tryParse(msg);
      // §5.3.2: a piggybacked response echoes the request's token.
      if (packet !== null && packet.token.equals(p.token)) this.takeResponse(e, p.topic, packet, `${address}:${port}`);
    }
    this.pushNext(e);
    return true;
  }

  /**
   * A CON or NON response from a device (class 2-5): true when it is the separate response to one of
   * our pushes (§5.2.2). A CON one is acknowledged, every time it arrives (§4.2, §4.5).
   */
  onResponse(msg: Buffer, confirmable: boolean, messageId: number, address: string, port: number): boolean {
    if (this.awaiting.size === 0) return false;
    const tkl = msg[0]! & 0x0f;
    if (tkl > 8 || msg.length < 4 + tkl) return false;
    const e = this.awaiting.get(`${address}|${port}|${msg.toString('latin1', 4, 4 + tkl)}`);
    const a = e?.awaiting;
    if (e === undefined || a == null) return false;
    if (confirmable) this.o.send(encodeEmpty(TYPE_ACK, messageId), port, address);
    if (!a.answered) {
      a.answered = true;
      const packet = tryParse(msg);
      if (packet !== null) this.takeResponse(e, a.topic, packet, `${address}:${port}`);
    }
    return true;
  }

  /** Drops what no longer needs keeping: closed windows, separate responses past EXCHANGE_LIFETIME. */
  sweep(): void {
    const t = this.o.monotonic();
    for (const e of this.devices.values()) {
      if (e.awaiting !== null && t - e.awaiting.at > this.o.exchangeLifetimeMs) {
        this.awaiting.delete(e.awaiting.key);
        e.awaiting = null;
      }
      this.dropIfIdle(e);
    }
  }

  stats(): CoapCommandStats {
    return { ...this.counters, devices: this.devices.size };
  }

  // --- internals ----------------------------------------------------------------------------

  private create(key: string, device: DeviceRef, address: string, port: number): Entry {
    while (this.devices.size >= Math.max(1, this.o.maxDevices)) {
      const oldest = this.devices.values().next().value as Entry;
      this.drop(oldest);
      this.counters.evicted++;
    }
    const e: Entry = {
      key,
      productKey: device.productKey,
      deviceName: device.deviceName,
      address,
      port,
      payloadKey: undefined,
      windowEnd: 0,
      paused: false,
      push: null,
      carried: null,
      awaiting: null,
    };
    this.devices.set(key, e);
    return e;
  }

  /** The device's latest authenticated source. A push in flight to the old one is dropped (sent again from the new). */
  private moveTo(e: Entry, address: string, port: number, payloadKey: Buffer | undefined): void {
    if ((e.address !== address || e.port !== port) && e.push !== null) this.endPush(e);
    e.address = address;
    e.port = port;
    e.payloadKey = payloadKey;
  }

  private fitCarry(spec: ResponseSpec, command: Command, token: Buffer, payloadKey: Buffer | undefined): Carry | null {
    try {
      // The encoding the listener will use, unfitted (the device is authenticated); coap-packet
      // throws above its datagram limit.
      encodeSealed('ack' satisfies Carrier, 0, token, spec, Number.POSITIVE_INFINITY, payloadKey);
    } catch (err) {
      this.counters.tooLarge++;
      this.o.logger.warn({ err: (err as Error).message, command: command.id, bytes: command.payload.length }, 'command too large for one CoAP datagram; left queued');
      return null;
    }
    return { spec, command };
  }

  private pushNext(e: Entry): void {
    if (e.push !== null || e.paused || this.detach === null) return;
    const t = this.o.monotonic();
    if (t >= e.windowEnd) return;
    // Not the command a poll's answer has just carried (it awaits the device's next request as proof).
    const carried = e.carried?.commandId;
    const command = this.read(() => this.o.port.undelivered(e.productKey, e.deviceName, 2)).find((c) => c.id !== carried);
    if (command === undefined) return;
    const messageId = this.o.allocMessageId();
    // RFC 7252 §5.3.1: our request's token; the device's response echoes it (§5.3.2).
    const token = randomBytes(4);
    let bytes: Buffer;
    try {
      bytes = encodePush(command, messageId, token, e.payloadKey);
    } catch (err) {
      this.counters.tooLarge++;
      e.paused = true;
      this.o.logger.warn({ err: (err as Error).message, command: command.id }, 'command too large for one CoAP datagram; left queued');
      return;
    }
    // §4.2: initial timeout random in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR], doubled each time.
    const timeoutMs = this.o.ackTimeoutMs * (1 + this.o.random() * (this.o.ackRandomFactor - 1));
    const p: Push = { commandId: command.id, topic: command.topic, messageId, token, bytes, key: `${e.address}|${e.port}|${messageId}`, retransmits: 0, timeoutMs, closing: false, timer: undefined };
    e.push = p;
    this.pushes.set(p.key, e);
    this.o.send(bytes, e.port, e.address);
    this.counters.pushed++;
    this.write(() => this.o.port.markSent(command.id, 'coap-push'));
    this.arm(e, p, t);
  }

  /** The next retransmission, or the window's end if that comes first (the push never outlives the window). */
  private arm(e: Entry, p: Push, t: number): void {
    const left = e.windowEnd - t;
    p.closing = left <= p.timeoutMs;
    p.timer = setTimeout(() => this.onPushTimer(e, p), Math.max(0, p.closing ? left : p.timeoutMs));
  }

  private onPushTimer(e: Entry, p: Push): void {
    if (e.push !== p) return;
    p.timer = undefined;
    if (p.closing || p.retransmits >= this.o.maxRetransmit) {
      // The window is over (or §4.2's MAX_RETRANSMIT spent): the command stays `sent`, for the next wake-up.
      this.endPush(e);
      this.counters.unacknowledged++;
      e.paused = true;
      this.dropIfIdle(e);
      return;
    }
    p.retransmits++;
    p.timeoutMs *= 2;
    this.counters.pushRetransmissions++;
    this.o.send(p.bytes, e.port, e.address); // same message id and token (§4.2)
    this.arm(e, p, this.o.monotonic());
  }

  private endPush(e: Entry): void {
    const p = e.push;
    if (p === null) return;
    clearTimeout(p.timer);
    this.pushes.delete(p.key);
    e.push = null;
  }

  /** The device answered a push with a response: a 2.xx with a body is taken as its reply ({topic}_reply). */
  private takeResponse(e: Entry, topic: string, packet: ParsedPacket, peer: string): void {
    if (!packet.code.startsWith('2.') || packet.payload.length === 0) return;
    let body: Buffer | null = packet.payload;
    if (e.payloadKey !== undefined) body = decryptPayload(e.payloadKey, body);
    if (body === null) return;
    const replyTopic = `${topic}_reply`;
    let route: RawMessage['route'];
    try {
      route = parseUplinkTopic(replyTopic).route;
    } catch {
      return;
    }
    // An Alink command's reply is {"id","code",...}; anything else in a 2.xx is not taken for one.
    if (route.type !== 'command-reply' || (route.method !== DOWN_RAW_METHOD && !looksLikeAlinkReply(body))) return;
    const raw: RawMessage = { transport: 'coap', productKey: e.productKey, deviceName: e.deviceName, topic: replyTopic, route, payload: body, receivedAt: this.o.now(), peer };
    this.counters.repliesInResponse++;
    Promise.resolve()
      .then(() => this.o.ingest(raw))
      .then(
        (outcome) => {
          if (outcome.error !== undefined) this.o.logger.debug({ code: outcome.error.code, err: outcome.error.message, topic: replyTopic }, 'reply in a CoAP response refused');
        },
        (err: unknown) => this.o.logger.debug({ err: (err as Error).message }, 'reply in a CoAP response failed'),
      );
  }

  /** The queue's answer, or none when it fails (the device's own answer must still go out). */
  private read(fn: () => Command[]): Command[] {
    try {
      return fn();
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message }, 'command queue not readable; no command delivered');
      return [];
    }
  }

  private delivered(commandId: string): void {
    this.counters.delivered++;
    this.write(() => this.o.port.markDelivered(commandId));
  }

  /** A state change of the queue; a failure is logged, never thrown into the device's exchange. */
  private write(fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.o.logger.warn({ err: (err as Error).message }, 'command state not stored');
    }
  }

  private dropCarried(e: Entry): void {
    const c = e.carried;
    if (c === null) return;
    if (c.dedupKey !== undefined && this.repeatable.get(c.dedupKey) === e) this.repeatable.delete(c.dedupKey);
    e.carried = null;
  }

  private dropIfIdle(e: Entry): void {
    if (e.push === null && e.carried === null && e.awaiting === null && this.o.monotonic() >= e.windowEnd) this.devices.delete(e.key);
  }

  private drop(e: Entry): void {
    this.endPush(e);
    this.dropCarried(e);
    if (e.awaiting !== null) this.awaiting.delete(e.awaiting.key);
    e.awaiting = null;
    this.devices.delete(e.key);
  }
}

function deviceKey(d: DeviceRef): string {
  return `${d.productKey}/${d.deviceName}`;
}

/** RFC 7252 §12.3: what the command's bytes are. */
function contentFormat(command: Command): number {
  return command.topic.endsWith('/thing/model/down_raw') ? CONTENT_FORMAT_OCTET_STREAM : CONTENT_FORMAT_JSON;
}

/** "topic" + the command topic's segments: the Uri-Path of an uplink, mirrored. */
function pathSegments(topic: string): Buffer[] {
  const out = [Buffer.from(TOPIC_PREFIX_SEGMENT)];
  for (const s of topic.split('/')) if (s !== '') out.push(Buffer.from(s));
  return out;
}

/**
 * The answer carrying a command: `code` kept (2.04 to an uplink, 2.05 to a poll), Content-Format,
 * Location-Path, COMMANDS_PENDING when `more`, and the command's bytes replacing any payload. Options
 * of the answer other than Content-Format are kept (e.g. Block1 echoing the last block, RFC 7959 §2.3).
 */
export function commandSpec(code: string, command: Command, more: boolean, keep: Option[] = []): ResponseSpec {
  const options: Option[] = keep.filter((o) => o.name !== OPT_CONTENT_FORMAT);
  options.push({ name: OPT_CONTENT_FORMAT, value: encodeUint(contentFormat(command)) });
  for (const seg of pathSegments(command.topic)) options.push({ name: OPT_LOCATION_PATH, value: seg });
  if (more) options.push({ name: OPT_COMMANDS_PENDING, value: encodeUint(1) });
  return { code, options, payload: command.payload };
}

/** A pushed command: CON POST to "topic" + its topic (RFC 7252 §5.8.2), its payload encrypted for a coapEncryption product. */
function encodePush(command: Command, messageId: number, token: Buffer, payloadKey: Buffer | undefined): Buffer {
  const options: Option[] = pathSegments(command.topic).map((value) => ({ name: OPT_URI_PATH, value }));
  options.push({ name: OPT_CONTENT_FORMAT, value: encodeUint(contentFormat(command)) });
  const payload = payloadKey === undefined ? command.payload : encryptPayload(payloadKey, command.payload);
  return generate({ code: 'POST', confirmable: true, messageId, token, options, payload }, MAX_DATAGRAM_BYTES);
}

function tryParse(msg: Buffer): ParsedPacket | null {
  try {
    return parse(msg);
  } catch {
    return null;
  }
}

function looksLikeAlinkReply(body: Buffer): boolean {
  try {
    const v = JSON.parse(body.toString('utf8')) as unknown;
    return typeof v === 'object' && v !== null && 'id' in v && 'code' in v;
  } catch {
    return false;
  }
}
