// The CoAP side of a fleet of simulated NB-IoT modules: a pool of UDP sockets that many simulated
// devices share to send requests to one CoAP server, with RFC 7252 reliability (CON retransmission,
// separate responses, message-id lifetime) and an optional lossy, slow radio link (link-model.ts).
//
// Hot path: one 'message' listener per socket and Map lookups by token and message id; no listener
// or closure per request beyond the exchange's own timer.

import { createSocket } from 'node:dgram';
import { randomBytes } from 'node:crypto';
import { lookup } from 'node:dns/promises';
import { isIP } from 'node:net';
import { generate, parse, type ParsedPacket } from 'coap-packet';
import { ACK_RANDOM_FACTOR, ACK_TIMEOUT_MS, EXCHANGE_LIFETIME_MS, MAX_RETRANSMIT } from '../../src/transport/coap/protocol.js';
import { linkDelay, type LinkModel } from './link-model.js';

/** Transmission parameters, RFC 7252 §4.8. Overridable so tests and short CLI runs can shrink them. */
export interface CoapTiming {
  /** ACK_TIMEOUT, ms (RFC default 2000). */
  ackTimeoutMs: number;
  /** ACK_RANDOM_FACTOR (RFC default 1.5): the initial timeout is uniform in [T, T * factor]. */
  ackRandomFactor: number;
  /** MAX_RETRANSMIT (RFC default 4). */
  maxRetransmit: number;
  /** How long a NON request waits for its response, ms (ours; default 5000). */
  nonTimeoutMs: number;
  /**
   * After an empty ACK, how long to wait for the separate response, ms. Default: MAX_TRANSMIT_WAIT
   * (RFC 7252 §4.8.2) of these parameters, since the server's CON response may itself need that long.
   */
  separateTimeoutMs?: number;
}

export const DEFAULT_TIMING: Readonly<CoapTiming> = Object.freeze({
  ackTimeoutMs: ACK_TIMEOUT_MS,
  ackRandomFactor: ACK_RANDOM_FACTOR,
  maxRetransmit: MAX_RETRANSMIT,
  nonTimeoutMs: 5_000,
});

/** Distinct message ids (16-bit, RFC 7252 §3). */
export const MESSAGE_IDS = 65_536;

/**
 * UDP sockets needed to sustain `ratePerS` requests per second. RFC 7252 §4.4: a message id must not
 * be reused within EXCHANGE_LIFETIME (§4.8.2: 247 s with the default parameters), so one source
 * endpoint carries at most 65,536 messages per 247 s (~265/s); beyond that, more source ports.
 */
export function socketsNeeded(ratePerS: number): number {
  if (!Number.isFinite(ratePerS) || ratePerS < 0) throw new RangeError(`rate must be a finite number >= 0, got ${ratePerS}`);
  return Math.max(1, Math.ceil((ratePerS * EXCHANGE_LIFETIME_MS) / 1000 / MESSAGE_IDS));
}

export interface CoapRequest {
  /** Uri-Path as a path, e.g. '/topic/sys/pk/dn/thing/model/up_raw'. */
  path: string;
  payload: Buffer;
  confirmable: boolean;
  /** Extra options (Content-Format, the auth options 2088 and 2089 by number, ...); coap-packet orders them by number. */
  options?: Array<{ name: string | number; value: Buffer }>;
  /**
   * Pins the request to a socket index (taken modulo the pool size) so a device keeps its source
   * port between requests. A pinned socket whose message ids are exhausted gives 'mid-exhausted'
   * rather than silently moving the device to another port.
   */
  socket?: number;
}

export interface CoapExchange {
  /** True for a response of class 2 (Success). */
  ok: boolean;
  /** Response code ('2.04', '5.03', ...) or 'timeout' | 'reset' | 'stopped' | 'mid-exhausted'. */
  code: string;
  payload: Buffer;
  options: ParsedPacket['options'];
  /** Retransmissions of the request (0 for NON). */
  retransmissions: number;
  /** From the first transmission to the response (or to giving up), ms, performance.now() based. */
  latencyMs: number;
  /** Max-Age option of the response (RFC 7252 §5.10.5), seconds, if present. */
  maxAgeS?: number;
}

/** A bound datagram socket, as the transport needs it. The default is node:dgram; tests inject a fake. */
export interface DatagramSocket {
  readonly port: number;
  send(datagram: Buffer, port: number, address: string): void;
  close(): Promise<void>;
}

export type SocketFactory = (opts: { type: 'udp4' | 'udp6'; bindAddress: string; onMessage: (msg: Buffer) => void }) => Promise<DatagramSocket>;

export interface CoapTransportOptions {
  host: string;
  port: number;
  /** Pool size (default 16); see socketsNeeded(). */
  sockets?: number;
  /** Local address to bind (default loopback when the server is on loopback, else the wildcard). */
  bindAddress?: string;
  /** Radio link applied to every datagram in both directions (default: a perfect link). */
  link?: LinkModel;
  /** Uniform [0, 1) source for timeouts, message-id starts and link draws (default Math.random). */
  random?: () => number;
  timing?: Partial<CoapTiming>;
  /** Message ids a socket may use per EXCHANGE_LIFETIME (default 65,536, RFC 7252 §4.4). */
  midsPerLifetime?: number;
  socketFactory?: SocketFactory;
  /**
   * A request from the server (a command the gateway pushes, src/transport/coap/delivery.ts): return
   * true to take it, and a CON one is acknowledged with an empty ACK (RFC 7252 §4.2; the module's
   * answer, a reply, goes as a new request of its own). Without it, or on false, a CON request gets
   * RST as before. `socket` is the index of the socket it arrived on. A retransmission of one already
   * taken is acknowledged again, not handed over twice (§4.5).
   */
  onRequest?: (socket: number, packet: ParsedPacket) => boolean;
}

/** Message ids of server requests remembered per socket for de-duplication (RFC 7252 §4.5). */
const SERVER_REQUESTS_REMEMBERED = 64;

const EMPTY = Buffer.alloc(0);
const NO_TOKEN = -1;

/** Open exchange state. Kept flat: thousands are live at once. */
interface Exchange {
  slot: Slot;
  mid: number;
  tokenKey: number;
  datagram: Buffer;
  confirmable: boolean;
  t0: number;
  retransmissions: number;
  timeoutMs: number;
  timer: NodeJS.Timeout | undefined;
  resolve: (x: CoapExchange) => void;
}

/** One socket of the pool with its message-id counter and open exchanges. */
interface Slot {
  sock: DatagramSocket;
  nextMid: number;
  budget: MidBudget;
  /** Open exchanges by token (4 bytes as a uint32). */
  byToken: Map<number, Exchange>;
  /** Exchanges still expecting an ACK or RST (RFC 7252 §4.2/§4.3: those echo the message id). */
  byMid: Map<number, Exchange>;
  /** Message ids of server requests taken lately (onRequest), oldest first; created on the first. */
  taken?: Set<number>;
}

/**
 * Counts message ids a socket used within the last EXCHANGE_LIFETIME, in `buckets` time buckets.
 * Ids are handed out sequentially, so the id about to be reused was last used exactly 65,536
 * allocations ago: if fewer than 65,536 were made in the last lifetime, it is free (RFC 7252 §4.4).
 * An allocation stays counted between (buckets-1) and buckets bucket-lengths, i.e. at least one
 * lifetime, so the count errs on the safe side.
 */
class MidBudget {
  private readonly counts: Uint32Array;
  private readonly bucketMs: number;
  private head = -1;
  private total = 0;

  constructor(readonly limit: number, lifetimeMs: number, buckets = 248) {
    this.counts = new Uint32Array(buckets);
    this.bucketMs = lifetimeMs / (buckets - 1);
  }

  used(now: number): number {
    const b = Math.floor(now / this.bucketMs);
    if (b > this.head) {
      const n = this.counts.length;
      for (let i = Math.max(this.head + 1, b - n + 1); i <= b; i++) {
        this.total -= this.counts[i % n]!;
        this.counts[i % n] = 0;
      }
      this.head = b;
    }
    return this.total;
  }

  take(now: number): boolean {
    if (this.used(now) >= this.limit) return false;
    this.counts[this.head % this.counts.length]!++;
    this.total++;
    return true;
  }
}

const dgramFactory: SocketFactory = async ({ type, bindAddress, onMessage }) => {
  const s = createSocket(type);
  // Without an 'error' listener a failed send would throw from the event loop; a lost datagram is
  // exactly what CoAP's retransmission handles, so errors are dropped here.
  s.on('error', () => {});
  s.on('message', onMessage);
  await new Promise<void>((resolve, reject) => {
    s.once('error', reject);
    s.bind(0, bindAddress, () => {
      s.off('error', reject);
      resolve();
    });
  });
  return {
    port: s.address().port,
    send: (datagram, port, address) => s.send(datagram, port, address),
    close: () => new Promise<void>((r) => s.close(() => r())),
  };
};

function uintValue(buf: Buffer): number {
  let v = 0;
  for (const b of buf) v = v * 256 + b;
  return v;
}

function isLoopback(address: string): boolean {
  return address.startsWith('127.') || address === '::1';
}

export class CoapTransport {
  private readonly timing: CoapTiming;
  private readonly random: () => number;
  private slots: Slot[] = [];
  private address = '';
  private running = false;
  private starting: Promise<void> | undefined;
  private stopping: Promise<void> | undefined;
  /** Link-delay timers (outgoing and incoming datagrams in flight on the simulated radio). */
  private readonly linkTimers = new Set<NodeJS.Timeout>();
  private counters = { sent: 0, retransmissions: 0, timeouts: 0 };

  constructor(private readonly opts: CoapTransportOptions) {
    this.timing = { ...DEFAULT_TIMING, ...opts.timing };
    this.random = opts.random ?? Math.random;
  }

  async start(): Promise<void> {
    if (this.running) return;
    if (this.stopping) await this.stopping;
    this.starting ??= this.open().finally(() => (this.starting = undefined));
    return this.starting;
  }

  private async open(): Promise<void> {
    const { host, port, link } = this.opts;
    const count = this.opts.sockets ?? 16;
    if (!Number.isInteger(port) || port < 1 || port > 65_535) throw new RangeError(`port must be an integer in 1..65535, got ${port}`);
    if (!Number.isInteger(count) || count < 1) throw new RangeError(`sockets must be an integer >= 1, got ${count}`);
    const mids = this.opts.midsPerLifetime ?? MESSAGE_IDS;
    if (!Number.isInteger(mids) || mids < 1 || mids > MESSAGE_IDS) throw new RangeError(`midsPerLifetime must be an integer in 1..${MESSAGE_IDS}, got ${mids}`);
    if (link && !(link.loss >= 0 && link.loss <= 1 && link.latencyMs >= 0 && link.jitterMs >= 0)) {
      throw new RangeError(`invalid link model ${JSON.stringify(link)}: loss in 0..1, latency and jitter >= 0`);
    }
    // Resolve once: dgram would otherwise look the name up on every send.
    const resolved = isIP(host) ? { address: host, family: isIP(host) } : await lookup(host);
    const bindAddress = this.opts.bindAddress ?? (resolved.family === 6 ? (isLoopback(resolved.address) ? '::1' : '::') : isLoopback(resolved.address) ? '127.0.0.1' : '0.0.0.0');
    const factory = this.opts.socketFactory ?? dgramFactory;
    const slots: Slot[] = [];
    try {
      for (let index = 0; index < count; index++) {
        let slot: Slot | undefined;
        const sock = await factory({ type: resolved.family === 6 ? 'udp6' : 'udp4', bindAddress, onMessage: (msg) => this.receive(slot!, msg) });
        slot = {
          sock,
          // RFC 7252 §4.4: start at a random id so restarts do not replay recent ids.
          nextMid: Math.floor(this.random() * MESSAGE_IDS),
          budget: new MidBudget(mids, EXCHANGE_LIFETIME_MS),
          byToken: new Map(),
          byMid: new Map(),
        };
        slots.push(slot);
      }
    } catch (err) {
      await Promise.all(slots.map((s) => s.sock.close()));
      throw err;
    }
    this.address = resolved.address;
    this.slots = slots;
    this.running = true;
  }

  /** Closes every socket and timer; open exchanges complete with code 'stopped'. */
  async stop(): Promise<void> {
    if (this.starting) await this.starting.catch(() => {});
    if (!this.running) return this.stopping;
    this.running = false;
    for (const t of this.linkTimers) clearTimeout(t);
    this.linkTimers.clear();
    const slots = this.slots;
    this.slots = [];
    for (const slot of slots) {
      for (const ex of slot.byToken.values()) this.finish(ex, 'stopped');
    }
    this.stopping = Promise.all(slots.map((s) => s.sock.close())).then(() => {
      this.stopping = undefined;
    });
    return this.stopping;
  }

  stats(): { sent: number; retransmissions: number; timeouts: number; sockets: number } {
    return { ...this.counters, sockets: this.slots.length };
  }

  localPorts(): number[] {
    return this.slots.map((s) => s.sock.port);
  }

  send(req: CoapRequest): Promise<CoapExchange> {
    if (!this.running) return Promise.resolve(result('stopped', 0, 0));
    if (req.socket !== undefined && !Number.isInteger(req.socket)) return Promise.reject(new RangeError(`socket must be an integer index, got ${req.socket}`));
    const now = performance.now();
    const slot = this.pickSlot(req.socket, now);
    if (!slot) return Promise.resolve(result('mid-exhausted', 0, 0));

    const mid = slot.nextMid;
    slot.nextMid = (mid + 1) % MESSAGE_IDS;
    // RFC 7252 §5.3.1: a random token, unique among this endpoint's open exchanges.
    let token = randomToken();
    while (slot.byToken.has(token.readUInt32BE(0))) token = randomToken();
    const options: Array<{ name: string | number; value: Buffer }> = [];
    for (const seg of req.path.split('/')) if (seg !== '') options.push({ name: 'Uri-Path', value: Buffer.from(seg) });
    if (req.options) options.push(...req.options);
    let datagram: Buffer;
    try {
      datagram = generate({ code: 'POST', confirmable: req.confirmable, messageId: mid, token, options, payload: req.payload });
    } catch (err) {
      // A caller bug (e.g. a request over coap-packet's 1280-byte limit), not a network outcome.
      return Promise.reject(new Error(`cannot encode CoAP request to ${req.path}`, { cause: err }));
    }

    return new Promise<CoapExchange>((resolve) => {
      const t = this.timing;
      const ex: Exchange = {
        slot,
        mid,
        tokenKey: token.readUInt32BE(0),
        datagram,
        confirmable: req.confirmable,
        t0: now,
        retransmissions: 0,
        // RFC 7252 §4.2: initial timeout uniformly random in [ACK_TIMEOUT, ACK_TIMEOUT * ACK_RANDOM_FACTOR].
        timeoutMs: req.confirmable ? t.ackTimeoutMs * (1 + this.random() * (t.ackRandomFactor - 1)) : t.nonTimeoutMs,
        timer: undefined,
        resolve,
      };
      slot.byToken.set(ex.tokenKey, ex);
      // A NON can be answered with RST too (RFC 7252 §4.3), which echoes the message id.
      slot.byMid.set(mid, ex);
      this.counters.sent++;
      this.transmit(slot, datagram);
      ex.timer = setTimeout(() => this.onTimeout(ex), ex.timeoutMs);
    });
  }

  /** A pinned slot, or the one with the fewest open exchanges (then fewest ids used) that has ids free. */
  private pickSlot(pin: number | undefined, now: number): Slot | undefined {
    if (pin !== undefined) {
      const slot = this.slots[((pin % this.slots.length) + this.slots.length) % this.slots.length];
      return slot && slot.budget.take(now) ? slot : undefined;
    }
    let best: Slot | undefined;
    let bestUsed = 0;
    for (const slot of this.slots) {
      const used = slot.budget.used(now);
      if (used >= slot.budget.limit) continue;
      if (!best || slot.byToken.size < best.byToken.size || (slot.byToken.size === best.byToken.size && used < bestUsed)) {
        best = slot;
        bestUsed = used;
      }
    }
    best?.budget.take(now);
    return best;
  }

  private onTimeout(ex: Exchange): void {
    ex.timer = undefined;
    // RFC 7252 §4.2: retransmit with the timeout doubled, MAX_RETRANSMIT times; after the last one,
    // give up once its (doubled) timeout has also passed.
    if (ex.confirmable && ex.slot.byMid.get(ex.mid) === ex && ex.retransmissions < this.timing.maxRetransmit) {
      ex.retransmissions++;
      this.counters.retransmissions++;
      ex.timeoutMs *= 2;
      this.transmit(ex.slot, ex.datagram); // same message id and token (§4.2, §5.3.1)
      ex.timer = setTimeout(() => this.onTimeout(ex), ex.timeoutMs);
      return;
    }
    this.counters.timeouts++;
    this.finish(ex, 'timeout');
  }

  /** Sends through the simulated link: lost with probability `loss`, else delayed. */
  private transmit(slot: Slot, datagram: Buffer): void {
    const link = this.opts.link;
    if (!link) return slot.sock.send(datagram, this.opts.port, this.address);
    const delay = linkDelay(link, this.random);
    if (delay === undefined) return;
    const timer = setTimeout(() => {
      this.linkTimers.delete(timer);
      slot.sock.send(datagram, this.opts.port, this.address);
    }, delay);
    this.linkTimers.add(timer);
  }

  private receive(slot: Slot, msg: Buffer): void {
    const link = this.opts.link;
    if (!this.running) return;
    if (!link) return this.handle(slot, msg);
    const delay = linkDelay(link, this.random);
    if (delay === undefined) return;
    const timer = setTimeout(() => {
      this.linkTimers.delete(timer);
      this.handle(slot, msg);
    }, delay);
    this.linkTimers.add(timer);
  }

  private handle(slot: Slot, msg: Buffer): void {
    let p: ParsedPacket;
    try {
      p = parse(msg);
    } catch {
      return; // RFC 7252 §4.2: a malformed message is silently ignored
    }
    if (p.reset) {
      const ex = slot.byMid.get(p.messageId);
      if (ex) this.finish(ex, 'reset');
      return;
    }
    if (p.ack) {
      const ex = slot.byMid.get(p.messageId);
      if (!ex || !ex.confirmable) return; // duplicate or late ACK (§4.5)
      if (p.code === '0.00') {
        // RFC 7252 §5.2.2: empty ACK, the response will come separately. Stop retransmitting.
        slot.byMid.delete(ex.mid);
        clearTimeout(ex.timer);
        const t = this.timing;
        const maxTransmitWait = t.ackTimeoutMs * (2 ** (t.maxRetransmit + 1) - 1) * t.ackRandomFactor; // §4.8.2
        ex.timer = setTimeout(() => this.onTimeout(ex), t.separateTimeoutMs ?? maxTransmitWait);
        return;
      }
      // §5.3.2: a piggybacked response must carry the request's token.
      if (tokenKey(p.token) === ex.tokenKey) this.finish(ex, p.code, p);
      return;
    }
    if (p.code.startsWith('0.')) {
      if (p.code !== '0.00' && this.opts.onRequest && this.takeRequest(slot, p)) return;
      // Empty CON (CoAP ping, §4.3) or a request nobody takes: reject CON with RST.
      if (p.confirmable) this.transmit(slot, generate({ code: '0.00', reset: true, messageId: p.messageId, token: EMPTY }));
      return;
    }
    // A separate response (CON or NON). A CON one is ACKed every time it arrives, even if the
    // exchange already completed, so the server stops retransmitting it (§4.2, §4.5, §5.2.2).
    if (p.confirmable) this.transmit(slot, generate({ code: '0.00', ack: true, messageId: p.messageId, token: EMPTY }));
    const ex = slot.byToken.get(tokenKey(p.token));
    if (ex) this.finish(ex, p.code, p);
  }

  /** A request from the server (onRequest): true when taken (a CON one is then ACKed). */
  private takeRequest(slot: Slot, p: ParsedPacket): boolean {
    const taken = (slot.taken ??= new Set());
    if (!taken.has(p.messageId)) {
      if (!this.opts.onRequest!(this.slots.indexOf(slot), p)) return false;
      taken.add(p.messageId);
      if (taken.size > SERVER_REQUESTS_REMEMBERED) taken.delete(taken.values().next().value!);
    }
    if (p.confirmable) this.transmit(slot, generate({ code: '0.00', ack: true, messageId: p.messageId, token: EMPTY }));
    return true;
  }

  private finish(ex: Exchange, code: string, p?: ParsedPacket): void {
    const slot = ex.slot;
    if (slot.byToken.get(ex.tokenKey) !== ex) return; // already completed
    slot.byToken.delete(ex.tokenKey);
    if (slot.byMid.get(ex.mid) === ex) slot.byMid.delete(ex.mid);
    clearTimeout(ex.timer);
    ex.timer = undefined;
    const r = result(code, ex.retransmissions, performance.now() - ex.t0, p);
    ex.resolve(r);
  }
}

// Random bytes drawn 4 KiB at a time: one randomBytes call per exchange costs more than the rest
// of a send at thousands of requests/s.
let tokenPool = Buffer.alloc(0);
let tokenAt = 0;
function randomToken(): Buffer {
  if (tokenAt + 4 > tokenPool.length) {
    tokenPool = randomBytes(4096);
    tokenAt = 0;
  }
  const token = tokenPool.subarray(tokenAt, tokenAt + 4);
  tokenAt += 4;
  return token;
}

function tokenKey(token: Buffer): number {
  return token.length === 4 ? token.readUInt32BE(0) : NO_TOKEN;
}

function result(code: string, retransmissions: number, latencyMs: number, p?: ParsedPacket): CoapExchange {
  const r: CoapExchange = { ok: code.startsWith('2.'), code, payload: p?.payload ?? EMPTY, options: p?.options ?? [], retransmissions, latencyMs };
  const maxAge = p?.options.find((o) => o.name === 'Max-Age');
  if (maxAge) r.maxAgeS = uintValue(maxAge.value);
  return r;
}
