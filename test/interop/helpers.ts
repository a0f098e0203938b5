// Interop helpers: real third-party peers (mosquitto, mosquitto_pub/sub, libcoap's coap-client-notls).
// A missing tool skips the interop suite with a loud reason on a developer's machine, and fails it
// under CI=true, where .ci/run installs them.

import { run as runTool, which } from '../../simulators/lib/mosquitto.js';
import { authBody, type AuthFields } from '../helpers/coap.js';

export { freePort, Mosquitto, run, type RunResult } from '../../simulators/lib/mosquitto.js';

export const INTEROP_TOOLS = ['mosquitto', 'mosquitto_pub', 'mosquitto_sub', 'coap-client-notls'] as const;

export const toolPaths: Record<string, string | null> = Object.fromEntries(INTEROP_TOOLS.map((t) => [t, which(t)]));
export const missingTools = INTEROP_TOOLS.filter((t) => toolPaths[t] === null);
export const mustRunInterop = process.env.CI === 'true' || process.env.CI === '1';
export const skipInterop = missingTools.length > 0 && !mustRunInterop;

if (missingTools.length > 0) {
  const line = '!'.repeat(100);
  process.stderr.write(
    `\n${line}\n!! INTEROP TESTS ${mustRunInterop ? 'WILL FAIL (CI=true)' : 'SKIPPED'}: missing ${missingTools.join(', ')}.\n` +
      `!! Install them with: apt-get install -y mosquitto mosquitto-clients libcoap3-bin\n${line}\n\n`,
  );
}

export function tool(name: (typeof INTEROP_TOOLS)[number]): string {
  const p = toolPaths[name];
  if (!p) throw new Error(`${name} is not installed (apt-get install -y mosquitto mosquitto-clients libcoap3-bin)`);
  return p;
}


/** libcoap's `-O num,value` with a value starting 0x: sent as those bytes (RFC 7252 §3.2 uint, big-endian). */
export function hexUint(v: number): string {
  const hex = v.toString(16);
  return `0x${hex.length % 2 === 1 ? `0${hex}` : hex}`;
}

/**
 * coap-client-notls as an authenticated module (the gateway requires CoAP authentication by default):
 * POST /auth to `baseUrl` with the JSON body of test/helpers/coap.ts, then `args()` gives
 * `-O 2088,0x<token bytes> -O 2089,0x<n>` for each next uplink, n = 1, 2, ...
 */
export async function coapClientAuth(baseUrl: string, f: AuthFields): Promise<{ token: string; args(): string[] }> {
  const res = await runTool(tool('coap-client-notls'), ['-m', 'post', '-t', 'application/json', '-e', JSON.stringify(authBody(f)), '-B', '10', `${baseUrl}/auth`]);
  let token: unknown;
  try {
    token = (JSON.parse(res.stdout.trim()) as { token?: unknown }).token;
  } catch {
    token = undefined;
  }
  if (res.code !== 0 || typeof token !== 'string') throw new Error(`coap-client-notls POST /auth: exit ${res.code}: ${res.stdout}${res.stderr}`);
  let seq = f.seq ?? 0;
  // The token's 16 bytes as 0x-hex: libcoap would read a token that happens to start with "0x" as hex.
  const bytes = `0x${Buffer.from(token, 'base64url').toString('hex')}`;
  return { token, args: () => ['-O', `2088,${bytes}`, '-O', `2089,${hexUint(++seq)}`] };
}
