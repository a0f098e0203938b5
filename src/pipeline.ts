// The uplink pipeline as the listeners call it: RawMessage -> checks -> decode + validate -> commit.
// Each step is one named function in UPLINK_STEPS (convention 5), so a new step is one line.
// A device fault is dead-lettered (raw bytes kept) and answered with its code; a storage fault is
// answered with WANWU_ERR_STORAGE so the listener withholds the acknowledgement and the device retries.

import { asWanwuError, WanwuError, type ErrorCode } from './errors.js';
import type { DeadLetter, RecordBuffer } from './buffer/index.js';
import { parseUplinkTopic } from './thing-model/topic.js';
import { checkCard, deviceRefusal, type Device, type Product, type Registry } from './registry/index.js';
import { decodeUplink, type DecodedItem } from './thing-model/index.js';
import type { IngestHandler, IngestOutcome, Logger, RawMessage, TelemetryRecord, Transport } from './types.js';
import { uuidv7 } from './util/uuidv7.js';
import type { Downlink } from './downlink/index.js';

export interface PipelineOptions {
  registry: Registry;
  buffer: RecordBuffer;
  logger: Logger;
  /** Largest payload accepted per transport, in bytes. */
  maxPayloadBytes: Record<Transport, number>;
  /** The command queue: device replies (route "command-reply") complete commands there. Absent: replies get WANWU_ERR_TOPIC. */
  downlink?: Pick<Downlink, 'reply'>;
  /**
   * Told of every accepted uplink once its records are committed (device liveness, shadow). Called
   * synchronously; must not throw (errors are logged) and must not keep `records` mutable.
   */
  observers?: ReadonlyArray<(raw: RawMessage, records: readonly TelemetryRecord[]) => void>;
}

export interface PipelineStats {
  accepted: Record<Transport, number>;
  records: Record<Transport, number>;
  rejected: Record<Transport, number>;
  /** Refusals by error code and transport, e.g. { WANWU_ERR_INVALID: { coap: 2, mqtt: 0 } }. */
  rejectedByCode: Partial<Record<ErrorCode, Record<Transport, number>>>;
  inFlight: number;
}

export interface Pipeline {
  ingest: IngestHandler;
  /**
   * Records a refusal a listener decided on its own (e.g. a publish outside the device's namespace):
   * counted, and dead-lettered with its payload. Resolves when the dead letter is durable.
   */
  refuse(raw: Omit<RawMessage, 'route'>, error: WanwuError): Promise<void>;
  /** Runs a dead letter through today's products and codecs; on success its records replace it. */
  replay(dl: DeadLetter): ReplayResult;
  stats(): PipelineStats;
  /** Resolves once every ingest under way has settled. */
  drain(): Promise<void>;
}

export type ReplayResult =
  | { id: number; ok: true; records: number }
  | { id: number; ok: false; error: WanwuError; skipped?: string };

/**
 * Refusals a replay cannot mend: the payload was cut to the size limit, or it was sent outside the
 * sender's own namespace (replaying would file it under another device).
 */
const NOT_REPLAYABLE: ReadonlySet<string> = new Set<ErrorCode>(['WANWU_ERR_TOO_LARGE', 'WANWU_ERR_FORBIDDEN', 'WANWU_ERR_AUTH', 'WANWU_ERR_DEVICE_DISABLED', 'WANWU_ERR_CARD_MISMATCH']);
// (A disabled device's or a foreign card's payloads were refused on purpose: replaying them would
// let in what the operator or the card binding kept out.)

interface Context {
  raw: RawMessage;
  product?: Product;
  device?: Device;
  items?: DecodedItem[];
  /** What was committed, for the observers. */
  records?: readonly TelemetryRecord[];
  outcome: IngestOutcome;
}

type Step = (ctx: Context, p: PipelineOptions) => void | Promise<void>;

const checkSize: Step = (ctx, p) => {
  const limit = p.maxPayloadBytes[ctx.raw.transport];
  if (ctx.raw.payload.length > limit) {
    throw new WanwuError('WANWU_ERR_TOO_LARGE', `payload of ${ctx.raw.payload.length} bytes exceeds the limit of ${limit}`);
  }
};

const findDevice: Step = (ctx, p) => {
  const product = p.registry.product(ctx.raw.productKey);
  const device = product && p.registry.device(ctx.raw.productKey, ctx.raw.deviceName);
  if (!product || !device) {
    throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `unknown device ${ctx.raw.productKey}/${ctx.raw.deviceName}`);
  }
  // A disabled device stays known (so its refusals are counted under its name) but sends nothing.
  const refusal = deviceRefusal(device);
  if (refusal) throw refusal;
  ctx.product = product;
  ctx.device = device;
};

const decode: Step = (ctx) => {
  const result = decodeUplink(ctx.product!, ctx.raw.route, ctx.raw.payload);
  if (result.msgId !== undefined) ctx.outcome.msgId = result.msgId;
  if (result.method !== undefined) ctx.outcome.method = result.method;
  if (!result.ok) throw result.error;
  ctx.items = result.items;
};

/** Property identifiers under which a device reports its SIM's ICCID (TSL identifiers are case-sensitive; modules differ). */
const ICCID_PROPERTY = /^iccid$/i;

/** Whether a product's items can carry an ICCID: its model defines one, or it has no model (values pass unchecked). */
const iccidCarriers = new WeakMap<Product, boolean>();
function mayReportIccid(product: Product): boolean {
  let may = iccidCarriers.get(product);
  if (may === undefined) {
    may = product.model === null || product.model.properties.some((prop) => ICCID_PROPERTY.test(prop.identifier));
    iccidCarriers.set(product, may);
  }
  return may;
}

/**
 * Card binding (机卡绑定): a device that reports its ICCID as a property must report the card bound
 * to it in the registry, unless its product turns binding off. A mismatch is refused and audited.
 */
const cardBinding: Step = (ctx, p) => {
  const device = ctx.device!;
  // Validation has already refused identifiers the model lacks, so most products skip the scan.
  if (device.iccid === undefined || ctx.product!.cardBinding === false || !mayReportIccid(ctx.product!)) return;
  for (const item of ctx.items!) {
    if (item.kind !== 'property') continue;
    for (const [id, value] of Object.entries(item.data)) {
      if (typeof value !== 'string' || !ICCID_PROPERTY.test(id)) continue;
      const refusal = checkCard(device, value, ctx.product);
      if (!refusal) continue;
      p.registry.audit?.({
        at: ctx.raw.receivedAt,
        productKey: device.productKey,
        deviceName: device.deviceName,
        event: 'card-mismatch',
        detail: value.slice(0, 32),
        source: `${ctx.raw.transport} ${ctx.raw.peer}`,
      });
      throw refusal;
    }
  }
};

/** Turns decoded items into normalized records (ARCHITECTURE.md "External contract"). */
export function toRecords(raw: Omit<RawMessage, 'route' | 'payload'>, product: Product, items: readonly DecodedItem[], msgId?: string): TelemetryRecord[] {
  return items.map((item): TelemetryRecord => {
    const r: TelemetryRecord = {
      id: uuidv7(raw.receivedAt),
      productKey: raw.productKey,
      deviceName: raw.deviceName,
      kind: item.kind,
      ts: item.ts ?? raw.receivedAt,
      receivedAt: raw.receivedAt,
      transport: raw.transport,
      rat: product.rat,
      data: item.data,
    };
    if (item.event !== undefined) r.event = item.event;
    if (msgId !== undefined) r.msgId = msgId;
    if (product.model === null) r.validated = false;
    return r;
  });
}

const commit: Step = async (ctx, p) => {
  const records = toRecords(ctx.raw, ctx.product!, ctx.items!, ctx.outcome.msgId);
  // Rejects with WANWU_ERR_STORAGE: the device is then not acknowledged.
  if (records.length > 0) await p.buffer.append(records);
  ctx.outcome.committed = records.length;
  ctx.records = records;
};

/** A device's reply to a command: completes it in the queue (whose state record is committed before we return). */
const commandReply: Step = async (ctx, p) => {
  const route = ctx.raw.route;
  if (route.type !== 'command-reply' || !p.downlink) throw new WanwuError('WANWU_ERR_TOPIC', `${ctx.raw.topic}: this gateway has no command queue`);
  ctx.outcome.method = `${route.method}_reply`;
  await p.downlink.reply(ctx.raw, ctx.product!, route.method);
  ctx.outcome.committed = 1;
  ctx.records = [];
};

export const UPLINK_STEPS: ReadonlyArray<readonly [name: string, step: Step]> = [
  ['checkSize', checkSize],
  ['findDevice', findDevice],
  ['decode', decode],
  ['cardBinding', cardBinding],
  ['commit', commit],
];

/** Replies to commands (route "command-reply") take these steps instead of decode and commit. */
export const REPLY_STEPS: ReadonlyArray<readonly [name: string, step: Step]> = [
  ['checkSize', checkSize],
  ['findDevice', findDevice],
  ['commandReply', commandReply],
];

export function createPipeline(opts: PipelineOptions): Pipeline {
  const zero = (): Record<Transport, number> => ({ coap: 0, mqtt: 0 });
  const stats = {
    accepted: zero(),
    records: zero(),
    rejected: zero(),
    rejectedByCode: {} as PipelineStats['rejectedByCode'],
  };
  let inFlight = 0;
  let idle: Array<() => void> = [];

  const countRejection = (transport: Transport, code: ErrorCode) => {
    stats.rejected[transport]++;
    const byCode = (stats.rejectedByCode[code] ??= zero());
    byCode[transport]++;
  };

  const deadLetter = (raw: Omit<RawMessage, 'route'>, error: WanwuError) =>
    opts.buffer.deadLetter({
      transport: raw.transport,
      productKey: raw.productKey,
      deviceName: raw.deviceName,
      topic: raw.topic,
      peer: raw.peer,
      receivedAt: raw.receivedAt,
      code: error.code,
      message: error.message,
      // Oversize payloads are kept up to the limit: enough to diagnose, bounded on disk.
      payload: raw.payload.subarray(0, opts.maxPayloadBytes[raw.transport]),
    });

  const ingest: IngestHandler = async (raw) => {
    inFlight++;
    const ctx: Context = { raw, outcome: { committed: 0, deadLettered: false } };
    try {
      for (const [, step] of raw.route.type === 'command-reply' ? REPLY_STEPS : UPLINK_STEPS) await step(ctx, opts);
      stats.accepted[raw.transport]++;
      opts.registry.seen?.(raw.productKey, raw.deviceName, raw.receivedAt);
      stats.records[raw.transport] += ctx.outcome.committed;
      if (opts.observers) {
        for (const observe of opts.observers) {
          try {
            observe(raw, ctx.records ?? []);
          } catch (err) {
            opts.logger.error({ err: (err as Error).message }, 'uplink observer failed');
          }
        }
      }
    } catch (thrown) {
      const error = asWanwuError(thrown);
      ctx.outcome.error = error;
      countRejection(raw.transport, error.code);
      if (error.fault === 'internal') opts.logger.error({ err: error.message, stack: (thrown as Error)?.stack }, 'uplink failed');
      if (error.fault !== 'storage' && error.fault !== 'capacity') {
        // Device faults and bugs alike: keep the raw payload so it can be replayed after a fix.
        try {
          await deadLetter(raw, error);
          ctx.outcome.deadLettered = true;
        } catch (dlErr) {
          // The payload could not be kept, so the device must not be acknowledged either.
          ctx.outcome.error = asWanwuError(dlErr, 'WANWU_ERR_STORAGE');
        }
      }
      opts.logger.debug({ code: ctx.outcome.error.code, err: ctx.outcome.error.message, topic: raw.topic, peer: raw.peer }, 'uplink refused');
    } finally {
      if (--inFlight === 0) {
        const waiters = idle;
        idle = [];
        for (const w of waiters) w();
      }
    }
    return ctx.outcome;
  };

  return {
    ingest,
    async refuse(raw, error) {
      countRejection(raw.transport, error.code);
      await deadLetter(raw, error);
    },
    replay(dl) {
      if (NOT_REPLAYABLE.has(dl.code)) {
        return { id: dl.id, ok: false, error: new WanwuError(dl.code as ErrorCode, dl.message), skipped: `${dl.code} cannot be replayed` };
      }
      const ctx: Context = {
        raw: {
          transport: dl.transport,
          productKey: dl.productKey ?? '',
          deviceName: dl.deviceName ?? '',
          topic: dl.topic,
          route: { type: 'up-raw' },
          payload: dl.payload,
          receivedAt: dl.receivedAt,
          peer: dl.peer,
        },
        outcome: { committed: 0, deadLettered: false },
      };
      try {
        ctx.raw.route = parseUplinkTopic(dl.topic).route;
        // A reply belongs to a command that has since moved on (or expired): replaying it means nothing.
        if (ctx.raw.route.type === 'command-reply') throw new WanwuError('WANWU_ERR_UNKNOWN_COMMAND', 'command replies are not replayed');
        findDevice(ctx, opts);
        decode(ctx, opts);
        cardBinding(ctx, opts);
        const records = toRecords(ctx.raw, ctx.product!, ctx.items!, ctx.outcome.msgId);
        opts.buffer.replaceDeadLetter(dl.id, records);
        return { id: dl.id, ok: true, records: records.length };
      } catch (thrown) {
        const error = asWanwuError(thrown);
        if (error.fault !== 'storage') opts.buffer.reviseDeadLetter(dl.id, error.code, error.message);
        return { id: dl.id, ok: false, error };
      }
    },
    stats: () => ({ ...stats, inFlight }),
    drain: () => (inFlight === 0 ? Promise.resolve() : new Promise<void>((resolve) => idle.push(resolve))),
  };
}
