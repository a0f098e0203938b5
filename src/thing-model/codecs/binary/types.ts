// The compiled form of a binary layout and the per-message state its readers and writers share.
// A layout is compiled once at load (compile.ts) into fields whose `read`/`write` closures hold
// every option already resolved, so decoding a frame is one pass over an array of closures.

import { WanwuError } from '../../../errors.js';

/** A numeric field type: size in bytes, DataView reader and writer, raw range. */
export interface FieldType {
  size: number;
  integer: boolean;
  min: number;
  max: number;
  read(dv: DataView, at: number, littleEndian: boolean): number;
  write(dv: DataView, at: number, raw: number, littleEndian: boolean): void;
}

const F32_MAX = 3.4028234663852886e38;

export const FIELD_TYPES = {
  u8: { size: 1, integer: true, min: 0, max: 0xff, read: (dv, at) => dv.getUint8(at), write: (dv, at, v) => dv.setUint8(at, v) },
  i8: { size: 1, integer: true, min: -0x80, max: 0x7f, read: (dv, at) => dv.getInt8(at), write: (dv, at, v) => dv.setInt8(at, v) },
  u16: { size: 2, integer: true, min: 0, max: 0xffff, read: (dv, at, le) => dv.getUint16(at, le), write: (dv, at, v, le) => dv.setUint16(at, v, le) },
  i16: { size: 2, integer: true, min: -0x8000, max: 0x7fff, read: (dv, at, le) => dv.getInt16(at, le), write: (dv, at, v, le) => dv.setInt16(at, v, le) },
  u32: { size: 4, integer: true, min: 0, max: 0xffffffff, read: (dv, at, le) => dv.getUint32(at, le), write: (dv, at, v, le) => dv.setUint32(at, v, le) },
  i32: { size: 4, integer: true, min: -0x80000000, max: 0x7fffffff, read: (dv, at, le) => dv.getInt32(at, le), write: (dv, at, v, le) => dv.setInt32(at, v, le) },
  // 64-bit integers are read exactly but must fit a JavaScript number (2^53) to be reported.
  u64: {
    size: 8, integer: true, min: 0, max: Number.MAX_SAFE_INTEGER,
    read: (dv, at, le) => bigToNumber(dv.getBigUint64(at, le)), write: (dv, at, v, le) => dv.setBigUint64(at, BigInt(v), le),
  },
  i64: {
    size: 8, integer: true, min: Number.MIN_SAFE_INTEGER, max: Number.MAX_SAFE_INTEGER,
    read: (dv, at, le) => bigToNumber(dv.getBigInt64(at, le)), write: (dv, at, v, le) => dv.setBigInt64(at, BigInt(v), le),
  },
  f32: { size: 4, integer: false, min: -F32_MAX, max: F32_MAX, read: (dv, at, le) => shortestF32(dv.getFloat32(at, le)), write: (dv, at, v, le) => dv.setFloat32(at, v, le) },
  f64: { size: 8, integer: false, min: -Number.MAX_VALUE, max: Number.MAX_VALUE, read: (dv, at, le) => dv.getFloat64(at, le), write: (dv, at, v, le) => dv.setFloat64(at, v, le) },
} as const satisfies Record<string, FieldType>;

export type FieldTypeName = keyof typeof FIELD_TYPES;

export const CHECKSUM_TYPES = ['crc16-modbus', 'sum8', 'xor8'] as const;
export type ChecksumType = (typeof CHECKSUM_TYPES)[number];

/** Every `type` a field may have in product.json. */
export const FIELD_KINDS = [...(Object.keys(FIELD_TYPES) as FieldTypeName[]), 'bits', 'bcd', 'string', 'bytes', 'group', ...CHECKSUM_TYPES] as const;
export type FieldKind = FieldTypeName | 'bits' | 'bcd' | 'string' | 'bytes' | 'group' | ChecksumType;

/** Decoding state of one frame. One per decode; readers only touch these few slots. */
export class ReadState {
  readonly end: number;
  private view: DataView | undefined = undefined;
  /** Device time taken from a `"ts": true` field. */
  ts: number | undefined = undefined;
  /** Raw value of the switch field, once read, and its offset. */
  sw = -1;
  swAt = 0;
  /** Index of the group item being read, for messages. */
  index = 0;
  /** Said after a short-frame message: " (the layout is 14 bytes)" when the frame size is known. */
  expected = '';

  constructor(readonly buf: Uint8Array) {
    this.end = buf.length;
  }

  /** Made on first use: building a DataView costs more than decoding a small frame of integers. */
  get dv(): DataView {
    return (this.view ??= new DataView(this.buf.buffer, this.buf.byteOffset, this.buf.byteLength));
  }
}

/** Integer readers straight from the bytes, for the types that fit 32 bits (no DataView needed). */
export function intReader(type: FieldTypeName, littleEndian: boolean): ((b: Uint8Array, p: number) => number) | undefined {
  const le = littleEndian;
  switch (type) {
    case 'u8':
      return (b, p) => b[p]!;
    case 'i8':
      return (b, p) => (b[p]! << 24) >> 24;
    case 'u16':
      return le ? (b, p) => b[p]! | (b[p + 1]! << 8) : (b, p) => (b[p]! << 8) | b[p + 1]!;
    case 'i16':
      return le ? (b, p) => ((b[p]! | (b[p + 1]! << 8)) << 16) >> 16 : (b, p) => (((b[p]! << 8) | b[p + 1]!) << 16) >> 16;
    case 'u32':
      return le
        ? (b, p) => b[p + 3]! * 0x1000000 + ((b[p + 2]! << 16) | (b[p + 1]! << 8) | b[p]!)
        : (b, p) => b[p]! * 0x1000000 + ((b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!);
    case 'i32':
      return le
        ? (b, p) => (b[p + 3]! << 24) | (b[p + 2]! << 16) | (b[p + 1]! << 8) | b[p]!
        : (b, p) => (b[p]! << 24) | (b[p + 1]! << 16) | (b[p + 2]! << 8) | b[p + 3]!;
    default:
      return undefined;
  }
}

/** Unsigned reader for a count, a length or a bits word of 1, 2 or 4 bytes. */
export function uintReader(size: number, littleEndian: boolean): (b: Uint8Array, p: number) => number {
  return intReader(size === 1 ? 'u8' : size === 2 ? 'u16' : 'u32', littleEndian)!;
}

/** Encoding state: a growing buffer plus the values a few writers need. */
export class WriteState {
  buf: Uint8Array;
  dv: DataView;
  /** End of the furthest byte written so far: the frame length. */
  end = 0;
  ts: number | undefined;
  /** The Alink message id, for a downlink field with "msgId": true (a non-negative integer). */
  msgId: number | undefined = undefined;
  /** The chosen message's switch value. */
  when: number;
  index = 0;
  /** Checksums, written once every byte they cover is in place. */
  readonly after: Array<() => void> = [];

  constructor(capacity: number, when: number, ts: number | undefined) {
    this.buf = new Uint8Array(Math.max(16, capacity));
    this.dv = new DataView(this.buf.buffer);
    this.when = when;
    this.ts = ts;
  }

  /** Makes room for `size` bytes at `pos` and extends the frame over them. */
  reserve(pos: number, size: number): void {
    const need = pos + size;
    if (need > this.buf.length) {
      const grown = new Uint8Array(Math.max(need, this.buf.length * 2));
      grown.set(this.buf);
      this.buf = grown;
      this.dv = new DataView(grown.buffer);
    }
    if (need > this.end) this.end = need;
  }
}

/** Reads one field at `pos` into `out`; returns the position after it. Throws WanwuError only. */
export type Reader = (s: ReadState, pos: number, out: Record<string, unknown>) => number;
/** Writes one field at `pos` from `values`; returns the position after it. Throws WANWU_ERR_INVALID. */
export type Writer = (w: WriteState, pos: number, values: Readonly<Record<string, unknown>>) => number;

/** One slice of a bits field. */
export interface BitSlice {
  readonly id: string | undefined;
  readonly label: string;
  /** Lowest and highest bit, bit 0 being the least significant bit of the word. */
  readonly lo: number;
  readonly hi: number;
}

/** One field of a compiled layout. */
export interface CompiledField {
  /** TSL identifier the value is reported under; undefined for skipped bytes, checksums and framing. */
  readonly id: string | undefined;
  /** For messages: id, else name, else fields[i]. */
  readonly label: string;
  readonly type: FieldKind;
  /** Byte offset in the frame; undefined when it follows a variable-length field. */
  readonly at: number | undefined;
  /** Size in bytes; undefined for variable-length fields (length-prefixed strings, counted groups). */
  readonly size: number | undefined;
  readonly minSize: number;
  readonly maxSize: number;
  /** The slices of a bits field. */
  readonly bits?: readonly BitSlice[];
  /** The item fields of a group. */
  readonly fields?: readonly CompiledField[];
  /** Ids (own and, for bits, of its slices) that encode must find in the values unless a const stands in. */
  readonly needs: readonly string[];
  /** Every id this field reports. */
  readonly ids: readonly string[];
  readonly read: Reader;
  readonly write: Writer;
}

/** One message of a layout: what follows the header when the switch field has the value `when`. */
export interface BinaryMessage {
  /** Switch value; undefined for a layout without `messages`. */
  readonly when: number | undefined;
  readonly name: string | undefined;
  readonly kind: 'property' | 'event';
  readonly event?: string;
  /** Downlink (codec.downlink): the Alink method the message carries; `kind` is then unused. */
  readonly method?: string;
  /** The message's own fields followed by the trailer, compiled at this message's offsets. */
  readonly fields: readonly CompiledField[];
  /** Frame size in bytes when fixed (header + fields + trailer). */
  readonly size: number | undefined;
  readonly minSize: number;
  readonly maxSize: number;
  /** Every id a frame of this message reports (header, fields, trailer). */
  readonly ids: ReadonlySet<string>;
  /** Ids encode must be given (those without a const). */
  readonly needs: ReadonlySet<string>;
  /** True when a field gives the item's device time. */
  readonly hasTs: boolean;
  /** Said after a short-frame error when the size is fixed: " (the layout is 14 bytes)". */
  readonly sizeNote: string;
}

export interface BinaryLayout {
  /** Kind of the first (for a layout without `messages`: the only) message. */
  readonly kind: 'property' | 'event';
  readonly event?: string;
  /** Frame size in bytes when every frame has that size; undefined for variable-length layouts. */
  readonly size: number | undefined;
  readonly minSize: number;
  readonly maxSize: number;
  /** The top-level `fields`: the whole frame, or the header when there are `messages`. */
  readonly fields: readonly CompiledField[];
  /** The header field whose raw value picks the message, when there are `messages`. */
  readonly switch: { readonly label: string; readonly type: string; readonly bytes: number } | undefined;
  readonly messages: readonly BinaryMessage[];
  /** Switch value -> message; empty without `messages`. */
  readonly byWhen: ReadonlyMap<number, BinaryMessage>;
  /** The known switch values, for the unknown-message error: "0x01 (report), 0x02 (alarm)". */
  readonly choices: string;
  /** Bytes after the end of the layout are refused ("error", default) or ignored. */
  readonly trailing: 'error' | 'ignore';
}

function bigToNumber(b: bigint): number {
  const n = Number(b);
  if (!Number.isSafeInteger(n)) {
    throw new WanwuError('WANWU_ERR_INVALID', `64-bit value ${b} does not fit a JavaScript number (2^53)`, { detail: { rule: 'int53', value: String(b) } });
  }
  return n;
}

/** The shortest decimal that reads back as the same float32 (0.1f is reported as 0.1, not 0.10000000149011612). */
export function shortestF32(x: number): number {
  if (!Number.isFinite(x) || x === 0) return x;
  for (let digits = 6; digits < 9; digits++) {
    const y = Number(x.toPrecision(digits));
    if (Math.fround(y) === x) return y;
  }
  return x;
}

/** Number of decimal places in the shortest representation of n (0.001 -> 3, 1e-7 -> 7, 250 -> 0). */
export function decimalsOf(n: number): number {
  const s = String(Math.abs(n));
  const e = s.indexOf('e');
  const mantissa = e < 0 ? s : s.slice(0, e);
  const exponent = e < 0 ? 0 : Number(s.slice(e + 1));
  const dot = mantissa.indexOf('.');
  return Math.max(0, (dot < 0 ? 0 : mantissa.length - dot - 1) - exponent);
}

/**
 * raw -> reported value: raw * scale + offset. An integer raw value times 0.001 is a decimal with
 * 3 places, but binary floating point gives 12.344999999999999 for 12345 * 0.001, so the result is
 * rounded back to the decimals of scale and offset.
 */
export function makeToValue(integer: boolean, scale: number, offset: number): (raw: number) => number {
  if (scale === 1 && offset === 0) return (raw) => raw;
  const decimals = Math.max(decimalsOf(scale), decimalsOf(offset));
  if (!integer || decimals === 0 || decimals > 12) return (raw) => raw * scale + offset;
  const p = 10 ** decimals;
  return (raw) => Math.round((raw * scale + offset) * p) / p + 0; // + 0 turns -0 into 0
}

/** `0x01`, padded to the field's width; non-integers and negatives in decimal. */
export function hex(raw: number, bytes: number): string {
  return Number.isInteger(raw) && raw >= 0 ? `0x${raw.toString(16).padStart(bytes * 2, '0')}` : String(raw);
}

/** Upper-case hex for checksum values, as datasheets print them (CRC-16/MODBUS check 0x4B37). */
export function hexUpper(raw: number, bytes: number): string {
  return `0x${raw.toString(16).toUpperCase().padStart(bytes * 2, '0')}`;
}
