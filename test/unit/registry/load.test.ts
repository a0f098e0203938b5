import { copyFileSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterEach, describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { loadRegistry } from '../../../src/registry/index.js';

const devicesDir = fileURLToPath(new URL('../../../devices', import.meta.url));

describe('registry: the sample products in devices/', () => {
  const registry = loadRegistry(devicesDir);

  it('loads every product folder, sorted by productKey', () => {
    const folders = readdirSync(devicesDir, { withFileTypes: true }).filter((d) => d.isDirectory()).map((d) => d.name);
    const keys = registry.products.map((p) => p.productKey);
    expect(keys).toEqual([...keys].sort());
    expect(keys).toEqual(expect.arrayContaining(['SensorRedCap', 'TrackerCat1', 'WaterMeterNB']));
    expect([...folders].sort()).toEqual(keys);
  });

  it('gives each product its rat, codec, model and three demo devices', () => {
    // The first three samples; other products have their own tests.
    const first = registry.products.filter((p) => ['SensorRedCap', 'TrackerCat1', 'WaterMeterNB'].includes(p.productKey));
    const summary = first.map((p) => ({
      productKey: p.productKey,
      rat: p.rat,
      codec: p.codec.type,
      properties: p.model?.properties.map((x) => x.identifier),
      events: p.model?.events.map((x) => x.identifier),
      devices: [...p.devices.keys()],
    }));
    expect(summary).toEqual([
      {
        productKey: 'SensorRedCap',
        rat: 'redcap',
        codec: 'alink-json',
        properties: ['temperature', 'humidity', 'pressure', 'vibration', 'status', 'firmware', 'calibratedAt', 'vibrationSpectrum'],
        events: ['overTemperature'],
        devices: ['rs-0001', 'rs-0002', 'rs-0003'],
      },
      {
        productKey: 'TrackerCat1',
        rat: 'cat1',
        codec: 'alink-json',
        properties: ['longitude', 'latitude', 'speed', 'batteryLevel', 'charging', 'workMode', 'GeoLocation', 'wifiList'],
        // "post" is the property-report event every Alibaba export carries
        events: ['post', 'lowBattery', 'geofenceExit'],
        devices: ['tr-0001', 'tr-0002', 'tr-0003'],
      },
      {
        productKey: 'WaterMeterNB',
        rat: 'nb-iot',
        codec: 'binary',
        properties: ['cumulativeFlow', 'instantFlow', 'batteryVoltage', 'valveState', 'temperature', 'rsrp'],
        events: [],
        devices: ['wm-0001', 'wm-0002', 'wm-0003'],
      },
    ]);
    expect(registry.deviceCount).toBe(registry.products.reduce((n, p) => n + p.devices.size, 0));
  });

  it('has no warnings for the first three samples: their models use only what Wanwu reads', () => {
    const mine = registry.warnings.filter((w) => /devices\/(SensorRedCap|TrackerCat1|WaterMeterNB)\//.test(w));
    expect(mine).toEqual([]);
  });

  it('looks devices up by productKey and deviceName', () => {
    expect(registry.device('WaterMeterNB', 'wm-0002')).toEqual({
      productKey: 'WaterMeterNB',
      deviceName: 'wm-0002',
      deviceSecret: 'demo-secret-WaterMeterNB-0002',
      imei: '867751050000025',
      iccid: '89861110000000000022',
    });
    expect(registry.device('WaterMeterNB', 'tr-0001')).toBeUndefined();
    expect(registry.device('Nope', 'wm-0001')).toBeUndefined();
    expect(registry.product('TrackerCat1')?.name).toBe('Cat.1 定位器');
    expect(registry.product('trackercat1')).toBeUndefined();
  });

  it('gives every demo device a secret and, where present, a Luhn-valid IMEI and an 8986 ICCID', () => {
    const luhn = (digits: string) =>
      [...digits].reverse().reduce((sum, ch, i) => {
        const d = Number(ch) * (i % 2 === 1 ? 2 : 1);
        return sum + (d > 9 ? d - 9 : d);
      }, 0) % 10 === 0;
    for (const p of registry.products) {
      for (const d of p.devices.values()) {
        expect(d.deviceSecret).toBe(`demo-secret-${p.productKey}-${d.deviceName.slice(-4)}`);
        expect(d.imei && luhn(d.imei)).toBe(true);
        expect(d.iccid).toMatch(/^8986\d{16}$/);
      }
    }
  });
});

describe('registry: broken definitions are refused', () => {
  let root = '';
  afterEach(() => {
    if (root) rmSync(root, { recursive: true, force: true });
    root = '';
  });

  const baseProduct = {
    productKey: 'TankNB',
    name: '液位计',
    rat: 'nb-iot',
    codec: { type: 'binary', fields: [{ type: 'u8', const: 1 }, { id: 'level', type: 'u16', scale: 0.1 }, { id: 'state', type: 'u8' }] },
  };
  const baseModel = {
    properties: [
      { identifier: 'level', name: '液位', accessMode: 'r', dataType: { type: 'float', specs: { min: '0', max: '100' } } },
      { identifier: 'state', name: '状态', accessMode: 'r', dataType: { type: 'enum', specs: { '0': 'ok', '1': 'alarm' } } },
      { identifier: 'serial', name: '序列号', accessMode: 'r', dataType: { type: 'text', specs: { length: '16' } } },
    ],
    events: [{ identifier: 'overflow', name: '溢出', type: 'alert', outputData: [{ identifier: 'level', name: '液位', dataType: { type: 'float', specs: {} } }] }],
    services: [],
  };
  const baseDevices = [
    { deviceName: 'tank-1', deviceSecret: 's1', imei: '867751050000017' },
    { deviceName: 'tank-2', deviceSecret: 's2' },
  ];

  type Files = { 'product.json'?: unknown; 'model.json'?: unknown; 'devices.json'?: unknown };
  /** Writes devices/<folder>/ with the given files (objects as JSON, strings verbatim, undefined = absent). */
  function write(folder: string, files: Files): void {
    if (!root) root = mkdtempSync(path.join(os.tmpdir(), 'wanwu-registry-'));
    mkdirSync(path.join(root, folder), { recursive: true });
    for (const [name, content] of Object.entries(files)) {
      if (content === undefined) continue;
      writeFileSync(path.join(root, folder, name), typeof content === 'string' ? content : JSON.stringify(content, null, 2));
    }
  }
  const base = (): Files => ({ 'product.json': structuredClone(baseProduct), 'model.json': structuredClone(baseModel), 'devices.json': structuredClone(baseDevices) });

  function refusal(): WanwuError {
    try {
      loadRegistry(root);
    } catch (err) {
      expect(err).toBeInstanceOf(WanwuError);
      expect((err as WanwuError).code).toBe('WANWU_ERR_PRODUCT');
      return err as WanwuError;
    }
    throw new Error('expected loadRegistry to refuse the definition');
  }

  it('accepts the base definition (so each case below fails for its own reason)', () => {
    write('TankNB', base());
    const registry = loadRegistry(root);
    expect(registry.products.map((p) => p.productKey)).toEqual(['TankNB']);
    expect(registry.deviceCount).toBe(2);
    expect(registry.products[0]!.coapEncryption).toBeUndefined();
  });

  it('takes "coapEncryption": "aes-128-cbc" (on) and "none" (off, like absent)', () => {
    const on = base() as Editable;
    on['product.json'].coapEncryption = 'aes-128-cbc';
    write('TankNB', on);
    expect(loadRegistry(root).product('TankNB')!.coapEncryption).toBe('aes-128-cbc');
    const off = base() as Editable;
    off['product.json'].coapEncryption = 'none';
    write('TankNB', off);
    expect(loadRegistry(root).product('TankNB')!.coapEncryption).toBeUndefined();
  });

  it('takes "liveness" keys, each optional (the config downlink.liveness fills the rest)', () => {
    const files = base() as Editable;
    files['product.json'].liveness = { reportIntervalS: 3600, toleranceRatio: 0.25 };
    write('TankNB', files);
    expect(loadRegistry(root).product('TankNB')!.liveness).toEqual({ reportIntervalS: 3600, toleranceRatio: 0.25 });
  });

  type Editable = Record<string, any>;
  type Case = [string, (f: Editable) => void, string | RegExp];
  const cases: Case[] = [
    ['model.json that is not JSON', (f) => (f['model.json'] = '{"properties": ['), 'TankNB/model.json: invalid JSON ('],
    ['a folder without product.json', (f) => delete f['product.json'], 'TankNB/product.json: missing (every folder in devices/ is a product)'],
    ['product.json that is an array', (f) => (f['product.json'] = []), 'TankNB/product.json: expected an object, got []'],
    ['a productKey that is not the folder name', (f) => (f['product.json'].productKey = 'TankNB2'), 'TankNB/product.json: productKey: "TankNB2" does not match its folder name "TankNB"'],
    ['a missing name', (f) => delete f['product.json'].name, 'TankNB/product.json: name: missing (expected a non-empty string)'],
    ['an unknown rat', (f) => (f['product.json'].rat = '5g'), 'TankNB/product.json: rat: expected one of "nb-iot", "cat1", "redcap", got "5g"'],
    [
      'a product secret that is too short',
      (f) => (f['product.json'].dynamicRegistration = { productSecret: 'short' }),
      'TankNB/product.json: dynamicRegistration.productSecret: expected a product secret of 16-64 printable characters (the value is not shown)',
    ],
    ['an unknown product.json key', (f) => (f['product.json'].codex = {}), 'TankNB/product.json: codex: unknown key (allowed: productKey, name, rat, codec, description, cardBinding, auth, coapEncryption, dynamicRegistration, liveness, downlink)'],
    ['a liveness that is not an object', (f) => (f['product.json'].liveness = 600), 'TankNB/product.json: liveness: expected an object, got 600'],
    ['an unknown liveness key', (f) => (f['product.json'].liveness = { intervalS: 600 }), 'TankNB/product.json: liveness.intervalS: unknown key (allowed: activeWindowS, reportIntervalS, toleranceS, toleranceRatio)'],
    ['a report interval under 10 s', (f) => (f['product.json'].liveness = { reportIntervalS: 5 }), 'TankNB/product.json: liveness.reportIntervalS: 5 is below 10'],
    ['a fractional active window', (f) => (f['product.json'].liveness = { activeWindowS: 2.5 }), 'TankNB/product.json: liveness.activeWindowS: expected an integer, got 2.5'],
    ['a negative tolerance', (f) => (f['product.json'].liveness = { toleranceS: -1 }), 'TankNB/product.json: liveness.toleranceS: -1 is below 0'],
    ['a tolerance ratio over 10', (f) => (f['product.json'].liveness = { toleranceRatio: 11 }), 'TankNB/product.json: liveness.toleranceRatio: 11 is not between 0 and 10'],
    ['a tolerance ratio that is a string', (f) => (f['product.json'].liveness = { toleranceRatio: '0.5' }), 'TankNB/product.json: liveness.toleranceRatio: expected a number, got "0.5"'],
    ['an unknown CoAP auth mode', (f) => (f['product.json'].auth = 'psk'), 'TankNB/product.json: auth: expected one of "sign", "none", got "psk"'],
    ['an unknown CoAP encryption', (f) => (f['product.json'].coapEncryption = 'aes-256-gcm'), 'TankNB/product.json: coapEncryption: expected one of "none", "aes-128-cbc", got "aes-256-gcm"'],
    ['a CoAP encryption that is not a string', (f) => (f['product.json'].coapEncryption = true), 'TankNB/product.json: coapEncryption: expected one of "none", "aes-128-cbc", got true'],
    [
      'CoAP encryption without CoAP authentication',
      (f) => Object.assign(f['product.json'], { auth: 'none', coapEncryption: 'aes-128-cbc' }),
      'TankNB/product.json: coapEncryption: "aes-128-cbc" needs the key that POST /auth hands out, so it cannot go with "auth": "none"',
    ],
    ['a missing codec', (f) => delete f['product.json'].codec, 'TankNB/product.json: codec: missing (expected an object)'],
    ['an unknown codec type', (f) => (f['product.json'].codec = { type: 'zigbee' }), 'TankNB/product.json: codec.type: expected one of "alink-json", "binary", "protobuf", "script", "cbor", got "zigbee"'],
    ['options on alink-json', (f) => (f['product.json'].codec = { type: 'alink-json', fields: [] }), 'TankNB/product.json: codec.fields: unknown key (allowed: type)'],
    // The binary codec's own messages are pinned in its tests; here only the file and key path matter.
    ['a bad field type in the layout', (f) => (f['product.json'].codec.fields[1].type = 'u12'), /^TankNB\/product\.json: codec\.fields\[1\]\.type: expected one of "u8", .*, got "u12"$/],
    ['a layout field not in the model', (f) => (f['product.json'].codec.fields[1].id = 'lvl'), 'TankNB/product.json: codec.fields[1].id: "lvl" is not a property in model.json'],
    ['a layout field on a text property', (f) => (f['product.json'].codec.fields[1].id = 'serial'), /^TankNB\/product\.json: codec\.fields\[1\]\.id: serial is a text in model\.json; /],
    ['a spec number that is not a number', (f) => (f['model.json'].properties[0].dataType.specs.min = 'abc'), 'TankNB/model.json: properties[0].dataType.specs.min: expected a number, got "abc"'],
    ['min above max', (f) => (f['model.json'].properties[0].dataType.specs.min = '101'), 'TankNB/model.json: properties[0].dataType.specs.min: min 101 is above max 100'],
    ['an unknown data type', (f) => (f['model.json'].properties[2].dataType.type = 'varchar'), 'TankNB/model.json: properties[2].dataType.type: expected one of "int", "float", "double", "bool", "enum", "text", "date", "struct", "array", got "varchar"'],
    [
      'a struct member that is a struct',
      (f) => (f['model.json'].properties[2].dataType = { type: 'struct', specs: [{ identifier: 'inner', name: '内', dataType: { type: 'struct', specs: [] } }] }),
      'TankNB/model.json: properties[2].dataType.specs[0].dataType.type: "struct" is not allowed here (expected one of "int", "float", "double", "bool", "enum", "text", "date")',
    ],
    ['an array without size', (f) => (f['model.json'].properties[2].dataType = { type: 'array', specs: { item: { type: 'int' } } }), 'TankNB/model.json: properties[2].dataType.specs.size: missing (expected a number)'],
    ['an enum key that is not an integer', (f) => (f['model.json'].properties[1].dataType.specs = { ok: '0' }), 'TankNB/model.json: properties[1].dataType.specs.ok: enum values must be int32 keys ("0", "1", ...)'],
    ['an enum without values', (f) => (f['model.json'].properties[1].dataType.specs = {}), 'TankNB/model.json: properties[1].dataType.specs: an enum needs at least one value'],
    ['a text length of 0', (f) => (f['model.json'].properties[2].dataType.specs.length = 0), 'TankNB/model.json: properties[2].dataType.specs.length: 0 is below 1'],
    ['a missing accessMode', (f) => delete f['model.json'].properties[1].accessMode, 'TankNB/model.json: properties[1].accessMode: missing (expected one of "r", "rw")'],
    ['an identifier with a space', (f) => (f['model.json'].properties[1].identifier = 'my state'), 'TankNB/model.json: properties[1].identifier: "my state" is not an identifier (letters, digits, _)'],
    [
      'duplicate property identifiers',
      (f) => (f['model.json'].properties[2].identifier = 'level'),
      'TankNB/model.json: properties[2].identifier: duplicate identifier "level" (also properties[0])',
    ],
    [
      'duplicate event output identifiers',
      (f) => f['model.json'].events[0].outputData.push(f['model.json'].events[0].outputData[0]),
      'TankNB/model.json: events[0].outputData[1].identifier: duplicate identifier "level" (also events[0].outputData[0])',
    ],
    ['an unknown event type', (f) => (f['model.json'].events[0].type = 'warning'), 'TankNB/model.json: events[0].type: expected one of "info", "alert", "error", got "warning"'],
    ['properties that are not an array', (f) => (f['model.json'].properties = {}), 'TankNB/model.json: properties: expected an array, got {}'],
    ['devices.json that is not an array', (f) => (f['devices.json'] = { deviceName: 'x' }), 'TankNB/devices.json: expected an array, got {"deviceName":"x"}'],
    ['a duplicate deviceName', (f) => (f['devices.json'][1].deviceName = 'tank-1'), 'TankNB/devices.json: [1].deviceName: duplicate deviceName "tank-1" (also [0])'],
    ['a missing deviceSecret', (f) => delete f['devices.json'][1].deviceSecret, 'TankNB/devices.json: [1].deviceSecret: missing (expected a non-empty string)'],
    ['a deviceName with a slash', (f) => (f['devices.json'][0].deviceName = 'a/b'), 'TankNB/devices.json: [0].deviceName: "a/b" is not a name of 1-64 letters, digits or _ . : @ -'],
    ['a short IMEI', (f) => (f['devices.json'][0].imei = '8677510500'), 'TankNB/devices.json: [0].imei: "8677510500" is not a 15-digit IMEI'],
  ];
  for (const [name, mutate, message] of cases) {
    it(`refuses ${name}, naming the file and key`, () => {
      const files = base() as Editable;
      mutate(files);
      write('TankNB', files);
      const e = refusal();
      // A JSON syntax error ends with the parser's own words; every other message is compared whole.
      if (message instanceof RegExp) {
        expect(e.message.startsWith(`${root}/`)).toBe(true);
        expect(e.message.slice(root.length + 1)).toMatch(message);
      } else if (message.endsWith('(')) expect(e.message.startsWith(`${root}/${message}`)).toBe(true);
      else expect(e.message).toBe(`${root}/${message}`);
    });
  }

  it('refuses one IMEI on two devices of different products', () => {
    write('TankNB', base());
    const other = base();
    (other['product.json'] as { productKey: string }).productKey = 'TankNB2';
    write('TankNB2', other);
    expect(refusal().message).toBe(`${root}/TankNB2/devices.json: [0].imei: "867751050000017" is already used by TankNB/tank-1`);
  });

  it('refuses an empty devices directory, and a missing one', () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'wanwu-registry-'));
    writeFileSync(path.join(root, 'README.md'), 'not a product');
    expect(refusal().message).toBe(`${root}: no products (expected ${root}/<productKey>/product.json)`);
    const missing = path.join(root, 'nope');
    try {
      loadRegistry(missing);
      expect.unreachable();
    } catch (err) {
      expect((err as WanwuError).code).toBe('WANWU_ERR_PRODUCT');
      expect((err as WanwuError).message).toBe(`${missing}: directory not found (expected ${missing}/<productKey>/product.json)`);
    }
  });
});

describe('registry: what real exports carry is accepted', () => {
  let root = '';
  afterEach(() => {
    if (root) rmSync(root, { recursive: true, force: true });
    root = '';
  });

  /** A product folder whose model.json is the given fixture, copied byte for byte. */
  function productWithModel(folder: string, fixtureName: string): void {
    if (!root) root = mkdtempSync(path.join(os.tmpdir(), 'wanwu-registry-'));
    mkdirSync(path.join(root, folder));
    writeFileSync(path.join(root, folder, 'product.json'), JSON.stringify({ productKey: folder, name: '导入', rat: 'cat1', codec: { type: 'alink-json' } }));
    copyFileSync(fileURLToPath(new URL(`../../fixtures/tsl/${fixtureName}.json`, import.meta.url)), path.join(root, folder, 'model.json'));
  }

  it('imports an Alibaba export unchanged, warning once per ignored key and about its other productKey', () => {
    productWithModel('Lamp', 'alibaba-export');
    const registry = loadRegistry(root);
    const model = registry.product('Lamp')!.model!;
    expect(model.properties).toHaveLength(11);
    expect(model.properties[0]?.dataType).toEqual({ type: 'bool', specs: { '0': '关闭', '1': '开启' } });
    expect(model.services.find((s) => s.identifier === 'get')?.inputData).toContain('GeoLocation');
    expect(registry.warnings).toEqual([
      `${root}/Lamp/model.json: properties[0].std: ignored (not used by Wanwu), and 12 more "std" keys`,
      `${root}/Lamp/model.json: profile.productKey: "a1Fx8eHk2Lq" is not this product's "Lamp" (an export from another product? kept; Wanwu uses the folder's productKey)`,
    ]);
  });

  it('imports a OneNET export and an Alibaba custom module unchanged; warnings come per product', () => {
    productWithModel('Meter', 'onenet-export');
    productWithModel('a1Fx8eHk2Lq', 'alibaba-module');
    const registry = loadRegistry(root);
    expect(registry.product('Meter')!.model!.properties.map((p) => p.identifier)).toContain('$OneNET_LBS');
    expect(registry.product('a1Fx8eHk2Lq')!.model!.properties.map((p) => p.identifier)).toEqual(['battery:Voltage', 'battery:Level']);
    // The module export names its own product (a1Fx8eHk2Lq = the folder), so only Meter warns.
    expect(registry.warnings).toEqual([
      `${root}/Meter/model.json: version: ignored (not used by Wanwu)`,
      `${root}/Meter/model.json: combs: ignored (not used by Wanwu)`,
      `${root}/Meter/model.json: properties[0].functionType: ignored (not used by Wanwu), and 10 more "functionType" keys`,
      `${root}/Meter/model.json: properties[0].functionMode: ignored (not used by Wanwu), and 10 more "functionMode" keys`,
    ]);
  });

  it('accepts spec numbers as strings or numbers, struct/array types, and the get service identifier list', () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'wanwu-registry-'));
    mkdirSync(path.join(root, 'a1Export'));
    writeFileSync(path.join(root, 'a1Export', 'product.json'), JSON.stringify({ productKey: 'a1Export', name: '导出', rat: 'cat1', codec: { type: 'alink-json' } }));
    writeFileSync(
      path.join(root, 'a1Export', 'model.json'),
      JSON.stringify({
        schema: 'https://iotx-tsl.oss-ap-southeast-1.aliyuncs.com/schema.json',
        profile: { version: '1.0', productKey: 'a1Export' },
        properties: [
          { identifier: 'temp', name: '温度', accessMode: 'r', required: false, desc: '', dataType: { type: 'float', specs: { min: '-40', max: 85, step: '0.1', unit: '°C', unitName: '摄氏度' } } },
          { identifier: 'pos', name: '位置', accessMode: 'r', dataType: { type: 'struct', specs: [{ identifier: 'lng', name: '经度', dataType: { type: 'double', specs: { min: '-180' } } }] } },
          { identifier: 'list', name: '列表', accessMode: 'rw', dataType: { type: 'array', specs: { size: '128', item: { type: 'int' } } } },
          { identifier: 'on', name: '开关', accessMode: 'rw', dataType: { type: 'bool' } },
        ],
        events: [{ identifier: 'post', name: 'post', type: 'info', required: true, desc: '属性上报', method: 'thing.event.property.post', outputData: [] }],
        services: [
          { identifier: 'get', name: 'get', required: true, callType: 'async', method: 'thing.service.property.get', inputData: ['temp', 'pos'], outputData: [] },
        ],
      }),
    );
    const registry = loadRegistry(root);
    const product = registry.product('a1Export')!;
    expect(product.model?.properties[0]?.dataType).toEqual({ type: 'float', specs: { min: -40, max: 85, step: 0.1, unit: '°C', unitName: '摄氏度' } });
    expect(product.model?.properties[2]?.dataType).toEqual({ type: 'array', specs: { size: 128, item: { type: 'int', specs: {} } } });
    expect(product.model?.services[0]?.inputData).toEqual(['temp', 'pos']);
    expect(product.devices.size).toBe(0);
    expect(registry.deviceCount).toBe(0);
    expect(registry.warnings).toEqual([]);
  });

  it('loads a product without model.json and devices.json', () => {
    root = mkdtempSync(path.join(os.tmpdir(), 'wanwu-registry-'));
    mkdirSync(path.join(root, 'Bare'));
    writeFileSync(path.join(root, 'Bare', 'product.json'), '\ufeff{"productKey": "Bare", "name": "裸设备", "rat": "redcap", "codec": {"type": "alink-json"}}');
    const product = loadRegistry(root).product('Bare')!;
    expect(product).toMatchObject({ productKey: 'Bare', rat: 'redcap', model: null, dir: path.join(root, 'Bare') });
    expect(product.devices.size).toBe(0);
  });
});
