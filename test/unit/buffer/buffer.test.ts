import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { createBuffer, type RecordBuffer } from '../../../src/buffer/index.js';
import type { TelemetryRecord } from '../../../src/types.js';
import { silentLogger, tempDir } from '../../helpers/index.js';

function record(n: number, deviceName = 'd1'): TelemetryRecord {
  return {
    id: `id-${n}`, productKey: 'P', deviceName, kind: 'property', ts: 1000 + n, receivedAt: 2000 + n,
    transport: 'mqtt', rat: 'cat1', data: { n },
  };
}

describe('SQLite buffer (real file)', () => {
  const dirs: Array<{ cleanup(): void }> = [];
  const buffers: RecordBuffer[] = [];
  afterEach(async () => {
    for (const b of buffers.splice(0)) await b.stop();
    for (const d of dirs.splice(0)) d.cleanup();
  });
  const open = async (path: string, upstreams = ['a', 'b'], busyTimeoutMs?: number) => {
    const b = createBuffer({ path, sync: 'full', logger: silentLogger, upstreams, pruneIntervalMs: 60_000, ...(busyTimeoutMs !== undefined ? { busyTimeoutMs } : {}) });
    await b.start();
    buffers.push(b);
    return b;
  };
  const newPath = () => {
    const d = tempDir();
    dirs.push(d);
    return join(d.path, 'sub', 'wanwu.db');
  };

  it('group-commits appends made in one event-loop turn into one transaction', async () => {
    const b = await open(newPath());
    await Promise.all(Array.from({ length: 50 }, (_, i) => b.append([record(i)])));
    expect(b.stats().commits).toBe(1);
    expect(b.stats().committedRecords).toBe(50);
    expect(b.lastSeq()).toBe(50);
    await b.append([record(50)]);
    expect(b.stats().commits).toBe(2);
  });

  it('stores the record body as the exact JSON and reads back in order after a cursor', async () => {
    const b = await open(newPath());
    await b.append([record(1), record(2, 'd2'), record(3)]);
    const rows = b.readAfter(1, 10);
    expect(rows.map((r) => r.seq)).toEqual([2, 3]);
    expect(rows[0]).toMatchObject({ productKey: 'P', deviceName: 'd2', kind: 'property', event: null });
    expect(JSON.parse(rows[0]!.body)).toEqual(record(2, 'd2'));
    expect(b.readAfter(0, 2)).toHaveLength(2);
  });

  it('resolves append only after the row is in the file (visible to another connection)', async () => {
    const path = newPath();
    const b = await open(path);
    await b.append([record(7)]);
    const other = new Database(path, { readonly: true });
    try {
      expect(other.prepare('SELECT COUNT(*) AS n FROM outbox').get()).toEqual({ n: 1 });
    } finally {
      other.close();
    }
  });

  it('keeps records, cursors and dead letters across a restart', async () => {
    const path = newPath();
    const b = await open(path);
    await b.append([record(1), record(2), record(3)]);
    b.setCursor('a', 2);
    await b.deadLetter({ transport: 'coap', productKey: 'P', deviceName: 'd1', topic: '/sys/P/d1/thing/model/up_raw', peer: '127.0.0.1:5', receivedAt: 5, code: 'WANWU_ERR_MALFORMED', message: 'short frame', payload: Buffer.from([1, 2, 3]) });
    await b.stop();
    buffers.length = 0;
    const again = await open(path);
    expect(again.lastSeq()).toBe(3);
    expect(again.cursor('a')).toBe(2);
    expect(again.cursor('b')).toBe(0);
    expect(again.stats().pending).toBe(3);
    expect(again.stats().deadLetters).toBe(1);
    const [dl] = again.listDeadLetters({ limit: 10 });
    expect(dl).toMatchObject({ transport: 'coap', code: 'WANWU_ERR_MALFORMED', topic: '/sys/P/d1/thing/model/up_raw', productKey: 'P' });
    expect([...dl!.payload]).toEqual([1, 2, 3]);
  });

  it('an upstream added later starts at the oldest stored record', async () => {
    const path = newPath();
    const b = await open(path, ['a']);
    await b.append([record(1), record(2), record(3)]);
    b.setCursor('a', 1);
    await b.stop(); // prunes record 1: every configured upstream has it
    buffers.length = 0;
    const again = await open(path, ['a', 'new']);
    expect(again.readAfter(0, 10).map((r) => r.seq)).toEqual([2, 3]);
    expect(again.cursor('new')).toBe(1);
    expect(again.stats().pending).toBe(2);
  });

  it('prunes only what every upstream has acknowledged', async () => {
    const path = newPath();
    const b = await open(path);
    await b.append([record(1), record(2), record(3), record(4)]);
    b.setCursor('a', 4);
    b.setCursor('b', 2);
    await b.stop(); // stop prunes
    buffers.length = 0;
    const again = await open(path);
    expect(again.readAfter(0, 10).map((r) => r.seq)).toEqual([3, 4]);
    expect(again.stats()).toMatchObject({ pending: 2, records: 2, lastSeq: 4 });
  });

  it('cursor never moves backwards', async () => {
    const b = await open(newPath());
    await b.append([record(1), record(2)]);
    b.setCursor('a', 2);
    b.setCursor('a', 1);
    expect(b.cursor('a')).toBe(2);
  });

  it('a failed commit rejects every waiter with WANWU_ERR_STORAGE and the buffer keeps working', async () => {
    const path = newPath();
    const b = await open(path, ['a', 'b'], 0);
    // Another connection holds the write lock: our commit fails with SQLITE_BUSY at once (busy timeout 0).
    const other = new Database(path);
    other.pragma('busy_timeout = 0');
    other.exec('BEGIN IMMEDIATE');
    const results = await Promise.allSettled([b.append([record(1)]), b.append([record(2)])]);
    expect(results.map((r) => r.status)).toEqual(['rejected', 'rejected']);
    expect((results[0] as PromiseRejectedResult).reason).toMatchObject({ code: 'WANWU_ERR_STORAGE' });
    expect(b.stats().commitErrors).toBe(1);
    other.exec('ROLLBACK');
    other.close();
    await b.append([record(3)]);
    expect(b.readAfter(0, 10).map((r) => JSON.parse(r.body).id)).toEqual(['id-3']);
  });

  it('notifies append listeners after commits that added records', async () => {
    const b = await open(newPath());
    let calls = 0;
    const off = b.onAppend(() => calls++);
    await b.append([record(1)]);
    await b.deadLetter({ transport: 'mqtt', topic: 't', peer: 'p', receivedAt: 1, code: 'WANWU_ERR_MALFORMED', message: 'm', payload: Buffer.alloc(0) });
    expect(calls).toBe(1);
    off();
    await b.append([record(2)]);
    expect(calls).toBe(1);
  });
});

describe('buffer migration', () => {
  it('moves a records table written by earlier versions into the outbox, keeping seqs and cursors', async () => {
    const d = tempDir();
    try {
      const path = join(d.path, 'old.db');
      const old = new Database(path);
      old.exec(`CREATE TABLE records (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL, product_key TEXT NOT NULL, device_name TEXT NOT NULL,
        kind TEXT NOT NULL, event TEXT, received_at INTEGER NOT NULL, body TEXT NOT NULL);
        CREATE TABLE cursors (upstream TEXT PRIMARY KEY, seq INTEGER NOT NULL);`);
      const ins = old.prepare('INSERT INTO records (id, product_key, device_name, kind, event, received_at, body) VALUES (?, ?, ?, ?, ?, ?, ?)');
      for (let i = 1; i <= 5; i++) ins.run(`id-${i}`, 'P', 'd1', i === 5 ? 'event' : 'property', i === 5 ? 'alarm' : null, 2000 + i, JSON.stringify(record(i)));
      old.exec("DELETE FROM records WHERE seq <= 2; INSERT INTO cursors VALUES ('a', 3)");
      old.close();
      const b = createBuffer({ path, sync: 'full', logger: silentLogger, upstreams: ['a'] });
      await b.start();
      try {
        expect(b.lastSeq()).toBe(5);
        expect(b.cursor('a')).toBe(3);
        expect(b.readAfter(0, 10).map((r) => [r.seq, r.kind, r.event])).toEqual([[3, 'property', null], [4, 'property', null], [5, 'event', 'alarm']]);
        await b.append([record(6)]);
        expect(b.lastSeq()).toBe(6);
      } finally {
        await b.stop();
      }
    } finally {
      d.cleanup();
    }
  });
});
