// Lean raw load generators for `wanwu-sim bench`: they drive any MQTT broker (QoS 1 PUBLISH ->
// PUBACK) or CoAP server (CON POST -> response) with the same load, so a bare server and Wanwu can be
// compared in one run. The generator shares the machine's two cores with the server under test, so
// the hot paths avoid per-message work that is not the protocol itself:
//   - every packet is encoded once per connection/socket as a template; a send copies the template
//     and patches the packet id (MQTT) or message id and token (CoAP) in place;
//   - MQTT frames are split by hand (fixed header + remaining length, MQTT 3.1.1 §2.2) in the one
//     'data' listener of each socket, and the publishes a chunk of PUBACKs frees are written back in
//     one write; CoAP headers are read by hand (RFC 7252 §3) in the one 'message' listener;
//   - per-request state lives in typed arrays indexed by packet/message id, and one clock read
//     serves a whole chunk of replies; per-request timeouts are a sweep, not a timer each.
//
// Accounting, the same for both protocols (see LoadResult): every request written is settled exactly
// once -- acknowledged, refused with a code, or given up (timeout, connection lost, no reply before
// the drain ended) -- so after a run `sent === acked + sum(errors)`.

import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createConnection, isIPv6, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';
import mqttPacket from 'mqtt-packet';
import { generate as generateCoap } from 'coap-packet';
import { AUTH_CONTENT_FORMAT, AUTH_PATH, CoapAuthSession, OPT_AUTH_TOKEN, seqOption4, type CoapDeviceIdentity, type CoapOption } from './coap-auth.js';
import { CoapClient } from './coap-client.js';
import { Latency, type LatencySummary } from './stats.js';

export interface LoadResult {
  /** Requests written over the whole run: warm-up and measured period (none are written during the drain). */
  sent: number;
  /** Of those, acknowledged with success (MQTT PUBACK, CoAP 2.xx), whenever the reply came. */
  acked: number;
  /**
   * Every other request, by why it failed: a CoAP response code ('4.00', '5.03' ...), 'rst',
   * 'timeout' (no CoAP response within timeoutMs), 'puback-missing' (no PUBACK by the end of the
   * drain), 'connection-closed' (outstanding when the server closed the connection).
   * `sent === acked + sum(errors)`.
   */
  errors: Record<string, number>;
  /** Requests outstanding when the measured period ended; the drain then waited for them. */
  inFlightAtEnd: number;
  /** Open loop only: sends due by the schedule but not made because `window` were outstanding. */
  overrun: number;
  /** Length of the measured period (after warm-up), in seconds. */
  durationS: number;
  /** Successes received during the measured period, per second (warm-up and drain excluded). */
  ratePerS: number;
  /** Request -> success latency of the requests sent during the measured period, in ms. */
  latency: LatencySummary;
}

interface CommonOptions {
  host: string;
  port: number;
  /** Requests in flight per connection/socket (closed loop), or the cap on them (open loop). */
  window: number;
  /** Measured period, in ms (after the warm-up). */
  durationMs: number;
  /** Load applied before measuring starts, in ms (default 0). */
  warmupMs?: number;
  /** Open loop: total requests per second over all connections/sockets, instead of refilling the window. */
  ratePerS?: number;
  /** After the measured period, how long to wait for outstanding replies, in ms (default 5000). */
  drainMs?: number;
}

export interface MqttLoadOptions extends CommonOptions {
  /** TCP connections, each one MQTT session. */
  connections: number;
  /** The login and topic of connection i (0-based). Each connection needs its own clientId. */
  login: (i: number) => { clientId: string; username?: string; password?: string; topic: string };
  /** The payload connection i publishes (encoded once; every publish of the connection carries it). */
  payload: (i: number) => Buffer;
  /** How long to wait for a CONNACK, in ms (default 10000). */
  connectTimeoutMs?: number;
}

export interface CoapLoadOptions extends CommonOptions {
  /** UDP sockets (client endpoints) the load is spread over. */
  sockets: number;
  /** Uri-Path of socket i's requests, e.g. '/topic/sys/pk/dn/thing/model/up_raw'. */
  path: (i: number) => string;
  /** Payload of socket i's requests (encoded once). */
  payload: (i: number) => Buffer;
  /** A request with no response after this long is given up and counted as 'timeout', in ms (default 5000). */
  timeoutMs?: number;
  /**
   * Message ids one source port uses before the socket is replaced by a fresh one (default 65536).
   * Lower only to exercise the rotation in tests.
   */
  idsPerSocket?: number;
  /**
   * The device socket i speaks as. Each socket authenticates with POST /auth before the load starts
   * (not part of the run or its counts) and then carries its token and an increasing sequence number
   * in every request (options 2088, 2089), as Wanwu requires by default. A token per socket: sockets
   * racing on one token would overtake each other's sequence numbers. Sockets of the same device need
   * distinct client ids (the gateway takes each /auth sign once). Without it: plain requests (a bare server).
   */
  auth?: (i: number) => CoapDeviceIdentity;
}

/** Stop flag, phase timers, counters and the latency histogram of one run. */
class Meter {
  sent = 0;
  acked = 0;
  overrun = 0;
  readonly errors = new Map<string, number>();
  readonly latency = new Latency();
  /** performance.now() at which measuring began; Infinity during the warm-up. */
  measureFrom = Infinity;
  private ackedAtStart = 0;
  ackedInPeriod = 0;
  durationS = 0;
  running = true;

  error(code: string, n = 1): void {
    if (n > 0) this.errors.set(code, (this.errors.get(code) ?? 0) + n);
  }

  /** Marks the start of the measured period. */
  beginMeasure(now: number): void {
    this.measureFrom = now;
    this.ackedAtStart = this.acked;
  }

  /** Marks the end of the measured period. */
  endMeasure(now: number): void {
    this.running = false;
    this.ackedInPeriod = this.acked - this.ackedAtStart;
    this.durationS = (now - this.measureFrom) / 1000;
  }

  result(inFlightAtEnd: number): LoadResult {
    return {
      sent: this.sent,
      acked: this.acked,
      errors: Object.fromEntries(this.errors),
      inFlightAtEnd,
      overrun: this.overrun,
      durationS: this.durationS,
      ratePerS: this.durationS > 0 ? this.ackedInPeriod / this.durationS : 0,
      latency: this.latency.summary(),
    };
  }
}

/**
 * Runs the phases: warm-up, measured period, drain. Closed loop: `startClosedLoop` fills every
 * window once and the generator refills a slot whenever its request settles. Open loop:
 * `openLoopSend(n)` is called with the sends due by the schedule. `outstanding()` counts unsettled
 * requests; the generator calls the callback registered with `settled` whenever requests settle,
 * which ends the drain early once nothing is outstanding. Returns the count in flight at the end of
 * the measured period.
 */
async function runPhases(
  meter: Meter,
  opts: CommonOptions,
  hooks: { startClosedLoop(): void; openLoopSend(n: number): void; outstanding(): number; settled(cb: (() => void) | null): void },
): Promise<number> {
  const warmupMs = opts.warmupMs ?? 0;
  const t0 = performance.now();
  if (warmupMs <= 0) meter.beginMeasure(t0);
  let ticker: NodeJS.Timeout | undefined;
  if (opts.ratePerS === undefined) {
    hooks.startClosedLoop();
  } else {
    const rate = opts.ratePerS;
    let offered = 0;
    // A 5 ms tick keeps the burst per tick small at bench rates (rate/200 requests); latency is
    // measured from the actual write, so it does not include up to 5 ms of schedule lag.
    const tick = () => {
      const due = Math.floor(((performance.now() - t0) * rate) / 1000) - offered;
      if (due > 0) {
        offered += due;
        hooks.openLoopSend(due);
      }
    };
    tick();
    ticker = setInterval(tick, 5);
  }
  const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));
  if (warmupMs > 0) {
    await sleep(warmupMs);
    meter.beginMeasure(performance.now());
  }
  // The measured period is timed from its actual start, so it is never shorter than durationMs.
  await sleep(opts.durationMs);
  clearInterval(ticker);
  meter.endMeasure(performance.now());
  const inFlightAtEnd = hooks.outstanding();
  // Drain: every outstanding request gets up to drainMs to settle.
  if (hooks.outstanding() > 0) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, opts.drainMs ?? 5000);
      function done(): void {
        clearTimeout(timer);
        hooks.settled(null);
        resolve();
      }
      hooks.settled(() => {
        if (hooks.outstanding() === 0) done();
      });
    });
  }
  return inFlightAtEnd;
}

function checkCommon(opts: CommonOptions, units: number): void {
  if (!Number.isInteger(units) || units < 1) throw new RangeError('need at least one connection/socket');
  if (!Number.isInteger(opts.window) || opts.window < 1) throw new RangeError('window must be an integer >= 1');
  if (!(opts.durationMs > 0)) throw new RangeError('durationMs must be > 0');
  if (opts.ratePerS !== undefined && !(opts.ratePerS > 0)) throw new RangeError('ratePerS must be > 0');
}

// --- MQTT --------------------------------------------------------------------------------------

/** Names of CONNACK return codes, MQTT 3.1.1 §3.2.2.3. */
const CONNACK_RC: Record<number, string> = {
  1: 'unacceptable protocol version',
  2: 'identifier rejected',
  3: 'server unavailable',
  4: 'bad user name or password',
  5: 'not authorized',
};

/** DISCONNECT, MQTT 3.1.1 §3.14: fixed header only. */
const DISCONNECT = Buffer.from([0xe0, 0x00]);

/** Packet ids 1..65535 [MQTT-2.3.1-1]: 0 is not a valid id. */
const MAX_PACKET_ID = 0xffff;

interface MqttConn {
  index: number;
  socket: Socket;
  /** The encoded PUBLISH with packet id 0; `idOffset` is where the id goes. */
  template: Buffer;
  idOffset: number;
  /** performance.now() of the write of each outstanding packet id; -1 = free. */
  sentAt: Float64Array;
  outstanding: number;
  nextId: number;
  leftover: Buffer | null;
  closed: boolean;
  closedPromise: Promise<void>;
}

/** Encodes a QoS 1 PUBLISH once and finds its packet id (MQTT 3.1.1 §3.3.2: topic, then packet id). */
function publishTemplate(topic: string, payload: Buffer): { template: Buffer; idOffset: number } {
  const template = mqttPacket.generate({ cmd: 'publish', topic, payload, qos: 1, messageId: 1, retain: false, dup: false });
  const idOffset = template.length - payload.length - 2;
  if (template.readUInt16BE(idOffset) !== 1) throw new Error('could not locate the packet id in the encoded PUBLISH');
  return { template, idOffset };
}

/**
 * QoS 1 publishes over raw TCP, pipelined: each connection keeps `window` PUBLISHes awaiting their
 * PUBACK (closed loop) or follows `ratePerS` (open loop). Latency is PUBLISH write -> PUBACK read.
 * Rejects, after closing every socket, if a connection is refused or gets a CONNACK other than 0.
 */
export async function mqttLoad(opts: MqttLoadOptions): Promise<LoadResult> {
  checkCommon(opts, opts.connections);
  if (opts.window >= MAX_PACKET_ID) throw new RangeError(`window must be below ${MAX_PACKET_ID} (packet ids in flight)`);
  const meter = new Meter();
  const conns: MqttConn[] = [];
  let onSettled: (() => void) | null = null;
  let totalOutstanding = 0;

  const connectOne = (i: number): Promise<MqttConn> => {
    const login = opts.login(i);
    const { template, idOffset } = publishTemplate(login.topic, opts.payload(i));
    const socket = createConnection({ host: opts.host, port: opts.port });
    socket.setNoDelay(true);
    const conn: MqttConn = {
      index: i,
      socket,
      template,
      idOffset,
      sentAt: new Float64Array(MAX_PACKET_ID + 1).fill(-1),
      outstanding: 0,
      nextId: 1,
      leftover: null,
      closed: false,
      closedPromise: new Promise<void>((resolve) => socket.once('close', () => resolve())),
    };
    conns.push(conn);
    return new Promise<MqttConn>((resolve, reject) => {
      const what = `MQTT connection ${i} (client id ${JSON.stringify(login.clientId)}) to ${opts.host}:${opts.port}`;
      const timer = setTimeout(() => fail(new Error(`${what}: no CONNACK within ${opts.connectTimeoutMs ?? 10_000} ms`)), opts.connectTimeoutMs ?? 10_000);
      let connected = false;
      function fail(err: Error): void {
        clearTimeout(timer);
        socket.destroy();
        reject(err);
      }
      socket.on('error', (err) => {
        if (!connected) fail(new Error(`${what}: ${err.message}`, { cause: err }));
        // After CONNACK an error is followed by 'close', where outstanding publishes are counted.
      });
      socket.on('close', () => {
        if (!connected) return fail(new Error(`${what}: closed before CONNACK`));
        conn.closed = true;
        // Whatever was in flight will never be acknowledged on this connection.
        lose(conn, 'connection-closed');
      });
      socket.on('data', (chunk: Buffer) => {
        const rc = onMqttData(conn, chunk);
        if (connected || rc === undefined) return;
        if (rc !== 0) return fail(new Error(`${what}: CONNACK return code ${rc} (${CONNACK_RC[rc] ?? 'unknown'})`));
        connected = true;
        clearTimeout(timer);
        resolve(conn);
      });
      socket.write(
        mqttPacket.generate({
          cmd: 'connect',
          protocolId: 'MQTT',
          protocolVersion: 4,
          clientId: login.clientId,
          clean: true,
          // Publishes keep the session alive ([MQTT-3.1.2-23]); 60 s covers a stalled drain.
          keepalive: 60,
          ...(login.username === undefined ? {} : { username: login.username }),
          ...(login.password === undefined ? {} : { password: Buffer.from(login.password) }),
        }),
      );
    });
  };

  /** Settles all outstanding publishes of a connection as failed with `code`. */
  const lose = (c: MqttConn, code: string): void => {
    if (c.outstanding === 0) return;
    meter.error(code, c.outstanding);
    totalOutstanding -= c.outstanding;
    c.outstanding = 0;
    c.sentAt.fill(-1);
    onSettled?.();
  };

  /** Writes `n` PUBLISHes on one connection in one write. */
  const publish = (c: MqttConn, n: number, now: number): void => {
    if (n <= 0 || c.closed) return;
    const len = c.template.length;
    const out = Buffer.allocUnsafe(len * n);
    for (let k = 0; k < n; k++) {
      // Next free id; at most `window` (< 65535) are outstanding, so this ends [MQTT-2.3.1-2].
      let id = c.nextId;
      while (c.sentAt[id]! >= 0) id = id === MAX_PACKET_ID ? 1 : id + 1;
      c.nextId = id === MAX_PACKET_ID ? 1 : id + 1;
      const at = k * len;
      c.template.copy(out, at);
      out[at + c.idOffset] = id >> 8;
      out[at + c.idOffset + 1] = id & 0xff;
      c.sentAt[id] = now;
    }
    c.outstanding += n;
    totalOutstanding += n;
    meter.sent += n;
    c.socket.write(out);
  };

  /** Splits a chunk into MQTT packets; settles PUBACKs, refills the window. Returns a CONNACK's code. */
  function onMqttData(c: MqttConn, chunk: Buffer): number | undefined {
    const buf = c.leftover === null ? chunk : Buffer.concat([c.leftover, chunk]);
    c.leftover = null;
    let pos = 0;
    let connack: number | undefined;
    let freed = 0;
    let now = -1;
    while (pos < buf.length) {
      // Fixed header: type(4) flags(4), then the remaining length, 1-4 bytes of 7 bits (§2.2.3).
      let i = pos + 1;
      let len = 0;
      let mul = 1;
      let complete = false;
      while (i < buf.length && i < pos + 5) {
        const b = buf[i++]!;
        len += (b & 0x7f) * mul;
        mul *= 128;
        if ((b & 0x80) === 0) {
          complete = true;
          break;
        }
      }
      if (!complete || i + len > buf.length) break;
      const type = buf[pos]! >> 4;
      if (type === 4 && len >= 2) {
        // PUBACK (§3.4): packet id.
        const id = (buf[i]! << 8) | buf[i + 1]!;
        const at = c.sentAt[id]!;
        if (at >= 0) {
          if (now < 0) now = performance.now();
          c.sentAt[id] = -1;
          c.outstanding--;
          totalOutstanding--;
          meter.acked++;
          if (at >= meter.measureFrom) meter.latency.recordMs(now - at);
          freed++;
        }
      } else if (type === 2 && len >= 2) {
        // CONNACK (§3.2): session present, return code.
        connack = buf[i + 1]!;
      }
      // Anything else (PINGRESP, a PUBLISH we never subscribed to) is skipped.
      pos = i + len;
    }
    if (pos < buf.length) c.leftover = Buffer.from(buf.subarray(pos));
    if (freed > 0) {
      if (meter.running && opts.ratePerS === undefined) publish(c, freed, now);
      onSettled?.();
    }
    return connack;
  }

  try {
    await Promise.all(Array.from({ length: opts.connections }, (_, i) => connectOne(i)));
  } catch (err) {
    for (const c of conns) c.socket.destroy();
    throw err;
  }

  let rr = 0;
  const inFlightAtEnd = await runPhases(meter, opts, {
    startClosedLoop: () => {
      const now = performance.now();
      for (const c of conns) publish(c, opts.window, now);
    },
    openLoopSend: (n) => {
      const now = performance.now();
      const per = new Array<number>(conns.length).fill(0);
      for (let k = 0; k < n; k++) {
        const idx = rr++ % conns.length;
        const c = conns[idx]!;
        if (c.closed || c.outstanding + per[idx]! >= opts.window) meter.overrun++;
        else per[idx]!++;
      }
      conns.forEach((c, idx) => publish(c, per[idx]!, now));
    },
    outstanding: () => totalOutstanding,
    settled: (cb) => (onSettled = cb),
  });
  for (const c of conns) lose(c, 'puback-missing');

  // Clean end: DISCONNECT [MQTT-3.14.4-1], then close; cut the socket if the server does not close.
  await Promise.all(
    conns.map(async (c) => {
      if (!c.closed) c.socket.end(DISCONNECT);
      const timer = setTimeout(() => c.socket.destroy(), 2000);
      await c.closedPromise;
      clearTimeout(timer);
    }),
  );
  return meter.result(inFlightAtEnd);
}

// --- CoAP --------------------------------------------------------------------------------------

/** Placeholder of the sequence number in a template, found again to check its offset. */
const SEQ_MARK = 0xa5a5a5a5;

/** POST /auth for each socket's device, one after another; the tokens by socket. Throws on a refusal. */
async function authenticateSockets(host: string, port: number, sockets: number, identity: (i: number) => CoapDeviceIdentity): Promise<Buffer[]> {
  const client = new CoapClient(host, port);
  try {
    const tokens: Buffer[] = [];
    for (let i = 0; i < sockets; i++) {
      const device = identity(i);
      const session = new CoapAuthSession(device);
      const answer = await session.ensure(async (body) => {
        try {
          return await client.post(AUTH_PATH, body, { options: [AUTH_CONTENT_FORMAT], anonymous: true });
        } catch (err) {
          return { code: 'timeout', payload: Buffer.from((err as Error).message) };
        }
      });
      const token = session.currentToken;
      if (token === null) throw new Error(`coapLoad: POST /auth of ${device.productKey}/${device.deviceName} answered ${answer?.code} ${answer?.payload.toString('utf8')}`);
      tokens.push(token);
    }
    return tokens;
  } finally {
    client.close();
  }
}

/** RFC 7252 §3 message types (NON = 1 needs no handling of its own). */
const CON = 0;
const ACK = 2;
const RST = 3;

/** Response code strings by code byte (RFC 7252 §3: class.detail, "c.dd"). */
const CODE_NAMES: string[] = Array.from({ length: 256 }, (_, b) => `${b >> 5}.${String(b & 0x1f).padStart(2, '0')}`);

/** Exchange states per message id. */
const FREE = 0;
const WAITING = 1;
/** An empty ACK came (RFC 7252 §5.2.2): the response follows as a separate message. */
const SEPARATE = 2;

/**
 * One client endpoint (a UDP source port) and its message ids. RFC 7252 §4.4 lets an endpoint use a
 * message id again only after EXCHANGE_LIFETIME (§4.8.2: 247 s), and servers (Wanwu, node-coap)
 * answer a repeated id from their de-duplication cache without doing the work again. So an endpoint
 * hands out each of its ids once, from a random start (§4.4), and is retired when they are used up;
 * a fresh socket (new source port, new id space) takes over. An id is therefore never outstanding
 * twice, nor reused at all during a run. The token (§5.3.1) is the 2-byte message id of the request:
 * unique among this endpoint's outstanding requests, and it finds the request again when a separate
 * response (which has the server's message id) arrives.
 */
interface Endpoint {
  lane: Lane;
  socket: UdpSocket;
  firstId: number;
  /** Ids handed out so far (the next id is firstId + used, mod 2^16). */
  used: number;
  state: Uint8Array;
  sentAt: Float64Array;
  outstanding: number;
  /** Count of ids (from firstId) all settled: the timeout sweep starts here. */
  swept: number;
  retired: boolean;
  closed: Promise<void>;
}

interface Lane {
  index: number;
  template: Buffer;
  /** Offset of the 4-byte sequence number (option 2089) in the template, or -1 without authentication. */
  seqOffset: number;
  /** The lane's last sequence number. */
  seq: number;
  current: Endpoint | null;
  /** The endpoint that takes over when `current` runs out of ids (opened ahead of time). */
  spare: Promise<Endpoint> | null;
  spareReady: Endpoint | null;
  /** Sends owed while waiting for the spare endpoint (closed loop refills). */
  owed: number;
  /** Outstanding requests over the lane's endpoints (a retired one may still await responses). */
  outstanding: number;
}

/**
 * CON POSTs over UDP: each of `sockets` client endpoints keeps `window` requests awaiting their
 * response (closed loop) or follows `ratePerS` (open loop). Piggybacked responses and empty ACK +
 * separate responses are both handled (a separate CON response is ACKed, RFC 7252 §5.2.2). A
 * request is never retransmitted: with no response after `timeoutMs` it counts as 'timeout' (this
 * measures saturation, not reliability). Latency is request write -> response read.
 */
export async function coapLoad(opts: CoapLoadOptions): Promise<LoadResult> {
  checkCommon(opts, opts.sockets);
  const idsPerSocket = opts.idsPerSocket ?? 0x10000;
  if (!Number.isInteger(idsPerSocket) || idsPerSocket < 2 * opts.window || idsPerSocket > 0x10000) {
    throw new RangeError('idsPerSocket must be an integer in [2 * window, 65536]');
  }
  const timeoutMs = opts.timeoutMs ?? 5000;
  const family = isIPv6(opts.host) ? 'udp6' : 'udp4';
  const meter = new Meter();
  const lanes: Lane[] = [];
  const endpoints = new Set<Endpoint>();
  let totalOutstanding = 0;
  let onSettled: (() => void) | null = null;
  let stopped = false;

  const openEndpoint = async (lane: Lane): Promise<Endpoint> => {
    const socket = createSocket({ type: family, recvBufferSize: 4 * 1024 * 1024, sendBufferSize: 4 * 1024 * 1024 });
    const ep: Endpoint = {
      lane,
      socket,
      firstId: Math.floor(Math.random() * 0x10000),
      used: 0,
      state: new Uint8Array(0x10000),
      sentAt: new Float64Array(0x10000),
      outstanding: 0,
      swept: 0,
      retired: false,
      closed: new Promise<void>((resolve) => socket.once('close', () => resolve())),
    };
    endpoints.add(ep);
    socket.on('error', () => {
      // ICMP port unreachable (the server is gone) shows up here; the requests then time out.
    });
    socket.on('message', (msg: Buffer) => onDatagram(lane, ep, msg));
    await new Promise<void>((resolve, reject) => {
      socket.once('error', reject);
      // A connected socket: no address lookup per send, and only the server's datagrams arrive.
      socket.bind(0, () => socket.connect(opts.port, opts.host, () => {
        socket.off('error', reject);
        resolve();
      }));
    });
    return ep;
  };

  const settle = (ep: Endpoint, id: number): void => {
    ep.state[id] = FREE;
    ep.outstanding--;
    ep.lane.outstanding--;
    totalOutstanding--;
    if (ep.retired && ep.outstanding === 0) ep.socket.close();
  };

  function onDatagram(lane: Lane, ep: Endpoint, msg: Buffer): void {
    // RFC 7252 §3: Ver(2) T(2) TKL(4) | Code(8) | Message ID(16) | Token(TKL)
    if (msg.length < 4 || msg[0]! >> 6 !== 1) return;
    const type = (msg[0]! >> 4) & 0x03;
    const tkl = msg[0]! & 0x0f;
    const code = msg[1]!;
    const mid = (msg[2]! << 8) | msg[3]!;
    let id: number;
    if (type === ACK || type === RST) {
      id = mid;
      if (ep.state[id] === FREE) return; // late or duplicate
      if (type === RST) {
        meter.error('rst');
      } else if (code === 0) {
        ep.state[id] = SEPARATE; // empty ACK: keep waiting for the response, by token
        return;
      } else if (tkl !== 2 || ((msg[4]! << 8) | msg[5]!) !== id) {
        return; // a piggybacked response must echo our token (§5.3.2)
      } else {
        finish(ep, id, code);
      }
    } else {
      // A separate response (CON or NON), §5.2.2. ACK every CON, even a repeat of one we already
      // handled (our ACK may have been lost), so the server stops retransmitting it (§4.2).
      if (type === CON) ep.socket.send(Buffer.from([0x60, 0x00, msg[2]!, msg[3]!]));
      if (tkl !== 2 || msg.length < 6 || code === 0) return;
      id = (msg[4]! << 8) | msg[5]!;
      if (ep.state[id] === FREE) return;
      finish(ep, id, code);
    }
    settle(ep, id);
    if (meter.running && opts.ratePerS === undefined) send(lane, 1);
    onSettled?.();
  }

  /** Counts a response: success for class 2 (§5.9.1), else an error under its code. */
  function finish(ep: Endpoint, id: number, code: number): void {
    if (code >> 5 === 2) {
      meter.acked++;
      const at = ep.sentAt[id]!;
      if (at >= meter.measureFrom) meter.latency.recordMs(performance.now() - at);
    } else {
      meter.error(CODE_NAMES[code]!);
    }
  }

  /** Sends n requests on the lane's current endpoint, switching to the spare when ids run out. */
  function send(lane: Lane, n: number): void {
    const now = performance.now();
    for (let k = 0; k < n; k++) {
      let ep = lane.current!;
      if (ep.used >= idsPerSocket) {
        if (lane.spareReady === null) {
          lane.owed += n - k; // resumes when the spare is open
          return;
        }
        retire(ep);
        ep = lane.current = lane.spareReady;
        lane.spareReady = null;
        lane.spare = null;
      }
      if (lane.spare === null && ep.used >= idsPerSocket / 2) prepareSpare(lane);
      const id = (ep.firstId + ep.used++) & 0xffff;
      const out = Buffer.allocUnsafe(lane.template.length);
      lane.template.copy(out);
      out[2] = out[4] = id >> 8;
      out[3] = out[5] = id & 0xff;
      if (lane.seqOffset >= 0) out.writeUInt32BE(++lane.seq, lane.seqOffset);
      ep.state[id] = WAITING;
      ep.sentAt[id] = now;
      ep.outstanding++;
      lane.outstanding++;
      totalOutstanding++;
      meter.sent++;
      ep.socket.send(out);
    }
  }

  function prepareSpare(lane: Lane): void {
    lane.spare = openEndpoint(lane);
    lane.spare.then(
      (ep) => {
        if (stopped) {
          ep.socket.close();
          return;
        }
        lane.spareReady = ep;
        if (lane.owed > 0 && meter.running) {
          const n = lane.owed;
          lane.owed = 0;
          send(lane, n);
        }
      },
      () => {
        lane.spare = null; // retried at the next send
      },
    );
  }

  /** An endpoint whose ids are used up: it still takes the responses it awaits, then closes. */
  function retire(ep: Endpoint): void {
    ep.retired = true;
    if (ep.outstanding === 0) ep.socket.close();
  }

  /** Gives up requests older than timeoutMs (ids are handed out in time order, so stop at the first young one). */
  function sweep(): void {
    const now = performance.now();
    let gaveUp = false;
    for (const ep of endpoints) {
      while (ep.swept < ep.used) {
        const id = (ep.firstId + ep.swept) & 0xffff;
        if (ep.state[id] !== FREE) {
          if (now - ep.sentAt[id]! < timeoutMs) break;
          meter.error('timeout');
          settle(ep, id);
          gaveUp = true;
        }
        ep.swept++;
      }
    }
    if (gaveUp) {
      // Closed loop: a timed-out slot is refilled like an answered one.
      if (meter.running && opts.ratePerS === undefined) {
        for (const lane of lanes) {
          const missing = opts.window - lane.outstanding - lane.owed;
          if (missing > 0) send(lane, missing);
        }
      }
      onSettled?.();
    }
  }

  const tokens = opts.auth === undefined ? null : await authenticateSockets(opts.host, opts.port, opts.sockets, opts.auth);
  const templates = Array.from({ length: opts.sockets }, (_, i) => {
    const options: CoapOption[] = opts
      .path(i)
      .split('/')
      .filter((p) => p !== '')
      .map((p) => ({ name: 'Uri-Path', value: Buffer.from(p) }));
    const payload = opts.payload(i);
    if (tokens !== null) options.push({ name: OPT_AUTH_TOKEN, value: tokens[i]! }, seqOption4(SEQ_MARK));
    // Message id and token are placeholders patched at every send (bytes 2-3 and 4-5), and so is the
    // sequence number: option 2089 has the highest number, so its 4 bytes end just before the payload marker.
    const template = generateCoap({ code: 'POST', confirmable: true, messageId: 0, token: Buffer.alloc(2), options, payload });
    const seqOffset = tokens === null ? -1 : template.length - (payload.length > 0 ? payload.length + 1 : 0) - 4;
    if (seqOffset >= 0 && template.readUInt32BE(seqOffset) !== SEQ_MARK) throw new Error('coapLoad: the sequence number is not where the template should have it');
    return { template, seqOffset };
  });
  try {
    for (let i = 0; i < opts.sockets; i++) {
      const lane: Lane = { index: i, ...templates[i]!, seq: 0, current: null, spare: null, spareReady: null, owed: 0, outstanding: 0 };
      lanes.push(lane);
      lane.current = await openEndpoint(lane);
    }
  } catch (err) {
    for (const ep of endpoints) ep.socket.close();
    throw err;
  }

  const sweeper = setInterval(sweep, Math.max(10, Math.min(100, timeoutMs / 10)));
  let rr = 0;
  let inFlightAtEnd = 0;
  try {
    inFlightAtEnd = await runPhases(meter, { ...opts, drainMs: opts.drainMs ?? timeoutMs + 100 }, {
      startClosedLoop: () => {
        for (const lane of lanes) send(lane, opts.window);
      },
      openLoopSend: (n) => {
        for (let k = 0; k < n; k++) {
          const lane = lanes[rr++ % lanes.length]!;
          if (lane.outstanding >= opts.window || lane.owed > 0) meter.overrun++;
          else send(lane, 1);
        }
      },
      outstanding: () => totalOutstanding,
      settled: (cb) => (onSettled = cb),
    });
  } finally {
    clearInterval(sweeper);
    stopped = true;
  }
  // Whatever is still unanswered after the drain counts as timed out.
  for (const ep of endpoints) {
    for (let k = ep.swept; k < ep.used; k++) {
      const id = (ep.firstId + k) & 0xffff;
      if (ep.state[id] !== FREE) {
        meter.error('timeout');
        ep.state[id] = FREE;
      }
    }
    ep.outstanding = 0;
  }
  for (const lane of lanes) {
    const spare = lane.spare;
    if (spare && lane.spareReady === null) await spare.catch(() => null); // closes itself (stopped)
  }
  await Promise.all(
    [...endpoints].map((ep) => {
      try {
        ep.socket.close();
      } catch {
        /* already closed */
      }
      return ep.closed;
    }),
  );
  return meter.result(inFlightAtEnd);
}
