// Runs an IR graph on the real adapter the way the compiled runner does: fused (fuse-elementwise),
// scheduled, recorded as a Program, and every output read back (values in pieces when asked). Tests compare the result with the
// reference interpreter.

import { numel, type Graph } from '../../compiler/ir/graph.ts';
import { schedule } from '../../compiler/schedule.ts';
import { webgpu } from '../../backends/index.ts';
import { fuseElementwise } from '../../passes/fuse-elementwise.ts';
import { createStored, pieceBytesOf, PipelineCache, Program, sliceStored, type Stored } from '../../backends/webgpu/program.ts';
import type { GpuContext } from '../../backends/webgpu/device.ts';

/**
 * Runs `g` fused on the device; returns each output as the device computed it. With
 * `maxBindingBytes`, values larger are stored and bound in pieces (compiler/ir/kernel-io.ts).
 */
export async function runOnDevice(
  gpu: GpuContext,
  g: Graph,
  inputs: Record<string, Float32Array | Int32Array>,
  opts: { maxBindingBytes?: number; maxStorageBuffers?: number } = {},
): Promise<Float32Array[]> {
  const fused = fuseElementwise(opts).run(g).graph;
  const plan = webgpu.render(schedule(fused, { maxBindingBytes: opts.maxBindingBytes }));
  const device = gpu.device;
  const pieceBytes = pieceBytesOf(plan.maxBindingBytes);
  const values: Record<string, Stored> = {};
  for (const v of plan.inputs) {
    values[v.name] = createStored(device, numel(v.shape) * 4, pieceBytes, v.name);
    const data = inputs[v.name];
    let at = data.byteOffset;
    for (const part of sliceStored(values[v.name], 0, data.byteLength)) {
      device.queue.writeBuffer(part.buffer, part.offset, data.buffer as ArrayBuffer, at, part.size);
      at += part.size;
    }
  }
  for (const v of plan.outputs) if (!v.inPlace) values[v.name] = createStored(device, numel(v.shape) * 4, pieceBytes, v.name);
  const program = new Program(device, plan, PipelineCache.of(device), values);
  const encoder = device.createCommandEncoder();
  program.record(encoder);
  const reads = plan.outputs.map((v) =>
    sliceStored(values[v.inPlace ?? v.name], 0, numel(v.shape) * 4).map((part) => {
      const staging = device.createBuffer({ size: part.size, usage: GPUBufferUsage.MAP_READ | GPUBufferUsage.COPY_DST });
      encoder.copyBufferToBuffer(part.buffer, part.offset, staging, 0, part.size);
      return staging;
    }),
  );
  device.queue.submit([encoder.finish()]);
  await PipelineCache.of(device).check();
  return Promise.all(
    reads.map(async (parts) => {
      const chunks = await Promise.all(
        parts.map(async (staging) => {
          await staging.mapAsync(GPUMapMode.READ);
          const data = new Float32Array(staging.getMappedRange().slice(0));
          staging.destroy();
          return data;
        }),
      );
      const out = new Float32Array(chunks.reduce((n, c) => n + c.length, 0));
      chunks.reduce((at, c) => (out.set(c, at), at + c.length), 0);
      return out;
    }),
  );
}
