// Device liveness: online, sleeping or offline for every device (ARCHITECTURE.md "downlink": a
// command is delivered at once to an online device, on the next contact of a sleeping one).
//
// MQTT devices (Cat-1, RedCap) keep a session: online from CONNECT to the session's end (DISCONNECT,
// keepalive timeout, last will), reported by the MQTT listener as PresenceEvents.
//
// CoAP devices (NB-IoT) have no session. They wake from PSM, send, stay reachable for a short while
// (RRC release, then the PSM active timer T3324, 3GPP TS 24.301 §5.3.11) and sleep until their next
// report. So after each accepted uplink at time L:
//
//   [L, L + window)                       online    (downlink can be pushed; = the CoAP push window)
//   [L + window, L + interval + tolerance) sleeping  (a command waits for the next uplink)
//   [max(L + window, L + interval + tolerance), ...)  offline  (the report is overdue)
//
//   interval  = product.json liveness.reportIntervalS when set (the operator's declared schedule
//               wins: "offline" then means "missed its schedule", which is what an operator can
//               act on), else the median of the device's last 5 wake-up gaps once it has 3 of them
//               (a median ignores the odd alarm-triggered extra report or one missed report, which
//               would drag an average; gaps shorter than the active window are messages of the same
//               wake-up and are not counted), else config downlink.liveness.reportIntervalS.
//   tolerance = max(toleranceS, toleranceRatio x interval).
//
// An MQTT device while no presence events arrive (a listener without them) is judged by the same
// timed rule from its publishes.
//
// Scale (100k devices): no timer per device. Devices with a coming change sit in one min-heap
// ordered by that change's time; one sweep timer pops what is due: O(changes x log n) per sweep,
// O(log n) per uplink. Memory: one small entry per device ever seen.
//
// Every change appends a record of kind "state" to the record buffer (upstream topic
// wanwu/{pk}/{dn}/state by default): data {state, previous, since, lastSeen, reason, expectedNextAt?,
// intervalS?, intervalSource?}. Liveness is written to the command queue's file (state-store.ts)
// by the sweep, so a restart keeps sleeping devices sleeping; at start, changes whose time passed
// while the gateway was down are made (with the times they happened), and MQTT sessions, which
// did not survive the restart, end.

import type { PresenceEvent } from './types.js';
import type { Product, Registry } from '../registry/index.js';
import { RATS, type Logger, type Rat, type RawMessage, type TelemetryRecord, type Transport } from '../types.js';
import { uuidv7 } from '../util/uuidv7.js';
import { DeviceStateStore, type LivenessMode, type LivenessRow, type LivenessState } from './state-store.js';

export type { LivenessState } from './state-store.js';
export const LIVENESS_STATES: readonly LivenessState[] = ['online', 'sleeping', 'offline'];

/** Gaps kept per device for the learned interval, and how many it takes before they are trusted. */
const GAPS_KEPT = 5;
const GAPS_NEEDED = 3;

/** config downlink.liveness, or a product's overrides of it (all seconds except the ratio). */
export const LIVENESS_RECORDS = ['all', 'offline', 'none'] as const;
export type LivenessRecords = (typeof LIVENESS_RECORDS)[number];

export interface LivenessParams {
  activeWindowS: number;
  reportIntervalS: number;
  toleranceS: number;
  toleranceRatio: number;
}

export interface LivenessOptions {
  /** SQLite file (the command queue's commands.db). */
  path: string;
  registry: Registry;
  /** Where state records go (the record buffer). */
  records: { append(records: readonly TelemetryRecord[]): Promise<void> };
  logger: Logger;
  /** Defaults for products without their own liveness keys. */
  defaults: LivenessParams;
  /** How often due changes are made and liveness is written, in ms. */
  sweepMs: number;
  /**
   * Which changes become state records upstream: 'all'; 'offline' (only changes to or from offline, so
   * a PSM device's online/sleeping cycle at every report stays local); 'none'. Default 'all'.
   */
  recordChanges?: LivenessRecords;
  /** Clock (tests). Default Date.now. */
  now?: () => number;
}

/** Where the expected interval came from. */
export type IntervalSource = 'product' | 'learned' | 'default';

/** One device's liveness as the API shows it. */
export interface DeviceLiveness {
  state: LivenessState;
  /** ms since the epoch; null for a device never seen. */
  since: number | null;
  lastSeen: number | null;
  /** Timed (CoAP) devices: when the next report is due. */
  expectedNextAt?: number;
  intervalS?: number;
  intervalSource?: IntervalSource;
  /** session: an MQTT session decides; timed: the CoAP rule. Absent for a device never seen. */
  mode?: LivenessMode;
}

export interface DevicesByState {
  byState: Record<LivenessState, number>;
  byRat: Record<Rat, Record<LivenessState, number>>;
}

export interface LivenessStats extends DevicesByState {
  /** State records the buffer refused (full or failing). The state itself still changed. */
  recordErrors: number;
}

export interface Liveness {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Pipeline observer: an accepted uplink (records are not needed). */
  observe(raw: RawMessage): void;
  /** MQTT listener: a device session opened or closed. */
  presence(event: PresenceEvent): void;
  get(productKey: string, deviceName: string): DeviceLiveness;
  /** Makes the changes due by now and writes what changed (what the timer does). */
  sweep(): void;
  stats(): LivenessStats;
}

/** A tracked device: its stored row plus what only lives in memory. */
interface Entry extends LivenessRow {
  rat: Rat;
  /** When the next timed change is due (Infinity: none). */
  deadline: number;
  /** Position in the heap, -1 when not in it. */
  heapIndex: number;
}

/** Milliseconds of the timed rule for one device. */
interface Timing {
  windowMs: number;
  intervalMs: number;
  toleranceMs: number;
  source: IntervalSource;
}

/** The timed (CoAP) rule at time t for a device last seen at `lastSeen`: its state and when that ends. */
export function timedState(lastSeen: number, t: Pick<Timing, 'windowMs' | 'intervalMs' | 'toleranceMs'>, at: number): { state: LivenessState; until: number } {
  const windowEnd = lastSeen + t.windowMs;
  const offlineAt = Math.max(windowEnd, lastSeen + t.intervalMs + t.toleranceMs);
  if (at < windowEnd) return { state: 'online', until: windowEnd };
  if (at < offlineAt) return { state: 'sleeping', until: offlineAt };
  return { state: 'offline', until: Infinity };
}

/** Median of the gaps (ms), or null with fewer than GAPS_NEEDED. */
export function learnedInterval(gaps: readonly number[]): number | null {
  if (gaps.length < GAPS_NEEDED) return null;
  const s = [...gaps].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A binary min-heap of entries by deadline that knows each entry's position (update and remove in O(log n)). */
class DeadlineHeap {
  private readonly items: Entry[] = [];

  get size(): number {
    return this.items.length;
  }

  peek(): Entry | undefined {
    return this.items[0];
  }

  /** Inserts, moves or (deadline Infinity) removes the entry. */
  set(e: Entry, deadline: number): void {
    e.deadline = deadline;
    if (deadline === Infinity) {
      this.remove(e);
      return;
    }
    if (e.heapIndex < 0) {
      e.heapIndex = this.items.length;
      this.items.push(e);
    }
    this.up(e.heapIndex);
    this.down(e.heapIndex);
  }

  remove(e: Entry): void {
    const i = e.heapIndex;
    if (i < 0) return;
    const last = this.items.pop()!;
    e.heapIndex = -1;
    if (last === e) return;
    this.items[i] = last;
    last.heapIndex = i;
    this.up(i);
    this.down(i);
  }

  clear(): void {
    for (const e of this.items) e.heapIndex = -1;
    this.items.length = 0;
  }

  private swap(i: number, j: number): void {
    const a = this.items[i]!;
    const b = this.items[j]!;
    this.items[i] = b;
    this.items[j] = a;
    a.heapIndex = j;
    b.heapIndex = i;
  }

  private up(i: number): void {
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (this.items[parent]!.deadline <= this.items[i]!.deadline) return;
      this.swap(i, parent);
      i = parent;
    }
  }

  private down(i: number): void {
    const n = this.items.length;
    for (;;) {
      const l = 2 * i + 1;
      const r = l + 1;
      let m = i;
      if (l < n && this.items[l]!.deadline < this.items[m]!.deadline) m = l;
      if (r < n && this.items[r]!.deadline < this.items[m]!.deadline) m = r;
      if (m === i) return;
      this.swap(i, m);
      i = m;
    }
  }
}

const zeroStates = (): Record<LivenessState, number> => ({ online: 0, sleeping: 0, offline: 0 });

export function createLiveness(opts: LivenessOptions): Liveness {
  const now = opts.now ?? Date.now;
  const entries = new Map<string, Entry>();
  const heap = new DeadlineHeap();
  const dirty = new Set<Entry>();
  /** Tracked devices by rat and state (never-seen devices are offline and counted from the registry). */
  const counts = Object.fromEntries(RATS.map((r) => [r, zeroStates()])) as Record<Rat, Record<LivenessState, number>>;
  let store: DeviceStateStore | null = null;
  let timer: NodeJS.Timeout | null = null;
  let recordErrors = 0;
  let lastErrorLog = -Infinity;
  let flushFailing = false;

  const key = (pk: string, dn: string) => `${pk}/${dn}`;
  const recordsMode: LivenessRecords = opts.recordChanges ?? 'all';

  function timing(product: Product | undefined, e: Entry): Timing {
    const d = opts.defaults;
    const p = product?.liveness;
    const windowMs = (p?.activeWindowS ?? d.activeWindowS) * 1000;
    let intervalMs: number;
    let source: IntervalSource;
    const learned = p?.reportIntervalS === undefined ? learnedInterval(e.gaps) : null;
    if (p?.reportIntervalS !== undefined) {
      intervalMs = p.reportIntervalS * 1000;
      source = 'product';
    } else if (learned !== null) {
      intervalMs = learned;
      source = 'learned';
    } else {
      intervalMs = d.reportIntervalS * 1000;
      source = 'default';
    }
    const toleranceMs = Math.max((p?.toleranceS ?? d.toleranceS) * 1000, (p?.toleranceRatio ?? d.toleranceRatio) * intervalMs);
    return { windowMs, intervalMs, toleranceMs, source };
  }

  function record(e: Entry, previous: LivenessState, reason: string): TelemetryRecord {
    const data: Record<string, unknown> = { state: e.state, previous, since: e.since, lastSeen: e.lastSeen, reason };
    if (e.mode === 'timed') {
      const t = timing(opts.registry.product(e.productKey), e);
      data.expectedNextAt = e.lastSeen + t.intervalMs;
      data.intervalS = Math.round(t.intervalMs / 1000);
      data.intervalSource = t.source;
    }
    const at = now();
    return {
      id: uuidv7(at),
      productKey: e.productKey,
      deviceName: e.deviceName,
      kind: 'state',
      ts: e.since,
      receivedAt: at,
      transport: e.transport,
      rat: e.rat,
      data,
    };
  }

  function emit(changes: TelemetryRecord[]): void {
    // The state itself changes all the same (API, /status); only what goes upstream is chosen.
    const records =
      recordsMode === 'all' ? changes : recordsMode === 'none' ? [] : changes.filter((r) => r.data.state === 'offline' || r.data.previous === 'offline');
    if (records.length === 0) return;
    opts.records.append(records).catch((err: unknown) => {
      recordErrors += records.length;
      // A full buffer refuses every change of a large fleet: one line a minute, the rest counted on /status.
      const t = now();
      if (t - lastErrorLog < 60_000) return;
      lastErrorLog = t;
      opts.logger.error({ err: (err as Error).message, records: records.length, refusedSoFar: recordErrors }, 'device state records not stored (devices.recordErrors on /status)');
    });
  }

  /** Moves the entry to `state` (the caller emits the returned record). */
  function change(e: Entry, state: LivenessState, since: number, reason: string): TelemetryRecord {
    const previous = e.state;
    counts[e.rat][previous]--;
    counts[e.rat][state]++;
    e.state = state;
    e.since = since;
    dirty.add(e);
    return record(e, previous, reason);
  }

  function entryFor(productKey: string, deviceName: string, at: number, transport: Transport): Entry | null {
    const k = key(productKey, deviceName);
    let e = entries.get(k);
    if (e) return e;
    const product = opts.registry.product(productKey);
    if (!product || !opts.registry.device(productKey, deviceName)) return null;
    // Never seen: offline until now (the first change's `previous`).
    e = { productKey, deviceName, rat: product.rat, state: 'offline', since: at, lastSeen: at, mode: 'timed', transport, gaps: [], deadline: Infinity, heapIndex: -1 };
    entries.set(k, e);
    counts[e.rat].offline++;
    return e;
  }

  /** The timed rule's next change for the entry, from its current state (Infinity when offline). */
  function schedule(e: Entry): void {
    if (e.mode !== 'timed' || e.state === 'offline') {
      heap.set(e, Infinity);
      return;
    }
    const t = timing(opts.registry.product(e.productKey), e);
    const windowEnd = e.lastSeen + t.windowMs;
    const offlineAt = Math.max(windowEnd, e.lastSeen + t.intervalMs + t.toleranceMs);
    heap.set(e, e.state === 'online' ? windowEnd : offlineAt);
  }

  /** Makes every change due by `at`, each with the time it was due. */
  function advance(at: number): TelemetryRecord[] {
    const out: TelemetryRecord[] = [];
    for (let e = heap.peek(); e && e.deadline <= at; e = heap.peek()) {
      const due = e.deadline;
      const t = timing(opts.registry.product(e.productKey), e);
      const next = timedState(e.lastSeen, t, due).state;
      if (next === e.state) {
        // Cannot happen with a consistent schedule; recompute rather than spin.
        schedule(e);
        if (e.deadline <= due) heap.set(e, Infinity);
        continue;
      }
      out.push(change(e, next, due, next === 'sleeping' ? 'window-ended' : 'report-overdue'));
      schedule(e);
    }
    return out;
  }

  function flush(): void {
    if (!store || dirty.size === 0) return;
    const rows: LivenessRow[] = [];
    for (const e of dirty) rows.push({ productKey: e.productKey, deviceName: e.deviceName, state: e.state, since: e.since, lastSeen: e.lastSeen, mode: e.mode, transport: e.transport, gaps: e.gaps });
    try {
      store.saveLiveness(rows);
      dirty.clear();
      flushFailing = false;
    } catch (err) {
      // Kept dirty for the next sweep; logged once per streak so a full disk does not flood the log.
      if (!flushFailing) opts.logger.error({ err: (err as Error).message, devices: rows.length }, 'device liveness not written; retrying');
      flushFailing = true;
    }
  }

  function sweep(): void {
    try {
      emit(advance(now()));
    } catch (err) {
      opts.logger.error({ err: (err as Error).message }, 'liveness sweep failed');
    }
    flush();
  }

  function load(s: DeviceStateStore): void {
    const restart: TelemetryRecord[] = [];
    const at = now();
    for (const row of s.loadLiveness()) {
      const product = opts.registry.product(row.productKey);
      // A device removed from the registry keeps its row but is not tracked.
      if (!product || !opts.registry.device(row.productKey, row.deviceName)) continue;
      const e: Entry = { ...row, rat: product.rat, gaps: row.gaps.slice(-GAPS_KEPT), deadline: Infinity, heapIndex: -1 };
      entries.set(key(row.productKey, row.deviceName), e);
      counts[e.rat][e.state]++;
      // The broker's sessions ended with the process that held them.
      if (e.mode === 'session' && e.state !== 'offline') restart.push(change(e, 'offline', at, 'gateway-restart'));
      schedule(e);
    }
    emit(restart);
  }

  const liveness: Liveness = {
    async start() {
      if (store) return;
      const s = new DeviceStateStore(opts.path);
      try {
        load(s);
      } catch (err) {
        s.close();
        entries.clear();
        heap.clear();
        throw err;
      }
      store = s;
      // Deadlines that passed while the gateway was down: made now, with the times they fell due.
      sweep();
      timer = setInterval(sweep, opts.sweepMs);
      timer.unref();
    },

    async stop() {
      if (timer) clearInterval(timer);
      timer = null;
      flush();
      store?.close();
      store = null;
      entries.clear();
      heap.clear();
      dirty.clear();
      for (const r of RATS) counts[r] = zeroStates();
    },

    observe(raw) {
      const at = raw.receivedAt;
      const e = entryFor(raw.productKey, raw.deviceName, at, raw.transport);
      if (!e) return;
      if (e.mode === 'session' && (e.state === 'online' || raw.transport === 'mqtt')) {
        // The session decides (presence): an uplink during it, or an MQTT publish whose commit
        // finished after the session ended, only refreshes last seen.
        if (at > e.lastSeen) e.lastSeen = at;
        dirty.add(e);
        return;
      }
      // Out of order (a slow commit behind a newer one): the newer one already counted.
      if (at < e.lastSeen) return;
      const gap = at - e.lastSeen;
      // A gap shorter than the active window is another message of the same wake-up (a first
      // uplink has gap 0: its entry was made with lastSeen = at).
      if (gap >= timing(opts.registry.product(e.productKey), e).windowMs) {
        e.gaps.push(gap);
        if (e.gaps.length > GAPS_KEPT) e.gaps.shift();
      }
      e.lastSeen = at;
      e.mode = 'timed';
      e.transport = raw.transport;
      dirty.add(e);
      const state = timedState(at, timing(opts.registry.product(e.productKey), e), now()).state;
      if (state !== e.state) emit([change(e, state, at, 'uplink')]);
      schedule(e);
    },

    presence(ev) {
      const e = entryFor(ev.productKey, ev.deviceName, ev.at, 'mqtt');
      if (!e) return;
      if (ev.online) {
        e.mode = 'session';
        e.transport = 'mqtt';
        if (ev.at > e.lastSeen) e.lastSeen = ev.at;
        dirty.add(e);
        heap.set(e, Infinity);
        if (e.state !== 'online') emit([change(e, 'online', ev.at, 'session-open')]);
        return;
      }
      // An end of a session we do not hold (a late event after a takeover, or a timed device): ignored.
      if (e.mode !== 'session' || e.state === 'offline') return;
      if (ev.at > e.lastSeen) e.lastSeen = ev.at;
      emit([change(e, 'offline', ev.at, ev.reason ?? 'session-closed')]);
    },

    get(productKey, deviceName) {
      const e = entries.get(key(productKey, deviceName));
      if (!e) return { state: 'offline', since: null, lastSeen: null };
      const out: DeviceLiveness = { state: e.state, since: e.since, lastSeen: e.lastSeen, mode: e.mode };
      if (e.mode === 'timed') {
        const t = timing(opts.registry.product(productKey), e);
        out.expectedNextAt = e.lastSeen + t.intervalMs;
        out.intervalS = Math.round(t.intervalMs / 1000);
        out.intervalSource = t.source;
      }
      return out;
    },

    sweep,

    stats() {
      const byRat = Object.fromEntries(RATS.map((r) => [r, zeroStates()])) as Record<Rat, Record<LivenessState, number>>;
      const registered = Object.fromEntries(RATS.map((r) => [r, 0])) as Record<Rat, number>;
      for (const p of opts.registry.products) registered[p.rat] += p.devices.size;
      const byState = zeroStates();
      for (const r of RATS) {
        const c = counts[r];
        byRat[r].online = c.online;
        byRat[r].sleeping = c.sleeping;
        // Offline: every registered device not online or sleeping, never-seen ones included.
        byRat[r].offline = Math.max(0, registered[r] - c.online - c.sleeping);
        for (const s of LIVENESS_STATES) byState[s] += byRat[r][s];
      }
      return { byState, byRat, recordErrors };
    },
  };
  return liveness;
}
