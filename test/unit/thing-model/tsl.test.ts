// Reading thing models: every TSL data type and spec, Alibaba and OneNET exports as they come out of
// the consoles (test/fixtures/tsl/), custom modules, ignored-key warnings, and refusals.
import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { parseThingModel, validateItem, type ThingModel } from '../../../src/thing-model/index.js';

function fixture(name: string): unknown {
  return JSON.parse(readFileSync(new URL(`../../fixtures/tsl/${name}.json`, import.meta.url), 'utf8'));
}

function parse(json: unknown, file = 'model.json'): { model: ThingModel; warnings: string[] } {
  const warnings: string[] = [];
  const model = parseThingModel(json, file, (line) => warnings.push(line));
  return { model, warnings };
}

/** A model with one property of the given data type. */
const withType = (dataType: unknown, extra: Record<string, unknown> = {}) => ({
  properties: [{ identifier: 'p', name: '属性', accessMode: 'r', dataType, ...extra }],
});

function refusal(json: unknown): string {
  try {
    parseThingModel(json, 'model.json');
  } catch (err) {
    expect(err).toBeInstanceOf(WanwuError);
    expect((err as WanwuError).code).toBe('WANWU_ERR_PRODUCT');
    return (err as WanwuError).message;
  }
  throw new Error('expected a refusal');
}

describe('tsl: data types and specs', () => {
  const typeOf = (dataType: unknown) => parse(withType(dataType)).model.properties[0]!.dataType;

  it('reads numbers with min, max, step, unit and unitName, spec numbers as strings or numbers', () => {
    expect(typeOf({ type: 'int', specs: { min: '0', max: 100, step: '1', unit: '%', unitName: '百分比' } })).toEqual({
      type: 'int',
      specs: { min: 0, max: 100, step: 1, unit: '%', unitName: '百分比' },
    });
    expect(typeOf({ type: 'float', specs: { min: '-40.5', max: '1e3', step: '0.1' } })).toEqual({ type: 'float', specs: { min: -40.5, max: 1000, step: 0.1 } });
    expect(typeOf({ type: 'double', specs: {} })).toEqual({ type: 'double', specs: {} });
    expect(typeOf({ type: 'int' })).toEqual({ type: 'int', specs: {} });
  });

  it('reads OneNET blanks ("" and null) as unset specs', () => {
    expect(typeOf({ type: 'int', specs: { min: '', max: '10', step: '', unit: '', unitName: null } })).toEqual({ type: 'int', specs: { max: 10 } });
  });

  it('reads bool and enum labels', () => {
    expect(typeOf({ type: 'bool', specs: { '0': '关', '1': '开' } })).toEqual({ type: 'bool', specs: { '0': '关', '1': '开' } });
    expect(typeOf({ type: 'bool' })).toEqual({ type: 'bool', specs: {} });
    expect(typeOf({ type: 'enum', specs: { '-1': 'unknown', '0': 'ok', '2147483647': 'max' } })).toEqual({
      type: 'enum',
      specs: { '-1': 'unknown', '0': 'ok', '2147483647': 'max' },
    });
  });

  it('reads text length and date', () => {
    expect(typeOf({ type: 'text', specs: { length: '2048' } })).toEqual({ type: 'text', specs: { length: 2048 } });
    expect(typeOf({ type: 'text', specs: {} })).toEqual({ type: 'text', specs: {} });
    expect(typeOf({ type: 'date', specs: {} })).toEqual({ type: 'date', specs: {} });
  });

  it('reads a struct of scalar members', () => {
    const members = [
      { identifier: 'lng', name: '经度', dataType: { type: 'double', specs: { min: '-180', max: '180' } } },
      { identifier: 'mode', name: '模式', desc: '坐标系', dataType: { type: 'enum', specs: { '1': 'WGS_84' } } },
    ];
    expect(typeOf({ type: 'struct', specs: members })).toEqual({
      type: 'struct',
      specs: [
        { identifier: 'lng', name: '经度', dataType: { type: 'double', specs: { min: -180, max: 180 } } },
        { identifier: 'mode', name: '模式', desc: '坐标系', dataType: { type: 'enum', specs: { '1': 'WGS_84' } } },
      ],
    });
  });

  it("reads Alibaba's array {size, item} with number, text and struct items", () => {
    expect(typeOf({ type: 'array', specs: { size: '10', item: { type: 'int' } } })).toEqual({ type: 'array', specs: { size: 10, item: { type: 'int', specs: {} } } });
    expect(typeOf({ type: 'array', specs: { size: 3, item: { type: 'text', specs: { length: '8' } } } })).toEqual({
      type: 'array',
      specs: { size: 3, item: { type: 'text', specs: { length: 8 } } },
    });
    expect(
      typeOf({ type: 'array', specs: { size: '2', item: { type: 'struct', specs: [{ identifier: 'a', name: 'A', dataType: { type: 'bool' } }] } } }),
    ).toEqual({ type: 'array', specs: { size: 2, item: { type: 'struct', specs: [{ identifier: 'a', name: 'A', dataType: { type: 'bool', specs: {} } }] } } });
  });

  it("reads OneNET's array forms {size, items} and {length, type, specs}", () => {
    expect(typeOf({ type: 'array', specs: { size: '5', items: { type: 'float', specs: { max: '9' } } } })).toEqual({
      type: 'array',
      specs: { size: 5, item: { type: 'float', specs: { max: 9 } } },
    });
    expect(typeOf({ type: 'array', specs: { length: 10, type: 'string', specs: { length: 256 } } })).toEqual({
      type: 'array',
      specs: { size: 10, item: { type: 'text', specs: { length: 256 } } },
    });
  });

  it("reads OneNET's type names: int32, int64 (safe-integer range), string, bitMap; bool labels true/false", () => {
    expect(typeOf({ type: 'int32', specs: { min: '-2147483648', max: '2147483647' } })).toEqual({ type: 'int', specs: { min: -2147483648, max: 2147483647 } });
    expect(typeOf({ type: 'int64', specs: { min: '-9223372036854775808', max: '9223372036854775807' } })).toEqual({
      type: 'int',
      specs: { min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER },
      int64: true,
    });
    expect(typeOf({ type: 'string', specs: { length: 50 } })).toEqual({ type: 'text', specs: { length: 50 } });
    expect(typeOf({ type: 'bitMap', specs: { length: 8 } })).toEqual({ type: 'int', specs: { min: 0, max: Number.MAX_SAFE_INTEGER }, int64: true });
    expect(typeOf({ type: 'bool', specs: { true: '开', false: '关' } })).toEqual({ type: 'bool', specs: { '1': '开', '0': '关' } });
  });
});

describe('tsl: events, services and the rest of a feature', () => {
  it('keeps accessMode, required and desc on properties', () => {
    const { model } = parse(withType({ type: 'int' }, { required: true, desc: '说明' }));
    expect(model.properties[0]).toEqual({ identifier: 'p', name: '属性', accessMode: 'r', required: true, desc: '说明', dataType: { type: 'int', specs: {} } });
  });

  it('reads events with type, method, required and output data; OneNET eventType', () => {
    const { model } = parse({
      events: [
        { identifier: 'over', name: '超限', type: 'alert', required: false, method: 'thing.event.over.post', outputData: [{ identifier: 'v', name: '值', required: true, dataType: { type: 'float' } }] },
        { identifier: 'fault', name: '故障', eventType: 'error', outputData: [] },
        { identifier: 'hello', name: '上线', type: 'info' },
      ],
    });
    expect(model.events).toEqual([
      { identifier: 'over', name: '超限', type: 'alert', required: false, method: 'thing.event.over.post', outputData: [{ identifier: 'v', name: '值', required: true, dataType: { type: 'float', specs: {} } }] },
      { identifier: 'fault', name: '故障', type: 'error', outputData: [] },
      { identifier: 'hello', name: '上线', type: 'info', outputData: [] },
    ]);
  });

  it('reads services with callType (async by default), typed input/output and the get service identifier list', () => {
    const { model } = parse({
      services: [
        { identifier: 'get', name: 'get', callType: 'async', method: 'thing.service.property.get', inputData: ['a', 'b'], outputData: [] },
        {
          identifier: 'reboot',
          name: '重启',
          callType: 'sync',
          inputData: [{ identifier: 'delay', name: '延时', dataType: { type: 'int', specs: { max: '60' } } }],
          outputData: [{ identifier: 'ok', name: '结果', dataType: { type: 'bool' } }],
        },
        { identifier: 'ping', name: 'ping' },
      ],
    });
    expect(model.services).toEqual([
      { identifier: 'get', name: 'get', callType: 'async', method: 'thing.service.property.get', inputData: ['a', 'b'], outputData: [] },
      {
        identifier: 'reboot',
        name: '重启',
        callType: 'sync',
        inputData: [{ identifier: 'delay', name: '延时', dataType: { type: 'int', specs: { max: 60 } } }],
        outputData: [{ identifier: 'ok', name: '结果', dataType: { type: 'bool', specs: {} } }],
      },
      { identifier: 'ping', name: 'ping', callType: 'async', inputData: [], outputData: [] },
    ]);
  });
});

describe('tsl: real exports import unchanged', () => {
  it('an Alibaba console export: every type, the post event, set/get services, std keys reported once', () => {
    const { model, warnings } = parse(fixture('alibaba-export'), 'devices/a1Fx8eHk2Lq/model.json');
    expect(model.schema).toBe('https://iotx-tsl.oss-ap-southeast-1.aliyuncs.com/schema.json');
    expect(model.profile).toEqual({ version: '1.0', productKey: 'a1Fx8eHk2Lq' });
    expect(model.properties.map((p) => `${p.identifier}:${p.dataType.type}`)).toEqual([
      'PowerSwitch:bool',
      'CurrentTemperature:float',
      'RSSI:int',
      'Energy:double',
      'WorkMode:enum',
      'DeviceLabel:text',
      'LastMaintenance:date',
      'GeoLocation:struct',
      'PhaseCurrents:array',
      'NeighborCells:array',
      'AlarmTags:array',
    ]);
    expect(model.properties[7]!.dataType).toEqual({
      type: 'struct',
      specs: [
        { identifier: 'Longitude', name: '经度', dataType: { type: 'double', specs: { min: -180, max: 180, step: 0.01, unit: '°', unitName: '度' } } },
        { identifier: 'Latitude', name: '纬度', dataType: { type: 'double', specs: { min: -90, max: 90, step: 0.01, unit: '°', unitName: '度' } } },
        { identifier: 'Altitude', name: '海拔', dataType: { type: 'double', specs: { min: 0, max: 9999, step: 0.01, unit: 'm', unitName: '米' } } },
        { identifier: 'CoordinateSystem', name: '坐标系统', dataType: { type: 'enum', specs: { '1': 'WGS_84', '2': 'GCJ_02' } } },
      ],
    });
    expect(model.events.map((e) => [e.identifier, e.type, e.method])).toEqual([
      ['post', 'info', 'thing.event.property.post'],
      ['Error', 'error', 'thing.event.Error.post'],
      ['TamperAlarm', 'alert', 'thing.event.TamperAlarm.post'],
    ]);
    expect(model.services.map((s) => [s.identifier, s.callType, s.inputData.length, s.outputData.length])).toEqual([
      ['set', 'async', 3, 0],
      ['get', 'async', 11, 2],
      ['Reboot', 'sync', 1, 1],
    ]);
    // 13 `std` keys (11 properties, 2 events): one line.
    expect(warnings).toEqual(['devices/a1Fx8eHk2Lq/model.json: properties[0].std: ignored (not used by Wanwu), and 12 more "std" keys']);

    const check = (data: Record<string, unknown>) => validateItem(model, 'a1Fx8eHk2Lq', { kind: 'property', data });
    expect(
      check({
        PowerSwitch: true,
        GeoLocation: { Longitude: 120.19, Latitude: 30.26, Altitude: 12.5, CoordinateSystem: 2 },
        NeighborCells: [{ pci: 101, rsrp: -95 }],
        LastMaintenance: '1700000000000',
      }),
    ).toEqual({
      PowerSwitch: 1,
      GeoLocation: { Longitude: 120.19, Latitude: 30.26, Altitude: 12.5, CoordinateSystem: 2 },
      NeighborCells: [{ pci: 101, rsrp: -95 }],
      LastMaintenance: 1700000000000,
    });
  });

  it('a OneNET Studio export: its type names, eventType, $ identifiers, blank specs; its extra keys reported once each', () => {
    const { model, warnings } = parse(fixture('onenet-export'), 'devices/Xq3bK9mP2d/model.json');
    expect(model.profile).toEqual({ industryId: '1', sceneId: '18', categoryId: '93', productId: 'Xq3bK9mP2d' });
    expect(model.properties.map((p) => `${p.identifier}:${p.dataType.type}`)).toEqual([
      '$OneNET_LBS:array',
      'temperature:float',
      'csq:int',
      'totalFlow:int',
      'imsi:text',
      'relay:bool',
      'mode:enum',
      'bootTime:date',
      'history:array',
    ]);
    expect(model.properties[0]!.dataType).toMatchObject({ type: 'array', specs: { size: 3, item: { type: 'struct' } } });
    expect(model.properties[1]!.dataType).toEqual({ type: 'float', specs: { min: -55, max: 125, unit: '摄氏度 / °C' } });
    expect(model.properties[3]!.dataType).toEqual({ type: 'int', specs: { min: 0, max: Number.MAX_SAFE_INTEGER, step: 1, unit: '升 / L' }, int64: true });
    expect(model.properties[2]).not.toHaveProperty('desc'); // "desc": null
    expect(model.events).toEqual([
      {
        identifier: 'alarm',
        name: '预警事件',
        type: 'alert',
        required: false,
        outputData: [
          { identifier: 'powerOff', name: '断电', dataType: { type: 'bool', specs: { '1': '是', '0': '否' } } },
          { identifier: 'smoke', name: '烟雾浓度', dataType: { type: 'int', specs: { min: 0, max: 10000, unit: '百万分率 / ppm' } } },
        ],
      },
    ]);
    expect(model.services[0]).toMatchObject({ identifier: 'reboot', callType: 'sync', inputData: [{ identifier: 'delay' }] });
    expect(warnings).toEqual([
      'devices/Xq3bK9mP2d/model.json: version: ignored (not used by Wanwu)',
      'devices/Xq3bK9mP2d/model.json: combs: ignored (not used by Wanwu)',
      'devices/Xq3bK9mP2d/model.json: properties[0].functionType: ignored (not used by Wanwu), and 10 more "functionType" keys',
      'devices/Xq3bK9mP2d/model.json: properties[0].functionMode: ignored (not used by Wanwu), and 10 more "functionMode" keys',
    ]);

    const check = (data: Record<string, unknown>) => validateItem(model, 'Xq3bK9mP2d', { kind: 'property', data });
    expect(check({ $OneNET_LBS: [{ mnc: 0, mcc: 460, lac: 6244, cid: 12345 }], relay: true, totalFlow: 2 ** 40, history: [1.5, 2] })).toEqual({
      $OneNET_LBS: [{ mnc: 0, mcc: 460, lac: 6244, cid: 12345 }],
      relay: 1,
      totalFlow: 2 ** 40,
      history: [1.5, 2],
    });
  });

  it("an Alibaba custom module's export: features are named {functionBlockId}:{identifier}", () => {
    const { model, warnings } = parse(fixture('alibaba-module'));
    expect(warnings).toEqual([]);
    expect(model.functionBlockId).toBe('battery');
    expect(model.functionBlockName).toBe('电池模块');
    expect(model.properties.map((p) => [p.identifier, p.functionBlockId])).toEqual([
      ['battery:Voltage', 'battery'],
      ['battery:Level', 'battery'],
    ]);
    expect(model.events.map((e) => [e.identifier, e.method, e.outputData.map((o) => o.identifier)])).toEqual([['battery:Low', 'thing.event.battery:Low.post', ['Level']]]);
    expect(validateItem(model, 'P', { kind: 'property', data: { 'battery:Level': 80 } })).toEqual({ 'battery:Level': 80 });
    expect(validateItem(model, 'P', { kind: 'event', event: 'battery:Low', data: { Level: 9 } })).toEqual({ Level: 9 });
    expect(() => validateItem(model, 'P', { kind: 'property', data: { Level: 80 } })).toThrow('Level: not a property of P');
    expect(() => validateItem(model, 'P', { kind: 'property', data: { 'battery:Level': 101 } })).toThrow('battery:Level: 101 above max 100');
  });

  it('modules pasted into functionBlocks join the default module; a module only named there is reported', () => {
    const { model, warnings } = parse({
      properties: [{ identifier: 'Level', name: '电量', accessMode: 'r', dataType: { type: 'int' } }],
      functionBlocks: [
        { functionBlockId: 'battery', functionBlockName: '电池', properties: [{ identifier: 'Level', name: '电量', accessMode: 'r', dataType: { type: 'int' } }] },
        { productKey: 'a1Fx8eHk2Lq', functionBlockId: 'location0', functionBlockName: 'Location module 0' },
      ],
    });
    expect(model.properties.map((p) => p.identifier)).toEqual(['Level', 'battery:Level']);
    expect(model.functionBlocks).toEqual([
      { functionBlockId: 'battery', functionBlockName: '电池', included: true },
      { functionBlockId: 'location0', functionBlockName: 'Location module 0', included: false },
    ]);
    expect(warnings).toEqual([
      'model.json: functionBlocks[1]: module "location0" is only named here, without its properties, events or services, so data for "location0:..." identifiers will be refused (paste the module\'s TSL export into this entry to accept it)',
    ]);
  });
});

describe('tsl: ignored keys are reported once per key name', () => {
  it('names the first place and counts the others, in order of first appearance', () => {
    const { warnings } = parse(
      {
        _ppk: { version: '1' },
        properties: [
          { identifier: 'a', name: 'A', accessMode: 'r', std: true, extendConfig: {}, dataType: { type: 'int', specs: { min: 0, custom: 1 } } },
          { identifier: 'b', name: 'B', accessMode: 'r', std: false, dataType: { type: 'text', specs: { length: 2, custom: 2 } } },
          {
            identifier: 'c',
            name: 'C',
            accessMode: 'r',
            dataType: { type: 'struct', specs: [{ identifier: 'x', name: 'X', std: true, dataType: { type: 'date', specs: { format: 'ms' } } }] },
          },
        ],
        events: [{ identifier: 'e', name: 'E', type: 'info', std: true, outputData: [{ identifier: 'o', name: 'O', unit: 'm', dataType: { type: 'float' } }] }],
      },
      'devices/P/model.json',
    );
    expect(warnings).toEqual([
      'devices/P/model.json: _ppk: ignored (not used by Wanwu)',
      'devices/P/model.json: properties[0].std: ignored (not used by Wanwu), and 3 more "std" keys',
      'devices/P/model.json: properties[0].extendConfig: ignored (not used by Wanwu)',
      'devices/P/model.json: properties[0].dataType.specs.custom: ignored (not used by Wanwu), and 1 more "custom" key',
      'devices/P/model.json: properties[2].dataType.specs[0].dataType.specs.format: ignored (not used by Wanwu)',
      'devices/P/model.json: events[0].outputData[0].unit: ignored (not used by Wanwu)',
    ]);
  });

  it('reports nothing for a model that uses only what Wanwu reads', () => {
    expect(parse(withType({ type: 'int', specs: { min: 0 } }, { required: false, desc: 'x' })).warnings).toEqual([]);
  });

  it('notes that bitMap specs are not checked, once', () => {
    const { warnings } = parse({
      properties: [
        { identifier: 'a', name: 'A', accessMode: 'r', dataType: { type: 'bitMap', specs: { length: 8 } } },
        { identifier: 'b', name: 'B', accessMode: 'r', dataType: { type: 'bitMap', specs: { length: 16 } } },
      ],
    });
    expect(warnings).toEqual(['model.json: properties[0].dataType.specs: bitMap is read as a non-negative integer; its specs are not checked']);
  });
});

describe('tsl: broken models are refused with the file and key path', () => {
  const struct = (dataType: unknown) => withType({ type: 'struct', specs: [{ identifier: 'm', name: 'M', dataType }] });
  const cases: Array<[string, unknown, string]> = [
    ['a struct member that is a struct', struct({ type: 'struct', specs: [] }), 'model.json: properties[0].dataType.specs[0].dataType.type: "struct" is not allowed here (expected one of "int", "float", "double", "bool", "enum", "text", "date")'],
    ['a struct member that is an array', struct({ type: 'array', specs: { size: 1, item: { type: 'int' } } }), 'model.json: properties[0].dataType.specs[0].dataType.type: "array" is not allowed here (expected one of "int", "float", "double", "bool", "enum", "text", "date")'],
    ['a struct without members', withType({ type: 'struct', specs: [] }), 'model.json: properties[0].dataType.specs: a struct needs at least one member'],
    ['struct specs that are an object', withType({ type: 'struct', specs: {} }), 'model.json: properties[0].dataType.specs: expected an array, got {}'],
    [
      'duplicate struct members',
      withType({ type: 'struct', specs: [{ identifier: 'm', name: 'M', dataType: { type: 'int' } }, { identifier: 'm', name: 'M2', dataType: { type: 'int' } }] }),
      'model.json: properties[0].dataType.specs[1].identifier: duplicate identifier "m" (also properties[0].dataType.specs[0])',
    ],
    ['an array of bools', withType({ type: 'array', specs: { size: 2, item: { type: 'bool' } } }), 'model.json: properties[0].dataType.specs.item.type: "bool" is not allowed here (expected one of "int", "float", "double", "text", "struct")'],
    ['an array of arrays', withType({ type: 'array', specs: { size: 2, item: { type: 'array' } } }), 'model.json: properties[0].dataType.specs.item.type: "array" is not allowed here (expected one of "int", "float", "double", "text", "struct")'],
    ['an array without size', withType({ type: 'array', specs: { item: { type: 'int' } } }), 'model.json: properties[0].dataType.specs.size: missing (expected a number)'],
    ['an array of size 0', withType({ type: 'array', specs: { size: '0', item: { type: 'int' } } }), 'model.json: properties[0].dataType.specs.size: "0" is below 1'],
    ['an array without item', withType({ type: 'array', specs: { size: 2 } }), 'model.json: properties[0].dataType.specs.item: missing (expected the item type: {"type": "int" | "float" | "double" | "text" | "struct", "specs"?})'],
    ['an array struct item with a bad member', withType({ type: 'array', specs: { size: 2, item: { type: 'struct', specs: [{ identifier: 'a b', name: 'x', dataType: { type: 'int' } }] } } }), 'model.json: properties[0].dataType.specs.item.specs[0].identifier: "a b" is not an identifier (letters, digits, _)'],
    ['an unknown type', withType({ type: 'varchar' }), 'model.json: properties[0].dataType.type: expected one of "int", "float", "double", "bool", "enum", "text", "date", "struct", "array", got "varchar"'],
    ['a bool label key other than 0/1/true/false', withType({ type: 'bool', specs: { yes: '是' } }), 'model.json: properties[0].dataType.specs.yes: bool specs may only label "0" and "1" (or "false" and "true")'],
    ['an int bound outside int32', withType({ type: 'int', specs: { max: '2147483648' } }), 'model.json: properties[0].dataType.specs.max: "2147483648" is above 2147483647'],
    ['an int64 bound that is not an integer', withType({ type: 'int64', specs: { max: '1.5' } }), 'model.json: properties[0].dataType.specs.max: expected an integer, got "1.5"'],
    ['a bad callType', { services: [{ identifier: 's', name: 'S', callType: 'later' }] }, 'model.json: services[0].callType: expected one of "sync", "async", got "later"'],
    ['a get service input that is not an identifier', { services: [{ identifier: 'get', name: 'get', inputData: ['a', 'b c'] }] }, 'model.json: services[0].inputData[1]: "b c" is not an identifier (letters, digits, _)'],
    ['a bad functionBlockId', { functionBlockId: 'a:b' }, 'model.json: functionBlockId: "a:b" is not a module identifier (letters, digits, _)'],
    [
      'a module listed twice',
      { functionBlocks: [{ functionBlockId: 'm' }, { functionBlockId: 'm' }] },
      'model.json: functionBlocks[1].functionBlockId: duplicate module "m" (also functionBlocks[0])',
    ],
    ['an event without type', { events: [{ identifier: 'e', name: 'E', outputData: [] }] }, 'model.json: events[0].type: missing (expected one of "info", "alert", "error")'],
  ];
  it.each(cases)('refuses %s', (_name, json, message) => {
    expect(refusal(json)).toBe(message);
  });
});
