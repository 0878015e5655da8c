// WebGPU as a browser would present it, for TF.js and jax-js running in Node: Dawn's constructors
// and enums (GPUBufferUsage, GPUMapMode, ...) as globals, and `globalThis.navigator` with `gpu`,
// `userAgent` (jax-js's WebGPU kernel heuristics read it), `hardwareConcurrency` and `language`.
//
// One process runs every system, so the peers share our adapter: `navigator.gpu` is the very Dawn
// instance backends/webgpu/device.ts created (same flags, CHOTTA_DAWN_FLAGS; same adapter, asked for with
// 'high-performance' as everyone does). Each peer still requests its own GPUDevice with the limits
// and features it wants, as it would in a browser; nothing about our device is handed over or
// restricted. Holding the instance here also keeps it alive as long as any peer device (see the
// note on garbage collection in backends/webgpu/device.ts).
/// <reference types="@webgpu/types" />
import { availableParallelism } from 'node:os';
import { dawnInstance, requestDevice, type GpuContext } from '../../backends/webgpu/device.ts';

let installed: Promise<GpuContext> | undefined;

/** Installs the globals once; resolves with our own device (acquired first, so the instance exists). */
export function installWebGpuGlobals(): Promise<GpuContext> {
  installed ??= (async () => {
    // requestDevice sets XDG_RUNTIME_DIR, loads dawn.node and assigns its globals.
    const ctx = await requestDevice();
    const gpu = dawnInstance();
    if (!gpu) throw new Error('installWebGpuGlobals: backends/webgpu/device.ts holds no Dawn instance after requestDevice()');
    const navigator = {
      gpu,
      userAgent: 'Node.js',
      hardwareConcurrency: availableParallelism(),
      language: 'en-US',
    };
    // Node 21+ has a read-only global navigator (a getter); Node 20 has none. Replace it either way.
    Object.defineProperty(globalThis, 'navigator', { value: navigator, configurable: true, writable: true, enumerable: true });
    return ctx;
  })();
  return installed;
}
