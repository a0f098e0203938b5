// Bounded buffer: limits, full policies, ttl, and the file shrinking back (real SQLite files).
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createBuffer, type BufferOptions, type RecordBuffer } from '../../../src/buffer/index.js';
import type { TelemetryRecord } from '../../../src/types.js';
import { silentLogger, tempDir, waitUntil } from '../../helpers/index.js';

function record(n: number, receivedAt = 1_000 + n, pad = 0): TelemetryRecord {
  return { id: `id-${n}`, productKey: 'P', deviceName: 'd', kind: 'property', ts: receivedAt, receivedAt, transport: 'coap', rat: 'nb-iot', data: { n, pad: 'x'.repeat(pad) } };
}

describe('buffer limits (real SQLite)', () => {
  const cleanups: Array<() => unknown> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
  });
  async function open(opts: Partial<BufferOptions>): Promise<RecordBuffer> {
    const dir = tempDir();
    cleanups.push(() => dir.cleanup());
    const b = createBuffer({ path: join(dir.path, 'w.db'), sync: 'normal', logger: silentLogger, upstreams: ['a', 'b'], pruneIntervalMs: 20, ...opts });
    await b.start();
    cleanups.push(() => b.stop());
    return b;
  }

  it('reject-new refuses exactly the records past maxRecords, with WANWU_ERR_BUFFER_FULL, and accepts again once there is room', async () => {
    const b = await open({ maxRecords: 10, whenFull: 'reject-new' });
    const results = await Promise.allSettled(Array.from({ length: 15 }, (_, i) => b.append([record(i)])));
    expect(results.filter((r) => r.status === 'fulfilled')).toHaveLength(10);
    const refused = results.filter((r): r is PromiseRejectedResult => r.status === 'rejected');
    expect(refused).toHaveLength(5);
    expect(refused[0]!.reason).toMatchObject({ code: 'WANWU_ERR_BUFFER_FULL' });
    expect(b.stats()).toMatchObject({ state: 'full', records: 10, refused: 5, dropped: 0 });
    // Both upstreams take the first 4: they are pruned, and 4 more fit.
    b.setCursor('a', 4);
    b.setCursor('b', 4);
    await waitUntil(() => b.stats().records === 6, 2000, 'prune');
    await Promise.all([1, 2, 3, 4].map((i) => b.append([record(100 + i)])));
    await expect(b.append([record(200)])).rejects.toMatchObject({ code: 'WANWU_ERR_BUFFER_FULL' });
    expect(b.stats()).toMatchObject({ records: 10, refused: 6 });
  });

  it('drop-oldest keeps the newest maxRecords and counts, per upstream, what each never got', async () => {
    const b = await open({ maxRecords: 10, whenFull: 'drop-oldest' });
    for (let i = 1; i <= 10; i++) await b.append([record(i)]);
    b.setCursor('a', 7); // upstream a has 1..7; b has nothing
    await b.append([record(11), record(12), record(13)]); // 3 oldest must go: 1, 2, 3
    expect(b.readAfter(0, 100).map((r) => JSON.parse(r.body).id)).toEqual(Array.from({ length: 10 }, (_, i) => `id-${i + 4}`));
    expect(b.upstreamStats('a')).toMatchObject({ dropped: 0, cursor: 7 });
    expect(b.upstreamStats('b')).toMatchObject({ dropped: 3, cursor: 3, pending: 10 });
    expect(b.stats()).toMatchObject({ dropped: 3, records: 10, refused: 0 });
    await b.append([record(14), record(15), record(16), record(17), record(18)]); // drops 4..8: a lacked 8
    expect(b.upstreamStats('a')).toMatchObject({ dropped: 1, cursor: 8 });
    expect(b.upstreamStats('b')).toMatchObject({ dropped: 8, cursor: 8 });
    expect(b.stats()).toMatchObject({ dropped: 8, records: 10 });
  });

  it('maxBytes bounds the pages in use (reject-new)', async () => {
    const b = await open({ maxBytes: 256 * 1024, whenFull: 'reject-new' });
    let accepted = 0;
    let refused = 0;
    for (let i = 0; i < 400; i++) {
      try {
        await b.append([record(i, 1000 + i, 2000)]);
        accepted++;
      } catch (err) {
        expect(err).toMatchObject({ code: 'WANWU_ERR_BUFFER_FULL' });
        refused++;
      }
    }
    expect(accepted).toBeGreaterThan(50);
    expect(refused).toBeGreaterThan(0);
    const s = b.stats();
    expect(s.bytes).toBeLessThanOrEqual(256 * 1024);
    expect(s).toMatchObject({ state: 'full', refused, records: accepted });
  });

  it('records past ttl expire from the head, counted per upstream', async () => {
    let now = 1_000_000;
    const b = await open({ ttlS: 60, now: () => now });
    await b.append([record(1, now - 120_000), record(2, now - 90_000), record(3, now - 10_000)]);
    b.setCursor('a', 1);
    await waitUntil(() => b.stats().records === 1, 2000, 'expiry');
    expect(b.upstreamStats('a')).toMatchObject({ expired: 1, cursor: 2 });
    expect(b.upstreamStats('b')).toMatchObject({ expired: 2, cursor: 2 });
    expect(b.stats()).toMatchObject({ expired: 2, records: 1, pending: 1 });
    now += 60_000;
    await waitUntil(() => b.stats().records === 0, 2000, 'expiry of the last');
    expect(b.stats().expired).toBe(3);
  });

  it('the file shrinks back after a backlog drains (incremental vacuum, WAL truncated)', async () => {
    const b = await open({});
    const path = b.stats().path;
    for (let i = 0; i < 40; i++) await b.append(Array.from({ length: 500 }, (_, k) => record(i * 500 + k, 1000, 300)));
    const full = b.stats().fileBytes;
    expect(full).toBeGreaterThan(6_000_000);
    b.setCursor('a', b.lastSeq());
    b.setCursor('b', b.lastSeq());
    await waitUntil(() => b.stats().records === 0, 5000, 'drain');
    await waitUntil(() => statSync(path).size < full / 4, 5000, 'vacuum');
    expect(b.stats().bytes).toBeLessThan(full / 4);
  });

  it('a failing commit shows state error with the reason, and clears on the next good commit', async () => {
    const dir = tempDir();
    cleanups.push(() => dir.cleanup());
    const path = join(dir.path, 'w.db');
    const b = createBuffer({ path, sync: 'normal', logger: silentLogger, upstreams: ['a'], busyTimeoutMs: 0 });
    await b.start();
    cleanups.push(() => b.stop());
    const Database = (await import('better-sqlite3')).default;
    const other = new Database(path);
    other.exec('BEGIN IMMEDIATE');
    await expect(b.append([record(1)])).rejects.toMatchObject({ code: 'WANWU_ERR_STORAGE' });
    expect(b.stats()).toMatchObject({ state: 'error', lastError: expect.stringMatching(/locked|busy/i) });
    other.exec('ROLLBACK');
    other.close();
    await b.append([record(2)]);
    expect(b.stats().state).toBe('ok');
  });
});
