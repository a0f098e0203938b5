// The downlink stage (ARCHITECTURE.md "downlink: upstream/API --> command queue (SQLite) --> delivered
// on the device's next contact"): a durable per-device command queue with TTLs, delivered by the
// transports through DownlinkPort, completed by the device's reply.
//
// Every state change is (1) committed to the command store, (2) appended to the record buffer as a
// record of kind "command" (so every upstream gets it, in order, at least once, on
// wanwu/{productKey}/{deviceName}/command by the default topic template), and (3) told to the
// in-process listeners (shadow, API waiters). Transports are woken when a command is queued.

import path from 'node:path';
import { isDeepStrictEqual } from 'node:util';
import { asWanwuError, WanwuError } from '../errors.js';
import type { Product, Registry } from '../registry/index.js';
import { deviceRefusal } from '../registry/index.js';
import { validateParams } from '../thing-model/index.js';
import type { Logger, RawMessage, TelemetryRecord, Transport } from '../types.js';
import { RateLimiter } from '../util/rate-limiter.js';
import { uuidv7 } from '../util/uuidv7.js';
import { buildCommand, parseCommandRequest, REQUEST_ID_MAX, type BuiltCommand } from './build.js';
import { CommandStore, type ListFilter } from './store.js';
import {
  DOWN_RAW_METHOD,
  FINAL_STATES,
  PROPERTY_SET_METHOD,
  type Command,
  type CommandChange,
  type CommandReply,
  type CommandState,
  type DeliveryChannel,
  type DeliveryVia,
  type DownlinkPort,
} from './types.js';

export * from './types.js';
export { parseCommandRequest } from './build.js';

export interface DownlinkOptions {
  /** SQLite file of the queue. */
  path: string;
  registry: Registry;
  /** Where state-change records go (the record buffer). */
  records: { append(records: readonly TelemetryRecord[]): Promise<void> };
  logger: Logger;
  /** TTL of a command that names none, in seconds. */
  ttlS: number;
  /** Longest TTL a command may ask for, in seconds. */
  maxTtlS: number;
  /** Open (not final) commands a device may have at once. */
  maxPerDevice: number;
  /** Largest encoded command, in bytes. */
  maxPayloadBytes: number;
  /** How long final commands stay queryable, in seconds. */
  retainS: number;
  /** How often TTLs are checked, in ms. */
  sweepMs: number;
  /** Clock (tests). Default Date.now. */
  now?: () => number;
}

export interface DownlinkStats {
  /** Commands in the store by state (final ones within downlink.retainS). */
  byState: Record<CommandState, number>;
  submitted: number;
  /** Submissions that repeated a device's requestId and were answered with the command already queued. */
  repeated: number;
  /** Submissions refused, by error code. */
  refused: Record<string, number>;
  /** Upstream commands refused past REFUSAL_RECORDS' rate, for which no "refused" record was written. */
  refusalRecordsSuppressed: number;
  /** Device replies that matched no open command. */
  unmatchedReplies: number;
}

export interface Downlink extends DownlinkPort {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Validates, encodes and queues a command (body as in the API); throws WanwuError when refused. */
  submit(productKey: string, deviceName: string, body: unknown, source: string): Command;
  /**
   * A command message from an upstream's command topic (JSON bytes: the API body, plus "requestId").
   * Queued like submit(); a refused one is not thrown but published as a state record with state
   * "refused" (code, message, the requestId when readable), so the application that sent it hears
   * why. Resolves with the command (null when refused) once the outcome is stored; rejects only
   * when even the refusal record cannot be stored.
   */
  submitMessage(productKey: string, deviceName: string, payload: Buffer, source: string): Promise<Command | null>;
  get(id: string): Command | null;
  list(filter: ListFilter): Command[];
  /** Cancels a command that is not final; throws WANWU_ERR_UNKNOWN_COMMAND or WANWU_ERR_COMMAND_STATE. */
  cancel(id: string): Command;
  /**
   * A device's reply on `{command topic}_reply` (route type "command-reply"): completes the command.
   * Throws WanwuError (WANWU_ERR_MALFORMED, WANWU_ERR_UNKNOWN_COMMAND, WANWU_ERR_INVALID) for the
   * pipeline to refuse and dead-letter. Resolves once the state record is committed.
   */
  reply(raw: RawMessage, product: Product, method: string): Promise<Command>;
  /** Listens to every state change; returns a function that removes the listener. */
  onChange(listener: (change: CommandChange) => void): () => void;
  stats(): DownlinkStats;
}

/** "refused" records per upstream (source): 20 a second, up to 100 at once. */
export const REFUSAL_RECORDS = { perSecond: 20, burst: 100 } as const;

/** The queue's file: downlink.path, or commands.db in the folder of storage.path. */
export function commandsPath(configured: string | null, storagePath: string): string {
  return configured ?? path.join(path.dirname(storagePath), 'commands.db');
}

export function createDownlink(opts: DownlinkOptions): Downlink {
  const now = opts.now ?? Date.now;
  let store: CommandStore | null = null;
  let sweeper: NodeJS.Timeout | null = null;
  let lastPrune = 0;
  const channels = new Set<DeliveryChannel>();
  const listeners = new Set<(change: CommandChange) => void>();
  /** `${pk}/${dn}` -> undelivered (queued or sent) commands: the transports' cheap check per uplink. */
  const undeliveredCount = new Map<string, number>();
  const counters = { submitted: 0, repeated: 0, refused: {} as Record<string, number>, refusalRecordsSuppressed: 0, unmatchedReplies: 0 };
  const refusalRecords = new RateLimiter(REFUSAL_RECORDS, 1024, now());
  let refusalWarnAt = 0;
  let byState: Record<CommandState, number> = { queued: 0, sent: 0, delivered: 0, 'replied-ok': 0, 'replied-error': 0, expired: 0, cancelled: 0 };
  let byStateAt = -Infinity;

  const key = (pk: string, dn: string) => `${pk}/${dn}`;
  const open = (): CommandStore => {
    if (!store) throw new WanwuError('WANWU_ERR_STORAGE', 'the command queue is not open');
    return store;
  };
  const adjust = (c: Command, delta: number) => {
    const k = key(c.productKey, c.deviceName);
    const n = (undeliveredCount.get(k) ?? 0) + delta;
    if (n > 0) undeliveredCount.set(k, n);
    else undeliveredCount.delete(k);
  };
  const isUndelivered = (s: CommandState) => s === 'queued' || s === 'sent';

  /** After a store transition: keep the counts, publish the record, tell the listeners. */
  function changed(before: Command | null, after: Command, recordAppended = false): Promise<void> {
    byStateAt = -Infinity;
    const was = before ? isUndelivered(before.state) : false;
    const is = isUndelivered(after.state);
    if (was !== is) adjust(after, is ? 1 : -1);
    const appended = recordAppended
      ? Promise.resolve()
      : opts.records.append([stateRecord(after, before?.state ?? null)]).catch((err: unknown) => {
          opts.logger.error({ err: (err as Error).message, command: after.id, state: after.state }, 'command state record not stored');
        });
    for (const l of listeners) {
      try {
        l({ command: after, previous: before?.state ?? null });
      } catch (err) {
        opts.logger.error({ err: (err as Error).message }, 'command listener failed');
      }
    }
    return appended;
  }

  function stateRecord(c: Command, previous: CommandState | null): TelemetryRecord {
    const at = c.updatedAt;
    const product = opts.registry.product(c.productKey);
    const transport: Transport = c.via ? (c.via === 'mqtt' ? 'mqtt' : 'coap') : product?.rat === 'nb-iot' ? 'coap' : 'mqtt';
    const data: Record<string, unknown> = {
      commandId: c.id,
      msgId: c.msgId,
      method: c.method,
      state: c.state,
      previous,
      source: c.source,
      attempts: c.attempts,
      expiresAt: c.expiresAt,
    };
    if (c.requestId !== undefined) data.requestId = c.requestId;
    if (c.params !== undefined) data.params = c.params;
    if (c.via !== undefined) data.via = c.via;
    if (c.reply !== undefined) data.reply = c.reply;
    return {
      id: uuidv7(at),
      productKey: c.productKey,
      deviceName: c.deviceName,
      kind: 'command',
      ts: at,
      receivedAt: at,
      transport,
      rat: product?.rat ?? 'nb-iot',
      data,
    };
  }

  /**
   * The record of a command that never got an id (refused at submission from an upstream): same
   * topic and shape as a state record, state "refused", no commandId. The body's requestId and
   * method are echoed when they are readable, so the sender can tell which message it was.
   */
  function refusalRecord(productKey: string, deviceName: string, source: string, body: unknown, err: WanwuError): TelemetryRecord {
    const at = now();
    const product = opts.registry.product(productKey);
    const data: Record<string, unknown> = {
      commandId: null,
      state: 'refused',
      previous: null,
      source,
      code: err.code,
      message: err.message.slice(0, 512),
    };
    if (isObject(body)) {
      const { requestId, method } = body;
      if (typeof requestId === 'string' && requestId.length <= REQUEST_ID_MAX) data.requestId = requestId;
      if (typeof method === 'string') data.method = method.slice(0, 128);
    }
    return {
      id: uuidv7(at),
      productKey,
      deviceName,
      kind: 'command',
      ts: at,
      receivedAt: at,
      transport: product?.rat === 'nb-iot' ? 'coap' : 'mqtt',
      rat: product?.rat ?? 'nb-iot',
      data,
    };
  }

  function countRefusal(err: unknown): void {
    const code = err instanceof WanwuError ? err.code : 'WANWU_ERR_INTERNAL';
    counters.refused[code] = (counters.refused[code] ?? 0) + 1;
  }

  function transition(id: string, apply: (s: CommandStore, at: number) => boolean): Command | null {
    const s = open();
    const before = s.get(id);
    if (!before) return null;
    const at = now();
    if (!apply(s, at)) return null;
    const after = s.get(id)!;
    void changed(before, after);
    return after;
  }

  function sweep(): void {
    const s = store;
    if (!s) return;
    try {
      const t = now();
      for (const c of s.due(t)) transition(c.id, (st, at) => st.finish(c.id, 'expired', at));
      if (t - lastPrune >= 60_000) {
        lastPrune = t;
        s.prune(t - opts.retainS * 1000);
      }
    } catch (err) {
      opts.logger.error({ err: (err as Error).message }, 'command expiry sweep failed');
    }
  }

  const downlink: Downlink = {
    async start() {
      if (store) return;
      store = new CommandStore(opts.path);
      for (const d of store.undeliveredDevices()) undeliveredCount.set(key(d.productKey, d.deviceName), d.n);
      sweep();
      sweeper = setInterval(sweep, opts.sweepMs);
      sweeper.unref();
    },
    async stop() {
      if (sweeper) clearInterval(sweeper);
      sweeper = null;
      store?.close();
      store = null;
      undeliveredCount.clear();
    },

    submit(productKey, deviceName, body, source) {
      try {
        const s = open();
        const req = parseCommandRequest(body);
        const product = opts.registry.product(productKey);
        const device = product && opts.registry.device(productKey, deviceName);
        if (!product || !device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${productKey}/${deviceName}`);
        const refusal = deviceRefusal(device);
        if (refusal) throw refusal;
        const ttlS = req.ttl ?? opts.ttlS;
        if (ttlS > opts.maxTtlS) throw new WanwuError('WANWU_ERR_COMMAND', `ttl ${ttlS} s exceeds downlink.maxTtlS ${opts.maxTtlS}`);
        const built = buildCommand(product, device, req, opts.maxPayloadBytes);
        if (req.requestId !== undefined) {
          // At-least-once submitters (an upstream redelivering a message, an HTTP client retrying after
          // a timeout) send the same command again: it is answered with the command already queued,
          // never queued twice. The same requestId for a different command is refused.
          const earlier = s.byRequestId(productKey, deviceName, req.requestId);
          if (earlier) {
            if (!sameRequest(earlier, built)) {
              throw new WanwuError('WANWU_ERR_COMMAND', `requestId "${req.requestId}" already names another command for ${productKey}/${deviceName} (${earlier.id})`, {
                detail: { commandId: earlier.id },
              });
            }
            counters.repeated++;
            return earlier;
          }
        }
        if (s.openCount(productKey, deviceName) >= opts.maxPerDevice) {
          throw new WanwuError('WANWU_ERR_QUEUE_FULL', `${productKey}/${deviceName} has ${opts.maxPerDevice} open commands (downlink.maxPerDevice)`);
        }
        const at = now();
        const command = s.insert(
          {
            id: uuidv7(at),
            productKey,
            deviceName,
            method: built.method,
            ...(built.params === undefined ? {} : { params: built.params }),
            topic: built.topic,
            source,
            ...(req.requestId === undefined ? {} : { requestId: req.requestId }),
            createdAt: at,
            expiresAt: at + ttlS * 1000,
          },
          built.encode,
        );
        counters.submitted++;
        void changed(null, command);
        for (const ch of channels) {
          try {
            ch.wake(productKey, deviceName);
          } catch (err) {
            opts.logger.error({ err: (err as Error).message, channel: ch.name }, 'command delivery failed');
          }
        }
        return store!.get(command.id) ?? command;
      } catch (thrown) {
        // SQLite failing (disk full, I/O) is the queue's fault, not the command's: WANWU_ERR_STORAGE
        // (HTTP 503; an upstream message is then not acknowledged and comes again).
        const err = thrown instanceof WanwuError ? thrown : new WanwuError('WANWU_ERR_STORAGE', `the command queue failed: ${(thrown as Error).message}`, { cause: thrown });
        countRefusal(err);
        throw err;
      }
    },

    async submitMessage(productKey, deviceName, payload, source) {
      let body: unknown;
      try {
        try {
          body = JSON.parse(payload.toString('utf8'));
        } catch {
          const err = new WanwuError('WANWU_ERR_MALFORMED', 'a command message is JSON: {"method","params","ttl","requestId"} or {"raw","ttl","requestId"}');
          countRefusal(err);
          throw err;
        }
        return downlink.submit(productKey, deviceName, body, source);
      } catch (thrown) {
        const err = asWanwuError(thrown);
        // Not a refusal of the command: no "refused" record, no PUBACK; the broker sends it again.
        if (err.fault === 'storage') throw err;
        opts.logger.debug({ productKey, deviceName, source, code: err.code, err: err.message }, 'upstream command refused');
        // A refusal record goes to every upstream: an application publishing junk (to made-up device
        // names, say) must not turn into a stream of records, so each source has a bucket of them.
        const t = now();
        if (refusalRecords.take(source, t) > 0) {
          counters.refusalRecordsSuppressed++;
          if (t >= refusalWarnAt) {
            refusalWarnAt = t + 10_000;
            opts.logger.warn({ source, suppressed: counters.refusalRecordsSuppressed }, `upstream commands refused faster than ${REFUSAL_RECORDS.perSecond}/s: no "refused" record for the rest (counted)`);
          }
          return null;
        }
        await opts.records.append([refusalRecord(productKey, deviceName, source, body, err)]);
        return null;
      }
    },

    get: (id) => open().get(id),
    list: (filter) => open().list(filter),

    cancel(id) {
      const s = open();
      const c = s.get(id);
      if (!c) throw new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', `no command ${id}`);
      if (FINAL_STATES.has(c.state)) throw new WanwuError('WANWU_ERR_COMMAND_STATE', `command ${id} is already ${c.state}`);
      const after = transition(id, (st, at) => st.finish(id, 'cancelled', at));
      if (!after) throw new WanwuError('WANWU_ERR_COMMAND_STATE', `command ${id} became final meanwhile`);
      return after;
    },

    async reply(raw, product, method) {
      const s = open();
      const { productKey, deviceName } = raw;
      let command: Command | null;
      let reply: CommandReply;
      if (method === DOWN_RAW_METHOD) {
        // down_raw_reply carries the device's own bytes and no Alink id: it answers the oldest
        // command sent to it on down_raw (commands reach a device in order, one at a time).
        command = s.oldestOpen(productKey, deviceName, `/sys/${productKey}/${deviceName}/thing/model/down_raw`);
        reply = { code: 200, data: { raw: raw.payload.toString('hex') } };
      } else {
        const body = parseReply(raw.payload);
        command = s.byMsgId(productKey, deviceName, body.id);
        if (command && command.method !== method) command = null;
        reply = { code: body.code };
        if (body.message !== undefined) reply.message = body.message;
        if (body.data !== undefined) reply.data = body.data;
        if (command && body.code === 200 && product.model && method !== PROPERTY_SET_METHOD && body.data !== undefined) {
          // Service output (Alibaba: the reply's data holds the service's outputData).
          const service = product.model.services.find((sv) => sv.method === method) ?? product.model.services.find((sv) => `thing.service.${sv.identifier}` === method);
          if (service) {
            // Output that breaks the model still completes the command (as replied-error): the device
            // did run it, and leaving the command open would deliver it, and run it, again.
            try {
              if (!isObject(body.data)) throw new WanwuError('WANWU_ERR_INVALID', `${service.identifier}: reply data is not an object of output parameters`);
              reply.data = validateParams(product.model, service.identifier, service.outputData, body.data, false);
            } catch (thrown) {
              const err = asWanwuError(thrown);
              if (err.fault !== 'device') throw thrown;
              reply.invalid = { code: err.code, message: err.message };
            }
          }
        }
      }
      if (!command || FINAL_STATES.has(command.state)) {
        counters.unmatchedReplies++;
        throw new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', `reply from ${productKey}/${deviceName} on ${raw.topic} matches no open command`);
      }
      const before = command;
      const at = raw.receivedAt;
      // The reply's record is committed before the command is marked replied and the device is
      // acknowledged: when the buffer refuses it (full, failing), the device is not acknowledged and
      // sends the reply again, instead of the reply's data never reaching any upstream.
      const state: CommandState = reply.code === 200 ? 'replied-ok' : 'replied-error';
      await opts.records.append([stateRecord({ ...command, state, reply, repliedAt: at, updatedAt: at }, command.state)]);
      if (!s.markReplied(command.id, reply, at)) throw new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', `command ${command.id} became final meanwhile`);
      const after = s.get(command.id)!;
      await changed(before, after, true);
      return after;
    },

    undelivered(productKey, deviceName, limit = 16) {
      if (!undeliveredCount.has(key(productKey, deviceName))) return [];
      const t = now();
      // Expired but not swept yet: not delivered (the sweep marks them).
      return open().undelivered(productKey, deviceName, limit).filter((c) => c.expiresAt > t);
    },
    hasUndelivered: (productKey, deviceName) => undeliveredCount.has(key(productKey, deviceName)),
    markSent(id: string, via: DeliveryVia) {
      transition(id, (st, at) => st.markSent(id, via, at));
    },
    markDelivered(id: string) {
      transition(id, (st, at) => st.markDelivered(id, at));
    },
    attach(channel) {
      channels.add(channel);
      return () => channels.delete(channel);
    },
    onChange(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    stats() {
      // A GROUP BY over the table: read again after a change or a second, not at every /status and
      // /metrics request (one scrape reads the stats several times).
      const t = now();
      if (store && t - byStateAt >= 1000) {
        byState = store.countsByState();
        byStateAt = t;
      }
      return {
        byState: { ...byState },
        submitted: counters.submitted,
        repeated: counters.repeated,
        refused: { ...counters.refused },
        refusalRecordsSuppressed: counters.refusalRecordsSuppressed,
        unmatchedReplies: counters.unmatchedReplies,
      };
    },
  };
  return downlink;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** An Alink reply: {"id","code","data"?,"message"?} (Alibaba's property/set_reply and service replies). */
function parseReply(payload: Buffer): { id: string; code: number; data?: unknown; message?: string } {
  let body: unknown;
  try {
    body = JSON.parse(payload.toString('utf8'));
  } catch {
    throw new WanwuError('WANWU_ERR_MALFORMED', 'a command reply is Alink JSON: {"id","code","data"}');
  }
  if (!isObject(body)) throw new WanwuError('WANWU_ERR_MALFORMED', 'a command reply is a JSON object {"id","code","data"}');
  const { id, code, data, message } = body;
  if (typeof id !== 'string' && typeof id !== 'number') throw new WanwuError('WANWU_ERR_MALFORMED', 'a command reply needs the command\'s "id"');
  if (typeof code !== 'number' || !Number.isInteger(code)) throw new WanwuError('WANWU_ERR_MALFORMED', 'a command reply needs an integer "code" (200 = ok)');
  const out: { id: string; code: number; data?: unknown; message?: string } = { id: String(id), code };
  if (data !== undefined) out.data = data;
  if (typeof message === 'string') out.message = message.slice(0, 256);
  return out;
}

/** Whether a repeated requestId asks for what its earlier command asked for (the ttl aside). */
function sameRequest(earlier: Command, built: BuiltCommand): boolean {
  if (earlier.method !== built.method || earlier.topic !== built.topic) return false;
  // Raw commands have no params: their bytes are the request.
  if (built.params === undefined) return earlier.params === undefined && earlier.payload.equals(built.encode(earlier.msgId));
  return isDeepStrictEqual(earlier.params ?? {}, built.params);
}
