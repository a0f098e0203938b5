// CoapTransport against a scripted CoAP server on a real UDP socket (port 0), plus fake-timer
// checks of the RFC 7252 §4.2 retransmission schedule with an injected socket factory.
import { createSocket, type RemoteInfo, type Socket } from 'node:dgram';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { CoapTransport, socketsNeeded, type CoapTransportOptions, type DatagramSocket, type SocketFactory } from '../../../simulators/lib/coap-transport.js';
import { ECL_LINKS, linkDelay, parseEcl } from '../../../simulators/lib/link-model.js';

type Mode =
  | { kind: 'piggyback'; code?: string; maxAge?: number; dropFirst?: number }
  | { kind: 'separate'; duplicate?: boolean }
  | { kind: 'non' }
  | { kind: 'reset' }
  | { kind: 'silent' };

/** A scripted CoAP server: records every datagram it receives and answers per `mode`. */
class ScriptedServer {
  mode: Mode = { kind: 'piggyback' };
  readonly received: Array<{ packet: ParsedPacket; port: number }> = [];
  private socket: Socket | undefined;
  private requests = 0;
  private nextMid = 1000;

  async start(): Promise<number> {
    this.requests = 0;
    this.nextMid = 1000;
    const s = createSocket('udp4');
    s.on('message', (msg, rinfo) => this.onMessage(msg, rinfo));
    await new Promise<void>((r) => s.bind(0, '127.0.0.1', () => r()));
    this.socket = s;
    return s.address().port;
  }

  async stop(): Promise<void> {
    const s = this.socket;
    this.socket = undefined;
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  requestsReceived(): ParsedPacket[] {
    return this.received.map((r) => r.packet).filter((p) => p.code === '0.02');
  }

  private reply(rinfo: RemoteInfo, packet: Parameters<typeof generate>[0]): void {
    this.socket?.send(generate(packet), rinfo.port, rinfo.address);
  }

  private onMessage(msg: Buffer, rinfo: RemoteInfo): void {
    const p = parse(msg);
    this.received.push({ packet: p, port: rinfo.port });
    if (p.code !== '0.02') return; // our client's ACKs: recorded only
    const m = this.mode;
    const n = ++this.requests;
    switch (m.kind) {
      case 'piggyback': {
        if (n <= (m.dropFirst ?? 0)) return;
        const options = m.maxAge === undefined ? [] : [{ name: 'Max-Age' as const, value: Buffer.from([m.maxAge]) }];
        return this.reply(rinfo, { code: m.code ?? '2.04', ack: true, messageId: p.messageId, token: p.token, options, payload: Buffer.from('ok') });
      }
      case 'separate': {
        this.reply(rinfo, { code: '0.00', ack: true, messageId: p.messageId }); // RFC 7252 §5.2.2 empty ACK
        const response = { code: '2.04', confirmable: true, messageId: this.nextMid++, token: p.token, payload: Buffer.from('later') };
        setTimeout(() => this.reply(rinfo, response), 5);
        if (m.duplicate) setTimeout(() => this.reply(rinfo, response), 40); // as if our ACK were lost
        return;
      }
      case 'non':
        return this.reply(rinfo, { code: '2.04', confirmable: false, messageId: this.nextMid++, token: p.token, payload: Buffer.from('non') });
      case 'reset':
        return this.reply(rinfo, { code: '0.00', reset: true, messageId: p.messageId });
      case 'silent':
        return;
    }
  }
}

// FAST for tests that must time out; RELAXED (the default here) where a loaded machine answering
// loopback late must not cause a retransmission the test did not ask for.
const FAST = { ackTimeoutMs: 20, ackRandomFactor: 1.5, maxRetransmit: 4, nonTimeoutMs: 100 };
const RELAXED = { ...FAST, ackTimeoutMs: 200 };
const uplink = { path: '/topic/sys/pk1/dev1/thing/model/up_raw', payload: Buffer.from('0102', 'hex'), confirmable: true };

describe('CoapTransport against a real UDP server', () => {
  const server = new ScriptedServer();
  let transport: CoapTransport | undefined;

  async function open(opts: Partial<CoapTransportOptions> = {}): Promise<CoapTransport> {
    const port = await server.start();
    transport = new CoapTransport({ host: '127.0.0.1', port, sockets: 2, timing: RELAXED, ...opts });
    await transport.start();
    return transport;
  }

  afterEach(async () => {
    await transport?.stop();
    transport = undefined;
    await server.stop();
    server.received.length = 0;
    server.mode = { kind: 'piggyback' };
  });

  it('completes a CON request with a piggybacked 2.04 and sends Uri-Path per segment', async () => {
    const t = await open();
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: true, code: '2.04', retransmissions: 0 });
    expect(r.payload.toString()).toBe('ok');
    expect(r.latencyMs).toBeGreaterThanOrEqual(0);
    const [req] = server.requestsReceived();
    expect(req!.confirmable).toBe(true);
    expect(req!.token).toHaveLength(4);
    expect(req!.options.filter((o) => o.name === 'Uri-Path').map((o) => o.value.toString())).toEqual(['topic', 'sys', 'pk1', 'dev1', 'thing', 'model', 'up_raw']);
    expect(req!.payload).toEqual(Buffer.from('0102', 'hex'));
    expect(t.stats()).toEqual({ sent: 1, retransmissions: 0, timeouts: 0, sockets: 2 });
  });

  it('retransmits a CON with the same message id and token until answered', async () => {
    const t = await open({ timing: { ...FAST, ackTimeoutMs: 100 } });
    server.mode = { kind: 'piggyback', dropFirst: 2 };
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: true, code: '2.04', retransmissions: 2 });
    const reqs = server.requestsReceived();
    expect(reqs).toHaveLength(3);
    expect(new Set(reqs.map((p) => p.messageId)).size).toBe(1);
    expect(new Set(reqs.map((p) => p.token.toString('hex'))).size).toBe(1);
    expect(t.stats().retransmissions).toBe(2);
  });

  it('stops retransmitting on an empty ACK, then ACKs the separate CON response with its message id', async () => {
    const t = await open();
    server.mode = { kind: 'separate' };
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: true, code: '2.04', retransmissions: 0 });
    expect(r.payload.toString()).toBe('later');
    await vi.waitFor(() => expect(server.received.filter((x) => x.packet.ack)).toHaveLength(1));
    const ack = server.received.find((x) => x.packet.ack)!.packet;
    expect(ack).toMatchObject({ code: '0.00', messageId: 1000, ack: true });
    // No retransmission, although without the empty ACK one would have fired by now (at 200-300 ms).
    await new Promise((r) => setTimeout(r, 500));
    expect(server.requestsReceived()).toHaveLength(1);
  });

  it('ACKs a duplicate separate CON response after the exchange completed', async () => {
    const t = await open();
    server.mode = { kind: 'separate', duplicate: true };
    const r = await t.send(uplink);
    expect(r.code).toBe('2.04');
    await vi.waitFor(() => expect(server.received.filter((x) => x.packet.ack).map((x) => x.packet.messageId)).toEqual([1000, 1000]));
  });

  it('completes a NON request on the NON response with its token', async () => {
    const t = await open();
    server.mode = { kind: 'non' };
    const r = await t.send({ ...uplink, confirmable: false });
    expect(r).toMatchObject({ ok: true, code: '2.04', retransmissions: 0 });
    expect(r.payload.toString()).toBe('non');
    expect(server.requestsReceived()[0]!.confirmable).toBe(false);
    expect(server.received.some((x) => x.packet.ack)).toBe(false); // a NON response is not ACKed
  });

  it('reports 5.03 with its Max-Age as not ok', async () => {
    const t = await open();
    server.mode = { kind: 'piggyback', code: '5.03', maxAge: 7 };
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: false, code: '5.03', maxAgeS: 7 });
  });

  it('completes with reset on a RST', async () => {
    const t = await open();
    server.mode = { kind: 'reset' };
    expect(await t.send(uplink)).toMatchObject({ ok: false, code: 'reset' });
  });

  it('gives up a CON after MAX_RETRANSMIT retransmissions, and a NON after nonTimeoutMs', async () => {
    const t = await open({ timing: FAST });
    server.mode = { kind: 'silent' };
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: false, code: 'timeout', retransmissions: 4 });
    expect(server.requestsReceived()).toHaveLength(5);
    // 31 T with T >= 20 ms.
    expect(r.latencyMs).toBeGreaterThanOrEqual(31 * 20 - 1);
    const n = await t.send({ ...uplink, confirmable: false });
    expect(n).toMatchObject({ ok: false, code: 'timeout', retransmissions: 0 });
    expect(n.latencyMs).toBeGreaterThanOrEqual(99);
    expect(t.stats()).toMatchObject({ sent: 2, retransmissions: 4, timeouts: 2 });
  });

  it('keeps a pinned device on its socket, and stop() completes open exchanges with stopped', async () => {
    const t = await open();
    server.mode = { kind: 'piggyback' };
    const ports = t.localPorts();
    expect(ports).toHaveLength(2);
    for (let i = 0; i < 3; i++) await t.send({ ...uplink, socket: 1 });
    expect(server.received.map((x) => x.port)).toEqual([ports[1], ports[1], ports[1]]);
    const mids = server.requestsReceived().map((p) => p.messageId);
    expect(mids).toEqual([mids[0]!, (mids[0]! + 1) % 65536, (mids[0]! + 2) % 65536]);

    server.mode = { kind: 'silent' };
    const pending = t.send(uplink);
    await t.stop();
    expect(await pending).toMatchObject({ ok: false, code: 'stopped' });
    await t.stop(); // idempotent
    expect(t.localPorts()).toEqual([]);
    expect(await t.send(uplink)).toMatchObject({ code: 'stopped' });
  });

  it('link loss 1 makes every CON time out', async () => {
    const t = await open({ link: { latencyMs: 0, jitterMs: 0, loss: 1 }, timing: FAST });
    const rs = await Promise.all([t.send(uplink), t.send(uplink), t.send(uplink)]);
    expect(rs.map((r) => r.code)).toEqual(['timeout', 'timeout', 'timeout']);
    expect(server.received).toHaveLength(0);
  });

  it('link latency delays both directions', async () => {
    const t = await open({ link: { latencyMs: 30, jitterMs: 0, loss: 0 }, timing: { ...FAST, ackTimeoutMs: 1000 } }); // no retransmission within the 60 ms round trip
    const r = await t.send(uplink);
    expect(r).toMatchObject({ ok: true, code: '2.04', retransmissions: 0 });
    expect(r.latencyMs).toBeGreaterThanOrEqual(60);
  });
});

/** Fake sockets: record every datagram with the (fake) time it was sent. */
function fakeFactory(sent: Array<{ at: number; socket: number; packet: ParsedPacket }>): SocketFactory {
  let n = 0;
  return async () => {
    const socket = n++;
    const s: DatagramSocket = {
      port: 40000 + socket,
      send: (datagram) => void sent.push({ at: performance.now(), socket, packet: parse(datagram) }),
      close: async () => {},
    };
    return s;
  };
}

describe('CoapTransport with fake timers', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('follows the RFC 7252 §4.2 default schedule: 0, T, 3T, 7T, 15T, give up at 31T', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const sent: Array<{ at: number; socket: number; packet: ParsedPacket }> = [];
    const t = new CoapTransport({ host: '127.0.0.1', port: 5683, sockets: 1, random: () => 0.5, socketFactory: fakeFactory(sent) });
    await t.start();
    const t0 = performance.now();
    let done: unknown;
    void t.send(uplink).then((r) => (done = r));
    const T = 2500; // ACK_TIMEOUT 2000 * (1 + 0.5 * (1.5 - 1))
    await vi.advanceTimersByTimeAsync(31 * T - 1);
    expect(sent.map((s) => s.at - t0)).toEqual([0, T, 3 * T, 7 * T, 15 * T]);
    expect(new Set(sent.map((s) => s.packet.messageId)).size).toBe(1);
    expect(done).toBeUndefined();
    await vi.advanceTimersByTimeAsync(1);
    expect(done).toMatchObject({ code: 'timeout', retransmissions: 4, latencyMs: 31 * T });
    expect(sent).toHaveLength(5);
    await t.stop();
  });

  it('picks another socket when one has used its message ids, and reports mid-exhausted when all have', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'performance'] });
    const sent: Array<{ at: number; socket: number; packet: ParsedPacket }> = [];
    const t = new CoapTransport({ host: '127.0.0.1', port: 5683, sockets: 2, midsPerLifetime: 3, timing: FAST, socketFactory: fakeFactory(sent) });
    await t.start();
    // Socket 0: three exchanges that time out, so it has no open exchange but no id left either.
    const pinned = [t.send({ ...uplink, socket: 0 }), t.send({ ...uplink, socket: 0 }), t.send({ ...uplink, socket: 0 })];
    await vi.advanceTimersByTimeAsync(5_000);
    expect((await Promise.all(pinned)).map((r) => r.code)).toEqual(['timeout', 'timeout', 'timeout']);
    expect(await t.send({ ...uplink, socket: 0 })).toMatchObject({ ok: false, code: 'mid-exhausted' });

    // Socket 1 has an open exchange (more load) but ids left: unpinned sends go there.
    sent.length = 0;
    const open1 = t.send({ ...uplink, socket: 1 });
    const a = t.send(uplink);
    const b = t.send(uplink);
    expect(new Set(sent.map((s) => s.socket))).toEqual(new Set([1]));
    expect(await t.send(uplink)).toMatchObject({ code: 'mid-exhausted' });
    await vi.advanceTimersByTimeAsync(5_000);
    await Promise.all([open1, a, b]);

    // RFC 7252 §4.4: ids are free again after EXCHANGE_LIFETIME (247 s).
    await vi.advanceTimersByTimeAsync(247_000);
    sent.length = 0;
    const again = t.send(uplink);
    expect(sent).toHaveLength(1);
    await t.stop();
    expect(await again).toMatchObject({ code: 'stopped' });
  });

  it('socketsNeeded sizes the pool for the message-id lifetime', () => {
    expect(socketsNeeded(0)).toBe(1);
    expect(socketsNeeded(265)).toBe(1); // 265 * 247 = 65,455 < 65,536
    expect(socketsNeeded(266)).toBe(2);
    expect(socketsNeeded(10_000)).toBe(Math.ceil((10_000 * 247) / 65_536));
    expect(() => socketsNeeded(-1)).toThrow(RangeError);
  });
});

describe('link model', () => {
  it('parses coverage classes and rejects anything else', () => {
    expect(parseEcl('0')).toBe(0);
    expect(parseEcl('ECL2')).toBe(2);
    expect(parseEcl(' ecl1 ')).toBe(1);
    for (const bad of ['3', '', 'ecl', '-1', '1.5', 'x1']) expect(() => parseEcl(bad)).toThrow(/invalid NB-IoT coverage class/);
  });

  it('orders coverage classes by latency and loss', () => {
    expect(ECL_LINKS[0].latencyMs).toBeLessThan(ECL_LINKS[1].latencyMs);
    expect(ECL_LINKS[1].latencyMs).toBeLessThan(ECL_LINKS[2].latencyMs);
    expect(ECL_LINKS[0].loss).toBeLessThan(ECL_LINKS[1].loss);
    expect(ECL_LINKS[2].loss).toBeCloseTo(0.1);
  });

  it('drops with probability loss and otherwise delays by latency plus jitter', () => {
    const link = { latencyMs: 100, jitterMs: 50, loss: 0.2 };
    expect(linkDelay(link, () => 0.1)).toBeUndefined();
    const draws = [0.9, 0.5];
    expect(linkDelay(link, () => draws.shift()!)).toBe(125);
  });
});
