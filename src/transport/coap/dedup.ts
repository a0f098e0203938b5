// A time-bounded, size-bounded map for CoAP message de-duplication (RFC 7252 §4.5) and for the
// "peers seen" count. Entries expire by generation rather than one by one: the map keeps
// `generations` plain Maps, the newest receiving inserts; every `span` ms the oldest is dropped and
// a new one starts. No timer or timestamp per entry, so an entry costs only its Map slot, key and value.
//
// Guarantee: with span = ceil(lifetime / (generations - 1)), an entry stays findable for at least
// `lifetimeMs` after it was added and at most lifetimeMs + span, unless the size cap forced an early
// rotation (counted in `evicted`). The cap is enforced per generation (maxEntries / generations),
// so memory stays bounded at any request rate: when the newest generation is full it is retired
// early and only the oldest generation is dropped, never everything at once.

export interface GenerationalMapOptions {
  /** Minimum time an entry stays findable, in ms (e.g. EXCHANGE_LIFETIME 247 000). */
  lifetimeMs: number;
  /** Number of generations kept, >= 2 (default 3: span = lifetime / 2). */
  generations?: number;
  /** Upper bound on entries over all generations (default 500 000). */
  maxEntries?: number;
  /** The clock reading (ms) the first generation starts at. */
  startMs: number;
}

export class GenerationalMap<V> {
  /** gens[0] is the newest generation. */
  private gens: Map<string, V>[];
  private readonly spanMs: number;
  private readonly perGenerationCap: number;
  /** Clock reading at which gens[0] started, on the span grid unless an early rotation moved it. */
  private currentStart: number;
  private lastNow: number;
  /** Entries dropped before their lifetime because the size cap forced an early rotation. */
  evicted = 0;

  constructor(opts: GenerationalMapOptions) {
    const generations = opts.generations ?? 3;
    if (!Number.isInteger(generations) || generations < 2) throw new RangeError(`generations must be an integer >= 2, got ${generations}`);
    if (!(opts.lifetimeMs > 0)) throw new RangeError(`lifetimeMs must be > 0, got ${opts.lifetimeMs}`);
    const maxEntries = opts.maxEntries ?? 500_000;
    if (!(maxEntries >= generations)) throw new RangeError(`maxEntries must be >= generations, got ${maxEntries}`);
    this.gens = Array.from({ length: generations }, () => new Map<string, V>());
    this.spanMs = Math.ceil(opts.lifetimeMs / (generations - 1));
    this.perGenerationCap = Math.floor(maxEntries / generations);
    this.currentStart = opts.startMs;
    this.lastNow = opts.startMs;
  }

  /** Drops the generations that have outlived their span; call with the current clock before get/add. */
  maintain(now: number): void {
    this.lastNow = now;
    const elapsed = now - this.currentStart;
    if (elapsed < this.spanMs) return; // also covers a clock that went backwards
    const steps = Math.floor(elapsed / this.spanMs);
    if (steps >= this.gens.length) {
      for (let i = 0; i < this.gens.length; i++) this.gens[i] = new Map();
    } else {
      for (let i = 0; i < steps; i++) this.rotate();
    }
    this.currentStart += steps * this.spanMs;
  }

  get(key: string): V | undefined {
    const gens = this.gens;
    for (let i = 0; i < gens.length; i++) {
      const v = gens[i]!.get(key);
      if (v !== undefined) return v;
    }
    return undefined;
  }

  /** Inserts a key the caller knows is absent (checked with get) into the newest generation. */
  add(key: string, value: V): void {
    if (this.gens[0]!.size >= this.perGenerationCap) this.rotateEarly();
    this.gens[0]!.set(key, value);
  }

  /** Replaces the value of a key in whichever generation holds it (keeping its expiry); adds it when absent. */
  update(key: string, value: V): void {
    const gens = this.gens;
    for (let i = 0; i < gens.length; i++) {
      const g = gens[i]!;
      if (g.has(key)) {
        g.set(key, value);
        return;
      }
    }
    this.add(key, value);
  }

  /**
   * Marks a key as seen now: moves it into the newest generation so it lives another lifetime.
   * Each key is held by one generation only, so `size` counts distinct keys. Returns true when new.
   */
  touch(key: string, value: V): boolean {
    const gens = this.gens;
    if (gens[0]!.has(key)) return false;
    let known = false;
    for (let i = 1; i < gens.length; i++) {
      if (gens[i]!.delete(key)) {
        known = true;
        break;
      }
    }
    this.add(key, value);
    return !known;
  }

  /** Entries over all generations (for touch-only use: distinct keys). */
  get size(): number {
    let n = 0;
    for (const g of this.gens) n += g.size;
    return n;
  }

  clear(): void {
    for (let i = 0; i < this.gens.length; i++) this.gens[i] = new Map();
  }

  private rotate(): void {
    this.gens.pop();
    this.gens.unshift(new Map());
  }

  private rotateEarly(): void {
    this.evicted += this.gens[this.gens.length - 1]!.size;
    this.rotate();
    this.currentStart = this.lastNow;
  }
}
