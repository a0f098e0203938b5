// An upstream's command topic (config upstreams[].commands.topic) as the forwarder subscribes to it
// and reads productKey and deviceName back from each message's topic.
import { describe, expect, it } from 'vitest';
import { commandSubscription } from '../../../src/forward/index.js';

describe('commandSubscription', () => {
  it('puts + for {productKey} and {deviceName} and reads them back', () => {
    const sub = commandSubscription('wanwu/cmd/{productKey}/{deviceName}');
    expect(sub.filter).toBe('wanwu/cmd/+/+');
    expect(sub.parse('wanwu/cmd/TrackerCat1/tr-0001')).toEqual({ productKey: 'TrackerCat1', deviceName: 'tr-0001' });
  });

  it('follows the placeholders wherever the template puts them', () => {
    const sub = commandSubscription('tenants/acme/{deviceName}/of/{productKey}/commands');
    expect(sub.filter).toBe('tenants/acme/+/of/+/commands');
    expect(sub.parse('tenants/acme/tr-0001/of/TrackerCat1/commands')).toEqual({ productKey: 'TrackerCat1', deviceName: 'tr-0001' });
  });

  it.each([
    'wanwu/cmd/TrackerCat1',
    'wanwu/cmd/TrackerCat1/tr-0001/extra',
    'wanwu/cmds/TrackerCat1/tr-0001',
    'wanwu/cmd//tr-0001',
    'wanwu/cmd/TrackerCat1/',
  ])('matches nothing on %s', (topic) => {
    expect(commandSubscription('wanwu/cmd/{productKey}/{deviceName}').parse(topic)).toBeNull();
  });
});
