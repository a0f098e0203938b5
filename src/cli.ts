// The `wanwu` command. Nothing imports this file; it only wires the command line to the gateway.

import { Command, CommanderError } from 'commander';
import pino from 'pino';
import { loadConfig } from './config/index.js';
import { isWanwuError, WanwuError } from './errors.js';
import { decodeCommand, encodeCommand, type CommandResult, type DecodeOptions, type EncodeOptions } from './commands/codec-tools.js';
import { listDeadLetters, replayDeadLetters } from './commands/deadletters.js';
import { devicesAdd, devicesAudit, devicesImport, devicesList, devicesRotateSecret, devicesSetStatus, type DevicesResult } from './commands/devices.js';
import { modelsCheck } from './commands/models.js';
import { createGateway } from './gateway.js';
import { loadRegistry } from './registry/index.js';
import { SIGN_METHODS, signCoapAuth, signMqttLogin, type SignMethod } from './registry/sign.js';
import { openDeviceStore, registryPaths } from './registry/store.js';
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
    .description("print an Alibaba-style signed MQTT login for a device in devices/, as mosquitto_pub/sub arguments (or with --coap the CoAP POST /auth body)")
    .requiredOption('--product <productKey>', 'product key')
    .requiredOption('--device <deviceName>', 'device name')
    .option('--devices <dir>', 'products folder', './devices')
    .option('--method <signmethod>', 'hmacsha256, hmacsha1 or hmacmd5', 'hmacsha256')
    .option('--json', 'print {clientId, username, password} as JSON instead')
    .option('--coap', 'print the JSON body of a CoAP POST /auth instead (signed now: valid for coap.auth.timestampWindowS, once)')
    .option('-c, --config <file>', "take the device from this configuration's registry (devices added or secrets rotated with `wanwu devices`) instead of --devices")
    .action((opts: { product: string; device: string; devices: string; method: string; json?: boolean; coap?: boolean; config?: string }) => {
      exitCode = sign(opts);
    });

  const print = (r: CommandResult) => {
    process.stdout.write(r.output);
    exitCode = r.exitCode;
  };

  program
    .command('decode')
    .description('decode one payload with a product\'s codec and thing model; prints the normalized record as JSON')
    .requiredOption('--product <productKey>', 'product key')
    .option('--devices <dir>', 'products folder', './devices')
    .option('--device <deviceName>', 'device name for the record (default: the product\'s first device)')
    .option('--topic <topic>', 'uplink topic, full (/sys/...) or from thing/ on (default: up_raw, or the property post for alink-json)')
    .option('--transport <coap|mqtt>', 'transport for the record (default: coap for nb-iot products, else mqtt)')
    .option('--fport <n>', 'script codecs: input.fPort for decodeUplink (default: the product\'s, else 1)')
    .option('--hex <hex>', 'payload as hex')
    .option('--base64 <b64>', 'payload as base64')
    .option('--file <path>', 'payload file')
    .action((opts: DecodeOptions) => print(decodeCommand(opts)));

  program
    .command('encode')
    .description('encode thing-model values with a product\'s codec; prints the payload a device would send')
    .requiredOption('--product <productKey>', 'product key')
    .requiredOption('--data <json>', 'values as a JSON object, e.g. \'{"temperature": 21.5}\'')
    .option('--devices <dir>', 'products folder', './devices')
    .option('--device <deviceName>', 'device name used in the topic')
    .option('--topic <topic>', 'uplink topic, full or from thing/ on')
    .option('--event <eventId>', 'encode an event instead of properties')
    .option('--time <ms>', 'device time in ms since the epoch')
    .option('--id <msgId>', 'Alink message id')
    .option('--format <hex|base64>', 'output format', 'hex')
    .action((opts: EncodeOptions) => print(encodeCommand(opts)));

  program
    .command('models')
    .description('product definitions')
    .command('check')
    .argument('[dir]', 'products folder', './devices')
    .description('load and validate every product; report products, devices, warnings and errors (exit 1 on errors)')
    .option('--json', 'print the report as JSON')
    .action((dir: string, opts: { json?: boolean }) => print(modelsCheck(dir, opts)));

  const deadletters = program.command('deadletters').description('refused payloads kept in the buffer');
  deadletters
    .command('list')
    .description('print dead letters as JSON lines, oldest first')
    .option('-c, --config <file>', 'JSON configuration file (env: WANWU_CONFIG), for storage.path')
    .option('--product <productKey>', 'only this product')
    .option('--limit <n>', 'at most this many', (v) => Number.parseInt(v, 10), 100)
    .action(async (opts: { config?: string; product?: string; limit: number }) => {
      const config = loadConfigOrFail(opts.config);
      if (config) print(await listDeadLetters(config, opts));
    });
  deadletters
    .command('replay')
    .description('run dead letters through the current codecs again; those that now decode become records')
    .option('-c, --config <file>', 'JSON configuration file (env: WANWU_CONFIG)')
    .option('--product <productKey>', 'only this product')
    .action(async (opts: { config?: string; product?: string }) => {
      const config = loadConfigOrFail(opts.config);
      if (config) print(await replayDeadLetters(config, opts));
    });

  const loadConfigOrFail = (file: string | undefined) => {
    try {
      return loadConfig({ file });
    } catch (err) {
      exitCode = fail(err);
      return null;
    }
  };

  // `wanwu devices ...`: the device registry (registry.path of --config / WANWU_CONFIG).
  const printDevices = (r: DevicesResult) => {
    process.stdout.write(r.output);
    if (r.errors) process.stderr.write(r.errors);
    exitCode = r.exitCode;
  };
  const withConfig = (file: string | undefined, run: (config: NonNullable<ReturnType<typeof loadConfigOrFail>>) => DevicesResult) => {
    const config = loadConfigOrFail(file);
    if (config) printDevices(run(config));
  };
  const configOption = ['-c, --config <file>', 'JSON configuration file (env: WANWU_CONFIG), for registry.path and devicesDir'] as const;
  const devices = program
    .command('devices')
    .description('the device registry: status, secrets (encrypted at rest), IMEI, ICCID, last seen; a running gateway follows changes within a second');
  devices
    .command('list')
    .description('list devices (secrets are never shown)')
    .option(...configOption)
    .option('--product <productKey>', 'only this product')
    .option('--status <status>', 'only enabled or disabled devices')
    .option('--json', 'print JSON')
    .action((opts: { config?: string; product?: string; status?: string; json?: boolean }) => withConfig(opts.config, (config) => devicesList({ config }, opts)));
  devices
    .command('add')
    .description('register a device; without --secret one is generated and printed once')
    .option(...configOption)
    .requiredOption('--product <productKey>', 'product key (a folder in devicesDir)')
    .requiredOption('--device <deviceName>', 'device name')
    .option('--secret <deviceSecret>', 'device secret (default: 32 random hex digits)')
    .option('--imei <imei>', '15-digit IMEI')
    .option('--iccid <iccid>', '19-20 digit ICCID of the SIM bound to the device (card binding)')
    .option('--json', 'print JSON')
    .action((opts: { config?: string; product: string; device: string; secret?: string; imei?: string; iccid?: string; json?: boolean }) =>
      withConfig(opts.config, (config) => devicesAdd({ config }, opts)),
    );
  devices
    .command('import')
    .argument('<file>', 'CSV file with the header productKey,deviceName,deviceSecret,imei,iccid')
    .description('register the devices of a CSV file; reports added, skipped (already registered) and refused rows with line numbers (exit 2 if any refused)')
    .option(...configOption)
    .option('--json', 'print JSON')
    .action((file: string, opts: { config?: string; json?: boolean }) => withConfig(opts.config, (config) => devicesImport({ config }, file, opts)));
  for (const status of ['disable', 'enable'] as const) {
    devices
      .command(status)
      .description(status === 'disable' ? 'refuse every message of a device until it is enabled again (no restart needed)' : 'accept a disabled device again')
      .option(...configOption)
      .requiredOption('--product <productKey>', 'product key')
      .requiredOption('--device <deviceName>', 'device name')
      .option('--json', 'print JSON')
      .action((opts: { config?: string; product: string; device: string; json?: boolean }) =>
        withConfig(opts.config, (config) => devicesSetStatus({ config }, status === 'disable' ? 'disabled' : 'enabled', opts)),
      );
  }
  devices
    .command('rotate-secret')
    .description('give a device a new secret (generated unless --secret), printed once; the old one stops working')
    .option(...configOption)
    .requiredOption('--product <productKey>', 'product key')
    .requiredOption('--device <deviceName>', 'device name')
    .option('--secret <deviceSecret>', 'the new secret (default: 32 random hex digits)')
    .option('--json', 'print JSON')
    .action((opts: { config?: string; product: string; device: string; secret?: string; json?: boolean }) =>
      withConfig(opts.config, (config) => devicesRotateSecret({ config }, opts)),
    );
  devices
    .command('audit')
    .description('print the audit table, newest first: refused cards (card binding) and operator changes')
    .option(...configOption)
    .option('--product <productKey>', 'only this product')
    .option('--device <deviceName>', 'only this device')
    .option('--limit <n>', 'at most this many', (v) => Number.parseInt(v, 10), 100)
    .option('--json', 'print JSON')
    .action((opts: { config?: string; product?: string; device?: string; limit: number; json?: boolean }) => withConfig(opts.config, (config) => devicesAudit({ config }, opts)));

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

function sign(opts: { product: string; device: string; devices: string; method: string; json?: boolean; coap?: boolean; config?: string }): number {
  try {
    if (!(opts.method in SIGN_METHODS)) {
      throw new WanwuError('WANWU_ERR_CONFIG', `--method must be one of ${Object.keys(SIGN_METHODS).join(', ')}`);
    }
    const device = opts.config === undefined ? loadRegistry(opts.devices).device(opts.product, opts.device) : registryDevice(opts.config, opts.product, opts.device);
    if (!device) throw new WanwuError('WANWU_ERR_UNKNOWN_DEVICE', `no device ${opts.product}/${opts.device} in ${opts.config === undefined ? opts.devices : 'the registry'}`);
    if (opts.coap) {
      // The same sign over the same content, in the /auth form: `coap-client -f` or `-e` sends it as is.
      process.stdout.write(`${JSON.stringify(signCoapAuth({ ...device, signMethod: opts.method as SignMethod }))}\n`);
      return 0;
    }
    const creds = signMqttLogin({ ...device, signMethod: opts.method as SignMethod });
    // Client ids, usernames and hex signs hold no spaces or glob characters, so $(wanwu sign ...) splits cleanly.
    process.stdout.write(opts.json ? `${JSON.stringify(creds)}\n` : `-i ${creds.clientId} -u ${creds.username} -P ${creds.password}\n`);
    return 0;
  } catch (err) {
    return fail(err);
  }
}

/** A device with its secret from the registry of a configuration (seeded from devicesDir first, as the gateway does). */
function registryDevice(configFile: string, productKey: string, deviceName: string): { productKey: string; deviceName: string; deviceSecret: string } | undefined {
  const config = loadConfig({ file: configFile });
  const paths = registryPaths(config);
  const store = openDeviceStore({ path: paths.path, keyFile: paths.keyFile });
  try {
    store.seed(loadRegistry(config.devicesDir).products);
    return store.get(productKey, deviceName);
  } finally {
    store.close();
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
