// The HTTP API under /api/ (commands, device shadow), served by the status server next to
// /status and /metrics. Each feature contributes an ApiHandler: it answers the requests it knows
// and returns null for the rest, so adding a resource is one entry in the gateway's list.
//
// Errors are JSON `{"code": "WANWU_ERR_*", "message"}` with the HTTP status of the code (httpStatus).

import { createHash, timingSafeEqual } from 'node:crypto';
import type { IncomingHttpHeaders } from 'node:http';
import { isIP } from 'node:net';
import { WanwuError, type ErrorCode } from '../errors.js';

export interface ApiRequest {
  method: string;
  /** Path without the query, e.g. /api/devices/WaterMeterNB/meter-0001/commands. */
  path: string;
  /** Path segments after /api/, URL-decoded: ["devices", "WaterMeterNB", "meter-0001", "commands"]. */
  segments: string[];
  query: URLSearchParams;
  headers: IncomingHttpHeaders;
  /** The body parsed as JSON; undefined when there is none. A body that is not JSON is refused before handlers run. */
  body: unknown;
  /** Remote address of the caller. */
  remoteAddress: string;
}

export interface ApiResponse {
  status: number;
  body: unknown;
  /** Extra response headers (content-type is always JSON). */
  headers?: Record<string, string>;
}

export type ApiHandler = (req: ApiRequest) => ApiResponse | null | Promise<ApiResponse | null>;

/** Largest request body, in bytes. */
export const API_MAX_BODY_BYTES = 64 * 1024;

/** The HTTP status for an error code: who was wrong, and whether trying again may help. */
export function httpStatus(code: ErrorCode): number {
  switch (code) {
    case 'WANWU_ERR_UNKNOWN_DEVICE':
    case 'WANWU_ERR_UNKNOWN_COMMAND':
    case 'WANWU_ERR_TOPIC':
      return 404;
    case 'WANWU_ERR_COMMAND_STATE':
    case 'WANWU_ERR_DEVICE_DISABLED':
      return 409;
    case 'WANWU_ERR_TOO_LARGE':
      return 413;
    case 'WANWU_ERR_QUEUE_FULL':
    case 'WANWU_ERR_RATE_LIMITED':
      return 429;
    case 'WANWU_ERR_AUTH':
      return 401;
    case 'WANWU_ERR_FORBIDDEN':
      return 403;
    case 'WANWU_ERR_STORAGE':
    case 'WANWU_ERR_BUFFER_FULL':
    case 'WANWU_ERR_OVERLOADED':
      return 503;
    case 'WANWU_ERR_INTERNAL':
      return 500;
    default: {
      const fault = new WanwuError(code, '').fault;
      return fault === 'device' || fault === 'config' ? 400 : 500;
    }
  }
}

/** An error as the API answers it. */
export function errorResponse(err: WanwuError): ApiResponse {
  return { status: httpStatus(err.code), body: { code: err.code, message: err.message } };
}

/** Methods that change something (commands reach devices); the others only read. */
const READS = new Set(['GET', 'HEAD']);

/** 127.0.0.0/8, ::1 and their IPv4-mapped form, as Node reports socket.remoteAddress. */
export function isLoopback(address: string): boolean {
  const a = address.startsWith('::ffff:') ? address.slice(7) : address;
  return a === '::1' || (isIP(a) === 4 && a.startsWith('127.'));
}

/** Host header names a loopback address or "localhost" (or there is none: HTTP/1.0). */
function loopbackHost(host: string | undefined): boolean {
  if (host === undefined || host === '') return true;
  const name = host.startsWith('[') ? host.slice(1, host.indexOf(']')) : host.replace(/:\d*$/, '');
  return name.toLowerCase() === 'localhost' || isLoopback(name);
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/**
 * Who may use /api/ (config http.apiToken). With a token, every request needs
 * `Authorization: Bearer <token>`, compared in constant time (of equal-length digests, so neither
 * the content nor the length of the token leaks through timing). Without one, reads are open and
 * changes are taken from loopback only; the Host header must name loopback too, so a web page the
 * operator opens cannot reach the API through DNS rebinding. Returns the refusal, or null.
 */
export function apiAccessRefusal(req: Pick<ApiRequest, 'method' | 'headers' | 'remoteAddress'>, token: string | null): WanwuError | null {
  if (token !== null) {
    const m = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
    if (m && timingSafeEqual(digest(m[1]!), digest(token))) return null;
    return new WanwuError('WANWU_ERR_AUTH', m ? 'the API token is wrong' : 'the API needs "Authorization: Bearer <http.apiToken>"');
  }
  if (READS.has(req.method)) return null;
  if (isLoopback(req.remoteAddress) && loopbackHost(req.headers.host)) return null;
  return new WanwuError('WANWU_ERR_FORBIDDEN', `${req.method} on the API is taken from loopback only while http.apiToken is not set`);
}
