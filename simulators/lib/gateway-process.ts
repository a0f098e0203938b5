// Runs the `wanwu` command as a child process (bin/wanwu.js, which needs dist/ built) and reads the
// ports it chose from its "wanwu gateway ready" log line. Used by the fault tests and soak scripts.

import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** bin/wanwu.js, from simulators/lib (tests) or dist/simulators/lib (built). */
export const WANWU_BIN: string = (() => {
  const here = fileURLToPath(new URL('.', import.meta.url));
  return here.includes(`${join('dist', 'simulators')}`) ? join(here, '..', '..', '..', 'bin', 'wanwu.js') : join(here, '..', '..', 'bin', 'wanwu.js');
})();

export interface GatewayPorts {
  coap: number;
  mqtt: number;
  http: number;
}

export interface GatewayProcess {
  proc: ChildProcess;
  stdout: string;
  stderr: string;
  exit: Promise<number | null>;
  ready: Promise<GatewayPorts>;
  /** SIGKILL, and wait for the exit. */
  kill9(): Promise<void>;
}

export function startGatewayProcess(args: string[], env: Record<string, string> = {}): GatewayProcess {
  const proc = spawn(process.execPath, [WANWU_BIN, ...args], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  const child = { proc, stdout: '', stderr: '' } as GatewayProcess;
  child.exit = new Promise((resolve) => proc.on('exit', (code) => resolve(code)));
  child.ready = new Promise((resolve, reject) => {
    let seen = 0;
    proc.stdout!.on('data', (d: Buffer) => {
      child.stdout += d.toString();
      const lines = child.stdout.split('\n');
      for (; seen < lines.length - 1; seen++) {
        const line = lines[seen]!;
        if (!line.includes('wanwu gateway ready')) continue;
        const log = JSON.parse(line) as { coap: string; mqtt: string; http: string };
        const port = (s: string) => Number(s.split(':').at(-1)!.split('/')[0]);
        resolve({ coap: port(log.coap), mqtt: port(log.mqtt), http: port(log.http) });
      }
    });
    proc.stderr!.on('data', (d: Buffer) => (child.stderr += d.toString()));
    void child.exit.then((code) => reject(new Error(`wanwu exited with ${code} before it was ready: ${child.stderr}`)));
  });
  child.ready.catch(() => {});
  child.kill9 = async () => {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    await child.exit;
  };
  return child;
}

/** Writes a JSON config file and returns its path. */
export function writeConfigFile(dir: string, config: Record<string, unknown>, name = 'wanwu.json'): string {
  const file = join(dir, name);
  writeFileSync(file, JSON.stringify(config, null, 2));
  return file;
}

/** Sends SIGTERM and waits for the exit; SIGKILL after `graceMs`. */
export async function stopGatewayProcess(gw: GatewayProcess, graceMs = 10_000): Promise<void> {
  if (gw.proc.exitCode !== null || gw.proc.signalCode !== null) return;
  gw.proc.kill('SIGTERM');
  const timer = setTimeout(() => gw.proc.kill('SIGKILL'), graceMs);
  await gw.exit;
  clearTimeout(timer);
}

export interface WanwuChild {
  gw: GatewayProcess;
  ports: GatewayPorts;
  stop(): Promise<void>;
}

/**
 * The gateway as a child process for benchmarks: every listener on 127.0.0.1 port 0, durable storage
 * (sync "full", the default) in `dir`, log level info (for the ready line; nothing is logged per
 * message at info). `upstreams` defaults to the local upstream; `mqtt` adds keys to the MQTT section.
 */
export async function startWanwuChild(
  dir: string,
  opts: { devicesDir: string; name?: string; upstreams?: unknown[]; mqtt?: Record<string, unknown> },
): Promise<WanwuChild> {
  const name = opts.name ?? 'wanwu';
  const config = writeConfigFile(
    dir,
    {
      coap: { host: '127.0.0.1', port: 0 },
      mqtt: { host: '127.0.0.1', port: 0, ...opts.mqtt },
      http: { host: '127.0.0.1', port: 0 },
      storage: { path: join(dir, `${name}.db`), sync: 'full' },
      devicesDir: resolve(opts.devicesDir),
      upstreams: opts.upstreams ?? [{ name: 'local', url: 'local' }],
      log: { level: 'info' },
    },
    `${name}.json`,
  );
  const gw = startGatewayProcess(['start', '--config', config]);
  try {
    const ports = await gw.ready;
    return { gw, ports, stop: () => stopGatewayProcess(gw) };
  } catch (err) {
    await gw.kill9();
    throw err;
  }
}
