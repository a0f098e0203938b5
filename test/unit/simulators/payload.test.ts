// The simulator's message factory (simulators/lib/payload.ts) against every sample product: what
// it sends must be exactly what the gateway decodes, validates and counts.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, loadRegistry, type Product } from '../../../src/registry/index.js';
import { decodeUplink, validateItem } from '../../../src/thing-model/index.js';
import { parseUplinkTopic } from '../../../src/thing-model/topic.js';
import { createMessageFactory, seededRandom, type SimMessage } from '../../../simulators/lib/payload.js';

const DEVICES = fileURLToPath(new URL('../../../devices', import.meta.url));
const registry = loadRegistry(DEVICES);
const products = registry.products;
const DEVICE_NAMES = ['sim-a', 'sim-b', 'sim-c', 'sim-d', 'sim-e'];
/** Sample products whose codec cannot write a value the model refuses (codec.js range-checks its input). */
const NO_INVALID_VALUES = new Set(['SoilNB']);

function run(product: Product, n: number, opts: Parameters<typeof createMessageFactory>[1]): SimMessage[] {
  const f = createMessageFactory(product, opts);
  return Array.from({ length: n }, (_, i) => f.next(DEVICE_NAMES[i % DEVICE_NAMES.length]!));
}

function refusal(product: Product, msg: SimMessage): WanwuError {
  const r = decodeUplink(product, msg.route, msg.payload);
  if (r.ok) throw new Error(`${product.productKey}: ${msg.fault} message decoded: ${JSON.stringify(r.items)}`);
  return r.error;
}

it('covers every sample product', () => {
  expect(products.map((p) => p.productKey)).toEqual(['AlarmNB', 'SensorRedCap', 'SoilNB', 'TrackerCat1', 'VehicleRedCap', 'WaterMeterNB']);
});

describe.each(products.map((p) => [p.productKey, p] as const))('%s', (pk, product) => {
  const model = product.model!;

  it('generates values the codec carries exactly (no decoding needed to know the records)', () => {
    expect(createMessageFactory(product, { seed: 42 }).info.exact).toBe(true);
  });

  it('sends 500 valid messages that decode to exactly the items it reports', () => {
    const msgs = run(product, 500, { seed: 42 });
    for (const msg of msgs) {
      expect(msg.fault).toBe('none');
      const parsed = parseUplinkTopic(msg.topic);
      expect(parsed.productKey).toBe(pk);
      expect(DEVICE_NAMES).toContain(parsed.deviceName);
      expect(parsed.route).toEqual(msg.route);
      const r = decodeUplink(product, msg.route, msg.payload);
      if (!r.ok) throw new Error(`${pk} ${msg.payload.toString('hex')}: ${r.error.message}`);
      expect(r.items).toHaveLength(msg.records);
      expect(msg.records).toBe(msg.items.length);
      // What the gateway records equals what was encoded, after validation (normalization).
      expect(r.items).toEqual(msg.items.map((item) => ({ ...item, data: validateItem(model, pk, item) })));
      // The generator's values are already normalized.
      for (const item of msg.items) expect(validateItem(model, pk, item)).toEqual(item.data);
      expect(r.msgId).toBe(msg.msgId);
    }
  });

  it('uses the default route of the codec and numbers Alink ids per factory', () => {
    const msgs = run(product, 100, { seed: 5 });
    const alink = product.codec.type === 'alink-json';
    for (const msg of msgs) {
      if (alink) expect(['property-post', 'event-post']).toContain(msg.route.type);
      else expect(msg.route).toEqual({ type: 'up-raw' });
    }
    if (alink) expect(msgs.map((m) => m.msgId)).toEqual(msgs.map((_, i) => String(i + 1)));
    else expect(msgs.every((m) => m.msgId === undefined)).toBe(true);
  });

  it('reports every property and every event of the model over a run', () => {
    const msgs = run(product, 500, { seed: 42 });
    const props = new Set<string>();
    const events = new Set<string>();
    for (const m of msgs) {
      for (const item of m.items) {
        if (item.kind === 'event') events.add(item.event!);
        else for (const key of Object.keys(item.data)) props.add(key);
      }
    }
    expect([...props].sort()).toEqual(model.properties.map((p) => p.identifier).sort());
    // Alibaba's built-in `post` event is the property post itself.
    expect([...events].sort()).toEqual(model.events.map((e) => e.identifier).filter((e) => e !== 'post').sort());
  });

  it('sends no events when events is false', () => {
    const msgs = run(product, 300, { seed: 42, events: false });
    expect(msgs.flatMap((m) => m.items).every((item) => item.kind === 'property')).toBe(true);
  });

  it('invalidRate 1: every message is refused by validation, or is malformed where the codec cannot express an invalid value', () => {
    const factory = createMessageFactory(product, { seed: 9, invalidRate: 1 });
    const expected = NO_INVALID_VALUES.has(pk) ? 'malformed' : 'invalid';
    expect(factory.info.invalid).toBe(expected === 'invalid' ? 'values' : 'malformed');
    for (let i = 0; i < 200; i++) {
      const msg = factory.next(DEVICE_NAMES[i % DEVICE_NAMES.length]!);
      expect(msg.fault).toBe(expected);
      expect(msg.records).toBe(0);
      const error = refusal(product, msg);
      if (expected === 'invalid') {
        expect(['WANWU_ERR_INVALID', 'WANWU_ERR_UNKNOWN_IDENTIFIER']).toContain(error.code);
        // The reported item holds the value that breaks the model.
        expect(msg.items).toHaveLength(1);
        expect(() => validateItem(model, pk, msg.items[0]!)).toThrow(WanwuError);
      } else {
        expect(error.code).toBe('WANWU_ERR_MALFORMED');
      }
    }
  });

  it('malformedRate 1: every message fails to decode with WANWU_ERR_MALFORMED', () => {
    for (const msg of run(product, 200, { seed: 11, malformedRate: 1 })) {
      expect(msg.fault).toBe('malformed');
      expect(msg.records).toBe(0);
      expect(msg.items).toEqual([]);
      expect(refusal(product, msg).code).toBe('WANWU_ERR_MALFORMED');
    }
  });

  it("duplicateRate 1: after a device's first message, each repeats its previous bytes", () => {
    const factory = createMessageFactory(product, { seed: 3, duplicateRate: 1 });
    const firsts = new Map<string, SimMessage>();
    for (let i = 0; i < 60; i++) {
      const device = DEVICE_NAMES[i % 3]!;
      const msg = factory.next(device);
      const first = firsts.get(device);
      if (!first) {
        expect(msg.fault).toBe('none');
        firsts.set(device, msg);
        continue;
      }
      expect(msg.fault).toBe('duplicate');
      expect(msg.payload.equals(first.payload)).toBe(true);
      expect(msg.topic).toBe(first.topic);
      expect(msg.records).toBe(first.records);
      expect(msg.items).toEqual(first.items);
      // The gateway accepts the repeat again.
      const r = decodeUplink(product, msg.route, msg.payload);
      expect(r.ok && r.items.length).toBe(msg.records);
    }
    // Each device repeats its own message, not another's.
    expect(new Set([...firsts.values()].map((m) => m.payload.toString('hex'))).size).toBe(3);
  });

  it('a duplicate of a fault is refused again and counts no records', () => {
    const factory = createMessageFactory(product, { seed: 4, malformedRate: 0.5, duplicateRate: 0.5 });
    let previous: SimMessage | undefined;
    for (let i = 0; i < 200; i++) {
      const msg = factory.next('one');
      if (msg.fault === 'duplicate') {
        expect(msg.payload.equals(previous!.payload)).toBe(true);
        expect(msg.records).toBe(previous!.records);
      }
      const r = decodeUplink(product, msg.route, msg.payload);
      expect(r.ok ? r.items.length : 0).toBe(msg.records);
      previous = msg;
    }
  });

  it('is deterministic: the same seed gives the same bytes, another seed others', () => {
    const opts = { invalidRate: 0.2, malformedRate: 0.1, duplicateRate: 0.1 };
    const a = run(product, 200, { seed: 77, ...opts }).map((m) => m.payload.toString('hex'));
    const b = run(product, 200, { seed: 77, ...opts }).map((m) => m.payload.toString('hex'));
    const c = run(product, 200, { seed: 78, ...opts }).map((m) => m.payload.toString('hex'));
    expect(b).toEqual(a);
    expect(c).not.toEqual(a);
  });
});

describe('fault rates', () => {
  it.each(['WaterMeterNB', 'TrackerCat1', 'VehicleRedCap'])('%s: about the requested share of each fault', (pk) => {
    const msgs = run(registry.product(pk)!, 2000, { seed: 21, invalidRate: 0.2, malformedRate: 0.1, duplicateRate: 0.1 });
    const share = (fault: string) => msgs.filter((m) => m.fault === fault).length / msgs.length;
    expect(share('invalid')).toBeGreaterThanOrEqual(0.15);
    expect(share('invalid')).toBeLessThanOrEqual(0.25);
    expect(share('malformed')).toBeGreaterThanOrEqual(0.07);
    expect(share('malformed')).toBeLessThanOrEqual(0.13);
    expect(share('duplicate')).toBeGreaterThanOrEqual(0.07);
    expect(share('duplicate')).toBeLessThanOrEqual(0.13);
    // Records are counted only for what the gateway accepts.
    for (const m of msgs) {
      const r = decodeUplink(registry.product(pk)!, m.route, m.payload);
      expect(r.ok ? r.items.length : 0).toBe(m.records);
    }
  });

  it('refuses rates outside 0..1 or adding up to more than 1', () => {
    const p = registry.product('WaterMeterNB')!;
    expect(() => createMessageFactory(p, { invalidRate: 1.5 })).toThrow(RangeError);
    expect(() => createMessageFactory(p, { malformedRate: -0.1 })).toThrow(RangeError);
    expect(() => createMessageFactory(p, { invalidRate: 0.6, malformedRate: 0.6 })).toThrow(/exceed 1/);
  });
});

describe('device time', () => {
  it('AlarmNB frames carry the clock snapped to the whole seconds the header holds', () => {
    const f = createMessageFactory(registry.product('AlarmNB')!, { seed: 1, clock: () => 1_700_000_000_789 });
    for (let i = 0; i < 50; i++) expect(f.next('al').items[0]!.ts).toBe(1_700_000_000_000);
  });

  it('Alink JSON posts sometimes carry the clock time, exactly', () => {
    const f = createMessageFactory(registry.product('SensorRedCap')!, { seed: 1, clock: () => 1_700_000_000_789 });
    const times = Array.from({ length: 100 }, () => f.next('rs').items[0]!.ts);
    expect(times).toContain(1_700_000_000_789);
    expect(times).toContain(undefined);
  });

  it('the default clock is simulated, so runs repeat', () => {
    const f = createMessageFactory(registry.product('AlarmNB')!, { seed: 1 });
    expect(f.next('al').items[0]!.ts).toBe(Date.UTC(2024, 0, 1) + 1000);
  });
});

describe('VehicleRedCap oneof', () => {
  it('sends fuel_level or battery_soc (one oneof), never both', () => {
    const msgs = run(registry.product('VehicleRedCap')!, 500, { seed: 42 });
    const props = msgs.flatMap((m) => m.items).filter((i) => i.kind === 'property');
    expect(props.some((i) => 'fuel_level' in i.data)).toBe(true);
    expect(props.some((i) => 'battery_soc' in i.data)).toBe(true);
    expect(props.some((i) => 'fuel_level' in i.data && 'battery_soc' in i.data)).toBe(false);
  });
});

describe('products beyond the samples', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'wanwu-sim-payload-'));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));
  const level = { identifier: 'level', name: 'level', accessMode: 'r', dataType: { type: 'float', specs: { min: '0', max: '9', step: '0.1' } } };

  /** Writes devices/<pk>/{product,model}.json (+ files) and loads it as the registry does. */
  function productOf(pk: string, codec: object, model: object | undefined, files: Record<string, string> = {}): Product {
    const folder = path.join(dir, pk, pk);
    mkdirSync(folder, { recursive: true });
    writeFileSync(path.join(folder, 'product.json'), JSON.stringify({ productKey: pk, name: pk, rat: 'nb-iot', codec }));
    if (model) writeFileSync(path.join(folder, 'model.json'), JSON.stringify(model));
    for (const [name, text] of Object.entries(files)) writeFileSync(path.join(folder, name), text);
    return loadRegistry(path.join(dir, pk)).product(pk)!;
  }

  function roundTrips(product: Product, msgs: SimMessage[]): void {
    for (const msg of msgs) {
      const r = decodeUplink(product, msg.route, msg.payload);
      if (!r.ok) throw new Error(`${msg.payload.toString('hex')}: ${r.error.message}`);
      expect(r.items).toEqual(msg.items);
      expect(r.items).toHaveLength(msg.records);
    }
  }

  it('a binary layout with every kind of field: values on each field\'s grid, exactly', () => {
    const codec = {
      type: 'binary', endian: 'little',
      fields: [
        { name: 'hdr', type: 'u8', const: 7 },
        { id: 'temp', type: 'i16', scale: 0.5, offset: -10 },
        { id: 'count', type: 'bcd', size: 2 },
        { id: 'serial', type: 'bcd', as: 'text', size: 3 },
        { id: 'label', type: 'string', size: 8 },
        { id: 'blob', type: 'bytes', prefix: 'u8' },
        { id: 'ratio', type: 'f32' },
        { id: 'samples', type: 'group', count: 'u8', item: { type: 'u16', scale: 0.01 } },
        { name: 'flags', type: 'bits', size: 2, bits: [{ id: 'on', bit: 0 }, { id: 'mode', bits: [3, 5] }] },
        { id: 'seen', type: 'bcd', as: 'date', format: 'YYYYMMDDhhmm', utcOffset: '-05:00' },
        { name: 'sum', type: 'sum8' },
      ],
    };
    const prop = (identifier: string, dataType: object) => ({ identifier, name: identifier, accessMode: 'r', dataType });
    const model = {
      properties: [
        prop('temp', { type: 'float', specs: { min: '-10', max: '50' } }),
        prop('count', { type: 'int', specs: { min: '0', max: '9999' } }),
        prop('serial', { type: 'text', specs: { length: '6' } }),
        prop('label', { type: 'text', specs: { length: '8' } }),
        prop('blob', { type: 'text', specs: { length: '10' } }),
        prop('ratio', { type: 'float', specs: { min: '0', max: '1' } }),
        prop('samples', { type: 'array', specs: { size: '5', item: { type: 'float', specs: { min: '0', max: '600' } } } }),
        prop('on', { type: 'bool', specs: { 0: 'off', 1: 'on' } }),
        prop('mode', { type: 'enum', specs: { 0: 'a', 1: 'b', 2: 'c', 3: 'd', 4: 'e', 5: 'f' } }),
        prop('seen', { type: 'date', specs: {} }),
      ],
    };
    const product = productOf('KitchenSink', codec, model);
    const factory = createMessageFactory(product, { seed: 8 });
    expect(factory.info.exact).toBe(true);
    const msgs = Array.from({ length: 300 }, () => factory.next('ks'));
    roundTrips(product, msgs);
    const temps = msgs.map((m) => m.items[0]!.data.temp as number);
    expect(temps.every((t) => Number.isInteger(t * 2))).toBe(true); // the field's 0.5 grid
    const seen = msgs.map((m) => m.items[0]!.data.seen as number);
    expect(seen.every((t) => t % 60_000 === 0)).toBe(true); // whole minutes (YYYYMMDDhhmm)
    // temp 50.5 fits the i16, the checksum can be broken.
    const faults = createMessageFactory(product, { seed: 8, invalidRate: 0.5, malformedRate: 0.5 });
    for (let i = 0; i < 100; i++) {
      const msg = faults.next('ks');
      const error = refusal(product, msg);
      expect(error.code).toBe(msg.fault === 'invalid' ? 'WANWU_ERR_INVALID' : 'WANWU_ERR_MALFORMED');
    }
  });

  it('a codec that reshapes values: each message is decoded once and the records reported', () => {
    // The script keeps whole numbers only, although the model allows tenths.
    const script = [
      'function decodeUplink(input) { return { data: { level: input.bytes[0] } }; }',
      'function encodeDownlink(input) { return { bytes: [Math.round(input.data.level)] }; }',
    ].join('\n');
    const product = productOf('Rounding', { type: 'script', file: 'codec.js' }, { properties: [level] }, { 'codec.js': script });
    const factory = createMessageFactory(product, { seed: 2 });
    expect(factory.info.exact).toBe(false);
    const msgs = Array.from({ length: 100 }, () => factory.next('r'));
    roundTrips(product, msgs);
    expect(msgs.every((m) => Number.isInteger(m.items[0]!.data.level))).toBe(true);
  });

  it('throws naming the product and codec when the codec cannot encode', () => {
    const script = 'function decodeUplink(input) { return { data: { level: input.bytes[0] } }; }\n';
    const product = productOf('DecodeOnly', { type: 'script', file: 'codec.js' }, { properties: [level] }, { 'codec.js': script });
    expect(() => createMessageFactory(product)).toThrow(/DecodeOnly.*script codec cannot encode/);
  });

  it('throws when the product has no thing model', () => {
    const product = createProduct({ dir: path.join(dir, 'NoModel'), product: { productKey: 'NoModel', name: 'x', rat: 'cat1', codec: { type: 'alink-json' } } });
    expect(() => createMessageFactory(product)).toThrow(/NoModel: no thing model/);
  });
});

describe('seededRandom', () => {
  it('is uniform-looking in [0, 1), repeatable, and seed-dependent', () => {
    const a = seededRandom(123);
    const xs = Array.from({ length: 10_000 }, () => a());
    expect(xs.every((x) => x >= 0 && x < 1)).toBe(true);
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(mean).toBeGreaterThan(0.48);
    expect(mean).toBeLessThan(0.52);
    const b = seededRandom(123);
    expect(Array.from({ length: 5 }, () => b())).toEqual(xs.slice(0, 5));
    const c = seededRandom(124);
    expect(c()).not.toBe(xs[0]);
  });
});
