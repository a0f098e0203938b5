// The socket-level packet-size guard: it reads each MQTT packet's fixed header as the bytes arrive,
// before aedes sees them, and decides from the announced Remaining Length alone.
//
// Why here and not in aedes: aedes 1.2 has no packet size limit. Its parser (mqtt-packet) buffers a
// packet until the whole Remaining Length has arrived, so one unauthenticated socket announcing
// 268 MB and then sending 128 MiB grew RSS by 140 MB and stayed open (mosquitto had the same class
// of bug: a huge remaining length exhausting memory). The guard sits between the TCP socket and
// aedes as a Duplex stream (aedes' handle() takes any duplex stream), so an oversize packet is
// refused after its first 2 to 5 bytes and nothing of its body is ever buffered.
//
// Fixed header [MQTT-2.2]: byte 1 = packet type (high nibble) and flags (low nibble); then the
// Remaining Length, a varint of 1 to 4 bytes, 7 bits each, least significant first, bit 7 set when
// another byte follows [MQTT-2.2.3]. A fifth length byte is malformed. A PUBLISH's variable header
// starts with the topic length (2 bytes, big endian) [MQTT-3.3.2]; a packet identifier (2 bytes)
// follows the topic when QoS > 0.
//
// A logged-in device's PUBLISH is the one exception to "too large = connection closed": its payload
// is cut to `truncatePublishTo` bytes (the listener passes mqtt.maxPayloadBytes + 1) and the rest
// is discarded as it streams in, so aedes sees a well-formed, bounded PUBLISH that the pipeline then
// refuses as WANWU_ERR_TOO_LARGE with an Alink 460 reply, and the device keeps its session.

import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';

/** Largest packet MQTT 3.1.1 can express: 1 type byte + 4 length bytes + 268,435,455 [MQTT-2.2.3]. */
export const MQTT_MAX_PACKET_BYTES = 1 + 4 + 268_435_455;

export type GuardRefusal = 'packetTooLarge' | 'malformedPacket';

export interface GuardPolicy {
  /** Largest packet in bytes, fixed header included (MQTT 5's "Maximum Packet Size" measure, §3.1.2.11.4). */
  maxPacketBytes: number;
  /** null: an oversize PUBLISH is refused like any packet. A number: its payload is cut to this many bytes. */
  truncatePublishTo: number | null;
}

export interface GuardEvents {
  /** A PUBLISH was cut: `announced` is its Remaining Length, `kept` what aedes will see. */
  truncated?(announced: number, kept: number): void;
  /**
   * A PUBACK arrived, with its packet identifier [MQTT-3.4.2]. The listener ties it to a command it
   * published: aedes' own `ack` event carries the acknowledged packet only for kept sessions (it
   * looks it up in its session store, lib/handlers/puback.js), never for clean ones.
   */
  puback?(packetId: number): void;
  /** A DISCONNECT arrived [MQTT-3.14]: the client ends its session on purpose (its will is not sent). */
  disconnect?(): void;
}

const TYPE = 0;
const LENGTH = 1;
const BODY = 2;
const TOPIC_LENGTH = 3;
const KEEP = 4;
const DROP = 5;

const PUBLISH = 3;
const PUBACK = 4;
const DISCONNECT = 14;

/**
 * An incremental reader of MQTT fixed headers. feed() is called with every chunk in order and
 * passes on (through `emit`) exactly the bytes aedes may see; it returns a refusal when the
 * connection must be closed. Pass-through bytes are emitted as sub-views of the chunk, not copied.
 */
export class PacketGuard {
  private state = TYPE;
  /** The current fixed header (at most 5 bytes), kept until the packet is judged. */
  private readonly header = Buffer.alloc(5);
  private headerLength = 0;
  /** Index in the current chunk where the header began, or -1 when it began in an earlier chunk. */
  private headerStart = -1;
  private value = 0;
  private multiplier = 1;
  /** BODY/KEEP: bytes of the packet still to pass on. DROP: bytes still to discard. */
  private remaining = 0;
  private dropAfter = 0;
  private readonly topicLength = Buffer.alloc(2);
  private topicLengthHave = 0;
  /** The packet identifier of a PUBACK being read (its whole body, 2 bytes [MQTT-3.4.2]); -1 = not a PUBACK. */
  private readonly ackId = Buffer.alloc(2);
  private ackIdHave = -1;

  constructor(
    public policy: GuardPolicy,
    private readonly events: GuardEvents = {},
  ) {}

  feed(chunk: Buffer, emit: (bytes: Buffer) => void): GuardRefusal | null {
    const n = chunk.length;
    let i = 0;
    /** Start of the run of bytes in this chunk that will be passed on, or -1. */
    let run = -1;
    const flush = (end: number) => {
      if (run >= 0 && end > run) emit(chunk.subarray(run, end));
      run = -1;
    };
    this.headerStart = this.state === LENGTH ? -1 : this.headerStart;
    while (i < n) {
      switch (this.state) {
        case TYPE: {
          this.headerStart = i;
          this.header[0] = chunk[i]!;
          this.headerLength = 1;
          this.value = 0;
          this.multiplier = 1;
          this.state = LENGTH;
          i++;
          break;
        }
        case LENGTH: {
          const b = chunk[i]!;
          i++;
          this.header[this.headerLength++] = b;
          this.value += (b & 0x7f) * this.multiplier;
          if (b & 0x80) {
            // [MQTT-2.2.3]: at most four Remaining Length bytes.
            if (this.headerLength === 5) {
              flush(this.headerStart >= 0 ? this.headerStart : 0);
              return 'malformedPacket';
            }
            this.multiplier *= 128;
            break;
          }
          const total = this.headerLength + this.value;
          const type = this.header[0]! >> 4;
          if (total <= this.policy.maxPacketBytes) {
            if (this.headerStart >= 0) {
              if (run < 0) run = this.headerStart;
            } else {
              // The header straddled chunks: its earlier bytes were held back; pass them on now.
              flush(0);
              emit(Buffer.from(this.header.subarray(0, this.headerLength)));
              run = i;
            }
            this.remaining = this.value;
            this.ackIdHave = type === PUBACK && this.value === 2 && this.events.puback ? 0 : -1;
            if (type === DISCONNECT) this.events.disconnect?.();
            this.state = this.remaining > 0 ? BODY : TYPE;
          } else if (type === PUBLISH && this.policy.truncatePublishTo !== null && this.value >= 2) {
            // Pass on what came before this header; the header itself is rewritten once the topic length is known.
            flush(this.headerStart >= 0 ? this.headerStart : i);
            this.topicLengthHave = 0;
            this.state = TOPIC_LENGTH;
          } else {
            // The packets before this one still go on (the connection is closed right after).
            flush(this.headerStart >= 0 ? this.headerStart : 0);
            return 'packetTooLarge';
          }
          break;
        }
        case BODY: {
          const take = Math.min(this.remaining, n - i);
          if (run < 0) run = i;
          if (this.ackIdHave >= 0) {
            for (let k = i; k < i + take; k++) this.ackId[this.ackIdHave++] = chunk[k]!;
          }
          i += take;
          this.remaining -= take;
          if (this.remaining === 0) {
            this.state = TYPE;
            if (this.ackIdHave === 2) this.events.puback?.(this.ackId.readUInt16BE(0));
            this.ackIdHave = -1;
          }
          break;
        }
        case TOPIC_LENGTH: {
          this.topicLength[this.topicLengthHave++] = chunk[i]!;
          i++;
          if (this.topicLengthHave < 2) break;
          const qos = (this.header[0]! >> 1) & 0x03;
          const variableHeader = 2 + this.topicLength.readUInt16BE(0) + (qos > 0 ? 2 : 0);
          const keep = Math.min(this.value, variableHeader + this.policy.truncatePublishTo!);
          if (keep < this.value) this.events.truncated?.(this.value, keep);
          emit(Buffer.concat([Buffer.from([this.header[0]!]), encodeRemainingLength(keep), this.topicLength]));
          this.remaining = keep - 2;
          this.dropAfter = this.value - keep;
          this.state = this.remaining > 0 ? KEEP : this.dropAfter > 0 ? DROP : TYPE;
          break;
        }
        case KEEP: {
          const take = Math.min(this.remaining, n - i);
          if (run < 0) run = i;
          i += take;
          this.remaining -= take;
          if (this.remaining === 0) this.state = this.dropAfter > 0 ? DROP : TYPE;
          break;
        }
        case DROP: {
          flush(i);
          const skip = Math.min(this.dropAfter, n - i);
          i += skip;
          this.dropAfter -= skip;
          if (this.dropAfter === 0) this.state = TYPE;
          break;
        }
      }
    }
    if (this.state === LENGTH) {
      // The chunk ended inside a fixed header: hold those bytes back until the packet is judged.
      flush(this.headerStart >= 0 ? this.headerStart : n);
      this.headerStart = -1;
    } else {
      flush(n);
    }
    return null;
  }
}

/** [MQTT-2.2.3] Remaining Length encoding. */
export function encodeRemainingLength(value: number): Buffer {
  const bytes: number[] = [];
  let x = value;
  do {
    let b = x % 128;
    x = Math.floor(x / 128);
    if (x > 0) b |= 0x80;
    bytes.push(b);
  } while (x > 0);
  return Buffer.from(bytes);
}

/**
 * The TCP socket as aedes sees it: reads pass through a PacketGuard, writes go straight to the socket.
 * Destroying either side destroys the other. On a refusal the socket is destroyed at once.
 */
export class GuardedConnection extends Duplex {
  /** Set once the guard refused something (the reason the connection was closed). */
  refusal: GuardRefusal | null = null;

  constructor(
    readonly socket: Socket,
    readonly guard: PacketGuard,
    onRefuse: (reason: GuardRefusal, conn: GuardedConnection) => void,
  ) {
    super({ allowHalfOpen: false });
    const push = (bytes: Buffer) => {
      if (!this.push(bytes)) socket.pause();
    };
    socket.on('data', (chunk: Buffer) => {
      if (this.destroyed || this.refusal) return;
      const refusal = guard.feed(chunk, push);
      if (refusal) {
        this.refusal = refusal;
        onRefuse(refusal, this);
        socket.destroy();
        this.destroy();
      }
    });
    socket.on('end', () => this.push(null));
    socket.on('error', (err) => this.destroy(err));
    socket.on('close', () => this.destroy());
  }

  get remoteAddress(): string | undefined {
    return this.socket.remoteAddress;
  }

  get remotePort(): number | undefined {
    return this.socket.remotePort;
  }

  override _read(): void {
    this.socket.resume();
  }

  override _write(chunk: Buffer, _encoding: BufferEncoding, callback: (error?: Error | null) => void): void {
    if (this.socket.write(chunk)) callback();
    else this.socket.once('drain', () => callback());
  }

  // mqtt-packet corks the stream and writes a packet in pieces: send them to the socket as one write.
  override _writev(chunks: Array<{ chunk: Buffer }>, callback: (error?: Error | null) => void): void {
    this.socket.cork();
    let ok = true;
    for (const c of chunks) ok = this.socket.write(c.chunk);
    this.socket.uncork();
    if (ok) callback();
    else this.socket.once('drain', () => callback());
  }

  override _final(callback: (error?: Error | null) => void): void {
    this.socket.end();
    callback();
  }

  override _destroy(error: Error | null, callback: (error?: Error | null) => void): void {
    this.socket.destroy();
    callback(error);
  }
}
