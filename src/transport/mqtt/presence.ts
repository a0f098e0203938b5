// MQTT device presence (issue 7 "Liveness: ... MQTT by session (with last-will)"): the listener
// reports each device session opening and closing; src/downlink/liveness.ts turns these into
// online/offline.
//
// Presence comes from the session, not from the will. A will in the device's CONNECT is kept by
// aedes and, when the connection ends without a DISCONNECT [MQTT-3.1.2-8], goes through
// authorizePublish like any publish of the device (outside its namespace: refused; on an uplink
// topic: ingested) and then to subscribers as usual. It carries the device's own payload, comes only
// for unclean ends, and many devices set none. The session's end is known in every case, so that is
// what reports offline.
//
// One session per device (the listener keys aedes sessions by device): a new login of a device
// closes its older connection [MQTT-3.1.4-2]. That older session reports no offline, since the
// device stays online through the new one, which reports online when it is ready. A device is
// offline when its last authenticated connection has ended and no newer login is on its way.

import type { Client } from 'aedes';
import type { PresenceEvent } from '../../downlink/types.js';
import type { Logger } from '../../types.js';

interface DeviceRef {
  productKey: string;
  deviceName: string;
  key: string;
}

export class PresenceTracker {
  /** Device key -> its authenticated connections that have not ended (a live one, and a newer login taking over). */
  private readonly connections = new Map<string, Set<Client>>();
  /** Devices reported online and not offline since. */
  private readonly online = new Set<string>();
  private readonly devices = new WeakMap<Client, DeviceRef>();
  /** Why a connection ended, as first learned (DISCONNECT, keepalive timeout, error ...). */
  private readonly reasons = new WeakMap<Client, string>();

  constructor(
    private readonly report: (e: PresenceEvent) => void,
    private readonly logger: Logger,
    private readonly now: () => number = Date.now,
  ) {}

  /** A device login was accepted (before its session is ready). */
  login(client: Client, productKey: string, deviceName: string): void {
    const ref = { productKey, deviceName, key: `${productKey}/${deviceName}` };
    this.devices.set(client, ref);
    let set = this.connections.get(ref.key);
    if (!set) this.connections.set(ref.key, (set = new Set()));
    set.add(client);
  }

  /** The device's session is ready (aedes `clientReady`). */
  ready(client: Client): void {
    const ref = this.devices.get(client);
    if (!ref || !this.connections.get(ref.key)?.has(client)) return;
    this.online.add(ref.key);
    this.emit({ productKey: ref.productKey, deviceName: ref.deviceName, online: true, at: this.now() });
  }

  /** Records why the connection is ending; the first reason given wins. */
  reason(client: Client, why: string): void {
    if (this.devices.has(client) && !this.reasons.has(client)) this.reasons.set(client, why);
  }

  /** The connection closed. */
  ended(client: Client): void {
    const ref = this.devices.get(client);
    const set = ref && this.connections.get(ref.key);
    if (!ref || !set?.delete(client)) return;
    // A newer login of the device is on its way or live: a takeover, no offline.
    if (set.size > 0) return;
    this.connections.delete(ref.key);
    if (!this.online.delete(ref.key)) return;
    // Without a DISCONNECT or an error seen first, the network connection was lost.
    const reason = this.reasons.get(client) ?? 'connection lost';
    this.emit({ productKey: ref.productKey, deviceName: ref.deviceName, online: false, at: this.now(), reason });
  }

  private emit(e: PresenceEvent): void {
    try {
      this.report(e);
    } catch (err) {
      this.logger.error({ err: (err as Error).message, productKey: e.productKey, deviceName: e.deviceName }, 'presence listener failed');
    }
  }
}
