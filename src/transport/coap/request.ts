// What the listener decides on its own about a parsed request, before anything reaches ingest:
// options, path, method and size. Each check is one named step (ARCHITECTURE.md convention 5).

import type { ParsedPacket } from 'coap-packet';
import { parseUplinkTopic } from '../../thing-model/topic.js';
import type { UplinkRoute } from '../../types.js';
import {
  isUnsupportedCritical,
  METHOD_NAMES,
  OPT_BLOCK1,
  OPT_PROXY_SCHEME,
  OPT_PROXY_URI,
  OPT_URI_PATH,
  optionNumber,
} from './protocol.js';
import { errorResponse, tooLargeResponse, type ResponseSpec } from './responses.js';

/** The first Uri-Path segment of every uplink: `/topic` + the Alink topic (ARCHITECTURE.md). */
export const TOPIC_PREFIX_SEGMENT = 'topic';

export interface UplinkTarget {
  productKey: string;
  deviceName: string;
  /** The Alink topic: '/' + the Uri-Path segments after 'topic'. */
  topic: string;
  route: UplinkRoute;
}

export type RequestVerdict =
  | { kind: 'ingest'; target: UplinkTarget }
  /**
   * Answer with this response; nothing reaches ingest. `refused` is set when an identified device's
   * payload was refused here (too large), so the listener can report it for counting and dead-lettering.
   */
  | { kind: 'respond'; response: ResponseSpec; refused?: { target: UplinkTarget; code: 'WANWU_ERR_TOO_LARGE'; message: string } }
  /** Reject the message (RFC 7252 §4.3: a NON is then ignored), e.g. an unknown critical option in a NON request. */
  | { kind: 'reject' };

interface RequestFacts {
  packet: ParsedPacket;
  confirmable: boolean;
  maxPayloadBytes: number;
  /** Uri-Path option values, in order. */
  segments: string[];
  block1: boolean;
  proxy: boolean;
  /** First critical option we do not understand, or -1. */
  badCritical: number;
  target?: UplinkTarget;
}

type Step = (facts: RequestFacts) => RequestVerdict | undefined;

/** RFC 7252 §5.4.1: an unrecognized critical option: 4.02 for a CON request, reject a NON. */
const checkCriticalOptions: Step = (f) => {
  if (f.badCritical < 0) return undefined;
  if (!f.confirmable) return { kind: 'reject' };
  return { kind: 'respond', response: errorResponse('4.02', `unsupported critical option ${f.badCritical}`, 0) };
};

/** RFC 7252 §5.7.2: we are not a forward-proxy. */
const checkProxy: Step = (f) =>
  f.proxy ? { kind: 'respond', response: errorResponse('5.05', 'proxying not supported', 0) } : undefined;

/** The path must be /topic/sys/{pk}/{dn}/<uplink> (src/thing-model/topic.ts); anything else is 4.04. */
const checkPath: Step = (f) => {
  const segs = f.segments;
  if (segs.length < 2 || segs[0] !== TOPIC_PREFIX_SEGMENT) {
    return notFound(`path ${JSON.stringify(shorten('/' + segs.join('/')))} is not under /topic/sys/{productKey}/{deviceName}/`);
  }
  let topic = '';
  for (let i = 1; i < segs.length; i++) {
    const s = segs[i]!;
    // A '/' inside one Uri-Path option is a literal character of that segment (RFC 7252 §6.4,
    // percent-encoded in a URI), not a separator: such a path names no uplink topic.
    if (s.includes('/')) return notFound(`Uri-Path segment ${JSON.stringify(shorten(s))} contains '/'`);
    topic += '/' + s;
  }
  try {
    const parsed = parseUplinkTopic(topic);
    f.target = { productKey: parsed.productKey, deviceName: parsed.deviceName, topic, route: parsed.route };
    return undefined;
  } catch (err) {
    return notFound(err instanceof Error ? err.message : String(err));
  }
};

/** Uplink topics take POST only (RFC 7252 §5.9.2.6: 4.05 for a known resource). */
const checkMethod: Step = (f) => {
  const code = f.packet.code;
  if (code === '0.02') return undefined;
  const name = METHOD_NAMES[codeDetail(code)] ?? code;
  return { kind: 'respond', response: errorResponse('4.05', `method ${name} not allowed; uplink topics take POST`, 0) };
};

/**
 * Block-wise uploads (RFC 7959 Block1) are not supported yet (a later issue adds them): a Block1
 * request is answered 4.13 with Size1 (RFC 7959 §2.9.3), telling the device to send one message.
 */
const checkBlock1: Step = (f) =>
  f.block1
    ? {
        kind: 'respond',
        response: tooLargeResponse(
          `WANWU_ERR_TOO_LARGE block-wise transfer (Block1) not supported; send at most ${f.maxPayloadBytes} bytes`,
          f.maxPayloadBytes,
        ),
      }
    : undefined;

/** RFC 7252 §5.9.2.9: 4.13 Request Entity Too Large, with Size1 (§5.10.9). */
const checkSize: Step = (f) => {
  if (f.packet.payload.length <= f.maxPayloadBytes) return undefined;
  const message = `payload of ${f.packet.payload.length} bytes exceeds the limit of ${f.maxPayloadBytes}`;
  return {
    kind: 'respond',
    response: tooLargeResponse(`WANWU_ERR_TOO_LARGE ${message}`, f.maxPayloadBytes),
    refused: { target: f.target!, code: 'WANWU_ERR_TOO_LARGE', message },
  };
};

/** The checks in order; the first that answers wins. */
export const REQUEST_STEPS: readonly Step[] = [checkCriticalOptions, checkProxy, checkPath, checkMethod, checkBlock1, checkSize];

/** Decides what to do with a request (class 0 code other than 0.00) that coap-packet parsed. */
export function inspectRequest(packet: ParsedPacket, confirmable: boolean, maxPayloadBytes: number): RequestVerdict {
  const facts: RequestFacts = { packet, confirmable, maxPayloadBytes, segments: [], block1: false, proxy: false, badCritical: -1 };
  const options = packet.options;
  for (let i = 0; i < options.length; i++) {
    const opt = options[i]!;
    const n = optionNumber(opt.name);
    if (n === OPT_URI_PATH) facts.segments.push(opt.value.toString('utf8'));
    else if (n === OPT_BLOCK1) facts.block1 = true;
    else if (n === OPT_PROXY_URI || n === OPT_PROXY_SCHEME) facts.proxy = true;
    else if (facts.badCritical < 0 && isUnsupportedCritical(n)) facts.badCritical = n;
  }
  for (const step of REQUEST_STEPS) {
    const verdict = step(facts);
    if (verdict !== undefined) return verdict;
  }
  // checkPath always sets target when it lets the request through.
  return { kind: 'ingest', target: facts.target! };
}

/** The detail part of a dotted code ('0.02' -> 2). */
function codeDetail(code: string): number {
  return Number.parseInt(code.slice(2), 10);
}

function notFound(text: string): RequestVerdict {
  return { kind: 'respond', response: errorResponse('4.04', `WANWU_ERR_TOPIC ${text}`, 0) };
}

function shorten(s: string): string {
  return s.length > 80 ? `${s.slice(0, 77)}...` : s;
}
