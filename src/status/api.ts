// The HTTP API under /api/ (commands, device shadow), served by the status server next to
// /status and /metrics. Each feature contributes an ApiHandler: it answers the requests it knows
// and returns null for the rest, so adding a resource is one entry in the gateway's list.
//
// Errors are JSON `{"code": "WANWU_ERR_*", "message"}` with the HTTP status of the code (httpStatus).

import type { IncomingHttpHeaders } from 'node:http';
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
