// The MQTT listener: an aedes broker that devices log in to as on Alibaba IoT Platform, and that also
// serves as the default local upstream (normalized records under wanwu/#, read by application accounts).
//
// Durability hinge: aedes writes PUBACK right after authorizePublish calls back and before it routes the
// message (lib/handlers/publish.js, QoS 1), so the uplink is decoded and committed inside authorizePublish.
// The callback runs only once the record (or the dead letter) is durable; if the buffer fails, the
// callback carries an error, aedes closes the connection without PUBACK, and the device re-sends.
//
// Limits (MqttLimits, README "Limits"): every socket goes through a PacketGuard (guard.ts) that
// judges each packet by its fixed header before aedes buffers it; logins are checked for identifier
// characters, keepalive range and connect floods before the sign is verified; topics for length and
// depth; device publishes pass a per-device token bucket (limits.ts). Every refusal is counted by
// reason (stats().refused); refused logins go to a rate-limited audit log (logger.warn).
//
// Downlink: commands.ts publishes queued commands to connected devices (channel "mqtt") and marks
// them delivered on their PUBACK; presence.ts reports device sessions opening and ending.

import { readFileSync } from 'node:fs';
import { createServer, type Server, type AddressInfo, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer } from 'node:tls';
import { timingSafeEqual } from 'node:crypto';
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes';
import { MQTT_LIMITS_DEFAULTS } from '../../config/schema.js';
import { WanwuError, type ErrorCode } from '../../errors.js';
import { deviceRefusal, type Registry } from '../../registry/index.js';
import { computeSign, parseMqttLogin, SIGN_METHODS, verifySign, type MqttLogin, type SignMethod } from '../../registry/sign.js';
import type { IngestHandler, IngestOutcome, Logger, RawMessage } from '../../types.js';
import { parseUplinkTopic, replyTopic } from '../../thing-model/topic.js';
import type { DownlinkPort, PresenceEvent } from '../../downlink/types.js';
import { isSubscribed, MqttCommandDelivery } from './commands.js';
import { GuardedConnection, MQTT_MAX_PACKET_BYTES, PacketGuard } from './guard.js';
import { PresenceTracker } from './presence.js';
import { AuditLog } from '../audit.js';
import { ConnectFloodDetector, identifierRefused, PublishRateLimiter, topicRefusal, type MqttRefusal } from './limits.js';

export { MQTT_REFUSALS, type MqttRefusal } from './limits.js';

export interface MqttAccount {
  username: string;
  password: string;
}

/** The `mqtt.limits` configuration (src/config/schema.ts has each key's unit and default). */
export interface MqttLimits {
  maxPacketBytes: number;
  maxTopicLength: number;
  maxTopicLevels: number;
  keepaliveMinS: number;
  keepaliveMaxS: number;
  maxConnections: number;
  publishRate: { perSecond: number; burst: number; maxDelayMs: number };
  connectFlood: { maxPerMinute: number; banS: number };
}

export interface MqttListenerOptions {
  host: string;
  /** 0 = any free port. */
  port: number;
  registry: Registry;
  ingest: IngestHandler;
  /** Counts and dead-letters a publish the listener refuses itself (outside the device's namespace). */
  refuse: (raw: Omit<RawMessage, 'route'>, error: WanwuError) => Promise<void>;
  /** Application accounts: may subscribe under wanwu/ only, and publish commands under wanwu/cmd/ only. */
  apps: readonly MqttAccount[];
  /** Internal accounts (the local forwarder): may publish under wanwu/ and subscribe under wanwu/cmd/ only. Exempt from the device limits. */
  publishers: readonly MqttAccount[];
  logger: Logger;
  /** mqtt.maxPayloadBytes: a device PUBLISH over limits.maxPacketBytes is cut to this + 1 payload bytes. Default 64 KiB. */
  maxPayloadBytes?: number;
  /** Default MQTT_LIMITS_DEFAULTS. */
  limits?: MqttLimits;
  /** MQTT over TLS on a second port (absent = none). */
  tls?: MqttTlsOptions;
  /** Clock of the rate limiter and the ban (tests). Default Date.now. */
  now?: () => number;
  /** The command queue: commands reach connected devices through the channel "mqtt" (commands.ts). Absent: none are sent. */
  downlink?: DownlinkPort;
  /** Told when a device session is ready and when it ends, with the reason (presence.ts; src/downlink/liveness.ts listens). */
  presence?: (e: PresenceEvent) => void;
}

export interface MqttListenerStats {
  address: string;
  port: number;
  /** The TLS listener, when configured. */
  tls: { address: string; port: number } | null;
  clients: number;
  devices: number;
  apps: number;
  connects: number;
  authFailures: Partial<Record<ErrorCode, number>>;
  forbidden: number;
  /** Open TCP connections (every role, logged in or not). */
  connections: number;
  /** Refusals of the limits, by reason (README "Limits"). */
  refused: Partial<Record<MqttRefusal, number>>;
  /** Device publishes held back for their rate token (slowed down, then accepted). */
  throttled: number;
  /** Identities banned right now by the connect-flood rule. */
  bans: number;
  /** Audit lines (refused logins) left out by the audit log's rate limit. */
  auditSuppressed: number;
}

export interface MqttTlsOptions {
  host: string;
  /** 0 = any free port. */
  port: number;
  /** PEM files. */
  cert: string;
  key: string;
  ca?: string | undefined;
}

export interface MqttListener {
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): MqttListenerStats;
  address(): { address: string; port: number };
  /** The TLS listener's address, or null when there is none. */
  tlsAddress(): { address: string; port: number } | null;
}

type Session =
  | { role: 'device'; productKey: string; deviceName: string; prefix: string; key: string }
  | { role: 'app' }
  | { role: 'publisher' }
  /** Dynamic registration: gets its device secret on /ext/register, then is disconnected. */
  | { role: 'register'; productKey: string; deviceName: string; secret: string };

interface LoginContext {
  client: Client;
  username: string | undefined;
  password: Buffer | undefined;
  now: number;
  login: MqttLogin | null;
  /** The ban key of the device: `{productKey}/{deviceName}` (or the client id when it is not a device login). */
  identity: string;
  /** The ban key of failed logins: source address and identity. */
  failureKey: string;
}

/** A login step's verdict: accepted with a session, or refused with a code and a CONNACK return code. */
type LoginVerdict =
  | { session: Session }
  | { code: ErrorCode; message: string; returnCode: 2 | 4 | 5; reason?: MqttRefusal; authFailure?: boolean };

/** Prefix application traffic lives under (the local upstream's default topic template). */
const APP_ROOT = 'wanwu/';
/** Where application accounts publish commands and the local forwarder subscribes to them (README "Commands (downlink)"). */
const APP_COMMAND_ROOT = 'wanwu/cmd/';

/** The error aedes raises for a topic deeper than its maxTopicLevels (lib/utils.js, handlers/publish.js). */
const AEDES_TOO_MANY_LEVELS = 'topic has too many levels';

/** How often idle rate buckets and expired bans are forgotten, in ms. */
const SWEEP_MS = 60_000;

export function createMqttListener(opts: MqttListenerOptions): MqttListener {
  return new AedesListener(opts);
}

interface Hold {
  timer: NodeJS.Timeout;
  abort: () => void;
}

class AedesListener implements MqttListener {
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private tlsServer: TlsServer | null = null;
  private tlsBound: { address: string; port: number } | null = null;
  private bound = { address: '', port: 0 };
  private readonly sessions = new WeakMap<Client, Session>();
  /** The keepalive each CONNECT asked for, seen in preConnect, checked in authenticate. */
  private readonly keepalives = new WeakMap<Client, number>();
  private readonly sockets = new Set<Socket>();
  /** Connections whose end has not been handled yet (stop() waits for them: the last presence events). */
  private readonly conns = new Set<GuardedConnection>();
  private readonly holds = new Set<Hold>();
  private sweeper: NodeJS.Timeout | null = null;
  /** stop() is closing the connections (the reason their sessions end). */
  private stopping = false;
  private counts = { devices: 0, apps: 0, connects: 0, forbidden: 0, throttled: 0 };
  private authFailures: Partial<Record<ErrorCode, number>> = {};
  private refused: Partial<Record<MqttRefusal, number>> = {};
  private readonly limits: MqttLimits;
  private readonly maxPayloadBytes: number;
  private readonly now: () => number;
  private readonly rate: PublishRateLimiter | null;
  /** Successful device logins, keyed by device: the flapping rule. */
  private readonly floods: ConnectFloodDetector | null;
  /** Failed device logins, keyed by source address and claimed identity (see loginSteps). */
  private readonly failures: ConnectFloodDetector | null;
  private readonly audit: AuditLog;
  private readonly commands: MqttCommandDelivery | null;
  private detachCommands: (() => void) | null = null;
  private readonly presence: PresenceTracker | null;

  constructor(private readonly opts: MqttListenerOptions) {
    this.limits = opts.limits ?? MQTT_LIMITS_DEFAULTS;
    this.maxPayloadBytes = opts.maxPayloadBytes ?? 64 * 1024;
    this.now = opts.now ?? Date.now;
    const { publishRate, connectFlood } = this.limits;
    this.rate = publishRate.perSecond > 0 ? new PublishRateLimiter(publishRate) : null;
    this.floods = connectFlood.maxPerMinute > 0 ? new ConnectFloodDetector(connectFlood) : null;
    this.failures = connectFlood.maxPerMinute > 0 ? new ConnectFloodDetector(connectFlood) : null;
    this.audit = new AuditLog(opts.logger, 'mqtt', this.now);
    this.commands = opts.downlink ? new MqttCommandDelivery(opts.downlink, opts.logger) : null;
    this.presence = opts.presence ? new PresenceTracker(opts.presence, opts.logger) : null;
  }

  async start(): Promise<void> {
    if (this.broker) return;
    this.stopping = false;
    const broker = await Aedes.createBroker({
      // Alibaba-style client ids ({id}|securemode=3,signmethod=...,timestamp=...|) exceed MQTT 3.1's 23.
      maxClientsIdLength: 256,
      // aedes' own backstop: deeper topics make its matcher (qlobber) throw, so aedes refuses them and
      // closes the connection. Our lower limit (limits.maxTopicLevels) is applied in the hooks below.
      maxTopicLevels: 100,
      preConnect: (client, packet, done) => {
        this.keepalives.set(client, packet.keepalive ?? 0);
        done(null, true);
      },
      authenticate: (client, username, password, done) => this.authenticate(client, username, password, done),
      authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => this.authorizeSubscribe(client, sub, done),
      // Runs for every PUBLISH aedes writes to a client: our commands get their packet identifier here.
      ...(this.commands ? { authorizeForward: (client: Client, packet: AedesPublishPacket) => this.commands!.forward(client, packet) } : {}),
    });
    broker.on('client', (client) => {
      const s = this.sessions.get(client);
      if (s?.role === 'register') return this.sendDeviceSecret(client, s);
      if (s?.role === 'device') this.counts.devices++;
      else if (s?.role === 'app') this.counts.apps++;
    });
    // The session is ready: CONNACK sent, a kept session's subscriptions restored (lib/handlers/connect.js).
    broker.on('clientReady', (client) => {
      const s = this.sessions.get(client);
      // aedes may report a connection ready after it closed (a takeover or a drop racing the CONNACK):
      // it must not register as the device's live session.
      if (s?.role !== 'device' || client.closed) return;
      this.presence?.ready(client);
      this.commands?.opened(client, s.productKey, s.deviceName);
    });
    broker.on('subscribe', (_subs, client) => {
      if (this.sessions.get(client)?.role === 'device') this.commands?.subscribed(client);
    });
    broker.on('keepaliveTimeout', (client) => this.presence?.reason(client, 'keepalive timeout'));
    broker.on('clientDisconnect', (client) => {
      const s = this.sessions.get(client);
      if (s?.role === 'device') this.counts.devices--;
      else if (s?.role === 'app') this.counts.apps--;
    });
    broker.on('clientError', (client, err) => {
      if (client) this.presence?.reason(client, `error: ${err.message}`);
      if (err.message === AEDES_TOO_MANY_LEVELS) this.count('topicLevels');
      this.opts.logger.debug({ clientId: client?.id, err: err.message }, 'mqtt client error');
    });
    broker.on('connectionError', (_client, err) => {
      if (err.message === AEDES_TOO_MANY_LEVELS) this.count('topicLevels');
      this.opts.logger.debug({ err: err.message }, 'mqtt connection error');
    });
    const server = createServer((socket) => this.accept(broker, socket));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.opts.port, this.opts.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => this.opts.logger.error({ err: err.message }, 'mqtt server error'));
    const addr = server.address() as AddressInfo;
    this.bound = { address: addr.address, port: addr.port };
    if (this.opts.tls) {
      try {
        this.tlsServer = await this.listenTls(broker, this.opts.tls);
      } catch (err) {
        server.close();
        await new Promise<void>((resolve) => broker.close(() => resolve()));
        throw err;
      }
    }
    this.broker = broker;
    this.server = server;
    this.sweeper = setInterval(() => {
      const now = this.now();
      this.rate?.sweep(now);
      this.floods?.sweep(now);
      this.failures?.sweep(now);
    }, SWEEP_MS).unref();
    if (this.commands) this.detachCommands = this.opts.downlink!.attach(this.commands);
  }

  async stop(): Promise<void> {
    const { broker, server } = this;
    if (!broker || !server) return;
    this.broker = null;
    this.server = null;
    this.detachCommands?.();
    this.detachCommands = null;
    this.stopping = true;
    if (this.sweeper) clearInterval(this.sweeper);
    this.sweeper = null;
    // Publishes held for their rate token are not committed: no PUBACK, so the devices send them again.
    for (const h of this.holds) {
      clearTimeout(h.timer);
      h.abort();
    }
    this.holds.clear();
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    const tlsServer = this.tlsServer;
    this.tlsServer = null;
    const tlsClosed = tlsServer ? new Promise<void>((resolve) => tlsServer.close(() => resolve())) : Promise.resolve();
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    // Sockets that never logged in are not aedes clients, so broker.close() leaves them open.
    for (const s of this.sockets) s.destroy();
    // Their sessions' ends (presence) are reported before stop() resolves.
    await Promise.all(
      [...this.conns].map(
        (c) =>
          new Promise<void>((resolve) => {
            c.once('close', () => resolve());
            c.destroy();
          }),
      ),
    );
    await closed;
    await tlsClosed;
    this.audit.close();
  }

  address(): { address: string; port: number } {
    return { ...this.bound };
  }

  tlsAddress(): { address: string; port: number } | null {
    return this.tlsBound ? { ...this.tlsBound } : null;
  }

  /** The TLS listener: handshakes in node:tls, then the same guard, login and limits as plain TCP. */
  private async listenTls(broker: Aedes, o: MqttTlsOptions): Promise<TlsServer> {
    const read = (what: string, file: string) => {
      try {
        return readFileSync(file);
      } catch (err) {
        throw new WanwuError('WANWU_ERR_CONFIG', `mqtt.tls.${what}: cannot read ${file}: ${(err as Error).message}`, { cause: err });
      }
    };
    const tlsServer = createTlsServer({ cert: read('cert', o.cert), key: read('key', o.key), ...(o.ca ? { ca: read('ca', o.ca) } : {}) }, (socket) =>
      this.accept(broker, socket),
    );
    // A failed handshake (a plain-TCP client, a bad certificate) only ends that connection.
    tlsServer.on('tlsClientError', (err) => this.opts.logger.debug({ err: err.message }, 'mqtt tls handshake failed'));
    await new Promise<void>((resolve, reject) => {
      tlsServer.once('error', reject);
      tlsServer.listen(o.port, o.host, () => {
        tlsServer.off('error', reject);
        resolve();
      });
    });
    tlsServer.on('error', (err) => this.opts.logger.error({ err: err.message }, 'mqtt tls server error'));
    const a = tlsServer.address() as AddressInfo;
    this.tlsBound = { address: a.address, port: a.port };
    return tlsServer;
  }

  stats(): MqttListenerStats {
    return {
      ...this.bound,
      tls: this.tlsAddress(),
      clients: this.broker?.connectedClients ?? 0,
      devices: this.counts.devices,
      apps: this.counts.apps,
      connects: this.counts.connects,
      authFailures: { ...this.authFailures },
      forbidden: this.counts.forbidden,
      connections: this.sockets.size,
      refused: { ...this.refused },
      throttled: this.counts.throttled,
      bans: (this.floods?.activeBans(this.now()) ?? 0) + (this.failures?.activeBans(this.now()) ?? 0),
      auditSuppressed: this.audit.suppressed,
    };
  }

  private count(reason: MqttRefusal): void {
    this.refused[reason] = (this.refused[reason] ?? 0) + 1;
  }

  /** A new TCP connection: the connection cap, then the packet guard between the socket and aedes. */
  private accept(broker: Aedes, socket: Socket): void {
    if (this.sockets.size >= this.limits.maxConnections) {
      this.count('maxConnections');
      this.opts.logger.debug({ peer: socket.remoteAddress, code: 'WANWU_ERR_TOO_MANY_CONNECTIONS' }, 'mqtt connection refused');
      socket.destroy();
      return;
    }
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    // The aedes client of this connection (set right below; the guard's events come with later reads).
    let client: Client | null = null;
    const guard = new PacketGuard(
      { maxPacketBytes: this.limits.maxPacketBytes, truncatePublishTo: null },
      {
        truncated: () => this.count('publishTruncated'),
        ...(this.commands ? { puback: (packetId: number) => client && this.commands!.acked(client, packetId) } : {}),
        ...(this.presence ? { disconnect: () => client && this.presence!.reason(client, 'client disconnect') } : {}),
      },
    );
    const conn = new GuardedConnection(socket, guard, (reason) => {
      if (client) this.presence?.reason(client, `packet guard: ${reason}`);
      this.count(reason);
      this.opts.logger.debug({ peer: `${socket.remoteAddress}:${socket.remotePort}`, reason, code: reason === 'packetTooLarge' ? 'WANWU_ERR_TOO_LARGE' : 'WANWU_ERR_MALFORMED' }, 'mqtt connection closed by the packet guard');
    });
    client = broker.handle(conn);
    const ended = client;
    // Every end of the connection (DISCONNECT, socket error, keepalive timeout, takeover, stop) closes it.
    this.conns.add(conn);
    conn.once('close', () => {
      this.conns.delete(conn);
      this.connectionClosed(ended);
    });
  }

  /** A connection ended: the device session it carried (if any) is over. */
  private connectionClosed(client: Client): void {
    if (this.stopping) this.presence?.reason(client, 'gateway stopping');
    this.commands?.closed(client);
    this.presence?.ended(client);
  }

  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    const ctx: LoginContext = { client, username, password, now: this.now(), login: null, identity: '', failureKey: '' };
    for (const step of this.loginSteps) {
      const verdict = step(ctx);
      if (!verdict) continue;
      if ('session' in verdict) {
        // One MQTT session per device, whatever the client id says: Alibaba client ids carry a fresh
        // timestamp per login, so keyed by them every clean=0 login would leave a new persistent
        // session behind in aedes (found by the fuzzer; memory without bound), a device could never
        // resume its session, and two logins of one device would both stay up. aedes reads client.id
        // after authenticate (session restore, takeover of an older connection [MQTT-3.1.4-2]).
        if (verdict.session.role === 'device') {
          // "/" is refused in every incoming client id (identifierRefused), so no other login, an
          // application account included, can name this session and take it over.
          client.id = `${verdict.session.productKey}/${verdict.session.deviceName}`;
          // aedes authenticates one turn after CONNECT; a connection closed meanwhile never ends again,
          // so it must not become a presence (that device would stay online).
          if (!client.closed) this.presence?.login(client, verdict.session.productKey, verdict.session.deviceName);
        }
        this.sessions.set(client, verdict.session);
        this.setGuardPolicy(client, verdict.session);
        this.counts.connects++;
        return done(null, true);
      }
      const r = verdict;
      if (r.reason) this.count(r.reason);
      if (r.authFailure) this.authFailures[r.code] = (this.authFailures[r.code] ?? 0) + 1;
      this.audit.write(
        { clientId: clip(client.id), username: clip(username), peer: peerOf(client), code: r.code, reason: r.reason ?? 'auth', message: r.message, connack: r.returnCode },
        'mqtt login refused',
      );
      return done(Object.assign(new Error(r.message), { returnCode: r.returnCode }) as AuthenticateError, false);
    }
    done(Object.assign(new Error('no login step accepted the client'), { returnCode: 5 }) as AuthenticateError, false);
  }

  /** The login checks in order (ARCHITECTURE.md convention 5); the first verdict wins. */
  private readonly loginSteps: ReadonlyArray<(ctx: LoginContext) => LoginVerdict | undefined> = [
    // The gateway's own forwarder: trusted, exempt from the device limits.
    (ctx) => (this.isAccount(this.opts.publishers, ctx) ? { session: { role: 'publisher' } } : undefined),
    // mosquitto CVE-2017-7650 class: a wildcard or "/" in an identity must never reach a topic pattern.
    // CONNACK 2 (identifier rejected) for the client id [MQTT-3.2.2-3], 4 for the username.
    (ctx) =>
      identifierRefused(ctx.client.id)
        ? { code: 'WANWU_ERR_PROTOCOL', message: 'client id contains +, #, / or NUL', returnCode: 2, reason: 'clientIdChars' }
        : identifierRefused(ctx.username)
          ? { code: 'WANWU_ERR_PROTOCOL', message: 'username contains +, #, / or NUL', returnCode: 4, reason: 'usernameChars' }
          : undefined,
    (ctx) => (this.isAccount(this.opts.apps, ctx) ? { session: { role: 'app' } } : undefined),
    (ctx) => this.registration(ctx),
    // Devices from here on. MQTT 3.1.1 cannot tell a client which keepalive to use (MQTT 5's Server
    // Keep Alive can), so one asking for a keepalive outside the range gets CONNACK 2, as mosquitto's
    // max_keepalive does.
    (ctx) => {
      const keepalive = this.keepalives.get(ctx.client) ?? 0;
      const { keepaliveMinS: min, keepaliveMaxS: max } = this.limits;
      if (keepalive >= min && keepalive <= max) return undefined;
      return { code: 'WANWU_ERR_PROTOCOL', message: `keepalive ${keepalive} s is outside ${min}-${max} s`, returnCode: 2, reason: 'keepalive' };
    },
    // Ban keys. A device's successful logins count against the device: EMQX's flapping detection keys
    // by client id, but Alibaba client ids carry a fresh timestamp, so the device is the stable key.
    // Failed logins count against source address + claimed identity, so nobody without the secret can
    // get a real device banned, while one address hammering one identity is.
    (ctx) => {
      try {
        ctx.login = parseMqttLogin(ctx.client.id, ctx.username);
      } catch {
        /* refused by the sign step, after the ban check */
      }
      ctx.identity = ctx.login ? `${ctx.login.productKey}/${ctx.login.deviceName}` : (clip(ctx.client.id) ?? '');
      ctx.failureKey = `${ipOf(ctx.client)} ${ctx.identity}`;
      const bannedMs = Math.max(ctx.login ? (this.floods?.bannedFor(ctx.identity, ctx.now) ?? 0) : 0, this.failures?.bannedFor(ctx.failureKey, ctx.now) ?? 0);
      if (bannedMs === 0) return undefined;
      return { code: 'WANWU_ERR_BANNED', message: `banned for another ${Math.ceil(bannedMs / 1000)} s after a connect flood`, returnCode: 5, reason: 'banned' };
    },
    // The Alibaba sign. CONNACK 4 (bad user name or password) for unknown devices too, so ids cannot be probed.
    (ctx) => {
      try {
        const login = ctx.login ?? parseMqttLogin(ctx.client.id, ctx.username);
        const device = this.opts.registry.device(login.productKey, login.deviceName);
        if (!device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${login.productKey}/${login.deviceName}`);
        if (!verifySign(login, device.deviceSecret, ctx.password)) throw new WanwuError('WANWU_ERR_AUTH', 'bad sign');
        return undefined;
      } catch (err) {
        if (this.failures?.record(ctx.failureKey, ctx.now)) this.count('connectFlood');
        return { code: err instanceof WanwuError ? err.code : 'WANWU_ERR_AUTH', message: (err as Error).message, returnCode: 4, authFailure: true };
      }
    },
    // A disabled device has proved its secret: CONNACK 5 (not authorized) says what is the matter.
    (ctx) => {
      const login = ctx.login!;
      const refusal = deviceRefusal(this.opts.registry.device(login.productKey, login.deviceName)!);
      return refusal ? { code: refusal.code, message: refusal.message, returnCode: 5, authFailure: true } : undefined;
    },
    // Connect flood: one login too many starts the ban.
    (ctx) => {
      if (!this.floods?.record(ctx.identity, ctx.now)) return undefined;
      const { maxPerMinute, banS } = this.limits.connectFlood;
      return { code: 'WANWU_ERR_BANNED', message: `more than ${maxPerMinute} logins in a minute: banned for ${banS} s`, returnCode: 5, reason: 'connectFlood' };
    },
    (ctx) => {
      const { productKey, deviceName } = ctx.login!;
      return { session: { role: 'device', productKey, deviceName, prefix: `/sys/${productKey}/${deviceName}/`, key: ctx.identity } };
    },
  ];

  /**
   * Alibaba's MQTT dynamic registration (一型一密, with pre-registration): client id
   * `{deviceName}|securemode=2,authType=register,random={random},signmethod={method}|`, username
   * `{deviceName}&{productKey}`, password = HMAC(productSecret, `deviceName{dn}productKey{pk}random{random}`).
   * Over TLS only (the secret travels back on this connection). Not a registration: undefined.
   */
  private registration(ctx: LoginContext): LoginVerdict | undefined {
    const m = /^([^|]+)\|(.*)\|$/.exec(ctx.client.id);
    const params = new Map((m?.[2] ?? '').split(',').map((kv) => kv.split('=') as [string, string]));
    if (!m || params.get('authType') !== 'register') return undefined;
    const refuse = (code: ErrorCode, message: string, returnCode: 4 | 5): LoginVerdict => ({ code, message, returnCode, authFailure: true });
    const [deviceName = '', productKey = ''] = (ctx.username ?? '').split('&');
    const method = params.get('signmethod') as SignMethod | undefined;
    const random = params.get('random') ?? '';
    if (deviceName !== m[1] || !method || !(method in SIGN_METHODS) || random === '') return refuse('WANWU_ERR_AUTH', 'malformed registration login', 4);
    const product = this.opts.registry.product(productKey);
    if (!product?.productSecret || !this.opts.registry.register) return refuse('WANWU_ERR_REGISTRATION', `dynamic registration is off for ${productKey}`, 5);
    const expected = Buffer.from(computeSign(method, product.productSecret, `deviceName${deviceName}productKey${productKey}random${random}`));
    const given = Buffer.from(ctx.password ?? Buffer.alloc(0));
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) return refuse('WANWU_ERR_AUTH', 'bad registration sign', 4);
    const conn = ctx.client.conn;
    if (!(conn instanceof GuardedConnection) || !(conn.socket as { encrypted?: boolean }).encrypted) {
      return refuse('WANWU_ERR_REGISTRATION', 'dynamic registration is accepted over TLS only (the secret is sent back)', 5);
    }
    try {
      const secret = this.opts.registry.register(productKey, deviceName);
      this.opts.registry.audit?.({ at: ctx.now, productKey, deviceName, event: 'registered', source: `mqtt ${peerOf(ctx.client)}` });
      return { session: { role: 'register', productKey, deviceName, secret } };
    } catch (err) {
      return refuse(err instanceof WanwuError ? err.code : 'WANWU_ERR_REGISTRATION', (err as Error).message, 5);
    }
  }

  /** After the CONNACK: the secret on /ext/register (QoS 0, as Alibaba does), then the connection ends. */
  private sendDeviceSecret(client: Client, s: { productKey: string; deviceName: string; secret: string }): void {
    const payload = Buffer.from(JSON.stringify({ productKey: s.productKey, deviceName: s.deviceName, deviceSecret: s.secret }));
    client.publish({ cmd: 'publish', topic: '/ext/register', payload, qos: 0, retain: false, dup: false }, () => client.close());
  }

  private isAccount(list: readonly MqttAccount[], ctx: LoginContext): boolean {
    const { username, password } = ctx;
    return username !== undefined && password !== undefined && list.some((a) => a.username === username && sameSecret(a.password, password));
  }

  /** Packet limits by role: the forwarder's batches may be large; a device's oversize PUBLISH is cut, not refused. */
  private setGuardPolicy(client: Client, session: Session): void {
    if (!(client.conn instanceof GuardedConnection)) return;
    if (session.role === 'publisher') client.conn.guard.policy = { maxPacketBytes: MQTT_MAX_PACKET_BYTES, truncatePublishTo: null };
    else if (session.role === 'device') client.conn.guard.policy = { maxPacketBytes: this.limits.maxPacketBytes, truncatePublishTo: this.maxPayloadBytes + 1 };
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, done: (error?: Error | null) => void): void {
    const session = client ? this.sessions.get(client) : undefined;
    if (!client || !session || session.role === 'register') return done(new Error('publish without a session'));
    if (session.role === 'publisher') {
      return done(packet.topic.startsWith(APP_ROOT) ? null : new Error(`internal publisher may publish under ${APP_ROOT} only`));
    }
    const tooBig = topicRefusal(packet.topic, this.limits);
    if (tooBig) {
      // Like a publish outside the namespace, it cannot be refused alone in 3.1.1: the connection is
      // closed. Not dead-lettered: a topic over the limits is abuse, not data.
      this.count(tooBig);
      return done(new WanwuError('WANWU_ERR_TOPIC', `topic of ${Buffer.byteLength(packet.topic)} bytes and ${packet.topic.split('/').length} levels is over the limits`));
    }
    if (session.role === 'app' && packet.topic.startsWith(APP_COMMAND_ROOT)) {
      // A retained command would be queued again at every resubscription of the local forwarder.
      packet.retain = false;
      return done(null);
    }
    const receivedAt = Date.now();
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    const peer = `${client.conn && 'remoteAddress' in client.conn ? client.conn.remoteAddress : ''}:${client.conn && 'remotePort' in client.conn ? client.conn.remotePort : ''}`;
    if (session.role === 'app' || !packet.topic.startsWith(session.prefix)) {
      // [MQTT-3.3.5-2]: 3.1.1 cannot refuse a PUBLISH; we close the connection rather than pretend to accept it.
      this.counts.forbidden++;
      const error = new WanwuError('WANWU_ERR_FORBIDDEN', `publish to ${packet.topic} is outside the client's namespace`);
      const raw = {
        transport: 'mqtt' as const,
        productKey: session.role === 'device' ? session.productKey : '',
        deviceName: session.role === 'device' ? session.deviceName : '',
        topic: packet.topic,
        payload,
        receivedAt,
        peer,
      };
      this.opts.refuse(raw, error).then(
        () => done(error),
        () => done(error),
      );
      return;
    }
    const accept = () => this.ingestPublish(client, session, packet, payload, receivedAt, peer, done);
    if (!this.rate) return accept();
    const r = this.rate.reserve(session.key, this.now());
    if (r.allowed && r.delayMs === 0) return accept();
    // While this callback is pending aedes reads nothing more from the device's socket, so holding it
    // slows the device down through TCP itself (as EMQX's rate limiter does) and keeps in memory no
    // more than the one socket read already parsed.
    const abort = () => done(new Error('listener stopping'));
    if (r.allowed) {
      this.counts.throttled++;
      return this.hold(r.delayMs, accept, abort);
    }
    // Over the rate for longer than maxDelayMs: acknowledged (MQTT 3.1.1 has no refusal for one
    // PUBLISH [MQTT-3.3.5-2]) but not stored; the Alink reply says 429 so the device sends it again
    // later. Answered after the publishes already waiting, so replies keep their order.
    this.count('rateLimited');
    const error = new WanwuError('WANWU_ERR_RATE_LIMITED', `more than ${this.limits.publishRate.perSecond} messages/s (burst ${this.limits.publishRate.burst}): not stored, send it again later`);
    const msgId = peekAlinkId(payload);
    const refuse = () => {
      done(null);
      this.reply(client, packet.topic, { error, committed: 0, deadLettered: false, ...(msgId === undefined ? {} : { msgId }) });
    };
    if (r.delayMs > 0) this.hold(r.delayMs, refuse, abort);
    else refuse();
  }

  private hold(ms: number, run: () => void, abort: () => void): void {
    const h: Hold = {
      timer: setTimeout(() => {
        this.holds.delete(h);
        run();
      }, ms),
      abort,
    };
    this.holds.add(h);
  }

  private ingestPublish(
    client: Client,
    session: Extract<Session, { role: 'device' }>,
    packet: PublishPacket,
    payload: Buffer,
    receivedAt: number,
    peer: string,
    done: (error?: Error | null) => void,
  ): void {
    let route: RawMessage['route'];
    try {
      route = parseUplinkTopic(packet.topic).route;
    } catch (err) {
      const error = err as WanwuError;
      const raw = { transport: 'mqtt' as const, productKey: session.productKey, deviceName: session.deviceName, topic: packet.topic, payload, receivedAt, peer };
      this.opts.refuse(raw, error).then(
        () => {
          done(null);
          this.reply(client, packet.topic, { error, committed: 0, deadLettered: true });
        },
        (storageErr: unknown) => done(storageErr as Error),
      );
      return;
    }
    const raw: RawMessage = {
      transport: 'mqtt',
      productKey: session.productKey,
      deviceName: session.deviceName,
      topic: packet.topic,
      route,
      payload,
      receivedAt,
      peer,
    };
    this.opts.ingest(raw).then((outcome) => {
      if (outcome.error?.fault === 'storage') {
        // Not committed: no PUBACK. aedes closes the connection and the device re-sends after reconnecting.
        return done(outcome.error);
      }
      done(null);
      this.reply(client, packet.topic, outcome);
    });
  }

  /** Alink reply on {topic}_reply: {id, code, data, message} (code 200 = ok). */
  private reply(client: Client, topic: string, outcome: IngestOutcome): void {
    const broker = this.broker;
    if (!broker) return;
    // A reply is never answered (Alibaba has no `..._reply_reply`): a device's reply to a command
    // completes it or is refused, counted and dead-lettered by the pipeline, and that is all.
    if (topic.endsWith('_reply')) return;
    // Only the device itself may subscribe under its /sys/{pk}/{dn}/ (authorizeSubscribe), and it is
    // the client that just published: when none of its subscriptions matches, nobody would get the
    // reply, so it is not built and routed at all (about 6% of the MQTT path under load).
    const replyTo = replyTopic(topic);
    if (!isSubscribed(client, replyTo)) return;
    const body: Record<string, unknown> = {};
    if (outcome.msgId !== undefined) body.id = outcome.msgId;
    body.code = outcome.error ? outcome.error.alinkCode : 200;
    body.data = {};
    body.message = outcome.error ? `${outcome.error.code}: ${outcome.error.message}` : 'success';
    if (outcome.method !== undefined) body.method = outcome.method;
    body.version = '1.0';
    broker.publish(
      { cmd: 'publish', topic: replyTo, payload: Buffer.from(JSON.stringify(body)), qos: 0, retain: false, dup: false },
      () => {},
    );
  }

  private authorizeSubscribe(client: Client, sub: Subscription, done: (error: Error | null, subscription?: Subscription | null) => void): void {
    const session = this.sessions.get(client);
    let allowed = false;
    const tooBig = session?.role === 'publisher' ? null : topicRefusal(sub.topic, this.limits);
    if (tooBig) this.count(tooBig);
    else if (session?.role === 'device') allowed = sub.topic.startsWith(session.prefix);
    else if (session?.role === 'app') allowed = sub.topic.startsWith(APP_ROOT);
    else if (session?.role === 'publisher') allowed = sub.topic.startsWith(APP_COMMAND_ROOT);
    if (!allowed) {
      if (!tooBig) this.counts.forbidden++;
      this.opts.logger.debug({ clientId: client.id, topic: sub.topic.slice(0, 256), reason: tooBig ?? 'namespace' }, 'subscription refused');
    }
    // A refused subscription gets SUBACK 0x80 [MQTT-3.9.3] and the session stays up.
    done(null, allowed ? sub : null);
  }
}

function sameSecret(expected: string, given: Buffer): boolean {
  const a = Buffer.from(expected, 'utf8');
  return a.length === given.length && timingSafeEqual(a, given);
}

/** Identifiers as they go into logs and keys: at most 128 characters. */
function clip(value: string | undefined | null): string | undefined {
  if (value === undefined || value === null) return undefined;
  return value.length > 128 ? `${value.slice(0, 128)}...` : value;
}

function ipOf(client: Client): string {
  const conn = client.conn as { remoteAddress?: string } | undefined;
  return conn?.remoteAddress ?? '';
}

function peerOf(client: Client): string {
  const conn = client.conn as { remoteAddress?: string; remotePort?: number } | undefined;
  return `${conn?.remoteAddress ?? ''}:${conn?.remotePort ?? ''}`;
}

/** The Alink message id of a JSON payload, read cheaply from its first bytes (no full parse for a refusal). */
function peekAlinkId(payload: Buffer): string | undefined {
  const m = /"id"\s*:\s*"?([^",}\s]{1,64})/.exec(payload.subarray(0, 256).toString('utf8'));
  return m?.[1];
}
