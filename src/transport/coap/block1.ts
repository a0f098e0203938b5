// Block-wise uploads (RFC 7959 Block1): bounded reassembly of request bodies up to the configured
// maximum. The stateless checks on one block (reserved SZX, payload size, the body limit) are in
// request.ts; this file keeps the transfers in progress.
//
// A transfer is keyed by the peer (address + port) and the request's Uri-Path: RFC 7959 §2.5 lets a
// client change the token between blocks, so the token cannot key it. Blocks must arrive in order
// (a retransmitted block is answered from the de-duplication cache before it gets here); anything
// else is 4.08 Request Entity Incomplete (§2.9.2) and the transfer is dropped, since the client
// restarts from block 0 after a 4.08.
//
// Bounds: at most `maxTransfers` transfers, each holding at most maxPayloadBytes (request.ts refuses
// a block that would take a body past it before it is stored), so the memory held is at most
// maxTransfers x maxPayloadBytes. A transfer idle for `idleMs` is dropped; expiry is checked on
// lookup and by the listener's maintenance sweep, never with a timer per transfer.

export interface Transfer {
  /** The blocks received so far, in order. */
  chunks: Buffer[];
  /** Bytes received so far: the offset the next block must start at. */
  bytes: number;
  /** Clock reading (ms) after which the transfer is dropped unless another block arrives. */
  expiresAt: number;
}

export type BlockResult =
  /** Stored; more blocks to come: answer 2.31 Continue (§2.3). */
  | { kind: 'continue' }
  /** The last block: here is the whole body. */
  | { kind: 'complete'; body: Buffer }
  /** Not the block we expect (or no transfer): 4.08 (§2.9.2). */
  | { kind: 'incomplete'; expected: number }
  /** A new transfer while `maxTransfers` are in progress: 5.03 with Max-Age. */
  | { kind: 'full' };

export class Reassembler {
  private readonly transfers = new Map<string, Transfer>();
  private heldBytes = 0;

  constructor(
    private readonly maxTransfers: number,
    private readonly idleMs: number,
  ) {}

  /**
   * Takes one block at byte `offset` (num x block size), already checked against the body limit.
   * `more` is the block's M flag.
   */
  add(key: string, offset: number, more: boolean, payload: Buffer, now: number): BlockResult {
    let t = this.transfers.get(key);
    if (t !== undefined && t.expiresAt <= now) {
      this.drop(key, t);
      t = undefined;
    }
    if (offset === 0) {
      // Block 0 (re)starts a transfer (§2.5): whatever was held for this key is stale.
      if (t !== undefined) {
        this.drop(key, t);
        t = undefined;
      }
      if (!more) return { kind: 'complete', body: payload };
      if (this.transfers.size >= this.maxTransfers) {
        this.sweep(now);
        if (this.transfers.size >= this.maxTransfers) return { kind: 'full' };
      }
      // Copy: the payload is a view into the datagram, which is otherwise released at once.
      const chunk = Buffer.from(payload);
      this.transfers.set(key, { chunks: [chunk], bytes: chunk.length, expiresAt: now + this.idleMs });
      this.heldBytes += chunk.length;
      return { kind: 'continue' };
    }
    if (t === undefined || offset !== t.bytes) {
      const expected = t?.bytes ?? 0;
      if (t !== undefined) this.drop(key, t);
      return { kind: 'incomplete', expected };
    }
    if (!more) {
      this.drop(key, t);
      t.chunks.push(payload);
      return { kind: 'complete', body: Buffer.concat(t.chunks, t.bytes + payload.length) };
    }
    const chunk = Buffer.from(payload);
    t.chunks.push(chunk);
    t.bytes += chunk.length;
    t.expiresAt = now + this.idleMs;
    this.heldBytes += chunk.length;
    return { kind: 'continue' };
  }

  /** Drops the transfer for `key`, if any (its client was refused and starts over). */
  abandon(key: string): void {
    const t = this.transfers.get(key);
    if (t !== undefined) this.drop(key, t);
  }

  /** Drops the transfers idle past their expiry. */
  sweep(now: number): void {
    for (const [key, t] of this.transfers) if (t.expiresAt <= now) this.drop(key, t);
  }

  clear(): void {
    this.transfers.clear();
    this.heldBytes = 0;
  }

  /** Transfers in progress. */
  get size(): number {
    return this.transfers.size;
  }

  /** Body bytes held by the transfers in progress. */
  get bytes(): number {
    return this.heldBytes;
  }

  private drop(key: string, t: Transfer): void {
    this.transfers.delete(key);
    this.heldBytes -= t.bytes;
  }
}
