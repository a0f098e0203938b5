// The radio link of a simulated NB-IoT module, reduced to what a CoAP client can observe: one-way
// delay, jitter and datagram loss. CoapTransport applies it to every datagram in both directions,
// so a lossy or slow link causes real RFC 7252 retransmissions rather than simulated ones.

/** NB-IoT coverage enhancement level (3GPP TS 36.331 / TS 36.213): 0 normal, 1 robust, 2 extreme. */
export type Ecl = 0 | 1 | 2;

export interface LinkModel {
  /** Minimum one-way delay of a datagram, ms. */
  latencyMs: number;
  /** Extra one-way delay, uniform in [0, jitterMs), ms. */
  jitterMs: number;
  /** Probability (0..1) that a datagram is lost, drawn independently per datagram and direction. */
  loss: number;
}

/**
 * Link figures per coverage class. These are modelling choices, roughly in line with the latency
 * studies of 3GPP TR 45.820 (Cellular IoT, §7.3 "latency") and TR 36.888 (low-cost MTC), which put
 * normal coverage in the hundreds of milliseconds round trip and extreme coverage (+20 dB, many
 * repetitions) in the seconds; they are not measurements of any network or module.
 *
 * At ECL2 the round trip (2.4-4 s) is longer than the RFC 7252 §4.8 initial ACK_TIMEOUT (2-3 s), so a
 * confirmable request is retransmitted even when nothing is lost: that is what real deployments see
 * with default transmission parameters, and why the simulator must model it.
 */
export const ECL_LINKS: Readonly<Record<Ecl, Readonly<LinkModel>>> = Object.freeze({
  0: Object.freeze({ latencyMs: 80, jitterMs: 40, loss: 0.01 }),
  1: Object.freeze({ latencyMs: 300, jitterMs: 200, loss: 0.03 }),
  2: Object.freeze({ latencyMs: 1_200, jitterMs: 800, loss: 0.1 }),
});

/** Parses a coverage class as written on a command line: '0', '1', '2', 'ecl0', 'ECL2'. */
export function parseEcl(s: string): Ecl {
  const m = /^(?:ecl)?([012])$/i.exec(s.trim());
  if (!m) throw new Error(`invalid NB-IoT coverage class ${JSON.stringify(s)}: expected 0, 1 or 2 (or ecl0, ecl1, ecl2)`);
  return Number(m[1]) as Ecl;
}

/**
 * What the link does to one datagram: undefined when it is lost, otherwise its one-way delay in ms.
 * Pure apart from `random`, so the transport and the tests share one definition.
 */
export function linkDelay(link: LinkModel, random: () => number): number | undefined {
  if (link.loss > 0 && random() < link.loss) return undefined;
  return link.latencyMs + (link.jitterMs > 0 ? random() * link.jitterMs : 0);
}
