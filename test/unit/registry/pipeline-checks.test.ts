// The registry's checks as the uplink pipeline applies them (unit test: fake buffer and codec):
// disabled devices in findDevice, card binding after decode, last seen on acceptance.

import { describe, expect, it } from 'vitest';
import type { DeadLetter, DeadLetterInput, RecordBuffer } from '../../../src/buffer/index.js';
import { createPipeline } from '../../../src/pipeline.js';
import type { AuditEntry, Device, Product, Registry } from '../../../src/registry/index.js';
import type { Codec } from '../../../src/thing-model/index.js';
import type { RawMessage, TelemetryRecord } from '../../../src/types.js';
import { silentLogger } from '../../helpers/index.js';

const ICCID = '89860420000000000011';

function setup(opts: { status?: Device['status']; cardBinding?: boolean; data?: Record<string, unknown> } = {}) {
  const records: TelemetryRecord[] = [];
  const deadLetters: DeadLetterInput[] = [];
  const buffer = {
    async append(rs: readonly TelemetryRecord[]) {
      records.push(...rs);
    },
    async deadLetter(dl: DeadLetterInput) {
      deadLetters.push(dl);
    },
    replaceDeadLetter() {},
    reviseDeadLetter() {},
  } as unknown as RecordBuffer;
  const codec: Codec = { type: 'fake', decode: () => [{ kind: 'property', data: opts.data ?? { a: 1 } }] };
  const device: Device = { productKey: 'P', deviceName: 'd1', deviceSecret: 's', iccid: ICCID, ...(opts.status ? { status: opts.status } : {}) };
  const product: Product = {
    productKey: 'P', name: 'p', rat: 'nb-iot', dir: '/x/P', model: null, codec, devices: new Map([['d1', device]]),
    ...(opts.cardBinding === undefined ? {} : { cardBinding: opts.cardBinding }),
  };
  const seen: Array<[string, string, number]> = [];
  const audits: AuditEntry[] = [];
  const registry: Registry = {
    product: (pk) => (pk === 'P' ? product : undefined),
    device: (pk, dn) => (pk === 'P' ? product.devices.get(dn) : undefined),
    products: [product],
    deviceCount: 1,
    warnings: [],
    seen: (pk, dn, at) => seen.push([pk, dn, at]),
    audit: (e) => audits.push(e),
  };
  const pipeline = createPipeline({ registry, buffer, logger: silentLogger, maxPayloadBytes: { coap: 100, mqtt: 100 } });
  return { pipeline, records, deadLetters, seen, audits };
}

const raw = (): RawMessage => ({
  transport: 'coap', productKey: 'P', deviceName: 'd1', topic: '/sys/P/d1/thing/model/up_raw', route: { type: 'up-raw' },
  payload: Buffer.from([1, 2, 3]), receivedAt: 1_700_000_000_000, peer: '10.0.0.7:5683',
});

describe('registry checks in the uplink pipeline', () => {
  it('accepts an enabled device and notes it as seen', async () => {
    const t = setup();
    const outcome = await t.pipeline.ingest(raw());
    expect(outcome.error).toBeUndefined();
    expect(t.records).toHaveLength(1);
    expect(t.seen).toEqual([['P', 'd1', 1_700_000_000_000]]);
  });

  it('refuses a disabled device before decoding: dead-lettered, nothing committed, not seen', async () => {
    const t = setup({ status: 'disabled' });
    const outcome = await t.pipeline.ingest(raw());
    expect(outcome.error?.code).toBe('WANWU_ERR_DEVICE_DISABLED');
    expect(outcome.error?.coapCode).toBe('4.03');
    expect(t.records).toHaveLength(0);
    expect(t.deadLetters.map((d) => d.code)).toEqual(['WANWU_ERR_DEVICE_DISABLED']);
    expect(t.seen).toEqual([]);
    expect(t.pipeline.stats().rejectedByCode).toEqual({ WANWU_ERR_DEVICE_DISABLED: { coap: 1, mqtt: 0 } });
  });

  it('refuses another card (any case of the identifier) with an audit entry, and accepts the bound one', async () => {
    const wrong = setup({ data: { ICCID: '89860420000000000029', a: 1 } });
    const outcome = await wrong.pipeline.ingest(raw());
    expect(outcome.error?.code).toBe('WANWU_ERR_CARD_MISMATCH');
    expect(wrong.records).toHaveLength(0);
    expect(wrong.deadLetters.map((d) => d.code)).toEqual(['WANWU_ERR_CARD_MISMATCH']);
    expect(wrong.audits).toEqual([
      { at: 1_700_000_000_000, productKey: 'P', deviceName: 'd1', event: 'card-mismatch', detail: '89860420000000000029', source: 'coap 10.0.0.7:5683' },
    ]);
    const right = setup({ data: { iccid: ICCID } });
    expect((await right.pipeline.ingest(raw())).error).toBeUndefined();
    expect(right.records).toHaveLength(1);
    expect(right.audits).toEqual([]);
  });

  it('does not check cards when the product turns binding off', async () => {
    const t = setup({ cardBinding: false, data: { iccid: '89860420000000000029' } });
    expect((await t.pipeline.ingest(raw())).error).toBeUndefined();
    expect(t.audits).toEqual([]);
  });

  it('does not replay dead letters of disabled devices or foreign cards', () => {
    const t = setup();
    const dl = (code: string): DeadLetter => ({ ...raw(), id: 1, code, message: 'x' });
    expect(t.pipeline.replay(dl('WANWU_ERR_DEVICE_DISABLED'))).toMatchObject({ ok: false, skipped: 'WANWU_ERR_DEVICE_DISABLED cannot be replayed' });
    expect(t.pipeline.replay(dl('WANWU_ERR_CARD_MISMATCH'))).toMatchObject({ ok: false, skipped: 'WANWU_ERR_CARD_MISMATCH cannot be replayed' });
    expect(t.pipeline.replay(dl('WANWU_ERR_MALFORMED'))).toMatchObject({ ok: true, records: 1 });
  });
});
