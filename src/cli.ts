// The `wanwu` command. Nothing imports this file; it only wires the command line to the gateway.

import { Command, CommanderError } from 'commander';
import pino from 'pino';
import { loadConfig } from './config/index.js';
import { isWanwuError, WanwuError } from './errors.js';
import { createGateway } from './gateway.js';
import { loadRegistry } from './registry/index.js';
import { SIGN_METHODS, signMqttLogin, type SignMethod } from './registry/sign.js';
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

  program
    .command('sign')
    .description("print an Alibaba-style signed MQTT login for a device in devices/, as mosquitto_pub/sub arguments")
    .requiredOption('--product <productKey>', 'product key')
    .requiredOption('--device <deviceName>', 'device name')
    .option('--devices <dir>', 'products folder', './devices')
    .option('--method <signmethod>', 'hmacsha256, hmacsha1 or hmacmd5', 'hmacsha256')
    .option('--json', 'print {clientId, username, password} as JSON instead')
    .action((opts: { product: string; device: string; devices: string; method: string; json?: boolean }) => {
      exitCode = sign(opts);
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
    logger = pino({ level: config.log.level, base: { app: 'wanwu' }, formatters: { level: (label) => ({ level: label }) } });
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

function sign(opts: { product: string; device: string; devices: string; method: string; json?: boolean }): number {
  try {
    if (!(opts.method in SIGN_METHODS)) {
      throw new WanwuError('WANWU_ERR_CONFIG', `--method must be one of ${Object.keys(SIGN_METHODS).join(', ')}`);
    }
    const device = loadRegistry(opts.devices).device(opts.product, opts.device);
    if (!device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `no device ${opts.product}/${opts.device} in ${opts.devices}`);
    const creds = signMqttLogin({ ...device, signMethod: opts.method as SignMethod });
    // Client ids, usernames and hex signs hold no spaces or glob characters, so $(wanwu sign ...) splits cleanly.
    process.stdout.write(opts.json ? `${JSON.stringify(creds)}\n` : `-i ${creds.clientId} -u ${creds.username} -P ${creds.password}\n`);
    return 0;
  } catch (err) {
    return fail(err);
  }
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
