// Device liveness and shadow on disk: two tables in the command queue's SQLite file (commands.db),
// on a connection of their own, so the command store (store.ts) stays as it is.
//
//   device_liveness  one row per device ever seen: state, since, last seen, how it is tracked
//                    (MQTT session or timed CoAP rule) and its recent uplink gaps (the learned interval)
//   device_reported  one row per device and property: the last reported value (JSON) and its time
//
// Both are derived state, rebuilt from uplinks as they come, and written in batches (one
// transaction per flush): synchronous=NORMAL, so a power cut may lose the last flush, never corrupt
// the file. The command store keeps synchronous=FULL on its own connection for its own commits.
// The tables are created with IF NOT EXISTS and leave PRAGMA user_version to the command store.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { WanwuError } from '../errors.js';
import type { Transport } from '../types.js';

export type LivenessState = 'online' | 'sleeping' | 'offline';
/** session: online while an MQTT session is open; timed: the CoAP (PSM) rule of liveness.ts. */
export type LivenessMode = 'session' | 'timed';

export interface LivenessRow {
  productKey: string;
  deviceName: string;
  state: LivenessState;
  /** ms since the epoch: when the device entered `state`. */
  since: number;
  /** ms since the epoch: its last uplink or session event. */
  lastSeen: number;
  mode: LivenessMode;
  transport: Transport;
  /** The last few gaps between the device's wake-ups, in ms, oldest first. */
  gaps: number[];
}

export interface ReportedValue {
  /** The value as JSON text (kept as text: 100k devices x 20 properties must stay small). */
  json: string;
  /** ms since the epoch: the record's ts (device time when it sent one). */
  time: number;
}

export class DeviceStateStore {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<DeviceStateStore['prepare']>;

  constructor(readonly file: string) {
    try {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      this.db = new Database(file);
      this.db.pragma('journal_mode = WAL');
      this.db.pragma('synchronous = NORMAL');
      this.db.pragma('busy_timeout = 5000');
      this.db.exec(`
        CREATE TABLE IF NOT EXISTS device_liveness (
          product_key TEXT NOT NULL,
          device_name TEXT NOT NULL,
          state TEXT NOT NULL,
          since INTEGER NOT NULL,
          last_seen INTEGER NOT NULL,
          mode TEXT NOT NULL,
          transport TEXT NOT NULL,
          gaps TEXT NOT NULL,
          PRIMARY KEY (product_key, device_name)
        ) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS device_reported (
          product_key TEXT NOT NULL,
          device_name TEXT NOT NULL,
          identifier TEXT NOT NULL,
          value TEXT NOT NULL,
          time INTEGER NOT NULL,
          PRIMARY KEY (product_key, device_name, identifier)
        ) WITHOUT ROWID;
      `);
      this.stmts = this.prepare();
    } catch (err) {
      throw new WanwuError('WANWU_ERR_STORAGE', `device state ${file} cannot be opened: ${(err as Error).message}`, { cause: err });
    }
  }

  private prepare() {
    const db = this.db;
    return {
      allLiveness: db.prepare('SELECT * FROM device_liveness'),
      putLiveness: db.prepare(`INSERT INTO device_liveness (product_key, device_name, state, since, last_seen, mode, transport, gaps)
        VALUES (@productKey, @deviceName, @state, @since, @lastSeen, @mode, @transport, @gaps)
        ON CONFLICT (product_key, device_name) DO UPDATE SET state = excluded.state, since = excluded.since,
          last_seen = excluded.last_seen, mode = excluded.mode, transport = excluded.transport, gaps = excluded.gaps`),
      reported: db.prepare('SELECT identifier, value, time FROM device_reported WHERE product_key = ? AND device_name = ?'),
      // A store-and-forward device may deliver older values after newer ones: the newest time wins.
      putReported: db.prepare(`INSERT INTO device_reported (product_key, device_name, identifier, value, time) VALUES (?, ?, ?, ?, ?)
        ON CONFLICT (product_key, device_name, identifier) DO UPDATE SET value = excluded.value, time = excluded.time
        WHERE excluded.time >= device_reported.time`),
    };
  }

  loadLiveness(): LivenessRow[] {
    const rows = this.stmts.allLiveness.all() as Array<{
      product_key: string;
      device_name: string;
      state: LivenessState;
      since: number;
      last_seen: number;
      mode: LivenessMode;
      transport: Transport;
      gaps: string;
    }>;
    return rows.map((r) => ({
      productKey: r.product_key,
      deviceName: r.device_name,
      state: r.state,
      since: r.since,
      lastSeen: r.last_seen,
      mode: r.mode,
      transport: r.transport,
      gaps: parseGaps(r.gaps),
    }));
  }

  /** Writes the rows in one transaction. */
  saveLiveness(rows: Iterable<LivenessRow>): void {
    const put = this.stmts.putLiveness;
    this.db.transaction(() => {
      for (const r of rows) put.run({ ...r, gaps: JSON.stringify(r.gaps) });
    })();
  }

  reported(productKey: string, deviceName: string): Map<string, ReportedValue> {
    const out = new Map<string, ReportedValue>();
    for (const r of this.stmts.reported.all(productKey, deviceName) as Array<{ identifier: string; value: string; time: number }>) {
      out.set(r.identifier, { json: r.value, time: r.time });
    }
    return out;
  }

  /** Writes reported values (device key `${pk}/${dn}` -> identifier -> value) in one transaction. */
  saveReported(batch: ReadonlyMap<string, { productKey: string; deviceName: string; values: ReadonlyMap<string, { value: unknown; time: number }> }>): void {
    const put = this.stmts.putReported;
    this.db.transaction(() => {
      for (const d of batch.values()) {
        for (const [id, v] of d.values) put.run(d.productKey, d.deviceName, id, JSON.stringify(v.value), v.time);
      }
    })();
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function parseGaps(text: string): number[] {
  try {
    const v = JSON.parse(text) as unknown;
    return Array.isArray(v) ? v.filter((x): x is number => typeof x === 'number' && Number.isFinite(x) && x > 0) : [];
  } catch {
    return [];
  }
}
