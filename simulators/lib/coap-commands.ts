// A simulated NB-IoT module's side of commands over CoAP (the gateway's side, and the wire format, are
// src/transport/coap/delivery.ts and the README's "Commands to NB-IoT (CoAP) devices"): a command
// arrives piggybacked in the answer to an uplink (or a poll), marked by its Location-Path, or as a CON
// POST the gateway pushes to the module's port. An Alink JSON command (Content-Format 50) is answered
// with a POST of {"id","code":200} on its topic + "_reply"; a raw one (42) needs no answer here.

import type { ParsedPacket } from 'coap-packet';
import { TOPIC_PREFIX_SEGMENT } from '../../src/transport/coap/request.js';
import { CONTENT_FORMAT_JSON, decodeUint } from '../../src/transport/coap/protocol.js';
import { openAnswer } from './coap-crypto.js';

/** A command as the module reads it. */
export interface ReceivedCommand {
  /** The command topic, '/sys/{pk}/{dn}/thing/...'. */
  topic: string;
  /** The command's bytes (decrypted for a product with coapEncryption). */
  payload: Buffer;
  /** Alink JSON (Content-Format 50) rather than raw bytes. */
  json: boolean;
}

type Options = ParsedPacket['options'];

/** The topic the segments of `name` options spell ('topic' first), or null. */
function topicOf(options: Options, name: string): string | null {
  const segs = options.filter((o) => o.name === name).map((o) => o.value.toString('utf8'));
  if (segs.length < 2 || segs[0] !== TOPIC_PREFIX_SEGMENT) return null;
  return `/${segs.slice(1).join('/')}`;
}

function isJson(options: Options): boolean {
  const cf = options.find((o) => o.name === 'Content-Format');
  return cf !== undefined && decodeUint(cf.value) === CONTENT_FORMAT_JSON;
}

/** The command carried in an answer to one of the module's requests (Location-Path present), or null. */
export function commandInAnswer(options: Options, payload: Buffer, key: Buffer | null): ReceivedCommand | null {
  const topic = topicOf(options, 'Location-Path');
  if (topic === null || payload.length === 0) return null;
  return { topic, payload: openAnswer(key, payload), json: isJson(options) };
}

/** The command in a request the gateway pushed (Uri-Path = 'topic' + its topic), or null. */
export function commandInRequest(packet: ParsedPacket, key: Buffer | null): ReceivedCommand | null {
  if (packet.code !== '0.02') return null;
  const topic = topicOf(packet.options, 'Uri-Path');
  if (topic === null) return null;
  return { topic, payload: openAnswer(key, packet.payload), json: isJson(packet.options) };
}

/** '{pk}/{dn}' of a command topic, to find the module it is for. */
export function commandOwner(topic: string): string | null {
  const parts = topic.split('/');
  return parts.length >= 5 && parts[1] === 'sys' ? `${parts[2]}/${parts[3]}` : null;
}

/** The reply a module sends: Alink {"id","code":200,"data":{}} on the topic + "_reply"; null for raw commands or JSON without an id. */
export function replyTo(command: ReceivedCommand): { topic: string; payload: Buffer } | null {
  if (!command.json) return null;
  let id: unknown;
  try {
    id = (JSON.parse(command.payload.toString('utf8')) as { id?: unknown }).id;
  } catch {
    return null;
  }
  if (typeof id !== 'string' && typeof id !== 'number') return null;
  return { topic: `${command.topic}_reply`, payload: Buffer.from(JSON.stringify({ id: String(id), code: 200, data: {} })) };
}
