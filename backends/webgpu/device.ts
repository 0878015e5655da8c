// The one place that talks to Dawn (npm `webgpu`) to get a GPUDevice. Everything else takes the
// device from here, so limits, features and the "no GPU" message are decided once.
//
// The GPU* types are ambient declarations from @webgpu/types; tsconfig lists only "node" under
// "types", so pull them in here for the whole program.
/// <reference types="@webgpu/types" />
import { mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface AdapterSummary {
  vendor: string;
  architecture: string;
  device: string;
  description: string;
}

export interface GpuContext {
  adapter: GPUAdapter;
  device: GPUDevice;
  info: AdapterSummary;
}

// WebGPU hands out conservative default limits (e.g. 128 MiB per storage binding, 8 storage
// buffers per stage); kernels for a GPT's weights and fused optimizers need what the adapter has.
const LIMITS_TO_RAISE = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxStorageBuffersPerShaderStage',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
] as const;

// Optional: kernels check `device.features` before using them, so ask only for what exists
// (asking for a missing feature makes requestDevice reject).
const OPTIONAL_FEATURES: GPUFeatureName[] = ['shader-f16', 'timestamp-query', 'subgroups'];

// One device per process: buffers and pipelines cannot cross devices, and creating a Dawn
// instance is slow. The promise is cached so concurrent callers share one acquisition.
let cached: Promise<GpuContext> | undefined;

// The GPU object from `create()` owns the Dawn instance, and the adapter and device do not keep it
// alive: once it is garbage-collected, work in flight touches freed memory (seen as segfaults and
// deadlocks in mapAsync on lavapipe). So hold it for as long as the device lives.
let gpuInstance: GPU | undefined;

export async function requestDevice(): Promise<GpuContext> {
  cached ??= acquire().catch((err: unknown) => {
    // Let a later call retry with a fresh instance, e.g. after a driver was installed.
    cached = undefined;
    gpuInstance = undefined;
    throw err;
  });
  return cached;
}

/** The Dawn instance behind requestDevice() (after it resolved): bench/peers gives it to TF.js and jax-js as navigator.gpu. */
export function dawnInstance(): GPU | undefined {
  return gpuInstance;
}

/**
 * Dawn's instance flags: CHOTTA_DAWN_FLAGS (space-separated), with timestamp quantization off.
 * Dawn rounds timestamps down to about 65 µs by default (a browser's defence against timing
 * attacks), which makes a profile's per-kernel times on a fast GPU mostly zeros.
 */
export function dawnFlags(user: string): string[] {
  const flags = user.split(' ').filter(Boolean);
  const disable = flags.findIndex((f) => f.startsWith('disable-dawn-features='));
  if (disable < 0) return [...flags, 'disable-dawn-features=timestamp_quantization'];
  flags[disable] += ',timestamp_quantization';
  return flags;
}

async function acquire(): Promise<GpuContext> {
  // Mesa's drivers warn on stderr without XDG_RUNTIME_DIR. Set it before dawn.node loads (the
  // reason for the dynamic import below: a static import would load it before this line runs).
  if (!process.env.XDG_RUNTIME_DIR) {
    const dir = join(tmpdir(), `xdg-runtime-${process.getuid?.() ?? 'user'}`);
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    process.env.XDG_RUNTIME_DIR = dir;
  }
  const { create, globals } = await import('webgpu');
  // Dawn's constructors and enums (GPUBufferUsage, GPUMapMode, ...) are browser globals in WebGPU
  // code; node has none of them.
  Object.assign(globalThis, globals);

  const gpu = (gpuInstance ??= create(dawnFlags(process.env.CHOTTA_DAWN_FLAGS ?? '')));
  const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
  if (!adapter) {
    throw new Error(
      'No WebGPU adapter found: Dawn (npm `webgpu`) needs a working Vulkan, Metal or D3D12 driver. ' +
        'On Linux without a GPU, install a software one (Mesa lavapipe) with ' +
        '`bash scripts/install-software-gpu.sh`, then check with `node scripts/probe-adapter.mjs`.',
    );
  }

  const requiredLimits: Record<string, number> = {};
  for (const name of LIMITS_TO_RAISE) requiredLimits[name] = adapter.limits[name];
  const requiredFeatures = OPTIONAL_FEATURES.filter((f) => adapter.features.has(f));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });

  // Without this a lost device shows up later as puzzling validation errors far from the cause.
  void device.lost.then((lost) => {
    if (lost.reason !== 'destroyed') console.error(`WebGPU device lost: ${lost.message}`);
  });

  const { vendor, architecture, device: deviceName, description } = adapter.info;
  return { adapter, device, info: { vendor, architecture, device: deviceName, description } };
}
