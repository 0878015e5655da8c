// Smoke test for the real WebGPU stack (Dawn + driver): if this fails, every GPU test would fail
// for reasons that have nothing to do with the compiler.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { describe, expect, it } from 'vitest';
import { requestDevice } from '../backends/webgpu/device.ts';
import { gpuOrSkip } from './support/gpu.ts';

// A full GC on demand (no --expose-gc needed), to catch Dawn objects collected while still in use.
function collectGarbage(): void {
  setFlagsFromString('--expose-gc');
  (runInNewContext('gc') as () => void)();
}

describe('WebGPU adapter', () => {
  it('gives a device with the adapter limits raised', async (t) => {
    const { adapter, device, info } = await gpuOrSkip(t);
    console.log(`adapter: ${info.vendor} / ${info.architecture} / ${info.description}`);
    expect(device.limits.maxStorageBufferBindingSize).toBe(adapter.limits.maxStorageBufferBindingSize);
    expect(device.limits.maxStorageBuffersPerShaderStage).toBe(adapter.limits.maxStorageBuffersPerShaderStage);
    // One device per process.
    expect((await requestDevice()).device).toBe(device);
  });

  it('runs a compute shader and reads back exact results', async (t) => {
    const { device } = await gpuOrSkip(t);
    // Regression: runtime/device.ts once let the GPU object from create() be collected, and the
    // next mapAsync crashed the process. A GC here makes that deterministic.
    collectGarbage();
    // 1000 is not a multiple of the workgroup size: the last workgroup must guard its tail.
    const n = 1000;
    const workgroupSize = 64;
    const input = Float32Array.from({ length: n }, (_, i) => (i - 500) * 0.25); // exact in f32

    const module = device.createShaderModule({
      code: /* wgsl */ `
        @group(0) @binding(0) var<storage, read> src: array<f32>;
        @group(0) @binding(1) var<storage, read_write> dst: array<f32>;
        @compute @workgroup_size(${workgroupSize})
        fn main(@builtin(global_invocation_id) id: vec3u) {
          if (id.x < arrayLength(&src)) { dst[id.x] = src[id.x] * 2.0 + 1.0; }
        }`,
    });
    const bytes = input.byteLength;
    const src = device.createBuffer({ size: bytes, usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_DST });
    // One extra element past the end, pre-filled, proves the guard kept writes in bounds.
    const dst = device.createBuffer({
      size: bytes + 4,
      usage: GPUBufferUsage.STORAGE | GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST,
    });
    const readback = device.createBuffer({ size: bytes + 4, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    device.queue.writeBuffer(src, 0, input);
    device.queue.writeBuffer(dst, bytes, new Float32Array([-7]));

    const pipeline = device.createComputePipeline({ layout: 'auto', compute: { module, entryPoint: 'main' } });
    const bindGroup = device.createBindGroup({
      layout: pipeline.getBindGroupLayout(0),
      entries: [
        { binding: 0, resource: { buffer: src } },
        { binding: 1, resource: { buffer: dst, size: bytes } },
      ],
    });
    device.pushErrorScope('validation');
    const encoder = device.createCommandEncoder();
    const pass = encoder.beginComputePass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bindGroup);
    pass.dispatchWorkgroups(Math.ceil(n / workgroupSize));
    pass.end();
    encoder.copyBufferToBuffer(dst, 0, readback, 0, bytes + 4);
    device.queue.submit([encoder.finish()]);
    expect(await device.popErrorScope()).toBeNull();

    await readback.mapAsync(GPUMapMode.READ);
    const out = new Float32Array(readback.getMappedRange().slice(0));
    readback.unmap();
    for (const b of [src, dst, readback]) b.destroy();

    const expected = Array.from(input, (x) => x * 2 + 1);
    expect(Array.from(out.subarray(0, n))).toEqual(expected);
    expect(out[n]).toBe(-7);
  });
});
