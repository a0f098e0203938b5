// The live line while a run goes: elapsed time as a bar, current rate, p99, acknowledged and errors.
// cli-progress draws it on a terminal; without one (CI logs, pipes) a plain line every 5 s instead.

import cliProgress from 'cli-progress';
import type { FleetTick } from './fleet.js';

export interface Progress {
  update(t: FleetTick): void;
  stop(): void;
}

export function createProgress(opts: { enabled: boolean; label: string; stream?: NodeJS.WriteStream }): Progress {
  const stream = opts.stream ?? process.stderr;
  if (!opts.enabled) return { update() {}, stop() {} };
  if (!stream.isTTY) {
    let last = 0;
    return {
      update(t) {
        if (t.elapsedS - last < 5 && t.elapsedS < t.durationS) return;
        last = t.elapsedS;
        stream.write(`${opts.label} ${t.elapsedS.toFixed(0)}/${t.durationS.toFixed(0)} s  ${t.ratePerS} ack/s  p99 ${t.p99Ms.toFixed(1)} ms  acked ${t.acked}  errors ${t.errors}\n`);
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar(
    {
      stream,
      format: `${opts.label} [{bar}] {elapsed}/{total} s | {rate} ack/s | p99 {p99} ms | acked {acked} | errors {errors}`,
      hideCursor: true,
      clearOnComplete: false,
    },
    cliProgress.Presets.shades_classic,
  );
  let started = false;
  return {
    update(t) {
      const payload = { rate: t.ratePerS, p99: t.p99Ms.toFixed(1), acked: t.acked, errors: t.errors, elapsed: t.elapsedS.toFixed(0) };
      if (!started) {
        bar.start(Math.round(t.durationS), 0, payload);
        started = true;
      }
      bar.update(Math.round(t.elapsedS), payload);
    },
    stop() {
      if (started) bar.stop();
    },
  };
}

/** A count towards a total (sessions opened): a bar on a terminal, a line every 10% otherwise. */
export function createCountProgress(opts: { label: string; total: number; stream?: NodeJS.WriteStream }): { update(done: number, failed: number): void; stop(): void } {
  const stream = opts.stream ?? process.stderr;
  if (!stream.isTTY) {
    let nextTenth = 1;
    return {
      update(done, failed) {
        if (done < (opts.total * nextTenth) / 10) return;
        while (done >= (opts.total * nextTenth) / 10) nextTenth++;
        stream.write(`${opts.label} ${done}/${opts.total} (failed ${failed})\n`);
      },
      stop() {},
    };
  }
  const bar = new cliProgress.SingleBar({ stream, format: `${opts.label} [{bar}] {value}/{total} | failed {failed}`, hideCursor: true }, cliProgress.Presets.shades_classic);
  bar.start(opts.total, 0, { failed: 0 });
  return {
    update(done, failed) {
      bar.update(done, { failed });
    },
    stop() {
      bar.stop();
    },
  };
}
