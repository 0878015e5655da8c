// Runs an IR graph on the real adapter the way the compiled runner does: fused (fuse-elementwise),
// scheduled, recorded as a Program, and every output read back. Tests compare the result with the
// reference interpreter.

import { numel, type Graph } from '../../compiler/ir/graph.ts';
import { schedule } from '../../compiler/schedule.ts';
import { webgpu } from '../../backends/index.ts';
import { fuseElementwise } from '../../passes/fuse-elementwise.ts';
import { createBuffer, PipelineCache, Program } from '../../backends/webgpu/program.ts';
import type { GpuContext } from '../../backends/webgpu/device.ts';

/** Runs `g` fused on the device; returns each output as the device computed it. */
export async function runOnDevice(gpu: GpuContext, g: Graph, inputs: Record<string, Float32Array | Int32Array>): Promise<Float32Array[]> {
  const fused = fuseElementwise().run(g).graph;
  const plan = webgpu.render(schedule(fused));
  const device = gpu.device;
  const buffers: Record<string, GPUBuffer> = {};
  for (const v of plan.inputs) {
    buffers[v.name] = createBuffer(device, numel(v.shape) * 4, v.name);
    const data = inputs[v.name];
    device.queue.writeBuffer(buffers[v.name], 0, data.buffer as ArrayBuffer, data.byteOffset, data.byteLength);
  }
  for (const v of plan.outputs) if (!v.inPlace) buffers[v.name] = createBuffer(device, numel(v.shape) * 4, v.name);
  const program = new Program(device, plan, PipelineCache.of(device), buffers);
  const encoder = device.createCommandEncoder();
  program.record(encoder);
  const reads = plan.outputs.map((v) => {
    const bytes = numel(v.shape) * 4;
    const staging = device.createBuffer({ size: bytes, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
    encoder.copyBufferToBuffer(buffers[v.inPlace ?? v.name], 0, staging, 0, bytes);
    return staging;
  });
  device.queue.submit([encoder.finish()]);
  await PipelineCache.of(device).check();
  return Promise.all(
    reads.map(async (staging) => {
      await staging.mapAsync(GPUMapMode.READ);
      const data = new Float32Array(staging.getMappedRange().slice(0));
      staging.destroy();
      return data;
    }),
  );
}
