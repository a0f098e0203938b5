// The command queue on disk: one SQLite file of its own (config downlink.path, default
// commands.db next to the buffer), written synchronously with synchronous=FULL. Commands are few
// (an operator or application sends them, not a fleet), so every state change is its own durable
// transaction: a command the API answered 202 for survives `kill -9` and power loss.
//
//   commands  one row per command; `seq` (AUTOINCREMENT, never reused) orders a device's queue and
//             is the Alink message id the device echoes in its reply.

import { mkdirSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import { WanwuError } from '../errors.js';
import { FINAL_STATES, UNDELIVERED_STATES, type Command, type CommandReply, type CommandState, type DeliveryVia } from './types.js';

// 1: the table; 2: request_id (the submitter's correlation id, echoed in state records); 3: an index
// on it (a repeated requestId finds its command: submissions are idempotent per device and requestId).
const SCHEMA_VERSION = 3;
const REQUEST_INDEX = 'CREATE INDEX IF NOT EXISTS commands_request ON commands (product_key, device_name, request_id) WHERE request_id IS NOT NULL';

interface Row {
  seq: number;
  id: string;
  product_key: string;
  device_name: string;
  method: string;
  params: string | null;
  topic: string;
  payload: Buffer;
  state: CommandState;
  source: string;
  created_at: number;
  updated_at: number;
  expires_at: number;
  attempts: number;
  via: DeliveryVia | null;
  sent_at: number | null;
  delivered_at: number | null;
  replied_at: number | null;
  reply: string | null;
  request_id: string | null;
}

export interface NewCommand {
  id: string;
  productKey: string;
  deviceName: string;
  method: string;
  params?: Record<string, unknown>;
  topic: string;
  source: string;
  requestId?: string;
  createdAt: number;
  expiresAt: number;
}

export interface ListFilter {
  productKey?: string;
  deviceName?: string;
  state?: CommandState;
  /** Commands with seq below this (paging backwards from the newest). */
  before?: number;
  limit: number;
}

const UNDELIVERED_SQL = UNDELIVERED_STATES.map((s) => `'${s}'`).join(',');
const FINAL_SQL = [...FINAL_STATES].map((s) => `'${s}'`).join(',');

export class CommandStore {
  private readonly db: Database.Database;
  private readonly stmts: ReturnType<CommandStore['prepare']>;

  constructor(readonly file: string) {
    let db: Database.Database | null = null;
    try {
      mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
      db = new Database(file);
      this.db = db;
      this.db.pragma('journal_mode = WAL');
      // Every change is an operator's or device's answer we have acknowledged: fsync each commit.
      this.db.pragma('synchronous = FULL');
      this.db.pragma('busy_timeout = 5000');
      this.migrate();
      this.stmts = this.prepare();
    } catch (err) {
      // A file that opened but cannot be used (newer schema, read-only disk) is not left open.
      if (db?.open) db.close();
      throw new WanwuError('WANWU_ERR_STORAGE', `command queue ${file} cannot be opened: ${(err as Error).message}`, { cause: err });
    }
  }

  private migrate(): void {
    const version = this.db.pragma('user_version', { simple: true }) as number;
    if (version === SCHEMA_VERSION) return;
    if (version > SCHEMA_VERSION) throw new Error(`schema version ${version} is newer than this Wanwu (${SCHEMA_VERSION})`);
    if (version === 1 || version === 2) {
      const column = version === 1 ? 'ALTER TABLE commands ADD COLUMN request_id TEXT;' : '';
      this.db.exec(`${column} ${REQUEST_INDEX}; PRAGMA user_version = ${SCHEMA_VERSION};`);
      return;
    }
    this.db.exec(`
      CREATE TABLE IF NOT EXISTS commands (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        id TEXT NOT NULL UNIQUE,
        product_key TEXT NOT NULL,
        device_name TEXT NOT NULL,
        method TEXT NOT NULL,
        params TEXT,
        topic TEXT NOT NULL,
        payload BLOB NOT NULL,
        state TEXT NOT NULL,
        source TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        via TEXT,
        sent_at INTEGER,
        delivered_at INTEGER,
        replied_at INTEGER,
        reply TEXT,
        request_id TEXT
      );
      CREATE INDEX IF NOT EXISTS commands_device ON commands (product_key, device_name, seq);
      CREATE INDEX IF NOT EXISTS commands_open ON commands (expires_at) WHERE state NOT IN (${FINAL_SQL});
      CREATE INDEX IF NOT EXISTS commands_state ON commands (state, seq);
      ${REQUEST_INDEX};
      PRAGMA user_version = ${SCHEMA_VERSION};
    `);
  }

  private prepare() {
    const db = this.db;
    return {
      insert: db.prepare(`INSERT INTO commands (id, product_key, device_name, method, params, topic, payload, state, source, request_id, created_at, updated_at, expires_at)
        VALUES (@id, @productKey, @deviceName, @method, @params, @topic, x'', 'queued', @source, @requestId, @createdAt, @createdAt, @expiresAt)`),
      setPayload: db.prepare('UPDATE commands SET payload = ? WHERE seq = ?'),
      byId: db.prepare('SELECT * FROM commands WHERE id = ?'),
      byRequestId: db.prepare('SELECT * FROM commands WHERE product_key = ? AND device_name = ? AND request_id = ? ORDER BY seq DESC LIMIT 1'),
      byMsgId: db.prepare('SELECT * FROM commands WHERE seq = ? AND product_key = ? AND device_name = ?'),
      undelivered: db.prepare(`SELECT * FROM commands WHERE product_key = ? AND device_name = ? AND state IN (${UNDELIVERED_SQL}) ORDER BY seq LIMIT ?`),
      oldestOpen: db.prepare(`SELECT * FROM commands WHERE product_key = ? AND device_name = ? AND topic = ? AND state IN ('sent', 'delivered') ORDER BY seq LIMIT 1`),
      openCount: db.prepare(`SELECT count(*) AS n FROM commands WHERE product_key = ? AND device_name = ? AND state NOT IN (${FINAL_SQL})`),
      undeliveredDevices: db.prepare(`SELECT product_key, device_name, count(*) AS n FROM commands WHERE state IN (${UNDELIVERED_SQL}) GROUP BY product_key, device_name`),
      due: db.prepare(`SELECT * FROM commands WHERE state NOT IN (${FINAL_SQL}) AND expires_at <= ? ORDER BY expires_at LIMIT 500`),
      sent: db.prepare(`UPDATE commands SET state = 'sent', via = ?, sent_at = ?, updated_at = ?, attempts = attempts + 1 WHERE id = ? AND state IN ('queued', 'sent')`),
      delivered: db.prepare(`UPDATE commands SET state = 'delivered', delivered_at = ?, updated_at = ? WHERE id = ? AND state IN ('queued', 'sent')`),
      replied: db.prepare(`UPDATE commands SET state = ?, reply = ?, replied_at = ?, updated_at = ? WHERE id = ? AND state NOT IN (${FINAL_SQL})`),
      finish: db.prepare(`UPDATE commands SET state = ?, updated_at = ? WHERE id = ? AND state NOT IN (${FINAL_SQL})`),
      counts: db.prepare('SELECT state, count(*) AS n FROM commands GROUP BY state'),
      prune: db.prepare(`DELETE FROM commands WHERE state IN (${FINAL_SQL}) AND updated_at < ?`),
    };
  }

  /** Inserts a queued command; `encode` gets its Alink message id and returns the payload. Atomic. */
  insert(c: NewCommand, encode: (msgId: string) => Buffer): Command {
    const tx = this.db.transaction(() => {
      const info = this.stmts.insert.run({ ...c, params: c.params === undefined ? null : JSON.stringify(c.params), requestId: c.requestId ?? null });
      const seq = Number(info.lastInsertRowid);
      this.stmts.setPayload.run(encode(String(seq)), seq);
      return seq;
    });
    tx();
    return this.get(c.id)!;
  }

  get(id: string): Command | null {
    const row = this.stmts.byId.get(id) as Row | undefined;
    return row ? toCommand(row) : null;
  }

  /** The device's newest command submitted with this requestId (kept until pruned), or null. */
  byRequestId(productKey: string, deviceName: string, requestId: string): Command | null {
    const row = this.stmts.byRequestId.get(productKey, deviceName, requestId) as Row | undefined;
    return row ? toCommand(row) : null;
  }

  /** The device's command with this Alink message id (as echoed in a reply), or null. */
  byMsgId(productKey: string, deviceName: string, msgId: string): Command | null {
    if (!/^\d{1,15}$/.test(msgId)) return null;
    const row = this.stmts.byMsgId.get(Number(msgId), productKey, deviceName) as Row | undefined;
    return row ? toCommand(row) : null;
  }

  undelivered(productKey: string, deviceName: string, limit: number): Command[] {
    return (this.stmts.undelivered.all(productKey, deviceName, limit) as Row[]).map(toCommand);
  }

  /** The oldest sent or delivered command on this device topic (replies without an id match it). */
  oldestOpen(productKey: string, deviceName: string, topic: string): Command | null {
    const row = this.stmts.oldestOpen.get(productKey, deviceName, topic) as Row | undefined;
    return row ? toCommand(row) : null;
  }

  /** Commands not yet final for the device (the per-device queue limit counts these). */
  openCount(productKey: string, deviceName: string): number {
    return (this.stmts.openCount.get(productKey, deviceName) as { n: number }).n;
  }

  /** Devices with undelivered commands, and how many each (loaded once at start). */
  undeliveredDevices(): Array<{ productKey: string; deviceName: string; n: number }> {
    return (this.stmts.undeliveredDevices.all() as Array<{ product_key: string; device_name: string; n: number }>).map((r) => ({
      productKey: r.product_key,
      deviceName: r.device_name,
      n: r.n,
    }));
  }

  /** Open commands whose TTL has passed by `now`. */
  due(now: number): Command[] {
    return (this.stmts.due.all(now) as Row[]).map(toCommand);
  }

  /** Each returns true when the row changed (it was in a state the transition starts from). */
  markSent(id: string, via: DeliveryVia, at: number): boolean {
    return this.stmts.sent.run(via, at, at, id).changes > 0;
  }

  markDelivered(id: string, at: number): boolean {
    return this.stmts.delivered.run(at, at, id).changes > 0;
  }

  markReplied(id: string, reply: CommandReply, at: number): boolean {
    const state: CommandState = reply.code === 200 && reply.invalid === undefined ? 'replied-ok' : 'replied-error';
    return this.stmts.replied.run(state, JSON.stringify(reply), at, at, id).changes > 0;
  }

  finish(id: string, state: 'expired' | 'cancelled', at: number): boolean {
    return this.stmts.finish.run(state, at, id).changes > 0;
  }

  list(f: ListFilter): Command[] {
    const where: string[] = [];
    const args: unknown[] = [];
    if (f.productKey !== undefined) {
      where.push('product_key = ?');
      args.push(f.productKey);
    }
    if (f.deviceName !== undefined) {
      where.push('device_name = ?');
      args.push(f.deviceName);
    }
    if (f.state !== undefined) {
      where.push('state = ?');
      args.push(f.state);
    }
    if (f.before !== undefined) {
      where.push('seq < ?');
      args.push(f.before);
    }
    const sql = `SELECT * FROM commands ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY seq DESC LIMIT ?`;
    return (this.db.prepare(sql).all(...args, f.limit) as Row[]).map(toCommand);
  }

  countsByState(): Record<CommandState, number> {
    const out = { queued: 0, sent: 0, delivered: 0, 'replied-ok': 0, 'replied-error': 0, expired: 0, cancelled: 0 };
    for (const r of this.stmts.counts.all() as Array<{ state: CommandState; n: number }>) out[r.state] = r.n;
    return out;
  }

  /** Deletes final commands last changed before `before` (ms); returns how many. */
  prune(before: number): number {
    return this.stmts.prune.run(before).changes;
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}

function toCommand(r: Row): Command {
  const c: Command = {
    id: r.id,
    msgId: String(r.seq),
    productKey: r.product_key,
    deviceName: r.device_name,
    method: r.method,
    topic: r.topic,
    payload: r.payload,
    state: r.state,
    source: r.source,
    createdAt: r.created_at,
    updatedAt: r.updated_at,
    expiresAt: r.expires_at,
    attempts: r.attempts,
  };
  if (r.params !== null) c.params = JSON.parse(r.params) as Record<string, unknown>;
  if (r.via !== null) c.via = r.via;
  if (r.sent_at !== null) c.sentAt = r.sent_at;
  if (r.delivered_at !== null) c.deliveredAt = r.delivered_at;
  if (r.replied_at !== null) c.repliedAt = r.replied_at;
  if (r.reply !== null) c.reply = JSON.parse(r.reply) as CommandReply;
  if (r.request_id !== null) c.requestId = r.request_id;
  return c;
}
