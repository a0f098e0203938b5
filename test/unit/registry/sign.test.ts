import { createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { parseMqttLogin, signCoapAuth, signContent, signMqttLogin, verifySign } from '../../../src/registry/sign.js';

describe('Alibaba MQTT login', () => {
  it('parses the client id and username', () => {
    const login = parseMqttLogin('tr-0001|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|', 'tr-0001&TrackerCat1');
    expect(login).toEqual({
      id: 'tr-0001',
      productKey: 'TrackerCat1',
      deviceName: 'tr-0001',
      signMethod: 'hmacsha256',
      securemode: '3',
      timestamp: '1700000000000',
    });
  });

  it('sign content sorts the parameters and concatenates name and value', () => {
    expect(signContent({ clientId: 'c1', deviceName: 'd1', productKey: 'p1', timestamp: '789' })).toBe('clientIdc1deviceNamed1productKeyp1timestamp789');
    expect(signContent({ clientId: 'c1', deviceName: 'd1', productKey: 'p1' })).toBe('clientIdc1deviceNamed1productKeyp1');
  });

  it('verifies a sign computed independently with node:crypto, for each method', () => {
    for (const [method, algo] of [['hmacsha256', 'sha256'], ['hmacsha1', 'sha1'], ['hmacmd5', 'md5']] as const) {
      const password = createHmac(algo, 'secret-1').update('clientIdimei123deviceNamedev1productKeyPK1timestamp1700000000000').digest('hex');
      const login = parseMqttLogin(`imei123|securemode=3,signmethod=${method},timestamp=1700000000000|`, 'dev1&PK1');
      expect(verifySign(login, 'secret-1', password)).toBe(true);
      expect(verifySign(login, 'secret-1', password.toUpperCase())).toBe(true);
      expect(verifySign(login, 'secret-2', password)).toBe(false);
      expect(verifySign(login, 'secret-1', undefined)).toBe(false);
    }
  });

  it('signMqttLogin produces credentials that verify', () => {
    const creds = signMqttLogin({ productKey: 'PK1', deviceName: 'dev1', deviceSecret: 's', timestamp: 42 });
    expect(creds.clientId).toBe('dev1|securemode=3,signmethod=hmacsha256,timestamp=42|');
    expect(creds.username).toBe('dev1&PK1');
    expect(verifySign(parseMqttLogin(creds.clientId, creds.username), 's', Buffer.from(creds.password))).toBe(true);
  });

  it('signCoapAuth builds the CoAP /auth body with the MQTT sign over the same content', () => {
    const body = signCoapAuth({ productKey: 'PK1', deviceName: 'dev1', deviceSecret: 'secret-1', clientId: 'imei123', timestamp: 1700000000000 });
    const sign = createHmac('sha256', 'secret-1').update('clientIdimei123deviceNamedev1productKeyPK1timestamp1700000000000').digest('hex');
    expect(body).toEqual({ productKey: 'PK1', deviceName: 'dev1', clientId: 'imei123', timestamp: '1700000000000', signmethod: 'hmacsha256', sign });
    // Defaults: the device name as client id; seq only when given.
    const md5 = signCoapAuth({ productKey: 'PK1', deviceName: 'dev1', deviceSecret: 'secret-1', signMethod: 'hmacmd5', timestamp: 5, seq: 9 });
    expect(md5).toEqual({
      productKey: 'PK1', deviceName: 'dev1', clientId: 'dev1', timestamp: '5', signmethod: 'hmacmd5', seq: 9,
      sign: createHmac('md5', 'secret-1').update('clientIddev1deviceNamedev1productKeyPK1timestamp5').digest('hex'),
    });
  });

  it.each([
    ['no bars', 'plain-client-id', 'd&p'],
    ['no sign method', 'x|securemode=3|', 'd&p'],
    ['unknown sign method', 'x|signmethod=hmacsha512|', 'd&p'],
    ['a parameter without =', 'x|signmethod=hmacsha1,oops|', 'd&p'],
    ['no username', 'x|signmethod=hmacsha1|', undefined],
    ['username without &', 'x|signmethod=hmacsha1|', 'dp'],
  ])('refuses %s with WANWU_ERR_AUTH', (_name, clientId, username) => {
    expect(() => parseMqttLogin(clientId, username)).toThrow(WanwuError);
    try {
      parseMqttLogin(clientId, username);
    } catch (err) {
      expect((err as WanwuError).code).toBe('WANWU_ERR_AUTH');
    }
  });
});
