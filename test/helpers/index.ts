// Shared test helpers: temp folders, a silent logger, an in-process aedes upstream, polling.

import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Aedes } from 'aedes';
import { WanwuError } from '../../src/errors.js';
import type { Logger } from '../../src/types.js';

export const silentLogger: Logger = { debug() {}, info() {}, warn() {}, error() {} };

/** A logger that keeps every line, for tests of what the gateway says (start-up warnings ...). */
export function recordingLogger(): Logger & { lines: Array<{ level: 'debug' | 'info' | 'warn' | 'error'; obj: Record<string, unknown>; msg: string | undefined }> } {
  const lines: Array<{ level: 'debug' | 'info' | 'warn' | 'error'; obj: Record<string, unknown>; msg: string | undefined }> = [];
  const at = (level: 'debug' | 'info' | 'warn' | 'error') => (obj: object, msg?: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  return { lines, debug: at('debug'), info: at('info'), warn: at('warn'), error: at('error') };
}

export function tempDir(prefix = 'wanwu-test-'): { path: string; cleanup(): void } {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, cleanup: () => rmSync(path, { recursive: true, force: true }) };
}

export async function waitUntil(cond: () => boolean | Promise<boolean>, timeoutMs = 10_000, what = 'condition'): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface UpstreamMessage {
  topic: string;
  payload: Buffer;
  json: Record<string, unknown>;
  qos: number;
}

/**
 * An in-process aedes broker standing in for an upstream (integration tests). It records every
 * PUBLISH it receives; stop() and start() again on the same port simulate an outage.
 */
export class TestUpstream {
  readonly messages: UpstreamMessage[] = [];
  /**
   * Device liveness records (kind "state", src/downlink/liveness.ts). The gateway sends one on a
   * device's first contact and at every online/sleeping/offline change, so they are kept apart:
   * `messages` and `records()` hold what devices sent (and command records), which tests count.
   */
  readonly states: UpstreamMessage[] = [];
  port = 0;
  private broker: Aedes | null = null;
  private server: Server | null = null;
  private sockets = new Set<Socket>();
  connections = 0;

  /** With `tls`, the broker listens for MQTT over TLS (mqtts://) with this key and certificate. */
  constructor(private readonly tls?: { key: Buffer; cert: Buffer }) {}

  async start(port = this.port): Promise<void> {
    // Messages are recorded in authorizePublish, which aedes runs before it sends PUBACK: an
    // acknowledged message is always recorded, even if the broker is stopped right after.
    const broker = await Aedes.createBroker({
      maxClientsIdLength: 256,
      authorizePublish: (_client, packet, done) => {
        let json: Record<string, unknown> = {};
        try {
          json = JSON.parse(packet.payload.toString());
        } catch {
          /* not JSON */
        }
        (json.kind === 'state' ? this.states : this.messages).push({ topic: packet.topic, payload: Buffer.from(packet.payload), json, qos: packet.qos });
        done(null);
      },
    });
    broker.on('client', () => this.connections++);
    const server = this.tls
      ? (createTlsServer({ key: this.tls.key, cert: this.tls.cert }, broker.handle as (s: Socket) => void) as unknown as Server)
      : createServer(broker.handle as (s: Socket) => void);
    server.on(this.tls ? 'secureConnection' : 'connection', (s: Socket) => {
      this.sockets.add(s);
      s.on('close', () => this.sockets.delete(s));
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => resolve());
    });
    this.port = (server.address() as AddressInfo).port;
    this.broker = broker;
    this.server = server;
  }

  get url(): string {
    return this.tls ? `mqtts://localhost:${this.port}` : `mqtt://127.0.0.1:${this.port}`;
  }

  async stop(): Promise<void> {
    const { broker, server } = this;
    this.broker = null;
    this.server = null;
    for (const s of this.sockets) s.destroy();
    if (server) await new Promise<void>((r) => server.close(() => r()));
    if (broker) await new Promise<void>((r) => broker.close(() => r()));
  }

  records(): Array<Record<string, unknown>> {
    return this.messages.map((m) => m.json);
  }
}

/** A throwaway CA and a server certificate for "localhost", made with the openssl command. */
export function makeCertificates(dir: string): { caFile: string; ca: Buffer; key: Buffer; cert: Buffer } {
  const run = (args: string[]) => {
    const r = spawnSync('openssl', args, { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`openssl ${args.join(' ')}: ${r.stderr}`);
  };
  run(['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=wanwu-test-ca']);
  run(['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=localhost']);
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  run(['x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '2', '-extfile', 'ext.cnf']);
  return {
    caFile: join(dir, 'ca.pem'),
    ca: readFileSync(join(dir, 'ca.pem')),
    key: readFileSync(join(dir, 'server.key')),
    cert: readFileSync(join(dir, 'server.pem')),
  };
}

/** Runs fn, expects it to throw a WanwuError, and returns that error. */
export function errorOf(fn: () => unknown): WanwuError {
  try {
    fn();
  } catch (err) {
    if (!(err instanceof WanwuError)) throw new Error(`expected a WanwuError, got ${String(err)}`);
    return err;
  }
  throw new Error('expected a WanwuError, nothing was thrown');
}
