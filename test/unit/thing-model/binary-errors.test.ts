// Every way a frame or a layout can be refused, with the exact message: a frame error names the
// field and its offset (WANWU_ERR_MALFORMED, or WANWU_ERR_INVALID for a value that cannot be
// reported); a layout error names the key path (WANWU_ERR_PRODUCT).
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { compileBinaryLayout, decodeBinary } from '../../../src/thing-model/codecs/binary.js';
import { parseThingModel } from '../../../src/thing-model/tsl.js';
import { errorOf } from '../../helpers/index.js';

const hex = (h: string) => Buffer.from(h.replace(/\s+/g, ''), 'hex');

describe('binary frames: short at each kind of field', () => {
  // Variable-length layouts, so that each field's own check speaks (a fixed-size layout is measured first).
  const cases: Array<[string, object, string, string]> = [
    ['a number', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { id: 'n', type: 'u32' }] }, '00 0102', 'frame is 3 bytes; field n (u32 at offset 1) needs 4'],
    ['a bits word', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { type: 'bits', size: 2, bits: [{ id: 'b', bit: 0 }] }] }, '00 01', 'frame is 2 bytes; field fields[1] (bits at offset 1) needs 2'],
    ['a BCD number', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { id: 'r', type: 'bcd', size: 4 }] }, '00 000123', 'frame is 4 bytes; field r (bcd at offset 1) needs 4'],
    ['a BCD date', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { id: 'd', type: 'bcd', as: 'date', format: 'YYMMDD' }] }, '00 2401', 'frame is 3 bytes; field d (bcd at offset 1) needs 3'],
    ['a string length', { fields: [{ id: 's', type: 'string', prefix: 'u16' }] }, '00', 'frame is 1 bytes; field s (string at offset 0) needs 2 for its length'],
    ['a string body', { fields: [{ id: 's', type: 'string', prefix: 'u8' }] }, '05 4142', 'frame is 3 bytes; field s (string at offset 0) needs 6 (length 5)'],
    ['fixed bytes', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { id: 'b', type: 'bytes', size: 3 }] }, '00 0102', 'frame is 3 bytes; field b (bytes at offset 1) needs 3'],
    ['a group count', { fields: [{ id: 'g', type: 'group', count: 'u16', item: { type: 'u8' } }] }, '00', 'frame is 1 bytes; field g (group at offset 0) needs 2 for its count'],
    ['a group item of variable size', { fields: [{ id: 'g', type: 'group', count: 'u8', fields: [{ id: 's', type: 'string', prefix: 'u8' }, { id: 'n', type: 'u8' }] }] }, '02 0141 07 01', 'frame is 5 bytes; field g[1].s (string at offset 4) needs 2 (length 1)'],
    ['a checksum', { fields: [{ id: 's', type: 'string', prefix: 'u8' }, { type: 'sum8' }] }, '00', 'frame is 1 bytes; field fields[1] (sum8 at offset 1) needs 1'],
  ];
  for (const [what, json, frame, message] of cases) {
    it(`refuses a frame that ends inside ${what}`, () => {
      const e = errorOf(() => decodeBinary(compileBinaryLayout({ type: 'binary', ...json }), hex(frame)));
      expect(e.code).toBe('WANWU_ERR_MALFORMED');
      expect(e.message).toBe(message);
    });
  }

  it('refuses a count that overruns the frame before reading any item', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'g', type: 'group', count: 'u8', fields: [{ id: 'a', type: 'u16' }] }] });
    const e = errorOf(() => decodeBinary(layout, hex('ff 0001'))); // 255 items announced, one present
    expect(e.code).toBe('WANWU_ERR_MALFORMED');
    expect(e.message).toBe('field g (group at offset 0) counts 255 items of 2 bytes (510 from offset 1); the frame has 2 left');
    expect(e.detail).toMatchObject({ field: 'g', offset: 0, count: 255 });
  });

  it('names the first field that does not fit in a fixed-size layout, with the layout size', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'a', type: 'u8' }, { type: 'bits', name: 'flags', bits: [{ id: 'f', bit: 0 }] }, { type: 'crc16-modbus', name: 'crc' }] });
    expect(errorOf(() => decodeBinary(layout, hex('01'))).message).toBe('frame is 1 bytes; field flags (bits at offset 1) needs 1 (the layout is 4 bytes)');
    expect(errorOf(() => decodeBinary(layout, hex('0101 00'))).message).toBe('frame is 3 bytes; field crc (crc16-modbus at offset 2) needs 2 (the layout is 4 bytes)');
  });
});

describe('binary frames: contents refused', () => {
  it('refuses a bits const, a bytes const and a BCD const', () => {
    const bits = compileBinaryLayout({ type: 'binary', fields: [{ type: 'bits', name: 'hdr', bits: [{ name: 'version', bits: [6, 7], const: 1 }, { id: 'x', bits: [0, 5] }] }] });
    expect(errorOf(() => decodeBinary(bits, hex('81'))).message).toBe('field version (bits 6..7 of the byte at offset 0) is 2; expected 1');
    expect(decodeBinary(bits, hex('41'))).toEqual({ x: 1 });
    const magic = compileBinaryLayout({ type: 'binary', fields: [{ type: 'bytes', name: 'magic', size: 2, const: '6868' }] });
    expect(errorOf(() => decodeBinary(magic, hex('6869'))).message).toBe('field magic (bytes at offset 0) is 6869; expected 6868');
    const bcd = compileBinaryLayout({ type: 'binary', fields: [{ type: 'bcd', name: 'ver', size: 1, const: 10 }] });
    expect(errorOf(() => decodeBinary(bcd, hex('11'))).message).toBe('field ver (bcd at offset 0) is 11; expected 10');
  });

  it('refuses a bad 8-bit sum and xor', () => {
    const sum = compileBinaryLayout({ type: 'binary', fields: [{ id: 'a', type: 'u16' }, { name: 'cs', type: 'sum8' }] });
    expect(errorOf(() => decodeBinary(sum, hex('0102 04'))).message).toBe('field cs (sum8 at offset 2): 8-bit sum 0x04 does not match 0x03 computed over bytes [0, 2)');
    const xor = compileBinaryLayout({ type: 'binary', fields: [{ id: 'a', type: 'u16' }, { name: 'cs', type: 'xor8', from: 1 }] });
    expect(errorOf(() => decodeBinary(xor, hex('0102 01'))).message).toBe('field cs (xor8 at offset 2): 8-bit xor 0x01 does not match 0x02 computed over bytes [1, 2)');
  });

  it('refuses text that is not ASCII or not UTF-8', () => {
    const ascii = compileBinaryLayout({ type: 'binary', fields: [{ id: 's', type: 'string', size: 2, encoding: 'ascii' }] });
    expect(errorOf(() => decodeBinary(ascii, hex('41e9'))).message).toBe('field s (string at offset 0) has byte 0xe9 at offset 1, which is not ASCII');
    const utf8 = compileBinaryLayout({ type: 'binary', fields: [{ id: 's', type: 'string', size: 2 }] });
    expect(errorOf(() => decodeBinary(utf8, hex('c328'))).message).toBe('field s (string at offset 0) is not valid UTF-8');
  });

  it('refuses a BCD number with a hex nibble and an impossible date (Feb 30)', () => {
    const n = compileBinaryLayout({ type: 'binary', fields: [{ id: 'r', type: 'bcd', size: 2 }] });
    expect(errorOf(() => decodeBinary(n, hex('12f4'))).message).toBe('field r (bcd at offset 0) has byte 0xf4 at offset 1, which is not two decimal digits');
    const d = compileBinaryLayout({ type: 'binary', fields: [{ id: 'd', type: 'bcd', as: 'date', format: 'YYYYMMDD' }] });
    expect(errorOf(() => decodeBinary(d, hex('2023 02 30'))).message).toBe('field d (bcd at offset 0) is 2023-02-30 00:00:00, not a date-time after 1970 (format YYYYMMDD)');
    expect(errorOf(() => decodeBinary(d, hex('1969 12 31'))).message).toBe('field d (bcd at offset 0) is 1969-12-31 00:00:00, not a date-time after 1970 (format YYYYMMDD)');
  });

  it('refuses values it cannot report: NaN floats, 64-bit beyond 2^53, a negative device time (WANWU_ERR_INVALID)', () => {
    const f = compileBinaryLayout({ type: 'binary', fields: [{ id: 'f', type: 'f32' }] });
    const nan = errorOf(() => decodeBinary(f, hex('7fc00000')));
    expect([nan.code, nan.message]).toEqual(['WANWU_ERR_INVALID', 'field f (f32 at offset 0): NaN is not a finite number']);
    const big = compileBinaryLayout({ type: 'binary', fields: [{ id: 'n', type: 'i64', endian: 'little' }] });
    expect(errorOf(() => decodeBinary(big, hex('0000000000000080'))).message).toBe(
      'field n (i64 at offset 0): 64-bit value -9223372036854775808 does not fit a JavaScript number (2^53)',
    );
    const ts = compileBinaryLayout({ type: 'binary', fields: [{ name: 't', type: 'i32', ts: true }, { id: 'v', type: 'u8' }] });
    const neg = errorOf(() => decodeBinary(ts, hex('ffffffff 01')));
    expect([neg.code, neg.message]).toEqual(['WANWU_ERR_INVALID', 'field t (i32 at offset 0): -1 is not a device time (ms since the epoch)']);
  });

  it('skips unnamed 64-bit and float fields without judging them', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ type: 'u64' }, { type: 'f32' }, { id: 'v', type: 'u8' }] });
    expect(decodeBinary(layout, hex('ffffffffffffffff 7fc00000 05'))).toEqual({ v: 5 });
  });
});

describe('binary layouts: refused at load', () => {
  const model = parseThingModel(
    {
      properties: [
        { identifier: 'level', name: '液位', accessMode: 'r', dataType: { type: 'float', specs: {} } },
        { identifier: 'count', name: '计数', accessMode: 'r', dataType: { type: 'int', specs: {} } },
        { identifier: 'label', name: '标签', accessMode: 'r', dataType: { type: 'text', specs: { length: 8 } } },
        { identifier: 'at', name: '时间', accessMode: 'r', dataType: { type: 'date', specs: {} } },
        {
          identifier: 'samples',
          name: '采样',
          accessMode: 'r',
          dataType: { type: 'array', specs: { size: '4', item: { type: 'struct', specs: [{ identifier: 'v', name: '值', dataType: { type: 'int', specs: {} } }] } } },
        },
        { identifier: 'levels', name: '液位表', accessMode: 'r', dataType: { type: 'array', specs: { size: '4', item: { type: 'int', specs: {} } } } },
      ],
      events: [{ identifier: 'alarm', name: '告警', type: 'alert', outputData: [{ identifier: 'code', name: '代码', dataType: { type: 'int', specs: {} } }] }],
    },
    'model.json',
  );
  const u8 = (extra: object = {}) => ({ name: 'msgType', type: 'u8', ...extra });
  const multi = (extra: object) => ({ type: 'binary', fields: [u8()], switch: 'msgType', messages: [{ when: 1, fields: [] }], ...extra });

  const cases: Array<[string, object, string]> = [
    // layout and messages
    ['an unknown layout key', { type: 'binary', fields: [{ type: 'u8' }], endain: 'little' }, 'codec.endain: unknown key (allowed: type, endian, kind, event, fields, switch, messages, trailer, trailing, downlink)'],
    ['a bad trailing option', { type: 'binary', fields: [{ type: 'u8' }], trailing: 'keep' }, 'codec.trailing: expected one of "error", "ignore", got "keep"'],
    ['switch without messages', { type: 'binary', fields: [u8()], switch: 'msgType' }, 'codec.switch: only allowed with "messages"'],
    ['trailer without messages', { type: 'binary', fields: [u8()], trailer: [] }, 'codec.trailer: only allowed with "messages"'],
    ['kind next to messages', multi({ kind: 'event' }), 'codec.kind: set it on each of "messages" instead'],
    ['no messages', multi({ messages: [] }), 'codec.messages: expected at least one message'],
    ['a switch naming no field', multi({ switch: 'kind' }), 'codec.switch: no field of "fields" is named "kind" (the switch names a header field by its "name")'],
    ['a float switch', multi({ fields: [u8({ type: 'f32' })] }), 'codec.fields[0].type: the switch field msgType must be an integer of 8 to 32 bits, not f32'],
    ['a 64-bit switch', multi({ fields: [u8({ type: 'u64' })] }), 'codec.fields[0].type: the switch field msgType must be an integer of 8 to 32 bits, not u64'],
    ['two switch fields', multi({ fields: [u8(), u8()] }), 'codec.fields[1].name: a second field is named "msgType", the switch'],
    ['a switch with a const', multi({ fields: [u8({ const: 1 })] }), 'codec.fields[0].const: not allowed on the switch field msgType (its raw value picks the message)'],
    ['a when beyond the switch', multi({ messages: [{ when: 256, fields: [] }] }), 'codec.messages[0].when: 256 is above 255'],
    ['a repeated when', multi({ messages: [{ when: 1, fields: [] }, { when: 1, fields: [] }] }), 'codec.messages[1].when: 1 is also the value of messages[0]'],
    ['an unknown message key', multi({ messages: [{ when: 1, fields: [], event: 'alarm', typ: 1 }] }), 'codec.messages[0].typ: unknown key (allowed: when, name, kind, event, fields)'],
    ['a message event not in the model', multi({ messages: [{ when: 1, kind: 'event', event: 'fire', fields: [] }] }), 'codec.messages[0].event: "fire" is not an event in model.json'],
    ['a header id that is not in every message', multi({ fields: [u8(), { id: 'level', type: 'u8' }], messages: [{ when: 1, fields: [] }, { when: 2, kind: 'event', event: 'alarm', fields: [] }] }), 'codec.fields[1].id: "level" is not an output of event alarm in model.json'],
    ['an id in the header and a message', multi({ fields: [u8(), { id: 'level', type: 'u8' }], messages: [{ when: 1, fields: [{ id: 'level', type: 'u8' }] }] }), 'codec.messages[0].fields[0].id: duplicate id "level" (also fields[1])'],
    // placement
    ['at after a variable-length field', { type: 'binary', fields: [{ id: 'label', type: 'string', prefix: 'u8' }, { id: 'count', type: 'u8', at: 9 }] }, 'codec.fields[1].at: not allowed after the variable-length field label'],
    ['overlapping fields', { type: 'binary', fields: [{ id: 'count', type: 'u16' }, { id: 'level', type: 'u8', at: 1 }] }, 'codec.fields[1]: bytes 1..1 overlap field count (bytes 0..1)'],
    ['a variable field over placed bytes', { type: 'binary', fields: [{ id: 'count', type: 'u8', at: 4 }, { id: 'label', type: 'string', prefix: 'u8', at: 0 }] }, 'codec.fields[1]: a variable-length field must start after every byte placed so far (offset 5), not at 0'],
    // numbers
    ['a number into a text', { type: 'binary', fields: [{ id: 'label', type: 'u16' }] }, 'codec.fields[0].id: label is a text in model.json; a u16 field carries a number'],
    ['a fractional offset into an int', { type: 'binary', fields: [{ id: 'count', type: 'u16', offset: 0.5 }] }, 'codec.fields[0].offset: 0.5 would make count fractional; it is an int in model.json'],
    ['ts set to a non-boolean', { type: 'binary', fields: [{ id: 'count', type: 'u32', ts: 'yes' }] }, 'codec.fields[0].ts: expected true or false, got "yes"'],
    ['two device times', { type: 'binary', fields: [{ type: 'u32', ts: true }, { type: 'u32', ts: true }] }, 'codec.fields[1].ts: the device time already comes from fields[0]'],
    // bits
    ['a 3-byte bits word', { type: 'binary', fields: [{ type: 'bits', size: 3, bits: [{ id: 'count', bit: 0 }] }] }, 'codec.fields[0].size: expected 1, 2 or 4 (bytes), got 3'],
    ['a bit beyond the word', { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'count', bit: 8 }] }] }, 'codec.fields[0].bits[0].bit: 8 is above 7'],
    ['a reversed bit range', { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'count', bits: [5, 2] }] }] }, 'codec.fields[0].bits[0].bits[1]: 2 is below 5'],
    ['bit and bits together', { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'count', bit: 1, bits: [1, 2] }] }] }, 'codec.fields[0].bits[0]: give either "bit": n or "bits": [low, high]'],
    ['overlapping slices', { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'count', bits: [0, 3] }, { id: 'level', bit: 3 }] }] }, 'codec.fields[0].bits[1]: bits 3..3 overlap count (bits 0..3)'],
    ['no slices', { type: 'binary', fields: [{ type: 'bits', bits: [] }] }, 'codec.fields[0].bits: a bits field needs at least one slice'],
    ['a slice into a text', { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'label', bit: 0 }] }] }, 'codec.fields[0].bits[0].id: label is a text in model.json; a bits field carries a number'],
    // BCD
    ['a BCD number beyond 2^53', { type: 'binary', fields: [{ id: 'count', type: 'bcd', size: 8 }] }, 'codec.fields[0].size: 8 is above 7'],
    ['a BCD date format with a stray token', { type: 'binary', fields: [{ id: 'at', type: 'bcd', as: 'date', format: 'YYMMDDHH' }] }, 'codec.fields[0].format: "YYMMDDHH" is not made of YYYY or YY, MM, DD, hh, mm, ss (at "HH")'],
    ['a BCD date without a day', { type: 'binary', fields: [{ id: 'at', type: 'bcd', as: 'date', format: 'YYMM' }] }, 'codec.fields[0].format: "YYMM" has no DD'],
    ['a BCD date with two years', { type: 'binary', fields: [{ id: 'at', type: 'bcd', as: 'date', format: 'YYMMDDYYYY' }] }, 'codec.fields[0].format: "YYMMDDYYYY" has YYYY twice'],
    ['a BCD date size that disagrees', { type: 'binary', fields: [{ id: 'at', type: 'bcd', as: 'date', format: 'YYMMDD', size: 4 }] }, 'codec.fields[0].size: format YYMMDD takes 3 bytes, not 4'],
    ['a bad utcOffset', { type: 'binary', fields: [{ id: 'at', type: 'bcd', as: 'date', format: 'YYMMDD', utcOffset: '+8' }] }, 'codec.fields[0].utcOffset: expected "+hh:mm" or "-hh:mm", got "+8"'],
    ['a BCD date into an int', { type: 'binary', fields: [{ id: 'count', type: 'bcd', as: 'date', format: 'YYMMDD' }] }, 'codec.fields[0].id: count is an int in model.json; a bcd date-time field carries a date'],
    ['a scale on BCD text', { type: 'binary', fields: [{ id: 'label', type: 'bcd', as: 'text', size: 4, scale: 0.1 }] }, 'codec.fields[0].scale: unknown key (allowed: id, name, type, as, size, endian, at)'],
    // strings and bytes
    ['both size and prefix', { type: 'binary', fields: [{ id: 'label', type: 'string', size: 4, prefix: 'u8' }] }, 'codec.fields[0]: give either "size": n or "prefix": "u8" | "u16" | "u32"'],
    ['a bad encoding', { type: 'binary', fields: [{ id: 'label', type: 'string', size: 4, encoding: 'gbk' }] }, 'codec.fields[0].encoding: expected one of "utf8", "ascii", got "gbk"'],
    ['a string into a number', { type: 'binary', fields: [{ id: 'level', type: 'string', size: 4 }] }, 'codec.fields[0].id: level is a float in model.json; a string field carries text'],
    ['a const on prefixed bytes', { type: 'binary', fields: [{ type: 'bytes', prefix: 'u8', const: '00' }] }, 'codec.fields[0].const: only with a fixed "size"'],
    ['a const of the wrong size', { type: 'binary', fields: [{ type: 'bytes', size: 2, const: 'a5' }] }, 'codec.fields[0].const: "a5" is 1 bytes; the field is 2'],
    // groups
    ['a group without id', { type: 'binary', fields: [{ type: 'group', count: 'u8', item: { type: 'u8' } }] }, 'codec.fields[0].id: missing (expected the identifier of a TSL array)'],
    ['a group into an int', { type: 'binary', fields: [{ id: 'count', type: 'group', count: 'u8', item: { type: 'u8' } }] }, 'codec.fields[0].id: count is an int in model.json; a group carries an array'],
    ['a bad count', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 'u24', item: { type: 'u8' } }] }, 'codec.fields[0].count: expected one of "u8", "u16", "u32", got "u24"'],
    ['a fixed count above the TSL size', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 5, item: { type: 'u8' } }] }, 'codec.fields[0].count: 5 items exceed the size 4 of levels in model.json'],
    ['item and fields together', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 2, item: { type: 'u8' }, fields: [] }] }, 'codec.fields[0]: give either "fields": [...] (an array of struct) or "item": {...} (an array of values)'],
    ['fields for an array of int', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 2, fields: [{ id: 'v', type: 'u8' }] }] }, 'codec.fields[0].fields: levels is an array of int in model.json; use "item" for an array of values'],
    ['item for an array of struct', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 2, item: { type: 'u8' } }] }, 'codec.fields[0].item: samples is an array of struct in model.json; use "fields" for an array of struct'],
    ['a member not in the struct', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 'u8', fields: [{ id: 'w', type: 'u8' }] }] }, 'codec.fields[0].fields[0].id: "w" is not a member of the samples struct in model.json'],
    ['an id on an item', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 2, item: { id: 'x', type: 'u8' } }] }, 'codec.fields[0].item.id: an item takes no id: its values make up the array'],
    ['an item of the wrong kind', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 2, item: { type: 'string', size: 2 } }] }, 'codec.fields[0].item.id: levels[] is an int in model.json; a string field carries text'],
    ['a nested group', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 1, fields: [{ id: 'v', type: 'group', count: 1, item: { type: 'u8' } }] }] }, 'codec.fields[0].fields[0].type: groups do not nest (a TSL array holds no arrays)'],
    ['at inside a group', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 1, fields: [{ id: 'v', type: 'u8', at: 0 }] }] }, 'codec.fields[0].fields[0].at: not allowed in a group item (items follow each other)'],
    ['ts inside a group', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 1, fields: [{ id: 'v', type: 'u32', ts: true }] }] }, 'codec.fields[0].fields[0].ts: not allowed in a group item (one device time per message)'],
    ['a checksum inside a group', { type: 'binary', fields: [{ id: 'samples', type: 'group', count: 1, fields: [{ id: 'v', type: 'u8' }, { type: 'sum8' }] }] }, 'codec.fields[0].fields[1].type: a checksum cannot be inside a group'],
    ['bits as a group item', { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 1, item: { type: 'bits', bits: [{ bit: 0 }] } }] }, 'codec.fields[0].item.type: a bits field gives several values; use "fields" rather than "item"'],
    // checksums
    ['an id on a checksum', { type: 'binary', fields: [{ id: 'count', type: 'u8' }, { id: 'level', type: 'sum8' }] }, 'codec.fields[1].id: unknown key (allowed: name, type, from, to, endian, at)'],
    ['a checksum over its own bytes', { type: 'binary', fields: [{ id: 'count', type: 'u16' }, { type: 'crc16-modbus', to: 3 }] }, 'codec.fields[1].to: 3 is past the checksum itself (offset 2)'],
    ['a checksum over nothing', { type: 'binary', fields: [{ id: 'count', type: 'u16' }, { type: 'xor8', from: 2 }] }, 'codec.fields[1].from: 2 leaves no bytes to check before 2'],
  ];
  for (const [what, json, message] of cases) {
    it(`refuses ${what}`, () => {
      const e = errorOf(() => compileBinaryLayout(json, { model }));
      expect(e.code).toBe('WANWU_ERR_PRODUCT');
      expect(e.message).toBe(`binary layout: ${message}`);
    });
  }

  it('names product.json and the key path when loaded through the registry reader', async () => {
    const { createProduct } = await import('../../../src/registry/index.js');
    const e = errorOf(() =>
      createProduct({ dir: 'devices/Broken', product: { productKey: 'Broken', name: 'x', rat: 'nb-iot', codec: { type: 'binary', fields: [{ type: 'bits', bits: [{ id: 'a', bit: 9 }] }] } } }),
    );
    expect(e.code).toBe('WANWU_ERR_PRODUCT');
    expect(e.message).toBe('devices/Broken/product.json: codec.fields[0].bits[0].bit: 9 is above 7');
  });
});
