// The gateway's registry: products from devices/ (loadRegistry), devices from the device store
// (store.ts), kept in memory so a lookup on the hot path never touches SQLite.
//
//   start  load products -> open the store -> seed it from every devices.json -> load all devices
//   every reloadMs        PRAGMA data_version; when another connection (`wanwu devices ...`) has
//                         committed, load the rows whose rev is newer and swap them in
//   every lastSeenFlushMs write the last-seen times noted since the last flush, in one transaction
//   stop   flush last seen, close the store
//
// It is a Registry (src/registry/index.ts), so the listeners and the pipeline use it unchanged; a
// disabled device stays visible (status 'disabled') and deviceRefusal() refuses it.

import { randomBytes } from 'node:crypto';
import { WanwuError } from '../errors.js';
import type { Logger } from '../types.js';
import { loadRegistry, type AuditEntry, type Device, type Product, type Registry } from './index.js';
import { openDeviceStore, type DeviceStore } from './store.js';

export interface LiveRegistryOptions {
  devicesDir: string;
  /** The store's SQLite file. */
  path: string;
  /** Key file (default `${path}.key`); env WANWU_REGISTRY_KEY wins. */
  keyFile?: string | null;
  env?: NodeJS.ProcessEnv;
  logger: Logger;
  /** How often to look for changes made by other processes, in ms. */
  reloadMs: number;
  /** How often to write last-seen times, in ms. */
  lastSeenFlushMs: number;
  now?: () => number;
}

export interface LiveRegistry extends Registry {
  /** Loads products and devices and starts the reload and flush timers. Throws WANWU_ERR_PRODUCT / WANWU_ERR_REGISTRY. Idempotent. */
  start(): void;
  /** Writes pending last-seen times and closes the store. Idempotent. */
  stop(): void;
  /** Loads changes made by other processes now (what the timer does). True when any device changed. */
  reload(): boolean;
  /** Writes pending last-seen times now (what the timer does). */
  flush(): void;
}

/** How often one device's audit events of one kind are logged at most (the rest are counted). */
const AUDIT_LOG_GAP_MS = 60_000;

export function createLiveRegistry(opts: LiveRegistryOptions): LiveRegistry {
  const { logger } = opts;
  const now = opts.now ?? Date.now;
  let store: DeviceStore | null = null;
  let products: readonly Product[] = [];
  let warnings: readonly string[] = [];
  /** productKey -> the live device map its Product view holds. */
  const maps = new Map<string, Map<string, Device>>();
  const byKey = new Map<string, Product>();
  let rev = 0;
  let dataVersion = 0;
  let deviceCount = 0;
  const pendingSeen = new Map<string, { productKey: string; deviceName: string; at: number }>();
  const logged = new Map<string, { until: number; suppressed: number }>();
  let timers: NodeJS.Timeout[] = [];
  let started = false;

  function apply(devices: readonly Device[]): { changed: number; orphans: Set<string> } {
    const orphans = new Set<string>();
    let changed = 0;
    for (const d of devices) {
      const map = maps.get(d.productKey);
      if (!map) {
        orphans.add(d.productKey);
        continue;
      }
      if (!map.has(d.deviceName)) deviceCount++;
      map.set(d.deviceName, d);
      changed++;
    }
    return { changed, orphans };
  }

  /** force: read changes made through this process's own connection, which data_version does not count. */
  function load(force = false): boolean {
    const s = store!;
    const version = s.dataVersion();
    if (version === dataVersion && !force) return false;
    dataVersion = version;
    const { devices, broken, rev: next } = s.changedSince(rev);
    rev = next;
    const { changed } = apply(devices);
    for (const name of broken) {
      // Not kept with its old secret either: a row that does not open is not trusted.
      const slash = name.indexOf('/');
      if (maps.get(name.slice(0, slash))?.delete(name.slice(slash + 1))) deviceCount--;
      logger.error({ device: name }, 'registry: device secret does not decrypt (tampered or copied row); the device is refused');
    }
    if (changed > 0) {
      logger.info({ devices: changed, disabled: devices.filter((d) => d.status === 'disabled').map((d) => `${d.productKey}/${d.deviceName}`).slice(0, 20) }, 'registry: devices changed');
    }
    return changed > 0;
  }

  function flush(): void {
    if (!store || pendingSeen.size === 0) return;
    const batch = new Map(pendingSeen);
    pendingSeen.clear();
    try {
      store.touch(batch);
    } catch (err) {
      // Busy (an operator's long transaction) or a full disk: keep the times for the next flush.
      for (const [k, v] of batch) {
        const newer = pendingSeen.get(k);
        if (!newer || newer.at < v.at) pendingSeen.set(k, v);
      }
      throw err;
    }
  }

  /** A timer body that logs its first failure of a streak only: a locked registry must not flood the log. */
  function guarded(what: string, fn: () => void): () => void {
    let failing = false;
    return () => {
      try {
        fn();
        failing = false;
      } catch (err) {
        if (!failing) logger.error({ err: (err as Error).message }, `registry: ${what} failed; retrying`);
        failing = true;
      }
    };
  }

  const registry: LiveRegistry = {
    get products() {
      return products;
    },
    get deviceCount() {
      return deviceCount;
    },
    get warnings() {
      return warnings;
    },
    product: (productKey) => byKey.get(productKey),
    device: (productKey, deviceName) => maps.get(productKey)?.get(deviceName),

    seen(productKey, deviceName, at) {
      const key = `${productKey}/${deviceName}`;
      const prev = pendingSeen.get(key);
      if (!prev) pendingSeen.set(key, { productKey, deviceName, at });
      else if (prev.at < at) prev.at = at;
    },

    register(productKey, deviceName) {
      const s = store;
      const info = s?.get(productKey, deviceName);
      if (!s || !info) throw new WanwuError('WANWU_ERR_REGISTRATION', `no device ${productKey}/${deviceName} to register (devices are registered beforehand)`);
      // Alibaba: a device may register again until it is active; after that only an operator reset helps.
      if (info.lastSeenAt !== null || pendingSeen.has(`${productKey}/${deviceName}`)) {
        throw new WanwuError('WANWU_ERR_REGISTRATION', `device ${productKey}/${deviceName} is already active; rotate its secret with wanwu devices rotate-secret instead`);
      }
      const secret = randomBytes(16).toString('hex');
      s.setSecret(productKey, deviceName, secret);
      load(true); // the new secret works for the next login at once
      return secret;
    },

    audit(entry: AuditEntry) {
      const logKey = `${entry.productKey}/${entry.deviceName}\u0000${entry.event}`;
      const l = logged.get(logKey);
      if (l && entry.at < l.until) {
        l.suppressed++;
      } else {
        logger.warn(
          { productKey: entry.productKey, deviceName: entry.deviceName, event: entry.event, detail: entry.detail, source: entry.source, ...(l?.suppressed ? { repeatsNotLogged: l.suppressed } : {}) },
          'registry audit',
        );
        if (logged.size >= 10_000) logged.clear();
        logged.set(logKey, { until: entry.at + AUDIT_LOG_GAP_MS, suppressed: 0 });
      }
      try {
        store?.audit(entry);
      } catch (err) {
        logger.error({ err: (err as Error).message, event: entry.event }, 'registry: audit entry could not be written');
      }
    },

    start() {
      if (started) return;
      const files = loadRegistry(opts.devicesDir);
      const s = openDeviceStore({ path: opts.path, keyFile: opts.keyFile ?? null, env: opts.env, now, warn: (message) => logger.warn({}, message) });
      try {
        const seeded = s.seed(files.products);
        for (const p of files.products) {
          const added = seeded.added.filter((n) => n.startsWith(`${p.productKey}/`));
          const updated = seeded.updated.filter((n) => n.startsWith(`${p.productKey}/`));
          if (added.length + updated.length > 0) {
            logger.info({ productKey: p.productKey, added: added.length, updated: updated.length, devices: [...added, ...updated].slice(0, 20) }, 'registry: devices seeded from devices.json');
          }
        }
        for (const skip of seeded.skipped) logger.warn({ device: skip.device, reason: skip.reason }, 'registry: devices.json entry not seeded');

        const views: Product[] = files.products.map((p) => {
          const map = new Map<string, Device>();
          maps.set(p.productKey, map);
          const view = Object.freeze({ ...p, devices: map as ReadonlyMap<string, Device> });
          byKey.set(p.productKey, view);
          return view;
        });
        store = s;
        // data_version first: a change committed while the rows are read is then seen by the next reload.
        dataVersion = s.dataVersion();
        const { devices, broken, rev: next } = s.changedSince(0);
        rev = next;
        const { orphans } = apply(devices);
        const extra: string[] = [];
        for (const name of broken) extra.push(`registry ${opts.path}: the secret of ${name} does not decrypt (tampered or copied row); the device is refused`);
        if (orphans.size > 0) extra.push(`registry ${opts.path}: holds devices of products not in ${opts.devicesDir}, ignored: ${[...orphans].sort().join(', ')}`);
        for (const line of extra) logger.warn({}, line);
        products = Object.freeze(views);
        warnings = Object.freeze([...files.warnings, ...extra]);
      } catch (err) {
        s.close();
        store = null;
        throw err;
      }
      timers = [
        setInterval(guarded('reload', () => void load()), opts.reloadMs),
        setInterval(guarded('last-seen flush', flush), opts.lastSeenFlushMs),
      ];
      for (const t of timers) t.unref();
      started = true;
    },

    stop() {
      if (!started) return;
      started = false;
      for (const t of timers) clearInterval(t);
      timers = [];
      try {
        flush();
      } catch (err) {
        logger.warn({ err: (err as Error).message, devices: pendingSeen.size }, 'registry: last-seen times not written at stop');
      }
      store?.close();
      store = null;
    },

    reload: () => (store ? load() : false),
    flush,
  };
  return registry;
}
