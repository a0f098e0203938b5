// The local SQLite buffer (outbox): records are committed here before the device is acknowledged, and
// read back by the forwarders, each from its own cursor. Rejected payloads go to the dead-letter table.
//
// Group commit: append() and deadLetter() queue their rows and return a promise; every row queued during
// one turn of the event loop is written in a single transaction at setImmediate time, then all the
// promises settle together. One fsync serves every device that spoke in that turn, so the commit cost
// per message falls as load rises while no device is acknowledged before its row is durable.

import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { WanwuError } from '../errors.js';
import type { Logger, Stage, TelemetryRecord, Transport } from '../types.js';

export interface BufferOptions {
  /** SQLite file; its folder is created. */
  path: string;
  /** "full" fsyncs the WAL at every commit; "normal" only at checkpoints. */
  sync: 'full' | 'normal';
  logger: Logger;
  /** Names of the configured upstreams: records are kept until every one of them has them. */
  upstreams: readonly string[];
  /** How often fully forwarded records are deleted, in ms. */
  pruneIntervalMs?: number;
}

/** A record as the forwarder reads it back: the JSON body is stored once and sent as is. */
export interface StoredRecord {
  seq: number;
  productKey: string;
  deviceName: string;
  kind: string;
  event: string | null;
  body: string;
}

export interface DeadLetterInput {
  transport: Transport;
  productKey?: string | undefined;
  deviceName?: string | undefined;
  topic: string;
  peer: string;
  receivedAt: number;
  code: string;
  message: string;
  payload: Buffer;
}

export interface DeadLetter extends DeadLetterInput {
  id: number;
}

export interface BufferStats {
  path: string;
  /** Records committed and not yet forwarded to every upstream. */
  pending: number;
  /** Records stored in the table (pending plus forwarded but not yet pruned). */
  records: number;
  /** Age in seconds of the oldest record some upstream still lacks (0 when none). */
  oldestPendingAgeS: number;
  deadLetters: number;
  commits: number;
  committedRecords: number;
  commitErrors: number;
  lastSeq: number;
}

export interface RecordBuffer extends Stage {
  /** Commits the records; resolves once they are durable. Rejects with WANWU_ERR_STORAGE. */
  append(records: readonly TelemetryRecord[]): Promise<void>;
  /** Commits a dead letter; resolves once it is durable. Rejects with WANWU_ERR_STORAGE. */
  deadLetter(dl: DeadLetterInput): Promise<void>;
  /** Records with seq > afterSeq, oldest first. */
  readAfter(afterSeq: number, limit: number): StoredRecord[];
  /** The upstream's cursor: the seq of the last record it acknowledged (0 = none). */
  cursor(upstream: string): number;
  /** Moves the upstream's cursor forward; written with the next commit (at-least-once if lost). */
  setCursor(upstream: string, seq: number): void;
  lastSeq(): number;
  /** Called after every commit that added records. Returns an unsubscribe function. */
  onAppend(listener: () => void): () => void;
  /** Dead letters, oldest first, optionally of one product, after a given id (for paging). */
  listDeadLetters(opts?: { productKey?: string; afterId?: number; limit?: number }): DeadLetter[];
  /** Replay succeeded: the records take the dead letter's place, in one transaction. */
  replaceDeadLetter(id: number, records: readonly TelemetryRecord[]): void;
  /** Replay failed again: the dead letter keeps its payload with the new reason. */
  reviseDeadLetter(id: number, code: string, message: string): void;
  stats(): BufferStats;
}

interface Pending {
  records: TelemetryRecord[];
  deadLetters: DeadLetterInput[];
  waiters: Array<{ resolve: () => void; reject: (err: WanwuError) => void }>;
}

const SCHEMA = `
CREATE TABLE IF NOT EXISTS records (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  id          TEXT NOT NULL,
  product_key TEXT NOT NULL,
  device_name TEXT NOT NULL,
  kind        TEXT NOT NULL,
  event       TEXT,
  received_at INTEGER NOT NULL,
  body        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS cursors (
  upstream TEXT PRIMARY KEY,
  seq      INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dead_letters (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  received_at INTEGER NOT NULL,
  transport   TEXT NOT NULL,
  product_key TEXT,
  device_name TEXT,
  topic       TEXT NOT NULL,
  peer        TEXT NOT NULL,
  code        TEXT NOT NULL,
  message     TEXT NOT NULL,
  payload     BLOB NOT NULL
);
`;

export function createBuffer(opts: BufferOptions): RecordBuffer {
  return new SqliteBuffer(opts);
}

class SqliteBuffer implements RecordBuffer {
  private db: Database.Database | null = null;
  private statements: ReturnType<SqliteBuffer['prepare']> | null = null;
  private pending: Pending = emptyPending();
  private flushScheduled = false;
  private readonly cursors = new Map<string, number>();
  private readonly dirtyCursors = new Set<string>();
  private readonly listeners = new Set<() => void>();
  private pruneTimer: NodeJS.Timeout | null = null;
  private last = 0;
  private deadLetterCount = 0;
  private commits = 0;
  private committedRecords = 0;
  private commitErrors = 0;

  constructor(private readonly opts: BufferOptions) {}

  async start(): Promise<void> {
    if (this.db) return;
    try {
      mkdirSync(dirname(this.opts.path), { recursive: true });
      const db = new Database(this.opts.path);
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${this.opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
      db.pragma('busy_timeout = 5000');
      db.exec(SCHEMA);
      this.db = db;
      this.statements = this.prepare(db);
    } catch (err) {
      this.db?.close();
      this.db = null;
      throw new WanwuError('WANWU_ERR_STORAGE', `cannot open the buffer ${this.opts.path}: ${(err as Error).message}`, { cause: err });
    }
    const st = this.statements;
    this.last = st.lastSeq.pluck().get() as number;
    this.deadLetterCount = st.countDeadLetters.pluck().get() as number;
    const stored = new Map((st.allCursors.all() as Array<{ upstream: string; seq: number }>).map((c) => [c.upstream, c.seq]));
    // A new upstream starts at the oldest record still stored, so it receives the whole backlog.
    const firstSeq = ((st.firstSeq.pluck().get() as number | null) ?? this.last + 1) - 1;
    for (const name of this.opts.upstreams) this.cursors.set(name, stored.get(name) ?? firstSeq);
    this.pruneTimer = setInterval(() => this.prune(), this.opts.pruneIntervalMs ?? 1000);
    this.pruneTimer.unref();
  }

  async stop(): Promise<void> {
    if (!this.db) return;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = null;
    this.flush();
    this.prune();
    try {
      this.db.pragma('wal_checkpoint(TRUNCATE)');
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'buffer checkpoint at stop failed');
    }
    this.db.close();
    this.db = null;
    this.statements = null;
  }

  append(records: readonly TelemetryRecord[]): Promise<void> {
    return this.enqueue((p) => {
      for (const r of records) p.records.push(r);
    });
  }

  deadLetter(dl: DeadLetterInput): Promise<void> {
    return this.enqueue((p) => p.deadLetters.push(dl));
  }

  readAfter(afterSeq: number, limit: number): StoredRecord[] {
    if (!this.statements) return [];
    return this.statements.readAfter.all(afterSeq, limit) as StoredRecord[];
  }

  cursor(upstream: string): number {
    return this.cursors.get(upstream) ?? 0;
  }

  setCursor(upstream: string, seq: number): void {
    if (seq <= (this.cursors.get(upstream) ?? 0)) return;
    this.cursors.set(upstream, seq);
    this.dirtyCursors.add(upstream);
    this.scheduleFlush();
  }

  lastSeq(): number {
    return this.last;
  }

  onAppend(listener: () => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  listDeadLetters(opts: { productKey?: string; afterId?: number; limit?: number } = {}): DeadLetter[] {
    if (!this.statements) return [];
    const rows = this.statements.listDeadLetters.all({
      productKey: opts.productKey ?? null,
      afterId: opts.afterId ?? 0,
      limit: opts.limit ?? 100,
    }) as Array<Record<string, unknown>>;
    return rows.map((r) => ({
      id: r.id as number,
      receivedAt: r.received_at as number,
      transport: r.transport as Transport,
      productKey: (r.product_key as string | null) ?? undefined,
      deviceName: (r.device_name as string | null) ?? undefined,
      topic: r.topic as string,
      peer: r.peer as string,
      code: r.code as string,
      message: r.message as string,
      payload: r.payload as Buffer,
    }));
  }

  replaceDeadLetter(id: number, records: readonly TelemetryRecord[]): void {
    const st = this.requireOpen();
    try {
      st.replaceDeadLetter(id, records);
    } catch (err) {
      throw new WanwuError('WANWU_ERR_STORAGE', `replay commit failed: ${(err as Error).message}`, { cause: err });
    }
    this.refreshLastSeq();
  }

  reviseDeadLetter(id: number, code: string, message: string): void {
    this.requireOpen().reviseDeadLetter.run(code, message, id);
  }

  stats(): BufferStats {
    const minCursor = this.minCursor();
    let oldestPendingAgeS = 0;
    let records = 0;
    if (this.statements) {
      records = this.last - (((this.statements.firstSeq.pluck().get() as number | null) ?? this.last + 1) - 1);
      if (minCursor < this.last) {
        const at = this.statements.receivedAtAfter.pluck().get(minCursor) as number | undefined;
        if (at !== undefined) oldestPendingAgeS = Math.max(0, (Date.now() - at) / 1000);
      }
    }
    return {
      path: this.opts.path,
      pending: this.last - minCursor,
      records,
      oldestPendingAgeS: Math.round(oldestPendingAgeS * 10) / 10,
      deadLetters: this.deadLetterCount,
      commits: this.commits,
      committedRecords: this.committedRecords,
      commitErrors: this.commitErrors,
      lastSeq: this.last,
    };
  }

  private requireOpen(): NonNullable<SqliteBuffer['statements']> {
    if (!this.statements) throw new WanwuError('WANWU_ERR_STORAGE', 'the buffer is not open');
    return this.statements;
  }

  /**
   * Picks up records another process committed to the same file (`wanwu deadletters replay` while
   * the gateway runs) and wakes the forwarders for them.
   */
  private refreshLastSeq(): void {
    const st = this.statements;
    if (!st) return;
    this.deadLetterCount = st.countDeadLetters.pluck().get() as number;
    const last = st.lastSeq.pluck().get() as number;
    if (last > this.last) {
      this.last = last;
      for (const listener of this.listeners) listener();
    }
  }

  private enqueue(add: (p: Pending) => void): Promise<void> {
    if (!this.db) return Promise.reject(new WanwuError('WANWU_ERR_STORAGE', 'the buffer is not open'));
    return new Promise<void>((resolve, reject) => {
      add(this.pending);
      this.pending.waiters.push({ resolve, reject });
      this.scheduleFlush();
    });
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /** Writes everything queued in one transaction, then settles every waiter. */
  private flush(): void {
    this.flushScheduled = false;
    const batch = this.pending;
    if (batch.waiters.length === 0 && this.dirtyCursors.size === 0) return;
    this.pending = emptyPending();
    const st = this.statements;
    if (!st) {
      const err = new WanwuError('WANWU_ERR_STORAGE', 'the buffer is closed');
      for (const w of batch.waiters) w.reject(err);
      return;
    }
    const cursorUpdates = [...this.dirtyCursors].map((name) => [name, this.cursors.get(name)!] as const);
    this.dirtyCursors.clear();
    let lastSeq = this.last;
    try {
      st.commit(batch, cursorUpdates);
      if (batch.records.length > 0) lastSeq = st.lastSeq.pluck().get() as number;
    } catch (err) {
      this.commitErrors++;
      // The rows are not durable: nobody is acknowledged, devices retry. Cursor moves are re-queued.
      for (const [name] of cursorUpdates) this.dirtyCursors.add(name);
      const error = new WanwuError('WANWU_ERR_STORAGE', `buffer commit failed: ${(err as Error).message}`, { cause: err });
      this.opts.logger.error({ err: error.message, code: error.code }, 'buffer commit failed');
      for (const w of batch.waiters) w.reject(error);
      return;
    }
    this.commits++;
    this.committedRecords += batch.records.length;
    this.deadLetterCount += batch.deadLetters.length;
    this.last = lastSeq;
    for (const w of batch.waiters) w.resolve();
    if (batch.records.length > 0) {
      for (const listener of this.listeners) listener();
    }
  }

  private minCursor(): number {
    let min = this.last;
    for (const name of this.opts.upstreams) min = Math.min(min, this.cursors.get(name) ?? 0);
    return min;
  }

  /** Deletes records every upstream has acknowledged, a bounded chunk per call so the loop never stalls. */
  private prune(): void {
    const st = this.statements;
    if (!st) return;
    try {
      this.refreshLastSeq();
      st.prune.run(this.minCursor(), 50_000);
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'buffer prune failed; will retry');
    }
  }

  private prepare(db: Database.Database) {
    const insertRecord = db.prepare(
      'INSERT INTO records (id, product_key, device_name, kind, event, received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    const insertDeadLetter = db.prepare(
      'INSERT INTO dead_letters (received_at, transport, product_key, device_name, topic, peer, code, message, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
    );
    const upsertCursor = db.prepare(
      'INSERT INTO cursors (upstream, seq) VALUES (?, ?) ON CONFLICT (upstream) DO UPDATE SET seq = excluded.seq',
    );
    const deleteDeadLetter = db.prepare('DELETE FROM dead_letters WHERE id = ?');
    const commit = db.transaction((batch: Pending, cursorUpdates: ReadonlyArray<readonly [string, number]>) => {
      for (const r of batch.records) {
        insertRecord.run(r.id, r.productKey, r.deviceName, r.kind, r.event ?? null, r.receivedAt, JSON.stringify(r));
      }
      for (const d of batch.deadLetters) {
        insertDeadLetter.run(d.receivedAt, d.transport, d.productKey ?? null, d.deviceName ?? null, d.topic, d.peer, d.code, d.message, d.payload);
      }
      for (const [name, seq] of cursorUpdates) upsertCursor.run(name, seq);
    });
    return {
      commit,
      lastSeq: db.prepare("SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'records'), 0)"),
      firstSeq: db.prepare('SELECT MIN(seq) FROM records'),
      readAfter: db.prepare(
        'SELECT seq, product_key AS productKey, device_name AS deviceName, kind, event, body FROM records WHERE seq > ? ORDER BY seq LIMIT ?',
      ),
      receivedAtAfter: db.prepare('SELECT received_at FROM records WHERE seq > ? ORDER BY seq LIMIT 1'),
      allCursors: db.prepare('SELECT upstream, seq FROM cursors'),
      countDeadLetters: db.prepare('SELECT COUNT(*) FROM dead_letters'),
      listDeadLetters: db.prepare(
        'SELECT * FROM dead_letters WHERE id > @afterId AND (@productKey IS NULL OR product_key = @productKey) ORDER BY id LIMIT @limit',
      ),
      replaceDeadLetter: db.transaction((id: number, records: readonly TelemetryRecord[]) => {
        for (const r of records) {
          insertRecord.run(r.id, r.productKey, r.deviceName, r.kind, r.event ?? null, r.receivedAt, JSON.stringify(r));
        }
        if (deleteDeadLetter.run(id).changes !== 1) throw new Error(`dead letter ${id} is gone (replayed by someone else?)`);
      }),
      reviseDeadLetter: db.prepare('UPDATE dead_letters SET code = ?, message = ? WHERE id = ?'),
      prune: db.prepare('DELETE FROM records WHERE seq IN (SELECT seq FROM records WHERE seq <= ? ORDER BY seq LIMIT ?)'),
    };
  }
}

function emptyPending(): Pending {
  return { records: [], deadLetters: [], waiters: [] };
}
