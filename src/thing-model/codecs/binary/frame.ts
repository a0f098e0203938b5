// Frames <-> items through a compiled layout. Decoding is one pass over the header's and the
// chosen message's field readers; a fixed-size frame is measured first, so a short or long frame
// is refused before any field is read.

import { WanwuError } from '../../../errors.js';
import { show } from '../../check.js';
import type { DecodedItem } from '../../types.js';
import { hex, ReadState, WriteState, type BinaryLayout, type BinaryMessage } from './types.js';

/** Frame bytes -> item (kind, event, device time, data). Throws WanwuError (MALFORMED, INVALID) only. */
export function decodeBinaryItem(layout: BinaryLayout, frame: Uint8Array): DecodedItem {
  const s = new ReadState(frame);
  const data: Record<string, unknown> = {};
  const head = layout.fields;
  let msg = layout.messages[0]!;
  if (layout.switch === undefined && msg.size !== undefined) {
    if (frame.length !== msg.size) checkSize(layout, msg, frame.length);
    s.expected = msg.sizeNote;
  }
  let pos = 0;
  for (let i = 0; i < head.length; i++) pos = head[i]!.read(s, pos, data);
  if (layout.switch !== undefined) {
    const chosen = layout.byWhen.get(s.sw);
    if (chosen === undefined) throw unknownMessage(layout, s);
    msg = chosen;
    if (msg.size !== undefined) {
      if (frame.length !== msg.size) checkSize(layout, msg, frame.length);
      s.expected = msg.sizeNote;
    }
  }
  const fields = msg.fields;
  for (let i = 0; i < fields.length; i++) pos = fields[i]!.read(s, pos, data);
  if (msg.size === undefined && pos !== frame.length && layout.trailing === 'error') throw trailingBytes(frame.length, pos);
  const item: DecodedItem = msg.event === undefined ? { kind: msg.kind, data } : { kind: msg.kind, event: msg.event, data };
  if (s.ts !== undefined) item.ts = s.ts;
  return item;
}

/** Frame bytes -> {identifier: value} (the data of decodeBinaryItem). */
export function decodeBinary(layout: BinaryLayout, frame: Uint8Array): Record<string, unknown> {
  return decodeBinaryItem(layout, frame).data;
}

function unknownMessage(layout: BinaryLayout, s: ReadState): WanwuError {
  const sw = layout.switch!;
  return new WanwuError('WANWU_ERR_MALFORMED', `field ${sw.label} (${sw.type} at offset ${s.swAt}) is ${hex(s.sw, sw.bytes)}; expected one of ${layout.choices}`, {
    detail: { field: sw.label, offset: s.swAt, value: s.sw },
  });
}

function trailingBytes(length: number, end: number): WanwuError {
  const extra = length - end;
  return new WanwuError('WANWU_ERR_MALFORMED', `frame is ${length} bytes; the layout ends at ${end} (${extra} trailing byte${extra === 1 ? '' : 's'})`, {
    detail: { length, expected: end },
  });
}

/** A fixed-size message whose frame has another size: refuse, naming the first field that does not fit. */
function checkSize(layout: BinaryLayout, msg: BinaryMessage, length: number): void {
  const size = msg.size!;
  if (length > size) {
    if (layout.trailing === 'ignore') return;
    throw trailingBytes(length, size);
  }
  const f = [...layout.fields, ...msg.fields].find((x) => x.at! + x.size! > length)!;
  throw new WanwuError('WANWU_ERR_MALFORMED', `frame is ${length} bytes; field ${f.label} (${f.type} at offset ${f.at}) needs ${f.size}${msg.sizeNote}`, {
    detail: { length, expected: size, field: f.label, offset: f.at },
  });
}

/** Which message to encode: by name or switch value, else by kind/event and then by the data's keys. */
export interface EncodeSelect {
  kind?: 'property' | 'event';
  event?: string;
  /** Device time, for a field with "ts": true that has no id. */
  ts?: number;
  /** A message's name or switch value. */
  message?: string | number;
  /** Downlink: the Alink method (the messages of codec.downlink that carry it). */
  method?: string;
  /** Downlink: the Alink message id, for a field with "msgId": true. */
  msgId?: number;
}

/**
 * {identifier: value} -> frame bytes: the inverse of decodeBinary. Const fields are written as
 * their const, unnamed fields as 0, the switch field as the chosen message's value, counts from
 * the arrays' lengths, checksums last. Throws WANWU_ERR_INVALID for a missing value, an unknown
 * one, or one a field cannot hold.
 */
export function encodeBinary(layout: BinaryLayout, values: Readonly<Record<string, unknown>>, select: EncodeSelect = {}): Buffer {
  const keys = Object.keys(values);
  const msg = chooseMessage(layout, select, keys);
  for (const key of keys) {
    if (!msg.ids.has(key)) {
      throw new WanwuError('WANWU_ERR_INVALID', `${key}: not a field of ${nameOf(layout, msg)} (${[...msg.ids].join(', ') || 'no data'})`, {
        detail: { identifier: key, rule: 'unknown' },
      });
    }
  }
  const w = new WriteState(msg.minSize, msg.when ?? 0, select.ts);
  w.msgId = select.msgId;
  let pos = 0;
  for (const f of layout.fields) pos = f.write(w, pos, values);
  for (const f of msg.fields) pos = f.write(w, pos, values);
  for (const fill of w.after) fill();
  return Buffer.from(w.buf.buffer, w.buf.byteOffset, w.end);
}

/** An item -> frame bytes (the codec's encode for up_raw). */
export function encodeBinaryItem(layout: BinaryLayout, item: Pick<DecodedItem, 'kind' | 'event' | 'ts' | 'data'>): Buffer {
  const select: EncodeSelect = { kind: item.kind };
  if (item.event !== undefined) select.event = item.event;
  if (item.ts !== undefined) select.ts = item.ts;
  return encodeBinary(layout, item.data, select);
}

function nameOf(layout: BinaryLayout, msg: BinaryMessage): string {
  if (layout.switch === undefined) return 'the layout';
  return `message ${msg.name ?? hex(msg.when!, layout.switch.bytes)}`;
}

function chooseMessage(layout: BinaryLayout, select: EncodeSelect, keys: string[]): BinaryMessage {
  let candidates: readonly BinaryMessage[] = layout.messages;
  if (select.message !== undefined) {
    const m = layout.messages.find((x) => x.name === select.message || x.when === select.message);
    if (!m) throw invalid(`no message ${show(select.message)} in the layout`, 'message', select.message);
    candidates = [m];
  }
  if (select.method !== undefined) {
    const method = select.method;
    candidates = candidates.filter((m) => m.method === method);
    if (candidates.length === 0) throw invalid(`no downlink message for ${method}`, 'message', method);
  }
  const { kind, event } = select;
  if (kind !== undefined) {
    candidates = candidates.filter((m) => m.kind === kind && (kind === 'property' || m.event === event));
    if (candidates.length === 0) {
      throw invalid(kind === 'event' ? `the layout has no message for event ${event}` : 'the layout has no property message', 'message', event ?? kind);
    }
  }
  if (candidates.length === 1) return candidates[0]!;
  // Several messages of that kind (a report and a heartbeat): the one whose fields are exactly the data.
  const fit = candidates.find((m) => keys.every((k) => m.ids.has(k)) && [...m.needs].every((k) => keys.includes(k)));
  if (fit) return fit;
  const list = candidates.map((m) => `${nameOf(layout, m)}: ${[...m.ids].join(', ') || 'no data'}`).join('; ');
  throw invalid(`no message of the layout takes exactly ${keys.join(', ') || 'no data'} (${list})`, 'message', keys);
}

function invalid(message: string, rule: string, value: unknown): WanwuError {
  return new WanwuError('WANWU_ERR_INVALID', message, { detail: { rule, value } });
}
