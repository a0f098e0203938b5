// Commands to binary devices: `codec.downlink` layouts (src/thing-model/codecs/binary.ts,
// binary/compile.ts) and the codec's encodeCommand. Frames are annotated field by field; every
// refusal is checked with its code and message.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { compileBinaryLayout, crc16Modbus, sum8 } from '../../../src/thing-model/codecs/binary.js';
import type { CommandMessage } from '../../../src/thing-model/index.js';
import { errorOf } from '../../helpers/index.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
const hex = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');

function sample(productKey: string): Product {
  const dir = path.join(ROOT, 'devices', productKey);
  const read = (name: string): unknown => JSON.parse(readFileSync(path.join(dir, name), 'utf8'));
  return createProduct({ dir: `devices/${productKey}`, product: read('product.json'), model: read('model.json') });
}

const command = (method: string, params: Record<string, unknown>, id = '42'): CommandMessage => ({ id, version: '1.0', method, params });

/** A small product with rw and r properties and two services, for the layout checks. */
const MODEL = {
  properties: [
    { identifier: 'valve', name: 'valve', accessMode: 'rw', dataType: { type: 'enum', specs: { '0': 'closed', '1': 'open' } } },
    { identifier: 'level', name: 'level', accessMode: 'rw', dataType: { type: 'int', specs: { min: '0', max: '1000' } } },
    { identifier: 'flow', name: 'flow', accessMode: 'r', dataType: { type: 'float', specs: { min: '0', max: '100' } } },
  ],
  events: [],
  services: [
    {
      identifier: 'setInterval', name: 'setInterval', callType: 'async', method: 'thing.service.setInterval',
      inputData: [{ identifier: 'seconds', name: 'seconds', required: true, dataType: { type: 'int', specs: { min: '60', max: '86400' } } }],
      outputData: [],
    },
    { identifier: 'reboot', name: 'reboot', callType: 'async', method: 'thing.service.reboot', inputData: [], outputData: [] },
  ],
};
const UPLINK = { type: 'binary', fields: [{ id: 'flow', type: 'u16', scale: 0.01 }] };

function product(downlink: unknown, model: unknown = MODEL): Product {
  return createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: { ...UPLINK, downlink } }, model });
}

describe('WaterMeterNB downlink frames (devices/WaterMeterNB/product.json)', () => {
  const codec = sample('WaterMeterNB').codec;

  it('encodes setReportInterval as message 0x82 with the id and a sum8', () => {
    const frame = hex(
      '82' + //        msgType   u8   0x82 = setReportInterval (the switch)
        '002a' + //    msgId     u16  42, the Alink message id ("msgId": true)
        '00000e10' + // interval  u32  3600 s
        'ca', //       sum       sum8 0x82+0x00+0x2a+0x00+0x00+0x0e+0x10 = 0xca
    );
    const bytes = codec.encodeCommand!(command('thing.service.setReportInterval', { interval: 3600 }));
    expect(bytes.toString('hex')).toBe(frame.toString('hex'));
    expect(sum8(bytes, 0, 7)).toBe(0xca);
  });

  it('encodes a valve property set as message 0x81', () => {
    const frame = hex(
      '81' + //   msgType     u8   0x81 = setValve (thing.service.property.set)
        '0007' + // msgId     u16  7
        '01' + //   valveState u8  1 = closed
        '89', //    sum        sum8 0x81+0x00+0x07+0x01 = 0x89
    );
    expect(codec.encodeCommand!(command('thing.service.property.set', { valveState: 1 }, '7'))).toEqual(frame);
  });

  it('writes the low 16 bits of an id wider than the field', () => {
    // 70000 = 0x11170: the u16 keeps 0x1170, which tells apart any 65536 commands in a row.
    const bytes = codec.encodeCommand!(command('thing.service.setReportInterval', { interval: 60 }, '70000'));
    expect(bytes.subarray(1, 3).toString('hex')).toBe('1170');
  });
});

describe('AlarmNB downlink frames: header, switch, CRC trailer', () => {
  const codec = sample('AlarmNB').codec;

  it('encodes mute with the same header as the uplink and a CRC-16/MODBUS', () => {
    const frame = hex(
      'a55a' + //      magic    u16  0xA55A = 42330 (const)
        '01' + //      version  u8   1 (const)
        '81' + //      msgType  u8   0x81 = mute
        '0000002a' + // msgId   u32  42
        '05' + //      minutes  u8   5
        '9956', //     crc      CRC-16/MODBUS of bytes [0, 9) = 0x5699, low byte first
    );
    const bytes = codec.encodeCommand!(command('thing.service.mute', { minutes: 5 }));
    expect(bytes).toEqual(frame);
    expect(crc16Modbus(bytes, 0, 9)).toBe(0x5699);
  });

  it('encodes selfTest, a service without inputs, as header and CRC only', () => {
    const frame = hex(
      'a55a 01' + //   magic, version
        '82' + //      msgType  u8   0x82 = selfTest
        '0000002a' + // msgId   u32  42
        '8859', //     crc      CRC-16/MODBUS of bytes [0, 8) = 0x5988, low byte first
    );
    expect(codec.encodeCommand!(command('thing.service.selfTest', {}))).toEqual(frame);
  });

  it('refuses a method without a downlink message, naming the ones it has', () => {
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.property.set', { status: 1 })));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe("no downlink layout for thing.service.property.set in AlarmNB's codec.downlink (it has thing.service.mute, thing.service.selfTest); send the bytes as raw instead");
    expect(e.detail).toEqual({ method: 'thing.service.property.set', reason: 'no-layout' });
  });
});

describe('encodeCommand', () => {
  it('is defined without codec.downlink, and refuses every command (Alink JSON would not reach a binary device)', () => {
    const codec = createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: UPLINK }, model: MODEL }).codec;
    expect(codec.encodeCommand).toBeTypeOf('function');
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.reboot', {})));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe("no downlink layout for thing.service.reboot in Dl's codec.downlink (it has none); send the bytes as raw instead");
  });

  it('takes the one-message form: {"method", "fields"}', () => {
    const codec = product({ method: 'thing.service.setInterval', fields: [{ type: 'u8', const: 0x10 }, { id: 'seconds', type: 'u32', endian: 'little' }] }).codec;
    // 10 = const command byte | 58 02 00 00 = 600 s, little endian
    expect(codec.encodeCommand!(command('thing.service.setInterval', { seconds: 600 })).toString('hex')).toBe('1058020000');
  });

  it('chooses among property-set messages by the params given', () => {
    const codec = product({
      fields: [{ name: 't', type: 'u8' }],
      switch: 't',
      messages: [
        { when: 1, method: 'thing.service.property.set', fields: [{ id: 'valve', type: 'u8' }] },
        { when: 2, method: 'thing.service.property.set', fields: [{ id: 'level', type: 'u16' }] },
        { when: 3, method: 'thing.service.property.set', fields: [{ id: 'valve', type: 'u8' }, { id: 'level', type: 'u16' }] },
      ],
    }).codec;
    const set = (params: Record<string, unknown>) => codec.encodeCommand!(command('thing.service.property.set', params)).toString('hex');
    expect(set({ valve: 1 })).toBe('0101'); //                  t=1 | valve 1
    expect(set({ level: 500 })).toBe('0201f4'); //              t=2 | level 500
    expect(set({ level: 500, valve: 0 })).toBe('030001f4'); //  t=3 | valve 0 | level 500
  });

  it('picks the message by method when two methods carry the same params', () => {
    // No model.json: any service name; both messages take exactly {x}.
    const downlink = {
      fields: [{ name: 't', type: 'u8' }],
      switch: 't',
      messages: [
        { when: 1, method: 'thing.service.open', fields: [{ id: 'x', type: 'u8' }] },
        { when: 2, method: 'thing.service.close', fields: [{ id: 'x', type: 'u8' }] },
      ],
    };
    const codec = createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: { ...UPLINK, downlink } } }).codec;
    expect(codec.encodeCommand!(command('thing.service.open', { x: 5 })).toString('hex')).toBe('0105'); //  t=1 open  | x 5
    expect(codec.encodeCommand!(command('thing.service.close', { x: 5 })).toString('hex')).toBe('0205'); // t=2 close | x 5
  });

  it('refuses params the frame cannot hold, naming the field, as WANWU_ERR_COMMAND', () => {
    const codec = product({ method: 'thing.service.property.set', fields: [{ id: 'level', type: 'u8' }] }).codec;
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.property.set', { level: 1000 })));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('thing.service.property.set: level: 1000 does not fit u8 (raw 1000, range 0..255) (field level (u8 at offset 0))');
    expect(e.detail).toMatchObject({ identifier: 'level', rule: 'range', method: 'thing.service.property.set' });
    expect(e.cause).toMatchObject({ code: 'WANWU_ERR_INVALID' });
    const other = errorOf(() => codec.encodeCommand!(command('thing.service.property.set', { valve: 1 })));
    expect(other.code).toBe('WANWU_ERR_COMMAND');
    expect(other.message).toBe('thing.service.property.set: valve: not a field of the layout (level)');
  });

  it('refuses an id that is not a number when the frame carries one', () => {
    const codec = product({ method: 'thing.service.reboot', fields: [{ name: 'id', type: 'u16', msgId: true }] }).codec;
    expect(codec.encodeCommand!(command('thing.service.reboot', {}, '513')).toString('hex')).toBe('0201');
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.reboot', {}, 'abc')));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('thing.service.reboot: no numeric message id for id (field id (u16 at offset 0))');
  });

  it('keeps the uplink working beside the downlink', () => {
    const codec = product({ method: 'thing.service.reboot', fields: [{ type: 'u8', const: 1 }] }).codec;
    expect(codec.decode({ type: 'up-raw' }, hex('0102'), {})).toEqual([{ kind: 'property', data: { flow: 2.58 } }]);
  });

  it('lets compileBinaryLayout read a codec object that has a downlink (the simulator compiles the uplink so)', () => {
    const json = JSON.parse(readFileSync(path.join(ROOT, 'devices/WaterMeterNB/product.json'), 'utf8')) as { codec: unknown };
    expect(compileBinaryLayout(json.codec).size).toBe(14);
  });
});

describe('codec.downlink is checked at load (WANWU_ERR_PRODUCT with the key path)', () => {
  const P = 'devices/Dl/product.json: codec.downlink';
  const cases: Array<[string, unknown, string]> = [
    ['an uplink key', { kind: 'property', method: 'thing.service.reboot', fields: [] }, `${P}.kind: unknown key (allowed: endian, method, fields, switch, messages, trailer)`],
    ['a message with kind instead of method', { fields: [{ name: 't', type: 'u8' }], switch: 't', messages: [{ when: 1, kind: 'property', fields: [] }] }, `${P}.messages[0].kind: unknown key (allowed: when, name, method, fields)`],
    ['a missing method', { fields: [{ id: 'valve', type: 'u8' }] }, `${P}.method: missing (expected a non-empty string)`],
    ['a method that is not a command', { method: 'thing.event.property.post', fields: [{ type: 'u8' }] }, `${P}.method: "thing.event.property.post" is not "thing.service.property.set" or "thing.service.{serviceId}"`],
    ['an unknown service', { method: 'thing.service.selfDestruct', fields: [{ type: 'u8' }] }, `${P}.method: "selfDestruct" is not a service in model.json`],
    ['a read-only property in a property set', { method: 'thing.service.property.set', fields: [{ id: 'flow', type: 'u16' }] }, `${P}.fields[0].id: "flow" is not an rw property in model.json`],
    ['a param of another service', { method: 'thing.service.setInterval', fields: [{ id: 'valve', type: 'u8' }] }, `${P}.fields[0].id: "valve" is not an input of service setInterval in model.json`],
    ['a required input without a field', { method: 'thing.service.setInterval', fields: [{ type: 'u8', const: 1 }] }, `${P}.fields: no field carries "seconds", a required input of thing.service.setInterval`],
    ['a msgId on a signed field', { method: 'thing.service.reboot', fields: [{ type: 'i16', msgId: true }] }, `${P}.fields[0].msgId: the message id goes in an unsigned integer field (u8, u16, u32, u64), not i16`],
    ['a msgId with an id', { method: 'thing.service.setInterval', fields: [{ id: 'seconds', type: 'u32', msgId: true }] }, `${P}.fields[0].id: not allowed with "msgId": true (the field carries the message id and nothing else)`],
    ['two msgId fields', { fields: [{ name: 't', type: 'u8' }, { name: 'a', type: 'u8', msgId: true }], switch: 't', messages: [{ when: 1, method: 'thing.service.reboot', fields: [{ name: 'b', type: 'u16', msgId: true }] }] }, `${P}.messages[0].fields[0].msgId: the message id already goes in fields[1]`],
  ];
  for (const [what, downlink, message] of cases) {
    it(`refuses ${what}`, () => {
      const e = errorOf(() => product(downlink));
      expect(e.code).toBe('WANWU_ERR_PRODUCT');
      expect(e.message).toBe(message);
    });
  }

  it('refuses "msgId" in an uplink layout', () => {
    const e = errorOf(() => createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: { type: 'binary', fields: [{ name: 'id', type: 'u16', msgId: true }, { id: 'flow', type: 'u16' }] } }, model: MODEL }));
    expect(e.code).toBe('WANWU_ERR_PRODUCT');
    expect(e.message).toBe('devices/Dl/product.json: codec.fields[0].msgId: only in codec.downlink (a command carries an Alink message id; an uplink frame reports none)');
  });

  it('refuses "msgId" in a group item', () => {
    const downlink = { method: 'thing.service.x', fields: [{ id: 'g', type: 'group', count: 'u8', fields: [{ name: 'i', type: 'u8', msgId: true }] }] };
    const e = errorOf(() => createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: { ...UPLINK, downlink } } }));
    expect(e.code).toBe('WANWU_ERR_PRODUCT');
    expect(e.message).toBe('devices/Dl/product.json: codec.downlink.fields[0].fields[0].msgId: not allowed in a group item (one message id per frame)');
  });

  it('checks ids only against what exists when the product has no model.json', () => {
    const codec = createProduct({ dir: 'devices/Dl', product: { productKey: 'Dl', name: 'Dl', rat: 'nb-iot', codec: { ...UPLINK, downlink: { method: 'thing.service.anything', fields: [{ id: 'x', type: 'u8' }] } } } }).codec;
    expect(codec.encodeCommand!(command('thing.service.anything', { x: 9 })).toString('hex')).toBe('09');
  });
});
