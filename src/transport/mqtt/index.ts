// The MQTT listener: an aedes broker that devices log in to as on Alibaba IoT Platform, and that also
// serves as the default local upstream (normalized records under wanwu/#, read by application accounts).
//
// Durability hinge: aedes writes PUBACK right after authorizePublish calls back and before it routes the
// message (lib/handlers/publish.js, QoS 1), so the uplink is decoded and committed inside authorizePublish.
// The callback runs only once the record (or the dead letter) is durable; if the buffer fails, the
// callback carries an error, aedes closes the connection without PUBACK, and the device re-sends.

import { createServer, type Server, type AddressInfo } from 'node:net';
import { timingSafeEqual } from 'node:crypto';
import { Aedes, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes';
import { WanwuError, type ErrorCode } from '../../errors.js';
import type { Registry } from '../../registry/index.js';
import { parseMqttLogin, verifySign } from '../../registry/sign.js';
import type { IngestHandler, IngestOutcome, Logger, RawMessage } from '../../types.js';
import { parseUplinkTopic, replyTopic } from '../../thing-model/topic.js';

export interface MqttAccount {
  username: string;
  password: string;
}

export interface MqttListenerOptions {
  host: string;
  /** 0 = any free port. */
  port: number;
  registry: Registry;
  ingest: IngestHandler;
  /** Counts and dead-letters a publish the listener refuses itself (outside the device's namespace). */
  refuse: (raw: Omit<RawMessage, 'route'>, error: WanwuError) => Promise<void>;
  /** Application accounts: may subscribe under wanwu/ only. */
  apps: readonly MqttAccount[];
  /** Internal accounts (the local forwarder): may publish under wanwu/ only. */
  publishers: readonly MqttAccount[];
  logger: Logger;
}

export interface MqttListenerStats {
  address: string;
  port: number;
  clients: number;
  devices: number;
  apps: number;
  connects: number;
  authFailures: Partial<Record<ErrorCode, number>>;
  forbidden: number;
}

export interface MqttListener {
  start(): Promise<void>;
  stop(): Promise<void>;
  stats(): MqttListenerStats;
  address(): { address: string; port: number };
}

type Session =
  | { role: 'device'; productKey: string; deviceName: string; prefix: string }
  | { role: 'app' }
  | { role: 'publisher' };

/** Prefix application traffic lives under (the local upstream's default topic template). */
const APP_ROOT = 'wanwu/';

export function createMqttListener(opts: MqttListenerOptions): MqttListener {
  return new AedesListener(opts);
}

class AedesListener implements MqttListener {
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private bound = { address: '', port: 0 };
  private readonly sessions = new WeakMap<Client, Session>();
  private counts = { devices: 0, apps: 0, connects: 0, forbidden: 0 };
  private authFailures: Partial<Record<ErrorCode, number>> = {};

  constructor(private readonly opts: MqttListenerOptions) {}

  async start(): Promise<void> {
    if (this.broker) return;
    const broker = await Aedes.createBroker({
      // Alibaba-style client ids ({id}|securemode=3,signmethod=...,timestamp=...|) exceed MQTT 3.1's 23.
      maxClientsIdLength: 256,
      authenticate: (client, username, password, done) => this.authenticate(client, username, password, done),
      authorizePublish: (client, packet, done) => this.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => this.authorizeSubscribe(client, sub, done),
    });
    broker.on('client', (client) => {
      const s = this.sessions.get(client);
      if (s?.role === 'device') this.counts.devices++;
      else if (s?.role === 'app') this.counts.apps++;
    });
    broker.on('clientDisconnect', (client) => {
      const s = this.sessions.get(client);
      if (s?.role === 'device') this.counts.devices--;
      else if (s?.role === 'app') this.counts.apps--;
    });
    broker.on('clientError', (client, err) => {
      this.opts.logger.debug({ clientId: client?.id, err: err.message }, 'mqtt client error');
    });
    broker.on('connectionError', (_client, err) => {
      this.opts.logger.debug({ err: err.message }, 'mqtt connection error');
    });
    const server = createServer(broker.handle as (socket: import('node:net').Socket) => void);
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
    this.broker = broker;
    this.server = server;
  }

  async stop(): Promise<void> {
    const { broker, server } = this;
    if (!broker || !server) return;
    this.broker = null;
    this.server = null;
    const closed = new Promise<void>((resolve) => server.close(() => resolve()));
    await new Promise<void>((resolve) => broker.close(() => resolve()));
    await closed;
  }

  address(): { address: string; port: number } {
    return { ...this.bound };
  }

  stats(): MqttListenerStats {
    return {
      ...this.bound,
      clients: this.broker?.connectedClients ?? 0,
      devices: this.counts.devices,
      apps: this.counts.apps,
      connects: this.counts.connects,
      authFailures: { ...this.authFailures },
      forbidden: this.counts.forbidden,
    };
  }

  private authenticate(
    client: Client,
    username: string | undefined,
    password: Buffer | undefined,
    done: (error: AuthenticateError | null, success: boolean | null) => void,
  ): void {
    const account = (list: readonly MqttAccount[]) =>
      username !== undefined && password !== undefined && list.some((a) => a.username === username && sameSecret(a.password, password));
    if (account(this.opts.publishers)) {
      this.sessions.set(client, { role: 'publisher' });
      this.counts.connects++;
      return done(null, true);
    }
    if (account(this.opts.apps)) {
      this.sessions.set(client, { role: 'app' });
      this.counts.connects++;
      return done(null, true);
    }
    try {
      const login = parseMqttLogin(client.id, username);
      const device = this.opts.registry.device(login.productKey, login.deviceName);
      if (!device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${login.productKey}/${login.deviceName}`);
      if (!verifySign(login, device.deviceSecret, password)) throw new WanwuError('WANWU_ERR_AUTH', 'bad sign');
      this.sessions.set(client, {
        role: 'device',
        productKey: login.productKey,
        deviceName: login.deviceName,
        prefix: `/sys/${login.productKey}/${login.deviceName}/`,
      });
      this.counts.connects++;
      done(null, true);
    } catch (err) {
      const code: ErrorCode = err instanceof WanwuError ? err.code : 'WANWU_ERR_AUTH';
      this.authFailures[code] = (this.authFailures[code] ?? 0) + 1;
      this.opts.logger.info({ clientId: client.id, username, code, reason: (err as Error).message }, 'mqtt login refused');
      // CONNACK 4 (bad user name or password) for unknown devices too, so ids cannot be probed.
      const error = Object.assign(new Error((err as Error).message), { returnCode: 4 }) as AuthenticateError;
      done(error, false);
    }
  }

  private authorizePublish(client: Client | null, packet: PublishPacket, done: (error?: Error | null) => void): void {
    const session = client ? this.sessions.get(client) : undefined;
    if (!client || !session) return done(new Error('publish without a session'));
    if (session.role === 'publisher') {
      return done(packet.topic.startsWith(APP_ROOT) ? null : new Error(`internal publisher may publish under ${APP_ROOT} only`));
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
    let route: RawMessage['route'];
    try {
      route = parseUplinkTopic(packet.topic).route;
    } catch (err) {
      const error = err as WanwuError;
      const raw = { transport: 'mqtt' as const, productKey: session.productKey, deviceName: session.deviceName, topic: packet.topic, payload, receivedAt, peer };
      this.opts.refuse(raw, error).then(
        () => {
          done(null);
          this.reply(packet.topic, { error, committed: 0, deadLettered: true });
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
      this.reply(packet.topic, outcome);
    });
  }

  /** Alink reply on {topic}_reply: {id, code, data, message} (code 200 = ok). */
  private reply(topic: string, outcome: IngestOutcome): void {
    const broker = this.broker;
    if (!broker) return;
    const body: Record<string, unknown> = {};
    if (outcome.msgId !== undefined) body.id = outcome.msgId;
    body.code = outcome.error ? outcome.error.alinkCode : 200;
    body.data = {};
    body.message = outcome.error ? `${outcome.error.code}: ${outcome.error.message}` : 'success';
    if (outcome.method !== undefined) body.method = outcome.method;
    body.version = '1.0';
    broker.publish(
      { cmd: 'publish', topic: replyTopic(topic), payload: Buffer.from(JSON.stringify(body)), qos: 0, retain: false, dup: false },
      () => {},
    );
  }

  private authorizeSubscribe(client: Client, sub: Subscription, done: (error: Error | null, subscription?: Subscription | null) => void): void {
    const session = this.sessions.get(client);
    let allowed = false;
    if (session?.role === 'device') allowed = sub.topic.startsWith(session.prefix);
    else if (session?.role === 'app') allowed = sub.topic.startsWith(APP_ROOT);
    if (!allowed) {
      this.counts.forbidden++;
      this.opts.logger.debug({ clientId: client.id, topic: sub.topic }, 'subscription refused');
    }
    // A refused subscription gets SUBACK 0x80 [MQTT-3.9.3] and the session stays up.
    done(null, allowed ? sub : null);
  }
}

function sameSecret(expected: string, given: Buffer): boolean {
  const a = Buffer.from(expected, 'utf8');
  return a.length === given.length && timingSafeEqual(a, given);
}
