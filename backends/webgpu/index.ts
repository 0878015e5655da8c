// The WebGPU backend: WGSL kernels (wgsl/), rendered from the scheduler's plan (render.ts), run on
// Dawn (device.ts, program.ts; eager.ts runs single ops; matmul-tuner.ts picks tilings per shape).

import type { Backend } from '../backend.ts';
import { renderProgram, type WebGpuKernel, type WebGpuProgram, type WebGpuRenderOptions } from './render.ts';

export type { WebGpuKernel, WebGpuProgram, WebGpuRenderOptions };

export const webgpu: Backend<WebGpuProgram, WebGpuRenderOptions> = {
  name: 'webgpu',
  language: 'wgsl',
  render: renderProgram,
  source: (k) => k.wgsl,
  launchUnit: 'workgroups',
  launch: (k) => `[${k.workgroups.join(',')}]`,
  // Read from the kernel's own declarations, so the dump shows what the shader really writes. A
  // fused kernel's arrays are named for their binding (`b3`, or `b3_0`, `b3_1`, ... for one in
  // pieces, at consecutive slots); an attention kernel's slots are its bindings.
  written: (k) =>
    new Set([...k.wgsl.matchAll(/@binding\((\d+)\)\s*var<storage,\s*read_write>\s*(\w+)/g)].map((m) => Number(/^b(\d+)(_\d+)?$/.exec(m[2])?.[1] ?? m[1]))),
};
