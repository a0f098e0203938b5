// The `wanwu` command. Nothing imports this file; it only wires the command line to the gateway.

import { Command, CommanderError } from 'commander';
import pino from 'pino';
import { loadConfig } from './config/index.js';
import { isWanwuError } from './errors.js';
import { createGateway } from './gateway.js';
import type { Logger } from './types.js';
import { VERSION } from './util/version.js';

export async function main(argv: string[]): Promise<number> {
  let exitCode = 0;
  const program = new Command()
    .name('wanwu')
    .description('Mobile IoT device gateway: CoAP and MQTT in, thing-model records out, durable store-and-forward upstream.')
    .version(VERSION)
    .exitOverride()
    .configureOutput({ writeErr: (s) => process.stderr.write(s) });

  program
    .command('start')
    .description('run the gateway (embedded defaults unless --config or WANWU_CONFIG names a JSON file)')
    .option('-c, --config <file>', 'JSON configuration file (env: WANWU_CONFIG)')
    .action(async (opts: { config?: string }) => {
      exitCode = await start(opts.config);
    });

  try {
    await program.parseAsync(argv);
  } catch (err) {
    if (err instanceof CommanderError) return err.exitCode;
    throw err;
  }
  return exitCode;
}

async function start(configFile: string | undefined): Promise<number> {
  let logger: Logger;
  let gateway: ReturnType<typeof createGateway>;
  try {
    const config = loadConfig({ file: configFile });
    logger = pino({ level: config.log.level, base: { app: 'wanwu' } });
    gateway = createGateway(config, logger);
    await gateway.start();
  } catch (err) {
    return fail(err);
  }
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ signal }, 'stopping');
      gateway.stop().then(
        () => resolve(0),
        (err: unknown) => resolve(fail(err)),
      );
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
}

/** Prints a coded error as one line (no stack trace for errors we know) and returns the exit code. */
function fail(err: unknown): number {
  if (isWanwuError(err)) {
    process.stderr.write(`wanwu: ${err.code}: ${err.message}\n`);
  } else if (err instanceof Error && typeof (err as NodeJS.ErrnoException).code === 'string') {
    // System errors (EADDRINUSE, EACCES ...) say enough in their message.
    process.stderr.write(`wanwu: ${(err as NodeJS.ErrnoException).code}: ${err.message}\n`);
  } else {
    process.stderr.write(`wanwu: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  return 1;
}
