// Interop helpers: real third-party peers (mosquitto, mosquitto_pub/sub, libcoap's coap-client-notls).
// A missing tool skips the interop suite with a loud reason on a developer's machine, and fails it
// under CI=true, where .ci/run installs them.

import { which } from '../../simulators/lib/mosquitto.js';

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

