// Config of the command path: upstreams[].commands, http.apiToken (and its env override) and the
// downlink TTL bounds.
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../../src/config/index.js';
import { commandTopicOverlaps, recordTopicMatcher } from '../../../src/config/schema.js';
import { errorOf } from '../../helpers/index.js';

const configError = (input: unknown) => errorOf(() => parseConfig(input));

describe('upstreams[].commands', () => {
  it('is on for the default local upstream, with the default topic', () => {
    expect(parseConfig({}).upstreams).toEqual([expect.objectContaining({ name: 'local', url: 'local', commands: { topic: 'wanwu/cmd/{productKey}/{deviceName}' } })]);
  });

  it('is off for an upstream that does not ask for it, the local one included', () => {
    const c = parseConfig({ upstreams: [{ name: 'local', url: 'local' }, { name: 'cloud', url: 'mqtt://broker.example:1883' }] });
    expect(c.upstreams.map((u) => u.commands)).toEqual([null, null]);
  });

  it('takes true, {} and a topic of its own', () => {
    const c = parseConfig({
      upstreams: [
        { name: 'a', url: 'mqtt://h:1', commands: true },
        { name: 'b', url: 'mqtt://h:1', commands: {} },
        { name: 'c', url: 'mqtt://h:1', commands: { topic: 'acme/{deviceName}/{productKey}/down' } },
        { name: 'd', url: 'mqtt://h:1', commands: false },
      ],
    });
    expect(c.upstreams.map((u) => u.commands)).toEqual([
      { topic: 'wanwu/cmd/{productKey}/{deviceName}' },
      { topic: 'wanwu/cmd/{productKey}/{deviceName}' },
      { topic: 'acme/{deviceName}/{productKey}/down' },
      null,
    ]);
  });

  it.each([
    ['a wildcard', 'wanwu/cmd/+/{productKey}/{deviceName}', 'wildcards'],
    ['no {deviceName}', 'wanwu/cmd/{productKey}', 'once each'],
    ['{productKey} twice', 'cmd/{productKey}/{productKey}/{deviceName}', 'once each'],
    ['a placeholder inside a level', 'cmd/pk-{productKey}/{deviceName}', 'whole level'],
    ['another placeholder', 'cmd/{kind}/{productKey}/{deviceName}', 'no other placeholder'],
  ])('refuses a topic with %s', (_what, topic, message) => {
    const err = configError({ upstreams: [{ name: 'cloud', url: 'mqtt://h:1', commands: { topic } }] });
    expect(err.code).toBe('WANWU_ERR_CONFIG');
    expect(err.message).toContain('upstreams[0].commands.topic');
    expect(err.message).toContain(message);
  });

  it('refuses a command topic its own records could arrive on (a loop)', () => {
    const err = configError({ upstreams: [{ name: 'cloud', url: 'mqtt://h:1', topic: 'acme/{productKey}/{deviceName}', commands: { topic: 'acme/{productKey}/{deviceName}' } }] });
    expect(err.message).toContain('upstreams[0].commands.topic: overlaps the record topic');
  });

  it('refuses a local command topic outside wanwu/cmd/, where no application may publish', () => {
    const err = configError({ upstreams: [{ name: 'local', url: 'local', commands: { topic: 'wanwu/commands/{productKey}/{deviceName}' } }] });
    expect(err.message).toContain('must start with "wanwu/cmd/"');
  });

  it('commandTopicOverlaps: a command literal meets an equal literal, or {kind}/{event} when it is a kind; a command placeholder meets anything', () => {
    expect(commandTopicOverlaps('a/{productKey}/{deviceName}', 'a/{deviceName}/{kind}')).toBe(true);
    // Each record of kind "command" would arrive on the command subscription.
    expect(commandTopicOverlaps('devices/{productKey}/{deviceName}/command', 'devices/{productKey}/{deviceName}/{kind}')).toBe(true);
    expect(commandTopicOverlaps('devices/{productKey}/{deviceName}/state', 'devices/{productKey}/{deviceName}/{event}')).toBe(true);
    expect(commandTopicOverlaps('wanwu/{productKey}/{deviceName}', 'wanwu/{productKey}/all')).toBe(true);
    expect(commandTopicOverlaps('devices/{productKey}/{deviceName}/down', 'devices/{productKey}/{deviceName}/{kind}')).toBe(false);
    expect(commandTopicOverlaps('wanwu/cmd/{productKey}/{deviceName}', 'wanwu/{productKey}/{deviceName}/{kind}')).toBe(false);
    expect(commandTopicOverlaps('a/{productKey}/{deviceName}', 'a/{productKey}/{deviceName}/{kind}')).toBe(false);
    expect(commandTopicOverlaps('a/{productKey}/{deviceName}', 'b/{productKey}/{deviceName}')).toBe(false);
  });

  it('recordTopicMatcher: names match any level, {kind} only a kind', () => {
    const m = recordTopicMatcher('wanwu/{productKey}/{deviceName}/{kind}');
    expect(m('wanwu/PK/dn/command')).toBe(true);
    expect(m('wanwu/cmd/TrackerCat1/state')).toBe(true);
    expect(m('wanwu/cmd/TrackerCat1/tr-0001')).toBe(false);
    expect(m('wanwu/PK/dn/command/x')).toBe(false);
    expect(recordTopicMatcher('x.y/{productKey}-{deviceName}')('x.y/a-b')).toBe(true);
    expect(recordTopicMatcher('x.y/{productKey}-{deviceName}')('xzy/a-b')).toBe(false);
  });
});

describe('http.apiToken', () => {
  it('is null by default and set from the file or WANWU_HTTP_API_TOKEN', () => {
    expect(parseConfig({}).http.apiToken).toBeNull();
    expect(parseConfig({ http: { apiToken: 'x'.repeat(16) } }).http.apiToken).toBe('x'.repeat(16));
    expect(loadConfig({ env: { WANWU_HTTP_API_TOKEN: 'from-the-environment-1' } }).http.apiToken).toBe('from-the-environment-1');
  });

  it('refuses a token under 16 characters', () => {
    expect(configError({ http: { apiToken: 'short' } }).message).toContain('http.apiToken: at least 16 characters');
    expect(errorOf(() => loadConfig({ env: { WANWU_HTTP_API_TOKEN: 'short' } })).message).toContain('http.apiToken');
  });
});

describe('downlink TTLs', () => {
  it('refuses a default ttlS above maxTtlS (every command without a ttl would be refused)', () => {
    expect(configError({ downlink: { ttlS: 100, maxTtlS: 50 } }).message).toContain('downlink.ttlS: ttlS must not exceed maxTtlS');
    expect(parseConfig({ downlink: { ttlS: 50, maxTtlS: 50 } }).downlink.ttlS).toBe(50);
  });
});
