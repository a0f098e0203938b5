// The devices resource of the HTTP API (src/status/api.ts):
//
//   GET /api/devices/{productKey}/{deviceName}
//     -> {productKey, deviceName, rat, status, state, since, lastSeen, expectedNextAt?, intervalS?,
//         intervalSource?, reported, desired, commands}
//   GET /api/devices?productKey=&rat=&state=&limit=&offset=
//     -> {items: [{productKey, deviceName, rat, state, lastSeen}], total, offset, limit, next?}
//
// The list covers every device in the registry, never-seen ones included (offline, lastSeen null),
// ordered by productKey, then deviceName; `next` is the offset of the following page. Other paths
// under /api/devices/ (a device's commands) belong to other handlers: this one answers null.

import { WanwuError } from '../errors.js';
import type { Device, Registry } from '../registry/index.js';
import type { ApiHandler, ApiRequest, ApiResponse } from '../status/api.js';
import { RATS, type Rat } from '../types.js';
import { LIVENESS_STATES, type Liveness, type LivenessState } from './liveness.js';
import type { Shadow } from './shadow.js';

export interface DevicesApiOptions {
  registry: Registry;
  liveness: Pick<Liveness, 'get'>;
  shadow: Pick<Shadow, 'reported' | 'desired' | 'commands'>;
}

/** Page size when none is asked for, and the largest allowed. */
export const DEVICES_PAGE_DEFAULT = 100;
export const DEVICES_PAGE_MAX = 1000;

const LIST_PARAMS = ['productKey', 'rat', 'state', 'limit', 'offset'];

function malformed(message: string): never {
  throw new WanwuError('WANWU_ERR_MALFORMED', message);
}

function intParam(q: URLSearchParams, name: string, dflt: number, min: number, max: number): number {
  const v = q.get(name);
  if (v === null) return dflt;
  if (!/^\d{1,9}$/.test(v) || Number(v) < min || Number(v) > max) malformed(`${name} is a whole number from ${min} to ${max}`);
  return Number(v);
}

export function createDevicesApi(opts: DevicesApiOptions): ApiHandler {
  const { registry, liveness, shadow } = opts;
  /** Sorted device names per product, re-sorted when the product's device count changes (devices are added at run time). */
  const sorted = new WeakMap<ReadonlyMap<string, Device>, { size: number; names: string[] }>();
  const namesOf = (devices: ReadonlyMap<string, Device>): string[] => {
    let s = sorted.get(devices);
    if (!s || s.size !== devices.size) {
      s = { size: devices.size, names: [...devices.keys()].sort() };
      sorted.set(devices, s);
    }
    return s.names;
  };

  function one(productKey: string, deviceName: string): ApiResponse {
    const product = registry.product(productKey);
    const device = product && registry.device(productKey, deviceName);
    if (!product || !device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${productKey}/${deviceName}`);
    return {
      status: 200,
      body: {
        productKey,
        deviceName,
        rat: product.rat,
        status: device.status ?? 'enabled',
        ...liveness.get(productKey, deviceName),
        reported: shadow.reported(productKey, deviceName),
        desired: shadow.desired(productKey, deviceName),
        commands: shadow.commands(productKey, deviceName),
      },
    };
  }

  function list(q: URLSearchParams): ApiResponse {
    for (const k of q.keys()) if (!LIST_PARAMS.includes(k)) malformed(`unknown query parameter "${k}" (expected ${LIST_PARAMS.join(', ')})`);
    const productKey = q.get('productKey');
    const rat = q.get('rat');
    const state = q.get('state');
    if (rat !== null && !(RATS as readonly string[]).includes(rat)) malformed(`rat is one of ${RATS.join(', ')}`);
    if (state !== null && !(LIVENESS_STATES as readonly string[]).includes(state)) malformed(`state is one of ${LIVENESS_STATES.join(', ')}`);
    const limit = intParam(q, 'limit', DEVICES_PAGE_DEFAULT, 1, DEVICES_PAGE_MAX);
    const offset = intParam(q, 'offset', 0, 0, 999_999_999);

    const items: Array<{ productKey: string; deviceName: string; rat: Rat; state: LivenessState; lastSeen: number | null }> = [];
    let total = 0;
    for (const p of registry.products) {
      if (productKey !== null && p.productKey !== productKey) continue;
      if (rat !== null && p.rat !== rat) continue;
      for (const deviceName of namesOf(p.devices)) {
        // Without a state filter the liveness of skipped rows is not needed.
        const l = state !== null || (total >= offset && items.length < limit) ? liveness.get(p.productKey, deviceName) : null;
        if (state !== null && l!.state !== state) continue;
        if (total >= offset && items.length < limit) items.push({ productKey: p.productKey, deviceName, rat: p.rat, state: l!.state, lastSeen: l!.lastSeen });
        total++;
      }
    }
    const body: Record<string, unknown> = { items, total, offset, limit };
    if (offset + items.length < total) body.next = offset + items.length;
    return { status: 200, body };
  }

  return (req: ApiRequest) => {
    const s = req.segments;
    if (s[0] !== 'devices' || (req.method !== 'GET' && req.method !== 'HEAD')) return null;
    if (s.length === 1) return list(req.query);
    if (s.length === 3) return one(s[1]!, s[2]!);
    return null;
  };
}
