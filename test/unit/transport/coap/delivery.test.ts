// Commands to CoAP devices (src/transport/coap/delivery.ts): which GETs are polls, how a command is
// encoded in an answer, and the bound on the per-device state. The wire behaviour against a real
// gateway is test/integration/coap-commands.test.ts.

import { generate, parse, type Option, type Packet } from 'coap-packet';
import { describe, expect, it } from 'vitest';
import type { Command, DeliveryChannel, DownlinkPort } from '../../../../src/downlink/types.js';
import { CommandDelivery, commandSpec, type CoapDownlinkMode, type DeliveryOptions } from '../../../../src/transport/coap/delivery.js';
import { inspectRequest } from '../../../../src/transport/coap/request.js';
import { encodeResponse } from '../../../../src/transport/coap/responses.js';
import { silentLogger } from '../../../helpers/index.js';

function request(path: string, code: Packet['code']): ReturnType<typeof parse> {
  const options: Option[] = path
    .split('/')
    .filter((s) => s !== '')
    .map((s) => ({ name: 'Uri-Path', value: Buffer.from(s) }));
  return parse(generate({ code, confirmable: true, messageId: 1, token: Buffer.from([1]), options }));
}

describe('inspectRequest: polls', () => {
  it('takes GET under thing/service and on thing/model/down_raw as a poll of that topic', () => {
    for (const topic of ['/sys/pk/dn/thing/service', '/sys/pk/dn/thing/service/property/set', '/sys/pk/dn/thing/service/reboot', '/sys/pk/dn/thing/model/down_raw']) {
      expect(inspectRequest(request(`/topic${topic}`, 'GET'), true, 1024)).toEqual({ kind: 'poll', target: { productKey: 'pk', deviceName: 'dn', topic } });
    }
  });

  it('keeps the other answers: GET on an uplink or reply topic 4.05, on an unknown one 4.04, POST on a command topic 4.04', () => {
    const code = (path: string, method: Packet['code']) => {
      const v = inspectRequest(request(path, method), true, 1024);
      return v.kind === 'respond' ? v.response.code : v.kind;
    };
    expect(code('/topic/sys/pk/dn/thing/model/up_raw', 'GET')).toBe('4.05');
    expect(code('/topic/sys/pk/dn/thing/service/property/set_reply', 'GET')).toBe('4.05');
    expect(code('/topic/sys/pk/dn/thing/service/a/b/c', 'GET')).toBe('4.04');
    expect(code('/topic/sys/pk/dn/thing/model/down_raw/x', 'GET')).toBe('4.04');
    expect(code('/topic/sys/pk/dn/thing/service/property/set', 'POST')).toBe('4.04');
    expect(code('/topic/sys/pk/dn/thing/model/down_raw', 'PUT')).toBe('4.04');
  });
});

function command(topic: string, payload: Buffer): Command {
  return { id: 'c1', msgId: '1', productKey: 'pk', deviceName: 'dn', method: 'm', topic, payload, state: 'queued', source: 'api', createdAt: 0, updatedAt: 0, expiresAt: 1, attempts: 0 };
}

describe('commandSpec', () => {
  it('carries the bytes with Content-Format, Location-Path = "topic" + the topic, and option 65000 when more wait', () => {
    const json = Buffer.from('{"id":"1"}');
    const bytes = encodeResponse('ack', 7, Buffer.from([9]), commandSpec('2.04', command('/sys/pk/dn/thing/service/property/set', json), true, [{ name: 12, value: Buffer.from([50]) }]));
    const p = parse(bytes);
    expect(p.code).toBe('2.04');
    expect(p.payload.equals(json)).toBe(true);
    expect(p.options.filter((o) => o.name === 'Content-Format').map((o) => o.value[0])).toEqual([50]);
    expect(p.options.filter((o) => o.name === 'Location-Path').map((o) => o.value.toString())).toEqual(['topic', 'sys', 'pk', 'dn', 'thing', 'service', 'property', 'set']);
    expect(p.options.find((o) => String(o.name) === '65000')?.value).toEqual(Buffer.from([1]));

    const raw = parse(encodeResponse('ack', 7, Buffer.alloc(0), commandSpec('2.05', command('/sys/pk/dn/thing/model/down_raw', Buffer.from([1, 2])), false)));
    expect(raw.options.find((o) => o.name === 'Content-Format')?.value).toEqual(Buffer.from([42]));
    expect(raw.options.some((o) => String(o.name) === '65000')).toBe(false);
  });
});

/** A CommandDelivery on a fixed clock with RFC 7252's default timers; `o` sets the queue, mode and sink. */
function delivery(o: Pick<DeliveryOptions, 'port' | 'mode'> & Partial<DeliveryOptions>): CommandDelivery {
  return new CommandDelivery({
    send: () => {},
    allocMessageId: () => 1,
    ingest: async () => ({ committed: 1, deadLettered: false }),
    logger: silentLogger,
    ackTimeoutMs: 2000,
    ackRandomFactor: 1.5,
    maxRetransmit: 4,
    exchangeLifetimeMs: 247_000,
    random: () => 0,
    monotonic: () => 0,
    now: () => 0,
    maxDevices: 10,
    ...o,
  });
}

describe('CommandDelivery memory', () => {
  it('holds at most maxDevices entries, dropping the least recently seen, and none for piggyback devices without commands', () => {
    let mode: CoapDownlinkMode = { delivery: 'push', windowS: 20 };
    const port: DownlinkPort = {
      undelivered: () => [],
      hasUndelivered: () => false,
      markSent: () => {},
      markDelivered: () => {},
      attach: (_c: DeliveryChannel) => () => {},
    };
    const d = delivery({ port, mode: () => mode, maxDevices: 1000 });
    d.start();
    for (let i = 0; i < 1500; i++) d.seen({ productKey: 'pk', deviceName: `d${i}` }, '10.0.0.1', 1000 + i, undefined);
    expect(d.stats()).toMatchObject({ devices: 1000, evicted: 500 });
    mode = { delivery: 'piggyback', windowS: 20 };
    for (let i = 0; i < 100; i++) d.seen({ productKey: 'pk2', deviceName: `d${i}` }, '10.0.0.1', 1000 + i, undefined);
    expect(d.stats()).toMatchObject({ devices: 1000, evicted: 500 });
    d.stop();
    expect(d.stats().devices).toBe(0);
  });
});

describe('CommandDelivery: a poll and a push in the same wake-up', () => {
  const TOPIC = '/sys/pk/dn/thing/service/property/set';
  const device = { productKey: 'pk', deviceName: 'dn' };

  /** Push mode over a fake queue of two commands; `sent` collects the pushed datagrams' payloads. */
  function setup() {
    const queue: Command[] = ['x', 'y'].map((id, i) => ({ ...command(TOPIC, Buffer.from(`{"id":"${i + 1}"}`)), id, msgId: String(i + 1) }));
    const sent: string[] = [];
    let wake: ((pk: string, dn: string) => void) | undefined;
    const port: DownlinkPort = {
      undelivered: (_pk, _dn, limit = 100) => queue.filter((c) => c.state === 'queued' || c.state === 'sent').slice(0, limit),
      hasUndelivered: () => queue.some((c) => c.state === 'queued' || c.state === 'sent'),
      markSent: (id) => void (queue.find((c) => c.id === id)!.state = 'sent'),
      markDelivered: (id) => void (queue.find((c) => c.id === id)!.state = 'delivered'),
      attach: (c: DeliveryChannel) => {
        wake = c.wake;
        return () => {};
      },
    };
    const d = delivery({ port, mode: () => ({ delivery: 'push', windowS: 20 }), send: (bytes: Buffer) => void sent.push(parse(bytes).payload.toString()) });
    d.start();
    return { d, sent, wake: () => wake!('pk', 'dn') };
  }

  it('a poll while a command is being pushed gets the next command, not the same one again', () => {
    const { d, sent } = setup();
    d.seen(device, '10.0.0.1', 5683, undefined);
    d.afterUplink(device);
    expect(sent).toEqual(['{"id":"1"}']);
    const carry = d.forPoll({ ...device, topic: '/sys/pk/dn/thing/service' }, Buffer.from([1]), undefined);
    expect(carry?.command.id).toBe('y');
    d.stop();
  });

  it('a push after a poll answer does not send the command that answer carried', () => {
    const { d, sent, wake } = setup();
    d.seen(device, '10.0.0.1', 5683, undefined);
    const carry = d.forPoll({ ...device, topic: '/sys/pk/dn/thing/service' }, Buffer.from([1]), undefined);
    expect(carry?.command.id).toBe('x');
    d.handedOut(device, carry!.command, 'coap-poll', true, 'dedup-1', 64, '10.0.0.1', 5683);
    wake();
    expect(sent).toEqual(['{"id":"2"}']);
    d.stop();
  });
});
