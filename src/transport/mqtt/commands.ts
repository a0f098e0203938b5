// Commands to MQTT devices (issue 7, ARCHITECTURE.md "downlink ... at once (online MQTT)"): the
// listener's DeliveryChannel "mqtt". A device's undelivered commands (queued, or sent in an earlier
// session and never acknowledged) are published to it, oldest first, QoS 1, not retained:
//   - when a command is queued while the device is connected (wake);
//   - when its session is ready (aedes `clientReady`: after the CONNACK, after a kept session's
//     subscriptions are restored and after aedes re-sent its own queue);
//   - when it subscribes (aedes `subscribe`): devices connect and then subscribe, and a command
//     goes only to a topic the device has a matching subscription for, as a broker would route it.
// A command is `sent` when handed to aedes and `delivered` on the device's PUBACK for that PUBLISH.
// One sent but never acknowledged (the device dropped first) is sent again in the device's next
// session, with attempts counting up; devices de-duplicate by the Alink id. Within one session a
// command awaiting its PUBACK is never published twice.
//
// How a PUBACK is tied to our PUBLISH. aedes numbers a session's outgoing QoS > 0 packets itself
// (lib/qos-packet.js, from client._nextId) and its `ack` event only carries the acknowledged packet
// for kept sessions (it finds it in its session store, lib/handlers/puback.js; for clean sessions it
// stores nothing and the event carries undefined). So: every attempt publishes a fresh payload Buffer,
// whose identity survives aedes' packet copies (aedes-packet copies the reference). In aedes'
// authorizeForward hook, which runs for every packet it is about to write to a client, we recognise
// the payload, give the packet its identifier from aedes' own counter (QoSPacket keeps an identifier
// that is already set) and remember it; the PacketGuard reports each PUBACK's identifier as it
// arrives on the socket (guard.ts), which completes the command.
//
// Kept sessions (clean = 0): aedes stores a QoS 1 PUBLISH for the session and, if the device drops
// before its PUBACK, writes it again after the next CONNECT [MQTT-4.4.0-1]. That copy lives only in
// aedes' memory, while the SQLite queue is the durable record (and counts attempts), so the queue
// alone redelivers: authorizeForward refuses our stale copies and aedes then drops them from the
// session (lib/handlers/connect.js emptyQueueFilter), and the session's ready hook sends the command again.

import type { AedesPublishPacket, Client, PublishPacket } from 'aedes';
import type { Command, DeliveryChannel, DownlinkPort } from '../../downlink/types.js';
import type { Logger } from '../../types.js';

/** Commands looked at per delivery round (DownlinkPort.undelivered's default): also the most a session has awaiting PUBACK. */
export const COMMANDS_PER_ROUND = 16;

interface DeviceSession {
  client: Client;
  productKey: string;
  deviceName: string;
  key: string;
  /** Commands published in this session awaiting their PUBACK, by command id. */
  inflight: Map<string, Outgoing>;
  /** The same, by packet identifier. */
  byPacketId: Map<number, Outgoing>;
}

interface Outgoing {
  session: DeviceSession;
  commandId: string;
  /** Set when aedes forwards it: the packet identifier, 0 for QoS 0; null before. */
  packetId: number | null;
}

export class MqttCommandDelivery implements DeliveryChannel {
  readonly name = 'mqtt';
  /** `{productKey}/{deviceName}` -> the device's ready session. */
  private readonly live = new Map<string, DeviceSession>();
  private readonly byClient = new WeakMap<Client, DeviceSession>();
  /** Payload of each attempt -> the attempt (see the header: how a PUBACK is tied to our PUBLISH). */
  private readonly outgoing = new WeakMap<Buffer, Outgoing>();

  constructor(
    private readonly port: DownlinkPort,
    private readonly logger: Logger,
  ) {}

  wake(productKey: string, deviceName: string): void {
    const s = this.live.get(`${productKey}/${deviceName}`);
    if (s) this.deliver(s);
  }

  /** The device's session is ready (aedes `clientReady`). A newer session of the device replaces an older one. */
  opened(client: Client, productKey: string, deviceName: string): void {
    const s: DeviceSession = { client, productKey, deviceName, key: `${productKey}/${deviceName}`, inflight: new Map(), byPacketId: new Map() };
    this.byClient.set(client, s);
    this.live.set(s.key, s);
    this.deliver(s);
  }

  /** The device subscribed (aedes `subscribe`): commands for the new topics go out now. */
  subscribed(client: Client): void {
    const s = this.byClient.get(client);
    if (s) this.deliver(s);
  }

  /** The client's connection closed. What awaited a PUBACK stays `sent` and goes again next session. */
  closed(client: Client): void {
    const s = this.byClient.get(client);
    if (!s) return;
    this.byClient.delete(client);
    if (this.live.get(s.key) === s) this.live.delete(s.key);
    s.inflight.clear();
    s.byPacketId.clear();
  }

  /** A PUBACK on the client's connection [MQTT-3.4]: the command it acknowledges is delivered. */
  acked(client: Client, packetId: number): void {
    const s = this.byClient.get(client);
    const out = s?.byPacketId.get(packetId);
    if (!s || !out) return;
    s.byPacketId.delete(packetId);
    s.inflight.delete(out.commandId);
    try {
      this.port.markDelivered(out.commandId);
    } catch (err) {
      this.logger.error({ err: (err as Error).message, command: out.commandId }, 'command delivery not recorded');
    }
    // A place in the round is free: the next commands, if any.
    this.deliver(s);
  }

  /**
   * aedes authorizeForward: runs before aedes writes a PUBLISH to a client, live or from a kept
   * session's store. Our own attempts get their packet identifier here; stale copies are refused.
   */
  forward(client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const out = Buffer.isBuffer(packet.payload) ? this.outgoing.get(packet.payload) : undefined;
    if (!out) return packet;
    // Forwarded before (aedes re-sending it from a kept session after a reconnect) or meant for an
    // earlier connection: the queue sends the command again itself.
    if (out.session.client !== client || out.packetId !== null) return null;
    if (packet.qos > 0) {
      out.packetId = takePacketId(client);
      out.session.byPacketId.set(out.packetId, out);
      packet.messageId = out.packetId;
    } else {
      out.packetId = 0;
    }
    return packet;
  }

  /** Publishes the session's undelivered commands it has a subscription for, oldest first. */
  private deliver(s: DeviceSession): void {
    const { client } = s;
    if (client.closed || !client.connected || this.byClient.get(client) !== s) return;
    try {
      if (!this.port.hasUndelivered(s.productKey, s.deviceName)) return;
      const filters = subscriptionsOf(client);
      // Commands on a topic the device has not subscribed to wait for it (or their TTL) without
      // holding back the others; among the ones sent, the order is the queue's.
      for (const command of this.port.undelivered(s.productKey, s.deviceName, COMMANDS_PER_ROUND)) {
        if (s.inflight.has(command.id)) continue;
        const qos = grantedQos(filters, command.topic);
        if (qos !== null) this.publish(s, command, qos);
      }
    } catch (err) {
      this.logger.error({ err: (err as Error).message, productKey: s.productKey, deviceName: s.deviceName }, 'command delivery failed');
    }
  }

  private publish(s: DeviceSession, command: Command, granted: 0 | 1 | 2): void {
    // A fresh Buffer per attempt: its identity marks this attempt (see forward()).
    const payload = Buffer.from(command.payload);
    const out: Outgoing = { session: s, commandId: command.id, packetId: null };
    this.outgoing.set(payload, out);
    s.inflight.set(command.id, out);
    this.port.markSent(command.id, 'mqtt');
    // QoS 1, or the subscription's QoS 0 [MQTT-3.8.4-6]: then no PUBACK comes, the command stays
    // `sent` until the device replies, and it goes again in the device's next session.
    const packet: PublishPacket = { cmd: 'publish', topic: command.topic, payload, qos: granted === 0 ? 0 : 1, retain: false, dup: false };
    s.client.publish(packet, (err) => {
      if (err) this.logger.debug({ err: err.message, command: command.id }, 'command publish failed');
    });
  }
}

/**
 * The highest QoS granted to a subscription of the client matching `topic` [MQTT-3.3.5-1], or null
 * when none matches. aedes keeps a client's granted subscriptions (restored ones too) in
 * client.subscriptions, keyed by topic filter (lib/handlers/subscribe.js addSubs).
 */
export function grantedQos(filters: ReadonlyMap<string, number>, topic: string): 0 | 1 | 2 | null {
  let best: number | null = null;
  for (const [filter, qos] of filters) {
    if (topicMatches(filter, topic) && (best === null || qos > best)) best = qos;
  }
  return best === null ? null : (Math.min(Math.max(best, 0), 2) as 0 | 1 | 2);
}

/** MQTT topic filter matching [MQTT-4.7.1]: `+` one level, `#` this level and all below (last level only). */
export function topicMatches(filter: string, topic: string): boolean {
  const f = filter.split('/');
  const t = topic.split('/');
  for (let i = 0; i < f.length; i++) {
    // [MQTT-4.7.1-2]: "sport/#" also matches "sport".
    if (f[i] === '#') return true;
    if (i >= t.length || (f[i] !== '+' && f[i] !== t[i])) return false;
  }
  return f.length === t.length;
}

/** Whether any subscription of the client matches `topic` (no Map built: called per device publish). */
export function isSubscribed(client: Client, topic: string): boolean {
  const subs = (client as unknown as { subscriptions?: Record<string, unknown> }).subscriptions;
  if (!subs) return false;
  for (const filter in subs) if (topicMatches(filter, topic)) return true;
  return false;
}

function subscriptionsOf(client: Client): Map<string, number> {
  const subs = (client as unknown as { subscriptions?: Record<string, { qos?: number } | undefined> }).subscriptions ?? {};
  const out = new Map<string, number>();
  for (const filter of Object.keys(subs)) out.set(filter, subs[filter]?.qos ?? 0);
  return out;
}

/**
 * The next packet identifier of the session, from the counter aedes numbers it with (lib/qos-packet.js:
 * 1..65535, then 1 again), so ours never collide with aedes' own in-flight packets [MQTT-2.3.1-2].
 */
function takePacketId(client: Client): number {
  const c = client as unknown as { _nextId?: unknown };
  const id = typeof c._nextId === 'number' && c._nextId >= 1 && c._nextId <= 65535 ? c._nextId : 1;
  c._nextId = id >= 65535 ? 1 : id + 1;
  return id;
}
