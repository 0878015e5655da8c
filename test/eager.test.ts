// Eager mode on the real adapter: the GPT's loss and gradients equal the reference interpreter's,
// the AdamW kernel equals the host reference, and a few steps of training lower the loss.

import { describe, expect, it } from 'vitest';
import { backprop } from '../compiler/autodiff/autograd.ts';
import { adamwKernel, adamwUniforms } from '../backends/webgpu/wgsl/optimizer.ts';
import { buildJointGraph } from '../compiler/autodiff/autograd.ts';
import { ParamScope, type ParamSpec } from '../compiler/frontend/nn.ts';
import { Ops } from '../compiler/ir/ops.ts';
import { Tensor } from '../compiler/frontend/tensor.ts';
import { traceForward } from '../compiler/frontend/trace.ts';
import { model, type GPTConfig } from '../models/gpt.ts';
import { EagerBackend, type EagerValue } from '../backends/webgpu/eager.ts';
import { createEagerEngine } from '../runtime/engines/eager-engine.ts';
import { initParameters, mulberry32 } from '../runtime/init.ts';
import { evaluate, type RefInput } from '../compiler/ir/interpret.ts';
import { adamwUpdate } from '../runtime/train/adamw.ts';
import { randomArray } from './support/gradcheck.ts';
import { gpuOrSkip } from './support/gpu.ts';

const small: GPTConfig = { nLayer: 2, nHead: 2, nEmbd: 16, blockSize: 8, vocabSize: 32, bias: true };
const B = 2;

function tokens(n: number, vocab: number, seed: number): Int32Array {
  const rng = mulberry32(seed);
  return Int32Array.from({ length: n }, () => Math.floor(rng() * vocab));
}

describe('eager mode', () => {
  it('GPT loss and every parameter gradient equal the reference interpreter (small config)', async (t) => {
    const gpu = await gpuOrSkip(t);
    const eager = new EagerBackend(gpu);
    const o = new Ops(eager);
    const { graph, params } = traceForward(model, small, { batchSize: B });
    const init = initParameters(params, 5);
    // Perturb away from LN gains of 1 and zero biases so every gradient is generic.
    params.forEach((p, k) => init.get(p.name)!.forEach((_, i, a) => (a[i] += randomArray(a.length, 100 + k, 0.2)[i])));
    const values = new Map<string, EagerValue>();
    const net = model.create(
      new ParamScope((spec: ParamSpec) => {
        const v = eager.upload(init.get(spec.name)!, spec.shape, 'f32');
        values.set(spec.name, v);
        return new Tensor(eager, v);
      }),
      small,
    );
    const n = B * small.blockSize;
    const idx = tokens(n, small.vocabSize, 1);
    const targets = tokens(n, small.vocabSize, 2);
    eager.tape = [];
    const shape = [B, small.blockSize];
    const { loss } = net.forward(new Tensor(eager, eager.upload(idx, shape, 'i32')), new Tensor(eager, eager.upload(targets, shape, 'i32')));
    const tape = eager.tape;
    eager.tape = undefined;
    const grads = backprop(o, tape, loss!.value as EagerValue, o.full(1, loss!.shape));

    const inputs: Record<string, RefInput> = { idx, targets };
    for (const [name, data] of init) inputs[name] = Float64Array.from(data);
    const expected = evaluate(buildJointGraph(graph), inputs);
    const gotLoss = (await eager.read(loss!.value as EagerValue))[0];
    expect(Math.abs(gotLoss - expected[0].data[0])).toBeLessThan(1e-5 * Math.abs(expected[0].data[0]) + 1e-6);
    for (const [k, p] of params.entries()) {
      const got = await eager.read(grads.get(values.get(p.name)!)!);
      const want = expected[k + 1].data;
      const scale = Math.max(...Array.from(want, Math.abs));
      for (let i = 0; i < want.length; i++) {
        expect(Math.abs(got[i] - want[i]), `${p.name}[${i}]: ${got[i]} vs ${want[i]}`).toBeLessThan(1e-4 * scale + 1e-7);
      }
    }
  });

  it('the AdamW kernel equals the host reference (with and without decay, with clipping)', async (t) => {
    const gpu = await gpuOrSkip(t);
    const eager = new EagerBackend(gpu);
    const n = 1001;
    for (const decay of [true, false]) {
      const p = Float32Array.from(randomArray(n, 1));
      const g = Float32Array.from(randomArray(n, 2));
      const m = Float32Array.from(randomArray(n, 3, 0.1));
      const v = Float32Array.from(randomArray(n, 4, 0.1).map(Math.abs));
      const settings = { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weightDecay: 0.1, step: 7 };
      const clip = 0.37;
      const buffers = [p, g, m, v, Float32Array.of(clip)].map((a) => eager.upload(a, [a.length], 'f32'));
      const uniforms = gpu.device.createBuffer({ size: 32, usage: GPUBufferUsage.UNIFORM | GPUBufferUsage.COPY_DST });
      const u = adamwUniforms(settings);
      gpu.device.queue.writeBuffer(uniforms, 0, u.buffer, u.byteOffset, u.byteLength);
      const kernel = adamwKernel(n, decay);
      eager.dispatch(kernel.wgsl, [...buffers.map((b) => ({ buffer: b.buffer, size: b.bytes })), { buffer: uniforms }], kernel.workgroups);
      const [gotP, gotM, gotV] = await Promise.all([0, 2, 3].map((k) => eager.read(buffers[k])));
      adamwUpdate(p, g, m, v, { ...settings, weightDecay: decay ? 0.1 : 0, gradScale: clip });
      for (let i = 0; i < n; i++) {
        expect(gotP[i]).toBeCloseTo(p[i], 6);
        expect(gotM[i]).toBeCloseTo(m[i], 7);
        expect(gotV[i]).toBeCloseTo(v[i], 7);
      }
    }
  });

  it('the gradient norm computed on the device equals the reference; the pool stops growing after a step', async (t) => {
    const gpu = await gpuOrSkip(t);
    const engine = await createEagerEngine({ def: model, config: small, batchSize: B, seed: 11, gpu });
    const { graph, params } = traceForward(model, small, { batchSize: B });
    const initial = await engine.exportState();
    const n = B * small.blockSize;
    const batch = { idx: tokens(n, small.vocabSize, 21), targets: tokens(n, small.vocabSize, 22) };
    const inputs: Record<string, RefInput> = { idx: batch.idx, targets: batch.targets };
    for (const p of params) inputs[p.name] = Float64Array.from(initial.params.get(p.name)!.data);
    const grads = evaluate(buildJointGraph(graph), inputs).slice(1);
    const norm = Math.sqrt(grads.reduce((s, g) => s + Array.from(g.data).reduce((a, x) => a + x * x, 0), 0));
    const first = engine.step([batch], 1e-3);
    expect(Math.abs((await first.gradNorm) - norm) / norm).toBeLessThan(1e-4);
    const pooled = engine.backend.allocatedBytes;
    for (let s = 0; s < 3; s++) await engine.step([batch], 1e-3).loss;
    expect(engine.backend.allocatedBytes).toBe(pooled);
  });

  it('training steps on a fixed batch lower the loss; state exports and imports exactly', async (t) => {
    const gpu = await gpuOrSkip(t);
    const engine = await createEagerEngine({ def: model, config: small, batchSize: B, seed: 3, gpu });
    const n = B * small.blockSize;
    const batch = { idx: tokens(n, small.vocabSize, 7), targets: tokens(n, small.vocabSize, 8) };
    const losses: number[] = [];
    for (let s = 0; s < 8; s++) losses.push(await engine.step([batch, batch], 3e-3).loss);
    expect(losses[0]).toBeGreaterThan(Math.log(small.vocabSize) - 0.2);
    expect(losses[7]).toBeLessThan(losses[0] - 0.3);
    const state = await engine.exportState();
    expect(state.step).toBe(8);
    const other = await createEagerEngine({ def: model, config: small, batchSize: B, seed: 99, gpu });
    other.importState(state);
    expect(await other.evaluate([batch])).toBeCloseTo(await engine.evaluate([batch]), 6);
  });
});
