// A bare UDP CoAP client for tests: sends exactly the datagrams it is given and queues whatever comes
// back, so tests can check every byte (retransmissions, empty ACKs, sizes). Each client is a new
// source port, as after a NAT rebinding.

import dgram from 'node:dgram';
import { generate, parse, type Packet, type ParsedPacket } from 'coap-packet';
import { expect } from 'vitest';

export interface Received {
  packet: ParsedPacket;
  raw: Buffer;
}

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
