// devices/AlarmNB: an NB-IoT smoke/intrusion alarm whose frames share a header, carry a message
// type that picks the rest of the layout, and end with a CRC-16/MODBUS. The frames here are the
// ones devices/README.md documents byte by byte.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { WanwuError } from '../../../src/errors.js';
import { createProduct, type Product } from '../../../src/registry/index.js';
import { compileBinaryLayout, crc16Modbus, decodeBinaryItem, encodeBinary } from '../../../src/thing-model/codecs/binary.js';
import { decodeUplink } from '../../../src/thing-model/index.js';
import { errorOf } from '../../helpers/index.js';

const dir = fileURLToPath(new URL('../../../devices/AlarmNB', import.meta.url));
const read = (name: string): unknown => JSON.parse(readFileSync(`${dir}/${name}`, 'utf8'));
// Built from its own folder, so that other products being added to devices/ do not matter here.
const alarm: Product = createProduct({ dir, product: read('product.json'), model: read('model.json'), devices: read('devices.json') });
const upRaw = { type: 'up-raw' } as const;
const layout = () => compileBinaryLayout((read('product.json') as { codec: unknown }).codec, { model: alarm.model });

function bytes(...groups: number[][]): Buffer {
  return Buffer.from(groups.flat());
}

/** Appends the CRC-16/MODBUS of the frame, low byte first. */
function withCrc(frame: Buffer): Buffer {
  const crc = crc16Modbus(frame);
  return Buffer.concat([frame, bytes([crc & 0xff, crc >> 8])]);
}

function refusal(frame: Buffer): { code: string; message: string } {
  const r = decodeUplink(alarm, upRaw, frame);
  if (r.ok) throw new Error(`expected a refusal, got ${JSON.stringify(r.items)}`);
  return { code: r.error.code, message: r.error.message };
}

const HEADER = (type: number, time: number[]) => [
  [0xa5, 0x5a], // magic   u16 @0  0xA55A (const)
  [0x01], //       version u8  @2  1 (const)
  [type], //       msgType u8  @3  the switch
  time, //         time    u32 @4  unix seconds x 1000 -> the record's ts
];

// Report (msgType 1), 35 bytes: devices/README.md "AlarmNB".
const REPORT = bytes(
  ...HEADER(0x01, [0x65, 0x53, 0xf1, 0x00]), // 1 = report | 1700000000 s = 2023-11-14T22:13:20Z
  [0x57], //                                  batteryLevel u8  @8   87 %
  [0xff, 0xa6], //                            rsrp         i16 @9   -90 dBm
  [0x41], //                                  flags bits   @11  0100 0001: tamper (bit 0) 1, status (bits 4-6) 100 = 4 self-test
  [0x00, 0xeb], //                            temperature  i16 @12  235 x 0.1 = 23.5 °C
  [0x23, 0x11, 0x14, 0x09, 0x30, 0x00], //    lastTestAt   bcd @14  2023-11-14 09:30:00 +08:00 = 1699925400000
  [0x02], //                                  recentTemperatures count u8 @20 = 2
  [0x65, 0x53, 0xe2, 0xf0], [0x00, 0xe6], //  [0] time 1699996400 s, value 230 x 0.1 = 23 °C
  [0x65, 0x53, 0xe9, 0xf8], [0x00, 0xe9], //  [1] time 1699998200 s, value 233 x 0.1 = 23.3 °C
  [0x45, 0x3d], //                            crc @33  CRC-16/MODBUS 0x3D45 of bytes [0, 33), low byte first
);
const REPORT_ITEM = {
  kind: 'property',
  ts: 1700000000000,
  data: {
    batteryLevel: 87,
    rsrp: -90,
    tamper: 1,
    status: 4,
    temperature: 23.5,
    lastTestAt: 1699925400000,
    recentTemperatures: [
      { time: 1699996400000, value: 23 },
      { time: 1699998200000, value: 23.3 },
    ],
  },
};

// Alarm (msgType 2), 12 bytes: an event item.
const ALARM = bytes(
  ...HEADER(0x02, [0x65, 0x53, 0xf1, 0x3c]), // 2 = alarm | 1700000060 s
  [0x01], //                                  alarmType u8 @8  1 = smoke
  [0x03], //                                  level     u8 @9  3
  [0x38, 0xa2], //                            crc @10  0xA238, low byte first
);
const ALARM_ITEM = { kind: 'event', event: 'alarm', ts: 1700000060000, data: { alarmType: 1, level: 3 } };

// Heartbeat (msgType 3), 13 bytes, and fault (msgType 4), 11 bytes.
const HEARTBEAT = bytes(...HEADER(0x03, [0x65, 0x53, 0xff, 0x10]), [0x56], [0xff, 0xa1], [0x32, 0x27]); // 1700003600 s | battery 86 | rsrp -95 | crc 0x2732
const HEARTBEAT_ITEM = { kind: 'property', ts: 1700003600000, data: { batteryLevel: 86, rsrp: -95 } };
const FAULT = bytes(...HEADER(0x04, [0x65, 0x54, 0x0d, 0x20]), [0x02], [0x0c, 0x5a]); // 1700007200 s | faultCode 2 = low battery | crc 0x5A0C
const FAULT_ITEM = { kind: 'event', event: 'fault', ts: 1700007200000, data: { faultCode: 2 } };

describe('AlarmNB: the four messages', () => {
  it('has the documented hex frames', () => {
    expect(REPORT.toString('hex')).toBe('a55a01016553f10057ffa64100eb231114093000026553e2f000e66553e9f800e9453d');
    expect(ALARM.toString('hex')).toBe('a55a01026553f13c010338a2');
    expect(HEARTBEAT.toString('hex')).toBe('a55a01036553ff1056ffa13227');
    expect(FAULT.toString('hex')).toBe('a55a010465540d20020c5a');
  });

  it.each([
    ['report', REPORT, REPORT_ITEM],
    ['alarm', ALARM, ALARM_ITEM],
    ['heartbeat', HEARTBEAT, HEARTBEAT_ITEM],
    ['fault', FAULT, FAULT_ITEM],
  ] as const)('decodes the %s frame and validates it against model.json', (_name, frame, item) => {
    expect(decodeUplink(alarm, upRaw, frame)).toEqual({ ok: true, items: [item] });
  });

  it.each([
    ['report', REPORT, REPORT_ITEM],
    ['alarm', ALARM, ALARM_ITEM],
    ['heartbeat', HEARTBEAT, HEARTBEAT_ITEM],
    ['fault', FAULT, FAULT_ITEM],
  ] as const)('encodes the %s item back to the same frame (message picked by kind, event and fields)', (_name, frame, item) => {
    expect(alarm.codec.encode!(upRaw, structuredClone(item) as never).toString('hex')).toBe(frame.toString('hex'));
  });

  it('compiles to a header, four messages and a CRC trailer', () => {
    const l = layout();
    expect(l.switch).toEqual({ label: 'msgType', type: 'u8', bytes: 1 });
    expect(l.messages.map((m) => [m.name, m.when, m.kind, m.event ?? null, m.size ?? null, m.minSize])).toEqual([
      ['report', 1, 'property', null, null, 23],
      ['alarm', 2, 'event', 'alarm', 12, 12],
      ['heartbeat', 3, 'property', null, 13, 13],
      ['fault', 4, 'event', 'fault', 11, 11],
    ]);
    expect(l.fields.map((f) => [f.label, f.at, f.size])).toEqual([['magic', 0, 2], ['version', 2, 1], ['msgType', 3, 1], ['time', 4, 4]]);
  });

  it('gives an empty array for a report without samples', () => {
    const frame = withCrc(Buffer.concat([REPORT.subarray(0, 20), bytes([0x00])])); // count 0, then the CRC
    expect(decodeUplink(alarm, upRaw, frame)).toEqual({ ok: true, items: [{ ...REPORT_ITEM, data: { ...REPORT_ITEM.data, recentTemperatures: [] } }] });
  });
});

describe('AlarmNB: refusals', () => {
  it('refuses an unknown message type, naming the value and the known ones', () => {
    const frame = Buffer.from(ALARM);
    frame[3] = 0x07;
    expect(refusal(frame)).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'field msgType (u8 at offset 3) is 0x07; expected one of 0x01 (report), 0x02 (alarm), 0x03 (heartbeat), 0x04 (fault)',
    });
  });

  it('refuses a bad CRC, showing both values', () => {
    const frame = Buffer.from(ALARM);
    frame[9] = 0x02; // level 3 -> 2 in transit; the CRC no longer matches
    expect(refusal(frame)).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'field crc (crc16-modbus at offset 10): CRC-16/MODBUS 0xA238 does not match 0x62F9 computed over bytes [0, 10)', // as devices/README.md shows
    });
  });

  it('refuses a bad magic and a bad version (consts)', () => {
    const magic = Buffer.from(ALARM);
    magic[0] = 0x5a;
    expect(refusal(magic)).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'field magic (u16 at offset 0) is 0x5a5a; expected 0xa55a' });
    const version = Buffer.from(ALARM);
    version[2] = 0x02;
    expect(refusal(version)).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'field version (u8 at offset 2) is 0x02; expected 0x01' });
  });

  it('refuses short frames: in the header, in a fixed-size message, in the group', () => {
    expect(refusal(ALARM.subarray(0, 3))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 3 bytes; field msgType (u8 at offset 3) needs 1' });
    expect(refusal(ALARM.subarray(0, 6))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 6 bytes; field time (u32 at offset 4) needs 4' });
    expect(refusal(ALARM.subarray(0, 11))).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'frame is 11 bytes; field crc (crc16-modbus at offset 10) needs 2 (message alarm is 12 bytes)',
    });
    expect(refusal(REPORT.subarray(0, 19))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 19 bytes; field lastTestAt (bcd at offset 14) needs 6' });
    expect(refusal(REPORT.subarray(0, 20))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 20 bytes; field recentTemperatures (group at offset 20) needs 1 for its count' });
    expect(refusal(REPORT.subarray(0, 33))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 33 bytes; field crc (crc16-modbus at offset 33) needs 2' });
  });

  it('refuses a count that overruns the frame (MALFORMED) and one above the TSL array size (INVALID)', () => {
    const overrun = Buffer.from(REPORT);
    overrun[20] = 0x09; // 9 samples announced, 2 present
    expect(refusal(overrun)).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'field recentTemperatures (group at offset 20) counts 9 items of 6 bytes (54 from offset 21); the frame has 14 left',
    });
    // 25 well-formed samples with a good CRC: the frame is fine, the thing model allows 24.
    const samples = Array.from({ length: 25 }, (_, i) => ({ time: 1699996400000 + i * 60000, value: 20 + i / 10 }));
    const big = encodeBinary(layout(), { ...REPORT_ITEM.data, recentTemperatures: samples }, { kind: 'property', ts: REPORT_ITEM.ts });
    expect(big.length).toBe(35 + 23 * 6);
    expect(decodeBinaryItem(layout(), big).data.recentTemperatures).toHaveLength(25);
    expect(refusal(big)).toEqual({ code: 'WANWU_ERR_INVALID', message: 'recentTemperatures: array of 25 exceeds size 24' });
  });

  it('refuses trailing bytes after a variable-length report (the CRC itself still matches)', () => {
    expect(refusal(Buffer.concat([REPORT, bytes([0x00])]))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 36 bytes; the layout ends at 35 (1 trailing byte)' });
    expect(refusal(Buffer.concat([ALARM, bytes([0x00, 0x00])]))).toEqual({ code: 'WANWU_ERR_MALFORMED', message: 'frame is 14 bytes; the layout ends at 12 (2 trailing bytes)' });
  });

  it('refuses an invalid BCD date-time and a value outside the model', () => {
    const month = Buffer.from(REPORT.subarray(0, 33));
    month[15] = 0x13; // month 13
    expect(refusal(withCrc(month))).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'field lastTestAt (bcd at offset 14) is 2023-13-14 09:30:00, not a date-time after 1970 (format YYMMDDhhmmss)',
    });
    const nibble = Buffer.from(REPORT.subarray(0, 33));
    nibble[16] = 0x0a; // DD (YY @14, MM @15, DD @16) = 0a: not BCD
    expect(refusal(withCrc(nibble))).toEqual({
      code: 'WANWU_ERR_MALFORMED',
      message: 'field lastTestAt (bcd at offset 14) has byte 0x0a at offset 16, which is not two decimal digits',
    });
    const battery = Buffer.from(REPORT.subarray(0, 33));
    battery[8] = 101;
    expect(refusal(withCrc(battery))).toEqual({ code: 'WANWU_ERR_INVALID', message: 'batteryLevel: 101 above max 100' });
    const status = Buffer.from(REPORT.subarray(0, 33));
    status[11] = 0x70; // status 7: not in the enum
    expect(refusal(withCrc(status))).toEqual({ code: 'WANWU_ERR_INVALID', message: 'status: 7 not one of enum 0,1,2,3,4' });
  });
});

describe('AlarmNB: encode picks the message', () => {
  it('tells the report from the heartbeat by their fields', () => {
    const l = layout();
    expect(encodeBinary(l, HEARTBEAT_ITEM.data, { kind: 'property', ts: HEARTBEAT_ITEM.ts }).equals(HEARTBEAT)).toBe(true);
    expect(encodeBinary(l, HEARTBEAT_ITEM.data, { message: 'heartbeat', ts: HEARTBEAT_ITEM.ts }).equals(HEARTBEAT)).toBe(true);
    expect(encodeBinary(l, HEARTBEAT_ITEM.data, { message: 3, ts: HEARTBEAT_ITEM.ts }).equals(HEARTBEAT)).toBe(true);
  });

  it('refuses data that fits no message, an event the layout lacks, and a key no message has', () => {
    const l = layout();
    const e = errorOf(() => encodeBinary(l, { batteryLevel: 50 }, { kind: 'property', ts: 0 }));
    expect(e.code).toBe('WANWU_ERR_INVALID');
    expect(e.message).toBe(
      'no message of the layout takes exactly batteryLevel (message report: batteryLevel, rsrp, tamper, status, temperature, lastTestAt, recentTemperatures; message heartbeat: batteryLevel, rsrp)',
    );
    expect(errorOf(() => encodeBinary(l, {}, { kind: 'event', event: 'smoke', ts: 0 })).message).toBe('the layout has no message for event smoke');
    expect(errorOf(() => encodeBinary(l, { faultCode: 1, extra: 1 }, { kind: 'event', event: 'fault', ts: 0 })).message).toBe('extra: not a field of message fault (faultCode)');
    expect(errorOf(() => encodeBinary(l, { faultCode: 1 }, { message: 'nope' })).message).toBe('no message "nope" in the layout');
  });

  it('needs the device time for the header', () => {
    expect(errorOf(() => alarm.codec.encode!(upRaw, { kind: 'event', event: 'alarm', data: { alarmType: 1, level: 1 } })).message).toBe(
      'no device time (ts) for time (field time (u32 at offset 4))',
    );
  });
});
