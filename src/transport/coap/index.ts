// CoAP listener (RFC 7252) for device uplinks: `POST /topic/sys/{pk}/{dn}/...` (ARCHITECTURE.md
// "External contract"). Built on node:dgram + coap-packet rather than node-coap's server, whose
// de-duplication cache keeps a few KB per request for 247 s; here an entry is a short key and the
// response bytes, in generational maps with a size cap (dedup.ts).
//
// Answers: 2.04 once ingest resolves (after the SQLite commit), piggybacked or separate (§5.2);
// refusals with the error's CoAP code and a diagnostic payload (§5.5.2); 4.04/4.05/4.13/4.02/5.05
// decided by the listener itself (request.ts) without calling ingest. Block1 uploads (RFC 7959) are
// reassembled up to maxPayloadBytes (2.31 Continue per block, 4.08, 4.13 with Size1); rate limits
// answer 4.29 (RFC 8516); no response is larger than its request (RFC 7252 §11.3). Devices
// authenticate with POST /auth and carry a token and a sequence number in options 2088/2089 (auth.ts).

import type { DownlinkPort } from '../../downlink/types.js';
import type { WanwuError } from '../../errors.js';
import type { IngestHandler, Logger, RawMessage } from '../../types.js';
import type { CoapAuthOptions, CoapAuthStats } from './auth.js';
import type { CoapCommandStats, CoapDownlinkMode } from './delivery.js';
import type { RateSpec } from '../../util/rate-limiter.js';
import type { RefusalReason } from './limits.js';
import { createListener } from './listener.js';

export type { AuthRefusalReason, CoapAuthConfig, CoapAuthMode, CoapAuthOptions, CoapAuthStats } from './auth.js';
export { AUTH_REFUSAL_REASONS, OPT_AUTH_SEQ, OPT_AUTH_TOKEN } from './auth.js';

export type { RateSpec } from '../../util/rate-limiter.js';
export type { RefusalReason } from './limits.js';
export type { CoapCommandStats, CoapDownlinkMode } from './delivery.js';
export { CONTENT_FORMAT_OCTET_STREAM, OPT_COMMANDS_PENDING, OPT_LOCATION_PATH } from './delivery.js';
export { REFUSAL_REASONS } from './limits.js';

/** coap.limits of the configuration (src/config/schema.ts has the defaults and units). */
export interface CoapLimits {
  /** Token bucket per device named by the path (productKey/deviceName); perSecond 0 = off. */
  perDevice: RateSpec;
  /** Token bucket per source IP address; perSecond 0 = off. */
  perSource: RateSpec;
  /** Most peers (address + port), source addresses and device names tracked, each. */
  maxPeers: number;
  /** Most Block1 transfers in progress at once; each holds at most maxPayloadBytes. */
  maxReassemblies: number;
  /** Loopback sources (127.0.0.0/8, ::1) skip the rate limits. */
  exemptLoopback: boolean;
}

export interface CoapListenerOptions {
  /** Address to bind, e.g. '0.0.0.0', '::' or '127.0.0.1'. */
  host: string;
  /** UDP port to bind; 0 picks any free port (read it back with address()). */
  port: number;
  /**
   * Largest request body accepted, in bytes (config default 1024), whether in one message or
   * reassembled from Block1 blocks; larger gets 4.13 with Size1.
   */
  maxPayloadBytes: number;
  /** Rate limits and table caps; default: the configuration's defaults (coap.limits). */
  limits?: CoapLimits;
  /**
   * Token authentication (coap.auth and the registry). Without it the listener serves no /auth and
   * checks no token: every uplink proceeds, named by its path (listener tests).
   */
  auth?: CoapAuthOptions;
  /** The pipeline: resolves after the record is committed (or dead-lettered); never rejects. */
  ingest: IngestHandler;
  logger: Logger;
  /**
   * Called for a payload an identified device sent that the listener refuses itself (too large): the
   * pipeline counts it and keeps it as a dead letter. Optional; the response does not wait for it.
   */
  refuse?: (raw: Omit<RawMessage, 'route'>, error: WanwuError) => Promise<void>;
  /** Wall clock in ms since the epoch (receivedAt, de-duplication expiry); injectable for tests. */
  now?: () => number;
  /**
   * The command queue (src/downlink): commands go to devices that present a valid token, piggybacked
   * in the answer to their uplink, pushed during a window after it, or polled with GET (delivery.ts).
   * Absent: no commands (GET on a command topic gets 4.04).
   */
  downlink?: DownlinkPort;
  /** How a product's devices get commands (product.json "downlink", config downlink.coap); default piggyback, 20 s. */
  downlinkMode?: (productKey: string) => CoapDownlinkMode;
}

export interface CoapListenerStats {
  /** Bound address (the configured host before start). */
  address: string;
  port: number;
  /** Distinct peers (address + port) that sent a request within the last EXCHANGE_LIFETIME (bounded). */
  peers: number;
  /** Request datagrams received, duplicates included. */
  requests: number;
  /** Requests recognized as retransmissions/duplicates (RFC 7252 §4.5) and not processed again. */
  duplicates: number;
  /** Messages sent, by response code ('2.04', '4.00', ...), plus 'ACK' (empty ACKs) and 'RST'. Retransmissions and repeats for duplicates are not counted. */
  responses: Record<string, number>;
  /** De-duplication entries held (CON + NON). */
  dedupEntries: number;
  /** Datagrams dropped without an answer: unparseable header, unknown version, empty NON, stray ACK/RST, arrivals while stopping. */
  ignored: number;
  /** Unexpected failures inside the listener (socket errors, handler exceptions); each is logged. */
  errors: number;
  /** Retransmissions of separate CON responses (RFC 7252 §4.2). */
  retransmissions: number;
  /** Separate CON responses never acknowledged after MAX_RETRANSMIT retransmissions. */
  separateTimeouts: number;
  /** Requests handed to ingest and not answered yet. */
  inFlight: number;
  /** Requests the listener refused on its own because of a limit, by reason (limits.ts REFUSAL_REASONS). */
  refused: Record<RefusalReason, number>;
  /** Block1 transfers in progress (at most coap.limits.maxReassemblies). */
  reassemblies: number;
  /** Body bytes those transfers hold (at most maxReassemblies x maxPayloadBytes). */
  reassemblyBytes: number;
  /** Rate-limit buckets held: source addresses and devices (each at most coap.limits.maxPeers). */
  tracked: { sources: number; devices: number };
  /**
   * Entries dropped early because a table reached its cap: de-duplication entries (a duplicate
   * may then be processed again), peers, and rate-limit buckets (which restart full).
   */
  evicted: { dedup: number; peers: number; sources: number; devices: number };
  /** Token authentication (auth.ts): tokens issued and held, refusals by reason; null without coap.auth. */
  auth: CoapAuthStats | null;
  /** Commands delivered over CoAP (delivery.ts); null without a command queue. */
  commands: CoapCommandStats | null;
}

export interface CoapListener {
  /** Binds the socket; idempotent. */
  start(): Promise<void>;
  /** Stops accepting requests, waits for ingest calls under way, then closes the socket and clears every timer; idempotent. */
  stop(): Promise<void>;
  stats(): CoapListenerStats;
  /** The bound address (the configured host and port before start). */
  address(): { address: string; port: number };
}

export function createCoapListener(opts: CoapListenerOptions): CoapListener {
  return createListener(opts);
}
