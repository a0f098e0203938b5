// A minimal CoAP client (dgram + coap-packet): used by the tests, the soak scripts and the simulator,
// so every byte on the wire is ours to check. After authenticate() it speaks as that device: every
// post carries its token and the next sequence number (coap-auth.ts), as the gateway requires by
// default (coap.auth.mode "required").

import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { AUTH_CONTENT_FORMAT, AUTH_PATH, CoapAuthSession, type AuthAnswer, type CoapDeviceIdentity, type CoapOption } from './coap-auth.js';

export interface CoapResponse {
  code: string;
  payload: Buffer;
  packet: ParsedPacket;
}

export class CoapClient {
  private socket: Socket | null = null;
  private messageId = Math.floor(Math.random() * 0xffff);
  private session: CoapAuthSession | null = null;

  constructor(private readonly host: string, private readonly port: number) {}

  /**
   * POST /auth as `device`; on 2.05 later posts carry its token and increasing sequence numbers.
   * Throws with the answer when the gateway refuses.
   */
  async authenticate(device: CoapDeviceIdentity, opts: { timeoutMs?: number } = {}): Promise<AuthAnswer> {
    const session = new CoapAuthSession(device);
    const answer = await session.ensure((body) => this.post(AUTH_PATH, body, { options: [AUTH_CONTENT_FORMAT], anonymous: true, ...opts }));
    if (!session.authenticated) throw new Error(`/auth of ${device.productKey}/${device.deviceName} answered ${answer?.code} ${answer?.payload.toString()}`);
    this.session = session;
    return answer!;
  }

  /** The authenticated device's session (token, sequence number), if any. */
  get auth(): CoapAuthSession | null {
    return this.session;
  }

  private async open(): Promise<Socket> {
    if (this.socket) return this.socket;
    const s = createSocket('udp4');
    // Loopback when the server is (tests, soak scripts); any address otherwise (coapLoad's /auth to a remote gateway).
    const local = this.host.startsWith('127.') || this.host === 'localhost' ? '127.0.0.1' : undefined;
    await new Promise<void>((r) => s.bind(0, local, () => r()));
    this.socket = s;
    return s;
  }

  /**
   * Sends a POST to /topic/...; resolves with the first response that is not an empty ACK. Once
   * authenticated, the request carries the token and the next sequence number, or `seq` (to repeat a
   * request byte for byte), unless `anonymous`.
   */
  async post(
    path: string,
    payload: Buffer,
    opts: { confirmable?: boolean; messageId?: number; token?: Buffer; timeoutMs?: number; options?: CoapOption[]; seq?: number; anonymous?: boolean } = {},
  ): Promise<CoapResponse> {
    const s = await this.open();
    const token = opts.token ?? randomBytes(4);
    const messageId = opts.messageId ?? (this.messageId = (this.messageId + 1) & 0xffff);
    const options: CoapOption[] = path.split('/').filter((p) => p !== '').map((p) => ({ name: 'Uri-Path', value: Buffer.from(p) }));
    if (opts.options) options.push(...opts.options);
    if (this.session !== null && opts.anonymous !== true) options.push(...this.session.next(opts.seq).options);
    const datagram = generate({ code: 'POST', confirmable: opts.confirmable ?? true, messageId, token, options, payload });
    return new Promise<CoapResponse>((resolve, reject) => {
      const timer = setTimeout(() => {
        s.off('message', onMessage);
        reject(new Error(`no CoAP response to ${path} within ${opts.timeoutMs ?? 5000} ms`));
      }, opts.timeoutMs ?? 5000);
      const onMessage = (msg: Buffer) => {
        const packet = parse(msg);
        if (!packet.token.equals(token)) return;
        if (packet.code === '0.00') return; // empty ACK: the response follows separately
        if (packet.confirmable) {
          // Acknowledge a separate CON response (RFC 7252 §5.2.2).
          s.send(generate({ code: '0.00', ack: true, messageId: packet.messageId, token: Buffer.alloc(0) }), this.port, this.host);
        }
        clearTimeout(timer);
        s.off('message', onMessage);
        resolve({ code: packet.code, payload: packet.payload, packet });
      };
      s.on('message', onMessage);
      s.send(datagram, this.port, this.host);
    });
  }

  close(): void {
    this.socket?.close();
    this.socket = null;
  }
}
