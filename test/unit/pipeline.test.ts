// The uplink steps with a fake buffer and a fake codec (unit test: mocks allowed here).
import { describe, expect, it } from 'vitest';
import type { DeadLetterInput, RecordBuffer } from '../../src/buffer/index.js';
import { WanwuError } from '../../src/errors.js';
import { createPipeline, UPLINK_STEPS } from '../../src/pipeline.js';
import type { Product, Registry } from '../../src/registry/index.js';
import type { Codec } from '../../src/thing-model/index.js';
import type { RawMessage, TelemetryRecord } from '../../src/types.js';
import { silentLogger } from '../helpers/index.js';

function fakeBuffer(opts: { failAppend?: boolean; failDeadLetter?: boolean } = {}) {
  const records: TelemetryRecord[] = [];
  const deadLetters: DeadLetterInput[] = [];
  const buffer = {
    async append(rs: readonly TelemetryRecord[]) {
      await new Promise((r) => setTimeout(r, 5));
      if (opts.failAppend) throw new WanwuError('WANWU_ERR_STORAGE', 'disk I/O error');
      records.push(...rs);
    },
    async deadLetter(dl: DeadLetterInput) {
      if (opts.failDeadLetter) throw new WanwuError('WANWU_ERR_STORAGE', 'disk I/O error');
      deadLetters.push(dl);
    },
  } as unknown as RecordBuffer;
  return { buffer, records, deadLetters };
}

function fakeRegistry(codec: Codec): Registry {
  const product: Product = {
    productKey: 'P', name: 'p', rat: 'nb-iot', dir: '/x/P', model: null, codec,
    devices: new Map([['d1', { productKey: 'P', deviceName: 'd1', deviceSecret: 's' }]]),
  };
  return {
    product: (pk) => (pk === 'P' ? product : undefined),
    device: (pk, dn) => (pk === 'P' ? product.devices.get(dn) : undefined),
    products: [product],
    deviceCount: 1,
    warnings: [],
  };
}

const raw = (over: Partial<RawMessage> = {}): RawMessage => ({
  transport: 'coap', productKey: 'P', deviceName: 'd1', topic: '/sys/P/d1/thing/model/up_raw', route: { type: 'up-raw' },
  payload: Buffer.from([1, 2, 3]), receivedAt: 1_700_000_000_000, peer: '127.0.0.1:5683', ...over,
});

const twoItems: Codec = {
  type: 'fake',
  decode(_route, _payload, envelope) {
    envelope.msgId = '9';
    envelope.method = 'thing.event.property.post';
    return [{ kind: 'property', data: { a: 1 } }, { kind: 'event', event: 'alarm', ts: 5, data: { b: 2 } }];
  },
};

describe('uplink pipeline', () => {
  it('runs its steps in the documented order', () => {
    expect(UPLINK_STEPS.map(([name]) => name)).toEqual(['checkSize', 'findDevice', 'decode', 'cardBinding', 'commit']);
  });

  it('builds one record per decoded item and commits them together', async () => {
    const { buffer, records } = fakeBuffer();
    const p = createPipeline({ registry: fakeRegistry(twoItems), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const outcome = await p.ingest(raw());
    expect(outcome).toEqual({ committed: 2, deadLettered: false, msgId: '9', method: 'thing.event.property.post' });
    expect(records[0]).toEqual({
      id: expect.stringMatching(/^[0-9a-f-]{36}$/), productKey: 'P', deviceName: 'd1', kind: 'property', ts: 1_700_000_000_000,
      receivedAt: 1_700_000_000_000, transport: 'coap', rat: 'nb-iot', data: { a: 1 }, msgId: '9', validated: false,
    });
    expect(records[1]).toMatchObject({ kind: 'event', event: 'alarm', ts: 5, data: { b: 2 } });
    expect(records[0]!.id).not.toBe(records[1]!.id);
    expect(p.stats()).toMatchObject({ accepted: { coap: 1, mqtt: 0 }, records: { coap: 2, mqtt: 0 }, rejected: { coap: 0, mqtt: 0 } });
  });

  it('a device fault is dead-lettered with its raw bytes and counted by code', async () => {
    const { buffer, records, deadLetters } = fakeBuffer();
    const bad: Codec = { type: 'fake', decode: () => { throw new WanwuError('WANWU_ERR_MALFORMED', 'short frame'); } };
    const p = createPipeline({ registry: fakeRegistry(bad), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const outcome = await p.ingest(raw());
    expect(outcome.error?.code).toBe('WANWU_ERR_MALFORMED');
    expect(outcome.deadLettered).toBe(true);
    expect(records).toHaveLength(0);
    expect(deadLetters).toEqual([expect.objectContaining({ code: 'WANWU_ERR_MALFORMED', message: 'short frame', payload: Buffer.from([1, 2, 3]), productKey: 'P', deviceName: 'd1', transport: 'coap' })]);
    expect(p.stats().rejectedByCode).toEqual({ WANWU_ERR_MALFORMED: { coap: 1, mqtt: 0 } });
  });

  it('unknown devices and oversize payloads are refused before decoding (oversize kept up to the limit)', async () => {
    const { buffer, deadLetters } = fakeBuffer();
    let decoded = 0;
    const counting: Codec = { type: 'fake', decode: () => { decoded++; return []; } };
    const p = createPipeline({ registry: fakeRegistry(counting), buffer, logger: silentLogger, maxPayloadBytes: { coap: 2, mqtt: 10 } });
    expect((await p.ingest(raw({ deviceName: 'nobody', payload: Buffer.from([1]) }))).error?.code).toBe('WANWU_ERR_UNKNOWN_DEVICE');
    expect((await p.ingest(raw())).error?.code).toBe('WANWU_ERR_TOO_LARGE');
    expect(decoded).toBe(0);
    expect(deadLetters[1]!.payload).toEqual(Buffer.from([1, 2]));
  });

  it('a bug in a codec is contained: WANWU_ERR_INTERNAL, dead-lettered for replay', async () => {
    const { buffer, deadLetters } = fakeBuffer();
    const buggy: Codec = { type: 'fake', decode: () => { throw new TypeError('x is undefined'); } };
    const p = createPipeline({ registry: fakeRegistry(buggy), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const outcome = await p.ingest(raw());
    expect(outcome.error?.code).toBe('WANWU_ERR_INTERNAL');
    expect(outcome.deadLettered).toBe(true);
    expect(deadLetters).toHaveLength(1);
  });

  it('a failed commit is a storage fault: not dead-lettered, so the listener withholds the ack', async () => {
    const { buffer, deadLetters } = fakeBuffer({ failAppend: true });
    const p = createPipeline({ registry: fakeRegistry(twoItems), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const outcome = await p.ingest(raw());
    expect(outcome.error?.code).toBe('WANWU_ERR_STORAGE');
    expect(outcome.error?.fault).toBe('storage');
    expect(outcome.deadLettered).toBe(false);
    expect(deadLetters).toHaveLength(0);
    expect(p.stats().accepted.coap).toBe(0);
  });

  it('a refusal whose dead letter cannot be written turns into a storage fault', async () => {
    const { buffer } = fakeBuffer({ failDeadLetter: true });
    const p = createPipeline({ registry: fakeRegistry(twoItems), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const outcome = await p.ingest(raw({ deviceName: 'nobody' }));
    expect(outcome.error?.code).toBe('WANWU_ERR_STORAGE');
    expect(outcome.deadLettered).toBe(false);
  });

  it('drain resolves once every ingest under way has settled', async () => {
    const { buffer, records } = fakeBuffer();
    const p = createPipeline({ registry: fakeRegistry(twoItems), buffer, logger: silentLogger, maxPayloadBytes: { coap: 10, mqtt: 10 } });
    const pending = [p.ingest(raw()), p.ingest(raw())];
    expect(p.stats().inFlight).toBe(2);
    await p.drain();
    expect(records).toHaveLength(4);
    expect(p.stats().inFlight).toBe(0);
    await Promise.all(pending);
  });
});
