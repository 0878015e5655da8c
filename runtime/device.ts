// Where the compiled programs run: a WebGPU adapter (the webgpu backend) or this machine's CPU
// cores (the wasm backend). `auto` takes the GPU when there is a real one, and the CPU when the
// only adapter is a software rasterizer (lavapipe runs WGSL slower than the CPU backend runs the
// same plan) or when there is no adapter at all (no Vulkan driver): so `npm ci && npm run train`
// works on a machine without one. `--device` forces either.

import type { GpuContext } from '../backends/webgpu/device.ts';
import { isSoftwareAdapter } from '../backends/webgpu/family.ts';
import { UsageError } from '../compiler/ir/errors.ts';

export const DEVICE_CHOICES = ['auto', 'gpu', 'cpu'] as const;
export type DeviceChoice = (typeof DEVICE_CHOICES)[number];

/** The device a command runs on, and why it was chosen (one line for the log). */
export type Device = { kind: 'gpu'; gpu: GpuContext; why: string } | { kind: 'cpu'; why: string };

const adapterName = (gpu: GpuContext) => [gpu.info?.vendor, gpu.info?.architecture, gpu.info?.device || gpu.info?.description].filter(Boolean).join(' ') || 'an unnamed adapter';

/** Decides the device for `choice`, asking `requestGpu` for the adapter unless the CPU is forced. */
export async function chooseDevice(choice: DeviceChoice, requestGpu: () => Promise<GpuContext>): Promise<Device> {
  if (choice === 'cpu') return { kind: 'cpu', why: 'the CPU (--device cpu)' };
  if (choice === 'gpu') {
    const gpu = await requestGpu().catch((e: unknown) => {
      if (e instanceof UsageError) throw e;
      throw new UsageError(`WebGPU: ${e instanceof Error ? e.message : String(e)}`, { cause: e });
    });
    return { kind: 'gpu', gpu, why: `the GPU ${adapterName(gpu)} (--device gpu)` };
  }
  let gpu: GpuContext;
  try {
    gpu = await requestGpu();
  } catch (e) {
    // The reason's first sentence: the rest of requestDevice's message is how to install a driver.
    const first = (e instanceof Error ? e.message : String(e)).split('\n')[0].split('. ')[0].replace(/\.$/, '');
    return { kind: 'cpu', why: `the CPU: no WebGPU adapter (${first}); --device forces one` };
  }
  if (isSoftwareAdapter(gpu)) return { kind: 'cpu', why: `the CPU: the only WebGPU adapter, ${adapterName(gpu)}, is a software rasterizer; --device gpu forces it` };
  return { kind: 'gpu', gpu, why: `the GPU ${adapterName(gpu)}; --device cpu forces the CPU` };
}

/** The GPU a device has, or a usage error saying that `what` needs one. */
export function gpuOf(device: Device, what: string): GpuContext {
  if (device.kind === 'gpu') return device.gpu;
  const none = device.why.includes('no WebGPU adapter');
  throw new UsageError(`${what} needs a WebGPU adapter, and this runs on ${device.why}: use --device gpu${none ? ' once a Vulkan driver is installed (bash scripts/install-software-gpu.sh installs Mesa lavapipe)' : ''}`);
}
