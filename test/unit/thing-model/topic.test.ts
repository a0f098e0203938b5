import { describe, expect, it } from 'vitest';
import { parseUplinkTopic, replyTopic, topicOwner } from '../../../src/thing-model/topic.js';

describe('Alink uplink topics', () => {
  it('property post', () => {
    expect(parseUplinkTopic('/sys/TrackerCat1/tr-0001/thing/event/property/post')).toEqual({
      productKey: 'TrackerCat1', deviceName: 'tr-0001', route: { type: 'property-post' },
    });
  });
  it('event post', () => {
    expect(parseUplinkTopic('/sys/TrackerCat1/tr-0001/thing/event/lowBattery/post').route).toEqual({ type: 'event-post', eventId: 'lowBattery' });
  });
  it('up_raw', () => {
    expect(parseUplinkTopic('/sys/WaterMeterNB/wm-0001/thing/model/up_raw').route).toEqual({ type: 'up-raw' });
  });
  it('batched posts: pack/post and batch/post', () => {
    expect(parseUplinkTopic('/sys/SensorRedCap/rs-0001/thing/event/property/pack/post').route).toEqual({ type: 'pack-post' });
    expect(parseUplinkTopic('/sys/SensorRedCap/rs-0001/thing/event/property/batch/post').route).toEqual({ type: 'batch-post' });
  });
  it.each([
    '/sys/pk/dn/thing/event/property/post/extra',
    '/sys/pk/dn/thing/event/property/pack/post/extra',
    '/sys/pk/dn/thing/event/property/history/post',
    '/sys/pk/dn/thing/model/down_raw',
    '/sys/pk/dn/thing/event//post',
    '/sys/pk/dn',
    'sys/pk/dn/thing/model/up_raw',
    '/ext/pk/dn/thing/model/up_raw',
    '/sys/p+k/dn/thing/model/up_raw',
    '/sys/pk/d#n/thing/model/up_raw',
  ])('refuses %s with WANWU_ERR_TOPIC', (topic) => {
    expect(() => parseUplinkTopic(topic)).toThrow(expect.objectContaining({ code: 'WANWU_ERR_TOPIC' }));
  });
  it('replies go to topic + _reply', () => {
    expect(replyTopic('/sys/a/b/thing/event/property/post')).toBe('/sys/a/b/thing/event/property/post_reply');
  });
  it('topicOwner reads the device of any /sys topic', () => {
    expect(topicOwner('/sys/a/b/c/d')).toEqual({ productKey: 'a', deviceName: 'b', rest: ['c', 'd'] });
    expect(topicOwner('/other/a/b/c')).toBeNull();
  });
});
