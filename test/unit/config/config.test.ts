import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadConfig, parseConfig } from '../../../src/config/index.js';
import { WanwuError } from '../../../src/errors.js';

function configError(fn: () => unknown): WanwuError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(WanwuError);
    return err as WanwuError;
  }
  throw new Error('expected a WANWU_ERR_CONFIG error');
}

function tempFile(content: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'wanwu-config-'));
  const file = join(dir, 'wanwu.json');
  writeFileSync(file, content);
  return file;
}

describe('config defaults', () => {
  it('embedded defaults: the documented ports, ./data, ./devices and the local upstream', () => {
    const c = loadConfig({ env: {} });
    expect(c.coap).toEqual({
      host: '0.0.0.0',
      port: 5683,
      maxPayloadBytes: 1024,
      limits: { perDevice: { perSecond: 10, burst: 100 }, perSource: { perSecond: 1000, burst: 2000 }, maxPeers: 100_000, maxReassemblies: 1000, exemptLoopback: true },
      // Authentication is on out of the box (issue 6); 'optional' only when asked for.
      auth: { mode: 'required', tokenTtlS: 172_800, timestampWindowS: 300, maxTokens: 100_000 },
    });
    expect(parseConfig({ coap: { auth: { mode: 'optional' } } }).coap.auth.mode).toBe('optional');
    expect(() => parseConfig({ coap: { auth: { mode: 'off' } } })).toThrow(/coap\.auth\.mode/);
    expect(() => parseConfig({ coap: { auth: { tokenTtlS: 10 } } })).toThrow(/coap\.auth\.tokenTtlS/);
    expect(c.mqtt.port).toBe(1883);
    expect(c.mqtt.maxPayloadBytes).toBe(65536);
    expect(c.http.port).toBe(8080);
    expect(c.storage).toEqual({ path: './data/wanwu.db', sync: 'full', maxBytes: 1024 ** 3, maxRecords: null, whenFull: 'reject-new', ttl: 0 });
    expect(c.devicesDir).toBe('./devices');
    expect(c.upstreams).toHaveLength(1);
    expect(c.upstreams[0]).toMatchObject({ name: 'local', url: 'local', topic: 'wanwu/{productKey}/{deviceName}/{kind}', qos: 1 });
  });

  it('is frozen', () => {
    const c = loadConfig({ env: {} });
    expect(Object.isFrozen(c)).toBe(true);
    expect(Object.isFrozen(c.coap)).toBe(true);
    expect(Object.isFrozen(c.upstreams[0])).toBe(true);
  });
});

describe('config sources', () => {
  it('reads a JSON file and fills in defaults for what it leaves out', () => {
    const file = tempFile(JSON.stringify({ coap: { port: 0 }, upstreams: [{ name: 'cloud', url: 'mqtt://broker.example:1883', qos: 0 }] }));
    const c = loadConfig({ file, env: {} });
    expect(c.coap.port).toBe(0);
    expect(c.coap.host).toBe('0.0.0.0');
    expect(c.upstreams).toEqual([
      expect.objectContaining({ name: 'cloud', url: 'mqtt://broker.example:1883', qos: 0, topic: 'wanwu/{productKey}/{deviceName}/{kind}' }),
    ]);
  });

  it('takes the file from WANWU_CONFIG and lets WANWU_* variables override single keys', () => {
    const file = tempFile(JSON.stringify({ coap: { port: 6000 }, mqtt: { port: 2000 } }));
    const c = loadConfig({ env: { WANWU_CONFIG: file, WANWU_COAP_PORT: '0', WANWU_STORAGE_PATH: '/tmp/x.db', WANWU_HTTP_HOST: '127.0.0.1' } });
    expect(c.coap.port).toBe(0);
    expect(c.mqtt.port).toBe(2000);
    expect(c.storage.path).toBe('/tmp/x.db');
    expect(c.http.host).toBe('127.0.0.1');
  });

  it('--config wins over WANWU_CONFIG', () => {
    const a = tempFile(JSON.stringify({ http: { port: 1111 } }));
    const b = tempFile(JSON.stringify({ http: { port: 2222 } }));
    expect(loadConfig({ file: a, env: { WANWU_CONFIG: b } }).http.port).toBe(1111);
  });
});

describe('config errors carry WANWU_ERR_CONFIG and the key path', () => {
  it('unknown keys, at any depth', () => {
    const err = configError(() => parseConfig({ coap: { prot: 5683 }, colour: 'red' }));
    expect(err.code).toBe('WANWU_ERR_CONFIG');
    expect(err.message).toContain('coap.prot: unknown key');
    expect(err.message).toContain('colour: unknown key');
  });

  it('wrong types and bad values', () => {
    const err = configError(() => parseConfig({ mqtt: { port: '1883' }, http: { port: 70000 }, storage: { sync: 'sometimes' } }));
    expect(err.message).toMatch(/mqtt\.port: .*number/);
    expect(err.message).toMatch(/http\.port: /);
    expect(err.message).toMatch(/storage\.sync: /);
  });

  it('upstream entries are checked one by one with their index', () => {
    const err = configError(() =>
      parseConfig({ upstreams: [{ name: 'a', url: 'mqtt://h:1' }, { name: 'b', url: 'http://h', topic: 'x/{device}/#', extra: 1 }] }),
    );
    expect(err.message).toContain('upstreams[1].url');
    expect(err.message).toContain('upstreams[1].topic');
    expect(err.message).toContain('upstreams[1].extra: unknown key');
    expect(err.message).not.toContain('upstreams[0]');
  });

  it('duplicate upstream names', () => {
    const err = configError(() => parseConfig({ upstreams: [{ name: 'a', url: 'local' }, { name: 'a', url: 'mqtt://h:1' }] }));
    expect(err.message).toContain('upstreams: upstream names must be unique');
  });

  it('a file that is not JSON, or not an object, or missing', () => {
    expect(configError(() => loadConfig({ file: tempFile('{ coap: '), env: {} })).message).toMatch(/not valid JSON/);
    expect(configError(() => loadConfig({ file: tempFile('[1]'), env: {} })).message).toMatch(/must be a JSON object/);
    expect(configError(() => loadConfig({ file: '/nonexistent/wanwu.json', env: {} })).message).toMatch(/cannot read/);
  });

  it('an env port that is not a number names the variable and the key', () => {
    const err = configError(() => loadConfig({ env: { WANWU_MQTT_PORT: 'eighteen' } }));
    expect(err.message).toContain('WANWU_MQTT_PORT (mqtt.port)');
  });
});
