// Which subscriptions of a device a command topic matches (src/transport/mqtt/commands.ts): MQTT
// topic filters [MQTT-4.7.1] and the QoS a command is published with [MQTT-3.3.5-1].

import { describe, expect, it } from 'vitest';
import type { Client } from 'aedes';
import { grantedQos, isSubscribed, topicMatches } from '../../../src/transport/mqtt/commands.js';

const SET = '/sys/P/d/thing/service/property/set';

describe('topicMatches [MQTT-4.7.1]', () => {
  it.each([
    [SET, true],
    ['/sys/P/d/#', true],
    ['/sys/P/d/thing/service/#', true],
    ['/sys/P/d/thing/service/property/set/#', true], // "#" also matches the parent level [MQTT-4.7.1-2]
    ['/sys/P/d/thing/service/+/set', true],
    ['/sys/+/+/thing/service/property/+', true],
    ['+/sys/P/d/thing/service/property/set', true], // the leading "/" makes an empty first level
    ['#', true],
    ['/sys/P/d/thing/service/+', false], // "+" is one level only
    ['/sys/P/d/thing/service/property', false],
    ['/sys/P/d/thing/service/property/set/x', false],
    ['/sys/P/d/thing/service/property/set_reply', false],
    ['/sys/P/d/thing/service/property/+/+', false],
    ['sys/P/d/thing/service/property/set', false],
  ])('%s -> %s', (filter, expected) => {
    expect(topicMatches(filter, SET)).toBe(expected);
  });
});

describe('grantedQos [MQTT-3.3.5-1]', () => {
  it('is the highest QoS of the matching subscriptions, or null when none matches', () => {
    expect(grantedQos(new Map(), SET)).toBeNull();
    expect(grantedQos(new Map([['/sys/P/d/thing/event/+/post_reply', 1]]), SET)).toBeNull();
    expect(grantedQos(new Map([['/sys/P/d/#', 0]]), SET)).toBe(0);
    expect(grantedQos(new Map([['/sys/P/d/#', 0], [SET, 1]]), SET)).toBe(1);
    expect(grantedQos(new Map([['/sys/P/d/#', 2], [SET, 0]]), SET)).toBe(2);
  });
});

describe('isSubscribed (whether an Alink reply has anyone to go to)', () => {
  const client = (filters: string[]) => ({ subscriptions: Object.fromEntries(filters.map((f) => [f, { qos: 0 }])) }) as unknown as Client;
  const REPLY = '/sys/TrackerCat1/tr-0001/thing/event/property/post_reply';
  it('matches the reply topic against the client\'s own filters, wildcards included', () => {
    expect(isSubscribed(client([REPLY]), REPLY)).toBe(true);
    expect(isSubscribed(client(['/sys/TrackerCat1/tr-0001/#']), REPLY)).toBe(true);
    expect(isSubscribed(client(['/sys/TrackerCat1/tr-0001/thing/event/+/post_reply']), REPLY)).toBe(true);
    expect(isSubscribed(client(['/sys/TrackerCat1/tr-0001/thing/service/#']), REPLY)).toBe(false);
    expect(isSubscribed(client([]), REPLY)).toBe(false);
    expect(isSubscribed({} as Client, REPLY)).toBe(false);
  });
});
