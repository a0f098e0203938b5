// The command API and the upstream command topic (issue 7, part A) against a real gateway on port 0:
// fetch for the HTTP API, mqtt.js as an application account on the local upstream (reading state
// records, publishing on wanwu/cmd/...) and as a device replying, real SQLite files in a temp dir.

import { request } from 'node:http';
import { join } from 'node:path';
import type { MqttClient } from 'mqtt';
import { afterEach, describe, expect, it } from 'vitest';
import { startGatewayProcess, writeConfigFile } from '../../simulators/lib/gateway-process.js';
import type { ConfigInput } from '../../src/config/index.js';
import { createGateway, type Gateway } from '../../src/gateway.js';
import { connectApp, connectDevice, DEMO, DEVICES_DIR, gatewayConfig, startGateway } from '../helpers/gateway.js';
import { recordingLogger, tempDir, waitUntil } from '../helpers/index.js';

const { productKey: PK, deviceName: DN } = DEMO.tracker;
const DEVICE = `/api/devices/${PK}/${DN}/commands`;
const SET = 'thing.service.property.set';
const TOKEN = 'test-api-token-0123456789';

interface Answer {
  status: number;
  body: any;
  headers: Headers;
}

/** The data of a command record (kind "command") on the local upstream. */
interface StateData {
  commandId: string | null;
  state: string;
  source: string;
  requestId?: string;
  code?: string;
  message?: string;
}

describe('command API and upstream command topic (real gateway)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });

  /** A gateway whose local upstream takes commands, on `dir` (a new temp dir unless given). */
  async function start(extra: Partial<ConfigInput> = {}, dir?: string): Promise<{ gw: Gateway; http: number; mqtt: number; dir: string }> {
    let path = dir;
    if (path === undefined) {
      const d = tempDir('wanwu-commands-api-');
      cleanups.push(() => d.cleanup());
      path = d.path;
    }
    const gw = await startGateway(path, [{ name: 'local', url: 'local', commands: {} }], extra);
    cleanups.push(() => gw.stop());
    const a = gw.addresses();
    return { gw, http: a.http.port, mqtt: a.mqtt.port, dir: path };
  }

  async function api(port: number, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<Answer> {
    const init: RequestInit = { method, headers: { ...headers } };
    if (body !== undefined) {
      init.body = typeof body === 'string' ? body : JSON.stringify(body);
      (init.headers as Record<string, string>)['content-type'] ??= 'application/json';
    }
    const res = await fetch(`http://127.0.0.1:${port}${path}`, init);
    const text = await res.text();
    return { status: res.status, body: text === '' ? null : JSON.parse(text), headers: res.headers };
  }

  /** An application account on the local upstream, collecting the command records of every device. */
  async function app(port: number): Promise<{ client: MqttClient; states: StateData[] }> {
    const client = await connectApp(port);
    cleanups.push(() => client.end(true));
    const states: StateData[] = [];
    client.on('message', (topic, payload) => {
      if (topic.endsWith('/command')) states.push((JSON.parse(payload.toString()) as { data: StateData }).data);
    });
    await client.subscribeAsync('wanwu/+/+/command', { qos: 1 });
    return { client, states };
  }

  it('POST queues (202), GET reads one and the list, DELETE cancels (200, then 409)', async () => {
    const { http } = await start();
    const posted = await api(http, 'POST', DEVICE, { method: SET, params: { workMode: 1 }, ttl: 600, requestId: 'ops-1' });
    expect(posted.status).toBe(202);
    const c = posted.body;
    expect(c).toMatchObject({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/),
      msgId: expect.stringMatching(/^\d+$/),
      productKey: PK,
      deviceName: DN,
      method: SET,
      state: 'queued',
      source: 'api',
      requestId: 'ops-1',
      params: { workMode: 1 },
      topic: `/sys/${PK}/${DN}/thing/service/property/set`,
      attempts: 0,
    });
    expect(c.expiresAt - c.createdAt).toBe(600_000);
    // The payload as the device gets it, as hex and parsed.
    expect(c.message).toEqual({ id: c.msgId, version: '1.0', method: SET, params: { workMode: 1 } });
    expect(Buffer.from(c.payload, 'hex').toString()).toBe(JSON.stringify(c.message));

    expect(await api(http, 'GET', `${DEVICE}/${c.id}`)).toMatchObject({ status: 200, body: c });
    // The operators' view finds it too.
    expect((await api(http, 'GET', `/api/commands/${c.id}`)).body.id).toBe(c.id);

    const cancelled = await api(http, 'DELETE', `${DEVICE}/${c.id}`);
    expect(cancelled.status).toBe(200);
    expect(cancelled.body).toMatchObject({ id: c.id, state: 'cancelled' });
    const again = await api(http, 'DELETE', `${DEVICE}/${c.id}`);
    expect(again).toMatchObject({ status: 409, body: { code: 'WANWU_ERR_COMMAND_STATE' } });
    expect((await api(http, 'GET', `${DEVICE}/${c.id}`)).body.state).toBe('cancelled');
  });

  it('lists newest first, pages with limit and before, filters by state, and lists every device for operators', async () => {
    const { http } = await start();
    const ids: string[] = [];
    for (const raw of ['01', '02', '03', '04', '05']) ids.push((await api(http, 'POST', DEVICE, { raw })).body.id);
    const other = (await api(http, 'POST', `/api/devices/${PK}/tr-0002/commands`, { raw: 'ff' })).body.id as string;
    await api(http, 'DELETE', `${DEVICE}/${ids[1]}`);

    const all = await api(http, 'GET', DEVICE);
    expect(all.status).toBe(200);
    expect(all.body.commands.map((x: { id: string }) => x.id)).toEqual([...ids].reverse());
    expect(all.body.next).toBeNull();

    const page1 = await api(http, 'GET', `${DEVICE}?limit=2`);
    expect(page1.body.commands.map((x: { id: string }) => x.id)).toEqual([ids[4], ids[3]]);
    const page2 = await api(http, 'GET', `${DEVICE}?limit=2&before=${page1.body.next}`);
    expect(page2.body.commands.map((x: { id: string }) => x.id)).toEqual([ids[2], ids[1]]);
    const page3 = await api(http, 'GET', `${DEVICE}?limit=2&before=${page2.body.next}`);
    expect(page3.body.commands.map((x: { id: string }) => x.id)).toEqual([ids[0]]);
    expect(page3.body.next).toBeNull();

    expect((await api(http, 'GET', `${DEVICE}?state=cancelled`)).body.commands.map((x: { id: string }) => x.id)).toEqual([ids[1]]);
    const queued = await api(http, 'GET', `/api/commands?state=queued&productKey=${PK}`);
    expect(queued.body.commands.map((x: { id: string }) => x.id)).toEqual([other, ids[4], ids[3], ids[2], ids[0]]);
    expect((await api(http, 'GET', '/api/commands?productKey=SensorRedCap')).body.commands).toEqual([]);
  });

  it('answers bad requests with their codes: 400, 404, 409, 429', async () => {
    const { http } = await start({ downlink: { maxPerDevice: 2 } });
    const expectError = async (a: Promise<Answer>, status: number, code: string) => {
      const r = await a;
      expect(r.status, JSON.stringify(r.body)).toBe(status);
      expect(r.body).toMatchObject({ code, message: expect.any(String) });
    };
    await expectError(api(http, 'POST', DEVICE, { method: SET, params: { batteryLevel: 5 } }), 400, 'WANWU_ERR_COMMAND');
    await expectError(api(http, 'POST', DEVICE, { method: SET, params: { colour: 'red' } }), 400, 'WANWU_ERR_UNKNOWN_IDENTIFIER');
    await expectError(api(http, 'POST', DEVICE, { method: 'thing.service.setReportInterval', params: { interval: 1 } }), 400, 'WANWU_ERR_INVALID');
    await expectError(api(http, 'POST', DEVICE, { method: 'thing.service.nope' }), 400, 'WANWU_ERR_COMMAND');
    await expectError(api(http, 'POST', DEVICE), 400, 'WANWU_ERR_COMMAND');
    await expectError(api(http, 'POST', DEVICE, '{"method":'), 400, 'WANWU_ERR_MALFORMED');
    // JSON only: a browser may send text/plain across sites without asking first.
    await expectError(api(http, 'POST', DEVICE, { raw: '00' }, { 'content-type': 'text/plain' }), 400, 'WANWU_ERR_MALFORMED');
    await expectError(api(http, 'GET', `${DEVICE}?limit=0`), 400, 'WANWU_ERR_MALFORMED');
    await expectError(api(http, 'GET', `${DEVICE}?limit=501`), 400, 'WANWU_ERR_MALFORMED');
    await expectError(api(http, 'GET', `${DEVICE}?state=done`), 400, 'WANWU_ERR_MALFORMED');
    await expectError(api(http, 'GET', `${DEVICE}?before=x`), 400, 'WANWU_ERR_MALFORMED');
    await expectError(api(http, 'POST', `/api/devices/${PK}/no-such-device/commands`, { raw: '00' }), 404, 'WANWU_ERR_UNKNOWN_DEVICE');
    await expectError(api(http, 'GET', `${DEVICE}/01a1fc89-0000-7000-8000-000000000000`), 404, 'WANWU_ERR_UNKNOWN_COMMAND');
    await expectError(api(http, 'GET', '/api/commands/01a1fc89-0000-7000-8000-000000000000'), 404, 'WANWU_ERR_UNKNOWN_COMMAND');

    const mine = (await api(http, 'POST', DEVICE, { raw: '01' })).body.id as string;
    // Another device's command under this device's path: unknown, for reading and cancelling alike.
    await expectError(api(http, 'GET', `/api/devices/${PK}/tr-0002/commands/${mine}`), 404, 'WANWU_ERR_UNKNOWN_COMMAND');
    await expectError(api(http, 'DELETE', `/api/devices/${PK}/tr-0002/commands/${mine}`), 404, 'WANWU_ERR_UNKNOWN_COMMAND');
    expect((await api(http, 'GET', `${DEVICE}/${mine}`)).body.state).toBe('queued');

    await api(http, 'POST', DEVICE, { raw: '02' });
    await expectError(api(http, 'POST', DEVICE, { raw: '03' }), 429, 'WANWU_ERR_QUEUE_FULL');
    await api(http, 'DELETE', `${DEVICE}/${mine}`);
    await expectError(api(http, 'DELETE', `${DEVICE}/${mine}`), 409, 'WANWU_ERR_COMMAND_STATE');
    expect((await api(http, 'POST', DEVICE, { raw: '03' })).status).toBe(202);

    // Submissions refused by the queue are counted by code (the 400s before the body was read as a
    // command, and the access checks, are not submissions).
    const metrics = await (await fetch(`http://127.0.0.1:${http}/metrics`)).text();
    expect(metrics).toMatch(/^wanwu_commands_submitted_total 3$/m);
    expect(metrics).toMatch(/^wanwu_commands_refused_total\{code="WANWU_ERR_QUEUE_FULL"\} 1$/m);
    expect(metrics).toMatch(/^wanwu_commands_refused_total\{code="WANWU_ERR_UNKNOWN_DEVICE"\} 1$/m);
  });

  it('without http.apiToken: reads are open, changes only from loopback addressed as loopback', async () => {
    const { http } = await start();
    expect((await api(http, 'POST', DEVICE, { raw: '00' })).status).toBe(202);
    expect((await api(http, 'GET', DEVICE)).status).toBe(200);
    // The same loopback socket, but a page on another site resolved to 127.0.0.1 (DNS rebinding).
    const rebound = await new Promise<{ status: number; body: any }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port: http, method: 'POST', path: DEVICE, headers: { host: `evil.example:${http}`, 'content-type': 'application/json' } }, (res) => {
        let text = '';
        res.on('data', (chunk: Buffer) => (text += chunk.toString()));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) }));
      });
      req.on('error', reject);
      req.end(JSON.stringify({ raw: '00' }));
    });
    expect(rebound).toMatchObject({ status: 403, body: { code: 'WANWU_ERR_FORBIDDEN' } });
    expect((await api(http, 'GET', DEVICE)).body.commands).toHaveLength(1);
  });

  it('with http.apiToken: every /api/ request needs the bearer token; /status does not', async () => {
    const { http } = await start({ http: { host: '127.0.0.1', port: 0, apiToken: TOKEN } });
    const bearer = { authorization: `Bearer ${TOKEN}` };
    const none = await api(http, 'GET', DEVICE);
    expect(none).toMatchObject({ status: 401, body: { code: 'WANWU_ERR_AUTH' } });
    expect(none.headers.get('www-authenticate')).toBe('Bearer realm="wanwu"');
    expect((await api(http, 'POST', DEVICE, { raw: '00' })).status).toBe(401);
    expect((await api(http, 'POST', DEVICE, { raw: '00' }, { authorization: `Bearer ${TOKEN.slice(0, -1)}x` })).status).toBe(401);
    const posted = await api(http, 'POST', DEVICE, { raw: '00' }, bearer);
    expect(posted.status).toBe(202);
    expect((await api(http, 'GET', `${DEVICE}/${posted.body.id}`, undefined, bearer)).status).toBe(200);
    expect((await api(http, 'DELETE', `${DEVICE}/${posted.body.id}`, undefined, bearer)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${http}/status`)).status).toBe(200);
  });

  it('warns once at start while http.apiToken is not set, and not when it is', async () => {
    const warnings = async (extra: Partial<ConfigInput>) => {
      const d = tempDir('wanwu-commands-api-');
      cleanups.push(() => d.cleanup());
      const logger = recordingLogger();
      const gw = createGateway(gatewayConfig(d.path, [{ name: 'local', url: 'local' }], extra), logger);
      cleanups.push(() => gw.stop());
      await gw.start();
      return logger.lines.filter((l) => l.level === 'warn' && /http\.apiToken/.test(l.msg ?? ''));
    };
    expect(await warnings({})).toHaveLength(1);
    expect(await warnings({ http: { host: '127.0.0.1', port: 0, apiToken: TOKEN } })).toEqual([]);
  });

  it('keeps queued commands across a gateway restart on the same data folder', async () => {
    const first = await start();
    const a = (await api(first.http, 'POST', DEVICE, { method: SET, params: { workMode: 2 }, requestId: 'before-restart' })).body;
    await first.gw.stop();
    const second = await start({}, first.dir);
    expect((await api(second.http, 'GET', `${DEVICE}/${a.id}`)).body).toMatchObject({ id: a.id, msgId: a.msgId, state: 'queued', requestId: 'before-restart', params: { workMode: 2 } });
    const b = (await api(second.http, 'POST', DEVICE, { raw: '00' })).body;
    expect(Number(b.msgId)).toBeGreaterThan(Number(a.msgId));
  });

  it('kill -9 while commands are submitted: every command answered 202 is queued after the restart', async () => {
    const d = tempDir('wanwu-commands-kill-');
    cleanups.push(() => d.cleanup());
    const config = {
      coap: { host: '127.0.0.1', port: 0 },
      mqtt: { host: '127.0.0.1', port: 0 },
      http: { host: '127.0.0.1', port: 0 },
      storage: { path: join(d.path, 'wanwu.db') },
      devicesDir: DEVICES_DIR,
      downlink: { maxPerDevice: 100_000 },
      upstreams: [{ name: 'local', url: 'local', commands: {} }],
    };
    const child = startGatewayProcess(['start', '--config', writeConfigFile(d.path, config)]);
    cleanups.push(() => {
      if (child.proc.exitCode === null && child.proc.signalCode === null) child.proc.kill('SIGKILL');
    });
    const ports = await child.ready;
    const accepted: string[] = [];
    let killed = false;
    // Two submitters at once, so the kill lands while a commit is under way more often than not.
    const submitter = async () => {
      for (let i = 0; !killed; i++) {
        try {
          const r = await api(ports.http, 'POST', DEVICE, { raw: (i % 256).toString(16).padStart(2, '0') });
          if (r.status === 202) accepted.push(r.body.id as string);
        } catch {
          return; // the connection died with the process: that one was never answered
        }
      }
    };
    const loops = [submitter(), submitter()];
    await waitUntil(() => accepted.length >= 40, 10_000, '40 accepted commands');
    child.proc.kill('SIGKILL');
    await child.exit;
    killed = true;
    await Promise.all(loops);

    const after = await start({ downlink: { maxPerDevice: 100_000 } }, d.path);
    const listed = new Set<string>();
    for (let before: string | null | undefined; before !== null; ) {
      const page = (await api(after.http, 'GET', `${DEVICE}?limit=500${before ? `&before=${before}` : ''}`)).body;
      for (const c of page.commands as Array<{ id: string; state: string }>) {
        expect(c.state).toBe('queued');
        listed.add(c.id);
      }
      before = page.next;
    }
    expect(accepted.filter((id) => !listed.has(id))).toEqual([]);
  });

  it('publishes every state change on wanwu/{pk}/{dn}/command, and a device reply completes the command', async () => {
    const { http, mqtt: mqttPort } = await start();
    const { states } = await app(mqttPort);
    const c = (await api(http, 'POST', DEVICE, { method: SET, params: { workMode: 1 }, requestId: 'trace-me' })).body;
    await waitUntil(() => states.some((s) => s.commandId === c.id), 5000, 'the queued record');
    expect(states.find((s) => s.commandId === c.id)).toMatchObject({ state: 'queued', source: 'api', requestId: 'trace-me' });

    // The device answers on {topic}_reply with the command's id, as an Alink device does.
    const device = await connectDevice(mqttPort, PK, DN);
    cleanups.push(() => device.end(true));
    await device.publishAsync(`${c.topic}_reply`, JSON.stringify({ id: c.msgId, code: 200, data: {} }), { qos: 1 });
    await waitUntil(() => states.some((s) => s.commandId === c.id && s.state === 'replied-ok'), 5000, 'the replied-ok record');
    expect((await api(http, 'GET', `${DEVICE}/${c.id}`)).body).toMatchObject({ state: 'replied-ok', reply: { code: 200 } });
    // Every record of the command carries its requestId.
    expect(states.filter((s) => s.commandId === c.id).every((s) => s.requestId === 'trace-me')).toBe(true);
  });

  it('takes commands an application publishes on wanwu/cmd/{pk}/{dn}, and answers a refused one with a "refused" record', async () => {
    const { http, mqtt: mqttPort } = await start();
    const { client, states } = await app(mqttPort);
    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, JSON.stringify({ method: SET, params: { workMode: 2 }, requestId: 'cloud-1' }), { qos: 1 });
    await waitUntil(() => states.some((s) => s.requestId === 'cloud-1'), 5000, 'the queued record of cloud-1');
    const queued = states.find((s) => s.requestId === 'cloud-1')!;
    expect(queued).toMatchObject({ state: 'queued', source: 'upstream:local', commandId: expect.any(String) });
    expect((await api(http, 'GET', `${DEVICE}/${queued.commandId}`)).body).toMatchObject({ state: 'queued', source: 'upstream:local', requestId: 'cloud-1', params: { workMode: 2 } });

    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, JSON.stringify({ method: SET, params: { batteryLevel: 1 }, requestId: 'cloud-2' }), { qos: 1 });
    await client.publishAsync(`wanwu/cmd/${PK}/no-such-device`, JSON.stringify({ raw: '00', requestId: 'cloud-3' }), { qos: 1 });
    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, 'not json', { qos: 1 });
    await waitUntil(() => states.filter((s) => s.state === 'refused').length === 3, 5000, 'three refused records');
    const refused = states.filter((s) => s.state === 'refused');
    expect(refused).toEqual([
      expect.objectContaining({ commandId: null, requestId: 'cloud-2', source: 'upstream:local', code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('batteryLevel') }),
      expect.objectContaining({ commandId: null, requestId: 'cloud-3', code: 'WANWU_ERR_UNKNOWN_DEVICE' }),
      expect.objectContaining({ commandId: null, code: 'WANWU_ERR_MALFORMED' }),
    ]);
    // Only the good one was queued.
    expect((await api(http, 'GET', '/api/commands')).body.commands.map((x: { requestId?: string }) => x.requestId)).toEqual(['cloud-1']);
  });

  it('a repeated requestId gets the command already queued (HTTP retry, upstream redelivery), never a second one', async () => {
    const { http, mqtt: mqttPort } = await start();
    const { client, states } = await app(mqttPort);
    const body = { method: SET, params: { workMode: 1 }, requestId: 'retry-1' };
    const first = await api(http, 'POST', DEVICE, body);
    const again = await api(http, 'POST', DEVICE, body);
    expect(first.status).toBe(202);
    expect(again).toMatchObject({ status: 202, body: { id: first.body.id, requestId: 'retry-1' } });
    const other = await api(http, 'POST', DEVICE, { ...body, params: { workMode: 2 } });
    expect(other).toMatchObject({ status: 400, body: { code: 'WANWU_ERR_COMMAND' } });

    // The same message twice on the command topic, as a broker redelivers it: one command.
    const message = JSON.stringify({ method: SET, params: { workMode: 2 }, requestId: 'cloud-dup' });
    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, message, { qos: 1 });
    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, message, { qos: 1 });
    await waitUntil(() => states.some((s) => s.requestId === 'cloud-dup'), 5000, 'the queued record of cloud-dup');
    const listed = (await api(http, 'GET', '/api/commands')).body.commands.map((x: { requestId?: string }) => x.requestId);
    expect(listed.sort()).toEqual(['cloud-dup', 'retry-1']);
    const status = (await api(http, 'GET', '/status')).body;
    expect(status.commands).toMatchObject({ submitted: 2, repeated: 2 });
    expect(states.filter((s) => s.requestId === 'cloud-dup')).toHaveLength(1);
  });

  it('lets application accounts publish under wanwu/cmd/ only: a forged record elsewhere closes the connection', async () => {
    const { mqtt: mqttPort } = await start();
    const watcher = await app(mqttPort);
    const forged: string[] = [];
    watcher.client.on('message', (topic) => {
      if (topic.endsWith('/property')) forged.push(topic);
    });
    await watcher.client.subscribeAsync('wanwu/+/+/property', { qos: 1 });
    const { client } = await app(mqttPort);
    const closed = new Promise<void>((resolve) => client.once('close', () => resolve()));
    client.publish(`wanwu/${PK}/${DN}/property`, JSON.stringify({ data: { workMode: 2 } }), { qos: 1 });
    await closed;
    await new Promise((r) => setTimeout(r, 200));
    expect(forged).toEqual([]);
  });

  it('keeps no retained command on the local broker (the forwarder would queue it again at every resubscription)', async () => {
    const d = tempDir('wanwu-commands-api-');
    cleanups.push(() => d.cleanup());
    const first = await start({}, d.path);
    const { client } = await app(first.mqtt);
    await client.publishAsync(`wanwu/cmd/${PK}/${DN}`, JSON.stringify({ raw: '0a', requestId: 'retained' }), { qos: 1, retain: true });
    await waitUntil(async () => (await api(first.http, 'GET', '/api/commands')).body.commands.length === 1, 5000, 'the command');
    // A new subscription of the same broker would get a retained message at once.
    const late = await connectApp(first.mqtt);
    cleanups.push(() => late.end(true));
    const seen: string[] = [];
    late.on('message', (topic) => seen.push(topic));
    await late.subscribeAsync('wanwu/cmd/#', { qos: 1 });
    await new Promise((r) => setTimeout(r, 300));
    expect(seen).toEqual([]);
    expect((await api(first.http, 'GET', '/api/commands')).body.commands).toHaveLength(1);
  });
});
