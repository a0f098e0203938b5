// `wanwu-sim connections`: opens and holds many idle MQTT sessions and reports what each costs the
// gateway. Sessions are raw TCP sockets with a hand-made CONNECT (mqtt-packet), not mqtt.js clients:
// a client object per session would make the simulator, not the gateway, the limit.
//
// One source address reaches one destination from about 28k ephemeral ports (net.ipv4.ip_local_port_range);
// sessions are spread over several loopback addresses (127.0.0.2..127.0.0.9: all of 127/8 is loopback
// on Linux) to pass that. Each process is also bounded by its open-files limit (`ulimit -n`), the
// gateway's as much as ours.

import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import mqttPacket from 'mqtt-packet';
import { signMqttLogin } from '../../src/registry/sign.js';

export interface ConnectionsOptions {
  mqtt: string;
  devices: ReadonlyArray<{ productKey: string; deviceName: string; deviceSecret: string }>;
  count: number;
  localAddresses: string[];
  /** New sessions per second while opening. */
  connectRate: number;
  /** How long to hold them all open once opened (ms). */
  holdMs: number;
  keepaliveS: number;
  /** Reads the gateway's memory (its /status): before opening, and after the hold. */
  gatewayMemory?: () => Promise<{ rssBytes: number; heapUsedBytes: number }>;
  onProgress?: (p: { opened: number; failed: number; target: number }) => void;
}

export interface ConnectionsResult {
  target: number;
  opened: number;
  /** Sessions still open at the end of the hold (the gateway closed none). */
  heldAtEnd: number;
  failed: Record<string, number>;
  openSeconds: number;
  /** This process's open-files limit (soft/hard), from /proc/self/limits; a session needs one. */
  openFileLimit: string;
  gateway: null | {
    rssBeforeBytes: number;
    rssAfterBytes: number;
    heapBeforeBytes: number;
    heapAfterBytes: number;
    rssPerSessionBytes: number;
    heapPerSessionBytes: number;
  };
}

/** 127.0.0.2 .. 127.0.0.(1+n). */
export function loopbackAddresses(n: number): string[] {
  return Array.from({ length: n }, (_, i) => `127.0.0.${i + 2}`);
}

export async function holdConnections(o: ConnectionsOptions): Promise<ConnectionsResult> {
  const url = new URL(o.mqtt);
  const host = url.hostname;
  const port = Number(url.port || 1883);
  if (o.devices.length < o.count) {
    throw new Error(`connections needs ${o.count} distinct devices (one session each) but has ${o.devices.length}; add some with \`wanwu-sim provision --count N\``);
  }
  const before = o.gatewayMemory ? await o.gatewayMemory() : null;
  const sockets = new Set<Socket>();
  const failed: Record<string, number> = {};
  let opened = 0;
  let stopOpening = false;
  const fail = (code: string) => {
    failed[code] = (failed[code] ?? 0) + 1;
    // Out of file descriptors or local ports: more attempts only fail the same way.
    if (code === 'EMFILE' || code === 'ENFILE' || code === 'EADDRNOTAVAIL') stopOpening = true;
  };
  const openOne = (i: number) =>
    new Promise<void>((resolve) => {
      const d = o.devices[i]!;
      const login = signMqttLogin(d);
      const localAddress = o.localAddresses.length > 0 && isLoopback(host) ? o.localAddresses[i % o.localAddresses.length] : undefined;
      const socket = connect({ host, port, ...(localAddress ? { localAddress } : {}) });
      let settled = false;
      const settle = (code: string | null) => {
        if (settled) return;
        settled = true;
        if (code === null) {
          opened++;
          sockets.add(socket);
        } else {
          fail(code);
          socket.destroy();
        }
        resolve();
      };
      socket.setNoDelay(true);
      socket.once('connect', () => {
        socket.write(
          mqttPacket.generate({
            cmd: 'connect',
            protocolId: 'MQTT',
            protocolVersion: 4,
            clean: true,
            clientId: login.clientId,
            username: login.username,
            password: Buffer.from(login.password),
            keepalive: o.keepaliveS,
          }),
        );
      });
      let head = Buffer.alloc(0);
      socket.on('data', (chunk: Buffer) => {
        if (settled) return; // PINGRESPs and anything else after the CONNACK: ignored
        head = Buffer.concat([head, chunk]);
        if (head.length < 4) return;
        // CONNACK: 0x20 0x02 <session present> <return code> [MQTT-3.2]
        settle(head[0] === 0x20 && head[3] === 0 ? null : `connack-${head[3] ?? '?'}`);
      });
      socket.on('error', (err: NodeJS.ErrnoException) => settle(err.code ?? 'error'));
      socket.on('close', () => {
        sockets.delete(socket);
        settle('closed');
      });
    });

  const start = performance.now();
  const perTick = Math.max(1, Math.round(o.connectRate / 20));
  for (let i = 0; i < o.count && !stopOpening; i += perTick) {
    const tickStart = performance.now();
    await Promise.all(Array.from({ length: Math.min(perTick, o.count - i) }, (_, k) => openOne(i + k)));
    o.onProgress?.({ opened, failed: Object.values(failed).reduce((a, b) => a + b, 0), target: o.count });
    const wait = 50 - (performance.now() - tickStart);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  const openSeconds = (performance.now() - start) / 1000;

  // Hold: PINGREQ well inside the keepalive, so the gateway keeps every session [MQTT-3.1.2-24].
  const ping = Buffer.from([0xc0, 0x00]);
  const pinger = setInterval(() => {
    for (const s of sockets) s.write(ping);
  }, Math.max(1000, o.keepaliveS * 500));
  await new Promise((r) => setTimeout(r, o.holdMs));
  clearInterval(pinger);
  const heldAtEnd = sockets.size;
  const after = o.gatewayMemory ? await o.gatewayMemory() : null;
  for (const s of sockets) s.destroy();

  const perSession = (a: number, b: number) => (heldAtEnd > 0 ? Math.round((a - b) / heldAtEnd) : 0);
  return {
    target: o.count,
    opened,
    heldAtEnd,
    failed,
    openSeconds: Math.round(openSeconds * 10) / 10,
    openFileLimit: openFileLimit(),
    gateway:
      before && after
        ? {
            rssBeforeBytes: before.rssBytes,
            rssAfterBytes: after.rssBytes,
            heapBeforeBytes: before.heapUsedBytes,
            heapAfterBytes: after.heapUsedBytes,
            rssPerSessionBytes: perSession(after.rssBytes, before.rssBytes),
            heapPerSessionBytes: perSession(after.heapUsedBytes, before.heapUsedBytes),
          }
        : null,
  };
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host.startsWith('127.');
}

/** Memory from a Wanwu /status endpoint. */
export function statusMemory(statusUrl: string): () => Promise<{ rssBytes: number; heapUsedBytes: number }> {
  return async () => {
    const res = await fetch(statusUrl);
    if (!res.ok) throw new Error(`${statusUrl}: HTTP ${res.status}`);
    const body = (await res.json()) as { process?: { rssBytes?: number; heapUsedBytes?: number } };
    if (typeof body.process?.rssBytes !== 'number') throw new Error(`${statusUrl}: no process.rssBytes (not a Wanwu /status?)`);
    return { rssBytes: body.process.rssBytes, heapUsedBytes: body.process.heapUsedBytes ?? 0 };
  };
}

/** "soft/hard" open files of this process (Linux), or "unknown". */
export function openFileLimit(): string {
  try {
    const line = readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const [soft, hard] = line?.replace('Max open files', '').trim().split(/\s+/) ?? [];
    return soft && hard ? `${soft}/${hard}` : 'unknown';
  } catch {
    return 'unknown';
  }
}
