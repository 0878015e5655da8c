// The backends, by name: the one place a new backend is added (a folder beside webgpu/ and a line
// here): webgpu (WGSL on Dawn) and wasm (the CPU: JavaScript kernels and WebAssembly SIMD on worker threads). The compiler's plan is target-neutral; what runs it is chosen here.

import type { Backend } from './backend.ts';
import { webgpu } from './webgpu/index.ts';
import { wasm } from './wasm/index.ts';

export { MemoryLimitError, renderTraining } from './backend.ts';
export type { Backend, DeviceValues, Executor, Recording, RenderedKernel, RenderedProgram, RenderedTraining, Target } from './backend.ts';
export { webgpu, wasm };
export type { WasmKernel, WasmProgram } from './wasm/index.ts';
export { wasmTarget, WasmExecutor, type WasmTarget, type WasmTargetOptions } from './wasm/executor.ts';
export { WasmProfiler } from './wasm/profiler.ts';
export { KernelTimes } from './profile.ts';
export type { WebGpuKernel, WebGpuProgram, WebGpuRenderOptions } from './webgpu/index.ts';
export { webgpuTarget, type WebGpuTarget, type WebGpuTargetOptions } from './webgpu/executor.ts';
export { KERNEL_CHOICES, kernelFamily, type KernelChoice, type KernelFamily } from './webgpu/family.ts';
export type { KernelProfiler } from './webgpu/profiler.ts';

// Each backend renders its own program type, so the registry holds them at `any`; a caller that
// needs one backend's kernels by type names that backend (as the runtime names webgpu).
type AnyBackend = Backend<any, any>;

export const BACKENDS: Readonly<Record<string, AnyBackend>> = { webgpu, wasm };

export function backendNamed(name: string): AnyBackend {
  const b = BACKENDS[name];
  if (!b) throw new Error(`no backend named '${name}' (backends: ${Object.keys(BACKENDS).join(', ')})`);
  return b;
}
