// The CoAP listener's own refusals: which sources are loopback (exempt from the rate limits, whose
// token buckets are src/util/rate-limiter.ts) and the reasons counted when it refuses a request.

/**
 * True for loopback sources (127.0.0.0/8, ::1, and IPv4-mapped 127.x). Such a datagram cannot come
 * from another host: Linux drops packets with a loopback source arriving on any other interface
 * (RFC 1122 §3.2.1.3 (g), RFC 4291 §2.5.3), so a remote attacker cannot spoof one.
 */
export function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1' || address.startsWith('::ffff:127.');
}

/**
 * Why the listener refused a request on its own, as counted on /status (listeners.coap.refused) and
 * /metrics (wanwu_coap_refused_total{reason}).
 */
export const REFUSAL_REASONS = [
  /** 4.29: the source address ran out of its coap.limits.perSource tokens. */
  'rateLimitedSource',
  /** 4.29: the device named by the path ran out of its coap.limits.perDevice tokens. */
  'rateLimitedDevice',
  /** 4.13: the body is (or, block-wise, would become) larger than coap.maxPayloadBytes. */
  'tooLarge',
  /** 4.00: an invalid Block1 option (reserved SZX 7, a block whose payload is not the block size). */
  'badBlock',
  /** 4.08: a Block1 block out of order, or for a transfer that expired or never started. */
  'incomplete',
  /** 5.03: coap.limits.maxReassemblies block-wise transfers were already in progress. */
  'reassemblyLimit',
  /** 5.03: too many requests were with ingest (overload guard). */
  'overloaded',
  /** No answer: a duplicate datagram smaller than the cached response (RFC 7252 §11.3). */
  'amplification',
] as const;

export type RefusalReason = (typeof REFUSAL_REASONS)[number];
