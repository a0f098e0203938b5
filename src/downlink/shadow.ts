// Device shadow (Alibaba IoT 设备影子, AWS IoT device shadow): per device, the last reported value
// and time of every property, the desired values of property sets not yet answered, and the open
// command queue.
//
//   reported  from committed property records (a pipeline observer; event records do not touch
//             properties). The newest time wins, so a device's buffered older values never overwrite
//             newer ones. Updates collect in memory (the dirty set, coalesced per property) and are
//             written every flushMs in one transaction to device_reported (state-store.ts); reads
//             overlay the unwritten ones. Memory holds only the dirty set, never the whole fleet:
//             100k devices x 20 properties live on disk, as JSON text.
//   desired   derived, when asked, from the device's open property-set commands in the command
//             queue (queued, sent or delivered; the newest command wins per property). A set that
//             is replied ok leaves desired, and, as on Alibaba, its value becomes reported only when
//             the device reports it; one replied with an error, expired or cancelled leaves too.
//             Reading the queue instead of keeping a copy means the two can never disagree, also
//             across restarts and commands that expired while the gateway was down.
//   commands  the open commands (not final), oldest first.

import type { Command } from './types.js';
import { FINAL_STATES, PROPERTY_SET_METHOD, type CommandState } from './types.js';
import type { Logger, RawMessage, TelemetryRecord } from '../types.js';
import type { ListFilter } from './store.js';
import { DeviceStateStore, type ReportedValue } from './state-store.js';

/** Open states, in the order a command passes them. */
const OPEN_STATES: readonly CommandState[] = ['queued', 'sent', 'delivered'];

export interface ShadowOptions {
  /** SQLite file (the command queue's commands.db). */
  path: string;
  /** The command queue, read for desired values and open commands. */
  downlink: { list(filter: ListFilter): Command[] };
  logger: Logger;
  /** How often reported values are written, in ms. */
  flushMs: number;
  /** Most open commands read per device and state (downlink.maxPerDevice: no device has more). */
  maxOpenCommands: number;
  /** Unwritten property values held at most (a failing disk must not grow memory without bound). */
  maxPending?: number;
}

export interface ReportedProperty {
  value: unknown;
  /** ms since the epoch. */
  time: number;
}

export interface DesiredProperty {
  value: unknown;
  commandId: string;
  /** When the command was submitted, ms since the epoch. */
  since: number;
}

/** An open command as the shadow lists it. */
export interface OpenCommand {
  id: string;
  method: string;
  state: CommandState;
  createdAt: number;
  expiresAt: number;
  attempts: number;
  params?: Record<string, unknown>;
}

export interface ShadowStats {
  /** Property values not yet written. */
  pending: number;
  /** Values dropped because maxPending were waiting for a failing disk. */
  dropped: number;
}

export interface Shadow {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Pipeline observer: the records committed for an uplink. */
  observe(raw: RawMessage, records: readonly TelemetryRecord[]): void;
  reported(productKey: string, deviceName: string): Record<string, ReportedProperty>;
  desired(productKey: string, deviceName: string): Record<string, DesiredProperty>;
  commands(productKey: string, deviceName: string): OpenCommand[];
  /** Writes the unwritten reported values now (what the timer does). */
  flush(): void;
  stats(): ShadowStats;
}

interface PendingDevice {
  productKey: string;
  deviceName: string;
  /** The record's own value (records are not changed once committed): made JSON only when written. */
  values: Map<string, { value: unknown; time: number }>;
}

/** How far ahead of the gateway's clock a device's timestamp counts (5 min). */
const MAX_CLOCK_AHEAD_MS = 5 * 60_000;

export function createShadow(opts: ShadowOptions): Shadow {
  const maxPending = opts.maxPending ?? 1_000_000;
  let pending = new Map<string, PendingDevice>();
  let pendingCount = 0;
  let dropped = 0;
  let store: DeviceStateStore | null = null;
  let timer: NodeJS.Timeout | null = null;
  let failing = false;

  const key = (pk: string, dn: string) => `${pk}/${dn}`;

  function note(productKey: string, deviceName: string, id: string, value: unknown, time: number): void {
    const k = key(productKey, deviceName);
    let d = pending.get(k);
    if (!d) {
      d = { productKey, deviceName, values: new Map() };
      pending.set(k, d);
    }
    const prev = d.values.get(id);
    if (prev && prev.time > time) return;
    if (!prev) {
      if (pendingCount >= maxPending) {
        dropped++;
        return;
      }
      pendingCount++;
    }
    d.values.set(id, { value, time });
  }

  function flush(): void {
    if (!store || pending.size === 0) return;
    const batch = pending;
    try {
      store.saveReported(batch);
      pending = new Map();
      pendingCount = 0;
      failing = false;
    } catch (err) {
      // Kept for the next flush (the store's upsert keeps the newest time, so a retry is harmless).
      if (!failing) opts.logger.error({ err: (err as Error).message, devices: batch.size }, 'device shadow not written; retrying');
      failing = true;
    }
  }

  function openCommands(productKey: string, deviceName: string): Command[] {
    const out: Command[] = [];
    for (const state of OPEN_STATES) out.push(...opts.downlink.list({ productKey, deviceName, state, limit: opts.maxOpenCommands }));
    // Submission order: msgId is the queue's sequence number.
    return out.filter((c) => !FINAL_STATES.has(c.state)).sort((a, b) => Number(a.msgId) - Number(b.msgId));
  }

  return {
    async start() {
      if (store) return;
      store = new DeviceStateStore(opts.path);
      timer = setInterval(flush, opts.flushMs);
      timer.unref();
    },

    async stop() {
      if (timer) clearInterval(timer);
      timer = null;
      flush();
      if (pendingCount > 0) opts.logger.warn({ values: pendingCount }, 'device shadow values not written at stop');
      store?.close();
      store = null;
    },

    observe(_raw, records) {
      for (const r of records) {
        if (r.kind !== 'property') continue;
        // "Newest wins" goes by the device's time, but never past the gateway's by more than the skew
        // a module clock may have: one value stamped years ahead (a bad RTC) would freeze the property.
        const time = Math.min(r.ts, r.receivedAt + MAX_CLOCK_AHEAD_MS);
        for (const [id, value] of Object.entries(r.data)) note(r.productKey, r.deviceName, id, value, time);
      }
    },

    reported(productKey, deviceName) {
      const values = store ? store.reported(productKey, deviceName) : new Map<string, ReportedValue>();
      for (const [id, v] of pending.get(key(productKey, deviceName))?.values ?? []) {
        const stored = values.get(id);
        if (!stored || stored.time <= v.time) values.set(id, { json: JSON.stringify(v.value), time: v.time });
      }
      const out: Record<string, ReportedProperty> = {};
      for (const id of [...values.keys()].sort()) {
        const v = values.get(id)!;
        out[id] = { value: JSON.parse(v.json) as unknown, time: v.time };
      }
      return out;
    },

    desired(productKey, deviceName) {
      const out: Record<string, DesiredProperty> = {};
      for (const c of openCommands(productKey, deviceName)) {
        if (c.method !== PROPERTY_SET_METHOD || !c.params) continue;
        for (const [id, value] of Object.entries(c.params)) out[id] = { value, commandId: c.id, since: c.createdAt };
      }
      return out;
    },

    commands(productKey, deviceName) {
      return openCommands(productKey, deviceName).map((c) => {
        const o: OpenCommand = { id: c.id, method: c.method, state: c.state, createdAt: c.createdAt, expiresAt: c.expiresAt, attempts: c.attempts };
        if (c.params !== undefined) o.params = c.params;
        return o;
      });
    },

    flush,
    stats: () => ({ pending: pendingCount, dropped }),
  };
}
