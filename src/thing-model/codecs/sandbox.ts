// The sandbox that runs product codec scripts (codec.js) for the `script` codec.
//
// Where scripts run: one worker thread per process, holding one node:vm context per product
// (created once at load, script compiled once). Each call is a synchronous round trip through a
// SharedArrayBuffer: the main thread writes the payload, wakes the worker and waits with
// Atomics.wait while the call is within its time budget (CPU time, see ScriptSandbox.await). A
// call that overruns (endless loop, runaway promise chain, out of memory) gets no answer in time:
// the main thread terminates the worker and reports the overrun; the next call starts a new
// worker and loads the scripts it needs again.
//
// Why not vm's own `timeout` option in the main thread: it starts a watchdog thread per call
// (about 0.1 ms each, under 10k calls/s); the round trip to a waiting worker costs a few µs.
// A worker also brings its own heap limit (resourceLimits), which vm contexts lack.
//
// What a script can reach (all of it is tested in test/unit/thing-model/script.test.ts):
// - its context's ECMAScript built-ins, minus SharedArrayBuffer, Atomics, WebAssembly,
//   FinalizationRegistry and WeakRef (they block the thread or run code after a call returned);
// - no require, process, Buffer, timers or fetch: a fresh vm context has none (its `console` is
//   V8's, which prints nothing without an inspector);
// - no code generation from strings (eval, Function, the constructor chain): refused by V8;
// - no host objects: only strings cross into a context (the payload as a latin1 string, options
//   as JSON parsed inside it), and only strings come out (results are JSON.stringify-ed inside the
//   context, under the budget), so no getter, proxy or prototype of the script's runs in the host;
// - dynamic import() is refused at load (script.ts): Node rejects it with an error object of
//   the host realm, whose constructor chain would hand out the host's Function.
// As a second line, the worker's own realm is stripped of every non-ECMAScript global before the
// first script is compiled, and the worker's frames are strict (CallSite.getThis/getFunction
// give nothing away through Error.prepareStackTrace).
// Known limit: ArrayBuffer memory lives outside the V8 heap limit, so a script allocating huge
// ArrayBuffers can still pressure the process; codec scripts are part of the operator's product
// definitions, and the sandbox guards against mistakes and payload-triggered faults in them.

import { Worker } from 'node:worker_threads';
import { WanwuError } from '../../errors.js';

/** What a script needs at load. */
export interface ScriptSpec {
  /** The script's source text. */
  source: string;
  /** File name shown in stack traces and messages (relative, e.g. devices/SoilNB/codec.js). */
  filename: string;
  /** Passed to ChirpStack-style decodeUplink as input.fPort. */
  fPort: number;
  /** JSON text of an object; frozen inside the context and passed as input.variables. */
  variables: string;
}

export type ScriptStyle = 'chirpstack' | 'alibaba';

export interface ScriptInfo {
  style: ScriptStyle;
  /** The script defines encodeDownlink (chirpstack) or protocolToRawData (alibaba). */
  encode: boolean;
}

/** A script fault, as the context described it: `line` is 0 when the stack did not name the file. */
export interface ScriptFault {
  message: string;
  line: number;
  /** threw: an exception; errors: the script returned errors; shape: a result we cannot use. */
  reason: 'threw' | 'errors' | 'shape';
}

export type CallResult =
  | { ok: true; text: string }
  | { ok: true; bytes: Buffer }
  | { ok: false; fault: ScriptFault }
  | { ok: false; overrun: true };

// --- shared memory layout ------------------------------------------------------------------
const REQ = 0; // request sequence number, written by the main thread
const RESP = 1; // response sequence number, written by the worker
const OP = 2;
const SLOT = 3;
const IN_LEN = 4;
const OUT_LEN = 5;
const READY = 6;
const HEADER_BYTES = 64;
/** Largest payload, script input or result that crosses the boundary, in bytes. */
export const SANDBOX_MAX_BYTES = 1 << 20;

const OP_LOAD = 1;
const OP_DECODE = 2;
const OP_ENCODE = 3;

/** How long a new worker may take to start, and a script's top level to run at load. */
const START_BUDGET_MS = 10_000;
const LOAD_BUDGET_MS = 1_000;
/** How long a request may wait for the worker to pick it up before its budget starts. */
const START_GRACE_MS = 1_000;
/** Atomics.load spins (a few µs) before a thread sleeps on the other's answer. */
const SPIN = 2_000;

// Runs in each product's context before the product's script. ES5 on purpose: it is ours, but
// it shares the context with ES5-era platform scripts. It captures the built-ins it uses before
// the product's script can replace them, and exposes one non-writable global, __wanwu__.
const PRELUDE = String.raw`(function (g) {
  'use strict';
  var cfg = JSON.parse(g.__wanwu_cfg);
  delete g.__wanwu_cfg;
  var banned = ['SharedArrayBuffer', 'Atomics', 'WebAssembly', 'FinalizationRegistry', 'WeakRef'];
  for (var b = 0; b < banned.length; b++) delete g[banned[b]];

  var stringify = JSON.stringify, parse = JSON.parse, isArray = Array.isArray, isView = ArrayBuffer.isView;
  var fromCharCode = String.fromCharCode, ErrorC = Error, DateC = Date, StringC = String, DataViewC = DataView;
  var freeze = Object.freeze, keys = Object.keys, defineProperty = Object.defineProperty, floor = Math.floor;
  var file = cfg.file, fPort = cfg.fPort;
  var variables = deepFreeze(parse(cfg.variables));
  var style = '', decodeFn, encodeFn, decodeName = '', encodeName = '';

  function deepFreeze(o) {
    if (o !== null && typeof o === 'object') {
      var k = keys(o);
      for (var i = 0; i < k.length; i++) deepFreeze(o[k[i]]);
      freeze(o);
    }
    return o;
  }
  function short(v) {
    var s;
    try { s = stringify(v); } catch (e) { s = undefined; }
    if (typeof s !== 'string') s = typeof v;
    return s.length > 200 ? s.slice(0, 197) + '...' : s;
  }
  // The first line of the product's file named in a stack trace (0 when none is).
  function lineOf(stack) {
    var at = stack.indexOf(file + ':');
    if (at < 0) return 0;
    var n = 0, i = at + file.length + 1, c;
    while (i < stack.length && (c = stack.charCodeAt(i)) >= 48 && c <= 57) { n = n * 10 + c - 48; i++; }
    return n;
  }
  function fault(reason, message, line) {
    return 'E' + stringify({ reason: reason, message: message, line: line || 0 });
  }
  function threw(e) {
    try {
      if (e instanceof ErrorC) return fault('threw', StringC(e.name) + ': ' + StringC(e.message), lineOf(StringC(e.stack)));
      return fault('threw', typeof e === 'string' ? e : 'threw ' + short(e), 0);
    } catch (x) {
      return fault('threw', 'an exception that cannot be described', 0);
    }
  }
  // JSON turns NaN and Infinity into null: find them so the message names the value.
  function nonFinite(v, path, depth) {
    if (typeof v === 'number') return v === v && v !== Infinity && v !== -Infinity ? '' : path + ' is ' + v;
    if (v === null || typeof v !== 'object' || depth > 8) return '';
    var k = keys(v);
    for (var i = 0; i < k.length; i++) {
      var found = nonFinite(v[k[i]], isArray(v) ? path + '[' + k[i] + ']' : path ? path + '.' + k[i] : k[i], depth + 1);
      if (found) return found;
    }
    return '';
  }
  function json(value, name, what) {
    var text;
    try { text = stringify(value); } catch (e) { return fault('shape', name + ' returned ' + what + ' that is not JSON data (' + StringC(e && e.message) + ')', 0); }
    if (text.indexOf('null') >= 0) {
      var bad = nonFinite(value, '', 0);
      if (bad) return fault('shape', name + ' returned ' + bad, 0);
    }
    return 'R' + text;
  }
  // Byte arrays out: plain arrays or typed arrays of integers in [min, 255], as a latin1 string.
  function toBytes(b, min, name, what) {
    if (!(isArray(b) || (isView(b) && !(b instanceof DataViewC)))) return fault('shape', name + ' returned ' + what + ' = ' + short(b) + '; expected an array of bytes', 0);
    var n = b.length, out = '';
    for (var i = 0; i < n; i++) {
      var v = b[i];
      if (typeof v !== 'number' || v !== floor(v) || v < min || v > 255) {
        return fault('shape', name + ' returned ' + what + '[' + i + '] = ' + short(v) + '; expected an integer ' + min + '..255', 0);
      }
      out += fromCharCode(v & 255);
    }
    return 'B' + out;
  }
  function firstError(errors, name) {
    if (errors === undefined || errors === null) return '';
    if (!isArray(errors)) return fault('shape', name + ' returned errors = ' + short(errors) + '; expected an array', 0);
    if (errors.length === 0) return '';
    var e = errors[0];
    return fault('errors', typeof e === 'string' ? e : short(e), 0);
  }

  function link() {
    var d = g.decodeUplink, r = g.rawDataToProtocol;
    if (typeof d === 'function' && typeof r === 'function') {
      return fault('shape', 'defines both decodeUplink (ChirpStack, The Things Stack) and rawDataToProtocol (Alibaba IoT); keep one', 0);
    }
    if (typeof d === 'function') {
      style = 'chirpstack'; decodeFn = d; decodeName = 'decodeUplink';
      if (typeof g.encodeDownlink === 'function') { encodeFn = g.encodeDownlink; encodeName = 'encodeDownlink'; }
    } else if (typeof r === 'function') {
      style = 'alibaba'; decodeFn = r; decodeName = 'rawDataToProtocol';
      if (typeof g.protocolToRawData === 'function') { encodeFn = g.protocolToRawData; encodeName = 'protocolToRawData'; }
    } else {
      return fault('shape', 'defines neither decodeUplink(input) (ChirpStack, The Things Stack) nor rawDataToProtocol(bytes) (Alibaba IoT)', 0);
    }
    return 'R' + stringify({ style: style, encode: encodeFn !== undefined });
  }

  // Payload (a latin1 string) -> 'R' + JSON of the result, or 'E' + JSON of a fault.
  function decode(s) {
    var n = s.length, bytes = new Array(n), i, r;
    // Alibaba passes a Java byte[]: signed values -128..127 (its scripts mask with & 0xff).
    if (style === 'alibaba') for (i = 0; i < n; i++) bytes[i] = (s.charCodeAt(i) << 24) >> 24;
    else for (i = 0; i < n; i++) bytes[i] = s.charCodeAt(i);
    try {
      r = style === 'alibaba' ? decodeFn(bytes) : decodeFn({ bytes: bytes, fPort: fPort, recvTime: new DateC(), variables: variables });
    } catch (e) {
      return threw(e);
    }
    if (r === null || typeof r !== 'object' || isArray(r)) return fault('shape', decodeName + ' returned ' + short(r) + '; expected an object', 0);
    if (style === 'alibaba') return json(r, decodeName, 'a message');
    var time = r.time;
    if (time instanceof DateC) time = time.getTime();
    // warnings are not kept: the record is stored all the same.
    return json({ data: r.data, errors: r.errors, event: r.event, time: time }, decodeName, 'data');
  }

  // JSON text of the input -> 'B' + bytes as latin1, or 'E' + JSON of a fault.
  function encode(s) {
    if (encodeFn === undefined) return fault('shape', 'defines no ' + (style === 'alibaba' ? 'protocolToRawData' : 'encodeDownlink'), 0);
    var input = parse(s), r;
    if (style === 'chirpstack') input.variables = variables;
    try {
      r = encodeFn(input);
    } catch (e) {
      return threw(e);
    }
    if (style === 'alibaba') return toBytes(r, -128, encodeName, 'bytes');
    if (r === null || typeof r !== 'object' || isArray(r)) return fault('shape', encodeName + ' returned ' + short(r) + '; expected {bytes: [...]}', 0);
    return firstError(r.errors, encodeName) || toBytes(r.bytes, 0, encodeName, 'bytes');
  }

  defineProperty(g, '__wanwu__', { value: freeze({ link: link, decode: decode, encode: encode, threw: threw }) });
})(this);`;

// The worker: CommonJS, run with eval. Its loop is started from setImmediate so that no sloppy
// frame of Node's eval wrapper is on the stack while scripts run.
const WORKER = String.raw`'use strict';
// In a function: top-level declarations of a script would be globals, and those are stripped below.
(function main() {
const { workerData } = require('node:worker_threads');
const vm = require('node:vm');
const { Buffer } = require('node:buffer');
const H = new Int32Array(workerData.sab, 0, ${HEADER_BYTES / 4});
const data = Buffer.from(workerData.sab, ${HEADER_BYTES});
const CAP = data.length;
const wait = Atomics.wait, store = Atomics.store, notify = Atomics.notify, load = Atomics.load;
const byteLength = Buffer.byteLength;
const later = setImmediate;
const prelude = new vm.Script(${JSON.stringify(PRELUDE)}, { filename: 'wanwu-prelude.js' });
const calls = {
  link: new vm.Script('__wanwu__.link()'),
  decode: new vm.Script('__wanwu__.decode(__wanwu_in)'),
  encode: new vm.Script('__wanwu__.encode(__wanwu_in)'),
  threw: new vm.Script('__wanwu__.threw(__wanwu_in)'),
};
const slots = new Map();
const ErrorC = Error;

// A script's promise rejected without a handler must not end the worker.
process.on('unhandledRejection', () => {});
process.on('uncaughtException', () => {});

// Second line of defence: nothing but ECMAScript built-ins stays on this realm's global.
const keep = new Set(vm.runInNewContext('Object.getOwnPropertyNames(globalThis)'));
for (const name of ['console', 'SharedArrayBuffer', 'Atomics', 'WebAssembly', 'eval']) keep.delete(name);
for (const name of Object.getOwnPropertyNames(globalThis)) {
  if (keep.has(name)) continue;
  try { delete globalThis[name]; } catch {}
  try { if (name in globalThis) globalThis[name] = undefined; } catch {}
}

function writeText(text) {
  if (text.length * 3 > CAP && byteLength(text, 'utf8') > CAP) return -1;
  return data.write(text, 0, 'utf8');
}
function writeFault(message, line) {
  return writeText('E' + JSON.stringify({ reason: 'shape', message, line: line || 0 }));
}

function doLoad(len) {
  const spec = JSON.parse(data.toString('utf8', 0, len));
  for (const slot of spec.drop) slots.delete(slot);
  const sandbox = Object.create(null);
  sandbox.__wanwu_cfg = JSON.stringify({ file: spec.filename, fPort: spec.fPort, variables: spec.variables });
  const ctx = vm.createContext(sandbox, { codeGeneration: { strings: false, wasm: false }, microtaskMode: 'afterEvaluate' });
  prelude.runInContext(ctx);
  let script;
  try {
    script = new vm.Script(spec.source, { filename: spec.filename });
  } catch (e) {
    // A SyntaxError from the compiler (this realm); its stack starts "file:line".
    const stack = e instanceof ErrorC ? String(e.stack) : '';
    const m = /^[^\n]*:(\d+)\n/.exec(stack);
    return writeFault(e instanceof ErrorC ? e.name + ': ' + e.message : 'cannot compile', m ? Number(m[1]) : 0);
  }
  try {
    script.runInContext(ctx);
  } catch (e) {
    // Thrown by the script's top level: a value of the context, described inside it.
    sandbox.__wanwu_in = e;
    return writeText(String(calls.threw.runInContext(ctx)));
  }
  const linked = calls.link.runInContext(ctx);
  if (typeof linked === 'string' && linked.charCodeAt(0) === 82) slots.set(spec.slot, { ctx, sandbox });
  return writeText(String(linked));
}

function doCall(op, slot, len) {
  const s = slots.get(slot);
  if (!s) return writeFault('script not loaded');
  s.sandbox.__wanwu_in = op === ${OP_DECODE} ? data.toString('latin1', 0, len) : data.toString('utf8', 0, len);
  const out = (op === ${OP_DECODE} ? calls.decode : calls.encode).runInContext(s.ctx);
  s.sandbox.__wanwu_in = undefined;
  if (typeof out !== 'string' || out.length === 0) return writeFault('the sandbox returned no result');
  if (out.charCodeAt(0) === 66) {
    // 'B': bytes, one latin1 character each.
    if (out.length - 1 > CAP) return writeFault('result of ' + (out.length - 1) + ' bytes is too large');
    return data.write(out, 0, 'latin1');
  }
  return writeText(out);
}

function loop() {
  let seen = 0;
  store(H, ${READY}, 1);
  notify(H, ${READY});
  for (;;) {
    // Spin briefly before sleeping: under load the next request follows within microseconds.
    let seq = load(H, ${REQ});
    for (let i = 0; seq === seen && i < ${SPIN}; i++) seq = load(H, ${REQ});
    while (seq === seen) {
      wait(H, ${REQ}, seen);
      seq = load(H, ${REQ});
    }
    seen = seq;
    // -seq: started. The caller's budget runs from here, not from a wake-up delayed by the scheduler.
    store(H, ${RESP}, -seq);
    notify(H, ${RESP});
    let len;
    try {
      const op = H[${OP}];
      len = op === ${OP_LOAD} ? doLoad(H[${IN_LEN}]) : doCall(op, H[${SLOT}], H[${IN_LEN}]);
    } catch (e) {
      len = writeFault('sandbox: ' + (e instanceof ErrorC ? e.message : 'an exception that cannot be described'));
    }
    if (len < 0) len = writeFault('result larger than ' + CAP + ' bytes');
    H[${OUT_LEN}] = len;
    store(H, ${RESP}, seq);
    notify(H, ${RESP});
  }
}
later(loop);
})();
`;

interface Live {
  worker: Worker;
  header: Int32Array;
  data: Buffer;
  generation: number;
  seq: number;
}

/** A script loaded into the sandbox. */
export class LoadedScript {
  /** Worker generation the script is loaded in (0: not loaded). */
  loadedIn = 0;
  /** Set once the first load succeeded. */
  info: ScriptInfo = { style: 'chirpstack', encode: false };

  constructor(
    readonly slot: number,
    readonly spec: ScriptSpec,
    private readonly sandbox: ScriptSandbox,
  ) {}

  /** Runs decodeUplink / rawDataToProtocol on the payload. */
  decode(payload: Buffer, budgetMs: number): CallResult {
    return this.sandbox.call(this, OP_DECODE, payload, budgetMs);
  }

  /** Runs encodeDownlink / protocolToRawData on `input` (JSON text). */
  encode(input: string, budgetMs: number): CallResult {
    return this.sandbox.call(this, OP_ENCODE, Buffer.from(input, 'utf8'), budgetMs);
  }
}

/** The process's script runner (one worker, started on first use, restarted after an overrun). */
export class ScriptSandbox {
  private live: Live | null = null;
  private generation = 0;
  private nextSlot = 1;
  /** Slots whose codec was garbage-collected; the worker drops them at the next load. */
  private dropped: number[] = [];
  private readonly finalizer = new FinalizationRegistry<number>((slot) => this.dropped.push(slot));

  /** Compiles and runs a script's top level, and finds its functions. Returns the fault on failure. */
  load(spec: ScriptSpec): LoadedScript | ScriptFault {
    const script = new LoadedScript(this.nextSlot++, spec, this);
    const result = this.loadInto(script);
    if (!result.ok) return result.fault;
    script.info = JSON.parse(result.text) as ScriptInfo;
    this.finalizer.register(script, script.slot);
    return script;
  }

  /** One call into the worker; loads the script first if the worker was restarted since. */
  call(script: LoadedScript, op: number, input: Buffer, budgetMs: number): CallResult {
    if (input.length > SANDBOX_MAX_BYTES) {
      return { ok: false, fault: { reason: 'shape', message: `input of ${input.length} bytes is over the sandbox's ${SANDBOX_MAX_BYTES}`, line: 0 } };
    }
    if (script.loadedIn !== this.generation || this.live === null) {
      const loaded = this.loadInto(script);
      if (!loaded.ok) return { ok: false, fault: { ...loaded.fault, message: `cannot reload the script: ${loaded.fault.message}` } };
    }
    return this.roundTrip(op, script.slot, input, budgetMs);
  }

  private loadInto(script: LoadedScript): { ok: true; text: string } | { ok: false; fault: ScriptFault } {
    const live = this.ensureWorker();
    const drop = this.dropped.splice(0);
    const { source, filename, fPort, variables } = script.spec;
    const input = Buffer.from(JSON.stringify({ slot: script.slot, source, filename, fPort, variables, drop }), 'utf8');
    if (input.length > SANDBOX_MAX_BYTES) {
      return { ok: false, fault: { reason: 'shape', message: `script of ${input.length} bytes is over the sandbox's ${SANDBOX_MAX_BYTES}`, line: 0 } };
    }
    const result = this.roundTrip(OP_LOAD, script.slot, input, LOAD_BUDGET_MS);
    if ('overrun' in result) return { ok: false, fault: { reason: 'shape', message: `the top level was stopped after ${LOAD_BUDGET_MS} ms`, line: 0 } };
    if (!result.ok) return result;
    if (!('text' in result)) return { ok: false, fault: { reason: 'shape', message: 'the sandbox returned bytes for a load', line: 0 } };
    script.loadedIn = live.generation;
    return result;
  }

  private roundTrip(op: number, slot: number, input: Buffer, budgetMs: number): CallResult {
    const live = this.ensureWorker();
    const { header, data } = live;
    input.copy(data, 0);
    header[OP] = op;
    header[SLOT] = slot;
    header[IN_LEN] = input.length;
    const seq = (live.seq = (live.seq % 0x3fffffff) + 1);
    Atomics.store(header, REQ, seq);
    Atomics.notify(header, REQ);
    // A simple decode answers within microseconds: spin for it before sleeping.
    let seen = Atomics.load(header, RESP);
    for (let i = 0; seen !== seq && i < SPIN; i++) seen = Atomics.load(header, RESP);
    if (seen !== seq && !this.await(live, seq, seen, budgetMs)) {
      this.kill();
      return { ok: false, overrun: true };
    }
    const len = header[OUT_LEN]!;
    const tag = data[0];
    if (tag === 0x42) return { ok: true, bytes: Buffer.from(data.subarray(1, len)) }; // 'B'
    const text = data.toString('utf8', 1, len);
    if (tag === 0x52) return { ok: true, text }; // 'R'
    const fault = JSON.parse(text) as ScriptFault;
    return { ok: false, fault };
  }

  /**
   * Sleeps until the worker answers request `seq`; false when the call ran over its budget.
   * The budget is CPU time, measured from when the worker picked the request up (RESP = -seq):
   * on a loaded machine a thread may wait for a core far longer than a script runs, and that is
   * not the script's fault. Process CPU time stands in for the worker's (the main thread sleeps
   * meanwhile; other threads only make the measure stricter). Wall time is capped at
   * max(10 x budget, 1 s) after the start, and at START_GRACE_MS before it.
   */
  private await(live: Live, seq: number, seen: number, budgetMs: number): boolean {
    const { header } = live;
    const capMs = Math.max(10 * budgetMs, 1_000);
    let startedAt = -1;
    let cpu0: NodeJS.CpuUsage | undefined;
    let deadline = performance.now() + START_GRACE_MS;
    const start = () => {
      startedAt = performance.now();
      cpu0 = process.cpuUsage();
      deadline = startedAt + budgetMs;
    };
    if (seen === -seq) start();
    for (;;) {
      seen = Atomics.load(header, RESP);
      if (seen === seq) return true;
      const now = performance.now();
      if (startedAt < 0 && seen === -seq) start();
      if (now >= deadline) {
        if (startedAt < 0) return false;
        const used = process.cpuUsage(cpu0);
        const usedMs = (used.user + used.system) / 1000;
        const wallMs = now - startedAt;
        if (usedMs >= budgetMs || wallMs >= capMs) return false;
        deadline = now + Math.max(1, Math.min(budgetMs - usedMs, capMs - wallMs));
      }
      // Returns at once if the worker wrote RESP after the load above.
      Atomics.wait(header, RESP, seen, deadline - now);
    }
  }

  private ensureWorker(): Live {
    if (this.live) return this.live;
    const sab = new SharedArrayBuffer(HEADER_BYTES + SANDBOX_MAX_BYTES + 16);
    const header = new Int32Array(sab, 0, HEADER_BYTES / 4);
    let worker: Worker;
    try {
      worker = new Worker(WORKER, {
        eval: true,
        workerData: { sab },
        // Scripts see none of this; it keeps the worker from inheriting the gateway's env and flags.
        env: {},
        argv: [],
        execArgv: [],
        stdout: true,
        stderr: true,
        resourceLimits: { maxOldGenerationSizeMb: 128, maxYoungGenerationSizeMb: 16, stackSizeMb: 4 },
      });
    } catch (err) {
      throw new WanwuError('WANWU_ERR_INTERNAL', `cannot start the script sandbox: ${(err as Error).message}`, { cause: err });
    }
    // An out-of-memory worker emits 'error'; the overrun is reported by the call that waited for it.
    worker.on('error', () => {});
    worker.unref();
    if (Atomics.wait(header, READY, 0, START_BUDGET_MS) === 'timed-out') {
      void worker.terminate().catch(() => {});
      throw new WanwuError('WANWU_ERR_INTERNAL', `the script sandbox did not start within ${START_BUDGET_MS} ms`);
    }
    this.generation++;
    this.live = { worker, header, data: Buffer.from(sab, HEADER_BYTES, SANDBOX_MAX_BYTES + 16), generation: this.generation, seq: 0 };
    orphans.register(this, worker, worker);
    return this.live;
  }

  /** Stops the worker (after an overrun); the next call starts a new one. */
  private kill(): void {
    const live = this.live;
    if (!live) return;
    this.live = null;
    this.generation++;
    orphans.unregister(live.worker);
    void live.worker.terminate().catch(() => {});
  }
}

/** A sandbox nobody can call any more (its codecs are gone) stops its worker. */
const orphans = new FinalizationRegistry<Worker>((worker) => void worker.terminate().catch(() => {}));

let shared: ScriptSandbox | undefined;

/** The process-wide sandbox. */
export function scriptSandbox(): ScriptSandbox {
  shared ??= new ScriptSandbox();
  return shared;
}
