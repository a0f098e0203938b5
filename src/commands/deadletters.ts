// `wanwu deadletters list|replay`: refused payloads are kept with their raw bytes, so after a codec or
// thing-model fix they can be run again and become records; nothing rejected is lost for good.
// Works on the configured database, also while the gateway runs (SQLite WAL; the gateway picks up
// replayed records within a second and forwards them).

import { createBuffer, type DeadLetter } from '../buffer/index.js';
import type { Config } from '../config/index.js';
import { createPipeline, type ReplayResult } from '../pipeline.js';
import { loadRegistry } from '../registry/index.js';
import type { Logger } from '../types.js';
import type { CommandResult } from './codec-tools.js';

const quiet: Logger = { debug() {}, info() {}, warn() {}, error() {} };

function open(config: Readonly<Config>) {
  return createBuffer({ path: config.storage.path, sync: config.storage.sync, logger: quiet, upstreams: config.upstreams.map((u) => u.name), pruneIntervalMs: 3_600_000 });
}

function show(dl: DeadLetter) {
  return {
    id: dl.id,
    receivedAt: new Date(dl.receivedAt).toISOString(),
    transport: dl.transport,
    productKey: dl.productKey ?? null,
    deviceName: dl.deviceName ?? null,
    topic: dl.topic,
    peer: dl.peer,
    code: dl.code,
    message: dl.message,
    payloadHex: dl.payload.toString('hex'),
  };
}

/** One JSON object per line, oldest first. */
export async function listDeadLetters(config: Readonly<Config>, opts: { product?: string; limit?: number }): Promise<CommandResult> {
  const buffer = open(config);
  await buffer.start();
  try {
    const rows = buffer.listDeadLetters({ productKey: opts.product, limit: opts.limit ?? 100 });
    return { exitCode: 0, output: rows.map((r) => `${JSON.stringify(show(r))}\n`).join('') };
  } finally {
    await buffer.stop();
  }
}

/**
 * Replays every dead letter (of one product, if given). Exit 0 when all replayable ones became
 * records, 2 when some still fail (they stay, with the new reason).
 */
export async function replayDeadLetters(config: Readonly<Config>, opts: { product?: string }): Promise<CommandResult> {
  const registry = loadRegistry(config.devicesDir);
  const buffer = open(config);
  await buffer.start();
  const pipeline = createPipeline({ registry, buffer, logger: quiet, maxPayloadBytes: { coap: config.coap.maxPayloadBytes, mqtt: config.mqtt.maxPayloadBytes } });
  const results: ReplayResult[] = [];
  try {
    let afterId = 0;
    for (;;) {
      const page = buffer.listDeadLetters({ productKey: opts.product, afterId, limit: 500 });
      if (page.length === 0) break;
      for (const dl of page) results.push(pipeline.replay(dl));
      afterId = page[page.length - 1]!.id;
    }
  } finally {
    await buffer.stop();
  }
  const replayed = results.filter((r) => r.ok);
  const skipped = results.filter((r) => !r.ok && r.skipped);
  const failed = results.filter((r) => !r.ok && !r.skipped);
  const summary = {
    replayed: replayed.length,
    records: replayed.reduce((n, r) => n + (r.ok ? r.records : 0), 0),
    stillFailing: failed.map((r) => (r.ok ? null : { id: r.id, code: r.error.code, message: r.error.message })),
    skipped: skipped.map((r) => (r.ok ? null : { id: r.id, reason: r.skipped })),
  };
  return { exitCode: failed.length > 0 ? 2 : 0, output: `${JSON.stringify(summary, null, 2)}\n` };
}
