// UUID version 7 (RFC 9562 §5.7): 48-bit Unix ms timestamp, version, 12-bit counter (rand_a used as a
// monotonic counter, RFC 9562 §6.2 method 1), variant, 62 random bits. Ids sort by creation time, which
// keeps them friendly to upstream de-duplication stores and to humans reading logs.

import { randomFillSync } from 'node:crypto';

const POOL_SIZE = 8 * 1024;
const pool = Buffer.alloc(POOL_SIZE);
let poolOffset = POOL_SIZE;
let lastMs = 0;
let counter = 0;
const HEX: string[] = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));

function random8(): Buffer {
  if (poolOffset + 8 > POOL_SIZE) {
    randomFillSync(pool);
    poolOffset = 0;
  }
  const out = pool.subarray(poolOffset, poolOffset + 8);
  poolOffset += 8;
  return out;
}

export function uuidv7(now: number = Date.now()): string {
  if (now > lastMs) {
    lastMs = now;
    counter = 0;
  } else if (++counter > 0xfff) {
    // Counter exhausted within one ms (or the clock went back): borrow the next ms, keeping order.
    lastMs += 1;
    counter = 0;
  }
  const ms = lastMs;
  const r = random8();
  const hi = Math.floor(ms / 0x10000); // top 32 bits of the 48-bit timestamp
  const lo = ms % 0x10000;
  const h =
    HEX[(hi >>> 24) & 0xff]! + HEX[(hi >>> 16) & 0xff]! + HEX[(hi >>> 8) & 0xff]! + HEX[hi & 0xff]! +
    '-' + HEX[(lo >>> 8) & 0xff]! + HEX[lo & 0xff]! +
    '-' + HEX[0x70 | (counter >>> 8)]! + HEX[counter & 0xff]! +
    '-' + HEX[0x80 | (r[0]! & 0x3f)]! + HEX[r[1]!]! +
    '-' + HEX[r[2]!]! + HEX[r[3]!]! + HEX[r[4]!]! + HEX[r[5]!]! + HEX[r[6]!]! + HEX[r[7]!]!;
  return h;
}
