// What Wasm SIMD this Node offers, probed rather than assumed: 128-bit SIMD (required by the Wasm
// backend; Node ≥ 16 has it) and relaxed SIMD's f32x4.relaxed_madd, which V8 lowers to a fused
// multiply-add (vfmadd on x64 with FMA3) and which doubles the GEMM peak over mul+add.
//
// Relaxed SIMD shipped in V8 11.4; Node 20 (V8 11.3) has it behind `--experimental-wasm-relaxed-simd`,
// Node 22+ on by default. Found on Node 20.20.2 / V8 11.3.244.8 (x64, AMD EPYC), checked with the
// probe below:
//   - v8.setFlagsFromString('--experimental-wasm-relaxed-simd') at run time works: relaxed_madd fails
//     WebAssembly.validate before the call and validates, compiles and runs after it, even when other
//     (non-relaxed) Wasm modules were already compiled in the process. V8 does not promise that for
//     flags in general, so call enableRelaxedSimd() early, before building any module, and probe.
//   - Flags are process-wide: after the main thread sets it, worker_threads (new isolates) validate
//     and run relaxed modules without doing anything; a worker setting it enables it for the main
//     thread too. A WebAssembly.Module compiled on the main thread can be posted to workers.
//   - relaxed_madd is fused there (relaxedMaddIsFused() returns true: a·b + c rounds once).

import v8 from 'node:v8';
import { F32, ModuleBuilder } from './wasm-binary.ts';

let flagSet = false;

/**
 * Turns on relaxed SIMD in this process (all its threads) where it is behind a flag (Node 20), and
 * returns relaxedSimdAvailable(). Safe to call more than once; harmless where it is on by default.
 * Call it before compiling any Wasm module that uses relaxed SIMD (ideally before any module).
 */
export function enableRelaxedSimd(): boolean {
  if (!flagSet && !relaxedSimdAvailable()) {
    v8.setFlagsFromString('--experimental-wasm-relaxed-simd');
    flagSet = true;
  }
  return relaxedSimdAvailable();
}

/**
 * Compiles with V8's optimizing compiler from the start. By default V8 compiles Wasm with its
 * baseline compiler (Liftoff) and tiers hot functions up to TurboFan on a background thread; on a
 * machine whose every core runs a worker of ours, that thread waits, and the GEMM ran at half its
 * speed for many steps (measured: 25 against 36–40 GFLOP/s a thread at 1024³). `--no-liftoff` is
 * process-wide, so it is set around these compiles only, and the previous tiering comes back after
 * (the peers in the benchmark compile their own Wasm as they always do).
 */
export function compileOptimized(bytes: Uint8Array[]): WebAssembly.Module[] {
  v8.setFlagsFromString('--no-liftoff');
  try {
    return bytes.map((b) => new WebAssembly.Module(b as Uint8Array<ArrayBuffer>));
  } finally {
    v8.setFlagsFromString('--liftoff');
  }
}

/** (a·b + c) lane 0 through f32x4.relaxed_madd, as a module exporting `madd(a, b, c): f32`. */
function maddProbe(): Uint8Array<ArrayBuffer> {
  const m = new ModuleBuilder();
  m.func('madd', [F32, F32, F32], [F32], (f) => {
    f.localGet(0).f32x4Splat().localGet(1).f32x4Splat().localGet(2).f32x4Splat().f32x4RelaxedMadd().f32x4ExtractLane(0);
  });
  return m.bytes();
}

/** Whether this engine accepts f32x4.relaxed_madd (validated, nothing compiled). */
export function relaxedSimdAvailable(): boolean {
  return WebAssembly.validate(maddProbe());
}

/** Whether relaxed_madd rounds once (a true FMA) here; false if it is mul+add or unavailable. */
export function relaxedMaddIsFused(): boolean {
  if (!relaxedSimdAvailable()) return false;
  const { madd } = new WebAssembly.Instance(new WebAssembly.Module(maddProbe())).exports as { madd: (a: number, b: number, c: number) => number };
  const a = 1 + 2 ** -12; // a·a = 1 + 2^-11 + 2^-24: the 2^-24 survives only if not rounded first
  return madd(a, a, -(1 + 2 ** -11)) === 2 ** -24;
}

/** Whether this engine has 128-bit Wasm SIMD with a shared memory import (what the backend needs). */
export function simd128Available(): boolean {
  const m = new ModuleBuilder().importSharedMemory();
  m.func('f', [], [F32], (f) => {
    f.i32Const(0).v128Load().i32Const(0).v128Load32Splat().f32x4Add().f32x4ExtractLane(0);
  });
  return WebAssembly.validate(m.bytes());
}

/** Throws a clear error unless 128-bit SIMD (and shared memory) is there. */
export function requireSimd128(): void {
  if (!simd128Available()) {
    throw new Error(
      `the Wasm backend needs WebAssembly 128-bit SIMD and shared memory, which this engine (Node ${process.version}, V8 ${process.versions.v8}) does not validate; use Node ≥ 20 without --no-experimental-wasm-simd`,
    );
  }
}
