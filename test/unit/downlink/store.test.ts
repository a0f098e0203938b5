// The command queue's SQLite store (src/downlink/store.ts) on real files: transitions and their
// guards, per-device order, reopening, AUTOINCREMENT message ids, pruning and the v1/v2 -> v3 migrations.
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { CommandStore, type NewCommand } from '../../../src/downlink/store.js';
import { tempDir } from '../../helpers/index.js';

describe('CommandStore (real SQLite file)', () => {
  const dirs: Array<{ cleanup(): void }> = [];
  const stores: CommandStore[] = [];
  afterEach(() => {
    for (const s of stores.splice(0)) s.close();
    for (const d of dirs.splice(0)) d.cleanup();
  });
  const newPath = () => {
    const d = tempDir();
    dirs.push(d);
    return join(d.path, 'sub', 'commands.db');
  };
  const open = (file: string) => {
    const s = new CommandStore(file);
    stores.push(s);
    return s;
  };
  let n = 0;
  const cmd = (over: Partial<NewCommand> = {}): NewCommand => ({
    id: `c-${++n}`,
    productKey: 'P',
    deviceName: 'd1',
    method: 'thing.service.property.set',
    params: { mode: 1 },
    topic: '/sys/P/d1/thing/service/property/set',
    source: 'api',
    createdAt: 1000,
    expiresAt: 5000,
    ...over,
  });
  /** The payload names the message id it was given, so the test sees encode ran with the stored seq. */
  const encode = (msgId: string) => Buffer.from(`msg-${msgId}`);

  it('inserts a queued command whose msgId is its seq and whose payload is encoded with it', () => {
    const s = open(newPath());
    const a = s.insert(cmd(), encode);
    const b = s.insert(cmd({ requestId: 'req-7' }), encode);
    expect(a).toMatchObject({ state: 'queued', msgId: '1', attempts: 0, createdAt: 1000, updatedAt: 1000, expiresAt: 5000, params: { mode: 1 } });
    expect(a.payload.toString()).toBe('msg-1');
    expect(b.msgId).toBe('2');
    expect(b.payload.toString()).toBe('msg-2');
    expect(a.requestId).toBeUndefined();
    expect(s.get(b.id)?.requestId).toBe('req-7');
    expect(s.byMsgId('P', 'd1', '2')?.id).toBe(b.id);
    // A message id is the device's: another device echoing it, or a non-number, matches nothing.
    expect(s.byMsgId('P', 'd2', '2')).toBeNull();
    expect(s.byMsgId('P', 'd1', '2x')).toBeNull();
  });

  it('an insert whose encoder throws leaves nothing behind', () => {
    const s = open(newPath());
    expect(() => s.insert(cmd(), () => { throw new Error('cannot encode'); })).toThrow('cannot encode');
    expect(s.list({ limit: 10 })).toEqual([]);
  });

  it('moves queued -> sent -> delivered -> replied-ok and refuses the moves the state machine forbids', () => {
    const s = open(newPath());
    const c = s.insert(cmd(), encode);
    expect(s.markSent(c.id, 'mqtt', 1100)).toBe(true);
    // Sent again (a retransmission after reconnect): still sent, one attempt more.
    expect(s.markSent(c.id, 'coap-push', 1150)).toBe(true);
    expect(s.get(c.id)).toMatchObject({ state: 'sent', via: 'coap-push', attempts: 2, sentAt: 1150, updatedAt: 1150 });
    expect(s.markDelivered(c.id, 1200)).toBe(true);
    expect(s.get(c.id)).toMatchObject({ state: 'delivered', deliveredAt: 1200 });
    // Delivered is past the transport: neither sent nor delivered again.
    expect(s.markSent(c.id, 'mqtt', 1250)).toBe(false);
    expect(s.markDelivered(c.id, 1250)).toBe(false);
    expect(s.markReplied(c.id, { code: 200, data: { ok: true } }, 1300)).toBe(true);
    expect(s.get(c.id)).toMatchObject({ state: 'replied-ok', repliedAt: 1300, reply: { code: 200, data: { ok: true } } });
    // Final: nothing moves it any more.
    expect(s.markReplied(c.id, { code: 500 }, 1400)).toBe(false);
    expect(s.finish(c.id, 'cancelled', 1400)).toBe(false);
    expect(s.finish(c.id, 'expired', 1400)).toBe(false);
    expect(s.markSent(c.id, 'mqtt', 1400)).toBe(false);
    expect(s.get(c.id)?.state).toBe('replied-ok');
    expect(s.markSent('no-such-id', 'mqtt', 1)).toBe(false);
  });

  it('a reply that is not code 200, or whose output broke the model, makes replied-error', () => {
    const s = open(newPath());
    const a = s.insert(cmd(), encode);
    const b = s.insert(cmd(), encode);
    expect(s.markReplied(a.id, { code: 6813, message: 'busy' }, 1100)).toBe(true);
    expect(s.markReplied(b.id, { code: 200, data: { x: 1 }, invalid: { code: 'WANWU_ERR_INVALID', message: 'x: above max' } }, 1100)).toBe(true);
    expect(s.get(a.id)?.state).toBe('replied-error');
    expect(s.get(b.id)?.state).toBe('replied-error');
  });

  it('cancels or expires only open commands', () => {
    const s = open(newPath());
    const a = s.insert(cmd(), encode);
    const b = s.insert(cmd(), encode);
    expect(s.finish(a.id, 'cancelled', 1100)).toBe(true);
    expect(s.finish(a.id, 'expired', 1200)).toBe(false);
    expect(s.get(a.id)?.state).toBe('cancelled');
    s.markSent(b.id, 'mqtt', 1100);
    s.markDelivered(b.id, 1150);
    // A delivered command waits for its reply until its TTL, then expires.
    expect(s.finish(b.id, 'expired', 1200)).toBe(true);
    expect(s.get(b.id)?.state).toBe('expired');
  });

  it('keeps each device\'s queue in submission order, apart from other devices', () => {
    const s = open(newPath());
    const ids = [
      s.insert(cmd({ deviceName: 'd1' }), encode).id,
      s.insert(cmd({ deviceName: 'd2' }), encode).id,
      s.insert(cmd({ deviceName: 'd1' }), encode).id,
      s.insert(cmd({ deviceName: 'd1' }), encode).id,
    ];
    expect(s.undelivered('P', 'd1', 10).map((c) => c.id)).toEqual([ids[0], ids[2], ids[3]]);
    expect(s.undelivered('P', 'd1', 2).map((c) => c.id)).toEqual([ids[0], ids[2]]);
    expect(s.undelivered('P', 'd2', 10).map((c) => c.id)).toEqual([ids[1]]);
    // Delivered ones leave the undelivered list but still count towards the per-device limit.
    s.markDelivered(ids[0]!, 1100);
    expect(s.undelivered('P', 'd1', 10).map((c) => c.id)).toEqual([ids[2], ids[3]]);
    expect(s.openCount('P', 'd1')).toBe(3);
    s.finish(ids[2]!, 'cancelled', 1100);
    expect(s.openCount('P', 'd1')).toBe(2);
    expect(s.undeliveredDevices()).toEqual(expect.arrayContaining([
      { productKey: 'P', deviceName: 'd1', n: 1 },
      { productKey: 'P', deviceName: 'd2', n: 1 },
    ]));
  });

  it('oldestOpen finds the oldest sent or delivered command on a topic (down_raw replies carry no id)', () => {
    const s = open(newPath());
    const raw = '/sys/P/d1/thing/model/down_raw';
    const a = s.insert(cmd({ topic: raw, method: 'thing.model.down_raw' }), encode);
    const b = s.insert(cmd({ topic: raw, method: 'thing.model.down_raw' }), encode);
    expect(s.oldestOpen('P', 'd1', raw)).toBeNull(); // queued ones never reached the device
    s.markSent(b.id, 'coap-piggyback', 1100);
    expect(s.oldestOpen('P', 'd1', raw)?.id).toBe(b.id);
    s.markSent(a.id, 'coap-piggyback', 1200);
    expect(s.oldestOpen('P', 'd1', raw)?.id).toBe(a.id);
  });

  it('lists newest first with before-paging and a state filter', () => {
    const s = open(newPath());
    const all = Array.from({ length: 5 }, (_, i) => s.insert(cmd({ deviceName: i % 2 === 0 ? 'd1' : 'd2' }), encode));
    s.finish(all[4]!.id, 'cancelled', 1100);
    expect(s.list({ limit: 10 }).map((c) => c.msgId)).toEqual(['5', '4', '3', '2', '1']);
    expect(s.list({ limit: 2 }).map((c) => c.msgId)).toEqual(['5', '4']);
    expect(s.list({ limit: 2, before: 4 }).map((c) => c.msgId)).toEqual(['3', '2']);
    expect(s.list({ limit: 10, deviceName: 'd1' }).map((c) => c.msgId)).toEqual(['5', '3', '1']);
    expect(s.list({ limit: 10, state: 'cancelled' }).map((c) => c.msgId)).toEqual(['5']);
    expect(s.list({ limit: 10, productKey: 'Q' })).toEqual([]);
    expect(s.countsByState()).toMatchObject({ queued: 4, cancelled: 1, sent: 0 });
  });

  it('due() returns open commands whose TTL has passed', () => {
    const s = open(newPath());
    const a = s.insert(cmd({ expiresAt: 2000 }), encode);
    const b = s.insert(cmd({ expiresAt: 3000 }), encode);
    const c = s.insert(cmd({ expiresAt: 2000 }), encode);
    s.finish(c.id, 'cancelled', 1500);
    expect(s.due(1999)).toEqual([]);
    expect(s.due(2000).map((x) => x.id)).toEqual([a.id]);
    expect(s.due(3000).map((x) => x.id)).toEqual([a.id, b.id]);
  });

  it('survives a reopen: queued commands stay, and message ids keep increasing even after the newest is pruned', () => {
    const file = newPath();
    const s1 = new CommandStore(file);
    const a = s1.insert(cmd(), encode);
    const b = s1.insert(cmd(), encode);
    const c = s1.insert(cmd(), encode);
    s1.finish(c.id, 'cancelled', 1100);
    expect(s1.prune(2000)).toBe(1);
    s1.close();
    const s2 = open(file);
    expect(s2.undelivered('P', 'd1', 10).map((x) => [x.id, x.state])).toEqual([[a.id, 'queued'], [b.id, 'queued']]);
    // AUTOINCREMENT: msgId 3 was used (and its row pruned); a device may still echo it, so it is never reused.
    const d = s2.insert(cmd(), encode);
    expect(d.msgId).toBe('4');
    expect(d.payload.toString()).toBe('msg-4');
  });

  it('prune deletes final commands last changed before the cutoff, and nothing open', () => {
    const s = open(newPath());
    const old = s.insert(cmd(), encode);
    const recent = s.insert(cmd(), encode);
    const open1 = s.insert(cmd(), encode);
    s.finish(old.id, 'expired', 1000);
    s.finish(recent.id, 'cancelled', 3000);
    expect(s.prune(2000)).toBe(1);
    expect(s.get(old.id)).toBeNull();
    expect(s.get(recent.id)?.state).toBe('cancelled');
    expect(s.prune(1_000_000)).toBe(1);
    expect(s.get(open1.id)?.state).toBe('queued');
  });

  it('upgrades a version 1 file (no request_id column) in place, keeping its commands', () => {
    const file = newPath();
    const s1 = open(file);
    const a = s1.insert(cmd(), encode);
    s1.close();
    // Turn it back into what version 1 wrote: the table without request_id.
    const db = new Database(file);
    db.exec('DROP INDEX commands_request; ALTER TABLE commands DROP COLUMN request_id; PRAGMA user_version = 1;');
    db.close();
    const s2 = open(file);
    expect(s2.get(a.id)?.state).toBe('queued');
    const b = s2.insert(cmd({ requestId: 'r-1' }), encode);
    expect(s2.get(b.id)?.requestId).toBe('r-1');
    expect(s2.byRequestId(cmd().productKey, cmd().deviceName, 'r-1')?.id).toBe(b.id);
    const check = new Database(file, { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(3);
    check.close();
  });

  it('upgrades a version 2 file (request_id without its index) in place', () => {
    const file = newPath();
    const s1 = open(file);
    const a = s1.insert(cmd({ requestId: 'r-7' }), encode);
    s1.close();
    const db = new Database(file);
    db.exec('DROP INDEX commands_request; PRAGMA user_version = 2;');
    db.close();
    const s2 = open(file);
    expect(s2.byRequestId(a.productKey, a.deviceName, 'r-7')?.id).toBe(a.id);
    expect(s2.byRequestId(a.productKey, a.deviceName, 'r-8')).toBeNull();
    expect(s2.byRequestId(a.productKey, 'another-device', 'r-7')).toBeNull();
    const check = new Database(file, { readonly: true });
    expect(check.pragma('user_version', { simple: true })).toBe(3);
    expect(check.prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND name = 'commands_request'").pluck().get()).toBe('commands_request');
    check.close();
  });

  it('refuses a file written by a newer Wanwu with WANWU_ERR_STORAGE', () => {
    const file = newPath();
    open(file).close();
    const db = new Database(file);
    db.pragma('user_version = 99');
    db.close();
    expect(() => new CommandStore(file)).toThrow(expect.objectContaining({ code: 'WANWU_ERR_STORAGE', message: expect.stringContaining('newer') }));
  });
});
