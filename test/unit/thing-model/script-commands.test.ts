// Commands through a codec script (src/thing-model/codecs/script.ts, encodeCommand): what each
// style of script is given, what it may return, and how its faults refuse the command
// (WANWU_ERR_COMMAND). Scripts are inline; devices/SoilNB/codec.js is the sample.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createProduct } from '../../../src/registry/index.js';
import { createScriptCodec } from '../../../src/thing-model/codecs/script.js';
import type { CommandMessage } from '../../../src/thing-model/index.js';
import { errorOf } from '../../helpers/index.js';

const ROOT = fileURLToPath(new URL('../../../', import.meta.url));

const script = (source: string, timeoutMs?: number) =>
  createScriptCodec({ source, filename: 'cmd.js', productKey: 'Cmd', variables: { site: 'field-7' }, ...(timeoutMs === undefined ? {} : { timeoutMs }) });

const command = (method: string, params: Record<string, unknown>, id = '42'): CommandMessage => ({ id, version: '1.0', method, params });

/** Scripts that answer with the JSON text of their input, as bytes, so the test sees exactly what they were given. */
const ECHO = `function toBytes(v) { var s = JSON.stringify(v), out = []; for (var i = 0; i < s.length; i++) out.push(s.charCodeAt(i)); return out; }`;
const echoed = (bytes: Buffer): unknown => JSON.parse(bytes.toString('latin1'));

describe('ChirpStack style: encodeDownlink({data, variables, method, id})', () => {
  const codec = script(`${ECHO}
    function decodeUplink(input) { return { data: {} }; }
    function encodeDownlink(input) { return { bytes: toBytes(input), fPort: 2 }; }`);

  it('gets the params as data (what ChirpStack passes), the Alink method and id beside them, and the variables', () => {
    expect(echoed(codec.encodeCommand!(command('thing.service.setReportInterval', { interval: 600 })))).toEqual({
      data: { interval: 600 },
      method: 'thing.service.setReportInterval',
      id: '42',
      variables: { site: 'field-7' },
    });
    expect(echoed(codec.encodeCommand!(command('thing.service.property.set', { valve: 1 }, '7')))).toMatchObject({ data: { valve: 1 }, method: 'thing.service.property.set', id: '7' });
  });

  it('passes no method to the uplink form of encode, so a script can tell the two apart', () => {
    expect(echoed(codec.encode!({ type: 'up-raw' }, { kind: 'property', data: { x: 1 } }))).toEqual({ data: { x: 1 }, variables: { site: 'field-7' } });
  });
});

describe('Alibaba style: protocolToRawData(message)', () => {
  const codec = script(`${ECHO}
    function rawDataToProtocol(bytes) { return { id: '1', version: '1.0', method: 'thing.event.property.post', params: {} }; }
    function protocolToRawData(json) { return toBytes(json); }`);

  it('gets the Alink downlink message {id, version, method, params}, as Alibaba IoT passes it', () => {
    expect(echoed(codec.encodeCommand!(command('thing.service.property.set', { valve: 1 }, '1001')))).toEqual({
      id: '1001',
      version: '1.0',
      method: 'thing.service.property.set',
      params: { valve: 1 },
    });
    expect(echoed(codec.encodeCommand!(command('thing.service.reboot', {})))).toEqual({ id: '42', version: '1.0', method: 'thing.service.reboot', params: {} });
  });

  it('takes signed bytes, as a Java byte[] holds them', () => {
    const signed = script(`function rawDataToProtocol(b) { return {}; }
      function protocolToRawData(json) { return [0x5a, -1, -128, json.params.level]; }`);
    expect(signed.encodeCommand!(command('thing.service.property.set', { level: 200 })).toString('hex')).toBe('5aff80c8');
  });
});

describe('script faults refuse the command (WANWU_ERR_COMMAND)', () => {
  const codec = script(
    `function decodeUplink(input) { return { data: {} }; }
function encodeDownlink(input) {
  if (input.method === 'thing.service.fail') return { errors: ['interval ' + input.data.interval + ' out of range', 'second'] };
  if (input.method === 'thing.service.throw') throw new RangeError('no room');
  if (input.method === 'thing.service.loop') for (;;) {}
  if (input.method === 'thing.service.nobytes') return { fPort: 1 };
  return { bytes: [1] };
}`,
    30,
  );

  it("with the script's first error", () => {
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.fail', { interval: 5 })));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('cmd.js: encodeDownlink: interval 5 out of range');
    expect(e.detail).toEqual({ script: 'cmd.js', function: 'encodeDownlink', reason: 'errors' });
  });

  it('with the exception and its line', () => {
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.throw', {})));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('cmd.js:4: encodeDownlink threw RangeError: no room');
  });

  it('when it returns no bytes', () => {
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.nobytes', {})));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('cmd.js: encodeDownlink returned bytes = undefined; expected an array of bytes');
  });

  it('when it overruns its time budget, as decode does; the next command works', () => {
    const e = errorOf(() => codec.encodeCommand!(command('thing.service.loop', {})));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('cmd.js: encodeDownlink was stopped after its 30 ms budget');
    expect(e.detail).toEqual({ script: 'cmd.js', function: 'encodeDownlink', reason: 'timeout' });
    expect(codec.encodeCommand!(command('thing.service.ok', {})).toString('hex')).toBe('01');
  });

  it('when the script has no encoder (the device would not read Alink JSON either)', () => {
    const plain = script('function rawDataToProtocol(b) { return {}; }');
    expect(plain.encodeCommand).toBeTypeOf('function');
    const e = errorOf(() => plain.encodeCommand!(command('thing.service.reboot', {})));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('cmd.js defines no protocolToRawData, so commands to Cmd cannot be encoded; send the bytes as raw instead');
  });
});

describe('SoilNB codec.js: setReportInterval', () => {
  const dir = path.join(ROOT, 'devices/SoilNB');
  const read = (name: string): unknown => JSON.parse(readFileSync(path.join(dir, name), 'utf8'));
  const soil = createProduct({ dir: 'devices/SoilNB', product: read('product.json'), model: read('model.json') });

  it('encodes the command frame', () => {
    const frame = Buffer.from(
      '81' + //        frame type 0x81 = set report interval
        '00000258', // interval u32 600 s
      'hex',
    );
    expect(soil.codec.encodeCommand!(command('thing.service.setReportInterval', { interval: 600 }))).toEqual(frame);
  });

  it('refuses what it has no frame for, and an interval out of range, with its own message', () => {
    expect(errorOf(() => soil.codec.encodeCommand!(command('thing.service.property.set', { soilMoisture: 1 }))).message).toBe(
      'codec.js: encodeDownlink: no downlink frame for thing.service.property.set',
    );
    // The thing model refuses this before the script runs (test/unit/thing-model/commands.test.ts); the script checks too.
    const e = errorOf(() => soil.codec.encodeCommand!(command('thing.service.setReportInterval', { interval: 30 })));
    expect(e.code).toBe('WANWU_ERR_COMMAND');
    expect(e.message).toBe('codec.js: encodeDownlink: interval 30 is not a whole number of seconds in 60..86400');
  });

  it('still writes the uplink report for the simulator', () => {
    const item = { kind: 'property' as const, data: { soilMoisture: 42.5, soilTemperature: 22, conductivity: 1300, batteryVoltage: 3.65, rsrp: -100, sensorStatus: 0 } };
    expect(soil.codec.encode!({ type: 'up-raw' }, item).toString('hex')).toBe('0101a9089805140e42ff9c00');
  });
});
