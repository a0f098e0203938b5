// Who may use the HTTP API (src/status/api.ts apiAccessRefusal, config http.apiToken).
import { describe, expect, it } from 'vitest';
import { apiAccessRefusal, isLoopback } from '../../../src/status/api.js';

const TOKEN = 'a-long-enough-api-token';
const req = (method: string, remoteAddress: string, headers: Record<string, string> = {}) => ({ method, remoteAddress, headers });

describe('isLoopback', () => {
  it.each(['127.0.0.1', '127.1.2.3', '::1', '::ffff:127.0.0.1'])('%s is loopback', (a) => expect(isLoopback(a)).toBe(true));
  it.each(['10.0.0.1', '::ffff:10.0.0.1', '128.0.0.1', 'fe80::1', '', 'localhost', '127.0.0.1.evil'])('%s is not', (a) => expect(isLoopback(a)).toBe(false));
});

describe('apiAccessRefusal', () => {
  describe('with http.apiToken', () => {
    it('takes every method, from anywhere, with the right bearer token', () => {
      for (const method of ['GET', 'POST', 'DELETE']) {
        expect(apiAccessRefusal(req(method, '203.0.113.9', { authorization: `Bearer ${TOKEN}` }), TOKEN)).toBeNull();
      }
      expect(apiAccessRefusal(req('GET', '203.0.113.9', { authorization: `bearer ${TOKEN}` }), TOKEN)).toBeNull();
    });

    it.each([
      ['no Authorization header', {}],
      ['a wrong token', { authorization: 'Bearer a-long-enough-api-tokeX' }],
      ['a prefix of the token', { authorization: 'Bearer a-long' }],
      ['the token with more after it', { authorization: `Bearer ${TOKEN}x` }],
      ['another scheme', { authorization: `Basic ${TOKEN}` }],
      ['the bare token', { authorization: TOKEN }],
    ])('refuses %s with WANWU_ERR_AUTH, even a GET from loopback', (_what, headers) => {
      expect(apiAccessRefusal(req('GET', '127.0.0.1', headers), TOKEN)?.code).toBe('WANWU_ERR_AUTH');
    });
  });

  describe('without a token', () => {
    it('takes reads from anywhere', () => {
      expect(apiAccessRefusal(req('GET', '203.0.113.9'), null)).toBeNull();
      expect(apiAccessRefusal(req('HEAD', '203.0.113.9'), null)).toBeNull();
    });

    it('takes changes from loopback addressed to a loopback host', () => {
      for (const host of ['127.0.0.1:8080', 'localhost:8080', 'LOCALHOST', '[::1]:8080', '127.0.0.1']) {
        expect(apiAccessRefusal(req('POST', '127.0.0.1', { host }), null), host).toBeNull();
      }
      expect(apiAccessRefusal(req('DELETE', '::1', { host: '[::1]:8080' }), null)).toBeNull();
      expect(apiAccessRefusal(req('POST', '::ffff:127.0.0.1'), null)).toBeNull();
    });

    it('refuses changes from elsewhere with WANWU_ERR_FORBIDDEN', () => {
      expect(apiAccessRefusal(req('POST', '192.168.1.20', { host: '192.168.1.5:8080' }), null)?.code).toBe('WANWU_ERR_FORBIDDEN');
      expect(apiAccessRefusal(req('DELETE', '::ffff:10.1.1.1'), null)?.code).toBe('WANWU_ERR_FORBIDDEN');
    });

    it('refuses a loopback change whose Host names another site (a DNS-rebinding page in the operator\'s browser)', () => {
      expect(apiAccessRefusal(req('POST', '127.0.0.1', { host: 'evil.example:8080' }), null)?.code).toBe('WANWU_ERR_FORBIDDEN');
      expect(apiAccessRefusal(req('DELETE', '127.0.0.1', { host: 'localhost.evil.example' }), null)?.code).toBe('WANWU_ERR_FORBIDDEN');
    });
  });
});
