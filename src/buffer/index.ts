// The local SQLite buffer (outbox): records are committed here before the device is acknowledged, and
// read back by the forwarders, each from its own cursor. Rejected payloads go to the dead-letter table.
//
// Group commit: append() and deadLetter() queue their rows and return a promise; everything queued is
// written in a single transaction by the writer thread (writer.ts), then all the promises settle
// together. Up to four commits may be under way (one being written, the next ones queued in the writer),
// so the main thread prepares batches while earlier ones are written; what arrives meanwhile forms the
// next batch. One fsync serves every device that spoke in that time, the commit cost per message falls
// as load rises, and no device is acknowledged before its row is durable. The main thread's own
// connection reads (forwarders, status) and does the once-a-second housekeeping.
//
// The records table always holds one contiguous run of sequence numbers [first, last]: rows leave only
// from the head (forwarded to every upstream, dropped when full, or expired), so counts are arithmetic.
//
// Disk is bounded (maxBytes, maxRecords): "reject-new" refuses appends when full (devices retry later,
// nothing accepted is lost); "drop-oldest" deletes the oldest records in the committing transaction and
// counts them per upstream. Freed pages are reused, returned to the file system by incremental vacuum,
// and the WAL is truncated after checkpoints, so the file shrinks back after a backlog drains.

import { mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import Database from 'better-sqlite3';
import { WanwuError } from '../errors.js';
import type { Logger, Stage, TelemetryRecord, Transport } from '../types.js';
import { CommitError, SQL, SqliteWriter, type CommitBatch, type CommitResult } from './writer.js';

export type WhenFull = 'reject-new' | 'drop-oldest';

export interface BufferOptions {
  /** SQLite file; its folder is created. */
  path: string;
  /** "full" fsyncs the WAL at every commit; "normal" only at checkpoints. */
  sync: 'full' | 'normal';
  logger: Logger;
  /** Names of the configured upstreams: records are kept until every one of them has them. */
  upstreams: readonly string[];
  /** Most bytes the database may use (pages in use; null = no limit). */
  maxBytes?: number | null;
  /** Most records it may hold (null = no limit). */
  maxRecords?: number | null;
  /** What happens when a limit is reached. Default reject-new. */
  whenFull?: WhenFull;
  /** Records older than this many seconds are deleted (counted as expired). null/0 = keep until delivered. */
  ttlS?: number | null;
  /** How often fully forwarded and expired records are deleted, in ms. */
  pruneIntervalMs?: number;
  /** How long a statement waits for the other connection's write lock, in ms. Default 5000. */
  busyTimeoutMs?: number;
  now?: () => number;
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

export type BufferState = 'ok' | 'full' | 'error';

export interface BufferStats {
  path: string;
  /** ok; full (a limit is reached: reject-new refuses, drop-oldest drops); error (the last commit failed). */
  state: BufferState;
  whenFull: WhenFull;
  maxBytes: number | null;
  maxRecords: number | null;
  ttlS: number | null;
  /** Bytes of database pages in use (what maxBytes bounds). */
  bytes: number;
  /** Size on disk of the database file and its WAL. */
  fileBytes: number;
  /** Records stored (pending for some upstream, or forwarded and not yet pruned). */
  records: number;
  /** Records not yet forwarded to every upstream. */
  pending: number;
  /** Age in seconds of the oldest record some upstream still lacks (0 when none). */
  oldestPendingAgeS: number;
  deadLetters: number;
  commits: number;
  committedRecords: number;
  commitErrors: number;
  /** Records refused because the buffer was full (reject-new). */
  refused: number;
  /** Records deleted undelivered to at least one upstream because the buffer was full (drop-oldest). */
  dropped: number;
  /** Records deleted undelivered to at least one upstream because they outlived ttl. */
  expired: number;
  lastError: string | null;
  lastErrorAt: string | null;
  lastSeq: number;
}

export interface UpstreamBufferStats {
  cursor: number;
  pending: number;
  oldestPendingAgeS: number;
  /** Records this upstream never got because the buffer was full (drop-oldest). */
  dropped: number;
  /** Records this upstream never got because they outlived ttl. */
  expired: number;
}

export interface RecordBuffer extends Stage {
  /** Commits the records; resolves once they are durable. Rejects with WANWU_ERR_BUFFER_FULL or WANWU_ERR_STORAGE. */
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
  upstreamStats(upstream: string): UpstreamBufferStats;
}

interface Pending {
  /** Queued rows, flat: route, received_at, body, route, ... (no object per record on the hot path). */
  rows: Array<string | number>;
  /** Records queued (rows.length / 3). */
  count: number;
  bytes: number;
  deadLetters: DeadLetterInput[];
  /** One promise for everything queued in this turn (created by the first waiter): no promise per append. */
  settled: BatchSettlement | null;
}

interface BatchSettlement {
  promise: Promise<void>;
  resolve: () => void;
  reject: (err: WanwuError) => void;
}

function settlement(): BatchSettlement {
  let resolve!: () => void;
  let reject!: (err: WanwuError) => void;
  const promise = new Promise<void>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

const SCHEMA = `
-- route: productKey, deviceName, kind and event joined by U+001F (what topic templates need); the
-- record itself is the JSON body. Three bound columns per row keep appends cheap.
CREATE TABLE IF NOT EXISTS outbox (
  seq         INTEGER PRIMARY KEY AUTOINCREMENT,
  route       TEXT NOT NULL,
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

/**
 * Commits handed to the writer at once: one being written, the rest queued in the writer so it never
 * waits for the main thread between transactions. 4 measured best with 2,000 devices (bench:store,
 * median of 8 runs: 2 -> 207k records/s, 3 -> 235k, 4 -> 253k, 6 and 8 no better).
 */
const COMMITS_IN_FLIGHT = 4;
/** A batch this large goes to the writer at once rather than at the end of the event-loop turn. */
const EARLY_FLUSH_RECORDS = 512;
/** Rows deleted per statement when pruning, dropping or expiring, so one call never stalls the loop long. */
const DELETE_CHUNK = 20_000;
/** Free space kept for reuse before incremental vacuum gives the rest back to the file system. */
const FREE_BYTES_KEPT = 1024 * 1024;
/** Per-row overhead estimate on top of the JSON body (key columns, b-tree cell, page slack). */
const ROW_OVERHEAD = 96;

export function createBuffer(opts: BufferOptions): RecordBuffer {
  return new SqliteBuffer(opts);
}

class SqliteBuffer implements RecordBuffer {
  private db: Database.Database | null = null;
  private statements: ReturnType<SqliteBuffer['prepare']> | null = null;
  private pending: Pending = emptyPending();
  private flushScheduled = false;
  private writer: SqliteWriter | null = null;
  /** The commit under way, and the records and bytes it carries (counted against the limits). */
  private readonly committing = new Set<Promise<void>>();
  private committingCount = 0;
  private committingBytes = 0;
  /** A commit under way deletes records (drop-oldest): the next one waits, as its range depends on it. */
  private dropCommitting = false;
  private readonly cursors = new Map<string, number>();
  private readonly dirtyCursors = new Set<string>();
  private readonly losses = new Map<string, { dropped: number; expired: number }>();
  private readonly listeners = new Set<() => void>();
  private pruneTimer: NodeJS.Timeout | null = null;
  /** Lowest stored seq (last + 1 when empty) and highest seq ever assigned. */
  private first = 1;
  private last = 0;
  private pageSize = 4096;
  private usedBytes = 0;
  private deadLetterCount = 0;
  private commits = 0;
  private committedRecords = 0;
  private commitErrors = 0;
  private refused = 0;
  private dropped = 0;
  private expired = 0;
  private failing = false;
  private lastError: string | null = null;
  private lastErrorAt: string | null = null;
  private readonly now: () => number;
  private readonly whenFull: WhenFull;
  private readonly maxBytes: number | null;
  private readonly maxRecords: number | null;
  private readonly ttlS: number | null;

  constructor(private readonly opts: BufferOptions) {
    this.now = opts.now ?? Date.now;
    this.whenFull = opts.whenFull ?? 'reject-new';
    this.maxBytes = opts.maxBytes ?? null;
    this.maxRecords = opts.maxRecords ?? null;
    this.ttlS = opts.ttlS ? opts.ttlS : null;
    for (const name of opts.upstreams) this.losses.set(name, { dropped: 0, expired: 0 });
  }

  async start(): Promise<void> {
    if (this.db) return;
    try {
      mkdirSync(dirname(this.opts.path), { recursive: true });
      const db = new Database(this.opts.path);
      // Freed pages go back to the file system on request (incremental vacuum); this must be set before
      // the first table exists, so an older database without it is converted once with VACUUM.
      if ((db.pragma('auto_vacuum', { simple: true }) as number) !== 2) {
        // 8 KiB pages: about 25 records per page instead of 12, and measurably faster appends
        // (simulators/bench/store-forward.ts). Takes effect only on a new file (or the VACUUM below).
        db.pragma('page_size = 8192');
        db.pragma('auto_vacuum = INCREMENTAL');
        const tables = db.prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'").pluck().get() as number;
        if (tables > 0) {
          this.opts.logger.info({ path: this.opts.path }, 'converting the buffer to incremental vacuum (one-time VACUUM)');
          db.exec('VACUUM');
        }
      }
      db.pragma('journal_mode = WAL');
      db.pragma(`synchronous = ${this.opts.sync === 'full' ? 'FULL' : 'NORMAL'}`);
      db.pragma(`busy_timeout = ${this.opts.busyTimeoutMs ?? 5000}`);
      // Checkpoints truncate the WAL back to this size, so a burst does not leave a large file behind.
      db.pragma(`journal_size_limit = ${64 * 1024 * 1024}`);
      db.exec(SCHEMA);
      migrateRecordsTable(db);
      this.db = db;
      this.statements = this.prepare(db);
      this.pageSize = db.pragma('page_size', { simple: true }) as number;
    } catch (err) {
      this.db?.close();
      this.db = null;
      this.statements = null;
      throw new WanwuError('WANWU_ERR_STORAGE', `cannot open the buffer ${this.opts.path}: ${(err as Error).message}`, { cause: err });
    }
    const st = this.statements;
    this.last = st.lastSeq.pluck().get() as number;
    this.first = (st.firstSeq.pluck().get() as number | null) ?? this.last + 1;
    this.deadLetterCount = st.countDeadLetters.pluck().get() as number;
    this.refreshUsedBytes();
    const stored = new Map((st.allCursors.all() as Array<{ upstream: string; seq: number }>).map((c) => [c.upstream, c.seq]));
    // A new upstream starts at the oldest record still stored, so it receives the whole backlog.
    for (const name of this.opts.upstreams) this.cursors.set(name, Math.max(stored.get(name) ?? 0, this.first - 1));
    try {
      this.writer = await SqliteWriter.open({ path: this.opts.path, sync: this.opts.sync, busyTimeoutMs: this.opts.busyTimeoutMs ?? 5000 });
    } catch (err) {
      this.db?.close();
      this.db = null;
      this.statements = null;
      throw new WanwuError('WANWU_ERR_STORAGE', `cannot open the buffer writer on ${this.opts.path}: ${(err as Error).message}`, { cause: err });
    }
    this.pruneTimer = setInterval(() => this.maintain(), this.opts.pruneIntervalMs ?? 1000);
    this.pruneTimer.unref();
  }

  async stop(): Promise<void> {
    if (!this.db) return;
    if (this.pruneTimer) clearInterval(this.pruneTimer);
    this.pruneTimer = null;
    // Everything queued is committed (or fails) before the connections close.
    while (this.committing.size > 0 || this.pending.settled !== null || this.dirtyCursors.size > 0) {
      if (this.committing.size === 0) this.flush();
      if (this.committing.size === 0) break;
      await Promise.all(this.committing);
    }
    await this.writer?.close();
    this.writer = null;
    if (!this.db) return;
    this.maintain();
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
    if (!this.db) return Promise.reject(new WanwuError('WANWU_ERR_STORAGE', 'the buffer is not open'));
    // Straight into the pending batch (the hot path allocates only the JSON and the route), taken
    // back out if reject-new refuses.
    const rows = this.pending.rows;
    const mark = rows.length;
    let bytes = 0;
    for (let i = 0; i < records.length; i++) {
      const r = records[i]!;
      const body = JSON.stringify(r);
      rows.push(routeOf(r), r.receivedAt, body);
      bytes += body.length + ROW_OVERHEAD;
    }
    if (this.whenFull === 'reject-new' && this.wouldOverflow(records.length, bytes)) {
      rows.length = mark;
      this.refused += records.length;
      return Promise.reject(new WanwuError('WANWU_ERR_BUFFER_FULL', `the buffer is full (${this.limitText()}); retry later`));
    }
    return this.enqueue((p) => {
      p.count += records.length;
      p.bytes += bytes;
    });
  }

  deadLetter(dl: DeadLetterInput): Promise<void> {
    return this.enqueue((p) => p.deadLetters.push(dl));
  }

  readAfter(afterSeq: number, limit: number): StoredRecord[] {
    if (!this.statements) return [];
    const rows = this.statements.readAfter.all(afterSeq, limit) as Array<{ seq: number; route: string; body: string }>;
    return rows.map(({ seq, route, body }) => {
      const [productKey = '', deviceName = '', kind = '', event = ''] = route.split(ROUTE_SEP);
      return { seq, productKey, deviceName, kind, event: event === '' ? null : event, body };
    });
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
    this.refreshFromDisk();
  }

  reviseDeadLetter(id: number, code: string, message: string): void {
    this.requireOpen().reviseDeadLetter.run(code, message, id);
  }

  stats(): BufferStats {
    const minCursor = this.minCursor();
    return {
      path: this.opts.path,
      state: this.failing ? 'error' : this.isFull() ? 'full' : 'ok',
      whenFull: this.whenFull,
      maxBytes: this.maxBytes,
      maxRecords: this.maxRecords,
      ttlS: this.ttlS,
      bytes: this.usedBytes,
      fileBytes: fileSize(this.opts.path) + fileSize(`${this.opts.path}-wal`),
      records: this.recordCount(),
      pending: this.last - minCursor,
      oldestPendingAgeS: this.ageAfter(minCursor),
      deadLetters: this.deadLetterCount,
      commits: this.commits,
      committedRecords: this.committedRecords,
      commitErrors: this.commitErrors,
      refused: this.refused,
      dropped: this.dropped,
      expired: this.expired,
      lastError: this.lastError,
      lastErrorAt: this.lastErrorAt,
      lastSeq: this.last,
    };
  }

  upstreamStats(upstream: string): UpstreamBufferStats {
    const cursor = this.cursor(upstream);
    const losses = this.losses.get(upstream) ?? { dropped: 0, expired: 0 };
    return {
      cursor,
      pending: Math.max(0, this.last - cursor),
      oldestPendingAgeS: this.ageAfter(cursor),
      dropped: losses.dropped,
      expired: losses.expired,
    };
  }

  private recordCount(): number {
    return this.last - this.first + 1;
  }

  /** True when adding `count` records of about `bytes` would pass a limit. */
  private wouldOverflow(count: number, bytes: number): boolean {
    if (this.maxRecords !== null && this.recordCount() + this.committingCount + this.pending.count + count > this.maxRecords) return true;
    if (this.maxBytes !== null && this.usedBytes + this.committingBytes + this.pending.bytes + bytes > this.maxBytes) return true;
    return false;
  }

  private isFull(): boolean {
    if (this.maxRecords !== null && this.recordCount() >= this.maxRecords) return true;
    // "Full" for bytes: not even one more average record fits.
    if (this.maxBytes !== null && this.usedBytes + this.bytesPerRecord() > this.maxBytes) return true;
    return false;
  }

  private limitText(): string {
    const parts: string[] = [];
    if (this.maxRecords !== null) parts.push(`${this.recordCount()} of ${this.maxRecords} records`);
    if (this.maxBytes !== null) parts.push(`${this.usedBytes} of ${this.maxBytes} bytes`);
    return parts.join(', ');
  }

  private bytesPerRecord(): number {
    const n = this.recordCount();
    return n > 0 ? Math.max(64, this.usedBytes / n) : 512;
  }

  private ageAfter(seq: number): number {
    if (!this.statements || seq >= this.last) return 0;
    const at = this.statements.receivedAtAfter.pluck().get(seq) as number | undefined;
    return at === undefined ? 0 : Math.round(Math.max(0, (this.now() - at) / 1000) * 10) / 10;
  }

  private requireOpen(): NonNullable<SqliteBuffer['statements']> {
    if (!this.statements) throw new WanwuError('WANWU_ERR_STORAGE', 'the buffer is not open');
    return this.statements;
  }

  /**
   * Picks up what another process committed to the same file (`wanwu deadletters replay` while the
   * gateway runs) and wakes the forwarders for new records.
   */
  private refreshFromDisk(): void {
    const st = this.statements;
    if (!st) return;
    this.deadLetterCount = st.countDeadLetters.pluck().get() as number;
    const last = st.lastSeq.pluck().get() as number;
    if (last > this.last) {
      if (this.first > this.last) this.first = (st.firstSeq.pluck().get() as number | null) ?? last + 1;
      this.last = last;
      for (const listener of this.listeners) listener();
    }
  }

  private refreshUsedBytes(): void {
    const st = this.statements;
    if (!st) return;
    const pages = st.pageCount.pluck().get() as number;
    const free = st.freelistCount.pluck().get() as number;
    this.usedBytes = (pages - free) * this.pageSize;
  }

  private enqueue(add: (p: Pending) => void): Promise<void> {
    if (!this.db) return Promise.reject(new WanwuError('WANWU_ERR_STORAGE', 'the buffer is not open'));
    add(this.pending);
    const settled = (this.pending.settled ??= settlement());
    // A burst (many devices answered by one commit speak again at once) is cut into batches the writer
    // can start on while the rest is still being prepared, instead of one batch at the end of the turn.
    if (this.pending.count >= EARLY_FLUSH_RECORDS && this.committing.size < COMMITS_IN_FLIGHT) this.flush();
    else this.scheduleFlush();
    return settled.promise;
  }

  private scheduleFlush(): void {
    if (this.flushScheduled) return;
    this.flushScheduled = true;
    setImmediate(() => this.flush());
  }

  /** How many of the oldest records drop-oldest must delete before this batch fits. */
  private overflowToDrop(batch: Pending): number {
    if (this.whenFull !== 'drop-oldest') return 0;
    let drop = 0;
    if (this.maxRecords !== null) drop = Math.max(drop, this.recordCount() + this.committingCount + batch.count - this.maxRecords);
    if (this.maxBytes !== null) {
      const over = this.usedBytes + this.committingBytes + batch.bytes - this.maxBytes;
      if (over > 0) drop = Math.max(drop, Math.ceil(over / this.bytesPerRecord()));
    }
    return Math.min(drop, this.recordCount());
  }

  /**
   * Hands everything queued to the writer as one transaction, then settles every waiter. While a
   * commit is under way new work waits: the commit's end flushes again, so batches grow with load.
   */
  private flush(): void {
    this.flushScheduled = false;
    if (this.committing.size >= COMMITS_IN_FLIGHT || this.dropCommitting) return;
    const batch = this.pending;
    if (batch.settled === null && this.dirtyCursors.size === 0) return;
    const drop = this.overflowToDrop(batch);
    // Which records a drop deletes depends on every earlier commit: it goes alone.
    if (drop > 0 && this.committing.size > 0) return;
    this.pending = emptyPending();
    const writer = this.writer;
    if (!writer || !this.statements) {
      batch.settled?.reject(new WanwuError('WANWU_ERR_STORAGE', 'the buffer is closed'));
      return;
    }
    const dropThrough = this.first + drop - 1;
    const lossByUpstream = drop > 0 ? this.lossesThrough(dropThrough) : null;
    if (drop > 0) this.opts.logger.warn({ dropped: drop, through: dropThrough }, 'buffer full: dropping the oldest records');
    if (lossByUpstream) for (const name of lossByUpstream.keys()) this.dirtyCursors.add(name);
    const cursorUpdates = [...this.dirtyCursors].map((name) => [name, Math.max(this.cursors.get(name)!, lossByUpstream?.has(name) ? dropThrough : 0)] as const);
    this.dirtyCursors.clear();
    const work: CommitBatch = { rows: batch.rows, deadLetters: batch.deadLetters, cursorUpdates, dropThrough: drop > 0 ? dropThrough : 0 };
    this.committingCount += batch.count;
    this.committingBytes += batch.bytes;
    this.dropCommitting = drop > 0;
    const commit: Promise<void> = writer
      .commit(work)
      .then(
        (result) => this.committed(batch, cursorUpdates, drop, dropThrough, lossByUpstream, result),
        (err: unknown) => this.commitFailed(batch, cursorUpdates, err),
      )
      .finally(() => {
        this.committing.delete(commit);
        this.committingCount -= batch.count;
        this.committingBytes -= batch.bytes;
        if (drop > 0) this.dropCommitting = false;
        // Waiting devices go next at once; cursor moves alone wait for the next append or tick, so a
        // failing disk is not retried in a tight loop.
        if (this.pending.settled !== null) this.flush();
        else if (this.dirtyCursors.size > 0 && !this.failing) this.scheduleFlush();
      });
    this.committing.add(commit);
  }

  private committed(
    batch: Pending,
    cursorUpdates: ReadonlyArray<readonly [string, number]>,
    drop: number,
    dropThrough: number,
    lossByUpstream: Map<string, number> | null,
    result: CommitResult,
  ): void {
    if (this.failing) this.opts.logger.info({}, 'buffer commits succeed again');
    this.failing = false;
    this.commits++;
    this.committedRecords += batch.count;
    this.deadLetterCount += batch.deadLetters.length;
    for (const [name, seq] of cursorUpdates) this.cursors.set(name, Math.max(this.cursors.get(name) ?? 0, seq));
    if (lossByUpstream) {
      this.dropped += undeliveredCount(lossByUpstream);
      for (const [name, n] of lossByUpstream) this.losses.get(name)!.dropped += n;
    }
    if (drop > 0) this.first = Math.max(this.first, dropThrough + 1);
    if (batch.count > 0) this.last = Math.max(this.last, result.lastSeq);
    // From the writer, which read it on its own connection right after the commit (two PRAGMAs on the
    // main thread per commit were a measurable share of the append path).
    if (batch.count > 0 || drop > 0) this.usedBytes = result.usedPages * this.pageSize;
    batch.settled?.resolve();
    if (batch.count > 0) {
      for (const listener of this.listeners) listener();
    }
  }

  private commitFailed(batch: Pending, cursorUpdates: ReadonlyArray<readonly [string, number]>, err: unknown): void {
    this.commitErrors++;
    this.failing = true;
    this.lastError = (err as Error).message;
    this.lastErrorAt = new Date(this.now()).toISOString();
    // The rows are not durable: nobody is acknowledged, devices retry. Cursor moves are re-queued.
    for (const [name] of cursorUpdates) this.dirtyCursors.add(name);
    const error = new WanwuError('WANWU_ERR_STORAGE', `buffer commit failed: ${(err as Error).message}`, { cause: err });
    const sqlite = err instanceof CommitError ? err.sqliteCode : undefined;
    this.opts.logger.error({ err: error.message, code: error.code, sqlite }, 'buffer commit failed');
    batch.settled?.reject(error);
  }

  /** For deleting every record up to `seq`: how many each upstream had not acknowledged yet. */
  private lossesThrough(seq: number): Map<string, number> {
    const out = new Map<string, number>();
    for (const name of this.opts.upstreams) {
      const cursor = Math.max(this.cursors.get(name) ?? 0, this.first - 1);
      if (seq > cursor) out.set(name, seq - cursor);
    }
    return out;
  }

  private minCursor(): number {
    let min = this.last;
    for (const name of this.opts.upstreams) min = Math.min(min, this.cursors.get(name) ?? 0);
    return min;
  }

  /**
   * Housekeeping, once a second: records every upstream has are deleted; records past ttl are
   * expired; free pages beyond a small reserve go back to the file system.
   */
  private maintain(): void {
    const st = this.statements;
    if (!st) return;
    try {
      this.refreshFromDisk();
      // In chunks, for at most ~100 ms a tick, so a large drained backlog goes quickly without
      // holding the event loop (and the devices) for long.
      const until = performance.now() + 100;
      while (this.minCursor() >= this.first && performance.now() < until) {
        const forwarded = Math.min(this.minCursor(), this.first - 1 + DELETE_CHUNK);
        st.deleteThrough.run(forwarded);
        this.first = forwarded + 1;
      }
      if (this.ttlS !== null) this.expire(st);
      const free = st.freelistCount.pluck().get() as number;
      const kept = FREE_BYTES_KEPT / this.pageSize;
      if (free > kept) {
        this.db!.pragma(`incremental_vacuum(${free - kept})`);
        // The file is cut to its new size when the WAL is copied back; do it now rather than at the
        // next automatic checkpoint, and leave the WAL empty.
        this.db!.pragma('wal_checkpoint(TRUNCATE)');
      }
      this.refreshUsedBytes();
    } catch (err) {
      this.opts.logger.warn({ err: (err as Error).message }, 'buffer housekeeping failed; will retry');
    }
  }

  /** Deletes the run of records older than ttl at the head of the table, counted per upstream. */
  private expire(st: NonNullable<SqliteBuffer['statements']>): void {
    const cutoff = this.now() - this.ttlS! * 1000;
    const firstFresh = st.firstNotBefore.pluck().get(this.first - 1, cutoff) as number | undefined;
    const through = Math.min((firstFresh ?? this.last + 1) - 1, this.first - 1 + DELETE_CHUNK);
    if (through < this.first) return;
    const losses = this.lossesThrough(through);
    const updates = [...losses.keys()].map((name) => [name, through] as const);
    st.expireThrough(through, updates);
    for (const [name, n] of losses) {
      this.losses.get(name)!.expired += n;
      this.cursors.set(name, through);
    }
    this.expired += undeliveredCount(losses);
    this.first = through + 1;
  }

  private prepare(db: Database.Database) {
    // The hot inserts run in the writer thread (writer.ts); this connection inserts only for replay.
    const insertRecord = db.prepare(SQL.insertRecord);
    const upsertCursor = db.prepare(SQL.upsertCursor);
    const deleteThrough = db.prepare(SQL.deleteThrough);
    const deleteDeadLetter = db.prepare('DELETE FROM dead_letters WHERE id = ?');
    return {
      deleteThrough,
      expireThrough: db.transaction((through: number, updates: ReadonlyArray<readonly [string, number]>) => {
        deleteThrough.run(through);
        for (const [name, seq] of updates) upsertCursor.run(name, seq);
      }),
      lastSeq: db.prepare(SQL.lastSeq),
      firstSeq: db.prepare('SELECT MIN(seq) FROM outbox'),
      firstNotBefore: db.prepare('SELECT seq FROM outbox WHERE seq > ? AND received_at >= ? ORDER BY seq LIMIT 1'),
      readAfter: db.prepare('SELECT seq, route, body FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?'),
      receivedAtAfter: db.prepare('SELECT received_at FROM outbox WHERE seq > ? ORDER BY seq LIMIT 1'),
      allCursors: db.prepare('SELECT upstream, seq FROM cursors'),
      countDeadLetters: db.prepare('SELECT COUNT(*) FROM dead_letters'),
      listDeadLetters: db.prepare(
        'SELECT * FROM dead_letters WHERE id > @afterId AND (@productKey IS NULL OR product_key = @productKey) ORDER BY id LIMIT @limit',
      ),
      replaceDeadLetter: db.transaction((id: number, records: readonly TelemetryRecord[]) => {
        for (const r of records) insertRecord.run(routeOf(r), r.receivedAt, JSON.stringify(r));
        if (deleteDeadLetter.run(id).changes !== 1) throw new Error(`dead letter ${id} is gone (replayed by someone else?)`);
      }),
      reviseDeadLetter: db.prepare('UPDATE dead_letters SET code = ?, message = ? WHERE id = ?'),
      pageCount: db.prepare('PRAGMA page_count'),
      freelistCount: db.prepare('PRAGMA freelist_count'),
    };
  }
}

/** Separates the parts of the route column (identifiers never contain it: src/thing-model/topic.ts). */
const ROUTE_SEP = '\u001f';

function routeOf(r: TelemetryRecord): string {
  return `${r.productKey}${ROUTE_SEP}${r.deviceName}${ROUTE_SEP}${r.kind}${ROUTE_SEP}${r.event ?? ''}`;
}

/**
 * Databases written before the outbox table (a `records` table with one column per route part) are
 * moved over once, keeping every seq so the upstream cursors stay valid.
 */
function migrateRecordsTable(db: Database.Database): void {
  const old = db.prepare("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'records'").pluck().get() as number;
  if (old === 0) return;
  db.transaction(() => {
    db.exec(`INSERT INTO outbox (seq, route, received_at, body)
      SELECT seq, product_key || char(31) || device_name || char(31) || kind || char(31) || COALESCE(event, ''), received_at, body FROM records`);
    db.exec(`UPDATE sqlite_sequence SET seq = MAX(seq, COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'records'), 0)) WHERE name = 'outbox'`);
    db.exec(`INSERT INTO sqlite_sequence (name, seq) SELECT 'outbox', seq FROM sqlite_sequence WHERE name = 'records'
      AND NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'outbox')`);
    db.exec('DROP TABLE records');
  })();
}

/** Records lost to at least one upstream: the largest per-upstream loss (each record counts once). */
function undeliveredCount(losses: ReadonlyMap<string, number>): number {
  let max = 0;
  for (const n of losses.values()) max = Math.max(max, n);
  return max;
}

function emptyPending(): Pending {
  return { rows: [], count: 0, bytes: 0, deadLetters: [], settled: null };
}

function fileSize(path: string): number {
  try {
    return statSync(path).size;
  } catch {
    return 0;
  }
}
