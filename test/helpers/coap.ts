// A bare UDP CoAP client for tests: sends exactly the datagrams it is given and queues whatever comes
// back, so tests can check every byte (retransmissions, empty ACKs, sizes). Each client is a new
// source port, as after a NAT rebinding.
//
// Also the tests' one implementation of a device's CoAP authentication (Alibaba's form, which the
// gateway requires by default): the /auth body with its sign computed here from the documented content,
// independently of src/registry/sign.ts, and authenticate(), which returns the token and hands out the
// options of each uplink (2088 the token, 2089 the next sequence number).

import { createHmac } from 'node:crypto';
import dgram from 'node:dgram';
import { generate, parse, type Option, type Packet, type ParsedPacket } from 'coap-packet';
import { expect } from 'vitest';

/** Alibaba IoT's CoAP options: the token from /auth, and a sequence number above the last one accepted. */
export const OPT_TOKEN = 2088;
export const OPT_SEQ = 2089;

/** RFC 7252 §3.2 uint, minimal big-endian; written here, not imported, so the tests check the encoding. */
export function uint(v: number): Buffer {
  const out: number[] = [];
  for (let x = v; x > 0; x = Math.floor(x / 256)) out.unshift(x % 256);
  return Buffer.from(out);
}

/** What goes into a /auth body; `sign` replaces the computed sign. */
export interface AuthFields {
  productKey: string;
  deviceName: string;
  secret: string;
  clientId?: string;
  timestamp?: number;
  signmethod?: 'hmacsha256' | 'hmacsha1' | 'hmacmd5';
  iccid?: string;
  seq?: number;
  sign?: string;
}

/** The Alibaba CoAP /auth body: sign = HMAC(secret, "clientId{id}deviceName{dn}productKey{pk}timestamp{ts}"). */
export function authBody(f: AuthFields): Record<string, unknown> {
  const clientId = f.clientId ?? f.deviceName;
  const timestamp = String(f.timestamp ?? Date.now());
  const signmethod = f.signmethod ?? 'hmacsha256';
  const algo = { hmacsha256: 'sha256', hmacsha1: 'sha1', hmacmd5: 'md5' }[signmethod];
  const sign = f.sign ?? createHmac(algo, f.secret).update(`clientId${clientId}deviceName${f.deviceName}productKey${f.productKey}timestamp${timestamp}`).digest('hex');
  const body: Record<string, unknown> = { productKey: f.productKey, deviceName: f.deviceName, clientId, timestamp, signmethod, sign };
  if (f.iccid !== undefined) body.iccid = f.iccid;
  if (f.seq !== undefined) body.seq = f.seq;
  return body;
}

let authMessageId = 0;

/**
 * POST /auth (CON, Content-Format application/json) with `body`; `token` is the CoAP token. Without
 * `messageId`, ids come from 0xf000-0xffff, which the tests' own packets leave alone, so the listener's
 * de-duplication never mistakes one for the other.
 */
export function authPacket(body: Record<string, unknown> | Buffer, token: Buffer = Buffer.from([0xa1, 0xa2]), messageId?: number): Packet {
  authMessageId = (authMessageId + 1) & 0x0fff;
  return {
    code: 'POST',
    confirmable: true,
    messageId: messageId ?? 0xf000 + authMessageId,
    token,
    options: [
      { name: 'Uri-Path', value: Buffer.from('auth') },
      { name: 'Content-Format', value: uint(50) },
    ],
    payload: Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body)),
  };
}

/** A device's token from POST /auth, and its sequence numbers. */
export interface DeviceToken {
  token: string;
  /** The last sequence number handed out (0 before the first uplink). */
  readonly seq: number;
  /** Options 2088 and 2089 for one uplink: the next sequence number, or `seq` as given (a retransmission, a replay). */
  options(seq?: number): Option[];
}

export interface Received {
  packet: ParsedPacket;
  raw: Buffer;
}

let lastAuthTimestamp = 0;

export class RawCoapClient {
  private readonly inbox: Received[] = [];
  private waiter: ((r: Received) => void) | null = null;

  private constructor(
    readonly socket: dgram.Socket,
    readonly serverPort: number,
  ) {
    socket.on('message', (raw: Buffer) => {
      const r = { packet: parse(raw), raw };
      if (this.waiter) {
        const w = this.waiter;
        this.waiter = null;
        w(r);
      } else this.inbox.push(r);
    });
  }

  /** Binds to `address` (any 127.0.0.0/8 address reaches a listener on 127.0.0.1). */
  static async open(serverPort: number, address = '127.0.0.1'): Promise<RawCoapClient> {
    const socket = dgram.createSocket('udp4');
    await new Promise<void>((resolve) => socket.bind(0, address, resolve));
    return new RawCoapClient(socket, serverPort);
  }

  get port(): number {
    return this.socket.address().port;
  }

  send(message: Packet | Buffer): Buffer {
    const bytes = Buffer.isBuffer(message) ? message : generate(message);
    this.socket.send(bytes, this.serverPort, '127.0.0.1');
    return bytes;
  }

  /** The next datagram from the listener, or a rejection after timeoutMs. */
  next(timeoutMs = 2_000): Promise<Received> {
    const queued = this.inbox.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = null;
        reject(new Error(`no datagram within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = (r) => {
        clearTimeout(timer);
        resolve(r);
      };
    });
  }

  /** Sends and waits for the answer; `sent` is the request datagram. */
  async request(message: Packet | Buffer, timeoutMs?: number): Promise<Received & { sent: Buffer }> {
    const sent = this.send(message);
    return { ...(await this.next(timeoutMs)), sent };
  }

  /** POST /auth as the device and expect 2.05; returns its token. Each call signs a new timestamp. */
  async authenticate(f: AuthFields): Promise<DeviceToken> {
    // The gateway takes each sign once: two calls in the same millisecond must still differ.
    const timestamp = f.timestamp ?? Math.max(Date.now(), lastAuthTimestamp + 1);
    lastAuthTimestamp = timestamp;
    const a = await this.request(authPacket(authBody({ ...f, timestamp })));
    if (a.packet.code !== '2.05') throw new Error(`/auth answered ${a.packet.code} ${a.packet.payload.toString()}`);
    const token = (JSON.parse(a.packet.payload.toString()) as { token: string }).token;
    let last = f.seq ?? 0;
    return {
      token,
      get seq() {
        return last;
      },
      options(seq?: number): Option[] {
        const n = seq ?? last + 1;
        last = Math.max(last, n);
        return [
          { name: OPT_TOKEN, value: Buffer.from(token) },
          { name: OPT_SEQ, value: uint(n) },
        ];
      },
    };
  }

  /** Asserts that nothing arrives for `ms`. */
  async nothingFor(ms: number): Promise<void> {
    const got = await this.next(ms).then(
      (r) => r,
      () => null,
    );
    expect(got, got ? `unexpected datagram ${JSON.stringify(got.packet)}` : '').toBeNull();
  }

  close(): void {
    this.socket.close();
  }
}
