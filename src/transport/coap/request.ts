// What the listener decides on its own about a parsed request, before anything reaches ingest:
// options, path, method and size. Each check is one named step (ARCHITECTURE.md convention 5).

import type { ParsedPacket } from 'coap-packet';
import { parseUplinkTopic, topicOwner } from '../../thing-model/topic.js';
import type { UplinkRoute } from '../../types.js';
import { AUTH_MAX_BODY_BYTES, AUTH_PATH_SEGMENT, OPT_AUTH_SEQ, OPT_AUTH_TOKEN } from './auth.js';
import type { RefusalReason } from './limits.js';
import {
  BLOCK_OPTION_MAX_BYTES,
  decodeBlock,
  decodeUint,
  isUnsupportedCritical,
  METHOD_NAMES,
  OPT_BLOCK1,
  OPT_PROXY_SCHEME,
  OPT_PROXY_URI,
  OPT_SIZE1,
  OPT_URI_PATH,
  optionNumber,
  type BlockValue,
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

/**
 * A device polling for its commands (delivery.ts): GET on a command topic of its own, i.e.
 * /topic/sys/{pk}/{dn}/thing/service[/...] or /topic/sys/{pk}/{dn}/thing/model/down_raw.
 */
export interface PollTarget {
  productKey: string;
  deviceName: string;
  /** The polled topic ('/sys/...'): commands whose topic is it or lies under it. */
  topic: string;
}

/** A valid Block1 option (RFC 7959 §2.2) with its block size in bytes. */
export interface Block1 extends BlockValue {
  size: number;
}

/** The authentication options of a request (auth.ts): the first occurrence of each (RFC 7252 §5.4.5). */
export interface Credentials {
  /** Option 2088: the token from POST /auth. */
  token?: Buffer;
  /** Option 2089: the sequence number (uint). */
  seq?: Buffer;
}

export type RequestVerdict =
  /**
   * For the pipeline; `block1` when the payload is one block of a block-wise upload (RFC 7959).
   * `credentials` (present when the request carries option 2088 or 2089) are checked by the
   * listener (auth.ts) before anything reaches ingest.
   */
  | { kind: 'ingest'; target: UplinkTarget; block1?: Block1; credentials?: Credentials }
  /** POST /auth with its body (auth.ts): answered by the listener. */
  | { kind: 'auth'; body: Buffer }
  /** GET on a command topic: the device polls for a command (delivery.ts); needs a token. */
  | { kind: 'poll'; target: PollTarget; credentials?: Credentials }
  /**
   * Answer with this response; nothing reaches ingest. `refused` is set when an identified device's
   * payload was refused here (too large), so the listener can report it for counting and dead-lettering.
   * `reason` names a limit the request ran into, for the listener's refusal counters.
   */
  | {
      kind: 'respond';
      response: ResponseSpec;
      refused?: { target: UplinkTarget; code: 'WANWU_ERR_TOO_LARGE'; message: string };
      reason?: RefusalReason;
      /** A refused Block1 block: the transfer it belongs to (this peer, this topic) is abandoned. */
      transfer?: UplinkTarget;
    }
  /** Reject the message (RFC 7252 §4.3: a NON is then ignored), e.g. an unknown critical option in a NON request. */
  | { kind: 'reject' };

interface RequestFacts {
  packet: ParsedPacket;
  confirmable: boolean;
  maxPayloadBytes: number;
  /** Uri-Path option values, in order. */
  segments: string[];
  block1?: BlockValue;
  /** Size1 (RFC 7959 §4): in a Block1 request, the client's estimate of the whole body, in bytes. */
  size1?: number;
  proxy: boolean;
  /** First critical option we do not understand, or -1. */
  badCritical: number;
  target?: UplinkTarget;
  /** The path is /auth. */
  auth: boolean;
  /** The path is a command topic (GET polls it). */
  poll?: PollTarget;
  credentials: Credentials;
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
  if (segs.length === 1 && segs[0] === AUTH_PATH_SEGMENT) {
    f.auth = true;
    return undefined;
  }
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
  if (f.packet.code === '0.01') {
    const poll = commandTopic(topic);
    if (poll !== null) {
      f.poll = poll;
      return undefined;
    }
  }
  try {
    const parsed = parseUplinkTopic(topic);
    f.target = { productKey: parsed.productKey, deviceName: parsed.deviceName, topic, route: parsed.route };
    return undefined;
  } catch (err) {
    return notFound(err instanceof Error ? err.message : String(err));
  }
};

/** Segments of a command topic after /sys/{pk}/{dn}/ (src/downlink/build.ts names the topics). */
const COMMAND_SEGMENT = /^[A-Za-z0-9_.:@\-]{1,64}$/;

/** `topic` as a command topic a device may poll, or null: thing/service[/...] (not a *_reply) or thing/model/down_raw. */
function commandTopic(topic: string): PollTarget | null {
  const owner = topicOwner(topic);
  if (owner === null) return null;
  const rest = owner.rest;
  if (rest[0] !== 'thing' || !rest.every((s) => COMMAND_SEGMENT.test(s))) return null;
  const service = rest[1] === 'service' && rest.length <= 4 && !rest[rest.length - 1]!.endsWith('_reply');
  const raw = rest.length === 3 && rest[1] === 'model' && rest[2] === 'down_raw';
  return service || raw ? { productKey: owner.productKey, deviceName: owner.deviceName, topic } : null;
}

/**
 * Uplink topics and /auth take POST only (RFC 7252 §5.9.2.6: 4.05 for a known resource); command
 * topics take GET (a poll, delivery.ts), and their credentials are checked by the listener.
 */
const checkMethod: Step = (f) => {
  const code = f.packet.code;
  if (f.poll !== undefined) {
    const verdict: RequestVerdict = { kind: 'poll', target: f.poll };
    if (f.credentials.token !== undefined || f.credentials.seq !== undefined) verdict.credentials = f.credentials;
    return verdict;
  }
  if (code === '0.02') return undefined;
  const name = METHOD_NAMES[codeDetail(code)] ?? code;
  return { kind: 'respond', response: errorResponse('4.05', `method ${name} not allowed; ${f.auth ? '/auth takes' : 'uplink topics take'} POST`, 0) };
};

/**
 * POST /auth (auth.ts) takes its JSON body in one message of at most AUTH_MAX_BODY_BYTES: a Block1
 * upload of a few hundred bytes would only hold reassembly state for an unauthenticated sender.
 */
const checkAuth: Step = (f) => {
  if (!f.auth) return undefined;
  if (f.block1 !== undefined) {
    return { kind: 'respond', response: errorResponse('4.00', 'WANWU_ERR_BLOCKWISE POST /auth takes its body in one message, without Block1', 0), reason: 'badBlock' };
  }
  if (f.packet.payload.length > AUTH_MAX_BODY_BYTES) {
    return {
      kind: 'respond',
      response: tooLargeResponse(`WANWU_ERR_TOO_LARGE /auth body of ${f.packet.payload.length} bytes exceeds ${AUTH_MAX_BODY_BYTES}`, AUTH_MAX_BODY_BYTES),
      reason: 'tooLarge',
    };
  }
  return { kind: 'auth', body: f.packet.payload };
};

/**
 * One block of a block-wise upload (RFC 7959 Block1), checked on its own, before anything is stored:
 * the SZX (§2.2), the body limit (§2.9.3), then the payload size (§2.2). The body is refused with 4.13
 * as soon as it is known to exceed coap.maxPayloadBytes: the client announced more in Size1 (§4), this
 * block ends past the limit, or it ends at the limit with M set (more bytes follow). So a block such
 * as num 1048575 is refused from its header alone, and no transfer ever holds more than the limit.
 */
const checkBlock1: Step = (f) => {
  const b = f.block1;
  if (b === undefined) return undefined;
  // §2.2: "The value 7 for SZX ... is reserved ... and MUST lead to a 4.00 Bad Request response code
  // upon reception in a request." (BERT, RFC 8323 §6, uses it over reliable transports only.)
  if (b.szx === 7) return badBlock(f, `Block1 SZX 7 is reserved (RFC 7959 §2.2); use SZX 0-6 (16-1024 bytes)`);
  const size = 16 << b.szx;
  const len = f.packet.payload.length;
  const offset = b.num * size; // at most (2^20 - 1) * 1024 < 2^30: exact in a double
  const max = f.maxPayloadBytes;
  // The least the body can be: with M set, this block is full and at least one more byte follows.
  const least = b.more ? offset + size + 1 : offset + len;
  const announced = f.size1 !== undefined && f.size1 > max;
  if (announced || least > max) {
    const text = announced
      ? `WANWU_ERR_TOO_LARGE Block1 body of ${f.size1} bytes (Size1) exceeds the limit of ${max}`
      : `WANWU_ERR_TOO_LARGE Block1 body of at least ${least} bytes exceeds the limit of ${max}`;
    return { kind: 'respond', response: tooLargeResponse(text, max), reason: 'tooLarge', transfer: f.target };
  }
  // §2.2: every block but the last carries exactly the block size; the last carries at most that.
  if (b.more ? len !== size : len > size) {
    return badBlock(f, `Block1 block ${b.num} carries ${len} bytes; the block size is ${size}${b.more ? ' and M is set' : ''}`);
  }
  return undefined;
};

function badBlock(f: RequestFacts, text: string): RequestVerdict {
  return { kind: 'respond', response: errorResponse('4.00', `WANWU_ERR_BLOCKWISE ${text}`, 0), reason: 'badBlock', transfer: f.target };
}

/** RFC 7252 §5.9.2.9: 4.13 Request Entity Too Large, with Size1 (§5.10.9). Block1 requests were checked above. */
const checkSize: Step = (f) => {
  if (f.block1 !== undefined || f.packet.payload.length <= f.maxPayloadBytes) return undefined;
  const message = `payload of ${f.packet.payload.length} bytes exceeds the limit of ${f.maxPayloadBytes}`;
  return {
    kind: 'respond',
    response: tooLargeResponse(`WANWU_ERR_TOO_LARGE ${message}`, f.maxPayloadBytes),
    refused: { target: f.target!, code: 'WANWU_ERR_TOO_LARGE', message },
    reason: 'tooLarge',
  };
};

/** The checks in order; the first that answers wins. */
export const REQUEST_STEPS: readonly Step[] = [checkCriticalOptions, checkProxy, checkPath, checkMethod, checkAuth, checkBlock1, checkSize];

/** Decides what to do with a request (class 0 code other than 0.00) that coap-packet parsed. */
export function inspectRequest(packet: ParsedPacket, confirmable: boolean, maxPayloadBytes: number): RequestVerdict {
  const facts: RequestFacts = { packet, confirmable, maxPayloadBytes, segments: [], proxy: false, badCritical: -1, auth: false, credentials: {} };
  const options = packet.options;
  for (let i = 0; i < options.length; i++) {
    const opt = options[i]!;
    const n = optionNumber(opt.name);
    if (n === OPT_URI_PATH) facts.segments.push(opt.value.toString('utf8'));
    else if (n === OPT_BLOCK1) {
      // RFC 7252 §5.4.3: a value length outside 0-3 bytes (RFC 7959 §2.2) makes the option
      // unrecognized; §5.4.5: so does a second occurrence of this non-repeatable option. Block1 is
      // critical, so either is 4.02 Bad Option (or a rejected NON).
      if (opt.value.length > BLOCK_OPTION_MAX_BYTES || facts.block1 !== undefined) {
        if (facts.badCritical < 0) facts.badCritical = OPT_BLOCK1;
      } else facts.block1 = decodeBlock(opt.value);
    } else if (n === OPT_SIZE1) {
      // Elective: a value longer than 4 bytes is ignored (§5.4.3), as decodeUint's NaN never compares greater.
      facts.size1 = decodeUint(opt.value);
    } else if (n === OPT_AUTH_TOKEN) {
      // Elective and not repeatable: a second occurrence is ignored (RFC 7252 §5.4.5).
      facts.credentials.token ??= opt.value;
    } else if (n === OPT_AUTH_SEQ) facts.credentials.seq ??= opt.value;
    else if (n === OPT_PROXY_URI || n === OPT_PROXY_SCHEME) facts.proxy = true;
    else if (facts.badCritical < 0 && isUnsupportedCritical(n)) facts.badCritical = n;
  }
  for (const step of REQUEST_STEPS) {
    const verdict = step(facts);
    if (verdict !== undefined) return verdict;
  }
  // checkPath always sets target when it lets the request through.
  const b = facts.block1;
  const verdict: RequestVerdict = { kind: 'ingest', target: facts.target! };
  if (b !== undefined) verdict.block1 = { num: b.num, more: b.more, szx: b.szx, size: 16 << b.szx };
  if (facts.credentials.token !== undefined || facts.credentials.seq !== undefined) verdict.credentials = facts.credentials;
  return verdict;
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
