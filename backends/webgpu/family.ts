// Which kernel family runs on an adapter. The software family (wgsl/primitives.ts matmulKernel,
// wgsl/flash-attention.ts) uses no workgroup memory and no barriers: on a CPU rasterizer such as
// Mesa's lavapipe a barrier costs more than the loads it saves. The GPU family (wgsl/gpu/) stages
// matmul and attention tiles in workgroup memory, as fast GPU kernels do. The family follows the
// adapter's class; `--kernels` (or CHOTTA_KERNELS) forces one, so CI on lavapipe checks the GPU
// family's kernels too.

import type { GpuContext } from './device.ts';

export const KERNEL_FAMILIES = ['software', 'gpu'] as const;
export type KernelFamily = (typeof KERNEL_FAMILIES)[number];
/** What a user asks for: a family, or `auto` (by the adapter's class). */
export type KernelChoice = KernelFamily | 'auto';
export const KERNEL_CHOICES: readonly KernelChoice[] = ['auto', ...KERNEL_FAMILIES];

/** Whether the adapter is a software rasterizer (lavapipe/llvmpipe, SwiftShader, WARP, or one Dawn marks as a fallback). */
export function isSoftwareAdapter(gpu: Pick<GpuContext, 'adapter' | 'info'>): boolean {
  const { architecture, device, description, vendor } = gpu.info;
  const fallback = (gpu.adapter.info as GPUAdapterInfo & { isFallbackAdapter?: boolean }).isFallbackAdapter === true;
  return fallback || architecture === 'software' || /llvmpipe|lavapipe|swiftshader|microsoft basic render/i.test(`${vendor} ${device} ${description}`);
}

/** The family for `choice` on this adapter: `auto` (the default, or CHOTTA_KERNELS) picks by adapter class. */
export function kernelFamily(gpu: Pick<GpuContext, 'adapter' | 'info'>, choice: KernelChoice = kernelChoiceFromEnv()): KernelFamily {
  if (choice !== 'auto') return choice;
  return isSoftwareAdapter(gpu) ? 'software' : 'gpu';
}

/** One line saying which family `choice` gives on this adapter, and why. */
export function describeKernelFamily(gpu: Pick<GpuContext, 'adapter' | 'info'>, choice: KernelChoice = kernelChoiceFromEnv()): string {
  const family = kernelFamily(gpu, choice);
  if (choice !== 'auto') return `kernels: the ${family} family (forced by --kernels or CHOTTA_KERNELS)`;
  return `kernels: the ${family} family (the adapter is ${isSoftwareAdapter(gpu) ? 'a software rasterizer' : 'a GPU'}; --kernels forces one)`;
}

/** CHOTTA_KERNELS, checked: `auto` when unset. */
export function kernelChoiceFromEnv(): KernelChoice {
  const v = process.env.CHOTTA_KERNELS;
  if (v === undefined || v === '') return 'auto';
  if (!(KERNEL_CHOICES as readonly string[]).includes(v)) throw new Error(`CHOTTA_KERNELS=${v}: choose one of ${KERNEL_CHOICES.join(', ')}`);
  return v as KernelChoice;
}
