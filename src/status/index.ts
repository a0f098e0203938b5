// Operator endpoints: GET /status (JSON), GET /metrics (Prometheus text, prom-client), GET /healthz,
// and the HTTP API under /api/ (api.ts: handlers given by the gateway, e.g. commands and shadow).
// Status only reads: every stage keeps its own plain counters and this module samples them on request,
// so nothing here sits in the data path (ARCHITECTURE.md, pipeline step 5).

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import client from 'prom-client';
import type { BufferStats } from '../buffer/index.js';
import type { DevicesByState } from '../downlink/liveness.js';
import type { CommandState } from '../downlink/types.js';
import type { ForwarderStats } from '../forward/index.js';
import type { PipelineStats } from '../pipeline.js';
import type { CoapListenerStats } from '../transport/coap/index.js';
import type { MqttListenerStats } from '../transport/mqtt/index.js';
import type { Logger, Transport } from '../types.js';
import { API_MAX_BODY_BYTES, apiAccessRefusal, errorResponse, type ApiHandler, type ApiRequest, type ApiResponse } from './api.js';
import { asWanwuError, WanwuError } from '../errors.js';

export interface StatusSources {
  version: string;
  startedAt: number;
  ready(): boolean;
  coap(): CoapListenerStats | null;
  mqtt(): MqttListenerStats | null;
  pipeline(): PipelineStats;
  buffer(): BufferStats;
  upstreams(): ForwarderStats[];
  registry(): { products: number; devices: number };
  /** Device liveness by state and rat (src/downlink/liveness.ts); absent or null: not shown. */
  devices?(): DevicesByState | null;
  /** Commands in the queue by state (src/downlink); absent or null: not shown. */
  commands?(): { byState: Record<CommandState, number>; submitted: number; repeated: number; refused: Record<string, number>; refusalRecordsSuppressed: number; unmatchedReplies: number } | null;
}

export interface StatusServerOptions {
  host: string;
  port: number;
  sources: StatusSources;
  logger: Logger;
  /** Handlers of /api/... requests, asked in order; the first non-null answer wins. */
  api?: readonly ApiHandler[];
  /** config http.apiToken: who may use /api/ (apiAccessRefusal in api.ts). Default null. */
  apiToken?: string | null;
}

export interface StatusServer {
  start(): Promise<void>;
  stop(): Promise<void>;
  address(): { address: string; port: number };
}

export function buildStatus(s: StatusSources, http: { address: string; port: number }) {
  const pipeline = s.pipeline();
  const buffer = s.buffer();
  const total = (r: Record<Transport, number>) => ({ ...r, total: r.coap + r.mqtt });
  return {
    version: s.version,
    uptimeS: Math.round((Date.now() - s.startedAt) / 1000),
    ready: s.ready(),
    listeners: { coap: s.coap(), mqtt: s.mqtt(), http },
    registry: s.registry(),
    ingest: {
      accepted: total(pipeline.accepted),
      records: total(pipeline.records),
      rejected: total(pipeline.rejected),
      rejectedByCode: pipeline.rejectedByCode,
      inFlight: pipeline.inFlight,
    },
    buffer: {
      path: buffer.path,
      state: buffer.state,
      whenFull: buffer.whenFull,
      pending: buffer.pending,
      records: buffer.records,
      maxRecords: buffer.maxRecords,
      bytes: buffer.bytes,
      maxBytes: buffer.maxBytes,
      fileBytes: buffer.fileBytes,
      oldestPendingAgeS: buffer.oldestPendingAgeS,
      refused: buffer.refused,
      dropped: buffer.dropped,
      expired: buffer.expired,
      deadLetters: buffer.deadLetters,
      commits: buffer.commits,
      commitErrors: buffer.commitErrors,
      lastError: buffer.lastError,
      lastErrorAt: buffer.lastErrorAt,
    },
    upstreams: s.upstreams(),
    ...optional('devices', s.devices?.()),
    ...optional('commands', s.commands?.()),
    // For load tests (wanwu-sim connections reads memory per session from here) and operators.
    process: processFigures(),
  };
}

/** `{[name]: value}`, or nothing when the stage is absent (a status of a gateway without it keeps its old shape). */
function optional<K extends string, V>(name: K, value: V | null | undefined): Partial<Record<K, V>> {
  return value === null || value === undefined ? {} : ({ [name]: value } as Record<K, V>);
}

function processFigures() {
  const m = process.memoryUsage();
  return { pid: process.pid, rssBytes: m.rss, heapUsedBytes: m.heapUsed, externalBytes: m.external };
}

/** A prom-client registry whose metrics are sampled from the stages at scrape time. */
export function createMetricsRegistry(s: StatusSources): client.Registry {
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'wanwu_process_' });

  // Counters are kept by the stages; at scrape time we copy their current totals in.
  const counter = (name: string, help: string, labelNames: string[], read: () => Array<[Record<string, string>, number]>) =>
    new client.Counter({
      name, help, labelNames, registers: [registry],
      collect() {
        this.reset();
        for (const [labels, v] of read()) if (v > 0) this.inc(labels, v);
      },
    });
  const gauge = (name: string, help: string, labelNames: string[], read: () => Array<[Record<string, string>, number]>) =>
    new client.Gauge({
      name, help, labelNames, registers: [registry],
      collect() {
        this.reset();
        for (const [labels, v] of read()) this.set(labels, v);
      },
    });
  const transports: Transport[] = ['coap', 'mqtt'];

  counter('wanwu_ingest_accepted_total', 'Uplink messages committed to the buffer', ['transport'], () =>
    transports.map((t) => [{ transport: t }, s.pipeline().accepted[t]]));
  counter('wanwu_ingest_records_total', 'Records committed to the buffer', ['transport'], () =>
    transports.map((t) => [{ transport: t }, s.pipeline().records[t]]));
  counter('wanwu_ingest_rejected_total', 'Uplink messages refused, by error code', ['transport', 'code'], () =>
    Object.entries(s.pipeline().rejectedByCode).flatMap(([code, by]) => transports.map((t): [Record<string, string>, number] => [{ transport: t, code }, by![t]])));
  gauge('wanwu_buffer_pending_records', 'Records not yet forwarded to every upstream', [], () => [[{}, s.buffer().pending]]);
  gauge('wanwu_buffer_oldest_pending_age_seconds', 'Age of the oldest record some upstream still lacks', [], () => [[{}, s.buffer().oldestPendingAgeS]]);
  gauge('wanwu_buffer_dead_letters', 'Payloads kept in the dead-letter table', [], () => [[{}, s.buffer().deadLetters]]);
  counter('wanwu_buffer_commits_total', 'Group commits', [], () => [[{}, s.buffer().commits]]);
  gauge('wanwu_buffer_records', 'Records stored in the buffer', [], () => [[{}, s.buffer().records]]);
  gauge('wanwu_buffer_bytes', 'Bytes of database pages in use (bounded by storage.maxBytes)', [], () => [[{}, s.buffer().bytes]]);
  gauge('wanwu_buffer_file_bytes', 'Size on disk of the database and its WAL', [], () => [[{}, s.buffer().fileBytes]]);
  gauge('wanwu_buffer_state', '1 for the buffer\'s current state (ok, full, error)', ['state'], () =>
    (['ok', 'full', 'error'] as const).map((st) => [{ state: st }, s.buffer().state === st ? 1 : 0]));
  counter('wanwu_buffer_refused_total', 'Records refused because the buffer was full (reject-new)', [], () => [[{}, s.buffer().refused]]);
  counter('wanwu_buffer_dropped_total', 'Records deleted undelivered because the buffer was full (drop-oldest)', [], () => [[{}, s.buffer().dropped]]);
  counter('wanwu_buffer_expired_total', 'Records deleted undelivered because they outlived storage.ttl', [], () => [[{}, s.buffer().expired]]);
  counter('wanwu_buffer_commit_errors_total', 'Failed group commits (devices not acknowledged)', [], () => [[{}, s.buffer().commitErrors]]);
  gauge('wanwu_upstream_connected', '1 when the upstream connection is up', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.connected ? 1 : 0]));
  counter('wanwu_upstream_forwarded_total', 'Records acknowledged by the upstream', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.forwarded]));
  gauge('wanwu_upstream_pending_records', 'Records the upstream has not acknowledged yet', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.pending]));
  gauge('wanwu_upstream_in_flight', 'Records published and awaiting acknowledgement', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.inFlight]));
  counter('wanwu_upstream_reconnects_total', 'Upstream reconnect attempts', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.reconnects]));
  gauge('wanwu_upstream_oldest_pending_age_seconds', 'Age of the oldest record the upstream lacks', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.oldestPendingAgeS]));
  counter('wanwu_upstream_dropped_total', 'Records the upstream never got: buffer full (drop-oldest)', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.dropped]));
  counter('wanwu_upstream_expired_total', 'Records the upstream never got: older than storage.ttl', ['upstream'], () =>
    s.upstreams().map((u) => [{ upstream: u.name }, u.expired]));
  gauge('wanwu_mqtt_clients', 'Connected MQTT clients by role', ['role'], () => {
    const m = s.mqtt();
    return m ? [[{ role: 'device' }, m.devices], [{ role: 'app' }, m.apps], [{ role: 'all' }, m.clients]] : [];
  });
  counter('wanwu_mqtt_auth_failures_total', 'Refused MQTT logins by reason', ['code'], () =>
    Object.entries(s.mqtt()?.authFailures ?? {}).map(([code, n]) => [{ code }, n ?? 0]));
  counter('wanwu_mqtt_forbidden_total', 'Publishes and subscriptions outside the client namespace', [], () => [[{}, s.mqtt()?.forbidden ?? 0]]);
  counter('wanwu_mqtt_refused_total', 'Connections, logins, topics and publishes refused by the MQTT limits, by reason', ['reason'], () =>
    Object.entries(s.mqtt()?.refused ?? {}).map(([reason, n]) => [{ reason }, n ?? 0]));
  counter('wanwu_mqtt_throttled_total', 'Device publishes held back for their rate token, then accepted', [], () => [[{}, s.mqtt()?.throttled ?? 0]]);
  gauge('wanwu_mqtt_bans', 'Identities banned now by the MQTT connect-flood rule', [], () => [[{}, s.mqtt()?.bans ?? 0]]);
  gauge('wanwu_mqtt_connections', 'Open MQTT TCP connections (logged in or not)', [], () => [[{}, s.mqtt()?.connections ?? 0]]);
  counter('wanwu_mqtt_audit_suppressed_total', 'Refused-login audit lines left out by the audit log rate limit', [], () => [[{}, s.mqtt()?.auditSuppressed ?? 0]]);
  counter('wanwu_coap_requests_total', 'CoAP requests received', [], () => [[{}, s.coap()?.requests ?? 0]]);
  counter('wanwu_coap_duplicates_total', 'CoAP duplicate requests answered from the de-duplication cache', [], () => [[{}, s.coap()?.duplicates ?? 0]]);
  counter('wanwu_coap_responses_total', 'CoAP responses by code', ['code'], () =>
    Object.entries(s.coap()?.responses ?? {}).map(([code, n]) => [{ code }, n]));
  counter('wanwu_coap_refused_total', 'CoAP requests refused by the listener at a limit, by reason (rate, size, Block1, capacity)', ['reason'], () =>
    Object.entries(s.coap()?.refused ?? {}).map(([reason, n]) => [{ reason }, n]));
  gauge('wanwu_coap_reassemblies', 'CoAP Block1 transfers in progress', [], () => [[{}, s.coap()?.reassemblies ?? 0]]);
  counter('wanwu_coap_auth_issued_total', 'CoAP tokens issued by POST /auth', [], () => [[{}, s.coap()?.auth?.issued ?? 0]]);
  counter('wanwu_coap_auth_refused_total', 'CoAP /auth requests and uplinks refused by token authentication, by reason', ['reason'], () =>
    Object.entries(s.coap()?.auth?.refused ?? {}).map(([reason, n]) => [{ reason }, n]));
  counter('wanwu_coap_audit_suppressed_total', 'Refused CoAP /auth requests and tokens left out of the audit log by its rate limit', [], () => [[{}, s.coap()?.auth?.auditSuppressed ?? 0]]);
  gauge('wanwu_coap_auth_tokens', 'CoAP tokens held (bounded by coap.auth.maxTokens)', [], () => [[{}, s.coap()?.auth?.tokens ?? 0]]);
  gauge('wanwu_devices', 'Devices known to the registry', [], () => [[{}, s.registry().devices]]);
  gauge('wanwu_devices_by_state', 'Registered devices by liveness state (online, sleeping, offline) and rat', ['state', 'rat'], () =>
    Object.entries(s.devices?.()?.byRat ?? {}).flatMap(([rat, by]) => Object.entries(by).map(([state, n]): [Record<string, string>, number] => [{ state, rat }, n])));
  gauge('wanwu_commands', 'Commands in the queue by state (final ones within downlink.retainS)', ['state'], () =>
    Object.entries(s.commands?.()?.byState ?? {}).map(([state, n]): [Record<string, string>, number] => [{ state }, n]));
  counter('wanwu_commands_submitted_total', 'Commands queued (API and upstream command topics)', [], () => [[{}, s.commands?.()?.submitted ?? 0]]);
  counter('wanwu_commands_repeated_total', 'Submissions that repeated a requestId and got the command already queued', [], () => [[{}, s.commands?.()?.repeated ?? 0]]);
  counter('wanwu_commands_refused_total', 'Commands refused at submission, by error code', ['code'], () =>
    Object.entries(s.commands?.()?.refused ?? {}).map(([code, n]): [Record<string, string>, number] => [{ code }, n]));
  counter('wanwu_commands_refusal_records_suppressed_total', 'Upstream commands refused too fast for each to get a "refused" record', [], () => [[{}, s.commands?.()?.refusalRecordsSuppressed ?? 0]]);
  counter('wanwu_command_replies_unmatched_total', 'Device replies that matched no open command', [], () => [[{}, s.commands?.()?.unmatchedReplies ?? 0]]);
  return registry;
}

export function createStatusServer(opts: StatusServerOptions): StatusServer {
  let server: Server | null = null;
  let bound = { address: '', port: 0 };
  const metrics = createMetricsRegistry(opts.sources);

  const handle = async (method: string, path: string): Promise<{ status: number; type: string; body: string }> => {
    if (method !== 'GET' && method !== 'HEAD') return { status: 405, type: 'text/plain', body: 'method not allowed\n' };
    switch (path) {
      case '/status':
        return { status: 200, type: 'application/json', body: `${JSON.stringify(buildStatus(opts.sources, bound), null, 2)}\n` };
      case '/metrics':
        return { status: 200, type: metrics.contentType, body: await metrics.metrics() };
      case '/healthz':
        return opts.sources.ready()
          ? { status: 200, type: 'text/plain', body: 'ok\n' }
          : { status: 503, type: 'text/plain', body: 'starting\n' };
      default:
        return { status: 404, type: 'text/plain', body: 'not found: try /status, /metrics, /healthz or /api/\n' };
    }
  };

  const answer = (res: ServerResponse, r: ApiResponse, head: boolean) => {
    const text = `${JSON.stringify(r.body, null, 2)}\n`;
    res.writeHead(r.status, { ...r.headers, 'content-type': 'application/json; charset=utf-8' });
    res.end(head ? undefined : text);
  };

  /** /api/...: reads a JSON body (at most API_MAX_BODY_BYTES), asks each handler in turn. */
  const serveApi = (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    const head = req.method === 'HEAD';
    const chunks: Buffer[] = [];
    let size = 0;
    let tooLarge = false;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > API_MAX_BODY_BYTES) tooLarge = true;
      else chunks.push(chunk);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      void (async () => {
        try {
          const refusal = apiAccessRefusal({ method: req.method ?? 'GET', headers: req.headers, remoteAddress: req.socket.remoteAddress ?? '' }, opts.apiToken ?? null);
          if (refusal) {
            const r = errorResponse(refusal);
            // RFC 6750 §3: a 401 names the scheme the client must use.
            return answer(res, refusal.code === 'WANWU_ERR_AUTH' ? { ...r, headers: { 'www-authenticate': 'Bearer realm="wanwu"' } } : r, head);
          }
          if (tooLarge) throw new WanwuError('WANWU_ERR_TOO_LARGE', `request body over ${API_MAX_BODY_BYTES} bytes`);
          // A browser sends a cross-site text/plain or form POST without asking first (CORS "simple
          // request"); insisting on JSON makes it ask, and this server never says yes.
          if (size > 0 && !/^application\/json\s*(;|$)/i.test(req.headers['content-type'] ?? '')) {
            throw new WanwuError('WANWU_ERR_MALFORMED', 'send the request body with "Content-Type: application/json"');
          }
          let body: unknown;
          if (size > 0) {
            try {
              body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
            } catch {
              throw new WanwuError('WANWU_ERR_MALFORMED', 'the request body is not JSON');
            }
          }
          let segments: string[];
          try {
            segments = url.pathname.slice('/api/'.length).split('/').filter((x) => x !== '').map(decodeURIComponent);
          } catch {
            throw new WanwuError('WANWU_ERR_MALFORMED', 'the path is not valid percent-encoding');
          }
          const request: ApiRequest = {
            method: req.method ?? 'GET',
            path: url.pathname,
            segments,
            query: url.searchParams,
            headers: req.headers,
            body,
            remoteAddress: req.socket.remoteAddress ?? '',
          };
          for (const h of opts.api ?? []) {
            const r = await h(request);
            if (r) return answer(res, r, head);
          }
          answer(res, { status: 404, body: { code: 'WANWU_ERR_TOPIC', message: `no API resource ${req.method} ${url.pathname}` } }, head);
        } catch (err) {
          const e = asWanwuError(err);
          if (e.fault === 'internal') opts.logger.error({ err: e.message, stack: (err as Error)?.stack }, 'API request failed');
          answer(res, errorResponse(e), head);
        }
      })();
    });
  };

  return {
    async start() {
      if (server) return;
      const s = createServer((req, res) => {
        const path = (req.url ?? '/').split('?')[0]!;
        if (path.startsWith('/api/')) {
          serveApi(req, res);
          return;
        }
        handle(req.method ?? 'GET', path).then(
          (r) => {
            res.writeHead(r.status, { 'content-type': r.type });
            res.end(req.method === 'HEAD' ? undefined : r.body);
          },
          (err: Error) => {
            opts.logger.error({ err: err.message }, 'status request failed');
            res.writeHead(500, { 'content-type': 'text/plain' });
            res.end('internal error\n');
          },
        );
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(opts.port, opts.host, () => {
          s.off('error', reject);
          resolve();
        });
      });
      const a = s.address() as AddressInfo;
      bound = { address: a.address, port: a.port };
      server = s;
    },
    async stop() {
      const s = server;
      if (!s) return;
      server = null;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    address: () => ({ ...bound }),
  };
}
