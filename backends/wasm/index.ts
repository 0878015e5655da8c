// The CPU backend: kernels rendered as JavaScript over one shared WebAssembly memory, their matmuls
// in a WebAssembly SIMD GEMM (gemm.ts, emitted by wasm-binary.ts), run by a pool of worker threads
// (executor.ts, worker.js).

import type { Backend } from '../backend.ts';
import { renderProgram, type WasmKernel, type WasmProgram } from './render.ts';

export type { WasmKernel, WasmProgram };

export const wasm: Backend<WasmProgram> = {
  name: 'wasm',
  language: 'js',
  render: renderProgram,
  source: (k) => k.source,
  launchUnit: 'work units',
  launch: (k) => String(k.units),
  written: (k) => new Set(k.written),
};
