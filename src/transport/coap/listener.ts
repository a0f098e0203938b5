// The CoAP listener (RFC 7252) on node:dgram + coap-packet. See index.ts for the public API.
//
// Per datagram: peek the 4-byte header (§3) -> ACK/RST stop our separate responses; pings get RST;
// requests are looked up in the de-duplication cache (§4.5) before being parsed, then checked
// (request.ts), handed to ingest, and answered once ingest resolves: piggybacked in the ACK when
// that takes less than `piggybackMs`, else as a separate CON response after an empty ACK (§5.2.2).
//
// Memory stays bounded at any rate: the de-duplication entries live in generational maps
// (dedup.ts) holding a compact string key and the response bytes as a one-byte string; the only
// per-request timers are those of separate responses, which are rare (ingest slower than 1 s).
//
// Limits (coap.limits): token buckets per source address and per device (limits.ts) answer 4.29
// (RFC 8516); Block1 uploads (RFC 7959) are reassembled in bounded state (block1.ts); the peer,
// bucket and reassembly tables have caps. No response is larger than its request (RFC 7252 §11.3,
// responses.ts encodeFitted), and neither is a cached response repeated for a duplicate.
//
// Authentication (coap.auth, auth.ts): POST /auth is answered here; an uplink's token (option 2088)
// and sequence number (2089) are checked after the path is known and before the per-device rate
// limit, so an unauthenticated sender can neither reach ingest nor spend a device's bucket.
// A product with coapEncryption (encryption.ts): option 2089 is decrypted with the token's key
// there, the body once it is whole (after Block1), and every answer past that point is encrypted.

import dgram from 'node:dgram';
import { isIPv6 } from 'node:net';
import { performance } from 'node:perf_hooks';
import { parse, type ParsedPacket } from 'coap-packet';
import { asWanwuError, WanwuError } from '../../errors.js';
import { COAP_LIMITS_DEFAULTS } from '../../config/schema.js';
import type { IngestOutcome, RawMessage } from '../../types.js';
import { CoapAuthenticator, type AuthRefusal } from './auth.js';
import { Reassembler } from './block1.js';
import { decryptPayload, encodeSealed } from './encryption.js';
import { GenerationalMap } from './dedup.js';
import type { CoapLimits, CoapListener, CoapListenerOptions, CoapListenerStats } from './index.js';
import { RateLimiter } from '../../util/rate-limiter.js';
import { isLoopback, REFUSAL_REASONS, type RefusalReason } from './limits.js';
import {
  ACK_RANDOM_FACTOR,
  ACK_TIMEOUT_MS,
  EXCHANGE_LIFETIME_MS,
  MAX_RETRANSMIT,
  CONTENT_FORMAT_JSON,
  encodeUint,
  MAX_TRANSMIT_SPAN_MS,
  NON_LIFETIME_MS,
  OPT_CONTENT_FORMAT,
  TYPE_ACK,
  TYPE_CON,
  TYPE_RST,
  type BlockValue,
} from './protocol.js';
import { CommandDelivery, DEFAULT_DOWNLINK_MODE, type DeviceRef } from './delivery.js';
import { inspectRequest, type Credentials, type PollTarget, type UplinkTarget } from './request.js';
import {
  block1Option,
  continueResponse,
  encodeEmpty,
  encodeResponse,
  errorResponse,
  outcomeResponse,
  tooManyRequestsResponse,
  type Carrier,
  type ResponseSpec,
} from './responses.js';

/** Internal knobs; the defaults are RFC 7252 §4.8's. Tests shorten the timers. */
export interface CoapTuning {
  /** How long to hold the ACK of a CON request waiting for ingest before sending an empty ACK (ms). */
  piggybackMs: number;
  /** RFC 7252 §4.8 ACK_TIMEOUT for our separate CON responses (ms). */
  ackTimeoutMs: number;
  /** RFC 7252 §4.8 ACK_RANDOM_FACTOR. */
  ackRandomFactor: number;
  /** RFC 7252 §4.8 MAX_RETRANSMIT. */
  maxRetransmit: number;
  /** RFC 7252 §4.8.2 EXCHANGE_LIFETIME: how long CON requests are remembered for de-duplication (ms). */
  exchangeLifetimeMs: number;
  /** RFC 7252 §4.8.2 NON_LIFETIME: how long NON requests are remembered (ms). */
  nonLifetimeMs: number;
  /** Generations per de-duplication map (>= 2). */
  dedupGenerations: number;
  /** Cap on de-duplication entries over CON and NON together (each map gets half; the peer count too). */
  maxDedupEntries: number;
  /** Ingest calls under way beyond which new requests get 5.03 (overload guard). */
  maxInFlight: number;
  /** Max-Age of 5.03 responses: seconds after which the device should retry. */
  retryAfterS: number;
  /** How long a Block1 transfer waits for its next block before it is dropped (ms). */
  reassemblyIdleMs: number;
  /**
   * Socket receive buffer (bytes; the kernel caps it at net.core.rmem_max). NB-IoT modules that wake
   * on the same schedule arrive in bursts; the default ~208 KiB holds only about a hundred small
   * datagrams (each costs ~2 KiB of kernel memory), and the rest are dropped before we see them.
   */
  recvBufferBytes: number;
  /** Random source for the ACK timeout jitter, in [0, 1). */
  random: () => number;
  /** Monotonic clock for the piggyback deadline (ms); independent of the injectable wall clock. */
  monotonic: () => number;
}

export const DEFAULT_TUNING: Readonly<CoapTuning> = Object.freeze({
  piggybackMs: 1_000,
  ackTimeoutMs: ACK_TIMEOUT_MS,
  ackRandomFactor: ACK_RANDOM_FACTOR,
  maxRetransmit: MAX_RETRANSMIT,
  exchangeLifetimeMs: EXCHANGE_LIFETIME_MS,
  nonLifetimeMs: NON_LIFETIME_MS,
  dedupGenerations: 3,
  maxDedupEntries: 500_000,
  maxInFlight: 10_000,
  retryAfterS: 30,
  reassemblyIdleMs: MAX_TRANSMIT_SPAN_MS,
  recvBufferBytes: 4 * 1024 * 1024,
  random: Math.random,
  monotonic: () => performance.now(),
});

/** A request handed to ingest, until its response is sent. */
interface Exchange {
  /** De-duplication key (see dedupKey). */
  key: string;
  address: string;
  port: number;
  messageId: number;
  token: Buffer;
  confirmable: boolean;
  /** The topic takes an Alink JSON reply (property/event post); up_raw gets a bare 2.04. */
  alinkJson: boolean;
  /** An empty ACK went out: the response must travel as a separate CON (RFC 7252 §5.2.2). */
  separate: boolean;
  /** Monotonic time at which to give up piggybacking (CON only). */
  deadline: number;
  /** Size of the request datagram: the response may not be larger (RFC 7252 §11.3). */
  maxBytes: number;
  /** The last block of a Block1 upload: the response echoes it (RFC 7959 §2.3). */
  block1: BlockValue | undefined;
  /** coapEncryption: the token's key; the response payload is encrypted with it (encryption.ts). */
  payloadKey: Buffer | undefined;
  /** The device presented a valid token: its answer may carry a command (delivery.ts). */
  device: DeviceRef | undefined;
}

/** A separate CON response awaiting the device's ACK (RFC 7252 §4.2). */
interface Outgoing {
  key: string;
  bytes: Buffer;
  address: string;
  port: number;
  retransmits: number;
  timeoutMs: number;
  timer: NodeJS.Timeout | undefined;
  /** The response carries this command (delivery.ts): the device's ACK delivers it. */
  command?: { device: DeviceRef; id: string };
}

/** The answer to an authentication refusal: the error's CoAP code (4.00, 4.01, 4.03) and a diagnostic. */
function authErrorResponse(refusal: AuthRefusal): ResponseSpec {
  return errorResponse(refusal.error.coapCode, `${refusal.error.code} ${refusal.error.message}`, 0);
}

/** Value of a de-duplication entry whose request is still with ingest (a response is never empty). */
const IN_PROGRESS = '';

/** Longest address written into the key scratch buffer (IPv6 with a zone id fits comfortably). */
const MAX_ADDRESS_CHARS = 100;

export function createListener(opts: CoapListenerOptions, tuningOverrides: Partial<CoapTuning> = {}): CoapListener {
  const tuning: CoapTuning = { ...DEFAULT_TUNING, ...tuningOverrides };
  const { host, logger, ingest, maxPayloadBytes } = opts;
  const now = opts.now ?? Date.now;
  const limits: CoapLimits = opts.limits ?? COAP_LIMITS_DEFAULTS;
  // Tokens live as long as the listener (in memory): after a restart devices authenticate again.
  const authn = opts.auth === undefined ? null : new CoapAuthenticator({ ...opts.auth, logger }, now);

  let socket: dgram.Socket | null = null;
  let bound: { address: string; port: number } | null = null;
  let accepting = false;
  let starting: Promise<void> | null = null;
  let stopping: Promise<void> | null = null;

  // De-duplication (RFC 7252 §4.5): CON and NON requests have different lifetimes (§4.8.2).
  let conSeen: GenerationalMap<string>;
  let nonSeen: GenerationalMap<string>;
  let peersSeen: GenerationalMap<true>;
  // Rate limits (null when switched off) and Block1 transfers in progress.
  let sourceLimiter: RateLimiter | null;
  let deviceLimiter: RateLimiter | null;
  let reassembler: Reassembler;
  resetCaches();

  // CON exchanges waiting for ingest, in arrival order = deadline order (constant delay), so one
  // timer armed for the head covers them all.
  const awaitingPiggyback = new Set<Exchange>();
  let piggybackTimer: NodeJS.Timeout | undefined;
  /** Separate CON responses awaiting an ACK, by `${address}|${port}|${messageId}`. */
  const outgoing = new Map<string, Outgoing>();
  let maintenanceTimer: NodeJS.Timeout | undefined;

  let inFlight = 0;
  let drained: (() => void) | null = null;
  let sendsPending = 0;
  let sendsFlushed: (() => void) | null = null;
  // Our message ids for NON and separate CON responses (§4.4), starting at a random point.
  let nextMessageId = Math.floor(tuning.random() * 0x10000) & 0xffff;

  const counters = {
    requests: 0,
    duplicates: 0,
    responses: Object.create(null) as Record<string, number>,
    ignored: 0,
    errors: 0,
    retransmissions: 0,
    separateTimeouts: 0,
    refused: Object.fromEntries(REFUSAL_REASONS.map((r) => [r, 0])) as Record<RefusalReason, number>,
  };

  // Commands to devices (delivery.ts): piggybacked, pushed or polled, only to token-authenticated devices.
  const delivery =
    opts.downlink === undefined
      ? null
      : new CommandDelivery({
          port: opts.downlink,
          mode: opts.downlinkMode ?? (() => DEFAULT_DOWNLINK_MODE),
          send,
          allocMessageId,
          ingest,
          logger,
          ackTimeoutMs: tuning.ackTimeoutMs,
          ackRandomFactor: tuning.ackRandomFactor,
          maxRetransmit: tuning.maxRetransmit,
          exchangeLifetimeMs: tuning.exchangeLifetimeMs,
          random: tuning.random,
          monotonic: tuning.monotonic,
          now,
          maxDevices: limits.maxPeers,
        });

  // Scratch space for building de-duplication keys without intermediate strings.
  const scratch = Buffer.allocUnsafe(MAX_ADDRESS_CHARS + 3 + 2 + 8);

  function resetCaches(): void {
    const t = now();
    const half = Math.max(tuning.dedupGenerations, Math.floor(tuning.maxDedupEntries / 2));
    conSeen = new GenerationalMap({ lifetimeMs: tuning.exchangeLifetimeMs, generations: tuning.dedupGenerations, maxEntries: half, startMs: t });
    nonSeen = new GenerationalMap({ lifetimeMs: tuning.nonLifetimeMs, generations: tuning.dedupGenerations, maxEntries: half, startMs: t });
    peersSeen = new GenerationalMap({
      lifetimeMs: tuning.exchangeLifetimeMs,
      generations: tuning.dedupGenerations,
      maxEntries: Math.max(tuning.dedupGenerations, limits.maxPeers),
      startMs: t,
    });
    sourceLimiter = limits.perSource.perSecond > 0 ? new RateLimiter(limits.perSource, limits.maxPeers, t) : null;
    deviceLimiter = limits.perDevice.perSecond > 0 ? new RateLimiter(limits.perDevice, limits.maxPeers, t) : null;
    reassembler = new Reassembler(limits.maxReassemblies, tuning.reassemblyIdleMs);
  }

  function count(code: string): void {
    counters.responses[code] = (counters.responses[code] ?? 0) + 1;
  }

  function send(bytes: Buffer, port: number, address: string): void {
    if (socket === null) return;
    try {
      if (accepting) {
        // No callback: a send error is emitted as the socket's 'error' event, which we log.
        socket.send(bytes, port, address);
      } else {
        // Stopping: dgram sends on a later tick, so track the send for stop() to wait on before close.
        sendsPending++;
        try {
          socket.send(bytes, port, address, onStopSent);
        } catch (err) {
          sendsPending--;
          throw err;
        }
      }
    } catch (err) {
      counters.errors++;
      logger.debug({ err, peer: `${address}:${port}` }, 'CoAP send failed');
    }
  }

  function onStopSent(err: Error | null): void {
    if (err) {
      counters.errors++;
      logger.debug({ err }, 'CoAP send failed while stopping');
    }
    sendsPending--;
    if (sendsPending === 0 && sendsFlushed !== null) sendsFlushed();
  }

  function allocMessageId(): number {
    const id = nextMessageId;
    nextMessageId = (nextMessageId + 1) & 0xffff;
    return id;
  }

  /**
   * Answers a request right away: piggybacked in the ACK for CON, as a NON with a fresh id for NON.
   * `maxBytes` is the request's size: the response is cut to fit it (RFC 7252 §11.3). With `key`
   * (coapEncryption) its payload is encrypted.
   */
  function respondNow(confirmable: boolean, messageId: number, token: Buffer, spec: ResponseSpec, address: string, port: number, maxBytes: number, key?: Buffer): Buffer {
    const carrier: Carrier = confirmable ? 'ack' : 'non';
    const bytes = encodeSealed(carrier, confirmable ? messageId : allocMessageId(), token, spec, maxBytes, key);
    send(bytes, port, address);
    count(spec.code);
    return bytes;
  }

  /** Answers a request the listener refuses on its own for `reason`, counting it. */
  function refuse(reason: RefusalReason, confirmable: boolean, messageId: number, token: Buffer, spec: ResponseSpec, address: string, port: number, maxBytes: number, key?: Buffer): void {
    counters.refused[reason]++;
    respondNow(confirmable, messageId, token, spec, address, port, maxBytes, key);
  }

  function reset(messageId: number, address: string, port: number): void {
    send(encodeEmpty(TYPE_RST, messageId), port, address);
    count('RST');
  }

  // --- incoming datagrams -------------------------------------------------------------------

  function onMessage(msg: Buffer, rinfo: dgram.RemoteInfo): void {
    try {
      handleDatagram(msg, rinfo.address, rinfo.port);
    } catch (err) {
      // Never let a device's datagram take the listener down (convention 10).
      counters.errors++;
      logger.debug({ err, peer: `${rinfo.address}:${rinfo.port}` }, 'CoAP datagram handling failed');
    }
  }

  function handleDatagram(msg: Buffer, address: string, port: number): void {
    // RFC 7252 §3: Ver(2) T(2) TKL(4) | Code(8) | Message ID(16)
    if (msg.length < 4) {
      counters.ignored++; // not even a header: silently ignored
      return;
    }
    const b0 = msg[0]!;
    if (b0 >> 6 !== 1) {
      counters.ignored++; // §3: unknown version numbers MUST be silently ignored
      return;
    }
    const type = (b0 >> 4) & 0x03;
    const tkl = b0 & 0x0f;
    const code = msg[1]!;
    const messageId = (msg[2]! << 8) | msg[3]!;
    const confirmable = type === TYPE_CON;

    if (type === TYPE_ACK || type === TYPE_RST) {
      onAckOrReset(type, messageId, address, port, msg);
      return;
    }
    if (!accepting) {
      counters.ignored++;
      return;
    }
    if (code === 0) {
      // §4.3 "CoAP ping": an Empty CON is answered with RST. An Empty NON is meaningless: ignored.
      if (confirmable) reset(messageId, address, port);
      else counters.ignored++;
      return;
    }
    if (code >> 5 !== 0 || tkl > 8 || msg.length < 4 + tkl) {
      // A device's separate response to a command we pushed (delivery.ts) is acknowledged, not rejected.
      if (code >> 5 >= 2 && delivery !== null && delivery.onResponse(msg, confirmable, messageId, address, port)) return;
      // A response (we send no requests), a reserved class (§12.1), or a reserved token length
      // (§3: 9-15) / truncated token: a message format error. §4.2: reject a CON with RST; §4.3:
      // ignore a NON.
      rejectOrIgnore(confirmable, messageId, address, port);
      return;
    }

    counters.requests++;
    const receivedAt = now();
    conSeen.maintain(receivedAt);
    nonSeen.maintain(receivedAt);
    peersSeen.maintain(receivedAt);

    // Keys: address '|' port(2 bytes) [ messageId(2 bytes) token ]. Built in one buffer so each is
    // a single flat one-byte string (a concatenated key would keep its pieces alive in the map).
    // The token is part of the key: a retransmission repeats it byte for byte (§4.2), while a
    // device that reuses a message id after the lifetime usually picks a new one.
    let peerKey: string;
    let key: string;
    if (address.length <= MAX_ADDRESS_CHARS) {
      let n = scratch.write(address, 0, 'latin1');
      scratch[n++] = 0x7c; // '|'
      scratch[n++] = port >> 8;
      scratch[n++] = port & 0xff;
      peerKey = scratch.toString('latin1', 0, n);
      scratch[n++] = msg[2]!;
      scratch[n++] = msg[3]!;
      n += msg.copy(scratch, n, 4, 4 + tkl);
      key = scratch.toString('latin1', 0, n);
    } else {
      peerKey = `${address}|${port}`;
      key = `${peerKey}|${messageId}|${msg.toString('hex', 4, 4 + tkl)}`;
    }
    peersSeen.touch(peerKey, true);

    // Loopback sources are local processes (the simulator, benchmarks, a co-located agent) and cannot
    // be spoofed from outside (limits.ts isLoopback): coap.limits.exemptLoopback skips the rate limits.
    const limited = !(limits.exemptLoopback && isLoopback(address));
    if (limited && sourceLimiter !== null) {
      // Per source address, every request datagram (duplicates too: each costs an answer). Decided
      // from the header alone, before parsing.
      const waitS = sourceLimiter.take(address, receivedAt);
      if (waitS > 0) {
        const spec = tooManyRequestsResponse(`WANWU_ERR_RATE_LIMITED source ${address} over ${limits.perSource.perSecond}/s`, waitS);
        refuse('rateLimitedSource', confirmable, messageId, msg.subarray(4, 4 + tkl), spec, address, port, msg.length);
        return;
      }
    }

    const seen = confirmable ? conSeen : nonSeen;
    const known = seen.get(key);
    if (known !== undefined) {
      // §4.5: a duplicate. Send the same response again if there is one; while ingest is still
      // working on a CON inside the piggyback window, stay silent (the ACK follows shortly; a second
      // ACK would force a separate response). After an empty ACK, `known` holds that empty ACK.
      counters.duplicates++;
      if (known === IN_PROGRESS) return;
      // A real retransmission repeats the request byte for byte (§4.2), so it is as large as the
      // request the cached response was fitted to. A smaller datagram reusing the message id and
      // token would turn the cache into an amplifier (§11.3): it gets no answer.
      // The one exception: a cached answer carrying a command to a token-authenticated device
      // (delivery.ts mayRepeat), repeated only for a duplicate as large as the request it answered.
      if (known.length <= msg.length || delivery?.mayRepeat(key, msg.length) === true) send(Buffer.from(known, 'latin1'), port, address);
      else counters.refused.amplification++;
      return;
    }

    let packet: ParsedPacket;
    try {
      packet = parse(msg);
    } catch (err) {
      logger.debug({ err: (err as Error).message, peer: `${address}:${port}` }, 'CoAP request does not parse');
      rejectOrIgnore(confirmable, messageId, address, port);
      return;
    }

    const verdict = inspectRequest(packet, confirmable, maxPayloadBytes);
    if (verdict.kind === 'reject') {
      rejectOrIgnore(confirmable, messageId, address, port);
      return;
    }
    if (verdict.kind === 'respond') {
      // Refusals decided here are deterministic, so they are not cached: a retransmission gets the
      // same answer again (§4.5 allows this for idempotent handling).
      if (verdict.reason !== undefined) counters.refused[verdict.reason]++;
      if (verdict.transfer !== undefined) reassembler.abandon(transferKey(peerKey, verdict.transfer));
      respondNow(confirmable, messageId, packet.token, verdict.response, address, port, msg.length);
      if (verdict.refused && opts.refuse) {
        // An identified device's payload was received and refused: count it and keep it (truncated
        // to the limit by the pipeline) as a dead letter. Each retransmission is counted again.
        const { target, code, message } = verdict.refused;
        const raw = { transport: 'coap' as const, productKey: target.productKey, deviceName: target.deviceName, topic: target.topic, payload: packet.payload, receivedAt, peer: `${address}:${port}` };
        opts.refuse(raw, new WanwuError(code, message)).catch((err: unknown) => {
          logger.warn({ err: (err as Error).message }, 'could not keep a refused CoAP payload');
        });
      }
      return;
    }
    if (verdict.kind === 'auth') {
      handleAuth(verdict.body, packet, confirmable, messageId, key, seen, address, port, msg.length);
      return;
    }
    if (verdict.kind === 'poll') {
      handlePoll(verdict.target, verdict.credentials, packet, confirmable, messageId, key, seen, address, port, msg.length, receivedAt, limited);
      return;
    }
    const { target, block1 } = verdict;
    // Consumes the request's sequence number once the request is taken (auth.ts verify).
    let acceptAuth: (() => void) | undefined;
    // coapEncryption: the token's key (auth.ts), for the body and every answer from here on.
    let payloadKey: Buffer | undefined;
    if (authn !== null) {
      // Identity from the token, not the source address (a NAT rebinding keeps the device's token).
      const checked = authn.verify(target, verdict.credentials?.token, verdict.credentials?.seq, block1 !== undefined && block1.num > 0);
      if (!checked.ok) {
        // Not cached (the sequence number was not consumed, so a retransmission gets the same
        // answer) and not dead-lettered (anyone could fill the table); fitted to the request size.
        authn.audit(checked, `${address}:${port}`, target);
        if (block1 !== undefined) reassembler.abandon(transferKey(peerKey, target));
        respondNow(confirmable, messageId, packet.token, authErrorResponse(checked), address, port, msg.length);
        return;
      }
      acceptAuth = checked.accept;
      payloadKey = checked.key;
    }
    if (limited && deviceLimiter !== null && (block1 === undefined || block1.num === 0)) {
      // Per device named by the path, once per request body: a plain request or the first block.
      const waitS = deviceLimiter.take(`${target.productKey}/${target.deviceName}`, receivedAt);
      if (waitS > 0) {
        const spec = tooManyRequestsResponse(
          `WANWU_ERR_RATE_LIMITED device ${target.productKey}/${target.deviceName} over ${limits.perDevice.perSecond}/s`,
          waitS,
        );
        refuse('rateLimitedDevice', confirmable, messageId, packet.token, spec, address, port, msg.length, payloadKey);
        return;
      }
    }
    if (inFlight >= tuning.maxInFlight && (block1 === undefined || !block1.more)) {
      // Overload guard: ingest is not keeping up; keep the per-exchange state bounded. (Checked before
      // a last block is taken, so its transfer survives for the retry.)
      const spec = errorResponse('5.03', `WANWU_ERR_OVERLOADED ${inFlight} requests in progress; retry later`, tuning.retryAfterS);
      refuse('overloaded', confirmable, messageId, packet.token, spec, address, port, msg.length, payloadKey);
      return;
    }
    let payload = packet.payload;
    if (block1 !== undefined) {
      const offset = block1.num * block1.size;
      const step = reassembler.add(transferKey(peerKey, target), offset, block1.more, packet.payload, receivedAt);
      if (step.kind === 'continue') {
        acceptAuth?.();
        // §2.9.1: 2.31 Continue, cached so a retransmitted block is answered without being stored twice.
        const bytes = respondNow(confirmable, messageId, packet.token, continueResponse(block1), address, port, msg.length);
        seen.add(key, bytes.toString('latin1'));
        return;
      }
      if (step.kind === 'incomplete') {
        // §2.9.2: 4.08 Request Entity Incomplete; the client starts over with block 0.
        const want = step.expected === 0 ? 'block 0: no transfer in progress' : `the block at byte ${step.expected}`;
        const spec = errorResponse('4.08', `WANWU_ERR_INCOMPLETE Block1 block ${block1.num} (byte ${offset}); expected ${want}`, 0);
        refuse('incomplete', confirmable, messageId, packet.token, spec, address, port, msg.length, payloadKey);
        return;
      }
      if (step.kind === 'full') {
        const spec = errorResponse('5.03', `WANWU_ERR_OVERLOADED ${limits.maxReassemblies} block-wise transfers in progress; retry later`, tuning.retryAfterS);
        refuse('reassemblyLimit', confirmable, messageId, packet.token, spec, address, port, msg.length, payloadKey);
        return;
      }
      payload = step.body;
    }
    if (authn !== null && payloadKey !== undefined) {
      // coapEncryption: the whole body, as the device encrypted it before any Block1 split.
      const plain = decryptPayload(payloadKey, payload);
      if (plain === null) {
        // Like the other authentication refusals: the answer is not cached, the payload not
        // dead-lettered, and the diagnostic in clear (the sender may lack the key). But the sequence
        // number, which decrypted and verified, is used up: otherwise one captured datagram would let
        // anyone try padding after padding under it and read the answers (a CBC padding oracle).
        acceptAuth?.();
        const refusal = authn.refuse('undecryptable', new WanwuError('WANWU_ERR_DECRYPT', `payload of ${payload.length} bytes does not decrypt with this token's key (AES-128-CBC, PKCS#7 padding, whole 16-byte blocks)`));
        authn.audit(refusal, `${address}:${port}`, target);
        respondNow(confirmable, messageId, packet.token, authErrorResponse(refusal), address, port, msg.length);
        return;
      }
      // Ingest gets the plaintext, so a refused one is dead-lettered decrypted: the key lives only as
      // long as the token (in memory), and `wanwu deadletters replay` must be able to read it later.
      payload = plain;
    }
    // Commands (delivery.ts) only for a device that presented a valid token, never one named by its path alone.
    const device = delivery !== null && authn !== null && verdict.credentials?.token !== undefined ? { productKey: target.productKey, deviceName: target.deviceName } : undefined;
    acceptAuth?.();
    if (device !== undefined) delivery!.seen(device, address, port, payloadKey);
    seen.add(key, IN_PROGRESS);
    startExchange(target, payload, packet.token, key, confirmable, messageId, address, port, receivedAt, msg.length, block1, payloadKey, device);
  }

  /**
   * POST /auth (auth.ts): 2.05 with `{"token","expiresIn","random"}` (and `"seqOffset"` for a product
   * with coapEncryption) as application/json, or a refusal.
   * The token is issued only if its answer is no larger than the request (RFC 7252 §11.3): the JSON
   * form with its hex sign always is, so a smaller request is a probe and gets 4.00 instead. The
   * answer is cached for de-duplication, so a retransmitted /auth gets the same token again.
   */
  function handleAuth(body: Buffer, packet: ParsedPacket, confirmable: boolean, messageId: number, key: string, seen: GenerationalMap<string>, address: string, port: number, maxBytes: number): void {
    if (authn === null) {
      respondNow(confirmable, messageId, packet.token, errorResponse('4.04', 'WANWU_ERR_TOPIC this listener does not authenticate devices (no /auth)', 0), address, port, maxBytes);
      return;
    }
    const checked = authn.check(body, `${address}:${port}`);
    if (!checked.ok) {
      authn.audit(checked, `${address}:${port}`);
      respondNow(confirmable, messageId, packet.token, authErrorResponse(checked), address, port, maxBytes);
      return;
    }
    // A signed /auth has a per-device bucket of its own (coap.limits.perDevice's rate, apart from the
    // uplinks'), so whoever holds one device's secret cannot churn tokens and remembered signs at the
    // per-source rate, and a device's /auth never spends its uplinks' budget.
    if (deviceLimiter !== null && !(limits.exemptLoopback && isLoopback(address))) {
      const { productKey, deviceName } = checked.grant;
      const waitS = deviceLimiter.take(`/auth ${productKey}/${deviceName}`, now());
      if (waitS > 0) {
        const spec = tooManyRequestsResponse(`WANWU_ERR_RATE_LIMITED device ${productKey}/${deviceName} over ${limits.perDevice.perSecond}/s`, waitS);
        refuse('rateLimitedDevice', confirmable, messageId, packet.token, spec, address, port, maxBytes);
        return;
      }
    }
    const spec: ResponseSpec = { code: '2.05', options: [{ name: OPT_CONTENT_FORMAT, value: encodeUint(CONTENT_FORMAT_JSON) }], payload: CoapAuthenticator.answer(checked.grant) };
    const carrier: Carrier = confirmable ? 'ack' : 'non';
    const bytes = encodeResponse(carrier, confirmable ? messageId : allocMessageId(), packet.token, spec);
    if (bytes.length > maxBytes) {
      const refusal = authn.refuse('tooSmall', new WanwuError('WANWU_ERR_MALFORMED', `/auth request of ${maxBytes} bytes is smaller than its answer (${bytes.length} bytes, RFC 7252 §11.3)`));
      authn.audit(refusal, `${address}:${port}`);
      respondNow(confirmable, messageId, packet.token, authErrorResponse(refusal), address, port, maxBytes);
      return;
    }
    authn.issue(checked.grant);
    send(bytes, port, address);
    count(spec.code);
    seen.add(key, bytes.toString('latin1'));
  }

  /**
   * GET on a command topic (delivery.ts "poll"): 2.05 with the device's oldest undelivered command under
   * that topic, or 2.05 without a payload when there is none (the queue resource exists and is empty;
   * 4.04 would read as a wrong path, and 2.03 Valid answers only a request with an ETag, RFC 7252
   * §5.9.1.3). Only for a device presenting a valid token and sequence number. The answer is cached
   * for de-duplication, so a retransmitted GET gets the same command, not the next.
   */
  function handlePoll(target: PollTarget, credentials: Credentials | undefined, packet: ParsedPacket, confirmable: boolean, messageId: number, key: string, seen: GenerationalMap<string>, address: string, port: number, maxBytes: number, receivedAt: number, limited: boolean): void {
    if (delivery === null) {
      respondNow(confirmable, messageId, packet.token, errorResponse('4.04', 'WANWU_ERR_TOPIC this listener delivers no commands', 0), address, port, maxBytes);
      return;
    }
    if (authn === null || credentials?.token === undefined) {
      const error = new WanwuError('WANWU_ERR_TOKEN', 'polling for commands needs a token (CoAP option 2088): authenticate with POST /auth');
      const refusal: AuthRefusal = authn?.refuse('unauthenticated', error) ?? { ok: false, reason: 'unauthenticated', error };
      respondNow(confirmable, messageId, packet.token, authErrorResponse(refusal), address, port, maxBytes);
      return;
    }
    const checked = authn.verify(target, credentials.token, credentials.seq, false);
    if (!checked.ok) {
      authn.audit(checked, `${address}:${port}`, target);
      respondNow(confirmable, messageId, packet.token, authErrorResponse(checked), address, port, maxBytes);
      return;
    }
    if (limited && deviceLimiter !== null) {
      const waitS = deviceLimiter.take(`${target.productKey}/${target.deviceName}`, receivedAt);
      if (waitS > 0) {
        const spec = tooManyRequestsResponse(`WANWU_ERR_RATE_LIMITED device ${target.productKey}/${target.deviceName} over ${limits.perDevice.perSecond}/s`, waitS);
        refuse('rateLimitedDevice', confirmable, messageId, packet.token, spec, address, port, maxBytes, checked.key);
        return;
      }
    }
    checked.accept();
    const device = { productKey: target.productKey, deviceName: target.deviceName };
    delivery.seen(device, address, port, checked.key);
    const carry = delivery.forPoll(target, packet.token, checked.key);
    const bytes = respondNow(confirmable, messageId, packet.token, carry?.spec ?? { code: '2.05' }, address, port, carry === null ? maxBytes : Number.POSITIVE_INFINITY, checked.key);
    seen.add(key, bytes.toString('latin1'));
    if (carry !== null) delivery.handedOut(device, carry.command, 'coap-poll', confirmable, key, maxBytes, address, port);
  }

  /** A Block1 transfer is keyed by the endpoint and the resource (RFC 7959 §2.5), not the token. */
  function transferKey(peerKey: string, target: UplinkTarget): string {
    return `${peerKey}\u0000${target.topic}`;
  }

  function rejectOrIgnore(confirmable: boolean, messageId: number, address: string, port: number): void {
    if (confirmable) reset(messageId, address, port);
    else counters.ignored++;
  }

  function startExchange(
    target: UplinkTarget,
    payload: Buffer,
    token: Buffer,
    key: string,
    confirmable: boolean,
    messageId: number,
    address: string,
    port: number,
    receivedAt: number,
    maxBytes: number,
    block1: BlockValue | undefined,
    payloadKey: Buffer | undefined,
    device?: DeviceRef,
  ): void {
    const ex: Exchange = {
      key,
      address,
      port,
      messageId,
      token,
      confirmable,
      // A reply to a command ends its exchange: it gets a bare 2.04, not an Alink reply to the reply
      // (Alibaba sends none either), which leaves the payload free for the next command (delivery.ts).
      alinkJson: target.route.type !== 'up-raw' && target.route.type !== 'command-reply',
      separate: false,
      deadline: 0,
      maxBytes,
      block1: block1 === undefined ? undefined : { num: block1.num, more: false, szx: block1.szx },
      payloadKey,
      device,
    };
    const raw: RawMessage = {
      transport: 'coap',
      productKey: target.productKey,
      deviceName: target.deviceName,
      topic: target.topic,
      route: target.route,
      payload,
      receivedAt,
      peer: `${address}:${port}`,
    };
    inFlight++;
    if (confirmable) {
      ex.deadline = tuning.monotonic() + tuning.piggybackMs;
      awaitingPiggyback.add(ex);
      armPiggybackTimer();
    }
    let result: Promise<IngestOutcome>;
    try {
      result = Promise.resolve(ingest(raw));
    } catch (err) {
      result = Promise.reject(err);
    }
    result.then(
      (outcome) => finish(ex, outcome),
      (err: unknown) => finish(ex, { error: asWanwuError(err), committed: 0, deadLettered: false }),
    );
  }

  /** Sends the response for an exchange once ingest has resolved. */
  function finish(ex: Exchange, result: IngestOutcome): void {
    try {
      if (ex.confirmable && !ex.separate) awaitingPiggyback.delete(ex);
      const outcome: IngestOutcome =
        result !== null && typeof result === 'object'
          ? result
          : { error: asWanwuError(new Error('ingest resolved without an outcome')), committed: 0, deadLettered: false };
      if (outcome.error !== undefined && outcome.error.coapCode === '5.00') {
        logger.warn({ err: outcome.error, peer: `${ex.address}:${ex.port}` }, 'CoAP ingest failed internally');
      }
      let spec = outcomeResponse(outcome, ex.alinkJson, tuning.retryAfterS);
      if (ex.block1 !== undefined) spec = { ...spec, options: [...(spec.options ?? []), block1Option(ex.block1)] };
      if (socket === null) {
        counters.ignored++; // stopped: the response is dropped
        return;
      }
      // delivery.ts "piggyback": a committed uplink of a device with a valid token carries its oldest
      // command. RFC 7252 §11.3's size bound is for unauthenticated senders, so such an answer may be
      // larger than its request; every other answer stays fitted to the request.
      const carry = ex.device !== undefined && outcome.error === undefined ? delivery!.forUplink(ex.device, spec, ex.token, ex.payloadKey) : null;
      if (carry !== null) spec = carry.spec;
      const maxBytes = carry === null ? ex.maxBytes : Number.POSITIVE_INFINITY;
      if (!ex.confirmable) {
        const bytes = respondNow(false, ex.messageId, ex.token, spec, ex.address, ex.port, maxBytes, ex.payloadKey);
        nonSeen.update(ex.key, bytes.toString('latin1'));
        if (carry !== null) delivery!.handedOut(ex.device!, carry.command, 'coap-piggyback', false, ex.key, ex.maxBytes, ex.address, ex.port);
      } else if (!ex.separate) {
        // §5.2.1: piggybacked in the ACK, same message id, token echoed.
        const bytes = respondNow(true, ex.messageId, ex.token, spec, ex.address, ex.port, maxBytes, ex.payloadKey);
        conSeen.update(ex.key, bytes.toString('latin1'));
        if (carry !== null) delivery!.handedOut(ex.device!, carry.command, 'coap-piggyback', true, ex.key, ex.maxBytes, ex.address, ex.port);
      } else {
        // §5.2.2: separate response as a CON with our own message id; the cached answer for a
        // retransmitted request stays the empty ACK.
        const messageId = allocMessageId();
        const command = carry === null ? undefined : { device: ex.device!, id: carry.command.id };
        sendSeparate(encodeSealed('con', messageId, ex.token, spec, maxBytes, ex.payloadKey), messageId, ex.address, ex.port, command);
        count(spec.code);
        if (carry !== null) delivery!.handedOut(ex.device!, carry.command, 'coap-piggyback', true, undefined, ex.maxBytes, ex.address, ex.port);
      }
      // delivery.ts "push": after the answer, commands go to the device while its window is open.
      if (ex.device !== undefined) delivery!.afterUplink(ex.device);
    } catch (err) {
      counters.errors++;
      logger.debug({ err, peer: `${ex.address}:${ex.port}` }, 'CoAP response failed');
    } finally {
      inFlight--;
      if (inFlight === 0 && drained !== null) drained();
    }
  }

  // --- piggyback window (RFC 7252 §5.2.2) ----------------------------------------------------

  function armPiggybackTimer(): void {
    if (piggybackTimer !== undefined || awaitingPiggyback.size === 0) return;
    const head = awaitingPiggyback.values().next().value as Exchange;
    piggybackTimer = setTimeout(onPiggybackTimer, Math.max(0, head.deadline - tuning.monotonic()));
  }

  function onPiggybackTimer(): void {
    piggybackTimer = undefined;
    try {
      const t = tuning.monotonic();
      for (const ex of awaitingPiggyback) {
        if (ex.deadline > t) break;
        awaitingPiggyback.delete(ex);
        // Ingest is slow: acknowledge the request now so the device stops retransmitting, and send
        // the response later as a separate CON.
        ex.separate = true;
        const ack = encodeEmpty(TYPE_ACK, ex.messageId);
        send(ack, ex.port, ex.address);
        count('ACK');
        conSeen.update(ex.key, ack.toString('latin1'));
      }
    } catch (err) {
      counters.errors++;
      logger.debug({ err }, 'CoAP piggyback timer failed');
    }
    armPiggybackTimer();
  }

  // --- separate responses and their retransmission (RFC 7252 §4.2) ---------------------------

  function sendSeparate(bytes: Buffer, messageId: number, address: string, port: number, command?: Outgoing['command']): void {
    send(bytes, port, address);
    // §4.2: initial timeout random in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR], doubled each time.
    const timeoutMs = tuning.ackTimeoutMs * (1 + tuning.random() * (tuning.ackRandomFactor - 1));
    const o: Outgoing = { key: `${address}|${port}|${messageId}`, bytes, address, port, retransmits: 0, timeoutMs, timer: undefined, ...(command === undefined ? {} : { command }) };
    o.timer = setTimeout(onRetransmitTimer, timeoutMs, o);
    outgoing.set(o.key, o);
  }

  function onRetransmitTimer(o: Outgoing): void {
    if (o.retransmits >= tuning.maxRetransmit) {
      // §4.2: the attempt is given up after MAX_RETRANSMIT retransmissions. A command it carried never
      // arrived: it must not count as delivered at the device's next request, but go again then.
      outgoing.delete(o.key);
      if (o.command !== undefined) delivery?.separateAnswered(o.command.device, o.command.id, false);
      counters.separateTimeouts++;
      logger.debug({ peer: `${o.address}:${o.port}` }, 'CoAP separate response not acknowledged; giving up');
      return;
    }
    o.retransmits++;
    o.timeoutMs *= 2;
    counters.retransmissions++;
    send(o.bytes, o.port, o.address);
    o.timer = setTimeout(onRetransmitTimer, o.timeoutMs, o);
  }

  function onAckOrReset(type: number, messageId: number, address: string, port: number, msg: Buffer): void {
    // An ACK or RST of a command we pushed (delivery.ts).
    if (delivery !== null && delivery.onAckOrReset(type, messageId, address, port, msg)) return;
    if (outgoing.size === 0) {
      counters.ignored++;
      return;
    }
    const key = `${address}|${port}|${messageId}`;
    const o = outgoing.get(key);
    if (o === undefined) {
      counters.ignored++; // not ours (or a duplicate ACK): silently ignored (§4.2)
      return;
    }
    clearTimeout(o.timer);
    outgoing.delete(key);
    if (o.command !== undefined) delivery?.separateAnswered(o.command.device, o.command.id, type === TYPE_ACK);
    if (type === TYPE_RST) logger.debug({ peer: `${address}:${port}` }, 'CoAP separate response rejected with RST');
  }

  // --- lifecycle ------------------------------------------------------------------------------

  function onSocketError(err: Error): void {
    counters.errors++;
    logger.warn({ err }, 'CoAP socket error');
  }

  async function doStart(): Promise<void> {
    const s = dgram.createSocket({ type: isIPv6(host) ? 'udp6' : 'udp4' });
    await new Promise<void>((resolve, reject) => {
      const onBindError = (err: Error): void => {
        s.removeAllListeners();
        try {
          s.close();
        } catch {
          // already closed
        }
        reject(err);
      };
      s.once('error', onBindError);
      s.bind(opts.port, host, () => {
        s.removeListener('error', onBindError);
        resolve();
      });
    });
    s.on('error', onSocketError);
    s.on('message', onMessage);
    try {
      s.setRecvBufferSize(tuning.recvBufferBytes);
    } catch (err) {
      logger.warn({ err: (err as Error).message, bytes: tuning.recvBufferBytes }, 'CoAP socket receive buffer left at the system default');
    }
    socket = s;
    const a = s.address();
    bound = { address: a.address, port: a.port };
    resetCaches();
    // Frees expired generations when traffic stops (lookups rotate lazily otherwise).
    const span = Math.max(1_000, Math.min(tuning.reassemblyIdleMs, Math.floor(tuning.nonLifetimeMs / Math.max(1, tuning.dedupGenerations - 1))));
    maintenanceTimer = setInterval(() => {
      const t = now();
      conSeen.maintain(t);
      nonSeen.maintain(t);
      peersSeen.maintain(t);
      sourceLimiter?.maintain(t);
      deviceLimiter?.maintain(t);
      reassembler.sweep(t);
      authn?.sweep(t);
      delivery?.sweep();
    }, span);
    maintenanceTimer.unref();
    delivery?.start();
    accepting = true;
    logger.info({ address: bound.address, port: bound.port }, 'CoAP listener started');
  }

  async function doStop(): Promise<void> {
    // 1. Stop accepting new requests (ACKs for our separate responses are still processed).
    accepting = false;
    // Pushes stop; their commands stay `sent` in the queue and go again after a restart.
    delivery?.stop();
    authn?.close();
    // 2. Let every ingest under way finish; their responses go out while the socket is open.
    if (inFlight > 0) {
      await new Promise<void>((resolve) => {
        drained = resolve;
      });
      drained = null;
    }
    // 3. Release every timer, then the socket once the last responses have left.
    if (piggybackTimer !== undefined) clearTimeout(piggybackTimer);
    piggybackTimer = undefined;
    awaitingPiggyback.clear();
    for (const o of outgoing.values()) clearTimeout(o.timer);
    outgoing.clear();
    if (maintenanceTimer !== undefined) clearInterval(maintenanceTimer);
    maintenanceTimer = undefined;
    if (sendsPending > 0) {
      await new Promise<void>((resolve) => {
        sendsFlushed = resolve;
      });
      sendsFlushed = null;
    }
    // Sends made just before stop() (untracked) leave on the next tick: let them go first.
    await new Promise<void>((resolve) => setImmediate(resolve));
    const s = socket;
    socket = null;
    bound = null;
    if (s !== null) {
      s.removeListener('message', onMessage);
      await new Promise<void>((resolve) => s.close(() => resolve()));
    }
    resetCaches();
    logger.info({}, 'CoAP listener stopped');
  }

  return {
    async start(): Promise<void> {
      if (stopping !== null) await stopping;
      if (socket !== null) return;
      if (starting === null) {
        starting = doStart().finally(() => {
          starting = null;
        });
      }
      return starting;
    },

    async stop(): Promise<void> {
      if (starting !== null) await starting.catch(() => undefined);
      if (stopping === null) {
        if (socket === null) return;
        stopping = doStop().finally(() => {
          stopping = null;
        });
      }
      return stopping;
    },

    stats(): CoapListenerStats {
      const a = bound ?? { address: host, port: opts.port };
      return {
        address: a.address,
        port: a.port,
        peers: peersSeen.size,
        requests: counters.requests,
        duplicates: counters.duplicates,
        responses: { ...counters.responses },
        dedupEntries: conSeen.size + nonSeen.size,
        ignored: counters.ignored,
        errors: counters.errors,
        retransmissions: counters.retransmissions,
        separateTimeouts: counters.separateTimeouts,
        inFlight,
        refused: { ...counters.refused },
        reassemblies: reassembler.size,
        reassemblyBytes: reassembler.bytes,
        tracked: { sources: sourceLimiter?.size ?? 0, devices: deviceLimiter?.size ?? 0 },
        evicted: {
          dedup: conSeen.evicted + nonSeen.evicted,
          peers: peersSeen.evicted,
          sources: sourceLimiter?.evicted ?? 0,
          devices: deviceLimiter?.evicted ?? 0,
        },
        auth: authn?.stats() ?? null,
        commands: delivery?.stats() ?? null,
      };
    },

    address(): { address: string; port: number } {
      const a = bound ?? { address: host, port: opts.port };
      return { address: a.address, port: a.port };
    },
  };
}
