// `wanwu-sim bench` side by side: the raw load generators (simulators/lib/load.ts) against the bare
// servers and small scripted peers, and a short smoke run of the whole comparison. The servers run
// from dist/ (built by `npm test`). Speed is not checked here (ARCHITECTURE.md convention 9).
//
// What "every request accounted for" means, precisely (LoadResult):
//   sent === acked + sum(errors)        always, once the run has resolved;
//   with a drain long enough, a lossless server gives errors = {} and acked === sent;
//   with no drain (drainMs 0), the requests still in flight when the measured period ended are
//   given up: 'puback-missing'/'timeout' <= inFlightAtEnd <= connections (sockets) x window.

import { createSocket, type RemoteInfo, type Socket as UdpSocket } from 'node:dgram';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { coapLoad, mqttLoad, type LoadResult } from '../../simulators/lib/load.js';
import { formatSideBySide, runSideBySide, startBareServer, type ServerUnderTest } from '../../simulators/bench/side-by-side.js';
import { which } from '../../simulators/lib/mosquitto.js';
import { deviceSecret, DEVICES_DIR, startGateway } from '../helpers/gateway.js';
import { tempDir } from '../helpers/index.js';

const METER_FRAME = Buffer.from('010000303904d20e10000929ffa6', 'hex');
const sumErrors = (r: LoadResult) => Object.values(r.errors).reduce((a, b) => a + b, 0);
const mqttLogin = (i: number) => ({ clientId: `load-test-${i}`, topic: `/sys/P/d${i}/thing/event/property/post` });
const coapPath = (i: number) => `/topic/sys/WaterMeterNB/wm-000${(i % 3) + 1}/thing/model/up_raw`;

describe('load generators and the side-by-side bench', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  const bare = async (name: 'bare-aedes' | 'bare-coap'): Promise<ServerUnderTest> => {
    const s = await startBareServer(name);
    cleanups.push(() => s.stop());
    return s;
  };

  it('mqttLoad against bare aedes: every QoS 1 publish is PUBACKed, and a run without drain accounts for the in-flight', async () => {
    const s = await bare('bare-aedes');
    const base = { host: '127.0.0.1', port: s.port, connections: 3, window: 16, login: mqttLogin, payload: () => Buffer.from('{"id":"1","params":{}}') };

    const drained = await mqttLoad({ ...base, durationMs: 500, warmupMs: 200 });
    expect(drained.sent).toBeGreaterThan(100);
    expect(drained.errors).toEqual({});
    expect(drained.acked).toBe(drained.sent);
    // Closed loop: at the end of the period every window was full.
    expect(drained.inFlightAtEnd).toBe(3 * 16);
    expect(drained.ratePerS).toBeGreaterThan(0);
    expect(drained.durationS).toBeGreaterThan(0.49);
    expect(drained.latency.count).toBeGreaterThan(0);
    expect(drained.latency.count).toBeLessThanOrEqual(drained.acked);

    const cut = await mqttLoad({ ...base, durationMs: 300, drainMs: 0 });
    const missing = cut.errors['puback-missing'] ?? 0;
    expect(Object.keys(cut.errors).filter((k) => k !== 'puback-missing')).toEqual([]);
    expect(cut.acked + missing).toBe(cut.sent);
    expect(missing).toBeLessThanOrEqual(cut.inFlightAtEnd);
    expect(cut.inFlightAtEnd).toBeLessThanOrEqual(3 * 16);
  });

  it('mqttLoad open loop holds the offered rate', async () => {
    const s = await bare('bare-aedes');
    const r = await mqttLoad({ host: '127.0.0.1', port: s.port, connections: 2, window: 50, durationMs: 1000, ratePerS: 2000, login: mqttLogin, payload: () => Buffer.from('x') });
    expect(r.errors).toEqual({});
    expect(r.acked).toBe(r.sent);
    expect(r.overrun).toBe(0);
    expect(r.ratePerS).toBeGreaterThan(1500);
    expect(r.ratePerS).toBeLessThan(2500);
  });

  it('mqttLoad fails clearly on a CONNACK other than 0, and closes its sockets', async () => {
    // A broker that refuses every login: CONNACK return code 5, not authorized (MQTT 3.1.1 §3.2.2.3).
    const sockets = new Set<Socket>();
    const server: Server = createServer((sock) => {
      sockets.add(sock);
      sock.on('close', () => sockets.delete(sock));
      sock.once('data', () => sock.write(Buffer.from([0x20, 0x02, 0x00, 0x05])));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const port = (server.address() as AddressInfo).port;
    await expect(mqttLoad({ host: '127.0.0.1', port, connections: 2, window: 1, durationMs: 100, login: mqttLogin, payload: () => Buffer.from('x') })).rejects.toThrow(
      /CONNACK return code 5 \(not authorized\)/,
    );
    await new Promise((r) => setTimeout(r, 100));
    expect(sockets.size).toBe(0);
  });

  it('coapLoad against bare node-coap: every CON POST gets its 2.04, and a run without drain accounts for the in-flight', async () => {
    const s = await bare('bare-coap');
    const base = { host: '127.0.0.1', port: s.port, sockets: 4, window: 4, path: coapPath, payload: () => METER_FRAME };

    const drained = await coapLoad({ ...base, durationMs: 500, warmupMs: 200 });
    expect(drained.sent).toBeGreaterThan(100);
    expect(drained.errors).toEqual({});
    expect(drained.acked).toBe(drained.sent);
    expect(drained.inFlightAtEnd).toBe(4 * 4);
    expect(drained.latency.count).toBeGreaterThan(0);

    const cut = await coapLoad({ ...base, durationMs: 300, drainMs: 0 });
    const timedOut = cut.errors.timeout ?? 0;
    expect(Object.keys(cut.errors).filter((k) => k !== 'timeout')).toEqual([]);
    expect(cut.acked + timedOut).toBe(cut.sent);
    expect(timedOut).toBeLessThanOrEqual(cut.inFlightAtEnd);
    expect(cut.inFlightAtEnd).toBeLessThanOrEqual(4 * 4);
  });

  it('coapLoad never reuses a message id on a source port, ACKs separate responses, counts codes and timeouts', async () => {
    // A scripted CoAP server (RFC 7252): of every five requests, one is piggybacked 2.04, one gets an
    // empty ACK then a separate CON 2.04 (§5.2.2), one a piggybacked 5.03, one an RST, one nothing.
    const server: UdpSocket = createSocket('udp4');
    await new Promise<void>((r) => server.bind(0, '127.0.0.1', () => r()));
    cleanups.push(() => new Promise<void>((r) => server.close(() => r())));
    const seen = new Map<string, number>(); // "port/mid" -> times received
    const acksOfSeparate = new Set<number>();
    let n = 0;
    let serverMid = 1000;
    server.on('message', (msg: Buffer, peer: RemoteInfo) => {
      const type = (msg[0]! >> 4) & 3;
      const mid = msg.readUInt16BE(2);
      if (type === 2) {
        acksOfSeparate.add(mid); // the client's ACK of our separate response
        return;
      }
      const key = `${peer.port}/${mid}`;
      seen.set(key, (seen.get(key) ?? 0) + 1);
      const tkl = msg[0]! & 0x0f;
      const token = msg.subarray(4, 4 + tkl);
      const reply = (b: Buffer) => server.send(b, peer.port, peer.address);
      // Ver 1 | T | TKL, code, message id, token.
      const header = (t: number, code: number, id: number, tok: Buffer) => Buffer.concat([Buffer.from([0x40 | (t << 4) | tok.length, code, id >> 8, id & 0xff]), tok]);
      switch (n++ % 5) {
        case 0:
          reply(header(2, 0x44, mid, token)); // ACK 2.04
          break;
        case 1:
          reply(header(2, 0, mid, Buffer.alloc(0))); // empty ACK
          setTimeout(() => reply(header(0, 0x44, serverMid++, token)), 5); // CON 2.04, separate
          break;
        case 2:
          reply(header(2, 0xa3, mid, token)); // ACK 5.03
          break;
        case 3:
          reply(header(3, 0, mid, Buffer.alloc(0))); // RST
          break;
        default:
          break; // no answer: the client times out
      }
    });
    const port = (server.address() as AddressInfo).port;
    // 64 ids per source port with 4 in flight: each lane goes through many sockets in the run.
    const r = await coapLoad({ host: '127.0.0.1', port, sockets: 2, window: 4, durationMs: 1500, timeoutMs: 100, idsPerSocket: 64, path: coapPath, payload: () => METER_FRAME });
    expect(r.sent).toBeGreaterThan(200);
    expect([...seen.values()].every((times) => times === 1)).toBe(true);
    expect(seen.size).toBe(r.sent);
    expect(new Set([...seen.keys()].map((k) => k.split('/')[0])).size).toBeGreaterThan(4);
    expect(r.acked + sumErrors(r)).toBe(r.sent);
    expect(Object.keys(r.errors).sort()).toEqual(['5.03', 'rst', 'timeout']);
    // Successes are cases 0 and 1, equally often (the last few requests may be cut short).
    expect(Math.abs(r.acked - 2 * r.errors['5.03']!)).toBeLessThanOrEqual(8);
    expect(acksOfSeparate.size).toBeGreaterThan(0);
    expect(Math.abs(acksOfSeparate.size - r.errors['5.03']!)).toBeLessThanOrEqual(4);
  });

  it('coapLoad against a gateway with the default configuration: a token per socket and rising sequence numbers; without them every request gets 4.01', async () => {
    const work = tempDir('wanwu-load-auth-');
    cleanups.push(() => work.cleanup());
    const gw = await startGateway(work.path, [{ name: 'local', url: 'local' }]);
    cleanups.push(() => gw.stop());
    const port = gw.addresses().coap.port;
    const meters = await Promise.all([1, 2, 3].map(async (n) => ({ productKey: 'WaterMeterNB', deviceName: `wm-000${n}`, deviceSecret: await deviceSecret('WaterMeterNB', `wm-000${n}`) })));
    // Five sockets over three meters: two meters have two sockets, each with its own token (client id).
    const auth = (i: number) => ({ ...meters[i % 3]!, clientId: `${meters[i % 3]!.deviceName}.s${i}` });
    // 64 ids per port: the sockets rotate to new source ports during the run and keep their tokens.
    const r = await coapLoad({ host: '127.0.0.1', port, sockets: 5, window: 4, durationMs: 800, idsPerSocket: 64, path: coapPath, payload: () => METER_FRAME, auth });
    expect(r.sent).toBeGreaterThan(5 * 64);
    expect(r.errors).toEqual({});
    expect(r.acked).toBe(r.sent);
    const a = gw.status().listeners.coap!.auth!;
    // The /auth exchanges are not requests of the run: five tokens, and every request verified once.
    expect(a).toMatchObject({ mode: 'required', issued: 5, verified: r.sent });
    expect(Object.values(a.refused).reduce((x, y) => x + y, 0)).toBe(0);
    expect(gw.status().ingest.records.coap).toBe(r.sent);

    const plain = await coapLoad({ host: '127.0.0.1', port, sockets: 2, window: 2, durationMs: 200, path: coapPath, payload: () => METER_FRAME });
    expect(plain.sent).toBeGreaterThan(0);
    expect(plain.errors).toEqual({ '4.01': plain.sent });
    expect(gw.status().ingest.records.coap).toBe(r.sent);
    // A refused /auth fails the run before it starts.
    await expect(coapLoad({ host: '127.0.0.1', port, sockets: 1, window: 1, durationMs: 100, path: coapPath, payload: () => METER_FRAME, auth: () => ({ ...meters[0]!, deviceSecret: 'wrong' }) })).rejects.toThrow(
      /POST \/auth of WaterMeterNB\/wm-0001 answered 4\.01/,
    );
  });

  it('runs the whole comparison (1 s per server) and reports rates, errors and the ratios', { timeout: 60_000 }, async () => {
    const work = tempDir('wanwu-sbs-test-');
    cleanups.push(() => work.cleanup());
    const s = await runSideBySide({ quick: true, devicesDir: DEVICES_DIR, workDir: work.path, durationMs: 1000, warmupMs: 200 });
    expect(s.rows.map((r) => r.name)).toEqual(['bare aedes', 'Wanwu MQTT', 'mosquitto', 'bare node-coap', 'Wanwu CoAP']);
    for (const r of s.rows) {
      if (r.skipped) {
        expect(r.name).toBe('mosquitto');
        expect(which('mosquitto')).toBeNull();
        continue;
      }
      expect(r.ratePerS, r.name).toBeGreaterThan(0);
      expect(r.acked, r.name).toBeGreaterThan(0);
      expect(r.p99Ms, r.name).toBeGreaterThanOrEqual(r.p50Ms);
      expect(r.peakRssMiB, r.name).toBeGreaterThan(1);
      if (!r.name.startsWith('Wanwu')) {
        expect(r.errors, r.name).toEqual({});
        expect(r.acked, r.name).toBe(r.sent);
      }
    }
    for (const name of ['Wanwu MQTT', 'Wanwu CoAP']) {
      const w = s.rows.find((r) => r.name === name)!;
      // Acknowledged means committed: the gateway holds a record for every ack and refused nothing.
      expect(w.gateway!.records, name).toBeGreaterThanOrEqual(w.acked);
      expect(w.gateway!.rejected, name).toBe(0);
      expect(w.gateway!.deadLetters, name).toBe(0);
    }
    // Wanwu CoAP authenticates (the default configuration): not one request was refused for it.
    expect(Object.keys(s.rows[4]!.errors).filter((code) => code.startsWith('4.'))).toEqual([]);
    expect(s.ratios.mqtt).toBeCloseTo(s.rows[1]!.ratePerS / s.rows[0]!.ratePerS, 6);
    expect(s.ratios.coap).toBeCloseTo(s.rows[4]!.ratePerS / s.rows[3]!.ratePerS, 6);
    expect(s.targets.map((t) => t.target)).toEqual(['>= 0.8x', '>= 1.0x']);
    const table = formatSideBySide(s);
    expect(table).toMatch(/^\| server +\| protocol \| msgs\/s/);
    expect(table).toContain(`| MQTT QoS 1 uplink, Wanwu / bare aedes   | ${s.ratios.mqtt.toFixed(2)}x`);
    expect(table).toContain(`| CoAP CON uplink, Wanwu / bare node-coap | ${s.ratios.coap.toFixed(2)}x`);
  });
});
