// The binary layout's field kinds, one annotated fixture each: offsets and endianness, bit fields,
// BCD, strings and bytes, groups, checksums, device time. Every fixture is decoded and then
// encoded back to the same bytes.
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import {
  compileBinaryLayout,
  crc16Modbus,
  decodeBinary,
  decodeBinaryItem,
  encodeBinary,
  encodeBinaryItem,
  sum8,
  xor8,
} from '../../../src/thing-model/codecs/binary.js';
import { parseThingModel } from '../../../src/thing-model/tsl.js';
import { errorOf } from '../../helpers/index.js';

function bytes(...groups: number[][]): Buffer {
  return Buffer.from(groups.flat());
}

/** Decodes `frame`, expects `data`, and checks that encoding `data` gives `frame` back. */
function roundTrip(json: unknown, frame: Buffer, data: Record<string, unknown>) {
  const layout = compileBinaryLayout(json);
  expect(decodeBinary(layout, frame)).toEqual(data);
  expect(encodeBinary(layout, data).toString('hex')).toBe(frame.toString('hex'));
  return layout;
}

describe('binary: offsets and endianness', () => {
  it('places fields sequentially or at an explicit "at", with a layout-wide default endian', () => {
    const json = {
      type: 'binary',
      endian: 'little',
      fields: [
        { id: 'a', type: 'u16' }, //                     little, from the layout default
        { id: 'b', type: 'u16', endian: 'big' }, //      big, per field
        { id: 'c', type: 'u8', at: 6 }, //               bytes 4-5 skipped for now
        { id: 'd', type: 'i16', at: 4 }, //              and read here, out of order
      ],
    };
    const frame = bytes(
      [0x34, 0x12], // a u16 LE @0  0x1234 = 4660
      [0x12, 0x34], // b u16 BE @2  0x1234 = 4660
      [0xfe, 0xff], // d i16 LE @4  -2
      [0x07], //       c u8     @6  7
    );
    const layout = roundTrip(json, frame, { a: 4660, b: 4660, c: 7, d: -2 });
    expect(layout.size).toBe(7);
    expect(layout.fields.map((f) => [f.label, f.at, f.size])).toEqual([['a', 0, 2], ['b', 2, 2], ['c', 6, 1], ['d', 4, 2]]);
  });

  it('leaves a gap before an "at" field as zero bytes when encoding and ignores it when decoding', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'x', type: 'u8' }, { id: 'y', type: 'u8', at: 3 }] });
    // x u8 @0 = 1 | bytes 1-2 not described (ignored) | y u8 @3 = 2
    expect(decodeBinary(layout, bytes([0x01], [0xaa, 0xbb], [0x02]))).toEqual({ x: 1, y: 2 });
    expect(encodeBinary(layout, { x: 1, y: 2 }).toString('hex')).toBe('01000002');
  });

  it('rounds scaled values to the decimals of scale and offset, also for little-endian 32-bit', () => {
    const json = { type: 'binary', endian: 'little', fields: [{ id: 'v', type: 'u32', scale: 0.001, offset: -1000 }] };
    // v u32 LE @0: 0x00124f80 = 1200000 -> 1200000 * 0.001 - 1000 = 200
    roundTrip(json, bytes([0x80, 0x4f, 0x12, 0x00]), { v: 200 });
  });
});

describe('binary: bit fields', () => {
  const json = {
    type: 'binary',
    fields: [
      {
        name: 'status',
        type: 'bits',
        size: 2,
        bits: [
          { id: 'tamper', bit: 0 },
          { id: 'lowBattery', bit: 1 },
          { id: 'mode', bits: [4, 6] },
          { name: 'reserved', bits: [8, 14], const: 0 },
          { id: 'online', bit: 15 },
        ],
      },
      { id: 'level', type: 'u8' },
    ],
  };

  it('reads the word once and slices it into several identifiers', () => {
    const frame = bytes(
      [0x80, 0x21], // status u16 BE @0 = 1000 0000 0010 0001: tamper (bit 0) 1, lowBattery (bit 1) 0, mode (bits 4-6) 010 = 2, reserved (8-14) 0, online (bit 15) 1
      [0x09], //       level u8 @2 = 9
    );
    const layout = roundTrip(json, frame, { tamper: 1, lowBattery: 0, mode: 2, online: 1, level: 9 });
    expect(layout.fields[0]!.bits!.map((b) => [b.label, b.lo, b.hi])).toEqual([
      ['tamper', 0, 0], ['lowBattery', 1, 1], ['mode', 4, 6], ['reserved', 8, 14], ['online', 15, 15],
    ]);
  });

  it('encodes booleans as bits and refuses a value wider than its slice', () => {
    const layout = compileBinaryLayout(json);
    expect(encodeBinary(layout, { tamper: true, lowBattery: false, mode: 7, online: false, level: 0 }).toString('hex')).toBe('007100');
    const e = errorOf(() => encodeBinary(layout, { tamper: 0, lowBattery: 0, mode: 8, online: 0, level: 0 }));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe('mode: 8 does not fit 3 bits (0..7) (field mode (bits 4..6 of the 16-bit word at offset 0))');
  });

  it('reads a 32-bit little-endian word with a slice of all 32 bits', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ type: 'bits', size: 4, endian: 'little', bits: [{ id: 'all', bits: [0, 31] }] }] });
    // word u32 LE = 0xfffffffe -> all = 4294967294 (unsigned)
    expect(decodeBinary(layout, bytes([0xfe, 0xff, 0xff, 0xff]))).toEqual({ all: 4294967294 });
    expect(encodeBinary(layout, { all: 4294967294 }).toString('hex')).toBe('feffffff');
  });
});

describe('binary: BCD', () => {
  it('reads a 4-byte BCD meter reading with a scale (00 01 23 45 -> 12345 x 0.01)', () => {
    const json = { type: 'binary', fields: [{ id: 'reading', type: 'bcd', size: 4, scale: 0.01 }] };
    roundTrip(json, bytes([0x00, 0x01, 0x23, 0x45]), { reading: 123.45 }); // reading bcd @0 "00012345" -> 12345 * 0.01 = 123.45
  });

  it('reads low-byte-first BCD as CJ/T 188 meters send it', () => {
    const json = { type: 'binary', fields: [{ id: 'reading', type: 'bcd', size: 4, endian: 'little', scale: 0.01 }] };
    roundTrip(json, bytes([0x45, 0x23, 0x01, 0x00]), { reading: 123.45 }); // reading bcd LE @0: 45 23 01 00 -> "00012345" -> 123.45
  });

  it('keeps a BCD meter number as text with its leading zeros', () => {
    const json = { type: 'binary', fields: [{ id: 'meterId', type: 'bcd', as: 'text', size: 7 }] };
    roundTrip(json, bytes([0x00, 0x00, 0x12, 0x34, 0x56, 0x78, 0x90]), { meterId: '00001234567890' }); // meterId bcd text @0, 14 digits
  });

  it('turns a BCD date-time YYMMDDhhmmss at +08:00 into ms since the epoch', () => {
    const json = { type: 'binary', fields: [{ id: 'readAt', type: 'bcd', as: 'date', format: 'YYMMDDhhmmss', utcOffset: '+08:00' }] };
    // readAt bcd @0: 23 11 14 09 30 00 = 2023-11-14 09:30:00 +08:00 = 2023-11-14T01:30:00Z
    roundTrip(json, bytes([0x23, 0x11, 0x14, 0x09, 0x30, 0x00]), { readAt: Date.UTC(2023, 10, 14, 1, 30, 0) });
  });

  it('takes the date-time tokens in any order (ssmmhhDDMMYYYY, UTC by default)', () => {
    const json = { type: 'binary', fields: [{ id: 'readAt', type: 'bcd', as: 'date', format: 'ssmmhhDDMMYYYY' }] };
    // ss 59 | mm 58 | hh 23 | DD 29 | MM 02 | YYYY 20 24 = 2024-02-29T23:58:59Z (a leap day)
    roundTrip(json, bytes([0x59], [0x58], [0x23], [0x29], [0x02], [0x20, 0x24]), { readAt: Date.UTC(2024, 1, 29, 23, 58, 59) });
  });

  it('refuses a date the format cannot hold when encoding', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'd', type: 'bcd', as: 'date', format: 'YYMMDDhhmm' }] });
    expect(encodeBinary(layout, { d: Date.UTC(2024, 0, 1, 12, 30) }).toString('hex')).toBe('2401011230');
    expect(errorOf(() => encodeBinary(layout, { d: Date.UTC(2024, 0, 1, 12, 30, 5) })).message).toBe(
      'd: 1704112205000 is not a time the format YYMMDDhhmm can hold (whole 60 s, ms since the epoch) (field d (bcd at offset 0))',
    );
    expect(errorOf(() => encodeBinary(layout, { d: Date.UTC(1999, 11, 31) })).message).toBe('d: year 1999 does not fit YY (2000..2099) (field d (bcd at offset 0))');
  });
});

describe('binary: strings and bytes', () => {
  it('reads fixed-size ASCII, trimming NUL and space padding', () => {
    const json = {
      type: 'binary',
      fields: [
        { id: 'model', type: 'string', size: 8, encoding: 'ascii' },
        { id: 'site', type: 'string', size: 4, encoding: 'ascii' },
      ],
    };
    const layout = compileBinaryLayout(json);
    const frame = bytes(
      [0x4e, 0x42, 0x2d, 0x31, 0x00, 0x00, 0x00, 0x00], // model @0: "NB-1" + 4 NUL
      [0x41, 0x42, 0x20, 0x20], //                         site @8: "AB" + 2 spaces
    );
    expect(decodeBinary(layout, frame)).toEqual({ model: 'NB-1', site: 'AB' });
    // encoding pads with NUL
    expect(encodeBinary(layout, { model: 'NB-1', site: 'AB' }).toString('hex')).toBe('4e422d3100000000' + '41420000');
  });

  it('reads a length-prefixed UTF-8 string and a length-prefixed byte array', () => {
    const json = {
      type: 'binary',
      fields: [
        { id: 'label', type: 'string', prefix: 'u8' },
        { id: 'raw', type: 'bytes', prefix: 'u16', endian: 'little' },
        { id: 'tail', type: 'u8' },
      ],
    };
    const frame = bytes(
      [0x06], //                               label length u8 = 6
      [0xe6, 0xb8, 0xa9, 0xe5, 0xba, 0xa6], // label "温度" in UTF-8
      [0x03, 0x00], //                         raw length u16 LE = 3
      [0xde, 0xad, 0x01], //                   raw "dead01"
      [0x2a], //                               tail u8 = 42
    );
    const layout = roundTrip(json, frame, { label: '温度', raw: 'dead01', tail: 42 });
    expect(layout.size).toBeUndefined();
    expect(layout.minSize).toBe(1 + 2 + 1);
    expect(layout.fields.map((f) => [f.label, f.at])).toEqual([['label', 0], ['raw', undefined], ['tail', undefined]]);
  });

  it('reads fixed-size bytes as hex text and checks a bytes const', () => {
    const json = { type: 'binary', fields: [{ name: 'magic', type: 'bytes', size: 2, const: 'A55A' }, { id: 'mac', type: 'bytes', size: 6 }] };
    roundTrip(json, bytes([0xa5, 0x5a], [0x00, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e]), { mac: '001a2b3c4d5e' }); // magic a55a (const) | mac 6 bytes
  });

  it('refuses strings that would not read back the same, and byte arrays of the wrong length', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 's', type: 'string', size: 4 }, { id: 'b', type: 'bytes', size: 2 }] });
    expect(errorOf(() => encodeBinary(layout, { s: 'ab ', b: '0102' })).message).toBe('s: "ab " has a NUL or trailing spaces, which the decoder drops (field s (string at offset 0))');
    expect(errorOf(() => encodeBinary(layout, { s: 'abcde', b: '0102' })).message).toBe('s: 5 bytes do not fit 4 bytes (field s (string at offset 0))');
    expect(errorOf(() => encodeBinary(layout, { s: 'a', b: '01' })).message).toBe('b: 1 bytes do not fit 2 bytes (field b (bytes at offset 4))');
    expect(errorOf(() => encodeBinary(layout, { s: 'a', b: 'xyz0' })).message).toBe('b: "xyz0" is not hex bytes (field b (bytes at offset 4))');
  });
});

describe('binary: groups (TSL arrays)', () => {
  const model = parseThingModel(
    {
      properties: [
        {
          identifier: 'samples',
          name: '采样',
          accessMode: 'r',
          dataType: {
            type: 'array',
            specs: {
              size: '24',
              item: {
                type: 'struct',
                specs: [
                  { identifier: 'ts', name: '时间', dataType: { type: 'date', specs: {} } },
                  { identifier: 'value', name: '值', dataType: { type: 'float', specs: { min: '0', max: '6553.5' } } },
                ],
              },
            },
          },
        },
        { identifier: 'levels', name: '液位', accessMode: 'r', dataType: { type: 'array', specs: { size: '3', item: { type: 'int', specs: {} } } } },
      ],
    },
    'model.json',
  );

  it('reads a u8 count followed by N x {ts u32, value u16} as an array of struct', () => {
    const json = {
      type: 'binary',
      fields: [
        {
          id: 'samples',
          type: 'group',
          count: 'u8',
          fields: [
            { id: 'ts', type: 'u32', scale: 1000 },
            { id: 'value', type: 'u16', scale: 0.1 },
          ],
        },
      ],
    };
    const layout = compileBinaryLayout(json, { model });
    const frame = bytes(
      [0x02], //                                 count u8 = 2
      [0x65, 0x53, 0xf1, 0x00], [0x00, 0xeb], // samples[0]: ts 1700000000 s -> 1700000000000 ms, value 235 * 0.1 = 23.5
      [0x65, 0x53, 0xf2, 0x2c], [0x01, 0x00], // samples[1]: ts 1700000300 s -> 1700000300000 ms, value 256 * 0.1 = 25.6
    );
    const data = { samples: [{ ts: 1700000000000, value: 23.5 }, { ts: 1700000300000, value: 25.6 }] };
    expect(decodeBinary(layout, frame)).toEqual(data);
    expect(encodeBinary(layout, data).equals(frame)).toBe(true);
    // zero items: just the count
    expect(decodeBinary(layout, bytes([0x00]))).toEqual({ samples: [] });
    expect(layout.fields[0]!.fields!.map((f) => [f.label, f.at, f.size])).toEqual([['ts', 0, 4], ['value', 4, 2]]);
  });

  it('reads a fixed count of plain values with "item" (an array of int)', () => {
    const json = { type: 'binary', fields: [{ id: 'levels', type: 'group', count: 3, item: { type: 'i16' } }] };
    const layout = compileBinaryLayout(json, { model });
    expect(layout.size).toBe(6);
    // levels[0..2] i16 BE: 1, -1, 300
    const frame = bytes([0x00, 0x01], [0xff, 0xff], [0x01, 0x2c]);
    expect(decodeBinary(layout, frame)).toEqual({ levels: [1, -1, 300] });
    expect(encodeBinary(layout, { levels: [1, -1, 300] }).equals(frame)).toBe(true);
    expect(errorOf(() => encodeBinary(layout, { levels: [1, 2] })).message).toBe('levels: 2 items; the group takes exactly 3 (field levels (group at offset 0))');
  });

  it('names the item in errors (samples[1].value)', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ id: 'samples', type: 'group', count: 'u8', fields: [{ id: 'ts', type: 'u32', scale: 1000 }, { id: 'value', type: 'u16', scale: 0.1 }] }] });
    const e = errorOf(() => encodeBinary(layout, { samples: [{ ts: 0, value: 1 }, { ts: 0, value: -1 }] }));
    expect(e.message).toBe('samples[1].value: -1 does not fit u16 (raw -10, range 0..65535) (field samples[1].value (u16 at offset 11))');
    expect(errorOf(() => encodeBinary(layout, { samples: [{ ts: 0, value: 1, extra: 2 }] })).message).toBe(
      'samples[0].extra: not a field of the group (ts, value) (field samples (group at offset 0))',
    );
  });
});

describe('binary: checksums', () => {
  it('computes the standard CRC-16/MODBUS check value 0x4B37 over ASCII "123456789"', () => {
    expect(crc16Modbus(Buffer.from('123456789', 'ascii'))).toBe(0x4b37);
    expect(crc16Modbus(Buffer.alloc(0))).toBe(0xffff); // init, nothing folded in
  });

  it('checks a CRC-16/MODBUS stored low byte first after the bytes it covers', () => {
    const json = { type: 'binary', fields: [{ id: 'text', type: 'string', size: 9, encoding: 'ascii' }, { name: 'crc', type: 'crc16-modbus' }] };
    const frame = Buffer.concat([
      Buffer.from('123456789', 'ascii'), // text @0
      bytes([0x37, 0x4b]), //              crc @9: 0x4B37, low byte first (Modbus RTU order)
    ]);
    roundTrip(json, frame, { text: '123456789' });
  });

  it('covers [from, to) and may be stored big endian', () => {
    const json = {
      type: 'binary',
      fields: [
        { name: 'sync', type: 'u16', const: 0x6868 },
        { id: 'value', type: 'u16' },
        { name: 'crc', type: 'crc16-modbus', from: 2, endian: 'big' },
      ],
    };
    const layout = compileBinaryLayout(json);
    const frame = encodeBinary(layout, { value: 0x1234 });
    const crc = crc16Modbus(bytes([0x12, 0x34])); // only bytes [2, 4): the sync word is not covered
    expect(frame.toString('hex')).toBe(`68681234${crc.toString(16).padStart(4, '0')}`);
    expect(decodeBinary(layout, frame)).toEqual({ value: 0x1234 });
  });

  it('checks an 8-bit sum (CJ/T 188) and an 8-bit xor', () => {
    const sum = { type: 'binary', fields: [{ id: 'a', type: 'u8' }, { id: 'b', type: 'u8' }, { type: 'sum8' }] };
    roundTrip(sum, bytes([0xf0], [0x20], [0x10]), { a: 0xf0, b: 0x20 }); // a 0xf0 | b 0x20 | sum8 (0xf0 + 0x20) & 0xff = 0x10
    const xor = { type: 'binary', fields: [{ id: 'a', type: 'u8' }, { id: 'b', type: 'u8' }, { type: 'xor8' }] };
    roundTrip(xor, bytes([0xf0], [0x3c], [0xcc]), { a: 0xf0, b: 0x3c }); // a 0xf0 | b 0x3c | xor8 0xf0 ^ 0x3c = 0xcc
    expect([sum8(bytes([0xff, 0x02])), xor8(bytes([0xff, 0x0f]))]).toEqual([0x01, 0xf0]);
  });
});

describe('binary: device time and trailing bytes', () => {
  it('takes the item time from a "ts": true field (u32 seconds x 1000)', () => {
    const layout = compileBinaryLayout({ type: 'binary', fields: [{ name: 'time', type: 'u32', scale: 1000, ts: true }, { id: 'v', type: 'u8' }] });
    const frame = bytes([0x65, 0x53, 0xf1, 0x00], [0x05]); // time 1700000000 s | v 5
    expect(decodeBinaryItem(layout, frame)).toEqual({ kind: 'property', ts: 1700000000000, data: { v: 5 } });
    expect(encodeBinaryItem(layout, { kind: 'property', ts: 1700000000000, data: { v: 5 } }).equals(frame)).toBe(true);
    expect(errorOf(() => encodeBinaryItem(layout, { kind: 'property', data: { v: 5 } })).message).toBe('no device time (ts) for time (field time (u32 at offset 0))');
  });

  it('ignores bytes after the layout when it says "trailing": "ignore"', () => {
    const layout = compileBinaryLayout({ type: 'binary', trailing: 'ignore', fields: [{ id: 'v', type: 'u16' }] });
    expect(decodeBinary(layout, bytes([0x00, 0x07], [0xaa, 0xbb]))).toEqual({ v: 7 }); // v 7 | 2 bytes ignored
    const variable = compileBinaryLayout({ type: 'binary', trailing: 'ignore', fields: [{ id: 's', type: 'string', prefix: 'u8' }] });
    expect(decodeBinary(variable, bytes([0x01, 0x41], [0xff]))).toEqual({ s: 'A' });
  });
});
