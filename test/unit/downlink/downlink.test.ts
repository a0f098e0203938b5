// The downlink stage (src/downlink/index.ts) on a real SQLite file, with a fake clock and a fake
// record sink: submission and its refusals, state records per change, TTL expiry by the sweep,
// device replies, cancel, restart, and the upstream command path (submitMessage, refusal records).
import { WanwuError } from '../../../src/errors.js';
import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createDownlink, type Command, type CommandChange, type Downlink, type DownlinkOptions } from '../../../src/downlink/index.js';
import { loadRegistry, type Registry } from '../../../src/registry/index.js';
import type { RawMessage, TelemetryRecord } from '../../../src/types.js';
import { DEMO, DEVICES_DIR } from '../../helpers/gateway.js';
import { errorOf, silentLogger, tempDir } from '../../helpers/index.js';

const registry = loadRegistry(DEVICES_DIR);
const { productKey: PK, deviceName: DN } = DEMO.tracker;
const T0 = 1_800_000_000_000;
const SET = 'thing.service.property.set';
const INTERVAL = 'thing.service.setReportInterval';

interface Setup {
  downlink: Downlink;
  records: TelemetryRecord[];
  clock: { now: number };
  path: string;
}

describe('downlink (real SQLite file, fake clock, fake record sink)', () => {
  const cleanups: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of cleanups.splice(0).reverse()) await c();
    vi.useRealTimers();
  });

  async function setup(over: Partial<DownlinkOptions> = {}, path?: string): Promise<Setup> {
    let file = path;
    if (file === undefined) {
      const dir = tempDir();
      cleanups.push(() => dir.cleanup());
      file = join(dir.path, 'commands.db');
    }
    const clock = { now: T0 };
    const records: TelemetryRecord[] = [];
    const downlink = createDownlink({
      path: file,
      registry,
      records: { append: async (rs) => void records.push(...rs) },
      logger: silentLogger,
      ttlS: 3600,
      maxTtlS: 86_400,
      maxPerDevice: 3,
      maxPayloadBytes: 1024,
      retainS: 60,
      sweepMs: 1000,
      now: () => clock.now,
      ...over,
    });
    await downlink.start();
    cleanups.push(() => downlink.stop());
    return { downlink, records, clock, path: file };
  }

  /** A device reply as the pipeline hands it over (route "command-reply"). */
  const replyOf = (c: Command, body: unknown, method = c.method, at = T0 + 500): RawMessage => ({
    transport: 'mqtt',
    productKey: c.productKey,
    deviceName: c.deviceName,
    topic: `${c.topic}_reply`,
    route: { type: 'command-reply', method },
    payload: Buffer.isBuffer(body) ? body : Buffer.from(JSON.stringify(body)),
    receivedAt: at,
    peer: '127.0.0.1:1',
  });
  const tracker = registry.product(PK)!;
  const states = (records: TelemetryRecord[], id: string) => records.filter((r) => r.data.commandId === id).map((r) => [r.data.previous, r.data.state]);

  describe('submit', () => {
    it('queues a command, appends its state record, tells listeners and wakes the channels', async () => {
      const { downlink, records } = await setup();
      const changes: CommandChange[] = [];
      downlink.onChange((c) => changes.push(c));
      const wakes: string[] = [];
      downlink.attach({ name: 'test', wake: (pk, dn) => wakes.push(`${pk}/${dn}`) });
      expect(downlink.hasUndelivered(PK, DN)).toBe(false);

      const c = downlink.submit(PK, DN, { method: SET, params: { workMode: 1 }, ttl: 60, requestId: 'req-1' }, 'api');
      expect(c).toMatchObject({ productKey: PK, deviceName: DN, method: SET, params: { workMode: 1 }, state: 'queued', source: 'api', requestId: 'req-1', createdAt: T0, expiresAt: T0 + 60_000 });
      expect(JSON.parse(c.payload.toString())).toEqual({ id: c.msgId, version: '1.0', method: SET, params: { workMode: 1 } });
      expect(downlink.get(c.id)).toEqual(c);
      expect(downlink.hasUndelivered(PK, DN)).toBe(true);
      expect(wakes).toEqual([`${PK}/${DN}`]);
      expect(changes).toEqual([{ command: c, previous: null }]);
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({
        productKey: PK, deviceName: DN, kind: 'command', ts: T0, receivedAt: T0, transport: 'mqtt', rat: 'cat1',
        data: { commandId: c.id, msgId: c.msgId, method: SET, state: 'queued', previous: null, source: 'api', requestId: 'req-1', attempts: 0, expiresAt: T0 + 60_000, params: { workMode: 1 } },
      });
      expect(downlink.stats()).toMatchObject({ submitted: 1, byState: { queued: 1 } });
    });

    it('refuses an unknown device, a disabled one and a ttl over downlink.maxTtlS, and counts each by code', async () => {
      const disabled: Registry = { ...registry, product: (pk) => registry.product(pk), device: (pk, dn) => {
        const d = registry.device(pk, dn);
        return d && { ...d, status: 'disabled' };
      } };
      const { downlink } = await setup({ registry: disabled });
      expect(errorOf(() => downlink.submit(PK, 'no-such-device', { raw: '00' }, 'api')).code).toBe('WANWU_ERR_UNKNOWN_DEVICE');
      expect(errorOf(() => downlink.submit('NoSuchProduct', DN, { raw: '00' }, 'api')).code).toBe('WANWU_ERR_UNKNOWN_DEVICE');
      expect(errorOf(() => downlink.submit(PK, DN, { raw: '00' }, 'api')).code).toBe('WANWU_ERR_DEVICE_DISABLED');
      const { downlink: d2 } = await setup();
      expect(errorOf(() => d2.submit(PK, DN, { raw: '00', ttl: 86_401 }, 'api'))).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining('maxTtlS') });
      expect(() => d2.submit(PK, DN, { raw: '00', ttl: 86_400 }, 'api')).not.toThrow();
      expect(downlink.stats().refused).toEqual({ WANWU_ERR_UNKNOWN_DEVICE: 2, WANWU_ERR_DEVICE_DISABLED: 1 });
      expect(d2.stats().refused).toEqual({ WANWU_ERR_COMMAND: 1 });
    });

    it('holds at most downlink.maxPerDevice open commands per device (WANWU_ERR_QUEUE_FULL), counting delivered ones', async () => {
      const { downlink, records } = await setup({ maxPerDevice: 3 });
      const a = downlink.submit(PK, DN, { raw: '01' }, 'api');
      downlink.submit(PK, DN, { raw: '02' }, 'api');
      downlink.submit(PK, DN, { raw: '03' }, 'api');
      downlink.markDelivered(a.id);
      const err = errorOf(() => downlink.submit(PK, DN, { raw: '04' }, 'api'));
      expect(err.code).toBe('WANWU_ERR_QUEUE_FULL');
      expect(records.filter((r) => r.data.state === 'queued')).toHaveLength(3); // the refused one left no trace
      // Another device has a queue of its own.
      expect(() => downlink.submit(PK, 'tr-0002', { raw: '04' }, 'api')).not.toThrow();
      // Once one is final there is room again.
      downlink.cancel(a.id);
      expect(downlink.submit(PK, DN, { raw: '04' }, 'api').state).toBe('queued');
    });

    it('gives each device its commands oldest first (undelivered), with increasing msgIds', async () => {
      const { downlink } = await setup({ maxPerDevice: 10 });
      const ids = ['01', '02', '03'].map((raw) => downlink.submit(PK, DN, { raw }, 'api'));
      downlink.submit(PK, 'tr-0002', { raw: 'ff' }, 'api');
      expect(downlink.undelivered(PK, DN).map((c) => c.payload.toString('hex'))).toEqual(['01', '02', '03']);
      expect(ids.map((c) => Number(c.msgId))).toEqual([...ids.map((c) => Number(c.msgId))].sort((x, y) => x - y));
      expect(downlink.undelivered(PK, DN, 2)).toHaveLength(2);
      expect(downlink.undelivered(PK, 'tr-0003')).toEqual([]);
    });
  });

  describe('requestId (idempotent submission)', () => {
    it('answers a repeated requestId with the command already queued, queued once and counted', async () => {
      const { downlink, records } = await setup();
      const body = { method: SET, params: { workMode: 2 }, requestId: 'cloud-7' };
      const first = downlink.submit(PK, DN, body, 'api');
      const recordsAfterFirst = records.length;
      // The same request again, its params in another order and with another ttl: the same command.
      const again = downlink.submit(PK, DN, { requestId: 'cloud-7', params: { workMode: 2 }, method: SET, ttl: 60 }, 'api');
      expect(again.id).toBe(first.id);
      expect(downlink.undelivered(PK, DN)).toHaveLength(1);
      expect(records).toHaveLength(recordsAfterFirst);
      expect(downlink.stats()).toMatchObject({ submitted: 1, repeated: 1 });
      // Still the same command once it has moved on (an upstream redelivering after the device replied).
      downlink.cancel(first.id);
      expect(downlink.submit(PK, DN, body, 'api')).toMatchObject({ id: first.id, state: 'cancelled' });
      // Another device, or no requestId, is another command.
      expect(downlink.submit(PK, 'tr-0002', body, 'api').id).not.toBe(first.id);
      expect(downlink.submit(PK, DN, { method: SET, params: { workMode: 2 } }, 'api').id).not.toBe(first.id);
    });

    it('treats raw commands by their bytes', async () => {
      const { downlink } = await setup();
      const a = downlink.submit(PK, DN, { raw: 'ca', requestId: 'r-raw' }, 'api');
      expect(downlink.submit(PK, DN, { raw: 'CA', requestId: 'r-raw' }, 'api').id).toBe(a.id);
      expect(errorOf(() => downlink.submit(PK, DN, { raw: 'cb', requestId: 'r-raw' }, 'api')).code).toBe('WANWU_ERR_COMMAND');
    });

    it('refuses the same requestId for a different command, naming the earlier one', async () => {
      const { downlink } = await setup();
      const a = downlink.submit(PK, DN, { method: SET, params: { workMode: 2 }, requestId: 'r-1' }, 'api');
      const err = errorOf(() => downlink.submit(PK, DN, { method: SET, params: { workMode: 1 }, requestId: 'r-1' }, 'api'));
      expect(err).toMatchObject({ code: 'WANWU_ERR_COMMAND', message: expect.stringContaining(a.id) });
      expect(errorOf(() => downlink.submit(PK, DN, { raw: '00', requestId: 'r-1' }, 'api')).code).toBe('WANWU_ERR_COMMAND');
      expect(downlink.stats()).toMatchObject({ submitted: 1, repeated: 0, refused: { WANWU_ERR_COMMAND: 2 } });
    });

    it('is not refused by a full queue: the repeat takes no room', async () => {
      const { downlink } = await setup({ maxPerDevice: 1 });
      const a = downlink.submit(PK, DN, { raw: '01', requestId: 'only' }, 'api');
      expect(downlink.submit(PK, DN, { raw: '01', requestId: 'only' }, 'api').id).toBe(a.id);
      expect(errorOf(() => downlink.submit(PK, DN, { raw: '02' }, 'api')).code).toBe('WANWU_ERR_QUEUE_FULL');
    });

    it('a redelivered upstream message queues one command and one queued record', async () => {
      const { downlink, records } = await setup();
      const message = Buffer.from(JSON.stringify({ method: INTERVAL, params: { interval: 600 }, requestId: 'cloud-99' }));
      const a = await downlink.submitMessage(PK, DN, message, 'upstream:cloud');
      const b = await downlink.submitMessage(PK, DN, message, 'upstream:cloud');
      expect(b?.id).toBe(a?.id);
      expect(records.filter((r) => r.data.requestId === 'cloud-99' && r.data.state === 'queued')).toHaveLength(1);
    });

    it('keeps working across a restart', async () => {
      const first = await setup();
      const a = first.downlink.submit(PK, DN, { raw: '0a', requestId: 'persisted' }, 'api');
      await first.downlink.stop();
      const second = await setup({}, first.path);
      expect(second.downlink.submit(PK, DN, { raw: '0a', requestId: 'persisted' }, 'api').id).toBe(a.id);
    });
  });

  describe('state changes', () => {
    it('appends one record per change: queued, sent, delivered, replied-ok', async () => {
      const { downlink, records } = await setup();
      const c = downlink.submit(PK, DN, { method: SET, params: { workMode: 0 } }, 'api');
      downlink.markSent(c.id, 'mqtt');
      expect(downlink.hasUndelivered(PK, DN)).toBe(true);
      downlink.markDelivered(c.id);
      expect(downlink.hasUndelivered(PK, DN)).toBe(false);
      await downlink.reply(replyOf(c, { id: c.msgId, code: 200, data: {} }), tracker, SET);
      expect(states(records, c.id)).toEqual([[null, 'queued'], ['queued', 'sent'], ['sent', 'delivered'], ['delivered', 'replied-ok']]);
      expect(records.find((r) => r.data.state === 'sent')?.data).toMatchObject({ via: 'mqtt', attempts: 1 });
      // A transition the state machine refuses changes nothing and records nothing.
      downlink.markSent(c.id, 'mqtt');
      expect(states(records, c.id)).toHaveLength(4);
    });

    it('expires a command whose TTL passed at the next sweep (and hides it from transports before that)', async () => {
      vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
      const { downlink, records, clock } = await setup({ sweepMs: 1000 });
      const c = downlink.submit(PK, DN, { raw: '00', ttl: 10 }, 'api');
      clock.now = T0 + 9_999;
      vi.advanceTimersByTime(1000);
      expect(downlink.get(c.id)?.state).toBe('queued');
      clock.now = T0 + 10_000;
      // Expired but not swept yet: a transport asking now does not get it.
      expect(downlink.undelivered(PK, DN)).toEqual([]);
      vi.advanceTimersByTime(1000);
      expect(downlink.get(c.id)).toMatchObject({ state: 'expired', updatedAt: T0 + 10_000 });
      expect(states(records, c.id)).toEqual([[null, 'queued'], ['queued', 'expired']]);
      expect(downlink.hasUndelivered(PK, DN)).toBe(false);
    });

    it('expires at start what expired while the gateway was down', async () => {
      const first = await setup();
      const c = first.downlink.submit(PK, DN, { raw: '00', ttl: 10 }, 'api');
      await first.downlink.stop();
      const second = await setup({ now: () => T0 + 60_000 }, first.path);
      expect(second.downlink.get(c.id)?.state).toBe('expired');
      expect(states(second.records, c.id)).toEqual([['queued', 'expired']]);
    });

    it('cancels an open command, and refuses to cancel a final or unknown one', async () => {
      const { downlink, records } = await setup();
      const c = downlink.submit(PK, DN, { raw: '00' }, 'api');
      expect(downlink.cancel(c.id).state).toBe('cancelled');
      expect(states(records, c.id)).toEqual([[null, 'queued'], ['queued', 'cancelled']]);
      expect(errorOf(() => downlink.cancel(c.id)).code).toBe('WANWU_ERR_COMMAND_STATE');
      expect(errorOf(() => downlink.cancel('01a1fc89-0000-7000-8000-000000000000')).code).toBe('WANWU_ERR_UNKNOWN_COMMAND');
      expect(downlink.hasUndelivered(PK, DN)).toBe(false);
    });

    it('keeps queued commands across a restart on the same file, and msgIds keep increasing', async () => {
      const first = await setup();
      const a = first.downlink.submit(PK, DN, { raw: '0a' }, 'api');
      await first.downlink.stop();
      const second = await setup({}, first.path);
      expect(second.downlink.get(a.id)?.state).toBe('queued');
      // Known from disk at start, before any uplink asks.
      expect(second.downlink.hasUndelivered(PK, DN)).toBe(true);
      expect(second.downlink.undelivered(PK, DN).map((c) => c.id)).toEqual([a.id]);
      const b = second.downlink.submit(PK, DN, { raw: '0b' }, 'api');
      expect(Number(b.msgId)).toBeGreaterThan(Number(a.msgId));
    });
  });

  describe('reply', () => {
    it('completes the command its id names: code 200 -> replied-ok, anything else -> replied-error', async () => {
      const { downlink, records } = await setup();
      const ok = downlink.submit(PK, DN, { method: SET, params: { workMode: 1 } }, 'api');
      const bad = downlink.submit(PK, DN, { method: SET, params: { workMode: 2 } }, 'api');
      downlink.markSent(ok.id, 'mqtt');
      const done = await downlink.reply(replyOf(ok, { id: ok.msgId, code: 200, data: {} }), tracker, SET);
      expect(done).toMatchObject({ id: ok.id, state: 'replied-ok', repliedAt: T0 + 500, reply: { code: 200, data: {} } });
      // A reply may come before the transport said delivered (CoAP piggyback): it completes from queued too.
      const failed = await downlink.reply(replyOf(bad, { id: Number(bad.msgId), code: 6813, message: 'device busy' }), tracker, SET);
      expect(failed).toMatchObject({ state: 'replied-error', reply: { code: 6813, message: 'device busy' } });
      // The state record carries the reply, so the application sees what the device said.
      expect(records.find((r) => r.data.commandId === bad.id && r.data.state === 'replied-error')?.data.reply).toEqual({ code: 6813, message: 'device busy' });
    });

    it('validates a service reply\'s data against its outputData and forwards it normalized', async () => {
      const { downlink, records } = await setup();
      const c = downlink.submit(PK, DN, { method: INTERVAL, params: { interval: 600 } }, 'api');
      const done = await downlink.reply(replyOf(c, { id: c.msgId, code: 200, data: { applied: 600, previous: 60 } }), tracker, INTERVAL);
      expect(done.state).toBe('replied-ok');
      expect(done.reply).toEqual({ code: 200, data: { applied: 600, previous: 60 } });
      expect(records.at(-1)?.data).toMatchObject({ state: 'replied-ok', reply: { code: 200, data: { applied: 600, previous: 60 } } });
    });

    it.each([
      ['an output out of range', { applied: 5 }, 'WANWU_ERR_INVALID'],
      ['an output the service does not have', { applied: 600, colour: 'red' }, 'WANWU_ERR_UNKNOWN_IDENTIFIER'],
      ['data that is not an object', 'done', 'WANWU_ERR_INVALID'],
    ])('completes a reply with %s as replied-error, keeping the data as received', async (_what, data, code) => {
      const { downlink } = await setup();
      const c = downlink.submit(PK, DN, { method: INTERVAL, params: { interval: 600 } }, 'api');
      downlink.markSent(c.id, 'mqtt');
      const done = await downlink.reply(replyOf(c, { id: c.msgId, code: 200, data }), tracker, INTERVAL);
      expect(done.state).toBe('replied-error');
      expect(done.reply).toMatchObject({ code: 200, data, invalid: { code } });
      // Not owed to the device any more: it answered, so it is not delivered (and run) again.
      expect(downlink.undelivered(PK, DN)).toEqual([]);
    });

    it('refuses a reply whose id matches no open command of that device, on that method (WANWU_ERR_UNKNOWN_COMMAND)', async () => {
      const { downlink } = await setup();
      const c = downlink.submit(PK, DN, { method: SET, params: { workMode: 1 } }, 'api');
      const unmatched = async (raw: RawMessage, method: string) => {
        await expect(downlink.reply(raw, tracker, method)).rejects.toMatchObject({ code: 'WANWU_ERR_UNKNOWN_COMMAND' });
      };
      await unmatched(replyOf(c, { id: '999999', code: 200 }), SET);
      // The right id on the wrong service's reply topic.
      await unmatched(replyOf(c, { id: c.msgId, code: 200 }, INTERVAL), INTERVAL);
      // The right id from another device.
      await unmatched({ ...replyOf(c, { id: c.msgId, code: 200 }), deviceName: 'tr-0002' }, SET);
      expect(downlink.get(c.id)?.state).toBe('queued');
      await downlink.reply(replyOf(c, { id: c.msgId, code: 200 }), tracker, SET);
      // A second reply to a command already final.
      await unmatched(replyOf(c, { id: c.msgId, code: 200 }), SET);
      expect(downlink.stats().unmatchedReplies).toBe(4);
    });

    it('commits the reply\'s state record before marking the command replied: a refused record leaves it open, so the device sends the reply again', async () => {
      let refuse = false;
      const kept: TelemetryRecord[] = [];
      const { downlink } = await setup({
        records: { append: async (rs) => (refuse ? Promise.reject(new WanwuError('WANWU_ERR_BUFFER_FULL', 'full')) : void kept.push(...rs)) },
      });
      const c = downlink.submit(PK, DN, { method: SET, params: { workMode: 1 } }, 'api');
      refuse = true;
      await expect(downlink.reply(replyOf(c, { id: c.msgId, code: 200 }), tracker, SET)).rejects.toMatchObject({ code: 'WANWU_ERR_BUFFER_FULL' });
      expect(downlink.get(c.id)?.state).toBe('queued');
      refuse = false;
      await downlink.reply(replyOf(c, { id: c.msgId, code: 200 }), tracker, SET);
      expect(downlink.get(c.id)?.state).toBe('replied-ok');
      expect(states(kept, c.id)).toEqual([[null, 'queued'], ['queued', 'replied-ok']]);
    });

    it('turns a failing queue (SQLite) into WANWU_ERR_STORAGE, which an upstream message is not acknowledged for', async () => {
      const { downlink } = await setup();
      await downlink.stop();
      expect(() => downlink.submit(PK, DN, { raw: '00' }, 'api')).toThrow(expect.objectContaining({ code: 'WANWU_ERR_STORAGE' }));
      await expect(downlink.submitMessage(PK, DN, Buffer.from('{"raw":"00"}'), 'upstream:cloud')).rejects.toMatchObject({ code: 'WANWU_ERR_STORAGE' });
    });

    it('refuses a reply that is not an Alink reply (WANWU_ERR_MALFORMED)', async () => {
      const { downlink } = await setup();
      const c = downlink.submit(PK, DN, { method: SET, params: { workMode: 1 } }, 'api');
      for (const body of [Buffer.from('not json'), [1], { code: 200 }, { id: c.msgId, code: '200' }]) {
        await expect(downlink.reply(replyOf(c, body), tracker, SET)).rejects.toMatchObject({ code: 'WANWU_ERR_MALFORMED' });
      }
      expect(downlink.get(c.id)?.state).toBe('queued');
    });

    it('matches a down_raw reply (no id) to the oldest raw command sent to the device', async () => {
      const { downlink } = await setup();
      const a = downlink.submit(PK, DN, { raw: '0a' }, 'api');
      const b = downlink.submit(PK, DN, { raw: '0b' }, 'api');
      await expect(downlink.reply(replyOf(a, Buffer.from([1])), tracker, 'thing.model.down_raw')).rejects.toMatchObject({ code: 'WANWU_ERR_UNKNOWN_COMMAND' });
      downlink.markSent(a.id, 'coap-piggyback');
      downlink.markSent(b.id, 'coap-piggyback');
      const done = await downlink.reply(replyOf(a, Buffer.from([0xca, 0xfe])), tracker, 'thing.model.down_raw');
      expect(done).toMatchObject({ id: a.id, state: 'replied-ok', reply: { code: 200, data: { raw: 'cafe' } } });
      expect(downlink.get(b.id)?.state).toBe('sent');
    });
  });

  describe('submitMessage (an upstream command topic)', () => {
    it('writes "refused" records at most 20 a second per source (burst 100), counting the rest', async () => {
      const { downlink, records, clock } = await setup();
      const junk = (i: number) => Buffer.from(JSON.stringify({ raw: '00', requestId: `junk-${i}` }));
      const refusedRecords = () => records.filter((r) => r.data.state === 'refused').length;
      for (let i = 0; i < 150; i++) expect(await downlink.submitMessage(PK, `made-up-${i}`, junk(i), 'upstream:cloud')).toBeNull();
      expect(refusedRecords()).toBe(100);
      expect(downlink.stats()).toMatchObject({ refusalRecordsSuppressed: 50, refused: { WANWU_ERR_UNKNOWN_DEVICE: 150 } });
      // Another upstream has its own bucket; one second refills 20.
      await downlink.submitMessage(PK, 'made-up', junk(0), 'upstream:other');
      expect(refusedRecords()).toBe(101);
      clock.now += 1000;
      for (let i = 0; i < 25; i++) await downlink.submitMessage(PK, `made-up-${i}`, junk(i), 'upstream:cloud');
      expect(refusedRecords()).toBe(121);
      expect(downlink.stats().refusalRecordsSuppressed).toBe(55);
      // Good commands are never limited.
      expect(await downlink.submitMessage(PK, DN, Buffer.from('{"raw":"01"}'), 'upstream:cloud')).toMatchObject({ state: 'queued' });
    });

    it('queues a JSON command with its source and requestId', async () => {
      const { downlink, records } = await setup();
      const c = await downlink.submitMessage(PK, DN, Buffer.from(JSON.stringify({ method: SET, params: { workMode: 2 }, requestId: 'cloud-42' })), 'upstream:cloud');
      expect(c).toMatchObject({ state: 'queued', source: 'upstream:cloud', requestId: 'cloud-42' });
      expect(records.at(-1)?.data).toMatchObject({ commandId: c!.id, state: 'queued', source: 'upstream:cloud', requestId: 'cloud-42' });
    });

    it.each([
      ['not JSON', Buffer.from('{"method":'), PK, DN, 'WANWU_ERR_MALFORMED', {}],
      ['a read-only property', Buffer.from(JSON.stringify({ method: SET, params: { batteryLevel: 1 }, requestId: 'r-ro' })), PK, DN, 'WANWU_ERR_COMMAND', { requestId: 'r-ro', method: SET }],
      ['an unknown device', Buffer.from(JSON.stringify({ raw: '00', requestId: 'r-unknown' })), PK, 'no-such-device', 'WANWU_ERR_UNKNOWN_DEVICE', { requestId: 'r-unknown' }],
    ])('publishes a "refused" record for %s, echoing what it can read', async (_what, payload, pk, dn, code, echoed) => {
      const { downlink, records } = await setup();
      expect(await downlink.submitMessage(pk, dn, payload, 'upstream:cloud')).toBeNull();
      expect(records).toHaveLength(1);
      expect(records[0]).toMatchObject({ productKey: pk, deviceName: dn, kind: 'command', ts: T0 });
      expect(records[0]!.data).toEqual({ commandId: null, state: 'refused', previous: null, source: 'upstream:cloud', code, message: expect.any(String), ...echoed });
      expect(downlink.stats().refused).toEqual({ [code]: 1 });
      expect(downlink.list({ limit: 10 })).toEqual([]);
    });

    it('does not echo a requestId that is itself refused (over 64 characters)', async () => {
      const { downlink, records } = await setup();
      await downlink.submitMessage(PK, DN, Buffer.from(JSON.stringify({ raw: '00', requestId: 'x'.repeat(65) })), 'upstream:cloud');
      expect(records[0]!.data).toMatchObject({ state: 'refused', code: 'WANWU_ERR_COMMAND' });
      expect(records[0]!.data.requestId).toBeUndefined();
    });

    it('rejects when even the refusal cannot be stored (so the upstream message is not acknowledged)', async () => {
      const { downlink } = await setup({ records: { append: () => Promise.reject(new Error('disk full')) } });
      await expect(downlink.submitMessage(PK, DN, Buffer.from('nope'), 'upstream:cloud')).rejects.toThrow('disk full');
    });
  });
});
