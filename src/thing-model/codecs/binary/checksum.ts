// Frame checks used by meters and alarms:
//   crc16-modbus  CRC-16/MODBUS: poly 0x8005 reflected (0xA001), init 0xFFFF, no final xor; check
//                 value 0x4B37 over ASCII "123456789". Modbus RTU sends it low byte first.
//   sum8          sum of the bytes modulo 256 (CJ/T 188 meter frames)
//   xor8          xor of the bytes

import type { ChecksumType } from './types.js';

const CRC16_MODBUS_TABLE = (() => {
  const table = new Uint16Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xa001 : c >>> 1;
    table[n] = c;
  }
  return table;
})();

/** CRC-16/MODBUS over bytes [from, to). */
export function crc16Modbus(bytes: Uint8Array, from = 0, to = bytes.length): number {
  let crc = 0xffff;
  for (let i = from; i < to; i++) crc = (crc >>> 8) ^ CRC16_MODBUS_TABLE[(crc ^ bytes[i]!) & 0xff]!;
  return crc;
}

/** Sum of bytes [from, to) modulo 256. */
export function sum8(bytes: Uint8Array, from = 0, to = bytes.length): number {
  let sum = 0;
  for (let i = from; i < to; i++) sum += bytes[i]!;
  return sum & 0xff;
}

/** Xor of bytes [from, to). */
export function xor8(bytes: Uint8Array, from = 0, to = bytes.length): number {
  let x = 0;
  for (let i = from; i < to; i++) x ^= bytes[i]!;
  return x;
}

export interface Checksum {
  /** Name used in messages, after the usual catalogue (reveng) names. */
  readonly title: string;
  readonly size: 1 | 2;
  /** Stored byte order when the field does not say: Modbus puts the CRC low byte first. */
  readonly littleEndian: boolean;
  readonly compute: (bytes: Uint8Array, from: number, to: number) => number;
}

export const CHECKSUMS: Readonly<Record<ChecksumType, Checksum>> = {
  'crc16-modbus': { title: 'CRC-16/MODBUS', size: 2, littleEndian: true, compute: crc16Modbus },
  sum8: { title: '8-bit sum', size: 1, littleEndian: false, compute: sum8 },
  xor8: { title: '8-bit xor', size: 1, littleEndian: false, compute: xor8 },
};
