// A minimal CoAP client (dgram + coap-packet): used by the tests, the soak scripts and the simulator,
// so every byte on the wire is ours to check.

import { createSocket, type Socket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { generate, parse, type ParsedPacket } from 'coap-packet';

export interface CoapResponse {
  code: string;
  payload: Buffer;
  packet: ParsedPacket;
}

export class CoapClient {
  private socket: Socket | null = null;
  private messageId = Math.floor(Math.random() * 0xffff);

  constructor(private readonly host: string, private readonly port: number) {}

  private async open(): Promise<Socket> {
    if (this.socket) return this.socket;
    const s = createSocket('udp4');
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    this.socket = s;
    return s;
  }

  /** Sends a POST to /topic/...; resolves with the first response that is not an empty ACK. */
  async post(path: string, payload: Buffer, opts: { confirmable?: boolean; messageId?: number; token?: Buffer; timeoutMs?: number } = {}): Promise<CoapResponse> {
    const s = await this.open();
    const token = opts.token ?? randomBytes(4);
    const messageId = opts.messageId ?? (this.messageId = (this.messageId + 1) & 0xffff);
    const options = path.split('/').filter((p) => p !== '').map((p) => ({ name: 'Uri-Path' as const, value: Buffer.from(p) }));
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
