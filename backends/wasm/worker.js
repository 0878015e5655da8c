// One worker of the CPU backend's pool (executor.ts). Plain JavaScript, so a worker starts without a
// TypeScript loader. At start it compiles every kernel's source (render.ts) against the shared
// memory and instantiates the modules the executor compiled (the GEMM, attention, each elementwise
// kernel's) on it; then it waits for commands. A command names a program: the worker claims chunks
// of every kernel's work units, in order, meeting the other workers at a barrier wherever a kernel
// touches memory that an earlier kernel since the last barrier wrote (or writes what it read), and
// after the last. When all are done the main thread is woken.
//
// The control words are an Int32Array over a SharedArrayBuffer (executor.ts CONTROL).

import { parentPort, workerData } from 'node:worker_threads';

const SEQ = 0, PROGRAM = 1, BAR_COUNT = 2, BAR_GEN = 3, DONE = 4, FAILED = 5, STOP = 6, TIMING = 7;
/** Spins before sleeping at a barrier: most waits are shorter than a futex round trip. */
const SPIN = 4000;

const { memory, gemmModule, attentionModule, control, claims: claimsBuffer, index, workers, scratch, programs } = workerData;
const ctrl = new Int32Array(control);
/** Per kernel of the running program: the next unclaimed work unit (the main thread zeroes them before a run). */
const claims = new Int32Array(claimsBuffer);
const f32 = new Float32Array(memory.buffer);
const i32 = new Int32Array(memory.buffer);
const gemm = new WebAssembly.Instance(gemmModule, { env: { memory } }).exports;
const attention = new WebAssembly.Instance(attentionModule, { env: { memory } }).exports;

/**
 * Kernel k's run function, how many units a worker claims at a time, and whether a barrier follows
 * it. Workers claim chunks of units from a shared counter rather than owning a fixed share, so a
 * worker that runs slower (a core shared with another process, causal attention's longer rows) takes
 * fewer: a few chunks a worker, fewer for matmuls, whose units in one chunk share a packed B.
 */
const compiled = programs.map((p) =>
  p.kernels.map((k) => {
    // An elementwise kernel in WebAssembly SIMD (fused-wasm.ts) brings its module; its source calls it.
    const kernel = k.module ? new WebAssembly.Instance(k.module, { env: { memory } }).exports : undefined;
    const env = { f32, i32, base: Int32Array.from(k.base), gemm, attention, scratch, kernel };
    let run;
    try {
      run = new Function('env', k.source)(env);
    } catch (e) {
      throw new Error(`kernel ${k.name} does not compile: ${e.message}\n--- source ---\n${k.source}`);
    }
    const chunk = Math.max(1, Math.floor(k.units / (workers * (k.kind === 'matmul' ? 2 : 4))));
    return { name: k.name, run, units: k.units, chunk, barrierAfter: k.barrierAfter };
  }),
);

function barrier() {
  if (workers === 1) return;
  const gen = Atomics.load(ctrl, BAR_GEN);
  if (Atomics.add(ctrl, BAR_COUNT, 1) === workers - 1) {
    Atomics.store(ctrl, BAR_COUNT, 0);
    Atomics.add(ctrl, BAR_GEN, 1);
    Atomics.notify(ctrl, BAR_GEN);
    return;
  }
  for (let spins = 0; Atomics.load(ctrl, BAR_GEN) === gen; spins++) {
    if (spins > SPIN) Atomics.wait(ctrl, BAR_GEN, gen);
  }
}

parentPort.postMessage({ ready: true });
let seen = 0;
for (;;) {
  Atomics.wait(ctrl, SEQ, seen);
  seen = Atomics.load(ctrl, SEQ);
  if (Atomics.load(ctrl, STOP)) break;
  const program = Atomics.load(ctrl, PROGRAM);
  const kernels = compiled[program];
  const timing = index === 0 && Atomics.load(ctrl, TIMING) !== 0;
  const times = timing ? new Float64Array(kernels.length) : undefined;
  let failed = false;
  let t = timing ? performance.now() : 0;
  for (let k = 0; k < kernels.length; k++) {
    const kernel = kernels[k];
    if (!failed) {
      try {
        for (let lo = Atomics.add(claims, k, kernel.chunk); lo < kernel.units; lo = Atomics.add(claims, k, kernel.chunk)) kernel.run(lo, Math.min(kernel.units, lo + kernel.chunk));
      } catch (e) {
        failed = true;
        Atomics.store(ctrl, FAILED, 1);
        parentPort.postMessage({ error: `kernel ${kernel.name}: ${e && e.stack ? e.stack : e}` });
      }
    }
    if (kernel.barrierAfter) barrier();
    // A kernel's time runs to the barrier after it: until every worker has finished its share.
    if (times) {
      const now = performance.now();
      times[k] = now - t;
      t = now;
    }
  }
  if (times) parentPort.postMessage({ times, program });
  if (Atomics.add(ctrl, DONE, 1) === workers - 1) Atomics.notify(ctrl, DONE);
}
