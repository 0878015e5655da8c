// Runs an IR graph the way the compiled runner does: fused (fuse-elementwise), scheduled, and run on
// the real adapter as a recorded Program (values in pieces when asked), or on the CPU backend;
// every output read back. Tests compare the result with the reference interpreter.

import { numel, type Graph } from '../../compiler/ir/graph.ts';
import { schedule } from '../../compiler/schedule.ts';
import { wasm, webgpu, type WasmProgram } from '../../backends/index.ts';
import { wasmTarget, type WasmExecutor } from '../../backends/wasm/executor.ts';
import type { ProgramName } from '../../compiler/pipeline.ts';
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

/**
 * Runs `g` fused on the CPU backend (backends/wasm) as the compiled runner does: fused, scheduled,
 * rendered, one value per graph input and output in the executor's memory; returns each output.
 */
export async function runOnCpu(g: Graph, inputs: Record<string, Float32Array | Int32Array>, threads = 2): Promise<Float32Array[]> {
  const fused = fuseElementwise().run(g).graph;
  const plan = wasm.render(schedule(fused));
  const values = [...plan.inputs, ...plan.outputs.filter((v) => !v.inPlace)].map((v) => ({ name: v.name, elements: numel(v.shape) }));
  const ex = (await wasmTarget({ threads }).open({ gradient: plan } as Record<ProgramName, WasmProgram>, { buffers: values, views: {} })) as WasmExecutor;
  try {
    const r = ex.record();
    for (const v of plan.inputs) r.upload(v.name, inputs[v.name]);
    r.run('gradient');
    const reads = plan.outputs.map((v) => r.read(v.inPlace ?? v.name, numel(v.shape) * 4));
    await r.submit();
    return Promise.all(reads.map(async (b) => new Float32Array(await b)));
  } finally {
    await ex.close();
  }
}
