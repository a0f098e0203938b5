// The buffer's committer: a worker thread with its own SQLite connection that runs the group-commit
// transactions (inserts, dead letters, cursor moves, drop-oldest deletes) and their fsync.
//
// Why a thread: better-sqlite3 is synchronous, so a commit on the main thread stops every socket for
// the length of the inserts and the fsync. Here the main thread keeps reading packets, decoding and
// serializing the next batch while the previous one is written: on two cores the two halves overlap,
// and a device is still acknowledged only after the worker reports its batch durable.
//
// WAL mode lets the main thread's connection keep reading (forwarders) and doing housekeeping while
// the worker writes; the two writers take turns through SQLite's lock (busy_timeout).

import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** SQL shared by the worker and the main connection. */
export const SQL = {
  insertRecord: 'INSERT INTO outbox (route, received_at, body) VALUES (?, ?, ?)',
  insertMany: (rows: number) => `INSERT INTO outbox (route, received_at, body) VALUES ${Array.from({ length: rows }, () => '(?, ?, ?)').join(', ')}`,
  insertDeadLetter:
    'INSERT INTO dead_letters (received_at, transport, product_key, device_name, topic, peer, code, message, payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)',
  upsertCursor: 'INSERT INTO cursors (upstream, seq) VALUES (?, ?) ON CONFLICT (upstream) DO UPDATE SET seq = MAX(seq, excluded.seq)',
  deleteThrough: 'DELETE FROM outbox WHERE seq <= ?',
  lastSeq: "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'outbox'), 0)",
} as const;

/** The writer's page cache (SQLite's default is 2 MiB): room for a batch of ~50k records. */
const CACHE_KIB = 32 * 1024;

/** Records inserted per multi-row INSERT statement (the rest of a batch goes one by one). */
export const ROWS_PER_INSERT = 16;

export interface DeadLetterRow {
  receivedAt: number;
  transport: string;
  productKey?: string | undefined;
  deviceName?: string | undefined;
  topic: string;
  peer: string;
  code: string;
  message: string;
  payload: Uint8Array;
}

/** One transaction's worth of work. */
export interface CommitBatch {
  /** Flat rows: route, received_at, body, route, ... */
  rows: Array<string | number>;
  deadLetters: DeadLetterRow[];
  cursorUpdates: ReadonlyArray<readonly [string, number]>;
  /** Delete records up to this seq first (drop-oldest); 0 = none. */
  dropThrough: number;
}

export class CommitError extends Error {
  constructor(
    message: string,
    /** SQLite's error code (SQLITE_FULL, SQLITE_BUSY, ...). */
    readonly sqliteCode: string | undefined,
  ) {
    super(message);
  }
}

// CommonJS, run with eval: the worker needs no file of its own next to the compiled sources.
const WORKER_SOURCE = String.raw`
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const sql = workerData.sql;
const db = new Database(workerData.path);
db.pragma('synchronous = ' + workerData.synchronous);
db.pragma('busy_timeout = ' + workerData.busyTimeoutMs);
// A large batch must fit the page cache, or SQLite spills dirty pages to the WAL mid-transaction.
db.pragma('cache_size = -' + workerData.cacheKiB);
const insertMany = db.prepare(sql.insertMany);
const insertRecord = db.prepare(sql.insertRecord);
const insertDeadLetter = db.prepare(sql.insertDeadLetter);
const upsertCursor = db.prepare(sql.upsertCursor);
const deleteThrough = db.prepare(sql.deleteThrough);
const lastSeq = db.prepare(sql.lastSeq).pluck();
const pageCount = db.prepare('PRAGMA page_count').pluck();
const freelistCount = db.prepare('PRAGMA freelist_count').pluck();
const width = workerData.rowsPerInsert * 3;
const args = new Array(width);
const commit = db.transaction((m) => {
  if (m.dropThrough > 0) deleteThrough.run(m.dropThrough);
  const rows = m.rows;
  let o = 0;
  for (; o + width <= rows.length; o += width) {
    for (let k = 0; k < width; k++) args[k] = rows[o + k];
    insertMany.run(args);
  }
  for (; o < rows.length; o += 3) insertRecord.run(rows[o], rows[o + 1], rows[o + 2]);
  for (const d of m.deadLetters) {
    const payload = Buffer.from(d.payload.buffer, d.payload.byteOffset, d.payload.byteLength);
    insertDeadLetter.run(d.receivedAt, d.transport, d.productKey ?? null, d.deviceName ?? null, d.topic, d.peer, d.code, d.message, payload);
  }
  for (const [name, seq] of m.cursorUpdates) upsertCursor.run(name, seq);
});
parentPort.on('message', (m) => {
  if (m.type === 'commit') {
    try {
      commit(m.batch);
      // Pages in use after the commit, read here so the main thread need not query SQLite per commit.
      parentPort.postMessage({ type: 'done', id: m.id, lastSeq: lastSeq.get(), usedPages: pageCount.get() - freelistCount.get() });
    } catch (err) {
      parentPort.postMessage({ type: 'failed', id: m.id, message: String(err && err.message), code: err && err.code });
    }
  } else if (m.type === 'close') {
    db.close();
    parentPort.postMessage({ type: 'closed' });
  }
});
parentPort.postMessage({ type: 'ready' });
`;

type Reply = { type: 'ready' } | { type: 'closed' } | { type: 'done'; id: number; lastSeq: number; usedPages: number } | { type: 'failed'; id: number; message: string; code?: string };

/** What a commit reports once durable. */
export interface CommitResult {
  /** The highest record seq. */
  lastSeq: number;
  /** Database pages in use (page_count - freelist_count) right after the commit. */
  usedPages: number;
}

export interface WriterOptions {
  path: string;
  sync: 'full' | 'normal';
  busyTimeoutMs: number;
}

/** The committer thread, one per buffer. */
export class SqliteWriter {
  private readonly waiting = new Map<number, { resolve: (result: CommitResult) => void; reject: (err: CommitError) => void }>();
  private nextId = 1;
  private closed: Promise<void> | null = null;
  private failure: Error | null = null;

  private constructor(private readonly worker: Worker) {
    worker.on('message', (m: Reply) => {
      if (m.type !== 'done' && m.type !== 'failed') return;
      const w = this.waiting.get(m.id);
      this.waiting.delete(m.id);
      if (this.waiting.size === 0) worker.unref();
      if (m.type === 'done') w?.resolve({ lastSeq: m.lastSeq, usedPages: m.usedPages });
      else w?.reject(new CommitError(m.message, m.code));
    });
    // A worker that dies (out of memory, a native crash) fails what it held; nothing is acknowledged.
    const died = (err: Error) => {
      this.failure = err;
      for (const w of this.waiting.values()) w.reject(new CommitError(`the buffer writer stopped: ${err.message}`, undefined));
      this.waiting.clear();
    };
    worker.on('error', died);
    worker.on('exit', (code) => died(new Error(`exited with code ${code}`)));
    // Idle, the thread does not keep the process alive (the main thread's sockets and timers decide);
    // with a commit under way it does, so a caller awaiting that commit is not cut off.
    worker.unref();
  }

  /** Starts the thread and opens its connection; rejects when the database cannot be opened. */
  static open(o: WriterOptions): Promise<SqliteWriter> {
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        sqlite: createRequire(import.meta.url).resolve('better-sqlite3'),
        path: o.path,
        synchronous: o.sync === 'full' ? 'FULL' : 'NORMAL',
        busyTimeoutMs: o.busyTimeoutMs,
        cacheKiB: CACHE_KIB,
        rowsPerInsert: ROWS_PER_INSERT,
        sql: { ...SQL, insertMany: SQL.insertMany(ROWS_PER_INSERT) },
      },
    });
    return new Promise<SqliteWriter>((resolve, reject) => {
      const onMessage = (m: Reply) => {
        if (m.type !== 'ready') return;
        worker.off('error', onError);
        worker.off('message', onMessage);
        resolve(new SqliteWriter(worker));
      };
      const onError = (err: Error) => {
        worker.off('message', onMessage);
        void worker.terminate();
        reject(err);
      };
      worker.on('message', onMessage);
      worker.once('error', onError);
    });
  }

  /** Runs one transaction; resolves once it is durable. */
  commit(batch: CommitBatch): Promise<CommitResult> {
    if (this.failure) return Promise.reject(new CommitError(`the buffer writer stopped: ${this.failure.message}`, undefined));
    const id = this.nextId++;
    return new Promise<CommitResult>((resolve, reject) => {
      if (this.waiting.size === 0) this.worker.ref();
      this.waiting.set(id, { resolve, reject });
      // A structured clone: the strings are copied once into the writer thread.
      this.worker.postMessage({ type: 'commit', id, batch });
    });
  }

  /** Closes the connection and ends the thread (after the commits already sent). Idempotent. */
  close(): Promise<void> {
    if (this.closed) return this.closed;
    this.closed = (async () => {
      if (!this.failure) {
        await new Promise<void>((resolve) => {
          const onMessage = (m: Reply) => {
            if (m.type !== 'closed') return;
            this.worker.off('message', onMessage);
            resolve();
          };
          this.worker.on('message', onMessage);
          this.worker.once('exit', () => resolve());
          this.worker.ref(); // until it has closed
          this.worker.postMessage({ type: 'close' });
        });
      }
      await this.worker.terminate();
    })();
    return this.closed;
  }
}
