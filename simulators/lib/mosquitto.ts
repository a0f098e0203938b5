// Real third-party peers for tests and soak scripts: a mosquitto broker on a free loopback port, and a
// small runner for command-line tools (mosquitto_pub, coap-client-notls ...).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createConnection, createServer, type AddressInfo } from 'node:net';
import { join } from 'node:path';

/** Absolute path of a command, also looking in /usr/sbin (Debian puts mosquitto there), or null. */
export function which(tool: string): string | null {
  const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
  if (r.status === 0 && r.stdout.trim()) return r.stdout.trim();
  for (const dir of ['/usr/sbin', '/usr/local/sbin']) {
    const p = join(dir, tool);
    if (spawnSync('test', ['-x', p]).status === 0) return p;
  }
  return null;
}

export async function freePort(): Promise<number> {
  const s = createServer();
  await new Promise<void>((r) => s.listen(0, '127.0.0.1', () => r()));
  const { port } = s.address() as AddressInfo;
  await new Promise<void>((r) => s.close(() => r()));
  return port;
}

async function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const c = createConnection({ port, host: '127.0.0.1' });
    c.once('connect', () => {
      c.destroy();
      resolve(true);
    });
    c.once('error', () => resolve(false));
  });
}

/** A real mosquitto broker on a free loopback port, anonymous access, no persistence. */
export class Mosquitto {
  port = 0;
  private proc: ChildProcess | null = null;
  log = '';

  private readonly binary: string;

  /**
   * With `persistence`, mosquitto keeps sessions and queued QoS 1 messages in a file in `dir` across
   * a graceful restart (stop('SIGTERM') then start()).
   */
  constructor(private readonly dir: string, private readonly opts: { persistence?: boolean } = {}) {
    const bin = which('mosquitto');
    if (!bin) throw new Error('mosquitto is not installed (apt-get install -y mosquitto)');
    this.binary = bin;
  }

  async start(port?: number): Promise<void> {
    this.port = port ?? (await freePort());
    const conf = join(this.dir, `mosquitto-${this.port}.conf`);
    const persistence = this.opts.persistence
      ? ['persistence true', `persistence_location ${this.dir}/`, `persistence_file mosquitto-${this.port}.db`]
      : ['persistence false'];
    // No cap on messages queued for an offline persistent session (mosquitto's default of 1000 would
    // drop a backlog delivered while a test's application is still reconnecting).
    const lines = [`listener ${this.port} 127.0.0.1`, 'allow_anonymous true', 'max_queued_messages 0', ...persistence, 'log_dest stderr', ''];
    // Started as root, mosquitto drops to the "mosquitto" user, which cannot write its persistence
    // file into our private temp folder: keep the starting user.
    if (process.getuid?.() === 0) lines.unshift('user root');
    writeFileSync(conf, lines.join('\n'));
    const proc = spawn(this.binary, ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] });
    proc.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
    proc.stdout!.on('data', (d: Buffer) => (this.log += d.toString()));
    this.proc = proc;
    const until = Date.now() + 10_000;
    while (!(await canConnect(this.port))) {
      if (proc.exitCode !== null || Date.now() > until) throw new Error(`mosquitto did not start on ${this.port}: ${this.log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** SIGKILL by default; SIGTERM lets mosquitto save its persistence file first. */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null) return;
    const exited = new Promise<void>((r) => p.once('exit', () => r()));
    p.kill(signal);
    await exited;
  }
}

export interface RunResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs a command with a time limit and collects its output. */
export function run(cmd: string, args: string[], timeoutMs = 15_000): Promise<RunResult> {
  return new Promise((resolve) => {
    const p = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    p.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}
