// Commands to protobuf devices: `codec.downlink` of the protobuf codec (one message per Alink
// method, optionally after a type byte) and its encodeCommand. Wire bytes are annotated per
// tag/value: field number, wire type (0 varint, 5 32-bit), value.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { createProduct, type Product } from '../../../src/registry/index.js';
import type { CommandMessage } from '../../../src/thing-model/index.js';
import { errorOf } from '../../helpers/index.js';

const tmpRoot = mkdtempSync(path.join(os.tmpdir(), 'wanwu-pb-downlink-'));
afterAll(() => rmSync(tmpRoot, { recursive: true, force: true }));
let folders = 0;

const PROTO = `
syntax = "proto3";
package t;
message Report { optional int32 level = 1; optional float temp = 2; }
message SetProps { optional bool valve = 1; optional int32 level = 2; }
message SetInterval { uint32 seconds = 1; }
message Reboot {}
message SetTemp { float temp = 1; }
message SetLevel { sint32 lvl = 1; }
`;

const MODEL = {
  properties: [
    { identifier: 'valve', name: 'valve', accessMode: 'rw', dataType: { type: 'bool', specs: { 0: 'closed', 1: 'open' } } },
    { identifier: 'level', name: 'level', accessMode: 'rw', dataType: { type: 'int', specs: { min: 0, max: 1000 } } },
    { identifier: 'temp', name: 'temp', accessMode: 'r', dataType: { type: 'float', specs: {} } },
  ],
  events: [],
  services: [
    {
      identifier: 'setInterval', name: 'setInterval', callType: 'async', method: 'thing.service.setInterval',
      inputData: [{ identifier: 'seconds', name: 'seconds', dataType: { type: 'int', specs: { min: 60, max: 86400 } } }], outputData: [],
    },
    { identifier: 'reboot', name: 'reboot', callType: 'async', method: 'thing.service.reboot', inputData: [], outputData: [] },
  ],
};

function build(downlink: unknown, extra: Record<string, unknown> = {}): Product {
  const key = `PbDl${++folders}`;
  const dir = path.join(tmpRoot, key);
  mkdirSync(dir);
  writeFileSync(path.join(dir, 't.proto'), PROTO);
  const codec = { type: 'protobuf', proto: 't.proto', message: 't.Report', ...extra, ...(downlink === undefined ? {} : { downlink }) };
  return createProduct({ dir, product: { productKey: key, name: key, rat: 'redcap', codec }, model: MODEL });
}

const command = (method: string, params: Record<string, unknown>): CommandMessage => ({ id: '42', version: '1.0', method, params });
const hexOf = (p: Product, method: string, params: Record<string, unknown>) => p.codec.encodeCommand!(command(method, params)).toString('hex');

describe('protobuf codec.downlink', () => {
  it('encodes a method as its bare message', () => {
    const p = build({ 'thing.service.property.set': 't.SetProps', 'thing.service.setInterval': 't.SetInterval' });
    expect(hexOf(p, 'thing.service.property.set', { valve: 1 })).toBe(
      '0801', // field 1 valve, varint: true (the thing model's bool 1)
    );
    expect(hexOf(p, 'thing.service.property.set', { level: 300 })).toBe(
      '10ac02', // field 2 level, varint: 300
    );
    expect(hexOf(p, 'thing.service.setInterval', { seconds: 600 })).toBe(
      '08d804', // field 1 seconds, varint: 600
    );
  });

  it('puts the type byte before the message when given', () => {
    const p = build({
      'thing.service.property.set': { message: 't.SetProps', typeByte: 1 },
      'thing.service.setInterval': { message: 't.SetInterval', typeByte: 2 },
      'thing.service.reboot': { message: 't.Reboot', typeByte: 3 },
    });
    expect(hexOf(p, 'thing.service.setInterval', { seconds: 600 })).toBe(
      '02' + //   type byte 2 = t.SetInterval
        '08d804', // field 1 seconds, varint: 600
    );
    expect(hexOf(p, 'thing.service.reboot', {})).toBe('03'); // type byte 3, empty t.Reboot
  });

  it('keeps the uplink as it was', () => {
    const p = build({ 'thing.service.reboot': 't.Reboot' });
    expect(p.codec.decode({ type: 'up-raw' }, Buffer.from('0807', 'hex'), {})).toEqual([{ kind: 'property', data: { level: 7 } }]);
  });

  it('refuses a method it names no message for', () => {
    const e = errorOf(() => hexOf(build({ 'thing.service.reboot': 't.Reboot' }), 'thing.service.setInterval', { seconds: 60 }));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toMatch(/^no downlink message for thing\.service\.setInterval in PbDl\d+'s codec\.downlink \(it has thing\.service\.reboot\); send the bytes as raw instead$/);
  });

  it('refuses params the message cannot carry as WANWU_ERR_COMMAND', () => {
    const e = errorOf(() => hexOf(build({ 'thing.service.setInterval': 't.SetInterval' }), 'thing.service.setInterval', { seconds: -1 }));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message.startsWith('thing.service.setInterval: seconds')).toBe(true);
    expect(e.cause).toMatchObject({ code: 'WANWU_ERR_INVALID' });
  });

  it('has no encodeCommand without downlink (commands go out as Alink JSON)', () => {
    expect(build(undefined).codec.encodeCommand).toBeUndefined();
  });

  it('maps a command field by `fields`, keyed by message', () => {
    const p = build({ 'thing.service.property.set': 't.SetLevel' }, { fields: { 't.Report': {}, 't.SetLevel': { lvl: 'level' } } });
    expect(hexOf(p, 'thing.service.property.set', { level: 2 })).toBe(
      '0804', // field 1 lvl, varint: zigzag sint32 2 -> 4 (carries level)
    );
  });
});

describe('protobuf codec.downlink is checked at load', () => {
  const cases: Array<[string, unknown, RegExp]> = [
    ['a read-only property in a property set', { 'thing.service.property.set': 't.SetTemp' }, /codec\.downlink\["thing\.service\.property\.set"\]: t\.SetTemp\.temp maps to "temp", which is not an rw property in model\.json/],
    ['an unknown service', { 'thing.service.selfTest': 't.Reboot' }, /codec\.downlink\["thing\.service\.selfTest"\]: "selfTest" is not a service in model\.json$/],
    ['a method that is not a command', { 'thing.event.property.post': 't.Reboot' }, /codec\.downlink\["thing\.event\.property\.post"\]: a method is "thing\.service\.property\.set" or "thing\.service\.\{serviceId\}"$/],
    ['an unknown message', { 'thing.service.reboot': 't.Nope' }, /codec\.downlink\["thing\.service\.reboot"\]: "t\.Nope" is not a message in t\.proto/],
    ['type bytes on some methods only', { 'thing.service.reboot': { message: 't.Reboot', typeByte: 1 }, 'thing.service.setInterval': 't.SetInterval' }, /codec\.downlink: give every method a "typeByte", or none$/],
    ['a type byte used twice', { 'thing.service.reboot': { message: 't.Reboot', typeByte: 1 }, 'thing.service.setInterval': { message: 't.SetInterval', typeByte: 1 } }, /codec\.downlink\["thing\.service\.setInterval"\]\.typeByte: 1 is also the type byte of thing\.service\.reboot$/],
    ['an unknown key', { 'thing.service.reboot': { message: 't.Reboot', msgId: 'id' } }, /codec\.downlink\["thing\.service\.reboot"\]\.msgId: unknown key \(allowed: message, typeByte\)$/],
  ];
  for (const [what, downlink, message] of cases) {
    it(`refuses ${what}`, () => {
      const e = errorOf(() => build(downlink));
      expect(e.code).toBe('WANWU_ERR_PRODUCT');
      expect(e.message).toMatch(message);
    });
  }
});
