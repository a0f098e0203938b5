// Alink uplink topics (ARCHITECTURE.md "External contract"): part of the thing model's protocol, used by
// both listeners (to route a packet) and by dead-letter replay (to route it again).
//   /sys/{productKey}/{deviceName}/thing/event/property/post
//   /sys/{productKey}/{deviceName}/thing/event/{eventId}/post
//   /sys/{productKey}/{deviceName}/thing/model/up_raw
//   /sys/{productKey}/{deviceName}/thing/event/property/pack/post   (and .../batch/post)
// and the device's replies to commands (src/downlink), which share the uplink path:
//   /sys/{productKey}/{deviceName}/thing/service/property/set_reply, .../thing/service/{serviceId}_reply,
//   /sys/{productKey}/{deviceName}/thing/model/down_raw_reply
// Replies go to the same topic + "_reply".

import { WanwuError } from '../errors.js';
import type { UplinkRoute } from '../types.js';

export interface ParsedTopic {
  productKey: string;
  deviceName: string;
  route: UplinkRoute;
}

/** Identifiers (productKey, deviceName, eventId): no wildcards, separators or control characters. */
const IDENT = /^[A-Za-z0-9_.:@\-]{1,64}$/;

/** Splits `/sys/{pk}/{dn}/...` without validating the remainder; null when the prefix does not match. */
export function topicOwner(topic: string): { productKey: string; deviceName: string; rest: string[] } | null {
  const parts = topic.split('/');
  // '' 'sys' pk dn ...rest
  if (parts.length < 5 || parts[0] !== '' || parts[1] !== 'sys') return null;
  const productKey = parts[2]!;
  const deviceName = parts[3]!;
  if (!IDENT.test(productKey) || !IDENT.test(deviceName)) return null;
  return { productKey, deviceName, rest: parts.slice(4) };
}

/** Parses an uplink topic, or throws WANWU_ERR_TOPIC naming what is wrong. */
export function parseUplinkTopic(topic: string): ParsedTopic {
  const owner = topicOwner(topic);
  if (!owner) {
    throw new WanwuError('WANWU_ERR_TOPIC', `topic ${JSON.stringify(truncate(topic))} is not under /sys/{productKey}/{deviceName}/`);
  }
  const { productKey, deviceName, rest } = owner;
  const tail = rest.join('/');
  let route: UplinkRoute | null = null;
  if (tail === 'thing/event/property/post') route = { type: 'property-post' };
  else if (tail === 'thing/model/up_raw') route = { type: 'up-raw' };
  else if (tail === 'thing/event/property/pack/post') route = { type: 'pack-post' };
  else if (tail === 'thing/event/property/batch/post') route = { type: 'batch-post' };
  else if (rest.length === 4 && rest[0] === 'thing' && rest[1] === 'event' && rest[3] === 'post' && IDENT.test(rest[2]!)) {
    route = { type: 'event-post', eventId: rest[2]! };
  }
  else if (tail === 'thing/model/down_raw_reply') route = { type: 'command-reply', method: 'thing.model.down_raw' };
  else if (tail === 'thing/service/property/set_reply') route = { type: 'command-reply', method: 'thing.service.property.set' };
  else if (rest.length === 3 && rest[0] === 'thing' && rest[1] === 'service' && rest[2]!.endsWith('_reply')) {
    const serviceId = rest[2]!.slice(0, -'_reply'.length);
    if (IDENT.test(serviceId)) route = { type: 'command-reply', method: `thing.service.${serviceId}` };
  }
  if (!route) {
    throw new WanwuError('WANWU_ERR_TOPIC', `unsupported uplink topic ${JSON.stringify(truncate(topic))}`);
  }
  return { productKey, deviceName, route };
}

export function replyTopic(topic: string): string {
  return `${topic}_reply`;
}

function truncate(s: string): string {
  return s.length > 120 ? `${s.slice(0, 117)}...` : s;
}
