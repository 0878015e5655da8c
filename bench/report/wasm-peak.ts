// What the Wasm CPU backend can do at best on this machine, measured like device-peak.ts measures a
// GPU adapter: the GEMM module's fmaPeak (independent f32x4 multiply-add chains in registers, no
// memory traffic) timed on one thread, then on os.availableParallelism() worker_threads at once, each
// instantiating the same module bytes. relaxed_madd when this Node has relaxed SIMD (turned on here
// if it is behind a flag), mul+add otherwise; 8 flops per f32x4 multiply-add either way.

import os from 'node:os';
import { Worker } from 'node:worker_threads';
import { FMA_PEAK_OPS_PER_ITERATION, gemmModule, type GemmExports } from '../../backends/wasm/gemm.ts';
import { enableRelaxedSimd, requireSimd128 } from '../../backends/wasm/simd.ts';

export interface WasmPeak {
  /** GFLOP/s of one thread. */
  oneThread: number;
  /** GFLOP/s of `threads` threads together (total flops over the wall time they overlap). */
  allThreads: number;
  threads: number;
  /** Whether relaxed_madd (FMA) was used, rather than mul+add. */
  fma: boolean;
}

const ITERATIONS = 1_000_000; // × FMA_PEAK_OPS_PER_ITERATION × 8 flops ≈ 0.4 GFLOP, ~8 ms a thread
const ROUNDS = 10; // best of: short rounds, many, so a busy machine still shows its peak
const FLOPS = ITERATIONS * FMA_PEAK_OPS_PER_ITERATION * 8;

// The worker (CommonJS, from a string): instantiate, warm up (V8 tiers a Wasm function up to TurboFan
// for its next call, not the running one), then per round: a barrier over all workers, one timed
// fmaPeak. It returns each round's [start, end] on the shared clock (performance.timeOrigin + now).
const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { bytes, iterations, rounds, threads, barrier } = workerData;
const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
const ex = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports;
for (let w = 0; w < 3; w++) ex.fmaPeak(20_000);
const count = new Int32Array(barrier);
const spans = [];
for (let r = 0; r < rounds; r++) {
  const target = threads * (r + 1);
  if (Atomics.add(count, 0, 1) + 1 === target) Atomics.notify(count, 0);
  for (let v; (v = Atomics.load(count, 0)) < target; ) Atomics.wait(count, 0, v, 5);
  const t0 = performance.timeOrigin + performance.now();
  ex.fmaPeak(iterations);
  spans.push([t0, performance.timeOrigin + performance.now()]);
}
parentPort.postMessage(spans);
`;

/** fmaPeak's GFLOP/s on one thread and on all of them at once. */
export async function measureWasmPeak(): Promise<WasmPeak> {
  requireSimd128();
  const fma = enableRelaxedSimd();
  const bytes = gemmModule({ fma });
  const threads = os.availableParallelism();

  const memory = new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
  const ex = new WebAssembly.Instance(new WebAssembly.Module(bytes), { env: { memory } }).exports as unknown as GemmExports;
  for (let w = 0; w < 3; w++) ex.fmaPeak(20_000);
  let bestMs = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const t0 = performance.now();
    ex.fmaPeak(ITERATIONS);
    bestMs = Math.min(bestMs, performance.now() - t0);
  }
  const oneThread = FLOPS / bestMs / 1e6;

  const barrier = new SharedArrayBuffer(4);
  const spans = await Promise.all(
    Array.from({ length: threads }, () => {
      const worker = new Worker(WORKER, { eval: true, workerData: { bytes, iterations: ITERATIONS, rounds: ROUNDS, threads, barrier } });
      return new Promise<[number, number][]>((resolve, reject) => {
        worker.once('message', (m: [number, number][]) => {
          resolve(m);
          void worker.terminate();
        });
        worker.once('error', reject);
      });
    }),
  );
  let bestWall = Infinity;
  for (let r = 0; r < ROUNDS; r++) {
    const start = Math.min(...spans.map((s) => s[r][0]));
    const end = Math.max(...spans.map((s) => s[r][1]));
    bestWall = Math.min(bestWall, end - start);
  }
  const allThreads = (threads * FLOPS) / bestWall / 1e6;
  return { oneThread, allThreads, threads, fma };
}
