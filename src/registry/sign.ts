// Device login as Alibaba IoT Platform defines it for MQTT ("MQTT-based connection over TCP"):
//   client id  {id}|securemode=3,signmethod=hmacsha256,timestamp=1700000000000|
//   username   {deviceName}&{productKey}
//   password   hex HMAC over "clientId{id}deviceName{dn}productKey{pk}timestamp{ms}" keyed with the device secret
// The signed parameters are sorted by name and concatenated name+value; timestamp takes part only
// when the client id carries one. Other client-id parameters (securemode, _v, lan, ext ...) are not signed.

import { createHmac, timingSafeEqual } from 'node:crypto';
import { WanwuError } from '../errors.js';

export const SIGN_METHODS = { hmacsha256: 'sha256', hmacsha1: 'sha1', hmacmd5: 'md5' } as const;
export type SignMethod = keyof typeof SIGN_METHODS;

export interface MqttLogin {
  /** The `{id}` part of the client id (often the IMEI or the device name). */
  id: string;
  productKey: string;
  deviceName: string;
  signMethod: SignMethod;
  securemode?: string;
  timestamp?: string;
}

/** Parses the Alibaba-style client id and username; throws WANWU_ERR_AUTH on anything else. */
export function parseMqttLogin(clientId: string, username: string | undefined): MqttLogin {
  const bar = clientId.indexOf('|');
  if (bar <= 0 || !clientId.endsWith('|') || bar === clientId.length - 1) {
    throw authError('client id must look like {id}|securemode=3,signmethod=hmacsha256,timestamp={ms}|');
  }
  const id = clientId.slice(0, bar);
  const params = new Map<string, string>();
  for (const pair of clientId.slice(bar + 1, -1).split(',')) {
    if (pair === '') continue;
    const eq = pair.indexOf('=');
    if (eq <= 0) throw authError(`client id parameter ${JSON.stringify(pair)} is not name=value`);
    params.set(pair.slice(0, eq), pair.slice(eq + 1));
  }
  const signMethod = params.get('signmethod');
  if (signMethod === undefined || !(signMethod in SIGN_METHODS)) {
    throw authError(`signmethod must be one of ${Object.keys(SIGN_METHODS).join(', ')}`);
  }
  if (!username) throw authError('username must be {deviceName}&{productKey}');
  const amp = username.lastIndexOf('&');
  if (amp <= 0 || amp === username.length - 1) throw authError('username must be {deviceName}&{productKey}');
  const login: MqttLogin = {
    id,
    deviceName: username.slice(0, amp),
    productKey: username.slice(amp + 1),
    signMethod: signMethod as SignMethod,
  };
  const securemode = params.get('securemode');
  if (securemode !== undefined) login.securemode = securemode;
  const timestamp = params.get('timestamp');
  if (timestamp !== undefined) login.timestamp = timestamp;
  return login;
}

/** The string that is signed: parameters sorted by name, each as name+value, no separators. */
export function signContent(p: { clientId: string; deviceName: string; productKey: string; timestamp?: string }): string {
  const parts = [`clientId${p.clientId}`, `deviceName${p.deviceName}`, `productKey${p.productKey}`];
  if (p.timestamp !== undefined) parts.push(`timestamp${p.timestamp}`);
  return parts.join('');
}

export function computeSign(method: SignMethod, secret: string, content: string): string {
  return createHmac(SIGN_METHODS[method], secret).update(content).digest('hex');
}

/** Constant-time comparison of the device's password with the expected sign (hex, case-insensitive). */
export function verifySign(login: MqttLogin, secret: string, password: string | Buffer | undefined): boolean {
  if (password === undefined) return false;
  const given = Buffer.from(String(password).toLowerCase(), 'utf8');
  const content = signContent({
    clientId: login.id,
    deviceName: login.deviceName,
    productKey: login.productKey,
    ...(login.timestamp === undefined ? {} : { timestamp: login.timestamp }),
  });
  const expected = Buffer.from(computeSign(login.signMethod, secret, content), 'utf8');
  return given.length === expected.length && timingSafeEqual(given, expected);
}

/** Builds the credentials a device would send: used by the tests, the docs and the simulator. */
export function signMqttLogin(p: {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  id?: string;
  signMethod?: SignMethod;
  timestamp?: number;
}): { clientId: string; username: string; password: string } {
  const id = p.id ?? p.deviceName;
  const signMethod = p.signMethod ?? 'hmacsha256';
  const timestamp = String(p.timestamp ?? Date.now());
  const content = signContent({ clientId: id, deviceName: p.deviceName, productKey: p.productKey, timestamp });
  return {
    clientId: `${id}|securemode=3,signmethod=${signMethod},timestamp=${timestamp}|`,
    username: `${p.deviceName}&${p.productKey}`,
    password: computeSign(signMethod, p.deviceSecret, content),
  };
}

/** The JSON body of a CoAP `POST /auth` (Alibaba IoT's CoAP form, src/transport/coap/auth.ts). */
export interface CoapAuthBody {
  productKey: string;
  deviceName: string;
  clientId: string;
  /** ms since the epoch, as a string (Alibaba's form). */
  timestamp: string;
  signmethod: SignMethod;
  sign: string;
  /** The sequence number the first uplink must exceed (default: any, from 0). */
  seq?: number;
}

/**
 * Builds the /auth body a device would send: the same sign as its MQTT login, over the same content
 * (signContent). Used by the simulator, `wanwu sign --coap` and the docs.
 */
export function signCoapAuth(p: {
  productKey: string;
  deviceName: string;
  deviceSecret: string;
  clientId?: string;
  signMethod?: SignMethod;
  timestamp?: number;
  seq?: number;
}): CoapAuthBody {
  const clientId = p.clientId ?? p.deviceName;
  const signmethod = p.signMethod ?? 'hmacsha256';
  const timestamp = String(p.timestamp ?? Date.now());
  const sign = computeSign(signmethod, p.deviceSecret, signContent({ clientId, deviceName: p.deviceName, productKey: p.productKey, timestamp }));
  return { productKey: p.productKey, deviceName: p.deviceName, clientId, timestamp, signmethod, sign, ...(p.seq === undefined ? {} : { seq: p.seq }) };
}

function authError(message: string): WanwuError {
  return new WanwuError('WANWU_ERR_AUTH', message);
}
